//! At-most-once key-value RPC: one server, clients that retry on timeout, and sessions that
//! turn the retries into exactly-once execution.
//!
//! Every mutation is persisted and synced before its reply leaves (the output-commit rule),
//! so a crash and restart loses nothing acknowledged; reads are answered from memory once
//! every earlier mutation is durable. The session table ([`synod_core::session`]) answers a
//! retried mutation with its recorded result and ignores delayed copies of acknowledged ones.
//!
//! [`AmoVariant`] keeps two deliberately broken servers as negative controls for the
//! simulator and the checker: one without deduplication (a duplicated or retried append is
//! applied twice) and one that replies before the mutation is durable (a crash loses an
//! acknowledged write).

use serde::{Deserialize, Serialize};
use std::time::Duration;
use synod_core::kv::{KvCommand, KvMap, KvOutput};
use synod_core::node::{Client, ClientContext, ClientId, Completion, Context, Node, NodeId};
use synod_core::session::{Admission, SessionError, SessionTable};

/// Which server behaviour to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AmoVariant {
    /// Deduplicates through sessions and replies only after the mutation is durable.
    Correct,
    /// Broken: executes every copy of a request (no session table).
    NoDedup,
    /// Broken: replies to a mutation before persisting it.
    ReplyBeforeDurable,
}

impl AmoVariant {
    /// Every variant, correct first.
    pub const ALL: [AmoVariant; 3] = [
        AmoVariant::Correct,
        AmoVariant::NoDedup,
        AmoVariant::ReplyBeforeDurable,
    ];

    /// The variant's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            AmoVariant::Correct => "correct",
            AmoVariant::NoDedup => "no-dedup",
            AmoVariant::ReplyBeforeDurable => "reply-before-durable",
        }
    }
}

/// A client request: a command numbered within the client's session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AmoRequest {
    /// The request's sequence number in its client's session.
    pub sequence: u64,
    /// Every sequence number below this one is answered and will never be retried.
    pub acknowledged_below: u64,
    /// The command.
    pub command: KvCommand,
}

/// The server's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AmoResponse {
    /// The sequence number of the request answered.
    pub sequence: u64,
    /// The command's output, or why it was refused without being executed.
    pub result: Result<KvOutput, SessionError>,
}

/// A durable record: one executed mutation, replayed on recovery.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AmoRecord {
    /// The client that sent it.
    pub client: ClientId,
    /// Its sequence number.
    pub sequence: u64,
    /// The client's acknowledged low-water mark when it arrived.
    pub acknowledged_below: u64,
    /// The mutation.
    pub command: KvCommand,
}

/// The server has no peers and no timers: these types have no values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Never {}

/// The at-most-once key-value server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AmoKvServer {
    variant: AmoVariant,
    map: KvMap,
    sessions: SessionTable<Result<KvOutput, SessionError>>,
}

impl AmoKvServer {
    /// An empty server of the given variant.
    pub fn new(variant: AmoVariant) -> Self {
        AmoKvServer {
            variant,
            map: KvMap::new(),
            sessions: SessionTable::default(),
        }
    }

    /// The session table (for invariants: it must stay bounded).
    pub fn sessions(&self) -> &SessionTable<Result<KvOutput, SessionError>> {
        &self.sessions
    }

    /// Checks that the session table holds at most one result per client: our clients keep
    /// one request outstanding and acknowledge each answer with their next mutation.
    pub fn check_session_bound(&self, clients: usize) -> Result<(), String> {
        let results = self.sessions.result_count();
        if self.sessions.session_count() > clients || results > clients {
            return Err(format!(
                "session table unbounded: {} sessions holding {results} results for {clients} clients",
                self.sessions.session_count()
            ));
        }
        Ok(())
    }

    /// The current map.
    pub fn map(&self) -> &KvMap {
        &self.map
    }

    /// Executes a mutation admitted by the session table (or by no table at all).
    fn execute(&mut self, record: &AmoRecord) -> KvOutput {
        let output = self.map.apply(&record.command);
        if self.variant != AmoVariant::NoDedup {
            self.sessions
                .record(record.client, record.sequence, Ok(output.clone()));
        }
        output
    }

    /// Decides whether a mutation runs; `Err` carries an immediate answer, `Ok(None)` means
    /// ignore the request.
    fn admit(
        &mut self,
        client: ClientId,
        request: &AmoRequest,
    ) -> Result<bool, Result<KvOutput, SessionError>> {
        if self.variant == AmoVariant::NoDedup {
            return Ok(true);
        }
        match self
            .sessions
            .admit(client, request.sequence, request.acknowledged_below)
        {
            Ok(Admission::Execute) => Ok(true),
            Ok(Admission::Stale) => Ok(false),
            Ok(Admission::Duplicate(result)) => Err(result),
            Err(error) => Err(Err(error)),
        }
    }
}

impl Node for AmoKvServer {
    type Message = Never;
    type Request = AmoRequest;
    type Response = AmoResponse;
    type Record = AmoRecord;
    type Timer = Never;

    fn on_start(&mut self, _ctx: &mut Context<Self>) {}

    fn on_recover(&mut self, records: Vec<AmoRecord>, _ctx: &mut Context<Self>) {
        for record in records {
            let request = AmoRequest {
                sequence: record.sequence,
                acknowledged_below: record.acknowledged_below,
                command: record.command.clone(),
            };
            // Replaying the same admissions in the same order rebuilds the same table.
            let admitted = self.admit(record.client, &request);
            assert_eq!(
                admitted,
                Ok(true),
                "a durable record was not admissible on replay"
            );
            self.execute(&record);
        }
    }

    fn on_message(&mut self, _from: NodeId, message: Never, _ctx: &mut Context<Self>) {
        match message {}
    }

    fn on_timer(&mut self, timer: Never, _ctx: &mut Context<Self>) {
        match timer {}
    }

    fn on_request(&mut self, client: ClientId, request: AmoRequest, ctx: &mut Context<Self>) {
        let sequence = request.sequence;
        if request.command.is_read_only() {
            // Re-executing a read is harmless, so reads bypass the session table.
            let output = self.map.apply(&request.command);
            ctx.reply(
                client,
                AmoResponse {
                    sequence,
                    result: Ok(output),
                },
            );
            return;
        }
        match self.admit(client, &request) {
            Ok(false) => {}
            Err(result) => ctx.reply(client, AmoResponse { sequence, result }),
            Ok(true) => {
                let record = AmoRecord {
                    client,
                    sequence,
                    acknowledged_below: request.acknowledged_below,
                    command: request.command,
                };
                let output = self.execute(&record);
                let response = AmoResponse {
                    sequence,
                    result: Ok(output),
                };
                if self.variant == AmoVariant::ReplyBeforeDurable {
                    ctx.reply(client, response);
                    ctx.persist(record);
                    ctx.sync();
                } else {
                    ctx.persist(record);
                    ctx.sync();
                    ctx.reply(client, response);
                }
            }
        }
    }
}

/// Client retry settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AmoClientConfig {
    /// Shortest wait before resending an unanswered request.
    pub retry_after_min: Duration,
    /// Longest wait before resending.
    pub retry_after_max: Duration,
    /// After this long without an answer the operation completes as unknown (`info`).
    pub give_up_after: Duration,
}

impl Default for AmoClientConfig {
    fn default() -> Self {
        AmoClientConfig {
            retry_after_min: Duration::from_millis(10),
            retry_after_max: Duration::from_millis(20),
            give_up_after: Duration::from_millis(500),
        }
    }
}

/// The one request a client has outstanding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Outstanding {
    request: AmoRequest,
    give_up_at: synod_core::time::Time,
}

/// The client timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RetryTimer;

/// A client that retries one request at a time until it is answered or it gives up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AmoKvClient {
    config: AmoClientConfig,
    server: NodeId,
    next_sequence: u64,
    acknowledged_below: u64,
    outstanding: Option<Outstanding>,
}

impl AmoKvClient {
    /// A client of the server `server`.
    pub fn new(server: NodeId, config: AmoClientConfig) -> Self {
        AmoKvClient {
            config,
            server,
            next_sequence: 0,
            acknowledged_below: 0,
            outstanding: None,
        }
    }

    fn arm_retry(&self, ctx: &mut ClientContext<Self>) {
        ctx.set_timer(
            RetryTimer,
            self.config.retry_after_min,
            self.config.retry_after_max,
        );
    }

    /// Ends the outstanding request: the client will never retry it again.
    fn finish(&mut self, completion: Completion<KvOutput>, ctx: &mut ClientContext<Self>) {
        if let Some(outstanding) = self.outstanding.take() {
            self.acknowledged_below = outstanding.request.sequence + 1;
            ctx.cancel_timer(RetryTimer);
            ctx.complete(completion);
        }
    }
}

impl Client for AmoKvClient {
    type Node = AmoKvServer;
    type Operation = KvCommand;
    type Output = KvOutput;
    type Timer = RetryTimer;

    fn on_invoke(&mut self, command: KvCommand, ctx: &mut ClientContext<Self>) {
        assert!(self.outstanding.is_none(), "one operation at a time");
        let request = AmoRequest {
            sequence: self.next_sequence,
            acknowledged_below: self.acknowledged_below,
            command,
        };
        self.next_sequence += 1;
        ctx.send(self.server, request.clone());
        self.outstanding = Some(Outstanding {
            request,
            give_up_at: ctx.now() + self.config.give_up_after,
        });
        self.arm_retry(ctx);
    }

    fn on_response(&mut self, _from: NodeId, response: AmoResponse, ctx: &mut ClientContext<Self>) {
        let Some(outstanding) = &self.outstanding else {
            return;
        };
        if outstanding.request.sequence != response.sequence {
            return; // An answer to an earlier attempt that arrived late.
        }
        let completion = match response.result {
            Ok(output) => Completion::Ok(output),
            Err(error) => Completion::Fail(error.to_string()),
        };
        self.finish(completion, ctx);
    }

    fn on_timer(&mut self, _timer: RetryTimer, ctx: &mut ClientContext<Self>) {
        let Some(outstanding) = &self.outstanding else {
            return;
        };
        if ctx.now() >= outstanding.give_up_at {
            let message = format!(
                "no answer from {} within {:?}",
                self.server, self.config.give_up_after
            );
            self.finish(Completion::Info(message), ctx);
            return;
        }
        ctx.send(self.server, outstanding.request.clone());
        self.arm_retry(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_core::node::Effect;
    use synod_core::rng::Rng;
    use synod_core::time::Time;

    fn append(key: &str, value: &str) -> KvCommand {
        KvCommand::Append {
            key: key.to_string(),
            value: value.to_string(),
        }
    }

    fn deliver(
        server: &mut AmoKvServer,
        client: u64,
        sequence: u64,
        acknowledged_below: u64,
        command: KvCommand,
    ) -> Vec<Effect<AmoKvServer>> {
        let members = [NodeId(0)];
        let mut rng = Rng::new(0);
        let mut ctx = Context::new(NodeId(0), &members, Time::ZERO, &mut rng);
        let request = AmoRequest {
            sequence,
            acknowledged_below,
            command,
        };
        server.on_request(ClientId(client), request, &mut ctx);
        ctx.into_effects()
    }

    #[test]
    fn a_retried_append_is_applied_once_and_answered_twice() {
        let mut server = AmoKvServer::new(AmoVariant::Correct);
        let first = deliver(&mut server, 1, 0, 0, append("k", "x"));
        let second = deliver(&mut server, 1, 0, 0, append("k", "x"));
        assert_eq!(server.map().get("k"), Some("x"));
        assert_eq!(first.len(), 3, "persist, sync, reply: {first:?}");
        assert!(matches!(
            first[2],
            Effect::Reply {
                records_required: 1,
                ..
            }
        ));
        assert_eq!(second.len(), 1, "only the recorded reply: {second:?}");
        // A copy arriving after the client moved on is ignored.
        deliver(&mut server, 1, 1, 1, append("k", "y"));
        assert!(deliver(&mut server, 1, 0, 0, append("k", "x")).is_empty());
        assert_eq!(server.map().get("k"), Some("xy"));
    }

    #[test]
    fn the_session_bound_check_notices_growth() {
        let mut server = AmoKvServer::new(AmoVariant::Correct);
        assert_eq!(server.check_session_bound(1), Ok(()));
        // Two clients, one result each: within a bound of two, beyond a bound of one.
        deliver(&mut server, 1, 0, 0, append("k", "x"));
        deliver(&mut server, 2, 0, 0, append("k", "y"));
        assert_eq!(server.check_session_bound(2), Ok(()));
        assert!(server.check_session_bound(1).is_err());
        // One client holding two unacknowledged results exceeds a bound of one too.
        let mut greedy = AmoKvServer::new(AmoVariant::Correct);
        deliver(&mut greedy, 1, 0, 0, append("k", "x"));
        deliver(&mut greedy, 1, 1, 0, append("k", "y"));
        assert!(greedy.check_session_bound(1).is_err());
    }

    #[test]
    fn the_broken_variants_are_broken() {
        let mut no_dedup = AmoKvServer::new(AmoVariant::NoDedup);
        deliver(&mut no_dedup, 1, 0, 0, append("k", "x"));
        deliver(&mut no_dedup, 1, 0, 0, append("k", "x"));
        assert_eq!(no_dedup.map().get("k"), Some("xx"));

        let mut early = AmoKvServer::new(AmoVariant::ReplyBeforeDurable);
        let effects = deliver(&mut early, 1, 0, 0, append("k", "x"));
        assert!(matches!(
            effects[0],
            Effect::Reply {
                records_required: 0,
                ..
            }
        ));
    }

    #[test]
    fn recovery_rebuilds_the_map_and_the_sessions() {
        let mut server = AmoKvServer::new(AmoVariant::Correct);
        let mut records = Vec::new();
        for (sequence, value) in ["a", "b", "c"].iter().enumerate() {
            for effect in deliver(
                &mut server,
                4,
                sequence as u64,
                sequence as u64,
                append("k", value),
            ) {
                if let Effect::Persist { record } = effect {
                    records.push(record);
                }
            }
        }
        let mut restarted = AmoKvServer::new(AmoVariant::Correct);
        let members = [NodeId(0)];
        let mut rng = Rng::new(0);
        let mut ctx = Context::new(NodeId(0), &members, Time::ZERO, &mut rng);
        restarted.on_recover(records, &mut ctx);
        assert_eq!(restarted, server);
        // The last request's retry is still answered from the session, not re-executed.
        let retry = deliver(&mut restarted, 4, 2, 2, append("k", "c"));
        assert_eq!(retry.len(), 1);
        assert_eq!(restarted.map().get("k"), Some("abc"));
    }

    #[test]
    fn the_client_retries_then_gives_up_as_unknown() {
        let config = AmoClientConfig::default();
        let mut client = AmoKvClient::new(NodeId(0), config);
        let members = [NodeId(0)];
        let mut rng = Rng::new(0);
        let mut ctx = ClientContext::new(ClientId(1), &members, Time::ZERO, &mut rng);
        client.on_invoke(append("k", "x"), &mut ctx);
        let effects = ctx.into_effects();
        assert!(matches!(
            effects[0],
            synod_core::node::ClientEffect::Send { .. }
        ));

        let mut ctx = ClientContext::new(ClientId(1), &members, Time::from_millis(15), &mut rng);
        client.on_timer(RetryTimer, &mut ctx);
        let effects = ctx.into_effects();
        assert!(matches!(
            effects[0],
            synod_core::node::ClientEffect::Send { .. }
        ));

        let mut ctx = ClientContext::new(ClientId(1), &members, Time::from_millis(600), &mut rng);
        client.on_timer(RetryTimer, &mut ctx);
        let effects = ctx.into_effects();
        assert!(effects.iter().any(|effect| matches!(
            effect,
            synod_core::node::ClientEffect::Complete(Completion::Info(_))
        )));
        // The abandoned request is acknowledged so the server treats late copies as stale.
        let mut ctx = ClientContext::new(ClientId(1), &members, Time::from_millis(601), &mut rng);
        client.on_invoke(append("k", "y"), &mut ctx);
        let effects = ctx.into_effects();
        match &effects[0] {
            synod_core::node::ClientEffect::Send { request, .. } => {
                assert_eq!(request.sequence, 1);
                assert_eq!(request.acknowledged_below, 1);
            }
            other => panic!("expected a send, got {other:?}"),
        }
    }
}
