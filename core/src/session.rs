//! Client sessions: exactly-once execution of retried requests.
//!
//! A client numbers its requests (sequence numbers, one session per client id) and sends
//! with each request its *acknowledged low-water mark*: every sequence number below it has
//! been answered and will never be retried. The table keeps, per client, the results of the
//! requests at or above the mark, so a retry gets the recorded result instead of a second
//! execution, and a delayed duplicate of an acknowledged request (below the mark) is
//! recognised as stale and never executed.
//!
//! The table stays bounded: results below each client's mark are discarded as soon as the
//! mark advances, each session holds at most [`MAX_RESULTS_PER_SESSION`] unacknowledged
//! results, and at most `max_sessions` sessions exist (a new client beyond that is refused,
//! which is safe: the request was not executed). Sessions are never evicted, because an
//! evicted session could not tell a retry from a new request; expiry by lease arrives with
//! the replicated KV.

use crate::node::ClientId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Unacknowledged results one session may hold. Our clients keep one request outstanding,
/// so two (the current one and a just-answered one whose acknowledgement is in flight)
/// would do; the slack tolerates pipelining clients.
pub const MAX_RESULTS_PER_SESSION: usize = 64;

/// The default cap on concurrent sessions.
pub const MAX_SESSIONS_DEFAULT: usize = 10_000;

/// What to do with an incoming request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Admission<R> {
    /// A new request: execute it, then [`SessionTable::record`] its result.
    Execute,
    /// A retry of an executed request: answer with the recorded result.
    Duplicate(R),
    /// A delayed copy of a request the client already acknowledged: ignore it.
    Stale,
}

/// Why a request was refused without being executed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum SessionError {
    /// The table is full and this client has no session.
    #[error("too many client sessions (limit {limit}); retry later")]
    TooManySessions {
        /// The configured cap.
        limit: usize,
    },
    /// The client has too many unacknowledged requests.
    #[error("too many unacknowledged requests in one session (limit {limit})")]
    TooManyUnacknowledged {
        /// The per-session cap.
        limit: usize,
    },
}

/// One client's session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Session<R> {
    acknowledged_below: u64,
    results: BTreeMap<u64, R>,
}

impl<R> Default for Session<R> {
    fn default() -> Self {
        Session {
            acknowledged_below: 0,
            results: BTreeMap::new(),
        }
    }
}

/// Every client's session, ordered by client id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionTable<R> {
    sessions: BTreeMap<ClientId, Session<R>>,
    max_sessions: usize,
}

impl<R: Clone> Default for SessionTable<R> {
    fn default() -> Self {
        SessionTable::new(MAX_SESSIONS_DEFAULT)
    }
}

impl<R: Clone> SessionTable<R> {
    /// An empty table admitting at most `max_sessions` clients.
    pub fn new(max_sessions: usize) -> Self {
        assert!(max_sessions > 0);
        SessionTable {
            sessions: BTreeMap::new(),
            max_sessions,
        }
    }

    /// Decides what to do with request `sequence` from `client`, whose acknowledged
    /// low-water mark is `acknowledged_below`; discards results the mark releases.
    pub fn admit(
        &mut self,
        client: ClientId,
        sequence: u64,
        acknowledged_below: u64,
    ) -> Result<Admission<R>, SessionError> {
        if !self.sessions.contains_key(&client) && self.sessions.len() >= self.max_sessions {
            return Err(SessionError::TooManySessions {
                limit: self.max_sessions,
            });
        }
        let session = self.sessions.entry(client).or_default();
        if acknowledged_below > session.acknowledged_below {
            session.acknowledged_below = acknowledged_below;
            // Keep only results the client may still retry (usually one goes, the last;
            // `split_off` would build a new tree for what stays).
            while let Some(entry) = session.results.first_entry()
                && *entry.key() < acknowledged_below
            {
                entry.remove();
            }
        }
        if sequence < session.acknowledged_below {
            return Ok(Admission::Stale);
        }
        if let Some(result) = session.results.get(&sequence) {
            return Ok(Admission::Duplicate(result.clone()));
        }
        if session.results.len() >= MAX_RESULTS_PER_SESSION {
            return Err(SessionError::TooManyUnacknowledged {
                limit: MAX_RESULTS_PER_SESSION,
            });
        }
        Ok(Admission::Execute)
    }

    /// Records the result of an executed request admitted by [`SessionTable::admit`].
    pub fn record(&mut self, client: ClientId, sequence: u64, result: R) {
        let session = self
            .sessions
            .get_mut(&client)
            .expect("record() follows a successful admit() for the same client");
        assert!(
            sequence >= session.acknowledged_below,
            "recording a stale request"
        );
        let previous = session.results.insert(sequence, result);
        assert!(previous.is_none(), "a request was executed twice");
    }

    /// Number of sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of results held across all sessions.
    pub fn result_count(&self) -> usize {
        self.sessions
            .values()
            .map(|session| session.results.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_retry_gets_the_recorded_result() {
        let mut table = SessionTable::new(4);
        let client = ClientId(1);
        assert_eq!(table.admit(client, 0, 0), Ok(Admission::Execute));
        table.record(client, 0, "first");
        assert_eq!(table.result_count(), 1);
        assert_eq!(table.admit(client, 0, 0), Ok(Admission::Duplicate("first")));
        assert_eq!(table.admit(client, 1, 1), Ok(Admission::Execute));
        // The acknowledgement released the first result and makes its copies stale.
        assert_eq!(table.result_count(), 0);
        assert_eq!(table.admit(client, 0, 0), Ok(Admission::Stale));
    }

    #[test]
    fn an_acknowledgement_releases_exactly_the_results_below_it() {
        let mut table = SessionTable::new(1);
        let client = ClientId(3);
        for sequence in 0..4 {
            assert_eq!(table.admit(client, sequence, 0), Ok(Admission::Execute));
            table.record(client, sequence, sequence);
        }
        assert_eq!(table.admit(client, 4, 2), Ok(Admission::Execute));
        assert_eq!(table.result_count(), 2);
        assert_eq!(table.admit(client, 1, 2), Ok(Admission::Stale));
        assert_eq!(table.admit(client, 2, 2), Ok(Admission::Duplicate(2)));
        assert_eq!(table.admit(client, 3, 2), Ok(Admission::Duplicate(3)));
    }

    #[test]
    fn the_low_water_mark_never_moves_back() {
        let mut table = SessionTable::new(4);
        let client = ClientId(1);
        assert_eq!(table.admit(client, 5, 5), Ok(Admission::Execute));
        table.record(client, 5, 'a');
        // A delayed request carrying an older mark must not resurrect anything.
        assert_eq!(table.admit(client, 4, 3), Ok(Admission::Stale));
        assert_eq!(table.admit(client, 5, 3), Ok(Admission::Duplicate('a')));
    }

    #[test]
    fn new_clients_beyond_the_cap_are_refused_but_known_ones_are_served() {
        let mut table = SessionTable::new(2);
        assert_eq!(table.admit(ClientId(1), 0, 0), Ok(Admission::<u8>::Execute));
        assert_eq!(table.admit(ClientId(2), 0, 0), Ok(Admission::Execute));
        assert_eq!(
            table.admit(ClientId(3), 0, 0),
            Err(SessionError::TooManySessions { limit: 2 })
        );
        assert_eq!(table.admit(ClientId(1), 1, 1), Ok(Admission::Execute));
        assert_eq!(table.session_count(), 2);
    }

    #[test]
    fn a_client_that_never_acknowledges_is_capped() {
        let mut table = SessionTable::new(1);
        let client = ClientId(9);
        for sequence in 0..MAX_RESULTS_PER_SESSION as u64 {
            assert_eq!(table.admit(client, sequence, 0), Ok(Admission::Execute));
            table.record(client, sequence, sequence);
        }
        assert_eq!(
            table.admit(client, MAX_RESULTS_PER_SESSION as u64, 0),
            Err(SessionError::TooManyUnacknowledged {
                limit: MAX_RESULTS_PER_SESSION
            })
        );
    }

    #[test]
    fn a_long_workload_keeps_the_table_bounded() {
        // 50 clients, 200,000 requests, each retried up to twice with duplicates arriving
        // late: the table never holds more than one result per client beyond the current.
        let clients = 50u64;
        let mut table = SessionTable::new(clients as usize);
        let mut next_sequence = vec![0u64; clients as usize];
        let mut executions = 0u64;
        for step in 0..200_000u64 {
            let client_index = (step * 7919) % clients;
            let client = ClientId(client_index);
            let sequence = next_sequence[client_index as usize];
            for attempt in 0..=(step % 3) {
                match table.admit(client, sequence, sequence) {
                    Ok(Admission::Execute) => {
                        assert_eq!(attempt, 0, "a retry was executed");
                        executions += 1;
                        table.record(client, sequence, step);
                    }
                    Ok(Admission::Duplicate(_)) => assert!(attempt > 0),
                    other => panic!("unexpected {other:?}"),
                }
            }
            if sequence > 0 {
                // A delayed copy of the previous request.
                assert_eq!(table.admit(client, sequence - 1, 0), Ok(Admission::Stale));
            }
            next_sequence[client_index as usize] += 1;
            assert!(table.result_count() <= clients as usize);
        }
        assert_eq!(executions, 200_000);
        assert_eq!(table.session_count(), clients as usize);
    }

    proptest! {
        #[test]
        fn no_request_is_executed_twice(
            deliveries in proptest::collection::vec((0u64..3, 0u64..20, 0u64..20), 1..300)
        ) {
            // Arbitrary interleavings of (client, sequence, mark), including ones no real
            // client would send: execution stays at most once per (client, sequence).
            let mut table = SessionTable::new(3);
            let mut executed = std::collections::BTreeSet::new();
            for (client, sequence, mark) in deliveries {
                if let Ok(Admission::Execute) = table.admit(ClientId(client), sequence, mark) {
                    prop_assert!(executed.insert((client, sequence)));
                    table.record(ClientId(client), sequence, ());
                }
            }
        }
    }
}
