//! Hand-written etcd-like histories the checker must accept, and ones it must reject, each for
//! one reason: stale reads, lost or misreported compare-and-sets, revisions going backwards
//! across keys, non-atomic lease revokes, uncertain writes that land late.

use std::collections::HashMap;

use serde_json::{Value, json};
use synod_check::etcd::{EtcdEvent, check_etcd, check_etcd_history, read_etcd_jsonl};
use synod_check::history::{Event, EventKind, HistoryError};
use synod_check::{Budget, CheckOptions, Verdict, Violation};

/// Builds histories event by event; times are ten times the event's position.
#[derive(Default)]
struct History {
    events: Vec<EtcdEvent>,
    pending: HashMap<u64, (String, Option<String>)>,
}

impl History {
    fn push(
        &mut self,
        process: u64,
        kind: EventKind,
        f: &str,
        key: Option<String>,
        value: Value,
        extra: Value,
    ) {
        let time = self.events.len() as u64 * 10;
        let mut event = serde_json::to_value(Event {
            process,
            kind,
            f: f.to_owned(),
            key,
            value,
            time,
        })
        .expect("events serialize");
        if let (Some(event), Value::Object(extra)) = (event.as_object_mut(), extra) {
            event.extend(extra);
        }
        self.events
            .push(serde_json::from_value(event).expect("a valid etcd event"));
    }

    /// Invokes `f` on `key` (`""`: no key) with `value` and extra fields.
    fn invoke_with(
        &mut self,
        process: u64,
        f: &str,
        key: &str,
        value: Value,
        extra: Value,
    ) -> &mut Self {
        let key = (!key.is_empty()).then(|| key.to_owned());
        self.pending.insert(process, (f.to_owned(), key.clone()));
        self.push(process, EventKind::Invoke, f, key, value, extra);
        self
    }

    fn invoke(&mut self, process: u64, f: &str, key: &str, value: Value) -> &mut Self {
        self.invoke_with(process, f, key, value, json!({}))
    }

    fn complete(&mut self, process: u64, kind: EventKind, value: Value, extra: Value) -> &mut Self {
        let (f, key) = self.pending.remove(&process).expect("a pending operation");
        self.push(process, kind, &f, key, value, extra);
        self
    }

    /// Completes `ok` with `value` and extra fields (`revision`, `mod_revision`, ...).
    fn ok(&mut self, process: u64, value: Value, extra: Value) -> &mut Self {
        self.complete(process, EventKind::Ok, value, extra)
    }

    fn info(&mut self, process: u64) -> &mut Self {
        self.complete(process, EventKind::Info, Value::Null, json!({}))
    }

    fn fail(&mut self, process: u64) -> &mut Self {
        self.complete(process, EventKind::Fail, Value::Null, json!({}))
    }

    /// A put by process 0 that completes before anything else happens.
    fn put(&mut self, key: &str, value: &str, revision: u64) -> &mut Self {
        self.invoke(0, "put", key, json!(value))
            .ok(0, json!(value), json!({"revision": revision}))
    }

    /// A put attached to `lease`, by process 0, on its own.
    fn put_leased(&mut self, key: &str, value: &str, lease: u64, revision: u64) -> &mut Self {
        self.invoke_with(0, "put", key, json!(value), json!({"lease": lease}))
            .ok(0, json!(value), json!({"revision": revision}))
    }

    /// A get by `process` on its own.
    fn get(
        &mut self,
        process: u64,
        key: &str,
        read: Value,
        revision: u64,
        mod_revision: u64,
    ) -> &mut Self {
        self.invoke(process, "get", key, Value::Null).ok(
            process,
            read,
            json!({"revision": revision, "mod_revision": mod_revision}),
        )
    }

    fn grant(&mut self, lease: u64) -> &mut Self {
        self.invoke(0, "lease-grant", "", json!(60))
            .ok(0, json!(60), json!({"lease": lease}))
    }

    fn verdict(&self) -> Verdict {
        check_etcd_history(&self.events, Budget::default()).expect("a well-formed history")
    }

    fn expect_linearizable(&self) {
        let verdict = self.verdict();
        assert_eq!(verdict, Verdict::Linearizable, "{verdict:?}");
    }

    fn expect_violation(&self) -> Violation {
        match self.verdict() {
            Verdict::NotLinearizable(violation) => violation,
            other => panic!("expected a violation, got {other:?}"),
        }
    }
}

/// The refusal of the operation that cannot be placed, with the violation's text.
fn failing_refusal(violation: &Violation) -> String {
    let position = violation
        .stuck
        .iter()
        .position(|&stuck| stuck == violation.failing)
        .expect("the failing operation is stuck");
    format!("{}\n{violation}", violation.refusals[position])
}

#[test]
fn a_sequential_history_with_every_operation_passes() {
    let mut history = History::default();
    history
        .get(0, "a", Value::Null, 0, 0)
        .put("a", "x", 1)
        .get(0, "a", json!("x"), 1, 1)
        .invoke(0, "cas", "a", json!(["x", "y"]))
        .ok(
            0,
            json!(["x", "y"]),
            json!({"succeeded": true, "revision": 2}),
        )
        .invoke(0, "cas", "a", json!(["x", "z"]))
        .ok(
            0,
            json!(["x", "z"]),
            json!({"succeeded": false, "revision": 2}),
        )
        .invoke(0, "cas", "b", json!([null, "b1"]))
        .ok(
            0,
            json!([null, "b1"]),
            json!({"succeeded": true, "revision": 3}),
        )
        .invoke(0, "delete", "a", Value::Null)
        .ok(0, json!(1), json!({"revision": 4}))
        .invoke(0, "delete", "a", Value::Null)
        .ok(0, json!(0), json!({"revision": 4}))
        .get(0, "a", Value::Null, 4, 0)
        .get(0, "b", json!("b1"), 4, 3);
    history.expect_linearizable();
}

#[test]
fn overlapping_reads_may_see_the_old_or_the_new_value() {
    let mut history = History::default();
    history
        .put("a", "x", 1)
        .invoke(1, "put", "a", json!("y"))
        .invoke(2, "get", "a", Value::Null)
        .invoke(3, "get", "a", Value::Null)
        .ok(2, json!("y"), json!({"revision": 2, "mod_revision": 2}))
        .ok(3, json!("x"), json!({"revision": 1, "mod_revision": 1}))
        .ok(1, json!("y"), json!({"revision": 2}));
    history.expect_linearizable();
}

#[test]
fn a_stale_read_is_caught_by_the_search() {
    // No revisions on the read: only the order of values gives it away.
    let mut history = History::default();
    history
        .put("a", "x", 1)
        .put("a", "y", 2)
        .invoke(1, "get", "a", Value::Null)
        .ok(1, json!("x"), json!({}));
    let violation = history.expect_violation();
    assert_eq!(violation.key, "a");
    let text = failing_refusal(&violation);
    assert!(text.starts_with(r#"would read "y""#), "{text}");
}

#[test]
fn a_stale_read_with_an_old_revision_is_caught_by_the_revision_pass() {
    let mut history = History::default();
    history
        .put("a", "x", 1)
        .put("a", "y", 2)
        .get(1, "a", json!("x"), 1, 1);
    let text = failing_refusal(&history.expect_violation());
    assert!(
        text.contains("observed revision 1, which is below revision 2"),
        "{text}"
    );
}

#[test]
fn a_read_whose_mod_revision_belongs_to_another_write_is_caught() {
    let mut history = History::default();
    history
        .put("a", "x", 3)
        .invoke(1, "get", "a", Value::Null)
        .ok(1, json!("x"), json!({"mod_revision": 4}));
    let text = failing_refusal(&history.expect_violation());
    assert!(text.starts_with("would read mod_revision 3"), "{text}");
}

#[test]
fn a_read_that_skips_a_change_inside_its_revision_window_is_caught() {
    // The two puts overlap the read, so real time allows any order, but the read claims the
    // key was last changed at 1 while observing revision 2, which the second put created.
    let mut history = History::default();
    history
        .invoke(1, "put", "a", json!("x"))
        .invoke(2, "put", "a", json!("y"))
        .invoke(3, "get", "a", Value::Null)
        .ok(1, json!("x"), json!({"revision": 1}))
        .ok(2, json!("y"), json!({"revision": 2}))
        .ok(3, json!("x"), json!({"revision": 2, "mod_revision": 1}));
    let text = failing_refusal(&history.expect_violation());
    assert!(
        text.contains("observed revision 2 with the key last changed at 1, but process 2's put changed it at revision 2"),
        "{text}"
    );
}

#[test]
fn a_key_s_writes_must_be_linearized_in_revision_order() {
    // Two overlapping puts; a later read sees the one with the lower revision, so the search
    // would have to place revision 6 before revision 5.
    let mut history = History::default();
    history
        .invoke(1, "put", "a", json!("x"))
        .invoke(2, "put", "a", json!("y"))
        .ok(1, json!("x"), json!({"revision": 5}))
        .ok(2, json!("y"), json!({"revision": 6}))
        .invoke(3, "get", "a", Value::Null)
        .ok(3, json!("x"), json!({"mod_revision": 5}));
    let text = history.expect_violation().to_string();
    assert!(text.contains(r#"would read "y""#), "{text}");

    // Without revisions the puts may go in either order.
    for event in &mut history.events {
        event.fields.revision = None;
        event.fields.mod_revision = None;
    }
    history.expect_linearizable();
}

#[test]
fn a_lost_cas_is_caught() {
    let mut history = History::default();
    history
        .put("a", "x", 1)
        .invoke(1, "cas", "a", json!(["x", "y"]))
        .ok(
            1,
            json!(["x", "y"]),
            json!({"succeeded": true, "revision": 2}),
        )
        .invoke(2, "get", "a", Value::Null)
        .ok(2, json!("x"), json!({}));
    let text = failing_refusal(&history.expect_violation());
    assert!(text.starts_with(r#"would read "y""#), "{text}");
}

#[test]
fn a_cas_reported_failed_when_it_should_have_succeeded_is_caught() {
    // No revision on the cas: the search alone decides.
    let mut history = History::default();
    history
        .put("a", "x", 1)
        .invoke(1, "cas", "a", json!(["x", "y"]))
        .ok(1, json!(["x", "y"]), json!({"succeeded": false}));
    let text = failing_refusal(&history.expect_violation());
    assert!(
        text.starts_with(r#"would succeed: the key holds "x""#),
        "{text}"
    );
}

#[test]
fn a_cas_reported_succeeded_when_it_should_have_failed_is_caught() {
    // No revision on the cas: the search alone decides.
    let mut history = History::default();
    history
        .put("a", "x", 1)
        .invoke(1, "cas", "a", json!([null, "y"]))
        .ok(1, json!([null, "y"]), json!({"succeeded": true}));
    let text = failing_refusal(&history.expect_violation());
    assert!(
        text.starts_with(r#"would fail: the key holds "x", not null"#),
        "{text}"
    );
}

#[test]
fn a_failed_cas_may_overlap_the_write_that_made_it_fail() {
    let mut history = History::default();
    history
        .put("a", "x", 1)
        .invoke(1, "cas", "a", json!(["x", "z"]))
        .invoke(2, "put", "a", json!("y"))
        .ok(2, json!("y"), json!({"revision": 2}))
        .ok(
            1,
            json!(["x", "z"]),
            json!({"succeeded": false, "revision": 2}),
        );
    history.expect_linearizable();
}

#[test]
fn revisions_going_backwards_across_keys_are_caught() {
    // Each key alone is fine; together, b's put started after a's finished yet created an
    // earlier revision.
    let mut history = History::default();
    history.put("a", "x", 5).put("b", "y", 3);
    let violation = history.expect_violation();
    let text = failing_refusal(&violation);
    assert!(
        text.contains("created revision 3, which is below revision 5 of process 0's put"),
        "{text}"
    );
    assert_eq!(violation.operations.len(), 2);
    assert!(!violation.partitioned);
}

#[test]
fn two_changes_sharing_a_revision_are_caught() {
    let mut history = History::default();
    history
        .invoke(1, "put", "a", json!("x"))
        .invoke(2, "put", "b", json!("y"))
        .ok(1, json!("x"), json!({"revision": 4}))
        .ok(2, json!("y"), json!({"revision": 4}));
    let text = failing_refusal(&history.expect_violation());
    assert!(text.contains("also reports creating revision 4"), "{text}");
}

#[test]
fn a_read_of_another_key_below_a_completed_write_is_caught() {
    let mut history = History::default();
    history.put("a", "x", 7).get(1, "b", Value::Null, 6, 0);
    let text = failing_refusal(&history.expect_violation());
    assert!(
        text.contains("observed revision 6, which is below revision 7"),
        "{text}"
    );
}

#[test]
fn a_revoke_deletes_its_keys_together() {
    let mut history = History::default();
    history
        .grant(9)
        .put_leased("a", "x", 9, 1)
        .put_leased("b", "y", 9, 2)
        .put("c", "z", 3)
        .invoke_with(1, "lease-revoke", "", Value::Null, json!({"lease": 9}))
        .ok(1, Value::Null, json!({"lease": 9, "revision": 4}))
        .get(2, "a", Value::Null, 4, 0)
        .get(2, "b", Value::Null, 4, 0)
        .get(2, "c", json!("z"), 4, 3);
    history.expect_linearizable();
}

#[test]
fn a_revoke_that_is_not_atomic_is_caught() {
    // While the revoke is in flight, one reader sees "a" gone and then, strictly later, another
    // sees "b" still there: no single instant deletes both. No revisions, so only the search of
    // the lease's keys together can tell.
    let mut history = History::default();
    history
        .grant(9)
        .put_leased("a", "x", 9, 1)
        .put_leased("b", "y", 9, 2)
        .invoke_with(1, "lease-revoke", "", Value::Null, json!({"lease": 9}))
        .invoke(2, "get", "a", Value::Null)
        .ok(2, Value::Null, json!({}))
        .invoke(3, "get", "b", Value::Null)
        .ok(3, json!("y"), json!({}))
        .ok(1, Value::Null, json!({"lease": 9}));
    let violation = history.expect_violation();
    assert_eq!(violation.key, "a, b (lease 9)");

    // The same reads of two keys that share no lease are fine.
    let mut unleased = History::default();
    unleased
        .put("a", "x", 1)
        .put("b", "y", 2)
        .invoke(1, "delete", "a", Value::Null)
        .invoke(2, "get", "a", Value::Null)
        .ok(2, Value::Null, json!({}))
        .invoke(3, "get", "b", Value::Null)
        .ok(3, json!("y"), json!({}))
        .ok(1, json!(1), json!({}));
    unleased.expect_linearizable();
}

#[test]
fn a_put_without_its_lease_survives_the_revoke() {
    let mut history = History::default();
    history
        .grant(9)
        .put_leased("a", "x", 9, 1)
        .put("a", "y", 2)
        .invoke_with(1, "lease-revoke", "", Value::Null, json!({"lease": 9}))
        .ok(1, Value::Null, json!({"lease": 9, "revision": 2}))
        .get(2, "a", json!("y"), 2, 2);
    history.expect_linearizable();
}

#[test]
fn an_info_write_may_land_after_later_operations() {
    let mut history = History::default();
    history
        .put("a", "x", 1)
        .invoke(1, "put", "a", json!("y"))
        .info(1)
        .get(2, "a", json!("x"), 1, 1)
        .get(2, "a", json!("y"), 2, 2)
        .invoke(3, "cas", "a", json!(["y", "z"]))
        .info(3)
        .get(2, "a", json!("y"), 2, 2)
        .get(2, "a", json!("z"), 3, 3);
    history.expect_linearizable();

    // ... or never.
    let mut never = History::default();
    never
        .put("a", "x", 1)
        .invoke(1, "put", "a", json!("y"))
        .info(1)
        .get(2, "a", json!("x"), 1, 1);
    never.expect_linearizable();
}

#[test]
fn an_info_write_cannot_be_undone() {
    let mut history = History::default();
    history
        .put("a", "x", 1)
        .invoke(1, "put", "a", json!("y"))
        .info(1)
        .invoke(2, "get", "a", Value::Null)
        .ok(2, json!("y"), json!({}))
        .invoke(2, "get", "a", Value::Null)
        .ok(2, json!("x"), json!({}));
    let text = failing_refusal(&history.expect_violation());
    assert!(text.starts_with(r#"would read "y""#), "{text}");
}

#[test]
fn failed_operations_did_not_happen() {
    let mut history = History::default();
    history
        .put("a", "x", 1)
        .invoke(1, "put", "a", json!("y"))
        .fail(1)
        .get(2, "a", json!("x"), 1, 1);
    history.expect_linearizable();

    let mut read_failed_write = History::default();
    read_failed_write
        .invoke(1, "put", "a", json!("y"))
        .fail(1)
        .invoke(2, "get", "a", Value::Null)
        .ok(2, json!("y"), json!({}));
    read_failed_write.expect_violation();
}

#[test]
fn a_delete_reporting_the_wrong_count_is_caught() {
    let mut history = History::default();
    history
        .invoke(1, "delete", "a", Value::Null)
        .ok(1, json!(1), json!({"revision": 1}));
    let text = failing_refusal(&history.expect_violation());
    assert!(
        text.starts_with("would delete nothing: the key is absent"),
        "{text}"
    );
}

#[test]
fn violations_of_both_passes_render_as_html() {
    let mut across = History::default();
    across.put("a", "x", 5).put("b", "y", 3);
    let mut within = History::default();
    within
        .put("a", "x", 1)
        .invoke(1, "get", "a", Value::Null)
        .ok(1, json!("z"), json!({}));
    for history in [across, within] {
        let page = synod_check::html::render_violation(&history.expect_violation(), "h.jsonl");
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("class=\"op failing\""), "{page}");
    }
}

#[test]
fn partitioning_does_not_change_the_verdict() {
    let mut history = History::default();
    history
        .grant(9)
        .put_leased("a", "x", 9, 1)
        .put_leased("b", "y", 9, 2)
        .invoke_with(1, "lease-revoke", "", Value::Null, json!({"lease": 9}))
        .invoke(2, "get", "a", Value::Null)
        .ok(2, Value::Null, json!({}))
        .invoke(3, "get", "b", Value::Null)
        .ok(3, json!("y"), json!({}))
        .ok(1, Value::Null, json!({"lease": 9}));
    for partition in [true, false] {
        let options = CheckOptions {
            partition,
            ..CheckOptions::default()
        };
        let report = check_etcd(&history.events, &options).expect("well-formed");
        assert!(
            matches!(report.verdict, Verdict::NotLinearizable(_)),
            "{partition}"
        );
    }
}

#[test]
fn the_jsonl_reader_keeps_the_etcd_fields_and_names_bad_lines() {
    let text = "\n{\"process\":1,\"type\":\"invoke\",\"f\":\"put\",\"key\":\"a\",\"value\":\"x\",\"time\":1,\"lease\":7}\n\
                {\"process\":1,\"type\":\"ok\",\"f\":\"put\",\"key\":\"a\",\"value\":\"x\",\"time\":2,\"revision\":3,\"other\":true}\n";
    let events = read_etcd_jsonl(text.as_bytes(), "h.jsonl").expect("valid");
    assert_eq!(events[0].fields.lease, Some(json!(7)));
    assert_eq!(events[1].fields.revision, Some(3));
    assert_eq!(
        synod_check::etcd::to_etcd_jsonl_line(&events[1]),
        r#"{"process":1,"type":"ok","f":"put","key":"a","value":"x","time":2,"revision":3}"#
    );
    let error = read_etcd_jsonl("{\"process\":1}\n".as_bytes(), "bad.jsonl").expect_err("bad");
    assert!(
        error
            .to_string()
            .starts_with("bad.jsonl:1: malformed event"),
        "{error}"
    );
}

#[test]
fn malformed_operations_are_errors_that_say_what_to_do() {
    let check = |history: &History| check_etcd_history(&history.events, Budget::default());

    let mut no_outcome = History::default();
    no_outcome.invoke(1, "cas", "a", json!([null, "x"])).ok(
        1,
        json!([null, "x"]),
        json!({"revision": 1}),
    );
    let error = check(&no_outcome).expect_err("cas without succeeded");
    assert!(
        matches!(error, HistoryError::InvalidValue { index: 1, .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("\"succeeded\": true or false"),
        "{error}"
    );

    let mut unknown = History::default();
    unknown
        .invoke(1, "append", "a", json!("x"))
        .ok(1, json!("x"), json!({}));
    let error = check(&unknown).expect_err("append");
    assert!(
        matches!(error, HistoryError::UnsupportedOperation { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("lease-revoke"), "{error}");

    let mut bad_count = History::default();
    bad_count
        .invoke(1, "delete", "a", Value::Null)
        .ok(1, json!("x"), json!({}));
    let error = check(&bad_count).expect_err("delete count");
    assert!(error.to_string().contains("0 or 1"), "{error}");

    let mut bad_cas = History::default();
    bad_cas.invoke(1, "cas", "a", json!(["x"])).fail(1);
    let error = check(&bad_cas).expect_err("cas argument");
    assert!(error.to_string().contains("[expected, new]"), "{error}");

    let mut anonymous_revoke = History::default();
    anonymous_revoke
        .invoke(1, "lease-revoke", "", Value::Null)
        .fail(1);
    let error = check(&anonymous_revoke).expect_err("revoke without lease");
    assert!(error.to_string().contains("\"lease\""), "{error}");
}

#[test]
fn an_absent_read_at_a_revision_after_a_put_is_caught() {
    // The put overlaps the read, so real time allows the read first, but the read claims a
    // store revision at which the put had already set the key.
    let mut history = History::default();
    history
        .invoke(1, "put", "a", json!("x"))
        .invoke(2, "get", "a", Value::Null)
        .ok(1, json!("x"), json!({"revision": 1}))
        .ok(2, Value::Null, json!({"revision": 1, "mod_revision": 0}));
    let text = failing_refusal(&history.expect_violation());
    assert!(
        text.contains(
            "observed revision 1 with the key absent, but process 1's put set it at revision 1"
        ),
        "{text}"
    );

    // A delete of unknown revision may have removed it in between.
    let mut deleted = History::default();
    deleted
        .put("a", "x", 1)
        .invoke(1, "delete", "a", Value::Null)
        .invoke(2, "get", "a", Value::Null)
        .ok(2, Value::Null, json!({"revision": 2, "mod_revision": 0}))
        .info(1);
    deleted.expect_linearizable();
}

#[test]
fn a_failed_cas_at_a_revision_where_its_comparison_held_is_caught() {
    // The cas overlaps the put, so the search may place it first (key absent, comparison
    // false), but it reports the revision the put created, when the key held "x".
    let mut history = History::default();
    history
        .invoke(1, "put", "a", json!("x"))
        .invoke(2, "cas", "a", json!(["x", "y"]))
        .ok(1, json!("x"), json!({"revision": 1}))
        .ok(
            2,
            json!(["x", "y"]),
            json!({"succeeded": false, "revision": 1}),
        );
    let text = failing_refusal(&history.expect_violation());
    assert!(
        text.contains(
            r#"failed at revision 1, but the key held "x" then (process 1's put at revision 1)"#
        ),
        "{text}"
    );

    // Before the put's revision the key was absent, and the cas may have failed then.
    let mut earlier = History::default();
    earlier
        .invoke(1, "put", "a", json!("x"))
        .invoke(2, "cas", "a", json!(["x", "y"]))
        .ok(
            2,
            json!(["x", "y"]),
            json!({"succeeded": false, "revision": 0}),
        )
        .ok(1, json!("x"), json!({"revision": 1}));
    earlier.expect_linearizable();
}
