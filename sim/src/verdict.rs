//! Judging a run: the history check, invariants and liveness, as one list of findings.

use crate::simulation::RunReport;
use std::fmt;
use synod_check::kv::{Budget, Verdict, check_kv_history};

/// Something wrong with a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The history is not linearizable.
    NotLinearizable(String),
    /// The checker ran out of budget: not a pass.
    CheckerUnknown(String),
    /// The recorded history is malformed (a simulator bug).
    BadHistory(String),
    /// An invariant hook failed.
    Invariant(String),
    /// The healed cluster did not finish the workload.
    Liveness(String),
}

impl fmt::Display for Finding {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::NotLinearizable(text) => write!(formatter, "not linearizable: {text}"),
            Finding::CheckerUnknown(text) => write!(formatter, "checker gave up: {text}"),
            Finding::BadHistory(text) => write!(formatter, "malformed history: {text}"),
            Finding::Invariant(text) => write!(formatter, "invariant broken {text}"),
            Finding::Liveness(text) => write!(formatter, "liveness: {text}"),
        }
    }
}

/// The verdict on a key-value run: empty when everything held.
pub fn judge_kv_run(report: &RunReport, budget: Budget) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Some(violation) = &report.invariant_violation {
        findings.push(Finding::Invariant(violation.clone()));
    }
    if let Some(violation) = &report.liveness_violation {
        findings.push(Finding::Liveness(violation.clone()));
    }
    match check_kv_history(&report.history, budget) {
        Ok(Verdict::Linearizable) => {}
        Ok(Verdict::NotLinearizable(violation)) => {
            findings.push(Finding::NotLinearizable(violation.to_string()));
        }
        Ok(Verdict::Unknown { key, reason }) => {
            findings.push(Finding::CheckerUnknown(format!("key {key}: {reason}")));
        }
        Err(error) => findings.push(Finding::BadHistory(error.to_string())),
    }
    findings
}
