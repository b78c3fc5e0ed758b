//! The primary-backup client: finds the primary through the view service and retries one
//! numbered command at a time.

use super::{PbNode, PbRequest, PbResponse, VIEW_SERVICE, View};
use crate::kv_state::KvRequest;
use std::time::Duration;
use synod_core::kv::{KvCommand, KvOutput};
use synod_core::node::{Client, ClientContext, Completion, NodeId};
use synod_core::time::Time;

/// Client retry settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PbClientConfig {
    /// Shortest wait before asking again.
    pub retry_after_min: Duration,
    /// Longest wait before asking again.
    pub retry_after_max: Duration,
    /// After this long without an answer the operation completes as unknown (`info`).
    pub give_up_after: Duration,
}

impl Default for PbClientConfig {
    fn default() -> Self {
        PbClientConfig {
            retry_after_min: Duration::from_millis(10),
            retry_after_max: Duration::from_millis(20),
            // A failover takes about DEAD_AFTER_TICKS pings plus a state transfer (~40 ms);
            // the deadline leaves room for several.
            give_up_after: Duration::from_millis(500),
        }
    }
}

/// The client timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PbClientTimer;

/// The one command a client has outstanding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Outstanding {
    command: KvRequest,
    give_up_at: Time,
}

/// A client of a primary-backup cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PbClient {
    config: PbClientConfig,
    /// The newest view the client has heard of; it only routes, safety never depends on it.
    view: View,
    next_sequence: u64,
    acknowledged_below: u64,
    outstanding: Option<Outstanding>,
}

impl PbClient {
    /// A client that knows no view yet.
    pub fn new(config: PbClientConfig) -> Self {
        PbClient {
            config,
            view: View::INITIAL,
            next_sequence: 0,
            acknowledged_below: 0,
            outstanding: None,
        }
    }

    /// The newest view the client has heard of.
    pub fn view(&self) -> View {
        self.view
    }

    /// Sends the outstanding command to the primary, or asks for the view if there is
    /// none to send to.
    fn send_command(&self, ctx: &mut ClientContext<Self>) {
        let Some(outstanding) = &self.outstanding else {
            return;
        };
        match self.view.primary {
            Some(primary) => ctx.send(primary, PbRequest::Command(outstanding.command.clone())),
            None => ctx.send(VIEW_SERVICE, PbRequest::GetView),
        }
    }

    fn arm_retry(&self, ctx: &mut ClientContext<Self>) {
        ctx.set_timer(
            PbClientTimer,
            self.config.retry_after_min,
            self.config.retry_after_max,
        );
    }

    /// Ends the outstanding command: the client will never send it again.
    fn finish(&mut self, completion: Completion<KvOutput>, ctx: &mut ClientContext<Self>) {
        if let Some(outstanding) = self.outstanding.take() {
            self.acknowledged_below = outstanding.command.sequence + 1;
            ctx.cancel_timer(PbClientTimer);
            ctx.complete(completion);
        }
    }
}

impl Client for PbClient {
    type Node = PbNode;
    type Operation = KvCommand;
    type Output = KvOutput;
    type Timer = PbClientTimer;

    fn on_invoke(&mut self, command: KvCommand, ctx: &mut ClientContext<Self>) {
        assert!(self.outstanding.is_none(), "one operation at a time");
        let command = KvRequest {
            sequence: self.next_sequence,
            acknowledged_below: self.acknowledged_below,
            command,
        };
        self.next_sequence += 1;
        self.outstanding = Some(Outstanding {
            command,
            give_up_at: ctx.now() + self.config.give_up_after,
        });
        self.send_command(ctx);
        self.arm_retry(ctx);
    }

    fn on_response(&mut self, _from: NodeId, response: PbResponse, ctx: &mut ClientContext<Self>) {
        match response {
            PbResponse::View(view) => {
                // Only a newer view changes the route; resending on an equal one would let
                // a primary that is still installing its view bounce us in a tight loop.
                if view.number > self.view.number {
                    self.view = view;
                    if view.primary.is_some() {
                        self.send_command(ctx);
                    }
                }
            }
            PbResponse::Reply { sequence, result } => {
                let answers_outstanding = self
                    .outstanding
                    .as_ref()
                    .is_some_and(|outstanding| outstanding.command.sequence == sequence);
                if !answers_outstanding {
                    return; // A late answer to an earlier attempt.
                }
                let completion = match result {
                    Ok(output) => Completion::Ok(output),
                    Err(error) => Completion::Fail(error.to_string()),
                };
                self.finish(completion, ctx);
            }
        }
    }

    fn on_timer(&mut self, _timer: PbClientTimer, ctx: &mut ClientContext<Self>) {
        let Some(outstanding) = &self.outstanding else {
            return;
        };
        if ctx.now() >= outstanding.give_up_at {
            let message = format!(
                "no answer within {:?} (last known view {})",
                self.config.give_up_after, self.view
            );
            self.finish(Completion::Info(message), ctx);
            return;
        }
        // The primary may have changed: ask the view service, and try the one we know.
        if self.view.primary.is_some() {
            ctx.send(VIEW_SERVICE, PbRequest::GetView);
        }
        self.send_command(ctx);
        self.arm_retry(ctx);
    }
}
