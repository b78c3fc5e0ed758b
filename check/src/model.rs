//! The extension point: what a data type must say for its histories to be checked.
//!
//! A [`Model`] reads a history's operations; a [`SequentialSpecification`] is the reference
//! object the search replays them against. Checking is in two steps so that input errors come out
//! in history order and the hot loop sees only compact values:
//!
//! 1. [`Model::interpret`] runs on every operation in invoke order, validates it and says which
//!    *partition* (for these models, which key) it belongs to and what command it is. Operations
//!    in different partitions must never affect each other: the checker may search each partition
//!    on its own (Herlihy and Wing's locality; Horn and Kroening's P-compositionality).
//! 2. [`Model::specification`] turns one partition's commands into a sequential object and the
//!    inputs it steps on, typically with values interned to small ids so that states are cheap to
//!    hash, compare and copy.
//!
//! The crate's models are [`RegisterModel`](crate::register::RegisterModel) and
//! [`KvModel`](crate::kv::KvModel).

use std::hash::Hash;

use crate::history::{HistoryError, Operation};

/// A sequential object: the reference behaviour a concurrent history must be explainable by.
pub trait SequentialSpecification {
    /// The object's state; hashed to remember which configurations were explored, so keep it
    /// small (an interned id is ideal).
    type State: Clone + Eq + Hash;
    /// One operation with its observed result, as the object steps on it.
    type Input;

    /// The state before any operation.
    fn initial_state(&mut self) -> Self::State;

    /// The state after `input`, or `None` if its observed result is impossible in `state`.
    /// Takes `&mut self` so that a specification can intern the values it creates.
    fn step(&mut self, state: &Self::State, input: &Self::Input) -> Option<Self::State>;

    /// Whether `input` never changes the state (a read): the search then linearizes it as soon as
    /// it fits, without trying alternatives.
    fn is_read_only(&self, input: &Self::Input) -> bool;

    /// The state for people, as the object of "leaves ...": `the key "x1"`, `the register 3`.
    fn describe_state(&self, state: &Self::State) -> String;

    /// Why `input` cannot come next in `state`, for an input `step` refuses: `would read "x1"`.
    fn explain_refusal(&self, state: &Self::State, input: &Self::Input) -> String;
}

/// How the model reads one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpretation<C> {
    /// The partition the operation belongs to (its key; empty if it has none).
    pub partition: String,
    /// The command the search replays, or `None` if the operation constrains nothing (it failed,
    /// or it is a read whose result is unknown).
    pub command: Option<C>,
}

/// A data type whose histories can be checked.
pub trait Model: Sync {
    /// One operation as the model read it, before compiling.
    type Command: Send + Sync;
    /// The sequential object one partition is checked against; searches move between threads.
    type Specification: SequentialSpecification<State: Send, Input: Send> + Send;

    /// The model's name, as in "the key-value model".
    fn name(&self) -> &'static str;

    /// Validates one operation and says what it is; errors name the event's position.
    fn interpret(
        &self,
        operation: &Operation,
    ) -> Result<Interpretation<Self::Command>, HistoryError>;

    /// The sequential object for a set of commands (one partition's, or the whole history's
    /// when it is checked unpartitioned) and each command compiled into its input.
    fn specification(
        &self,
        commands: &[&Self::Command],
    ) -> (
        Self::Specification,
        Vec<<Self::Specification as SequentialSpecification>::Input>,
    );
}
