//! The simple key-value vocabulary shared by the replicated-map protocols (at-most-once KV,
//! primary-backup, Paxos) and by the simulator's workloads: get, put, append, delete on
//! string keys and values, plus the sequential map that gives them meaning.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One key-value command.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KvCommand {
    /// Read a key.
    Get {
        /// The key.
        key: String,
    },
    /// Overwrite a key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Append to a key's value (a missing key counts as empty).
    Append {
        /// The key.
        key: String,
        /// The suffix.
        value: String,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: String,
    },
}

impl KvCommand {
    /// The key the command touches.
    pub fn key(&self) -> &str {
        match self {
            KvCommand::Get { key }
            | KvCommand::Put { key, .. }
            | KvCommand::Append { key, .. }
            | KvCommand::Delete { key } => key,
        }
    }

    /// The history name of the command (`f` in a history event).
    pub fn name(&self) -> &'static str {
        match self {
            KvCommand::Get { .. } => "get",
            KvCommand::Put { .. } => "put",
            KvCommand::Append { .. } => "append",
            KvCommand::Delete { .. } => "delete",
        }
    }

    /// The command's argument, if it has one.
    pub fn argument(&self) -> Option<&str> {
        match self {
            KvCommand::Put { value, .. } | KvCommand::Append { value, .. } => Some(value),
            KvCommand::Get { .. } | KvCommand::Delete { .. } => None,
        }
    }

    /// True if the command changes no state.
    pub fn is_read_only(&self) -> bool {
        matches!(self, KvCommand::Get { .. })
    }
}

/// The result of a successful command.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KvOutput {
    /// What a get read (`None`: the key is missing).
    Value(Option<String>),
    /// A put, append or delete took effect.
    Done,
}

/// The sequential key-value map every replica applies commands to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KvMap {
    entries: BTreeMap<String, String>,
}

impl KvMap {
    /// An empty map.
    pub fn new() -> Self {
        KvMap::default()
    }

    /// Applies `command` and returns its output.
    pub fn apply(&mut self, command: &KvCommand) -> KvOutput {
        match command {
            KvCommand::Get { key } => KvOutput::Value(self.entries.get(key).cloned()),
            KvCommand::Put { key, value } => {
                self.entries.insert(key.clone(), value.clone());
                KvOutput::Done
            }
            KvCommand::Append { key, value } => {
                self.entries.entry(key.clone()).or_default().push_str(value);
                KvOutput::Done
            }
            KvCommand::Delete { key } => {
                self.entries.remove(key);
                KvOutput::Done
            }
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Number of keys present.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no key is present.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> String {
        name.to_string()
    }

    #[test]
    fn the_map_follows_kv_semantics() {
        let mut map = KvMap::new();
        let get = KvCommand::Get { key: key("a") };
        assert_eq!(map.apply(&get), KvOutput::Value(None));
        let append = KvCommand::Append {
            key: key("a"),
            value: key("x"),
        };
        assert_eq!(map.apply(&append), KvOutput::Done);
        map.apply(&append);
        assert_eq!(map.apply(&get), KvOutput::Value(Some(key("xx"))));
        map.apply(&KvCommand::Put {
            key: key("a"),
            value: key("y"),
        });
        assert_eq!(map.get("a"), Some("y"));
        map.apply(&KvCommand::Delete { key: key("a") });
        assert!(map.is_empty());
        assert_eq!(append.name(), "append");
        assert_eq!(append.argument(), Some("x"));
        assert!(get.is_read_only() && !append.is_read_only());
    }
}
