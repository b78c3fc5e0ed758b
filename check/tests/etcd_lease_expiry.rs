//! Lease expiry in the etcd model: hand-written histories in which a lease's keys vanish with
//! no delete or revoke. The checker must accept those where the keys vanish after the lease's
//! earliest expiry (its latest `ok` renewal's invoke plus a TTL, at the drift bound, less the
//! clock jumps allowed), and reject those where they vanish too early, where one key of the
//! lease outlives another's expiry, or where a revoked lease's key is read again.

use std::time::Duration;

use synod_check::etcd::{EtcdOptions, LeaseExpiry, check_etcd_history_with, read_etcd_jsonl};
use synod_check::{Budget, Verdict};

/// One millisecond on the history clock (nanoseconds).
const MS: u64 = 1_000_000;

/// A grant of lease 7 with a 1-second TTL, invoked at 0, and puts attaching `a` (revision 2)
/// and `b` (revision 3) to it, done by 5 ms.
fn leased_keys() -> String {
    [
        r#"{"process":0,"type":"invoke","f":"lease-grant","value":1,"time":0}"#.to_owned(),
        format!(r#"{{"process":0,"type":"ok","f":"lease-grant","value":1,"time":{},"lease":7}}"#, MS),
        format!(r#"{{"process":0,"type":"invoke","f":"put","key":"a","value":"x","time":{},"lease":7}}"#, 2 * MS),
        format!(r#"{{"process":0,"type":"ok","f":"put","key":"a","value":"x","time":{},"revision":2}}"#, 3 * MS),
        format!(r#"{{"process":0,"type":"invoke","f":"put","key":"b","value":"y","time":{},"lease":7}}"#, 4 * MS),
        format!(r#"{{"process":0,"type":"ok","f":"put","key":"b","value":"y","time":{},"revision":3}}"#, 5 * MS),
    ]
    .join("\n")
}

/// A get of `key` by process 1 over `[at, at + 1 ms]` that read `value` (JSON) with
/// `mod_revision` at store revision `revision`.
fn get(key: &str, at_ms: u64, value: &str, mod_revision: u64, revision: u64) -> String {
    format!(
        "{{\"process\":1,\"type\":\"invoke\",\"f\":\"get\",\"key\":\"{key}\",\"value\":null,\"time\":{}}}\n\
         {{\"process\":1,\"type\":\"ok\",\"f\":\"get\",\"key\":\"{key}\",\"value\":{value},\"time\":{},\
         \"revision\":{revision},\"mod_revision\":{mod_revision}}}",
        at_ms * MS,
        (at_ms + 1) * MS
    )
}

/// A keep-alive of lease 7 by process 2 over `[at, at + 1 ms]`.
fn keep_alive(at_ms: u64) -> String {
    format!(
        "{{\"process\":2,\"type\":\"invoke\",\"f\":\"lease-keepalive\",\"value\":null,\"time\":{},\"lease\":7}}\n\
         {{\"process\":2,\"type\":\"ok\",\"f\":\"lease-keepalive\",\"value\":1,\"time\":{},\"lease\":7}}",
        at_ms * MS,
        (at_ms + 1) * MS
    )
}

fn verdict(lines: &[String], lease_expiry: LeaseExpiry) -> Verdict {
    let text = lines.join("\n");
    let events = read_etcd_jsonl(text.as_bytes(), "test").expect("a well-formed history");
    let options = EtcdOptions {
        budget: Budget::default(),
        lease_expiry,
    };
    check_etcd_history_with(&events, &options).expect("a valid history")
}

fn assert_linearizable(lines: &[String], lease_expiry: LeaseExpiry) {
    let verdict = verdict(lines, lease_expiry);
    assert_eq!(verdict, Verdict::Linearizable, "{lines:#?}");
}

fn assert_violation(lines: &[String], lease_expiry: LeaseExpiry) -> String {
    match verdict(lines, lease_expiry) {
        Verdict::NotLinearizable(violation) => violation.to_string(),
        other => panic!("expected a violation, got {other:?} for {lines:#?}"),
    }
}

/// The default: a TTL at 1 % drift, clocks that never jump.
fn after_ttl() -> LeaseExpiry {
    LeaseExpiry::default()
}

#[test]
fn keys_may_vanish_once_the_ttl_has_passed() {
    // Expiry is the only explanation: it deleted both keys at revision 4.
    let history = [
        leased_keys(),
        get("a", 1_500, "null", 0, 4),
        get("b", 1_600, "null", 0, 4),
    ];
    assert_linearizable(&history, after_ttl());
}

#[test]
fn keys_may_also_outlive_their_ttl() {
    // Expiry may come late (a leader change restarts the TTL) or not within the history.
    let history = [leased_keys(), get("a", 5_000, "\"x\"", 2, 3)];
    assert_linearizable(&history, after_ttl());
}

#[test]
fn keys_that_vanish_before_the_ttl_are_caught() {
    let history = [leased_keys(), get("a", 500, "null", 0, 4)];
    let violation = assert_violation(&history, after_ttl());
    assert!(violation.contains("get"), "{violation}");
    // Just inside the drift bound (1 s / 1.01 = 990 ms after the grant's invoke) is still
    // too early; just after it is not.
    let history = [leased_keys(), get("a", 985, "null", 0, 4)];
    assert_violation(&history, after_ttl());
    let history = [leased_keys(), get("a", 991, "null", 0, 4)];
    assert_linearizable(&history, after_ttl());
}

#[test]
fn a_keep_alive_moves_the_earliest_expiry() {
    // Kept alive at 800 ms: nothing may expire before about 1.79 s.
    let early = [
        leased_keys(),
        keep_alive(800),
        get("a", 1_500, "null", 0, 4),
    ];
    assert_violation(&early, after_ttl());
    let late = [
        leased_keys(),
        keep_alive(800),
        get("a", 1_900, "null", 0, 4),
    ];
    assert_linearizable(&late, after_ttl());
}

#[test]
fn an_expiry_deletes_every_key_of_the_lease_at_once() {
    // `a` was seen gone (expired), so `b`, on the same lease, cannot be read afterwards.
    let history = [
        leased_keys(),
        get("a", 1_500, "null", 0, 4),
        get("b", 1_600, "\"y\"", 3, 4),
    ];
    let violation = assert_violation(&history, after_ttl());
    assert!(violation.contains("lease-expire"), "{violation}");
    assert!(violation.contains("would read null of key"), "{violation}");
}

#[test]
fn a_revoked_lease_s_key_read_later_is_caught() {
    let revoke = [
        format!(r#"{{"process":2,"type":"invoke","f":"lease-revoke","value":null,"time":{},"lease":7}}"#, 10 * MS),
        format!(r#"{{"process":2,"type":"ok","f":"lease-revoke","value":null,"time":{},"lease":7,"revision":4}}"#, 11 * MS),
    ]
    .join("\n");
    let history = [leased_keys(), revoke, get("b", 20, "\"y\"", 3, 4)];
    assert_violation(&history, after_ttl());
    assert_violation(&history, LeaseExpiry::AnyTimeAfterGrant);
}

#[test]
fn clock_jumps_allowed_for_bring_the_earliest_expiry_forward() {
    let history = [leased_keys(), get("a", 500, "null", 0, 4)];
    let jumpy = LeaseExpiry::AfterTtl {
        drift_ppm: 10_000,
        clock_jumps: Duration::from_millis(600),
    };
    assert_linearizable(&history, jumpy);
    assert_linearizable(&history, LeaseExpiry::AnyTimeAfterGrant);
}

#[test]
fn without_expiry_a_vanished_leased_key_is_caught() {
    let history = [leased_keys(), get("a", 1_500, "null", 0, 4)];
    assert_violation(&history, LeaseExpiry::Never);
}
