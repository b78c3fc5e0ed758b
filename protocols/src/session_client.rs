//! The sans-IO client of a leader-based replicated cluster, shared by every replicated state
//! machine (the session key-value store and the etcd MVCC machine).
//!
//! It keeps one request outstanding, numbers requests in its session (so a retry that
//! reaches the log twice executes once), follows `NotLeader` hints, moves on to the next
//! node when a request goes unanswered, and gives up as unknown (`info`) after
//! [`ReplicatedClientConfig::give_up_after`]. A refusal by the machine or the session is a
//! definite `fail`: the request was not executed.
//!
//! What differs between machines is only the shape of their requests and responses, which
//! [`SessionRequest`] and [`SessionResponse`] describe.

use std::marker::PhantomData;
use std::time::Duration;

use synod_core::node::{Client, ClientContext, Completion, Node, NodeId, Value};
use synod_core::time::Time;

/// Client retry settings for replicated clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplicatedClientConfig {
    /// Shortest wait before trying another node.
    pub retry_after_min: Duration,
    /// Longest wait before trying another node.
    pub retry_after_max: Duration,
    /// After this long without an answer the operation completes as unknown (`info`).
    pub give_up_after: Duration,
}

impl Default for ReplicatedClientConfig {
    fn default() -> Self {
        ReplicatedClientConfig {
            retry_after_min: Duration::from_millis(20),
            retry_after_max: Duration::from_millis(40),
            give_up_after: Duration::from_secs(1),
        }
    }
}

/// The client's retry timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RetryTimer;

/// A request numbered in a client's session.
pub trait SessionRequest: Clone {
    /// What a workload asks for.
    type Operation: Value;
    /// The request for `operation` with `sequence` in the session, acknowledging every
    /// sequence number below `acknowledged_below`.
    fn numbered(sequence: u64, acknowledged_below: u64, operation: Self::Operation) -> Self;
    /// The request's sequence number.
    fn sequence(&self) -> u64;
}

/// How a cluster answered a numbered request.
pub enum Answer<O> {
    /// Executed, with this output.
    Done(O),
    /// Refused without being executed, for this reason: a definite failure.
    Refused(String),
    /// Not executed: the node does not lead, and believes `hint` does.
    NotLeader {
        /// The node believed to lead, if any.
        hint: Option<NodeId>,
    },
}

/// A response to a [`SessionRequest`].
pub trait SessionResponse {
    /// What an executed request returns.
    type Output: Value;
    /// The sequence number of the request answered.
    fn sequence(&self) -> u64;
    /// The answer.
    fn into_answer(self) -> Answer<Self::Output>;
}

/// The one request a client has outstanding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Outstanding<R> {
    request: R,
    give_up_at: Time,
}

/// A client of a leader-based cluster of nodes `N`: it sends to the node it believes leads,
/// follows `NotLeader` hints, and moves on to the next node when a request goes unanswered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionClient<N: Node> {
    config: ReplicatedClientConfig,
    leader_guess: NodeId,
    next_sequence: u64,
    acknowledged_below: u64,
    outstanding: Option<Outstanding<N::Request>>,
    node: PhantomData<N>,
}

impl<N: Node> SessionClient<N> {
    /// A client that first tries `first_guess`.
    pub fn new(first_guess: NodeId, config: ReplicatedClientConfig) -> Self {
        SessionClient {
            config,
            leader_guess: first_guess,
            next_sequence: 0,
            acknowledged_below: 0,
            outstanding: None,
            node: PhantomData,
        }
    }
}

impl<N> SessionClient<N>
where
    N: Node<Request: SessionRequest, Response: SessionResponse>,
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

    fn finish(
        &mut self,
        completion: Completion<<N::Response as SessionResponse>::Output>,
        ctx: &mut ClientContext<Self>,
    ) {
        if let Some(outstanding) = self.outstanding.take() {
            self.acknowledged_below = outstanding.request.sequence() + 1;
            ctx.cancel_timer(RetryTimer);
            ctx.complete(completion);
        }
    }
}

impl<N> Client for SessionClient<N>
where
    N: Node<Request: SessionRequest, Response: SessionResponse>,
{
    type Node = N;
    type Operation = <N::Request as SessionRequest>::Operation;
    type Output = <N::Response as SessionResponse>::Output;
    type Timer = RetryTimer;

    fn on_invoke(&mut self, operation: Self::Operation, ctx: &mut ClientContext<Self>) {
        // The driver contract: one operation at a time per client.
        assert!(self.outstanding.is_none(), "one operation at a time");
        let request = N::Request::numbered(self.next_sequence, self.acknowledged_below, operation);
        self.next_sequence += 1;
        self.outstanding = Some(Outstanding {
            request,
            give_up_at: ctx.now() + self.config.give_up_after,
        });
        self.send_outstanding(ctx);
    }

    fn on_response(&mut self, from: NodeId, response: N::Response, ctx: &mut ClientContext<Self>) {
        let Some(outstanding) = &self.outstanding else {
            return;
        };
        if outstanding.request.sequence() != response.sequence() {
            return; // A late answer to an earlier attempt.
        }
        match response.into_answer() {
            Answer::Done(output) => self.finish(Completion::Ok(output), ctx),
            Answer::Refused(reason) => self.finish(Completion::Fail(reason), ctx),
            Answer::NotLeader { hint } => {
                // Follow a hint to another node at once; without one, an election is
                // probably under way: the retry timer tries the next node.
                if let Some(hint) = hint
                    && hint != from
                    && hint != self.leader_guess
                {
                    self.leader_guess = hint;
                    self.send_outstanding(ctx);
                }
            }
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
