//! A sans-IO client of an MVCC cluster: leader-seeking, retrying, with a session.
//!
//! It keeps one request outstanding, numbers requests in its session (so a retry that
//! reaches the log twice executes once), follows `NotLeader` hints, moves on to the next
//! node when a request goes unanswered, and gives up as unknown (`info`) after
//! [`ReplicatedClientConfig::give_up_after`]. A refusal by the store or the session is a
//! definite `fail`: the request was not executed.

use std::marker::PhantomData;

use synod_core::node::{Client, ClientContext, Completion, Node, NodeId};
use synod_core::time::Time;

use crate::kv_state::{ReplicatedClientConfig, RetryTimer};
use crate::mvcc::machine::{MvccOperation, MvccOutput, MvccRequest, MvccResponse, RequestError};

/// The one request a client has outstanding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Outstanding {
    request: MvccRequest,
    give_up_at: Time,
}

/// A client of a leader-based cluster running [`crate::mvcc::MvccMachine`] on nodes `N`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MvccClient<N> {
    config: ReplicatedClientConfig,
    leader_guess: NodeId,
    next_sequence: u64,
    acknowledged_below: u64,
    outstanding: Option<Outstanding>,
    node: PhantomData<N>,
}

impl<N> MvccClient<N> {
    /// A client that first tries `first_guess`.
    pub fn new(first_guess: NodeId, config: ReplicatedClientConfig) -> Self {
        MvccClient {
            config,
            leader_guess: first_guess,
            next_sequence: 0,
            acknowledged_below: 0,
            outstanding: None,
            node: PhantomData,
        }
    }
}

impl<N> MvccClient<N>
where
    N: Node<Request = MvccRequest, Response = MvccResponse>,
{
    fn send_outstanding(&self, ctx: &mut ClientContext<Self>) {
        if let Some(outstanding) = &self.outstanding {
            ctx.send(self.leader_guess, outstanding.request.clone());
            ctx.set_timer(
                RetryTimer,
                self.config.retry_after_min,
                self.config.retry_after_max,
            );
        }
    }

    fn next_member(&self, members: &[NodeId]) -> NodeId {
        let position = members
            .iter()
            .position(|&member| member == self.leader_guess)
            .map_or(0, |index| (index + 1) % members.len().max(1));
        members.get(position).copied().unwrap_or(self.leader_guess)
    }

    fn finish(&mut self, completion: Completion<MvccOutput>, ctx: &mut ClientContext<Self>) {
        if let Some(outstanding) = self.outstanding.take() {
            self.acknowledged_below = outstanding.request.sequence + 1;
            ctx.cancel_timer(RetryTimer);
            ctx.complete(completion);
        }
    }
}

impl<N> Client for MvccClient<N>
where
    N: Node<Request = MvccRequest, Response = MvccResponse>,
{
    type Node = N;
    type Operation = MvccOperation;
    type Output = MvccOutput;
    type Timer = RetryTimer;

    fn on_invoke(&mut self, operation: MvccOperation, ctx: &mut ClientContext<Self>) {
        // The driver contract: one operation at a time per client.
        assert!(self.outstanding.is_none(), "one operation at a time");
        let request = MvccRequest {
            sequence: self.next_sequence,
            acknowledged_below: self.acknowledged_below,
            operation,
        };
        self.next_sequence += 1;
        self.outstanding = Some(Outstanding {
            request,
            give_up_at: ctx.now() + self.config.give_up_after,
        });
        self.send_outstanding(ctx);
    }

    fn on_response(&mut self, from: NodeId, response: MvccResponse, ctx: &mut ClientContext<Self>) {
        let Some(outstanding) = &self.outstanding else {
            return;
        };
        if outstanding.request.sequence != response.sequence {
            return; // A late answer to an earlier request.
        }
        match response.result {
            Ok(output) => self.finish(Completion::Ok(output), ctx),
            Err(RequestError::NotLeader { hint }) => {
                // Follow a hint at once; without one, an election is probably under way:
                // the retry timer tries the next node.
                if let Some(hint) = hint
                    && hint != from
                    && hint != self.leader_guess
                {
                    self.leader_guess = hint;
                    self.send_outstanding(ctx);
                }
            }
            Err(error) => self.finish(Completion::Fail(error.to_string()), ctx),
        }
    }

    fn on_timer(&mut self, _timer: RetryTimer, ctx: &mut ClientContext<Self>) {
        let Some(outstanding) = &self.outstanding else {
            return;
        };
        if ctx.now() >= outstanding.give_up_at {
            let message = format!("no answer within {:?}", self.config.give_up_after);
            self.finish(Completion::Info(message), ctx);
            return;
        }
        self.leader_guess = self.next_member(ctx.members());
        self.send_outstanding(ctx);
    }
}
