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

use super::model::{Model, Property};
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
