//! Scenario tests: feed one node messages, timers and requests, and assert the effects.
//! Each test names the rule of the module documentation it checks.

use super::invariants::{
    ViewHistory, check_append_logs_never_fork, check_backup_mirrors_primary,
    check_one_primary_per_view, check_views_come_from_the_view_service, permanent_stop,
};
use super::*;
use synod_core::kv::KvCommand;
use synod_core::node::{Client, ClientContext, ClientEffect, Completion, Effect};
use synod_core::rng::Rng;
use synod_core::time::Time;

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);
const MEMBERS: [NodeId; 4] = [VIEW_SERVICE, N1, N2, N3];

/// One node under test and the records it has appended in its current life.
struct Subject {
    id: NodeId,
    node: PbNode,
    records: Vec<PbRecord>,
}

impl Subject {
    fn new(id: NodeId, variant: PbVariant) -> Self {
        let mut subject = Subject {
            id,
            node: PbNode::new(id, variant),
            records: Vec::new(),
        };
        subject.run(|node, ctx| node.on_start(ctx));
        subject
    }

    /// A node rebuilt after a crash from `records`.
    fn recovered(id: NodeId, variant: PbVariant, records: Vec<PbRecord>) -> Self {
        let mut subject = Subject {
            id,
            node: PbNode::new(id, variant),
            records: Vec::new(),
        };
        subject.run(|node, ctx| node.on_recover(records, ctx));
        subject
    }

    fn run(
        &mut self,
        handler: impl FnOnce(&mut PbNode, &mut Context<PbNode>),
    ) -> Vec<Effect<PbNode>> {
        let mut rng = Rng::new(7);
        let appended = self.records.len() as u64;
        let mut ctx = Context::with_records(self.id, &MEMBERS, Time::ZERO, &mut rng, appended);
        handler(&mut self.node, &mut ctx);
        let effects = ctx.into_effects();
        for effect in &effects {
            if let Effect::Persist { record } = effect {
                self.records.push(record.clone());
            }
        }
        effects
    }

    fn deliver(&mut self, from: NodeId, message: PbMessage) -> Vec<Effect<PbNode>> {
        self.run(|node, ctx| node.on_message(from, message, ctx))
    }

    fn fire(&mut self, timer: PbTimer) -> Vec<Effect<PbNode>> {
        self.run(|node, ctx| node.on_timer(timer, ctx))
    }

    fn request(&mut self, client: u64, request: PbRequest) -> Vec<Effect<PbNode>> {
        self.run(|node, ctx| node.on_request(ClientId(client), request, ctx))
    }

    fn view_service(&self) -> &ViewService {
        self.node.as_view_service().expect("node 0")
    }

    fn server(&self) -> &PbServer {
        self.node.as_server().expect("a server")
    }
}

fn view(number: u64, primary: Option<NodeId>, backup: Option<NodeId>) -> View {
    View {
        number,
        primary,
        backup,
    }
}

fn ping(installed_view: u64, holds_state: bool) -> PbMessage {
    PbMessage::Ping {
        installed_view,
        holds_state,
    }
}

fn view_reply(view: View) -> PbMessage {
    PbMessage::ViewReply { view }
}

fn command(sequence: u64, command: KvCommand) -> PbRequest {
    PbRequest::Command(KvRequest {
        sequence,
        acknowledged_below: sequence,
        command,
    })
}

fn append(value: &str) -> KvCommand {
    KvCommand::Append {
        key: "k".to_string(),
        value: value.to_string(),
    }
}

fn get() -> KvCommand {
    KvCommand::Get {
        key: "k".to_string(),
    }
}

fn sends(effects: &[Effect<PbNode>]) -> Vec<(NodeId, PbMessage)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Send { to, message, .. } => Some((*to, message.clone())),
            _ => None,
        })
        .collect()
}

fn replies(effects: &[Effect<PbNode>]) -> Vec<(ClientId, PbResponse)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Reply {
                client, response, ..
            } => Some((*client, response.clone())),
            _ => None,
        })
        .collect()
}

fn persisted(effects: &[Effect<PbNode>]) -> Vec<PbRecord> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Persist { record } => Some(record.clone()),
            _ => None,
        })
        .collect()
}

/// The view carried by the last view reply among `effects`.
fn replied_view(effects: &[Effect<PbNode>]) -> Option<View> {
    sends(effects)
        .into_iter()
        .rev()
        .find_map(|(_, message)| match message {
            PbMessage::ViewReply { view } => Some(view),
            _ => None,
        })
}

fn done(client: u64, sequence: u64) -> (ClientId, PbResponse) {
    (
        ClientId(client),
        PbResponse::Reply {
            sequence,
            result: Ok(KvOutput::Done),
        },
    )
}

/// A view service at view 2 = (n1, n2), acknowledged, with n3 idle and every server alive.
fn view_service_at_view_two(variant: PbVariant) -> Subject {
    let mut service = Subject::new(VIEW_SERVICE, variant);
    service.deliver(N1, ping(0, false));
    service.fire(PbTimer::Tick);
    assert_eq!(service.view_service().view(), view(1, Some(N1), None));
    service.deliver(N2, ping(0, false));
    service.deliver(N3, ping(0, false));
    // The acknowledgement of view 1 lets the view service add the backup at once.
    service.deliver(N1, ping(1, true));
    assert_eq!(service.view_service().view(), view(2, Some(N1), Some(N2)));
    service.deliver(N1, ping(2, true));
    assert!(service.view_service().acknowledged());
    service
}

// ---- The view service ----

#[test]
fn the_first_live_server_becomes_primary_and_the_view_is_durable_before_it_is_revealed() {
    let mut service = Subject::new(VIEW_SERVICE, PbVariant::Correct);
    let effects = service.deliver(N1, ping(0, false));
    assert_eq!(replied_view(&effects), Some(View::INITIAL));
    let effects = service.fire(PbTimer::Tick);
    assert_eq!(
        persisted(&effects),
        vec![PbRecord::View(view(1, Some(N1), None))]
    );
    assert!(effects.contains(&Effect::Sync));
    let effects = service.deliver(N2, ping(0, false));
    assert!(matches!(
        effects.as_slice(),
        [Effect::Send {
            records_required: 1,
            ..
        }]
    ));
    assert_eq!(replied_view(&effects), Some(view(1, Some(N1), None)));
    // Clients get the view the same way, behind the same record.
    let effects = service.request(9, PbRequest::GetView);
    assert!(matches!(
        effects.as_slice(),
        [Effect::Reply {
            records_required: 1,
            ..
        }]
    ));
}

#[test]
fn the_view_service_never_passes_an_unacknowledged_view() {
    let mut service = Subject::new(VIEW_SERVICE, PbVariant::Correct);
    service.deliver(N1, ping(0, false));
    service.fire(PbTimer::Tick);
    service.deliver(N2, ping(0, false));
    // n2 could be the backup, but n1 has not acknowledged view 1.
    for _ in 0..5 {
        service.deliver(N1, ping(0, false));
        service.deliver(N2, ping(0, false));
        service.fire(PbTimer::Tick);
    }
    assert_eq!(service.view_service().view(), view(1, Some(N1), None));
    assert!(!service.view_service().acknowledged());
    // A ping for an older view is no acknowledgement either; the one for view 1 is.
    let effects = service.deliver(N1, ping(1, true));
    assert_eq!(
        persisted(&effects),
        vec![
            PbRecord::Acknowledged(1),
            PbRecord::View(view(2, Some(N1), Some(N2)))
        ]
    );
    assert_eq!(replied_view(&effects), Some(view(2, Some(N1), Some(N2))));
}

#[test]
fn a_silent_primary_is_replaced_by_its_backup_after_the_dead_interval() {
    let mut service = view_service_at_view_two(PbVariant::Correct);
    for tick in 1..DEAD_AFTER_TICKS {
        service.deliver(N2, ping(2, true));
        service.deliver(N3, ping(0, false));
        service.fire(PbTimer::Tick);
        assert_eq!(
            service.view_service().view().number,
            2,
            "changed after {tick} silent ticks"
        );
    }
    service.deliver(N2, ping(2, true));
    service.deliver(N3, ping(0, false));
    service.fire(PbTimer::Tick);
    assert_eq!(service.view_service().view(), view(3, Some(N2), Some(N3)));
    assert!(!service.view_service().is_alive(N1));
}

#[test]
fn a_primary_that_dies_before_acknowledging_stops_the_view_service() {
    let mut service = view_service_at_view_two(PbVariant::Correct);
    // The backup n2 falls silent: view 3 replaces it with n3.
    for _ in 0..DEAD_AFTER_TICKS {
        service.deliver(N1, ping(2, true));
        service.deliver(N3, ping(0, false));
        service.fire(PbTimer::Tick);
    }
    assert_eq!(service.view_service().view(), view(3, Some(N1), Some(N3)));
    // Now n1 falls silent before acknowledging view 3. n3 never got the state, so
    // promoting it would lose data: the view service waits, however long it takes.
    for _ in 0..10 * DEAD_AFTER_TICKS {
        service.deliver(N2, ping(2, true));
        service.deliver(N3, ping(0, false));
        service.fire(PbTimer::Tick);
    }
    assert_eq!(service.view_service().view(), view(3, Some(N1), Some(N3)));
    assert!(!service.view_service().acknowledged());
    // The same holds when the primary is dead and the backup is dead as well.
    let mut orphaned = view_service_at_view_two(PbVariant::Correct);
    for _ in 0..10 * DEAD_AFTER_TICKS {
        orphaned.deliver(N3, ping(0, false));
        orphaned.fire(PbTimer::Tick);
    }
    assert_eq!(orphaned.view_service().view(), view(2, Some(N1), Some(N2)));
}

#[test]
fn a_member_of_an_acknowledged_view_pinging_without_state_counts_as_dead_at_once() {
    let mut service = view_service_at_view_two(PbVariant::Correct);
    // The backup restarted empty: replace it at the next tick, not after the timeout.
    service.deliver(N2, ping(0, false));
    service.fire(PbTimer::Tick);
    assert_eq!(service.view_service().view(), view(3, Some(N1), Some(N3)));
    // Before the acknowledgement the new backup has no state yet, and that is fine.
    service.deliver(N3, ping(3, false));
    assert!(service.view_service().is_alive(N3));
}

#[test]
fn a_restarted_view_service_resumes_the_same_view_and_acknowledgement() {
    let service = view_service_at_view_two(PbVariant::Correct);
    let records = service.records.clone();
    let mut restarted = Subject::recovered(VIEW_SERVICE, PbVariant::Correct, records);
    assert_eq!(restarted.view_service().view(), view(2, Some(N1), Some(N2)));
    assert!(restarted.view_service().acknowledged());
    // The current view's servers get a full timeout to ping before anyone is judged.
    assert!(restarted.view_service().is_alive(N1) && restarted.view_service().is_alive(N2));
    restarted.fire(PbTimer::Tick);
    assert_eq!(restarted.view_service().view().number, 2);
}

#[test]
fn an_unsynced_acknowledgement_lost_in_a_crash_is_simply_given_again() {
    let service = view_service_at_view_two(PbVariant::Correct);
    let synced = service.records.len() - 1; // The last record, Acknowledged(2), is torn.
    let mut restarted = Subject::recovered(
        VIEW_SERVICE,
        PbVariant::Correct,
        service.records[..synced].to_vec(),
    );
    assert!(!restarted.view_service().acknowledged());
    restarted.deliver(N1, ping(2, true));
    assert!(restarted.view_service().acknowledged());
}

// ---- Servers ----

/// A first-boot server told it is the primary of `view`.
fn primary_of(view: View, variant: PbVariant) -> Subject {
    let id = view.primary.expect("a primary");
    let mut server = Subject::new(id, variant);
    server.deliver(
        VIEW_SERVICE,
        view_reply(View {
            number: 1,
            primary: Some(id),
            backup: None,
        }),
    );
    if view.number > 1 {
        let effects = server.deliver(VIEW_SERVICE, view_reply(view));
        if let Some(backup) = view.backup {
            assert!(sends(&effects).iter().any(
                |(to, message)| *to == backup && matches!(message, PbMessage::Transfer { .. })
            ));
            server.deliver(
                backup,
                PbMessage::TransferAck {
                    view_number: view.number,
                },
            );
        }
    }
    assert_eq!(server.server().serving_view(), Some(view.number));
    server
}

#[test]
fn the_first_primary_starts_the_empty_store_serves_alone_and_acknowledges() {
    let mut server = Subject::new(N1, PbVariant::Correct);
    let effects = server.deliver(VIEW_SERVICE, view_reply(view(1, Some(N1), None)));
    assert_eq!(sends(&effects), vec![(VIEW_SERVICE, ping(1, true))]);
    let effects = server.request(4, command(0, append("x")));
    assert_eq!(replies(&effects), vec![done(4, 0)]);
}

#[test]
fn a_restarted_server_never_serves_as_primary_with_lost_state() {
    let mut server = Subject::recovered(N1, PbVariant::Correct, Vec::new());
    assert!(server.server().restarted());
    for number in [1, 2] {
        let effects = server.deliver(VIEW_SERVICE, view_reply(view(number, Some(N1), None)));
        assert!(sends(&effects).is_empty(), "{effects:?}");
        assert_eq!(server.server().serving_view(), None);
        let effects = server.request(4, command(0, append("x")));
        assert!(effects.is_empty(), "{effects:?}");
    }
    let effects = server.fire(PbTimer::Ping);
    assert_eq!(sends(&effects), vec![(VIEW_SERVICE, ping(0, false))]);
}

#[test]
fn a_new_backup_gets_the_whole_state_before_the_primary_serves_or_acknowledges() {
    let mut primary = primary_of(view(1, Some(N1), None), PbVariant::Correct);
    primary.request(4, command(0, append("x")));
    let effects = primary.deliver(VIEW_SERVICE, view_reply(view(2, Some(N1), Some(N2))));
    let transferred = match sends(&effects).as_slice() {
        [(to, PbMessage::Transfer { view: sent, store })] => {
            assert_eq!((*to, *sent), (N2, view(2, Some(N1), Some(N2))));
            store.clone()
        }
        other => panic!("expected one transfer, got {other:?}"),
    };
    assert_eq!(transferred.map().get("k"), Some("x"));
    assert_eq!(
        transferred.sessions().session_count(),
        1,
        "sessions travel too"
    );
    // Until the backup has it, commands wait and the view is not acknowledged.
    assert!(primary.request(5, command(0, append("y"))).is_empty());
    assert_eq!(primary.fire(PbTimer::Ping).len(), 2, "ping and re-arm");
    assert_eq!(
        sends(&primary.fire(PbTimer::Ping)),
        vec![(VIEW_SERVICE, ping(1, true))]
    );
    let effects = primary.deliver(N2, PbMessage::TransferAck { view_number: 2 });
    let sent = sends(&effects);
    assert_eq!(sent[0], (VIEW_SERVICE, ping(2, true)));
    assert!(matches!(
        &sent[1],
        (to, PbMessage::Forward { view_number: 2, forward_number: 1, commands })
            if *to == N2 && commands.len() == 1
    ));
    assert!(replies(&effects).is_empty());
}

#[test]
fn the_primary_replies_to_writes_and_reads_only_after_the_backup_acknowledges() {
    let mut primary = primary_of(view(2, Some(N1), Some(N2)), PbVariant::Correct);
    let effects = primary.request(4, command(0, append("x")));
    assert!(replies(&effects).is_empty());
    // A second request waits for the next batch: one batch in flight.
    let effects = primary.request(5, command(0, get()));
    assert!(effects.is_empty(), "{effects:?}");
    // Lost acknowledgements are covered by retransmission of the same batch.
    let effects = primary.fire(PbTimer::Retransmit);
    assert!(matches!(
        sends(&effects).as_slice(),
        [(
            _,
            PbMessage::Forward {
                forward_number: 1,
                ..
            }
        )]
    ));
    let effects = primary.deliver(
        N2,
        PbMessage::ForwardAck {
            view_number: 2,
            forward_number: 1,
        },
    );
    assert_eq!(replies(&effects), vec![done(4, 0)]);
    // The read went out as batch 2, and is answered only once acknowledged.
    assert!(matches!(
        sends(&effects).as_slice(),
        [(_, PbMessage::Forward { forward_number: 2, commands, .. })] if commands[0].command == get()
    ));
    let effects = primary.deliver(
        N2,
        PbMessage::ForwardAck {
            view_number: 2,
            forward_number: 2,
        },
    );
    assert_eq!(
        replies(&effects),
        vec![(
            ClientId(5),
            PbResponse::Reply {
                sequence: 0,
                result: Ok(KvOutput::Value(Some("x".to_string())))
            }
        )]
    );
}

#[test]
fn an_acknowledgement_from_anyone_but_the_backup_or_for_another_view_is_ignored() {
    let mut primary = primary_of(view(2, Some(N1), Some(N2)), PbVariant::Correct);
    primary.request(4, command(0, append("x")));
    for (from, view_number) in [(N3, 2), (N2, 1), (N2, 3)] {
        let effects = primary.deliver(
            from,
            PbMessage::ForwardAck {
                view_number,
                forward_number: 1,
            },
        );
        assert!(effects.is_empty(), "{effects:?}");
    }
}

#[test]
fn a_transfer_is_resent_until_its_backup_acknowledges_that_view_once() {
    let mut primary = primary_of(view(1, Some(N1), None), PbVariant::Correct);
    primary.deliver(VIEW_SERVICE, view_reply(view(2, Some(N1), Some(N2))));
    let effects = primary.fire(PbTimer::Retransmit);
    assert!(
        matches!(sends(&effects).as_slice(), [(to, PbMessage::Transfer { .. })] if *to == N2),
        "{effects:?}"
    );
    // Only the backup's acknowledgement of this view installs it.
    for (from, view_number) in [(N3, 2), (N2, 1), (N2, 3), (VIEW_SERVICE, 2)] {
        let effects = primary.deliver(from, PbMessage::TransferAck { view_number });
        assert!(effects.is_empty(), "{effects:?}");
        assert_eq!(primary.server().serving_view(), None);
    }
    let effects = primary.deliver(N2, PbMessage::TransferAck { view_number: 2 });
    assert_eq!(sends(&effects), vec![(VIEW_SERVICE, ping(2, true))]);
    primary.request(4, command(0, append("x")));
    let effects = primary.deliver(
        N2,
        PbMessage::ForwardAck {
            view_number: 2,
            forward_number: 1,
        },
    );
    assert_eq!(replies(&effects), vec![done(4, 0)]);
    // A late copy of the acknowledgement installs nothing again: batch numbers go on (a
    // restart at 1 would look like a duplicate to the backup, which would acknowledge a
    // batch it never applies).
    let effects = primary.deliver(N2, PbMessage::TransferAck { view_number: 2 });
    assert!(effects.is_empty(), "{effects:?}");
    let effects = primary.request(5, command(0, append("y")));
    assert!(
        matches!(
            sends(&effects).as_slice(),
            [(
                _,
                PbMessage::Forward {
                    forward_number: 2,
                    ..
                }
            )]
        ),
        "{effects:?}"
    );
}

#[test]
fn a_primary_holds_at_most_pending_requests_max_while_a_batch_is_in_flight() {
    let mut primary = primary_of(view(2, Some(N1), Some(N2)), PbVariant::Correct);
    primary.request(1_000, command(0, append("x")));
    let offered = PENDING_REQUESTS_MAX as u64 + 10;
    for client in 0..offered {
        primary.request(client, command(0, get()));
    }
    // Acknowledge batch after batch and count what was forwarded behind the first.
    let mut forwarded = 0;
    let mut acknowledged = 1;
    loop {
        let effects = primary.deliver(
            N2,
            PbMessage::ForwardAck {
                view_number: 2,
                forward_number: acknowledged,
            },
        );
        let batch = sends(&effects)
            .into_iter()
            .find_map(|(_, message)| match message {
                PbMessage::Forward { commands, .. } => Some(commands.len()),
                _ => None,
            });
        let Some(batch) = batch else { break };
        assert!(batch <= FORWARD_BATCH_MAX);
        forwarded += batch;
        acknowledged += 1;
    }
    assert_eq!(forwarded, PENDING_REQUESTS_MAX);
}

/// A server that installed the transfer of view 2 = (n1, n2) as backup.
fn backup_of_view_two() -> Subject {
    let mut backup = Subject::new(N2, PbVariant::Correct);
    let effects = backup.deliver(
        N1,
        PbMessage::Transfer {
            view: view(2, Some(N1), Some(N2)),
            store: SessionKv::new(),
        },
    );
    assert_eq!(
        sends(&effects),
        vec![(N1, PbMessage::TransferAck { view_number: 2 })]
    );
    assert_eq!(backup.server().installed_view(), 2);
    backup
}

fn forward(view_number: u64, forward_number: u64, value: &str) -> PbMessage {
    PbMessage::Forward {
        view_number,
        forward_number,
        commands: vec![SessionCommand {
            client: ClientId(4),
            sequence: forward_number,
            acknowledged_below: forward_number,
            command: append(value),
        }],
    }
}

#[test]
fn a_backup_applies_batches_once_in_order_and_a_late_transfer_never_rolls_it_back() {
    let mut backup = backup_of_view_two();
    let ack = |forward_number| PbMessage::ForwardAck {
        view_number: 2,
        forward_number,
    };
    assert_eq!(
        sends(&backup.deliver(N1, forward(2, 1, "a"))),
        vec![(N1, ack(1))]
    );
    // A duplicate is acknowledged again but not applied again.
    assert_eq!(
        sends(&backup.deliver(N1, forward(2, 1, "a"))),
        vec![(N1, ack(1))]
    );
    // A batch beyond the next cannot be applied out of order.
    assert!(backup.deliver(N1, forward(2, 3, "c")).is_empty());
    backup.deliver(N1, forward(2, 2, "b"));
    let store = |backup: &Subject| {
        backup
            .server()
            .store()
            .and_then(|store| store.map().get("k").map(str::to_string))
    };
    assert_eq!(store(&backup).as_deref(), Some("ab"));
    let effects = backup.deliver(
        N1,
        PbMessage::Transfer {
            view: view(2, Some(N1), Some(N2)),
            store: SessionKv::new(),
        },
    );
    assert_eq!(
        sends(&effects),
        vec![(N1, PbMessage::TransferAck { view_number: 2 })]
    );
    assert_eq!(store(&backup).as_deref(), Some("ab"));
}

#[test]
fn a_backup_rejects_a_deposed_primary_and_anyone_else() {
    let mut backup = backup_of_view_two();
    // Not the primary of the view.
    assert!(backup.deliver(N3, forward(2, 1, "a")).is_empty());
    // The view service moved on (n2 is primary of view 3): view 2's primary is deposed and
    // its forwards, reads included, are never acknowledged.
    backup.deliver(VIEW_SERVICE, view_reply(view(3, Some(N2), Some(N3))));
    assert!(backup.deliver(N1, forward(2, 1, "a")).is_empty());
    // A transfer from the deposed primary is refused too.
    let effects = backup.deliver(
        N1,
        PbMessage::Transfer {
            view: view(2, Some(N1), Some(N2)),
            store: SessionKv::new(),
        },
    );
    assert!(effects.is_empty());
}

#[test]
fn a_deposed_primary_stops_serving_and_redirects_clients() {
    let mut primary = primary_of(view(2, Some(N1), Some(N2)), PbVariant::Correct);
    primary.request(4, command(0, get()));
    // Its backup never acknowledges (it has moved on): the read is never answered.
    let effects = primary.fire(PbTimer::Retransmit);
    assert!(replies(&effects).is_empty());
    let newer = view(3, Some(N2), Some(N3));
    let effects = primary.deliver(VIEW_SERVICE, view_reply(newer));
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(primary.server().serving_view(), None);
    // The read in flight is dropped with the role; its client retries elsewhere.
    assert!(primary.server().in_flight_commands().is_empty());
    // Nor does its retransmission timer send anything any more.
    assert!(primary.fire(PbTimer::Retransmit).is_empty());
    let effects = primary.request(4, command(0, get()));
    assert_eq!(
        replies(&effects),
        vec![(ClientId(4), PbResponse::View(newer))]
    );
}

#[test]
fn a_primary_that_keeps_its_role_forwards_the_unacknowledged_batch_again_in_the_next_view() {
    let mut primary = primary_of(view(2, Some(N1), Some(N2)), PbVariant::Correct);
    primary.request(4, command(0, append("x")));
    primary.deliver(VIEW_SERVICE, view_reply(view(3, Some(N1), Some(N3))));
    let effects = primary.deliver(N3, PbMessage::TransferAck { view_number: 3 });
    assert!(matches!(
        sends(&effects).as_slice(),
        [(_, PbMessage::Ping { installed_view: 3, .. }), (to, PbMessage::Forward { view_number: 3, forward_number: 1, commands })]
            if *to == N3 && commands.len() == 1
    ));
    // With no backup at all, the primary executes directly.
    let mut alone = primary_of(view(2, Some(N1), Some(N2)), PbVariant::Correct);
    alone.request(4, command(0, append("x")));
    let effects = alone.deliver(VIEW_SERVICE, view_reply(view(3, Some(N1), None)));
    assert_eq!(replies(&effects), vec![done(4, 0)]);
}

#[test]
fn a_retried_request_is_queued_once() {
    let mut primary = primary_of(view(2, Some(N1), Some(N2)), PbVariant::Correct);
    primary.request(4, command(0, append("x")));
    primary.request(5, command(0, append("y")));
    primary.request(5, command(0, append("y")));
    primary.request(4, command(0, append("x")));
    let effects = primary.deliver(
        N2,
        PbMessage::ForwardAck {
            view_number: 2,
            forward_number: 1,
        },
    );
    assert!(matches!(
        sends(&effects).as_slice(),
        [(_, PbMessage::Forward { commands, .. })] if commands.len() == 1
    ));
}

// ---- The client ----

fn client_step(
    client: &mut PbClient,
    now: u64,
    handler: impl FnOnce(&mut PbClient, &mut ClientContext<PbClient>),
) -> Vec<ClientEffect<PbClient>> {
    let mut rng = Rng::new(3);
    let mut ctx = ClientContext::new(ClientId(4), &MEMBERS, Time::from_millis(now), &mut rng);
    handler(client, &mut ctx);
    ctx.into_effects()
}

fn client_sends(effects: &[ClientEffect<PbClient>]) -> Vec<(NodeId, PbRequest)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            ClientEffect::Send { to, request } => Some((*to, request.clone())),
            _ => None,
        })
        .collect()
}

/// Whether `effects` arm the client's retry timer.
fn arms_retry(effects: &[ClientEffect<PbClient>]) -> bool {
    effects.iter().any(|effect| {
        matches!(
            effect,
            ClientEffect::SetTimer {
                timer: PbClientTimer,
                ..
            }
        )
    })
}

#[test]
fn the_client_finds_the_primary_retries_the_same_sequence_and_gives_up_as_unknown() {
    let mut client = PbClient::new(PbClientConfig::default());
    let effects = client_step(&mut client, 0, |client, ctx| {
        client.on_invoke(append("x"), ctx)
    });
    assert_eq!(
        client_sends(&effects),
        vec![(VIEW_SERVICE, PbRequest::GetView)]
    );
    assert!(arms_retry(&effects), "{effects:?}");
    let v1 = view(1, Some(N1), None);
    let effects = client_step(&mut client, 1, |client, ctx| {
        client.on_response(VIEW_SERVICE, PbResponse::View(v1), ctx)
    });
    assert_eq!(client_sends(&effects), vec![(N1, command(0, append("x")))]);
    assert_eq!(client.view(), v1);
    // The same view again (a bounce from a primary still installing) sends nothing.
    let effects = client_step(&mut client, 2, |client, ctx| {
        client.on_response(N1, PbResponse::View(v1), ctx)
    });
    assert!(effects.is_empty());
    let effects = client_step(&mut client, 20, |client, ctx| {
        client.on_timer(PbClientTimer, ctx)
    });
    assert_eq!(
        client_sends(&effects),
        vec![
            (VIEW_SERVICE, PbRequest::GetView),
            (N1, command(0, append("x")))
        ]
    );
    // Each retry arms the next one: the client keeps trying until the deadline.
    assert!(arms_retry(&effects), "{effects:?}");
    // A newer view from anyone re-routes at once with the same sequence number.
    let v2 = view(2, Some(N2), None);
    let effects = client_step(&mut client, 21, |client, ctx| {
        client.on_response(N1, PbResponse::View(v2), ctx)
    });
    assert_eq!(client_sends(&effects), vec![(N2, command(0, append("x")))]);
    let effects = client_step(&mut client, 22, |client, ctx| {
        client.on_response(N2, done(4, 0).1, ctx)
    });
    assert!(effects.contains(&ClientEffect::Complete(Completion::Ok(KvOutput::Done))));
    client_step(&mut client, 23, |client, ctx| {
        client.on_invoke(append("y"), ctx)
    });
    let effects = client_step(&mut client, 600, |client, ctx| {
        client.on_timer(PbClientTimer, ctx)
    });
    assert!(
        effects
            .iter()
            .any(|effect| matches!(effect, ClientEffect::Complete(Completion::Info(_))))
    );
    // The abandoned request is acknowledged, so late copies of it are stale everywhere.
    let effects = client_step(&mut client, 601, |client, ctx| client.on_invoke(get(), ctx));
    assert_eq!(
        client_sends(&effects),
        vec![(
            N2,
            PbRequest::Command(KvRequest {
                sequence: 2,
                acknowledged_below: 2,
                command: get()
            })
        )]
    );
}

// ---- The broken variants are broken ----

#[test]
fn the_broken_variants_break_the_rule_they_are_named_for() {
    let mut early = primary_of(view(2, Some(N1), Some(N2)), PbVariant::ReplyBeforeBackupAck);
    let effects = early.request(4, command(0, append("x")));
    assert_eq!(replies(&effects), vec![done(4, 0)]);

    let mut gullible = Subject::new(N2, PbVariant::BackupAcceptsAnyPrimary);
    gullible.deliver(
        N1,
        PbMessage::Transfer {
            view: view(2, Some(N1), Some(N2)),
            store: SessionKv::new(),
        },
    );
    gullible.deliver(VIEW_SERVICE, view_reply(view(3, Some(N2), Some(N3))));
    assert!(!gullible.deliver(N1, forward(2, 1, "a")).is_empty());

    let mut hasty = Subject::new(VIEW_SERVICE, PbVariant::ViewServiceSkipsAck);
    hasty.deliver(N1, ping(0, false));
    hasty.fire(PbTimer::Tick);
    hasty.deliver(N2, ping(0, false));
    hasty.fire(PbTimer::Tick);
    assert_eq!(hasty.view_service().view(), view(2, Some(N1), Some(N2)));

    let forgetful = view_service_at_view_two(PbVariant::VolatileViewService);
    assert!(forgetful.records.is_empty());
    let restarted = Subject::recovered(VIEW_SERVICE, PbVariant::VolatileViewService, Vec::new());
    assert_eq!(restarted.view_service().view(), View::INITIAL);
}

// ---- The invariants ----

#[test]
fn two_servers_serving_one_view_number_are_reported() {
    let n1 = primary_of(view(1, Some(N1), None), PbVariant::Correct);
    let n2 = primary_of(view(1, Some(N2), None), PbVariant::Correct);
    let service = Subject::new(VIEW_SERVICE, PbVariant::Correct);
    let state = [(N1, &n1.node), (N2, &n2.node)];
    let error = check_one_primary_per_view(state).expect_err("two primaries of view 1");
    assert!(error.contains("view 1"), "{error}");
    assert!(check_one_primary_per_view([(N1, &n1.node)]).is_ok());
    // Both know a view the (fresh) view service never issued.
    let error =
        check_views_come_from_the_view_service([(VIEW_SERVICE, &service.node), (N1, &n1.node)])
            .expect_err("view 1 is newer than view 0");
    assert!(error.contains("n1 knows view v1(n1, -)"), "{error}");
}

#[test]
fn the_view_history_catches_a_view_revealed_before_its_predecessor_was_installed() {
    let mut history = ViewHistory::new();
    let mut service = Subject::new(VIEW_SERVICE, PbVariant::Correct);
    service.deliver(N1, ping(0, false));
    service.fire(PbTimer::Tick);
    let mut n1 = Subject::new(N1, PbVariant::Correct);
    let mut n2 = Subject::new(N2, PbVariant::Correct);
    assert_eq!(
        history.observe([
            (VIEW_SERVICE, &service.node),
            (N1, &n1.node),
            (N2, &n2.node)
        ]),
        Ok(())
    );
    n1.deliver(VIEW_SERVICE, view_reply(view(1, Some(N1), None)));
    assert_eq!(
        history.observe([
            (VIEW_SERVICE, &service.node),
            (N1, &n1.node),
            (N2, &n2.node)
        ]),
        Ok(())
    );
    // Had n2 learned view 2 while n1 had not installed view 1, the history would object;
    // here n1 installed it, so view 2 may follow.
    service.deliver(N2, ping(0, false));
    service.deliver(N1, ping(1, true));
    n2.deliver(VIEW_SERVICE, view_reply(view(2, Some(N1), Some(N2))));
    assert_eq!(
        history.observe([
            (VIEW_SERVICE, &service.node),
            (N1, &n1.node),
            (N2, &n2.node)
        ]),
        Ok(())
    );

    let mut fresh = ViewHistory::new();
    let mut hasty = Subject::new(N3, PbVariant::Correct);
    hasty.deliver(VIEW_SERVICE, view_reply(view(2, Some(N1), Some(N3))));
    let error = fresh
        .observe([(N3, &hasty.node)])
        .expect_err("view 1 never installed");
    assert!(
        error.contains("before the primary of view 1 installed it"),
        "{error}"
    );

    // One number, two different views.
    let mut other = Subject::new(N3, PbVariant::Correct);
    other.deliver(VIEW_SERVICE, view_reply(view(2, Some(N2), Some(N3))));
    let error = history
        .observe([(N3, &other.node)])
        .expect_err("view 2 renamed");
    assert!(error.contains("but it was v2(n1, n2)"), "{error}");
}

#[test]
fn the_permanent_stop_is_recognised_and_nothing_else_is() {
    let service = view_service_at_view_two(PbVariant::Correct);
    let n1 = primary_of(view(2, Some(N1), Some(N2)), PbVariant::Correct);
    let n2 = backup_of_view_two();
    let empty_n1 = Subject::recovered(N1, PbVariant::Correct, Vec::new());
    let empty_n2 = Subject::recovered(N2, PbVariant::Correct, Vec::new());
    let healthy = [
        (VIEW_SERVICE, &service.node),
        (N1, &n1.node),
        (N2, &n2.node),
    ];
    assert_eq!(permanent_stop(healthy), None);
    // The primary lost its state but the backup holds it: a failover, not a stop.
    assert_eq!(
        permanent_stop([
            (VIEW_SERVICE, &service.node),
            (N1, &empty_n1.node),
            (N2, &n2.node)
        ]),
        None
    );
    let both = [
        (VIEW_SERVICE, &service.node),
        (N1, &empty_n1.node),
        (N2, &empty_n2.node),
    ];
    assert!(permanent_stop(both).is_some_and(|why| why.contains("both servers")));
    // A fresh primary of view 1 may still start the empty store.
    let mut first = Subject::new(VIEW_SERVICE, PbVariant::Correct);
    first.deliver(N1, ping(0, false));
    first.fire(PbTimer::Tick);
    let fresh_n1 = Subject::new(N1, PbVariant::Correct);
    assert_eq!(
        permanent_stop([(VIEW_SERVICE, &first.node), (N1, &fresh_n1.node)]),
        None
    );
    assert!(
        permanent_stop([(VIEW_SERVICE, &first.node), (N1, &empty_n1.node)])
            .is_some_and(|why| why.contains("before acknowledging"))
    );
}

// ---- The backup mirrors its primary ----

/// Delivers every message `from` sent to `to` among `effects`; returns `to`'s effects.
fn relay(effects: &[Effect<PbNode>], from: &Subject, to: &mut Subject) -> Vec<Effect<PbNode>> {
    let mut produced = Vec::new();
    for (destination, message) in sends(effects) {
        if destination == to.id {
            produced.extend(to.deliver(from.id, message));
        }
    }
    produced
}

/// A primary and its backup of view 2 = (n1, n2), the state transferred for real.
fn primary_and_backup(variant: PbVariant) -> (Subject, Subject) {
    let mut primary = Subject::new(N1, variant);
    let mut backup = Subject::new(N2, PbVariant::Correct);
    primary.deliver(VIEW_SERVICE, view_reply(view(1, Some(N1), None)));
    let transfer = primary.deliver(VIEW_SERVICE, view_reply(view(2, Some(N1), Some(N2))));
    let ack = relay(&transfer, &primary, &mut backup);
    relay(&ack, &backup, &mut primary);
    assert_eq!(primary.server().serving_view(), Some(2));
    (primary, backup)
}

fn mirrored(primary: &Subject, backup: &Subject) -> Result<(), String> {
    check_backup_mirrors_primary([(N1, &primary.node), (N2, &backup.node)])
}

#[test]
fn the_backup_mirrors_its_primary_at_every_step_of_a_write() {
    let (mut primary, mut backup) = primary_and_backup(PbVariant::Correct);
    assert_eq!(mirrored(&primary, &backup), Ok(()));
    let forward = primary.request(4, command(0, append("x")));
    // In flight, not yet at the backup: the stores are equal.
    assert_eq!(mirrored(&primary, &backup), Ok(()));
    let ack = relay(&forward, &primary, &mut backup);
    // Applied at the backup, not yet at the primary: the backup is one batch ahead.
    assert_eq!(mirrored(&primary, &backup), Ok(()));
    let effects = relay(&ack, &backup, &mut primary);
    assert_eq!(replies(&effects), vec![done(4, 0)]);
    assert_eq!(mirrored(&primary, &backup), Ok(()));
}

#[test]
fn an_early_reply_and_a_write_from_elsewhere_break_the_mirror() {
    let (mut primary, backup) = primary_and_backup(PbVariant::ReplyBeforeBackupAck);
    let effects = primary.request(4, command(0, append("x")));
    assert_eq!(replies(&effects), vec![done(4, 0)]);
    assert!(mirrored(&primary, &backup).is_err());
    // A backup that took a batch its primary never sent.
    let (primary, mut backup) = primary_and_backup(PbVariant::Correct);
    backup.deliver(N1, forward(2, 1, "z"));
    assert!(mirrored(&primary, &backup).is_err());
}

// ---- The stores never fork ----

#[test]
fn stores_on_one_history_pass_and_a_deposed_primary_acknowledged_anyway_forks_them() {
    let forked = |nodes: [(NodeId, &Subject); 2]| {
        check_append_logs_never_fork(nodes.map(|(id, subject)| (id, &subject.node)), "k")
    };
    // A correct write: the backup runs a batch ahead of its primary, then they are equal.
    let (mut primary, mut backup) = primary_and_backup(PbVariant::Correct);
    let forwarded = primary.request(4, command(0, append("x")));
    let ack = relay(&forwarded, &primary, &mut backup);
    assert_eq!(forked([(N1, &primary), (N2, &backup)]), Ok(()));
    relay(&ack, &backup, &mut primary);
    assert_eq!(forked([(N1, &primary), (N2, &backup)]), Ok(()));
    // A server without a store holds nothing to compare.
    let empty = Subject::new(N3, PbVariant::Correct);
    assert_eq!(forked([(N1, &primary), (N3, &empty)]), Ok(()));

    // Split brain: n2, promoted in view 3, serves "y" alone; the deposed n1 forwards "x",
    // and a gullible n2 acknowledges it, so n1 applies "x" on a store without "y".
    let (mut deposed, _) = primary_and_backup(PbVariant::Correct);
    let mut gullible = Subject::new(N2, PbVariant::BackupAcceptsAnyPrimary);
    gullible.deliver(
        N1,
        PbMessage::Transfer {
            view: view(2, Some(N1), Some(N2)),
            store: SessionKv::new(),
        },
    );
    gullible.deliver(VIEW_SERVICE, view_reply(view(3, Some(N2), None)));
    gullible.request(5, command(0, append("y")));
    let forwarded = deposed.request(4, command(0, append("x")));
    let ack = relay(&forwarded, &deposed, &mut gullible);
    // "yx" on n2 and nothing yet on n1: one history so far.
    assert_eq!(forked([(N1, &deposed), (N2, &gullible)]), Ok(()));
    relay(&ack, &gullible, &mut deposed);
    let error = forked([(N1, &deposed), (N2, &gullible)]).expect_err("forked");
    assert!(error.contains(r#""x" and n2 has "yx""#), "{error}");
}
