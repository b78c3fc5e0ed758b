//! Paths through a model: rebuilt by re-executing actions, printed as numbered traces, and
//! shortened by deleting actions while the violation still reproduces.

use super::fingerprint::fingerprint;
use super::model::{Model, Property};
use std::fmt;

/// One step of a path: the action taken and the state it led to.
pub struct Step<M: Model> {
    /// The action.
    pub action: M::Action,
    /// The state after it.
    pub state: M::State,
}

impl<M: Model> Clone for Step<M> {
    fn clone(&self) -> Self {
        Step {
            action: self.action.clone(),
            state: self.state.clone(),
        }
    }
}

/// A path from an initial state.
pub struct Path<M: Model> {
    /// The initial state.
    pub init: M::State,
    /// The steps, in order.
    pub steps: Vec<Step<M>>,
}

impl<M: Model> Clone for Path<M> {
    fn clone(&self) -> Self {
        Path {
            init: self.init.clone(),
            steps: self.steps.clone(),
        }
    }
}

impl<M: Model> Path<M> {
    /// How many actions the path takes.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether the path is just an initial state.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The state the path ends in.
    pub fn last_state(&self) -> &M::State {
        self.steps.last().map_or(&self.init, |step| &step.state)
    }

    /// The actions, in order.
    pub fn actions(&self) -> impl Iterator<Item = &M::Action> {
        self.steps.iter().map(|step| &step.action)
    }

    /// Re-executes `indices` from the model: the first is an index into
    /// [`Model::init_states`], each further one an index into [`Model::actions`] of the state
    /// reached so far.
    pub(crate) fn from_indices(model: &M, indices: &[u32]) -> Path<M> {
        let (&init_index, action_indices) = indices
            .split_first()
            .expect("a path names its initial state");
        let init = model
            .init_states()
            .into_iter()
            .nth(init_index as usize)
            .expect("the initial state of a recorded path exists");
        let mut path = Path {
            init,
            steps: Vec::with_capacity(action_indices.len()),
        };
        let mut actions = Vec::new();
        for &index in action_indices {
            actions.clear();
            model.actions(path.last_state(), &mut actions);
            let action = actions.swap_remove(index as usize);
            let state = model
                .next_state(path.last_state(), action.clone())
                .expect("a recorded action re-executes (is the model deterministic?)");
            path.steps.push(Step { action, state });
        }
        path
    }

    /// Re-executes a chain of fingerprints, the first an initial state's, each further one
    /// that of a successor of the state before.
    pub(crate) fn from_fingerprints(model: &M, fingerprints: &[u64]) -> Path<M> {
        let (&init_fingerprint, rest) = fingerprints
            .split_first()
            .expect("a path names its initial state");
        let init = model
            .init_states()
            .into_iter()
            .find(|state| fingerprint(state) == init_fingerprint)
            .expect("the initial state of a recorded path exists");
        let mut path = Path {
            init,
            steps: Vec::with_capacity(rest.len()),
        };
        let mut actions = Vec::new();
        for &wanted in rest {
            actions.clear();
            model.actions(path.last_state(), &mut actions);
            let step = actions
                .drain(..)
                .find_map(|action| {
                    let state = model.next_state(path.last_state(), action.clone())?;
                    (fingerprint(&state) == wanted).then_some(Step { action, state })
                })
                .expect("a recorded step re-executes (is the model deterministic?)");
            path.steps.push(step);
        }
        path
    }

    /// Replays `actions` from `init`, skipping any that is not enabled where it comes up, and
    /// stops at the first state that breaks `invariant`; `None` if none does.
    pub fn replay(
        model: &M,
        init: &M::State,
        actions: &[M::Action],
        invariant: &Property<M>,
    ) -> Option<Path<M>> {
        let holds = |state: &M::State| (invariant.condition)(model, state);
        let mut path = Path {
            init: init.clone(),
            steps: Vec::new(),
        };
        if !holds(init) {
            return Some(path);
        }
        let mut enabled = Vec::new();
        for action in actions {
            enabled.clear();
            model.actions(path.last_state(), &mut enabled);
            if !enabled.contains(action) {
                continue;
            }
            let Some(state) = model.next_state(path.last_state(), action.clone()) else {
                continue;
            };
            let broken = !holds(&state);
            path.steps.push(Step {
                action: action.clone(),
                state,
            });
            if broken {
                return Some(path);
            }
        }
        None
    }

    /// Shortens a path that breaks `invariant` by deleting one action at a time, keeping a
    /// deletion whenever the replay (which also drops actions that are no longer enabled)
    /// still breaks it, until no single deletion does. The result is never longer than the
    /// input and still ends in a state that breaks `invariant`.
    pub fn minimize(self, model: &M, invariant: &Property<M>) -> Path<M> {
        let all: Vec<M::Action> = self.actions().cloned().collect();
        let Some(mut best) = Path::replay(model, &self.init, &all, invariant) else {
            // Not a counterexample to this invariant: nothing to minimize against.
            return self;
        };
        let mut candidate = Vec::with_capacity(best.len());
        // A deletion can enable another one earlier in the path, so sweep until a whole
        // pass deletes nothing.
        loop {
            let length_before = best.len();
            let mut index = best.len();
            while index > 0 {
                index -= 1;
                candidate.clear();
                candidate.extend(
                    best.actions()
                        .enumerate()
                        .filter(|&(position, _)| position != index)
                        .map(|(_, action)| action.clone()),
                );
                if let Some(shorter) = Path::replay(model, &best.init, &candidate, invariant) {
                    assert!(shorter.len() < best.len(), "a deletion never lengthens");
                    index = index.min(shorter.len());
                    best = shorter;
                }
            }
            if best.len() == length_before {
                return best;
            }
        }
    }
}

impl<M: Model> fmt::Display for Path<M> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(formatter, "{:>4}  initial state", 0)?;
        writeln!(formatter, "      = {:?}", self.init)?;
        for (number, step) in self.steps.iter().enumerate() {
            writeln!(formatter, "{:>4}  {:?}", number + 1, step.action)?;
            writeln!(formatter, "      = {:?}", step.state)?;
        }
        Ok(())
    }
}

impl<M: Model> fmt::Debug for Path<M> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_list()
            .entries(self.steps.iter().map(|step| &step.action))
            .finish()
    }
}
