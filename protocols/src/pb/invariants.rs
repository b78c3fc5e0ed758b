//! Safety properties of a primary-backup cluster, as functions a driver calls on the
//! running nodes after every step (the simulator's invariant hooks, the model checker).
//!
//! [`check_one_primary_per_view`] and [`check_views_come_from_the_view_service`] look at one
//! global state and nothing else, so a model checker can evaluate them on any state; so do
//! [`check_backup_mirrors_primary`] and [`check_append_logs_never_fork`], which catch a
//! replica applying what it should not at the step it does.
//!
//! [`ViewHistory`] remembers what it saw across states and checks the properties that are
//! about history: a view number always names the same view, at most one server ever serves
//! a view, and no view is revealed before its predecessor's primary installed it (so the
//! view service waited for the acknowledgement).

use super::{PbNode, PbServer, View};
use std::collections::BTreeMap;
use synod_core::node::NodeId;

/// At most one server serves as primary for any view number.
pub fn check_one_primary_per_view<'a>(
    nodes: impl IntoIterator<Item = (NodeId, &'a PbNode)>,
) -> Result<(), String> {
    let mut serving: BTreeMap<u64, NodeId> = BTreeMap::new();
    for (id, node) in nodes {
        let Some(view_number) = node.as_server().and_then(|server| server.serving_view()) else {
            continue;
        };
        if let Some(other) = serving.insert(view_number, id) {
            return Err(format!(
                "{other} and {id} both serve as primary of view {view_number}"
            ));
        }
    }
    Ok(())
}

/// Views only come from the view service and it never forgets one: no server knows a view
/// newer than the view service's current view. (Holds vacuously while node 0 is down.)
pub fn check_views_come_from_the_view_service<'a>(
    nodes: impl IntoIterator<Item = (NodeId, &'a PbNode)>,
) -> Result<(), String> {
    let nodes: Vec<(NodeId, &PbNode)> = nodes.into_iter().collect();
    let Some(current) = nodes
        .iter()
        .find_map(|(_, node)| node.as_view_service())
        .map(|view_service| view_service.view())
    else {
        return Ok(());
    };
    for (id, node) in &nodes {
        if let Some(server) = node.as_server()
            && server.view().number > current.number
        {
            return Err(format!(
                "{id} knows view {} but the view service is at {current}",
                server.view()
            ));
        }
    }
    Ok(())
}

/// The backup of a view that its primary serves holds exactly the primary's store, or the
/// primary's store with the batch in flight applied: the backup applies a batch first and
/// the primary only once the backup acknowledged it, and nothing else changes either store
/// within a view. So every operation a primary has answered is on its backup (the lab's
/// "an acknowledged operation survives the primary's failure"), and the backup holds
/// nothing its primary did not send it.
///
/// This looks at one global state, so a model checker sees it break at the very step a
/// primary applies an operation its backup does not have, or a backup applies one its
/// primary never sent, long before a client could read the difference.
pub fn check_backup_mirrors_primary<'a>(
    nodes: impl IntoIterator<Item = (NodeId, &'a PbNode)>,
) -> Result<(), String> {
    let servers: BTreeMap<NodeId, &PbServer> = nodes
        .into_iter()
        .filter_map(|(id, node)| node.as_server().map(|server| (id, server)))
        .collect();
    for (&id, primary) in &servers {
        let Some(view_number) = primary.serving_view() else {
            continue;
        };
        let view = primary.view();
        let Some(backup) = view.backup.and_then(|backup| servers.get(&backup)) else {
            continue;
        };
        let installed_here = backup.view() == view && backup.installed_view() == view_number;
        let (Some(primary_store), Some(backup_store)) = (primary.store(), backup.store()) else {
            continue;
        };
        if !installed_here || backup_store == primary_store {
            continue;
        }
        let mut with_batch = primary_store.clone();
        for command in primary.in_flight_commands() {
            with_batch.apply(command);
        }
        if *backup_store != with_batch {
            return Err(format!(
                "in view {view_number} the backup's store is neither the store of its \
                 primary {id} nor that store with the batch in flight applied"
            ));
        }
    }
    Ok(())
}

/// No two servers' stores have diverged, judged by one key that only ever receives appends:
/// of any two servers holding a store, the value of `key` on one is a prefix of its value on
/// the other.
///
/// Every store in a correct cluster is the initial store with some prefix of one sequence
/// of operations applied: a backup applies its primary's batches in order, a primary
/// applies only batches its backup applied first, a promoted backup goes on from where it
/// stood, and a transfer copies a whole store. With appends only on `key`, a prefix of the
/// sequence is a prefix of the value. Two servers that each applied an operation the other
/// does not have (a deposed primary whose forwards some server still acknowledges while
/// the new primary serves: split brain) break this at the step the second one applies,
/// before a client could read the difference. Give the appends distinct values, or two
/// different histories can spell the same string.
pub fn check_append_logs_never_fork<'a>(
    nodes: impl IntoIterator<Item = (NodeId, &'a PbNode)>,
    key: &str,
) -> Result<(), String> {
    let mut values: Vec<(NodeId, &str)> = Vec::new();
    for (id, node) in nodes {
        let Some(store) = node.as_server().and_then(|server| server.store()) else {
            continue;
        };
        let value = store.map().get(key).unwrap_or("");
        for &(other, other_value) in &values {
            if !value.starts_with(other_value) && !other_value.starts_with(value) {
                return Err(format!(
                    "the stores forked: {other} has {key:?} = {other_value:?} and {id} has \
                     {value:?}, neither a prefix of the other"
                ));
            }
        }
        values.push((id, value));
    }
    Ok(())
}

/// What a cluster has shown so far, for the properties about history.
///
/// Views are taken from what servers know, not from the view service's memory: a view the
/// view service chose and lost in a crash before syncing it was never revealed, so it
/// never existed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ViewHistory {
    /// Every view some server has known, by number.
    views: BTreeMap<u64, View>,
    /// The server seen serving as primary of each view number.
    primaries: BTreeMap<u64, NodeId>,
}

impl ViewHistory {
    /// A history that has seen nothing.
    pub fn new() -> Self {
        ViewHistory::default()
    }

    /// Checks the running nodes of one more state against everything seen before, then
    /// remembers them. Call after every step; a crashed node is simply absent.
    pub fn observe<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = (NodeId, &'a PbNode)>,
    ) -> Result<(), String> {
        let nodes: Vec<(NodeId, &PbNode)> = nodes.into_iter().collect();
        check_one_primary_per_view(nodes.iter().copied())?;
        check_views_come_from_the_view_service(nodes.iter().copied())?;
        let servers = nodes
            .iter()
            .filter_map(|(id, node)| node.as_server().map(|server| (*id, server)));
        // Serving first: a primary installs its view (and from then on serves) before the
        // view service hears of it and reveals the next view.
        for (id, server) in servers.clone() {
            let Some(view_number) = server.serving_view() else {
                continue;
            };
            let first = *self.primaries.entry(view_number).or_insert(id);
            if first != id {
                return Err(format!(
                    "{id} serves as primary of view {view_number}, which {first} served before"
                ));
            }
        }
        for (id, server) in servers {
            self.observe_view(id, server.view())?;
        }
        Ok(())
    }

    fn observe_view(&mut self, id: NodeId, view: View) -> Result<(), String> {
        if let Some(known) = self.views.get(&view.number) {
            if *known != view {
                return Err(format!(
                    "{id} knows view number {} as {view}, but it was {known}",
                    view.number
                ));
            }
            return Ok(());
        }
        let previous = view.number.saturating_sub(1);
        if previous >= 1 && !self.primaries.contains_key(&previous) {
            return Err(format!(
                "{id} learned view {view} before the primary of view {previous} installed it"
            ));
        }
        self.views.insert(view.number, view);
        Ok(())
    }
}

/// A [`ViewHistory`] that keeps the first violation it saw instead of returning it: the
/// ghost a model checker carries along each path, so that "the path so far broke the view
/// history" becomes an invariant of a single state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ObservedViews {
    history: ViewHistory,
    violation: Option<String>,
}

impl ObservedViews {
    /// Observes one more state (see [`ViewHistory::observe`]); after a violation nothing
    /// changes any more.
    pub fn observe<'a>(&mut self, nodes: impl IntoIterator<Item = (NodeId, &'a PbNode)>) {
        if self.violation.is_none()
            && let Err(violation) = self.history.observe(nodes)
        {
            self.violation = Some(violation);
        }
    }

    /// The first violation seen on the path, if any.
    pub fn violation(&self) -> Option<&str> {
        self.violation.as_deref()
    }
}

/// Why the cluster has stopped for good by design, if it has: the state of the current
/// view survives on no server the view service may hand it from.
///
/// - The view is unacknowledged and its primary holds no store (it crashed, or crashed
///   before acknowledging): it can never acknowledge, and the view service never passes an
///   unacknowledged view.
/// - The view is acknowledged, its primary holds no store, and there is no backup holding
///   one to promote.
///
/// A crashed member counts as holding no store: it restarts empty. This is not a safety
/// property but the liveness the fault model gives up; a simulator uses it to tell this
/// stop from a real liveness bug.
pub fn permanent_stop<'a>(nodes: impl IntoIterator<Item = (NodeId, &'a PbNode)>) -> Option<String> {
    let nodes: BTreeMap<NodeId, &PbNode> = nodes.into_iter().collect();
    let view_service = nodes.get(&super::VIEW_SERVICE)?.as_view_service()?;
    let view = view_service.view();
    let server = |id: Option<NodeId>| {
        id.and_then(|id| nodes.get(&id))
            .and_then(|node| node.as_server())
    };
    let holds_state =
        |id: Option<NodeId>| server(id).is_some_and(|server| server.store().is_some());
    let primary = view.primary?;
    let may_start_empty =
        view.number == 1 && server(Some(primary)).is_some_and(|server| !server.restarted());
    if holds_state(Some(primary)) || may_start_empty {
        return None;
    }
    if !view_service.acknowledged() {
        return Some(format!(
            "{primary} lost its state before acknowledging {view}; the view service waits for ever"
        ));
    }
    if !holds_state(view.backup) {
        return Some(format!(
            "both servers of {view} lost their state; nobody holds the data"
        ));
    }
    None
}
