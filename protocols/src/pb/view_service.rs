//! The view service: tracks servers by their pings and decides the sequence of views.

use super::{
    DEAD_AFTER_TICKS, PING_INTERVAL, PbMessage, PbNode, PbRecord, PbRequest, PbResponse, PbTimer,
    PbVariant, View,
};
use std::collections::BTreeMap;
use synod_core::node::{ClientId, Context, NodeId};

/// The view service (node 0).
///
/// Liveness is counted in ticks rather than read from a clock, so clock faults cannot kill
/// a server and the state stays small and time-free for the model checker.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ViewService {
    variant: PbVariant,
    view: View,
    /// Whether the current view's primary has acknowledged it (view 0 needs no
    /// acknowledgement: it has no primary).
    acknowledged: bool,
    /// Ticks since each server's last healthy ping, saturating at [`DEAD_AFTER_TICKS`]. A
    /// server that never pinged is absent and counts as dead.
    silent_ticks: BTreeMap<NodeId, u32>,
}

impl ViewService {
    /// A view service at view 0 that has heard from nobody.
    pub fn new(variant: PbVariant) -> Self {
        ViewService {
            variant,
            view: View::INITIAL,
            acknowledged: true,
            silent_ticks: BTreeMap::new(),
        }
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view
    }

    /// Whether the current view's primary has acknowledged it.
    pub fn acknowledged(&self) -> bool {
        self.acknowledged
    }

    /// Whether `server` counts as alive.
    pub fn is_alive(&self, server: NodeId) -> bool {
        self.silent_ticks
            .get(&server)
            .is_some_and(|&ticks| ticks < DEAD_AFTER_TICKS)
    }

    pub(super) fn on_start(&mut self, ctx: &mut Context<PbNode>) {
        arm_tick(ctx);
    }

    pub(super) fn on_recover(&mut self, records: Vec<PbRecord>, ctx: &mut Context<PbNode>) {
        if self.variant != PbVariant::VolatileViewService {
            for record in records {
                match record {
                    PbRecord::View(view) => {
                        assert!(view.number > self.view.number, "views replay in order");
                        self.view = view;
                        self.acknowledged = false;
                    }
                    PbRecord::Acknowledged(number) => {
                        assert_eq!(number, self.view.number, "an ack follows its view");
                        self.acknowledged = true;
                    }
                }
            }
        }
        // Give the current view's servers a full timeout to ping before anyone is judged:
        // otherwise every restart of the view service would depose a healthy primary.
        // Idle servers count once they ping.
        for server in [self.view.primary, self.view.backup].into_iter().flatten() {
            self.silent_ticks.insert(server, 0);
        }
        arm_tick(ctx);
    }

    pub(super) fn on_message(
        &mut self,
        from: NodeId,
        message: PbMessage,
        ctx: &mut Context<PbNode>,
    ) {
        match message {
            PbMessage::Ping {
                installed_view,
                holds_state,
            } => self.on_ping(from, installed_view, holds_state, ctx),
            // Only servers exchange the other messages; a misdirected one is ignored.
            PbMessage::ViewReply { .. }
            | PbMessage::Transfer { .. }
            | PbMessage::TransferAck { .. }
            | PbMessage::Forward { .. }
            | PbMessage::ForwardAck { .. } => {}
        }
    }

    pub(super) fn on_timer(&mut self, timer: PbTimer, ctx: &mut Context<PbNode>) {
        match timer {
            PbTimer::Tick => self.on_tick(ctx),
            PbTimer::Ping | PbTimer::Retransmit => {}
        }
    }

    pub(super) fn on_request(
        &mut self,
        client: ClientId,
        request: PbRequest,
        ctx: &mut Context<PbNode>,
    ) {
        // A command sent here is redirected the same way: with the current view.
        match request {
            PbRequest::GetView | PbRequest::Command(_) => {
                ctx.reply(client, PbResponse::View(self.view));
            }
        }
    }

    fn on_ping(
        &mut self,
        from: NodeId,
        installed_view: u64,
        holds_state: bool,
        ctx: &mut Context<PbNode>,
    ) {
        // Before the view is acknowledged its backup legitimately has no state yet; after,
        // a member without state restarted and lost it, and must not be promoted or kept.
        let lost_state = !holds_state && self.acknowledged && self.view.contains(from);
        let ticks = if lost_state { DEAD_AFTER_TICKS } else { 0 };
        self.silent_ticks.insert(from, ticks);
        if self.view.primary == Some(from)
            && installed_view == self.view.number
            && holds_state
            && !self.acknowledged
        {
            self.acknowledged = true;
            self.record(PbRecord::Acknowledged(self.view.number), ctx);
            // An acknowledgement often unblocks a waiting change (adding a backup): make it
            // now rather than at the next tick.
            self.advance(ctx);
        }
        ctx.send(from, PbMessage::ViewReply { view: self.view });
    }

    fn on_tick(&mut self, ctx: &mut Context<PbNode>) {
        for ticks in self.silent_ticks.values_mut() {
            *ticks = (*ticks + 1).min(DEAD_AFTER_TICKS);
        }
        self.advance(ctx);
        arm_tick(ctx);
    }

    /// Moves to the next view if one is due and allowed.
    fn advance(&mut self, ctx: &mut Context<PbNode>) {
        let may_advance = self.acknowledged || self.variant == PbVariant::ViewServiceSkipsAck;
        if !may_advance {
            return;
        }
        let Some(next) = self.next_view() else {
            return;
        };
        self.view = next;
        self.acknowledged = false;
        self.record(PbRecord::View(next), ctx);
    }

    /// The view that should follow the current one, if any (the lab's rules).
    fn next_view(&self) -> Option<View> {
        let current = self.view;
        let number = current.number + 1;
        let idle = self
            .silent_ticks
            .keys()
            .copied()
            .find(|&server| self.is_alive(server) && !current.contains(server));
        match (current.primary, current.backup) {
            (None, _) => idle.map(|primary| View {
                number,
                primary: Some(primary),
                backup: None,
            }),
            (Some(primary), backup) if !self.is_alive(primary) => match backup {
                // Promote the backup: it holds every acknowledged operation.
                Some(backup) if self.is_alive(backup) => Some(View {
                    number,
                    primary: Some(backup),
                    backup: idle,
                }),
                // The primary is gone and no live backup has the state: nothing can be
                // done without losing data, so wait (perhaps for ever).
                _ => None,
            },
            (Some(primary), Some(backup)) if !self.is_alive(backup) => Some(View {
                number,
                primary: Some(primary),
                backup: idle,
            }),
            (Some(primary), None) => idle.map(|backup| View {
                number,
                primary: Some(primary),
                backup: Some(backup),
            }),
            (Some(_), Some(_)) => None,
        }
    }

    /// Makes `record` durable; outputs emitted afterwards wait for it.
    fn record(&mut self, record: PbRecord, ctx: &mut Context<PbNode>) {
        if self.variant == PbVariant::VolatileViewService {
            return;
        }
        ctx.persist(record);
        ctx.sync();
    }
}

fn arm_tick(ctx: &mut Context<PbNode>) {
    ctx.set_timer(PbTimer::Tick, PING_INTERVAL, PING_INTERVAL);
}
