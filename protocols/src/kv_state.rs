//! The replicated key-value state machine: the sequential map plus client sessions, applied
//! in log order by every replica (primary-backup, Paxos, and later Raft run it unchanged).
//!
//! A [`SessionCommand`] carries the client id, the request's sequence number and the
//! client's acknowledged low-water mark; applying it through [`SessionKv::apply`] executes a
//! mutation at most once however many times the command reaches the log. Reads go through
//! the log too, so they are linearizable; they are not recorded in the session table
//! because re-executing a read is harmless.

use serde::{Deserialize, Serialize};
use synod_core::kv::{KvCommand, KvMap, KvOutput};
use synod_core::node::ClientId;
use synod_core::session::{Admission, SessionError, SessionTable};

/// A client's command as it travels through a replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionCommand {
    /// The client.
    pub client: ClientId,
    /// The request's sequence number in the client's session.
    pub sequence: u64,
    /// Every sequence number below this one is answered and will never be retried.
    pub acknowledged_below: u64,
    /// The key-value command.
    pub command: KvCommand,
}

/// What applying a command produced for its client.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Applied {
    /// The result to send back (recorded or fresh, or the session's refusal).
    Reply(Result<KvOutput, SessionError>),
    /// A delayed copy of a request the client already acknowledged: send nothing.
    Stale,
}

/// The map and the session table, advanced only by [`SessionKv::apply`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SessionKv {
    map: KvMap,
    sessions: SessionTable<Result<KvOutput, SessionError>>,
}

impl SessionKv {
    /// An empty store.
    pub fn new() -> Self {
        SessionKv::default()
    }

    /// Applies one command from the log; every replica gets the same answer.
    pub fn apply(&mut self, command: &SessionCommand) -> Applied {
        if command.command.is_read_only() {
            return Applied::Reply(Ok(self.map.apply(&command.command)));
        }
        match self
            .sessions
            .admit(command.client, command.sequence, command.acknowledged_below)
        {
            Ok(Admission::Execute) => {
                let output = self.map.apply(&command.command);
                self.sessions
                    .record(command.client, command.sequence, Ok(output.clone()));
                Applied::Reply(Ok(output))
            }
            Ok(Admission::Duplicate(result)) => Applied::Reply(result),
            Ok(Admission::Stale) => Applied::Stale,
            Err(error) => Applied::Reply(Err(error)),
        }
    }

    /// The current map.
    pub fn map(&self) -> &KvMap {
        &self.map
    }

    /// The session table.
    pub fn sessions(&self) -> &SessionTable<Result<KvOutput, SessionError>> {
        &self.sessions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(
        client: u64,
        sequence: u64,
        acknowledged_below: u64,
        kv: KvCommand,
    ) -> SessionCommand {
        SessionCommand {
            client: ClientId(client),
            sequence,
            acknowledged_below,
            command: kv,
        }
    }

    fn append(value: &str) -> KvCommand {
        KvCommand::Append {
            key: "k".to_string(),
            value: value.to_string(),
        }
    }

    #[test]
    fn a_command_logged_twice_executes_once() {
        let mut store = SessionKv::new();
        let first = store.apply(&command(1, 0, 0, append("x")));
        let again = store.apply(&command(1, 0, 0, append("x")));
        assert_eq!(first, Applied::Reply(Ok(KvOutput::Done)));
        assert_eq!(again, first);
        assert_eq!(store.map().get("k"), Some("x"));
        store.apply(&command(1, 1, 1, append("y")));
        assert_eq!(store.apply(&command(1, 0, 0, append("x"))), Applied::Stale);
        let read = store.apply(&command(
            2,
            0,
            0,
            KvCommand::Get {
                key: "k".to_string(),
            },
        ));
        assert_eq!(
            read,
            Applied::Reply(Ok(KvOutput::Value(Some("xy".to_string()))))
        );
        assert_eq!(store.sessions().result_count(), 1);
    }

    #[test]
    fn replicas_applying_the_same_log_agree() {
        let log: Vec<SessionCommand> = (0..50)
            .map(|index| command(index % 3, index / 3, index / 3, append(&index.to_string())))
            .collect();
        let mut left = SessionKv::new();
        let mut right = SessionKv::new();
        let left_answers: Vec<Applied> = log.iter().map(|entry| left.apply(entry)).collect();
        let right_answers: Vec<Applied> = log.iter().map(|entry| right.apply(entry)).collect();
        assert_eq!(left_answers, right_answers);
        assert_eq!(left, right);
    }
}
