//! A primary-backup server: idle, backup or primary, as the newest view it knows says.

use super::{
    FORWARD_BATCH_MAX, PENDING_REQUESTS_MAX, PING_INTERVAL, PbMessage, PbNode, PbRequest,
    PbResponse, PbTimer, PbVariant, RETRANSMIT_INTERVAL, VIEW_SERVICE, View,
};
use crate::kv_state::{Applied, SessionCommand, SessionKv};
use std::collections::VecDeque;
use synod_core::node::{ClientId, Context, NodeId};

/// The batch a primary has forwarded and its backup has not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct InFlight {
    forward_number: u64,
    commands: Vec<SessionCommand>,
}

/// A server (nodes 1 and up). Its state lives in memory only: a crash empties it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PbServer {
    id: NodeId,
    variant: PbVariant,
    /// False after a crash: this server may have served and lost data, so it must never
    /// start an empty store, not even for view 1.
    first_boot: bool,
    /// The newest view this server knows, from the view service or from its primary.
    view: View,
    /// The map and the sessions; `None` until the first view or a state transfer gives
    /// the server one.
    store: Option<SessionKv>,
    /// The newest view this server installed: as primary once its backup holds the
    /// state, as backup once the transfer arrived. Pinged to the view service, where the
    /// primary's report acknowledges the view.
    installed_view: u64,
    /// Primary: commands waiting for the next batch, in arrival order.
    pending: VecDeque<SessionCommand>,
    /// Primary: the batch waiting for the backup's acknowledgement.
    in_flight: Option<InFlight>,
    /// Primary: the number of the last batch forwarded in this view. Backup: the number of
    /// the last batch applied in this view.
    forward_number: u64,
}

impl PbServer {
    /// A server that has just booted for the first time.
    pub fn new(id: NodeId, variant: PbVariant) -> Self {
        PbServer {
            id,
            variant,
            first_boot: true,
            view: View::INITIAL,
            store: None,
            installed_view: 0,
            pending: VecDeque::new(),
            in_flight: None,
            forward_number: 0,
        }
    }

    /// Primary: the commands forwarded to the backup and not yet acknowledged (empty when
    /// nothing is in flight).
    pub fn in_flight_commands(&self) -> &[SessionCommand] {
        self.in_flight
            .as_ref()
            .map_or(&[], |in_flight| in_flight.commands.as_slice())
    }

    /// The newest view this server knows.
    pub fn view(&self) -> View {
        self.view
    }

    /// The newest view this server installed.
    pub fn installed_view(&self) -> u64 {
        self.installed_view
    }

    /// The server's store, if it holds one.
    pub fn store(&self) -> Option<&SessionKv> {
        self.store.as_ref()
    }

    /// True if this server has crashed and restarted since it first booted: it may have
    /// lost data, so it never starts an empty store.
    pub fn restarted(&self) -> bool {
        !self.first_boot
    }

    /// The view this server serves as primary: it is that view's primary, holds the
    /// state and has installed the view (its backup holds the state too).
    pub fn serving_view(&self) -> Option<u64> {
        let serving = self.view.primary == Some(self.id)
            && self.installed_view == self.view.number
            && self.store.is_some();
        serving.then_some(self.view.number)
    }

    pub(super) fn on_start(&mut self, ctx: &mut Context<PbNode>) {
        self.ping(ctx);
        arm_ping(ctx);
    }

    pub(super) fn on_recover(&mut self, ctx: &mut Context<PbNode>) {
        self.first_boot = false;
        self.ping(ctx);
        arm_ping(ctx);
    }

    pub(super) fn on_message(
        &mut self,
        from: NodeId,
        message: PbMessage,
        ctx: &mut Context<PbNode>,
    ) {
        match message {
            PbMessage::ViewReply { view } => {
                if from == VIEW_SERVICE {
                    self.on_view(view, ctx);
                }
            }
            PbMessage::Transfer { view, store } => self.on_transfer(from, view, store, ctx),
            PbMessage::TransferAck { view_number } => self.on_transfer_ack(from, view_number, ctx),
            PbMessage::Forward {
                view_number,
                forward_number,
                commands,
            } => self.on_forward(from, view_number, forward_number, commands, ctx),
            PbMessage::ForwardAck {
                view_number,
                forward_number,
            } => self.on_forward_ack(from, view_number, forward_number, ctx),
            // Pings go to the view service only.
            PbMessage::Ping { .. } => {}
        }
    }

    pub(super) fn on_timer(&mut self, timer: PbTimer, ctx: &mut Context<PbNode>) {
        match timer {
            PbTimer::Ping => {
                self.ping(ctx);
                arm_ping(ctx);
            }
            PbTimer::Retransmit => self.on_retransmit(ctx),
            PbTimer::Tick => {}
        }
    }

    pub(super) fn on_request(
        &mut self,
        client: ClientId,
        request: PbRequest,
        ctx: &mut Context<PbNode>,
    ) {
        let command = match request {
            PbRequest::Command(command) if self.view.primary == Some(self.id) => command,
            // Not the primary (or just a view query): tell the client what we know.
            PbRequest::Command(_) | PbRequest::GetView => {
                ctx.reply(client, PbResponse::View(self.view));
                return;
            }
        };
        let command = command.into_command(client);
        if self.variant == PbVariant::ReplyBeforeBackupAck && self.serving_view().is_some() {
            // The broken shortcut: answer at once; replication follows in the background.
            self.execute(std::slice::from_ref(&command), ctx);
        }
        self.enqueue(command);
        self.pump(ctx);
    }

    fn ping(&self, ctx: &mut Context<PbNode>) {
        ctx.send(
            VIEW_SERVICE,
            PbMessage::Ping {
                installed_view: self.installed_view,
                holds_state: self.store.is_some(),
            },
        );
    }

    fn on_view(&mut self, view: View, ctx: &mut Context<PbNode>) {
        if view.number <= self.view.number {
            return; // Known already, or a late reply.
        }
        self.view = view;
        if view.primary == Some(self.id) {
            self.become_primary(ctx);
        } else {
            self.stop_serving();
        }
    }

    /// Starts serving the current view as its primary: first the state transfer to the
    /// backup, then (once acknowledged) the commands.
    fn become_primary(&mut self, ctx: &mut Context<PbNode>) {
        // A batch of the previous view may not have reached the old backup; the new backup
        // gets the state without it, so it is forwarded again in this view.
        if let Some(in_flight) = self.in_flight.take() {
            for command in in_flight.commands.into_iter().rev() {
                self.pending.push_front(command);
            }
        }
        self.forward_number = 0;
        if self.store.is_none() {
            if self.view.number == 1 && self.first_boot {
                // Nothing can have been written before the first view.
                self.store = Some(SessionKv::new());
            } else {
                // Restarted empty: serving would lose acknowledged data. Stay silent; the
                // view service cannot pass this unacknowledged view.
                return;
            }
        }
        if self.view.backup.is_some() {
            self.send_transfer(ctx);
            arm_retransmit(ctx);
        } else {
            self.install(ctx);
        }
    }

    /// Leaves the primary role: queued commands are dropped and their clients retry at the
    /// new primary.
    fn stop_serving(&mut self) {
        self.pending.clear();
        self.in_flight = None;
    }

    /// The view is installed: acknowledge it to the view service at once and serve.
    fn install(&mut self, ctx: &mut Context<PbNode>) {
        self.installed_view = self.view.number;
        self.forward_number = 0;
        self.ping(ctx);
        self.pump(ctx);
    }

    fn send_transfer(&self, ctx: &mut Context<PbNode>) {
        let (Some(backup), Some(store)) = (self.view.backup, &self.store) else {
            return;
        };
        ctx.send(
            backup,
            PbMessage::Transfer {
                view: self.view,
                store: store.clone(),
            },
        );
    }

    fn on_transfer(
        &mut self,
        from: NodeId,
        view: View,
        store: SessionKv,
        ctx: &mut Context<PbNode>,
    ) {
        let legitimate = view.primary == Some(from)
            && view.backup == Some(self.id)
            && view.number >= self.view.number;
        if !legitimate {
            return; // From a deposed primary, or for a view we have moved past.
        }
        if view.number == self.installed_view {
            // A retransmission or duplicate: installing it again would roll back every
            // batch applied since.
            ctx.send(
                from,
                PbMessage::TransferAck {
                    view_number: view.number,
                },
            );
            return;
        }
        if view.number > self.view.number {
            self.view = view;
            self.stop_serving();
        }
        self.store = Some(store);
        self.installed_view = view.number;
        self.forward_number = 0;
        ctx.send(
            from,
            PbMessage::TransferAck {
                view_number: view.number,
            },
        );
    }

    fn on_transfer_ack(&mut self, from: NodeId, view_number: u64, ctx: &mut Context<PbNode>) {
        let awaited = self.view.primary == Some(self.id)
            && self.view.backup == Some(from)
            && self.view.number == view_number
            && self.installed_view < view_number
            && self.store.is_some();
        if awaited {
            self.install(ctx);
        }
    }

    fn on_forward(
        &mut self,
        from: NodeId,
        view_number: u64,
        forward_number: u64,
        commands: Vec<SessionCommand>,
        ctx: &mut Context<PbNode>,
    ) {
        let ack = PbMessage::ForwardAck {
            view_number,
            forward_number,
        };
        if self.variant == PbVariant::BackupAcceptsAnyPrimary {
            // The broken backup: whoever sends, whatever the view.
            if let Some(store) = self.store.as_mut() {
                for command in &commands {
                    store.apply(command);
                }
                ctx.send(from, ack);
            }
            return;
        }
        let from_our_primary = view_number == self.view.number
            && self.view.primary == Some(from)
            && self.view.backup == Some(self.id)
            && self.installed_view == view_number;
        if !from_our_primary {
            return; // A stale primary gets no acknowledgement, so it cannot answer anyone.
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if forward_number == self.forward_number + 1 {
            for command in &commands {
                store.apply(command);
            }
            self.forward_number = forward_number;
            ctx.send(from, ack);
        } else if forward_number <= self.forward_number {
            ctx.send(from, ack); // A duplicate: already applied, acknowledge again.
        }
        // A batch beyond the next cannot exist: the primary keeps one in flight.
    }

    fn on_forward_ack(
        &mut self,
        from: NodeId,
        view_number: u64,
        forward_number: u64,
        ctx: &mut Context<PbNode>,
    ) {
        let from_our_backup =
            self.serving_view() == Some(view_number) && self.view.backup == Some(from);
        let matches_in_flight = self
            .in_flight
            .as_ref()
            .is_some_and(|in_flight| in_flight.forward_number == forward_number);
        if !from_our_backup || !matches_in_flight {
            return;
        }
        if let Some(in_flight) = self.in_flight.take() {
            self.execute(&in_flight.commands, ctx);
        }
        self.pump(ctx);
    }

    fn on_retransmit(&mut self, ctx: &mut Context<PbNode>) {
        if self.view.primary != Some(self.id) || self.store.is_none() {
            return;
        }
        if self.installed_view < self.view.number {
            self.send_transfer(ctx);
            arm_retransmit(ctx);
        } else if let (Some(in_flight), Some(backup)) = (&self.in_flight, self.view.backup) {
            ctx.send(
                backup,
                PbMessage::Forward {
                    view_number: self.view.number,
                    forward_number: in_flight.forward_number,
                    commands: in_flight.commands.clone(),
                },
            );
            arm_retransmit(ctx);
        }
    }

    /// Queues a command for the next batch, unless the same request is already queued or
    /// in flight (a client retry) or the queue is full (the client will retry).
    fn enqueue(&mut self, command: SessionCommand) {
        let same_request = |queued: &SessionCommand| {
            queued.client == command.client && queued.sequence == command.sequence
        };
        let in_flight = self
            .in_flight
            .as_ref()
            .is_some_and(|in_flight| in_flight.commands.iter().any(same_request));
        if in_flight || self.pending.iter().any(same_request) {
            return;
        }
        if self.pending.len() < PENDING_REQUESTS_MAX {
            self.pending.push_back(command);
        }
    }

    /// Serves queued commands if nothing is in flight: forwards the next batch to the
    /// backup, or executes directly when the view has no backup.
    fn pump(&mut self, ctx: &mut Context<PbNode>) {
        if self.serving_view().is_none() || self.in_flight.is_some() || self.pending.is_empty() {
            return;
        }
        let Some(backup) = self.view.backup else {
            let commands: Vec<SessionCommand> = self.pending.drain(..).collect();
            self.execute(&commands, ctx);
            return;
        };
        let batch = self.pending.len().min(FORWARD_BATCH_MAX);
        let commands: Vec<SessionCommand> = self.pending.drain(..batch).collect();
        self.forward_number += 1;
        ctx.send(
            backup,
            PbMessage::Forward {
                view_number: self.view.number,
                forward_number: self.forward_number,
                commands: commands.clone(),
            },
        );
        self.in_flight = Some(InFlight {
            forward_number: self.forward_number,
            commands,
        });
        arm_retransmit(ctx);
    }

    /// Applies commands in order and answers their clients.
    fn execute(&mut self, commands: &[SessionCommand], ctx: &mut Context<PbNode>) {
        let store = self
            .store
            .as_mut()
            .expect("only a server holding a store executes commands");
        for command in commands {
            match store.apply(command) {
                Applied::Reply(result) => ctx.reply(
                    command.client,
                    PbResponse::Reply {
                        sequence: command.sequence,
                        result,
                    },
                ),
                Applied::Stale => {}
            }
        }
    }
}

fn arm_ping(ctx: &mut Context<PbNode>) {
    ctx.set_timer(PbTimer::Ping, PING_INTERVAL, PING_INTERVAL);
}

fn arm_retransmit(ctx: &mut Context<PbNode>) {
    ctx.set_timer(
        PbTimer::Retransmit,
        RETRANSMIT_INTERVAL,
        RETRANSMIT_INTERVAL,
    );
}
