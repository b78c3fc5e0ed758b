//! Closed-loop client workloads and how their operations appear in a history.

use crate::config::WorkloadConfig;
use serde_json::Value;
use synod_core::kv::{KvCommand, KvOutput};
use synod_core::node::ClientId;
use synod_core::rng::Rng;

/// Generates operations for clients and renders them as history events.
pub trait Workload {
    /// What clients are asked to do.
    type Operation: Clone;
    /// What a successful operation returns.
    type Output;

    /// The next operation for `client`, or `None` when that client is done.
    fn next_operation(&mut self, client: ClientId, rng: &mut Rng) -> Option<Self::Operation>;
    /// `(f, key, value)` of the operation's invoke event.
    fn describe_invoke(&self, operation: &Self::Operation) -> (String, Option<String>, Value);
    /// The `value` of the operation's `ok` event.
    fn describe_ok(&self, operation: &Self::Operation, output: &Self::Output) -> Value;
}

/// Random gets, puts, appends and deletes over a few keys. Every written value is unique
/// (`<client>:<n>;`), so a read reveals exactly which writes it saw and a doubled append
/// shows up as a repeated token.
#[derive(Clone, Debug)]
pub struct KvWorkload {
    config: WorkloadConfig,
    issued: Vec<u32>,
}

impl KvWorkload {
    /// A workload following `config`.
    pub fn new(config: WorkloadConfig) -> Self {
        let issued = vec![0; config.clients as usize];
        KvWorkload { config, issued }
    }
}

impl Workload for KvWorkload {
    type Operation = KvCommand;
    type Output = KvOutput;

    fn next_operation(&mut self, client: ClientId, rng: &mut Rng) -> Option<KvCommand> {
        let index = usize::try_from(client.0).ok()?;
        let issued = self.issued.get_mut(index)?;
        if *issued >= self.config.operations_per_client {
            return None;
        }
        *issued += 1;
        let serial = *issued;
        let key = format!("k{}", rng.below(u64::from(self.config.keys.max(1))));
        let value = format!("{}:{};", client.0, serial);
        let weights = [
            self.config.get_weight,
            self.config.put_weight,
            self.config.append_weight,
            self.config.delete_weight,
        ];
        let total: u64 = weights.iter().map(|&weight| u64::from(weight)).sum();
        let mut pick = rng.below(total.max(1));
        let mut choice = 0;
        for (index, weight) in weights.iter().enumerate() {
            if pick < u64::from(*weight) {
                choice = index;
                break;
            }
            pick -= u64::from(*weight);
        }
        Some(match choice {
            0 => KvCommand::Get { key },
            1 => KvCommand::Put { key, value },
            2 => KvCommand::Append { key, value },
            _ => KvCommand::Delete { key },
        })
    }

    fn describe_invoke(&self, command: &KvCommand) -> (String, Option<String>, Value) {
        describe_kv_invoke(command)
    }

    fn describe_ok(&self, command: &KvCommand, output: &KvOutput) -> Value {
        describe_kv_ok(command, output)
    }
}

/// `(f, key, value)` of a key-value command's invoke event.
fn describe_kv_invoke(command: &KvCommand) -> (String, Option<String>, Value) {
    let value = command
        .argument()
        .map_or(Value::Null, |argument| Value::String(argument.to_string()));
    (
        command.name().to_string(),
        Some(command.key().to_string()),
        value,
    )
}

/// The `value` of a key-value command's `ok` event: what a read saw, else the argument.
fn describe_kv_ok(command: &KvCommand, output: &KvOutput) -> Value {
    match output {
        KvOutput::Value(Some(read)) => Value::String(read.clone()),
        KvOutput::Value(None) => Value::Null,
        KvOutput::Done => describe_kv_invoke(command).2,
    }
}

/// Fixed per-client lists of key-value commands, as the model checker's clients run them;
/// used to replay a model-checker path in the simulator.
#[derive(Clone, Debug)]
pub struct ScriptedKvWorkload {
    scripts: Vec<std::collections::VecDeque<KvCommand>>,
}

impl ScriptedKvWorkload {
    /// Client `i` performs `scripts[i]` in order.
    pub fn new(scripts: Vec<Vec<KvCommand>>) -> Self {
        ScriptedKvWorkload {
            scripts: scripts.into_iter().map(Into::into).collect(),
        }
    }
}

impl Workload for ScriptedKvWorkload {
    type Operation = KvCommand;
    type Output = KvOutput;

    fn next_operation(&mut self, client: ClientId, _rng: &mut Rng) -> Option<KvCommand> {
        self.scripts
            .get_mut(usize::try_from(client.0).ok()?)?
            .pop_front()
    }

    fn describe_invoke(&self, command: &KvCommand) -> (String, Option<String>, Value) {
        describe_kv_invoke(command)
    }

    fn describe_ok(&self, command: &KvCommand, output: &KvOutput) -> Value {
        describe_kv_ok(command, output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_quota_of_unique_writes() {
        let config = WorkloadConfig {
            clients: 2,
            operations_per_client: 50,
            get_weight: 0,
            delete_weight: 0,
            ..WorkloadConfig::default()
        };
        let mut workload = KvWorkload::new(config);
        let mut rng = Rng::new(3);
        let mut values = std::collections::BTreeSet::new();
        for client in 0..2 {
            while let Some(command) = workload.next_operation(ClientId(client), &mut rng) {
                assert!(!command.is_read_only());
                assert!(values.insert(command.argument().map(str::to_string)));
            }
        }
        assert_eq!(values.len(), 100);
        assert!(workload.next_operation(ClientId(7), &mut rng).is_none());
    }
}
