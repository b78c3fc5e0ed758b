//! Two-phase commit as a plain [`Model`]: the benchmark model and a worked example.
//!
//! The specification is the commit protocol of Gray and Lamport, "Consensus on Transaction
//! Commit" (2004), section 3 (`TCommit`/`TwoPhase`): a transaction manager (TM) and `n`
//! resource managers (RMs) that exchange messages through a set that only grows, so every
//! message can be received any number of times. This is the model of Stateright's
//! `examples/2pc.rs`, transition for transition, which the unique-state counts confirm
//! (3 RMs: 288, 5: 8,832, 7: 296,448, 8: 1,745,408, 9: 10,340,352).
//!
//! The state is bit-packed (two bits of RM state and one bit each of "TM has seen it
//! prepared" and "its Prepared message was sent" per RM), so a state is 24 bytes, is
//! copied without allocating and hashes in four words.
//!
//! [`TwoPhaseVariant::CommitEarly`] is a deliberately broken TM that commits as soon as one
//! RM is prepared: the checker must find an RM that commits while another aborts.

use super::model::{Model, Property};
use std::fmt;

/// The largest supported number of resource managers (two bits each in a `u64`).
pub const RESOURCE_MANAGERS_MAX: usize = 32;

/// A resource manager's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceManagerState {
    /// Working on the transaction; may prepare or abort on its own.
    Working,
    /// Voted to commit; waits for the TM's decision.
    Prepared,
    /// Committed.
    Committed,
    /// Aborted.
    Aborted,
}

impl ResourceManagerState {
    const ALL: [ResourceManagerState; 4] = [
        ResourceManagerState::Working,
        ResourceManagerState::Prepared,
        ResourceManagerState::Committed,
        ResourceManagerState::Aborted,
    ];
}

/// The transaction manager's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransactionManagerState {
    /// Collecting Prepared messages.
    Init,
    /// Decided to commit (and sent Commit).
    Committed,
    /// Decided to abort (and sent Abort).
    Aborted,
}

/// Which transaction manager to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TwoPhaseVariant {
    /// Commits only once every RM is known to be prepared.
    Correct,
    /// Broken: commits once any one RM is known to be prepared.
    CommitEarly,
}

/// One transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TwoPhaseAction {
    /// The TM receives RM `0`'s Prepared message.
    TmReceivePrepared(usize),
    /// The TM decides to commit and sends Commit.
    TmCommit,
    /// The TM decides to abort and sends Abort.
    TmAbort,
    /// RM `0` prepares and sends Prepared.
    RmPrepare(usize),
    /// RM `0` aborts on its own.
    RmChooseToAbort(usize),
    /// RM `0` receives Commit.
    RmReceiveCommit(usize),
    /// RM `0` receives Abort.
    RmReceiveAbort(usize),
}

/// A global state: every RM, the TM, and the set of messages ever sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TwoPhaseState {
    /// Two bits per RM: the index of its [`ResourceManagerState`].
    resource_managers: u64,
    /// Bit `rm`: the TM has received RM `rm`'s Prepared message.
    tm_prepared: u32,
    /// Bit `rm`: RM `rm`'s Prepared message is in the message set.
    prepared_sent: u32,
    transaction_manager: TransactionManagerState,
    commit_sent: bool,
    abort_sent: bool,
    /// The same in every state of a model; kept so a state can print itself.
    resource_manager_count: u8,
}

impl TwoPhaseState {
    /// RM `rm`'s state.
    pub fn resource_manager(&self, rm: usize) -> ResourceManagerState {
        ResourceManagerState::ALL[((self.resource_managers >> (2 * rm)) & 0b11) as usize]
    }

    fn set_resource_manager(&mut self, rm: usize, state: ResourceManagerState) {
        let shift = 2 * rm;
        self.resource_managers =
            (self.resource_managers & !(0b11 << shift)) | ((state as u64) << shift);
    }

    /// The TM's state.
    pub fn transaction_manager(&self) -> TransactionManagerState {
        self.transaction_manager
    }
}

impl fmt::Debug for TwoPhaseState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rms: Vec<ResourceManagerState> = (0..usize::from(self.resource_manager_count))
            .map(|rm| self.resource_manager(rm))
            .collect();
        let bits = |set: u32| -> Vec<usize> {
            (0..usize::from(self.resource_manager_count))
                .filter(|rm| set & (1 << rm) != 0)
                .collect()
        };
        formatter
            .debug_struct("TwoPhaseState")
            .field("rms", &rms)
            .field("tm", &self.transaction_manager)
            .field("tm_prepared", &bits(self.tm_prepared))
            .field("prepared_sent", &bits(self.prepared_sent))
            .field("commit_sent", &self.commit_sent)
            .field("abort_sent", &self.abort_sent)
            .finish()
    }
}

/// Two-phase commit with a number of resource managers.
///
/// ```
/// use synod_sim::model_checker::checker::Checker;
/// use synod_sim::model_checker::two_phase_commit::{TwoPhaseCommit, TwoPhaseVariant};
///
/// let broken = TwoPhaseCommit::with_variant(3, TwoPhaseVariant::CommitEarly);
/// let report = Checker::new(&broken).bfs();
/// let counterexample = report.violation.expect("committing early is caught");
/// assert_eq!(counterexample.property, "consistent");
/// assert_eq!(counterexample.path.len(), 5);
/// ```
#[derive(Clone, Debug)]
pub struct TwoPhaseCommit {
    resource_managers: usize,
    variant: TwoPhaseVariant,
}

impl TwoPhaseCommit {
    /// The correct protocol with `resource_managers` RMs (1 to [`RESOURCE_MANAGERS_MAX`]).
    pub fn new(resource_managers: usize) -> Self {
        TwoPhaseCommit::with_variant(resource_managers, TwoPhaseVariant::Correct)
    }

    /// The given variant with `resource_managers` RMs (1 to [`RESOURCE_MANAGERS_MAX`]).
    pub fn with_variant(resource_managers: usize, variant: TwoPhaseVariant) -> Self {
        assert!(
            (1..=RESOURCE_MANAGERS_MAX).contains(&resource_managers),
            "two-phase commit supports 1 to {RESOURCE_MANAGERS_MAX} resource managers"
        );
        TwoPhaseCommit {
            resource_managers,
            variant,
        }
    }

    /// The number of resource managers.
    pub fn resource_managers(&self) -> usize {
        self.resource_managers
    }

    /// Whether every RM's state satisfies `predicate`.
    fn all(&self, state: &TwoPhaseState, predicate: impl Fn(ResourceManagerState) -> bool) -> bool {
        (0..self.resource_managers).all(|rm| predicate(state.resource_manager(rm)))
    }

    /// Whether the TM may commit now.
    fn may_commit(&self, state: &TwoPhaseState) -> bool {
        let everyone = (1u64 << self.resource_managers) - 1;
        match self.variant {
            TwoPhaseVariant::Correct => u64::from(state.tm_prepared) == everyone,
            TwoPhaseVariant::CommitEarly => state.tm_prepared != 0,
        }
    }
}

impl Model for TwoPhaseCommit {
    type State = TwoPhaseState;
    type Action = TwoPhaseAction;

    fn init_states(&self) -> Vec<TwoPhaseState> {
        vec![TwoPhaseState {
            resource_managers: 0, // Every RM Working.
            tm_prepared: 0,
            prepared_sent: 0,
            transaction_manager: TransactionManagerState::Init,
            commit_sent: false,
            abort_sent: false,
            resource_manager_count: self.resource_managers as u8,
        }]
    }

    fn actions(&self, state: &TwoPhaseState, actions: &mut Vec<TwoPhaseAction>) {
        let tm_init = state.transaction_manager == TransactionManagerState::Init;
        if tm_init && self.may_commit(state) {
            actions.push(TwoPhaseAction::TmCommit);
        }
        if tm_init {
            actions.push(TwoPhaseAction::TmAbort);
        }
        for rm in 0..self.resource_managers {
            if tm_init && state.prepared_sent & (1 << rm) != 0 {
                actions.push(TwoPhaseAction::TmReceivePrepared(rm));
            }
            if state.resource_manager(rm) == ResourceManagerState::Working {
                actions.push(TwoPhaseAction::RmPrepare(rm));
                actions.push(TwoPhaseAction::RmChooseToAbort(rm));
            }
            if state.commit_sent {
                actions.push(TwoPhaseAction::RmReceiveCommit(rm));
            }
            if state.abort_sent {
                actions.push(TwoPhaseAction::RmReceiveAbort(rm));
            }
        }
    }

    fn next_state(&self, state: &TwoPhaseState, action: TwoPhaseAction) -> Option<TwoPhaseState> {
        let mut next = *state;
        match action {
            TwoPhaseAction::TmReceivePrepared(rm) => next.tm_prepared |= 1 << rm,
            TwoPhaseAction::TmCommit => {
                next.transaction_manager = TransactionManagerState::Committed;
                next.commit_sent = true;
            }
            TwoPhaseAction::TmAbort => {
                next.transaction_manager = TransactionManagerState::Aborted;
                next.abort_sent = true;
            }
            TwoPhaseAction::RmPrepare(rm) => {
                next.set_resource_manager(rm, ResourceManagerState::Prepared);
                next.prepared_sent |= 1 << rm;
            }
            TwoPhaseAction::RmChooseToAbort(rm) | TwoPhaseAction::RmReceiveAbort(rm) => {
                next.set_resource_manager(rm, ResourceManagerState::Aborted);
            }
            TwoPhaseAction::RmReceiveCommit(rm) => {
                next.set_resource_manager(rm, ResourceManagerState::Committed);
            }
        }
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::sometimes("abort agreement", |model: &Self, state: &TwoPhaseState| {
                model.all(state, |rm| rm == ResourceManagerState::Aborted)
            }),
            Property::sometimes("commit agreement", |model: &Self, state: &TwoPhaseState| {
                model.all(state, |rm| rm == ResourceManagerState::Committed)
            }),
            Property::always("consistent", |model: &Self, state: &TwoPhaseState| {
                // No RM committed while another aborted.
                model.all(state, |rm| rm != ResourceManagerState::Aborted)
                    || model.all(state, |rm| rm != ResourceManagerState::Committed)
            }),
        ]
    }
}
