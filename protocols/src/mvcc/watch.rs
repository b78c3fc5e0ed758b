//! Watches: the store's history as a stream of events.
//!
//! [`MvccStore::events`](crate::mvcc::MvccStore::events) is the pure API: the events of a
//! key or range between two revisions, with etcd's `NOPUT`/`NODELETE` filters and optional
//! previous values; every event of one transaction carries its one revision. A start below
//! the compacted revision is refused with [`WatchError::Compacted`], which carries the
//! revision a watcher may restart from.
//!
//! [`WatchHub`] keeps many watchers' positions: after the state machine applied new
//! revisions, [`WatchHub::poll`] yields each watcher the events it has not seen, in whole
//! revisions, so a server can stream them. Each event reaches each watcher exactly once
//! (a watcher's position only moves past revisions it was given), and
//! [`WatchHub::progress`] tells caught-up watchers the revision they are current at.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::mvcc::api::{KeyValue, ResponseHeader};
use crate::mvcc::store::MvccStore;

/// Revisions one [`WatchHub::poll`] hands a watcher at most: bounds a response's size
/// when a watcher is far behind; it gets the rest on the next poll.
pub const WATCH_REVISIONS_PER_RESPONSE_MAX: i64 = 1_000;

/// What an event did (`mvccpb.Event.EventType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// A put created or updated the key.
    Put,
    /// The key was deleted (by a delete, or with its lease).
    Delete,
}

/// One change to one key (`mvccpb.Event`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventType,
    /// The key after the change (for a delete: the key and the deleting revision as
    /// `mod_revision`, everything else zero).
    pub kv: KeyValue,
    /// The key before the change, if asked for and it was live.
    pub prev_kv: Option<KeyValue>,
}

/// Which keys and events a watch selects (the selection part of `WatchCreateRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WatchFilter {
    /// The first key.
    #[serde(with = "crate::bytes::field")]
    pub key: Vec<u8>,
    /// The end of the range, with [`crate::mvcc::api::RangeRequest`]'s rules.
    #[serde(with = "crate::bytes::field")]
    pub range_end: Vec<u8>,
    /// Leave out put events (etcd's `NOPUT` filter).
    pub no_put: bool,
    /// Leave out delete events (etcd's `NODELETE` filter).
    pub no_delete: bool,
    /// Attach the previous value to each event.
    pub prev_kv: bool,
}

/// Why events cannot be produced.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum WatchError {
    /// The start revision was compacted away; restart at `compact_revision` or later.
    #[error("mvcc: required revision has been compacted")]
    Compacted {
        /// The oldest revision still available.
        compact_revision: i64,
    },
    /// The value file could not be read; the member stops (see [`crate::mvcc::api::MvccError::Storage`]).
    #[error("etcdserver: value storage failed: {0}")]
    Storage(String),
}

/// Starts a watcher (`WatchCreateRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WatchCreateRequest {
    /// The keys and events to watch.
    pub filter: WatchFilter,
    /// The first revision to report; 0 or less means "after the current one".
    pub start_revision: i64,
}

/// What a watcher is told (`WatchResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WatchResponse {
    /// The store's revision when this was produced.
    pub header: ResponseHeader,
    /// The watcher.
    pub watch_id: i64,
    /// This answers the watcher's creation.
    pub created: bool,
    /// The watcher is gone (cancelled, or its start was compacted).
    pub canceled: bool,
    /// When cancelled by compaction, the oldest revision still available.
    pub compact_revision: i64,
    /// Events in revision order; empty for creation, cancellation and progress.
    pub events: Vec<WatchEvent>,
}

/// One watcher's selection and position.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Watcher {
    filter: WatchFilter,
    /// The first revision this watcher has not been given.
    next_revision: i64,
}

/// Many watchers over one store (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WatchHub {
    watchers: BTreeMap<i64, Watcher>,
    next_watch_id: i64,
}

impl WatchHub {
    /// A hub without watchers.
    pub fn new() -> Self {
        WatchHub::default()
    }

    /// Number of watchers.
    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    /// True if there are no watchers.
    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// The first revision watcher `watch_id` has not been given, if it exists.
    pub fn next_revision(&self, watch_id: i64) -> Option<i64> {
        self.watchers
            .get(&watch_id)
            .map(|watcher| watcher.next_revision)
    }

    /// Adds a watcher; its events arrive through [`WatchHub::poll`].
    pub fn create(&mut self, request: WatchCreateRequest, store: &MvccStore) -> WatchResponse {
        let watch_id = self.next_watch_id;
        self.next_watch_id += 1;
        let next_revision = if request.start_revision > 0 {
            request.start_revision
        } else {
            store.revision() + 1
        };
        self.watchers.insert(
            watch_id,
            Watcher {
                filter: request.filter,
                next_revision,
            },
        );
        WatchResponse {
            header: ResponseHeader {
                revision: store.revision(),
            },
            watch_id,
            created: true,
            ..WatchResponse::default()
        }
    }

    /// Removes a watcher; `None` if there was no such watcher.
    pub fn cancel(&mut self, watch_id: i64, store: &MvccStore) -> Option<WatchResponse> {
        self.watchers.remove(&watch_id)?;
        Some(WatchResponse {
            header: ResponseHeader {
                revision: store.revision(),
            },
            watch_id,
            canceled: true,
            ..WatchResponse::default()
        })
    }

    /// Hands every watcher the events it has not seen up to the store's current revision
    /// (at most [`WATCH_REVISIONS_PER_RESPONSE_MAX`] revisions each), one response per
    /// watcher with events. A watcher whose position was compacted away is cancelled with
    /// the compact revision.
    pub fn poll(&mut self, store: &MvccStore) -> Vec<WatchResponse> {
        let header = ResponseHeader {
            revision: store.revision(),
        };
        let mut responses = Vec::new();
        let mut cancelled = Vec::new();
        for (&watch_id, watcher) in &mut self.watchers {
            if watcher.next_revision > store.revision() {
                continue;
            }
            let end = store.revision().min(
                watcher
                    .next_revision
                    .saturating_add(WATCH_REVISIONS_PER_RESPONSE_MAX - 1),
            );
            match store.events(&watcher.filter, watcher.next_revision, end) {
                Ok(events) => {
                    watcher.next_revision = end + 1;
                    if !events.is_empty() {
                        responses.push(WatchResponse {
                            header,
                            watch_id,
                            events,
                            ..WatchResponse::default()
                        });
                    }
                }
                // The member stops on a storage failure; the watcher stays where it was.
                Err(WatchError::Storage(_)) => {}
                Err(WatchError::Compacted { compact_revision }) => {
                    cancelled.push(watch_id);
                    responses.push(WatchResponse {
                        header,
                        watch_id,
                        canceled: true,
                        compact_revision,
                        ..WatchResponse::default()
                    });
                }
            }
        }
        for watch_id in cancelled {
            self.watchers.remove(&watch_id);
        }
        responses
    }

    /// A progress notification (no events) for every watcher that has been given
    /// everything up to the current revision.
    pub fn progress(&self, store: &MvccStore) -> Vec<WatchResponse> {
        self.watchers
            .iter()
            .filter(|(_, watcher)| watcher.next_revision > store.revision())
            .map(|(&watch_id, _)| WatchResponse {
                header: ResponseHeader {
                    revision: store.revision(),
                },
                watch_id,
                ..WatchResponse::default()
            })
            .collect()
    }
}
