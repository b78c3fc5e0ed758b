//! Directed search: explore a model from one chosen state instead of its initial states.
//!
//! Some bugs sit behind a long, specific setup (a view installed, a batch in flight) and
//! then a short, specific turn of events. Neither an exhaustive search (the setup is too
//! deep) nor random walks (the turn is too unlikely) reach them. Splitting the search does:
//! first find a path to a state where the setup holds (a goal, e.g. with random walks),
//! then search every interleaving from that state with [`StartingAt`]. The second search
//! is exhaustive within its bounds from that one state, so it shows the bug is reachable,
//! not that the setup's other states are free of it.
//!
//! When the setup itself is too deep for one search, [`through_milestones`] builds it in
//! legs: breadth first from the end of one leg to a nearest state where the next
//! [`Milestone`] holds, checking the model's invariants all the way, and [`join`] turns
//! the setup and what the search from its end found into one path of the model, which
//! [`Path::minimize`] can then shorten as a whole.
//!
//! ```
//! use synod_sim::model_checker::checker::Checker;
//! use synod_sim::model_checker::directed::StartingAt;
//! use synod_sim::model_checker::two_phase_commit::{TwoPhaseCommit, TwoPhaseVariant};
//!
//! let model = TwoPhaseCommit::with_variant(4, TwoPhaseVariant::CommitEarly);
//! let report = Checker::new(&model).bfs();
//! let setup = report.violation.expect("caught").path;
//! let from_there = StartingAt::new(&model, setup.steps[0].state.clone());
//! let report = Checker::new(&from_there).bfs();
//! let rest = report.violation.expect("still reachable").path;
//! assert_eq!(rest.len() + 1, setup.len());
//! ```

use super::checker::Checker;
use super::model::{Expectation, Model, Property};
use super::path::{Path, Step};
use std::sync::Arc;

/// `model`, but with one initial state: `init`.
pub struct StartingAt<'a, M: Model> {
    model: &'a M,
    init: M::State,
}

impl<'a, M: Model> StartingAt<'a, M> {
    /// Explores `model` from `init` (a state reached in it, e.g. the end of a goal's path).
    pub fn new(model: &'a M, init: M::State) -> Self {
        StartingAt { model, init }
    }
}

impl<M: Model + 'static> Model for StartingAt<'_, M>
where
    M::State: 'static,
{
    type State = M::State;
    type Action = M::Action;

    fn init_states(&self) -> Vec<M::State> {
        vec![self.init.clone()]
    }

    fn actions(&self, state: &M::State, actions: &mut Vec<M::Action>) {
        self.model.actions(state, actions);
    }

    fn next_state(&self, state: &M::State, action: M::Action) -> Option<M::State> {
        self.model.next_state(state, action)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        self.model
            .properties()
            .into_iter()
            .map(|property| {
                let condition = property.condition;
                Property {
                    name: property.name,
                    expectation: property.expectation,
                    condition: Arc::new(move |directed: &Self, state: &M::State| {
                        condition(directed.model, state)
                    }),
                }
            })
            .collect()
    }

    fn prune(&self, state: &M::State) -> bool {
        self.model.prune(state)
    }
}

/// A condition a directed search steers toward, with a name for reports.
pub struct Milestone<S> {
    /// Printed when the milestone cannot be reached.
    pub name: String,
    reached: Arc<dyn Fn(&S) -> bool + Send + Sync>,
}

impl<S> Clone for Milestone<S> {
    fn clone(&self) -> Self {
        Milestone {
            name: self.name.clone(),
            reached: Arc::clone(&self.reached),
        }
    }
}

impl<S> Milestone<S> {
    /// A milestone named `name`, reached in a state where `reached` is true.
    pub fn new(
        name: impl Into<String>,
        reached: impl Fn(&S) -> bool + Send + Sync + 'static,
    ) -> Self {
        Milestone {
            name: name.into(),
            reached: Arc::new(reached),
        }
    }
}

/// `model` from `init`, with its invariants, where reaching `milestone` counts as a
/// violation of the extra invariant "not reached": a breadth-first search then stops at a
/// nearest state where the milestone holds. The model's goals are dropped.
struct Toward<'a, M: Model> {
    from: StartingAt<'a, M>,
    milestone: Milestone<M::State>,
}

/// The name of the extra invariant a [`Toward`] model breaks on reaching its milestone.
const NOT_REACHED: &str = "the milestone is not reached yet";

impl<M: Model + 'static> Model for Toward<'_, M>
where
    M::State: 'static,
{
    type State = M::State;
    type Action = M::Action;

    fn init_states(&self) -> Vec<M::State> {
        self.from.init_states()
    }

    fn actions(&self, state: &M::State, actions: &mut Vec<M::Action>) {
        self.from.actions(state, actions);
    }

    fn next_state(&self, state: &M::State, action: M::Action) -> Option<M::State> {
        self.from.next_state(state, action)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties: Vec<Property<Self>> = self
            .from
            .model
            .properties()
            .into_iter()
            .filter(|property| property.expectation == Expectation::Always)
            .map(|property| {
                let condition = property.condition;
                Property {
                    name: property.name,
                    expectation: Expectation::Always,
                    condition: Arc::new(move |toward: &Self, state: &M::State| {
                        condition(toward.from.model, state)
                    }),
                }
            })
            .collect();
        let reached = Arc::clone(&self.milestone.reached);
        properties.push(Property::always(NOT_REACHED, move |_, state| {
            !reached(state)
        }));
        properties
    }

    fn prune(&self, state: &M::State) -> bool {
        self.from.prune(state)
    }
}

/// What [`through_milestones`] found.
pub enum Directed<M: Model> {
    /// A path from an initial state of the model through every milestone in turn, ending
    /// in a state where the last one holds.
    Reached(Path<M>),
    /// An invariant of the model broke on the way: its name and a path to it from an
    /// initial state (not minimized).
    Violation {
        /// The invariant.
        property: String,
        /// From an initial state of the model to the state that breaks it.
        path: Path<M>,
    },
    /// No state within the depth limit of the end of the previous leg reaches this
    /// milestone (or the leg's search hit `max_states`).
    Unreached {
        /// The milestone's name.
        milestone: String,
        /// The path through the milestones before it.
        path: Path<M>,
    },
}

/// Steers a search through `milestones`: from the model's first initial state, a
/// breadth-first search (one thread, so the choice among equally short paths is
/// reproducible) to a nearest state where the first milestone holds, from there to a
/// nearest one where the second holds, and so on, each leg at most `max_depth` steps and
/// `max_states` unique states. The model's invariants are checked in every state every leg
/// visits.
///
/// Each leg commits to one state, so this shows a path exists, not that every path
/// through the milestones is safe: the setup for a deeper search with [`StartingAt`].
pub fn through_milestones<M: Model + 'static>(
    model: &M,
    milestones: &[Milestone<M::State>],
    max_depth: usize,
    max_states: u64,
) -> Directed<M>
where
    M::State: 'static,
{
    let init = model
        .init_states()
        .into_iter()
        .next()
        .expect("a model has an initial state");
    let mut path = Path::<M> {
        init,
        steps: Vec::new(),
    };
    for milestone in milestones {
        let leg = Toward {
            from: StartingAt::new(model, path.last_state().clone()),
            milestone: milestone.clone(),
        };
        let report = Checker::new(&leg)
            .max_depth(max_depth)
            .max_states(max_states)
            .minimize(false)
            .bfs();
        let Some(found) = report.violation else {
            return Directed::Unreached {
                milestone: milestone.name.clone(),
                path,
            };
        };
        path.steps
            .extend(found.path.steps.into_iter().map(|step| Step {
                action: step.action,
                state: step.state,
            }));
        if found.property != NOT_REACHED {
            return Directed::Violation {
                property: found.property,
                path,
            };
        }
    }
    Directed::Reached(path)
}

/// `prefix` (a path of `model` from an initial state) followed by `rest` (a path of a
/// search [`StartingAt`] the end of `prefix`), as one path of `model`.
///
/// # Panics
///
/// If `rest` does not start where `prefix` ends.
pub fn join<M: Model + 'static>(prefix: Path<M>, rest: Path<StartingAt<'_, M>>) -> Path<M>
where
    M::State: 'static,
{
    assert!(
        rest.init == *prefix.last_state(),
        "the rest of a path starts where its prefix ends"
    );
    let mut path = prefix;
    path.steps.extend(rest.steps.into_iter().map(|step| Step {
        action: step.action,
        state: step.state,
    }));
    path
}
