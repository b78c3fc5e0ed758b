//! Primary-backup replication with a view service (seed 003, the classic 6.824 lab 2).
//!
//! One node type runs the whole cluster: node 0 is the **view service**, nodes 1.. are
//! **servers**. The view service decides, view by view, which server is the primary and
//! which the backup; the primary executes client operations, the backup mirrors them, and
//! clients find the primary by asking the view service.
//!
//! ```text
//!   client ──GetView──▶ view service (n0) ◀──Ping── every server, every PING_INTERVAL
//!     │                      │ ViewReply
//!     └──Command──▶ primary ──Forward(view, n, batch)──▶ backup
//!                   primary ◀──ForwardAck(view, n)────── backup
//!     ◀──Reply─────  (only after the ack)
//! ```
//!
//! # The rules
//!
//! **View service** ([`ViewService`]). A view is a number, a primary and a backup. A server
//! that has not pinged for [`DEAD_AFTER_TICKS`] ticks is dead. The first view makes the
//! first live server primary; later views promote the backup when the primary dies, replace
//! a dead backup, or add an idle server as backup; every change makes exactly one new view.
//! The view service never moves past a view its primary has not acknowledged: the primary
//! acknowledges view *v* by pinging with `installed_view = v`, which it does only once its
//! backup holds the state (so the backup it may later promote is never empty). Once a view
//! is acknowledged, a ping without state from its primary or backup means that server
//! restarted and lost its data: it counts as dead at once.
//!
//! **Servers** ([`PbServer`]). A primary serves only the view the view service told it, and
//! only once installed: it first transfers its whole [`SessionKv`] (map and client sessions)
//! to the view's backup and waits for the acknowledgement. It then forwards every command,
//! reads included, in numbered batches with one batch in flight, and applies a batch and
//! replies only after the backup acknowledged it. A backup accepts a transfer or a forward
//! only from the primary of the view it carries and only if that view is the newest it
//! knows, so a stale primary (partitioned, paused, or simply late to learn the next view)
//! can neither write nor read: its backup has moved on and never acknowledges it. Because
//! reads travel through the backup too, a read is linearized at the backup's acknowledgement.
//!
//! **Clients** ([`PbClient`]) ask the view service for the view, send each command to its
//! primary with a sequence number, retry with the same number, and give up as `info`
//! after a deadline. [`SessionKv`] turns the retries into at-most-once execution on every
//! replica, and because the sessions travel with the state transfer, across failover too.
//!
//! # Example
//!
//! The first server to ping becomes the primary of view 1 at the view service's next tick,
//! and the view is made durable before any reply can reveal it:
//!
//! ```
//! use synod_core::node::{Context, Effect, Node, NodeId};
//! use synod_core::rng::Rng;
//! use synod_core::time::Time;
//! use synod_protocols::pb::{PbMessage, PbNode, PbRecord, PbTimer, PbVariant, VIEW_SERVICE, View};
//!
//! let members = [VIEW_SERVICE, NodeId(1), NodeId(2)];
//! let mut rng = Rng::new(1);
//! let mut view_service = PbNode::new(VIEW_SERVICE, PbVariant::Correct);
//! let mut ctx = Context::new(VIEW_SERVICE, &members, Time::ZERO, &mut rng);
//! let ping = PbMessage::Ping { installed_view: 0, holds_state: false };
//! view_service.on_message(NodeId(1), ping.clone(), &mut ctx);
//! view_service.on_timer(PbTimer::Tick, &mut ctx);
//! view_service.on_message(NodeId(2), ping, &mut ctx);
//! let first = View { number: 1, primary: Some(NodeId(1)), backup: None };
//! let effects = ctx.into_effects();
//! assert!(effects.contains(&Effect::Persist { record: PbRecord::View(first) }));
//! // n2 learns view 1 only once that record is durable.
//! assert!(effects.contains(&Effect::Send {
//!     to: NodeId(2),
//!     message: PbMessage::ViewReply { view: first },
//!     records_required: 1,
//! }));
//! ```
//!
//! # Fault model
//!
//! - **Network**: messages may be lost, duplicated, reordered and delayed, and any sets of
//!   nodes and clients partitioned. Safety never depends on timing.
//! - **Servers** keep their state in memory only, as in the lab. A crashed server restarts
//!   *empty* and knows it ([`Node::on_recover`] versus [`Node::on_start`]): it rejoins as an
//!   idle server and becomes a backup again only through a state transfer. It never serves
//!   as primary with lost state: named primary while empty, it refuses, and the view service
//!   (which cannot pass the unacknowledged view) waits for ever. Only a first-boot server
//!   named primary of view 1 starts the empty store, because nothing can have been written
//!   before view 1.
//! - **The view service** persists every view and every acknowledgement and syncs before
//!   revealing a view (the output-commit rule), so a crash and restart of node 0 resumes
//!   where it stopped: view numbers never repeat and never go back. While it is down the
//!   current primary and backup go on serving; views simply cannot change.
//!
//! What this guarantees, under every fault above including crashes of the view service:
//! every history is linearizable, every mutation executes at most once, and at most one
//! server ever serves a given view. An acknowledged operation is never lost while the view
//! service keeps its records and a view's primary and backup do not both lose their state:
//! every acknowledged operation is on both, and only a server holding it is ever promoted.
//! The price is availability, as in the lab: if both lose their state, or the primary loses
//! its state before acknowledging its view (the view service cannot know whether the new
//! backup got the state), the view service can never move on and no server answers again
//! ([`invariants::permanent_stop`] recognises this state). The service stops rather than
//! serve an empty store. The simulator's crash sweeps end in this stop on about one seed in
//! ten (its nemesis crashes a node every 20-120 ms) and never in a wrong answer.

//! # Negative controls
//!
//! [`PbVariant`] keeps deliberately broken clusters the simulator, the linearizability
//! checker and the invariants in [`invariants`] must catch: a primary that replies before
//! its backup acknowledges, a backup that accepts forwards from any primary (split brain), a
//! view service that advances without the primary's acknowledgement, and a view service that
//! forgets its views in a crash.

mod client;
pub mod invariants;
mod server;
mod view_service;

#[cfg(test)]
mod datadriven;
#[cfg(test)]
mod scenarios;

pub use client::{PbClient, PbClientConfig, PbClientTimer};
pub use server::PbServer;
pub use view_service::ViewService;

use crate::kv_state::{KvRequest, SessionCommand, SessionKv};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use synod_core::kv::KvOutput;
use synod_core::node::{ClientId, Context, Node, NodeId};
use synod_core::session::SessionError;

/// The node that runs the view service; every other node is a server.
pub const VIEW_SERVICE: NodeId = NodeId(0);

/// How often servers ping the view service and the view service counts missed pings.
pub const PING_INTERVAL: Duration = Duration::from_millis(10);

/// A server silent for this many view-service ticks is dead. Three tolerates two lost or
/// late pings in a row (the simulator drops 5% of messages) without a needless view change.
pub const DEAD_AFTER_TICKS: u32 = 3;

/// How often a primary resends an unacknowledged state transfer or forward. Shorter than
/// the ping interval so a lost message costs less than a view change would.
pub const RETRANSMIT_INTERVAL: Duration = Duration::from_millis(4);

/// Client requests a primary holds while a batch is in flight or a transfer is under way;
/// beyond it new requests are dropped (clients retry). Each client keeps one request
/// outstanding, so this only fills with hundreds of clients.
pub const PENDING_REQUESTS_MAX: usize = 256;

/// Commands in one forwarded batch: bounds the forward message.
pub const FORWARD_BATCH_MAX: usize = 64;

const _: () = assert!(FORWARD_BATCH_MAX <= PENDING_REQUESTS_MAX);
const _: () = assert!(
    DEAD_AFTER_TICKS >= 2,
    "one lost ping must not kill a server"
);
const _: () = assert!(RETRANSMIT_INTERVAL.as_nanos() < PING_INTERVAL.as_nanos());

/// Which cluster behaviour to run: the correct one or a deliberately broken one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PbVariant {
    /// Every rule of the module documentation.
    Correct,
    /// Broken: the primary executes and replies as soon as a request arrives, before the
    /// backup has it; a failover or a stale primary's read then loses or hides writes.
    ReplyBeforeBackupAck,
    /// Broken: a backup acknowledges forwards from any sender in any view, so a deposed
    /// primary still gets its reads and writes acknowledged (split brain).
    BackupAcceptsAnyPrimary,
    /// Broken: the view service moves to a new view without the primary's acknowledgement
    /// and may promote a backup that never received the state.
    ViewServiceSkipsAck,
    /// Broken: the view service keeps its views in memory only; after a crash it starts
    /// again at view 0 and may hand view 1 to an empty server.
    VolatileViewService,
}

impl PbVariant {
    /// Every variant, correct first.
    pub const ALL: [PbVariant; 5] = [
        PbVariant::Correct,
        PbVariant::ReplyBeforeBackupAck,
        PbVariant::BackupAcceptsAnyPrimary,
        PbVariant::ViewServiceSkipsAck,
        PbVariant::VolatileViewService,
    ];

    /// The variant's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            PbVariant::Correct => "correct",
            PbVariant::ReplyBeforeBackupAck => "reply-before-backup-ack",
            PbVariant::BackupAcceptsAnyPrimary => "backup-accepts-any-primary",
            PbVariant::ViewServiceSkipsAck => "view-service-skips-ack",
            PbVariant::VolatileViewService => "volatile-view-service",
        }
    }
}

/// A view: which server is primary and which is backup, under a number that only grows.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct View {
    /// The view number; 0 is the initial view with no servers.
    pub number: u64,
    /// The server that executes operations.
    pub primary: Option<NodeId>,
    /// The server that mirrors them.
    pub backup: Option<NodeId>,
}

impl View {
    /// The view every node starts in: number 0, nobody serving.
    pub const INITIAL: View = View {
        number: 0,
        primary: None,
        backup: None,
    };

    /// True if `node` is this view's primary or backup.
    pub fn contains(&self, node: NodeId) -> bool {
        self.primary == Some(node) || self.backup == Some(node)
    }
}

impl std::fmt::Display for View {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |node: Option<NodeId>| node.map_or("-".to_string(), |node| node.to_string());
        write!(
            formatter,
            "v{}({}, {})",
            self.number,
            name(self.primary),
            name(self.backup)
        )
    }
}

/// Messages between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PbMessage {
    /// Server to view service: "I am alive". `installed_view` is the newest view the
    /// server has installed (from its primary, this acknowledges that view); `holds_state`
    /// is false while the server has no store (never had one, or lost it in a crash).
    Ping {
        /// The newest view the server installed.
        installed_view: u64,
        /// Whether the server holds a store.
        holds_state: bool,
    },
    /// View service to server: the current view, in answer to a ping.
    ViewReply {
        /// The view service's current view.
        view: View,
    },
    /// Primary to backup: the whole state, which the backup must hold before the view
    /// counts.
    Transfer {
        /// The view the transfer belongs to (its primary is the sender).
        view: View,
        /// The map and the sessions.
        store: SessionKv,
    },
    /// Backup to primary: the transfer for `view_number` is installed.
    TransferAck {
        /// The view of the transfer.
        view_number: u64,
    },
    /// Primary to backup: the next batch of commands, to apply in order.
    Forward {
        /// The view the primary serves.
        view_number: u64,
        /// The batch's number within the view, from 1.
        forward_number: u64,
        /// The commands, in the order the primary will apply them.
        commands: Vec<SessionCommand>,
    },
    /// Backup to primary: every batch up to `forward_number` of the view is applied.
    ForwardAck {
        /// The view of the batch.
        view_number: u64,
        /// The batch acknowledged.
        forward_number: u64,
    },
}

/// What a client asks a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PbRequest {
    /// Which view is current? (Sent to the view service.)
    GetView,
    /// Execute a command. (Sent to the primary; any other node answers with its view.)
    Command(KvRequest),
}

/// What a node answers a client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PbResponse {
    /// The view the node knows: the answer to [`PbRequest::GetView`], and the redirect a
    /// node that is not the primary sends instead of executing a command.
    View(View),
    /// The result of the command with this sequence number.
    Reply {
        /// The sequence number of the command answered.
        sequence: u64,
        /// Its output, or why its session refused it without executing it.
        result: Result<KvOutput, SessionError>,
    },
}

/// A durable record; only the view service writes any.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PbRecord {
    /// The view service moved to this view.
    View(View),
    /// The primary acknowledged the view with this number.
    Acknowledged(u64),
}

/// Timer kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PbTimer {
    /// View service: count a missed ping for every server and consider a view change.
    Tick,
    /// Server: ping the view service.
    Ping,
    /// Server: resend the unacknowledged transfer or forward.
    Retransmit,
}

/// A node of a primary-backup cluster: the view service (node 0) or a server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PbNode {
    /// Node 0.
    ViewService(ViewService),
    /// Nodes 1 and up.
    Server(PbServer),
}

impl PbNode {
    /// The node `id` of a cluster running `variant`: the view service for node 0, a
    /// server otherwise.
    pub fn new(id: NodeId, variant: PbVariant) -> PbNode {
        if id == VIEW_SERVICE {
            PbNode::ViewService(ViewService::new(variant))
        } else {
            PbNode::Server(PbServer::new(id, variant))
        }
    }

    /// The view service's state, if this is node 0.
    pub fn as_view_service(&self) -> Option<&ViewService> {
        match self {
            PbNode::ViewService(view_service) => Some(view_service),
            PbNode::Server(_) => None,
        }
    }

    /// The server's state, if this is a server.
    pub fn as_server(&self) -> Option<&PbServer> {
        match self {
            PbNode::ViewService(_) => None,
            PbNode::Server(server) => Some(server),
        }
    }
}

impl Node for PbNode {
    type Message = PbMessage;
    type Request = PbRequest;
    type Response = PbResponse;
    type Record = PbRecord;
    type Timer = PbTimer;

    fn on_start(&mut self, ctx: &mut Context<Self>) {
        match self {
            PbNode::ViewService(view_service) => view_service.on_start(ctx),
            PbNode::Server(server) => server.on_start(ctx),
        }
    }

    fn on_recover(&mut self, records: Vec<PbRecord>, ctx: &mut Context<Self>) {
        match self {
            PbNode::ViewService(view_service) => view_service.on_recover(records, ctx),
            PbNode::Server(server) => {
                assert!(records.is_empty(), "servers never persist anything");
                server.on_recover(ctx);
            }
        }
    }

    fn on_message(&mut self, from: NodeId, message: PbMessage, ctx: &mut Context<Self>) {
        match self {
            PbNode::ViewService(view_service) => view_service.on_message(from, message, ctx),
            PbNode::Server(server) => server.on_message(from, message, ctx),
        }
    }

    fn on_timer(&mut self, timer: PbTimer, ctx: &mut Context<Self>) {
        match self {
            PbNode::ViewService(view_service) => view_service.on_timer(timer, ctx),
            PbNode::Server(server) => server.on_timer(timer, ctx),
        }
    }

    fn on_request(&mut self, client: ClientId, request: PbRequest, ctx: &mut Context<Self>) {
        match self {
            PbNode::ViewService(view_service) => view_service.on_request(client, request, ctx),
            PbNode::Server(server) => server.on_request(client, request, ctx),
        }
    }
}
