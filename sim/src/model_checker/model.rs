//! What the checker explores: a [`Model`] is a transition system with properties.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

/// A nondeterministic transition system: initial states, and in each state a list of
/// actions, each leading to at most one next state.
///
/// The checker calls these from several threads at once, so a model is `Sync` and must be
/// deterministic: the same state and action always give the same next state (counterexample
/// paths are rebuilt by re-executing actions).
pub trait Model: Sync {
    /// A global state; hashed into a fingerprint and compared, so keep it canonical (ordered
    /// collections, no incidental history).
    type State: Clone + Eq + Hash + Debug + Send + Sync;
    /// A transition label; printed in counterexamples and compared when a trace is replayed.
    type Action: Clone + Eq + Debug + Send + Sync;

    /// The states exploration starts from.
    fn init_states(&self) -> Vec<Self::State>;

    /// Pushes every action enabled in `state` onto `actions` (which arrives empty).
    fn actions(&self, state: &Self::State, actions: &mut Vec<Self::Action>);

    /// The state after `action`, or `None` if the action turns out to change nothing worth
    /// exploring (it then counts as not generated).
    fn next_state(&self, state: &Self::State, action: Self::Action) -> Option<Self::State>;

    /// Invariants and goals to check; evaluated once per unique state.
    fn properties(&self) -> Vec<Property<Self>> {
        Vec::new()
    }

    /// A prune predicate: a state for which this is true is checked but not expanded (a
    /// bound such as "no more than 2 view changes" that keeps the graph finite).
    fn prune(&self, _state: &Self::State) -> bool {
        false
    }
}

/// How a property's condition is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// An invariant: the condition holds in every reachable state; a state where it does not
    /// is a counterexample.
    Always,
    /// A goal: the condition holds in at least one reachable state. Pair every invariant with
    /// one, so a model that never does anything cannot pass.
    Sometimes,
}

/// A condition on a state, given the model.
pub type Condition<M> = Arc<dyn Fn(&M, &<M as Model>::State) -> bool + Send + Sync>;

/// A named condition and how it is judged.
pub struct Property<M: Model + ?Sized> {
    /// The name printed in reports.
    pub name: String,
    /// Invariant or goal.
    pub expectation: Expectation,
    /// The condition.
    pub condition: Condition<M>,
}

impl<M: Model + ?Sized> Clone for Property<M> {
    fn clone(&self) -> Self {
        Property {
            name: self.name.clone(),
            expectation: self.expectation,
            condition: Arc::clone(&self.condition),
        }
    }
}

impl<M: Model> Property<M> {
    /// An invariant: `condition` must hold in every reachable state.
    pub fn always(
        name: impl Into<String>,
        condition: impl Fn(&M, &M::State) -> bool + Send + Sync + 'static,
    ) -> Self {
        Property {
            name: name.into(),
            expectation: Expectation::Always,
            condition: Arc::new(condition),
        }
    }

    /// A goal: `condition` must hold in some reachable state.
    pub fn sometimes(
        name: impl Into<String>,
        condition: impl Fn(&M, &M::State) -> bool + Send + Sync + 'static,
    ) -> Self {
        Property {
            name: name.into(),
            expectation: Expectation::Sometimes,
            condition: Arc::new(condition),
        }
    }
}

impl<M: Model + ?Sized> Debug for Property<M> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Property")
            .field("name", &self.name)
            .field("expectation", &self.expectation)
            .finish_non_exhaustive()
    }
}
