//! The model checker on two-phase commit: unique-state counts pinned against Stateright's
//! example (the same model must give the same counts), properties, a broken variant caught
//! with a short counterexample, and the limits.

use std::time::Duration;
use synod_sim::model_checker::checker::{Checker, Limit, Verdict};
use synod_sim::model_checker::two_phase_commit::{
    ResourceManagerState, TwoPhaseAction, TwoPhaseCommit, TwoPhaseVariant,
};

#[test]
fn unique_state_counts_match_stateright_for_3_and_5_resource_managers() {
    let report = Checker::new(&TwoPhaseCommit::new(3)).bfs();
    assert_eq!(report.unique_states, 288);
    assert_eq!(report.verdict(), Verdict::Verified);
    for threads in [1, 2] {
        let report = Checker::new(&TwoPhaseCommit::new(5)).threads(threads).dfs();
        assert_eq!(report.unique_states, 8_832, "dfs on {threads} threads");
        assert_eq!(report.verdict(), Verdict::Verified);
        let report = Checker::new(&TwoPhaseCommit::new(5)).threads(threads).bfs();
        assert_eq!(report.unique_states, 8_832, "bfs on {threads} threads");
        assert_eq!(report.verdict(), Verdict::Verified);
    }
}

#[test]
fn seven_resource_managers_give_the_anchor_counts() {
    let report = Checker::new(&TwoPhaseCommit::new(7)).threads(2).dfs();
    assert_eq!(report.unique_states, 296_448);
    // Stateright counts every successor computed, initial states included: the same.
    assert_eq!(report.states_generated, 2_744_706);
    assert_eq!(report.verdict(), Verdict::Verified, "{report}");
    let names: Vec<&str> = report.goals.iter().map(|goal| goal.name.as_str()).collect();
    assert_eq!(names, ["abort agreement", "commit agreement"]);
}

#[test]
fn goal_examples_end_in_states_that_satisfy_them() {
    let report = Checker::new(&TwoPhaseCommit::new(3)).bfs();
    let commit = report.goals[1]
        .example
        .as_ref()
        .expect("commit is reachable");
    // Shortest: 3 prepares, 3 receipts by the TM, commit, 3 deliveries of Commit.
    assert_eq!(commit.len(), 10);
    for rm in 0..3 {
        assert_eq!(
            commit.last_state().resource_manager(rm),
            ResourceManagerState::Committed
        );
    }
    let abort = report.goals[0]
        .example
        .as_ref()
        .expect("abort is reachable");
    assert_eq!(abort.len(), 3, "every RM aborts on its own");
}

#[test]
fn committing_early_is_caught_with_a_shortest_counterexample() {
    let broken = TwoPhaseCommit::with_variant(3, TwoPhaseVariant::CommitEarly);
    let report = Checker::new(&broken).bfs();
    assert_eq!(report.verdict(), Verdict::Violation);
    let counterexample = report.violation.expect("a violation");
    assert_eq!(counterexample.property, "consistent");
    // Prepare one RM, let the TM see it and commit, deliver Commit to it, abort another.
    assert_eq!(counterexample.path.len(), 5);
    assert_eq!(counterexample.original_length, 5);
    let actions: Vec<TwoPhaseAction> = counterexample.path.actions().copied().collect();
    assert!(actions.contains(&TwoPhaseAction::TmCommit));
    let printed = counterexample.path.to_string();
    assert!(
        printed.contains("   5  TmCommit") || printed.contains("   3  TmCommit"),
        "{printed}"
    );
}

#[test]
fn depth_first_and_random_counterexamples_are_minimized_and_never_longer() {
    let broken = TwoPhaseCommit::with_variant(4, TwoPhaseVariant::CommitEarly);
    for threads in [1, 2] {
        let report = Checker::new(&broken).threads(threads).dfs();
        let counterexample = report.violation.expect("dfs finds it");
        assert!(counterexample.path.len() <= counterexample.original_length);
        assert_eq!(
            counterexample.path.len(),
            5,
            "minimized to the shortest here"
        );
    }
    let unminimized = Checker::new(&broken)
        .minimize(false)
        .random_probes(7, 1_000);
    let raw = unminimized.violation.expect("a random walk finds it");
    assert_eq!(raw.path.len(), raw.original_length);
    let report = Checker::new(&broken).random_probes(7, 1_000);
    let minimized = report.violation.expect("the same walk finds it");
    assert_eq!(minimized.original_length, raw.original_length);
    assert!(minimized.path.len() <= raw.path.len());
}

#[test]
fn random_probes_are_reproducible_whatever_the_thread_count() {
    let broken = TwoPhaseCommit::with_variant(5, TwoPhaseVariant::CommitEarly);
    let runs: Vec<Vec<TwoPhaseAction>> = [1, 2, 2]
        .into_iter()
        .map(|threads| {
            let report = Checker::new(&broken)
                .threads(threads)
                .minimize(false)
                .random_probes(42, 500);
            report
                .violation
                .expect("found")
                .path
                .actions()
                .copied()
                .collect()
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[1], runs[2]);
    let correct = Checker::new(&TwoPhaseCommit::new(5)).random_probes(42, 200);
    assert_eq!(correct.verdict(), Verdict::Inconclusive);
    assert!(correct.violation.is_none());
}

#[test]
fn limits_stop_the_search_and_make_it_inconclusive() {
    let model = TwoPhaseCommit::new(7);
    let report = Checker::new(&model).threads(2).max_states(20_000).dfs();
    assert_eq!(report.stopped_by, Some(Limit::States));
    assert!(report.unique_states >= 20_000 && report.unique_states < 40_000);
    assert_eq!(report.verdict(), Verdict::Inconclusive);

    let report = Checker::new(&model).max_depth(3).bfs();
    assert!(report.depth_bounded);
    assert_eq!(report.max_depth, 3);
    assert_eq!(report.verdict(), Verdict::Inconclusive);
    let report = Checker::new(&model).max_depth(3).dfs();
    assert!(report.depth_bounded);
    assert_eq!(report.max_depth, 3);

    let report = Checker::new(&TwoPhaseCommit::new(9))
        .time_limit(Duration::from_millis(50))
        .dfs();
    assert_eq!(report.stopped_by, Some(Limit::Time));
    assert!(report.elapsed < Duration::from_secs(5));
}

#[test]
fn progress_is_reported_on_long_runs() {
    let calls = std::sync::atomic::AtomicU64::new(0);
    let report = Checker::new(&TwoPhaseCommit::new(9))
        .time_limit(Duration::from_millis(700))
        .on_progress(|progress| {
            assert!(progress.unique_states > 0);
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .dfs();
    assert_eq!(report.stopped_by, Some(Limit::Time));
    assert!(calls.into_inner() >= 1);
}
