//! Counterexamples as files: what `synod mc` writes and `synod sim --replay` reads.
//!
//! A trace file is one JSON object: the model it came from (protocol, variant and the
//! model's parameters, enough to build the same model again), the broken property, and the
//! path as the index of its initial state and, per step, the index of the action among the
//! actions enabled in the state reached so far, with the action's debug rendering beside it.
//!
//! ```json
//! {"format":"synod-mc-trace","version":1,"protocol":"paxos-kv",
//!  "variant":"forget-accepted-values","config":{"rounds":3},"property":"replicas agree",
//!  "init":0,"steps":[{"index":4,"action":"NodeTimer { node: n0, timer: Election }"}]}
//! ```
//!
//! Indices rather than serialized messages keep protocol types free of any file format:
//! [`TraceFile::actions`] re-executes the path on the rebuilt model and takes each step's
//! action from the model itself, and the recorded rendering must match it, so a file from a
//! model that has changed since is refused with the step where the two part, never replayed
//! as something else.

use super::model::Model;
use super::path::Path;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The `format` field of every trace file.
pub const TRACE_FORMAT: &str = "synod-mc-trace";
/// The `version` field this build writes and reads.
pub const TRACE_VERSION: u32 = 1;

/// Why a trace file could not be read or replayed.
#[derive(Debug, thiserror::Error)]
pub enum TraceFileError {
    /// The file could not be read or written.
    #[error("trace file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not JSON of the expected shape.
    #[error("not a trace file (expected the JSON that `synod mc --trace-out` writes): {0}")]
    Json(#[from] serde_json::Error),
    /// The file is JSON, but not a trace of this format and version.
    #[error(
        "trace format {format:?} version {version} is not supported: this build reads {TRACE_FORMAT:?} version {TRACE_VERSION}; rerun `synod mc` to write a new one"
    )]
    Unsupported {
        /// The file's format field.
        format: String,
        /// The file's version field.
        version: u32,
    },
    /// The path does not re-execute on the model built from the file's parameters.
    #[error(
        "step {step} of the trace does not match the model ({detail}); the model has changed since the trace was written: rerun `synod mc` to write a new one"
    )]
    Mismatch {
        /// The step (1 is the first action; 0 the initial state).
        step: usize,
        /// What differs.
        detail: String,
    },
}

/// One recorded step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStep {
    /// The action's index among the actions enabled before it.
    pub index: u32,
    /// The action's debug rendering, checked on replay.
    pub action: String,
}

/// A counterexample path with what is needed to rebuild its model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceFile {
    /// Always [`TRACE_FORMAT`].
    pub format: String,
    /// Always [`TRACE_VERSION`] when written by this build.
    pub version: u32,
    /// The protocol's name, as `synod mc --model` spells it.
    pub protocol: String,
    /// The variant's name, as `--variant` spells it.
    pub variant: String,
    /// The model's other parameters by name (rounds, view limit, crashes...).
    pub config: BTreeMap<String, Value>,
    /// The name of the property the path breaks.
    pub property: String,
    /// The index of the initial state among the model's initial states.
    pub init: u32,
    /// The steps, in order.
    pub steps: Vec<TraceStep>,
}

impl TraceFile {
    /// Records `path` through `model`, labelled with the model's name and parameters.
    ///
    /// Panics if the path is not a path of `model` (it must come from a report on it).
    pub fn from_path<M: Model>(
        model: &M,
        path: &Path<M>,
        protocol: &str,
        variant: &str,
        config: BTreeMap<String, Value>,
        property: &str,
    ) -> TraceFile {
        let init = model
            .init_states()
            .iter()
            .position(|state| *state == path.init)
            .expect("a path starts in one of its model's initial states");
        let mut state = path.init.clone();
        let mut enabled = Vec::new();
        let mut steps = Vec::with_capacity(path.len());
        for step in &path.steps {
            enabled.clear();
            model.actions(&state, &mut enabled);
            let index = enabled
                .iter()
                .position(|action| *action == step.action)
                .expect("every action of a path is enabled where it is taken");
            steps.push(TraceStep {
                index: index as u32,
                action: format!("{:?}", step.action),
            });
            state = step.state.clone();
        }
        TraceFile {
            format: TRACE_FORMAT.to_string(),
            version: TRACE_VERSION,
            protocol: protocol.to_string(),
            variant: variant.to_string(),
            config,
            property: property.to_string(),
            init: init as u32,
            steps,
        }
    }

    /// The file as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a trace file always serializes")
    }

    /// Parses a file written by [`TraceFile::to_json`], checking format and version.
    pub fn from_json(text: &str) -> Result<TraceFile, TraceFileError> {
        let file: TraceFile = serde_json::from_str(text)?;
        if file.format != TRACE_FORMAT || file.version != TRACE_VERSION {
            return Err(TraceFileError::Unsupported {
                format: file.format,
                version: file.version,
            });
        }
        Ok(file)
    }

    /// Writes the file.
    pub fn write(&self, path: &std::path::Path) -> Result<(), TraceFileError> {
        std::fs::write(path, self.to_json() + "\n").map_err(|source| TraceFileError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads and parses a file.
    pub fn read(path: &std::path::Path) -> Result<TraceFile, TraceFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TraceFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        TraceFile::from_json(&text)
    }

    /// A named parameter as an unsigned number, if present and one.
    pub fn config_u64(&self, name: &str) -> Option<u64> {
        self.config.get(name).and_then(Value::as_u64)
    }

    /// Re-executes the path on `model` (built again from the file's parameters) and returns
    /// its actions, checking each against the recorded rendering.
    pub fn actions<M: Model>(&self, model: &M) -> Result<Vec<M::Action>, TraceFileError> {
        let mut state = model
            .init_states()
            .into_iter()
            .nth(self.init as usize)
            .ok_or_else(|| TraceFileError::Mismatch {
                step: 0,
                detail: format!("the model has no initial state {}", self.init),
            })?;
        let mut enabled = Vec::new();
        let mut actions = Vec::with_capacity(self.steps.len());
        for (number, step) in self.steps.iter().enumerate() {
            let mismatch = |detail: String| TraceFileError::Mismatch {
                step: number + 1,
                detail,
            };
            enabled.clear();
            model.actions(&state, &mut enabled);
            let action = enabled.get(step.index as usize).cloned().ok_or_else(|| {
                mismatch(format!(
                    "action {} of {} enabled ones",
                    step.index,
                    enabled.len()
                ))
            })?;
            let rendered = format!("{action:?}");
            if rendered != step.action {
                return Err(mismatch(format!(
                    "recorded {:?}, the model has {rendered:?}",
                    step.action
                )));
            }
            state = model
                .next_state(&state, action.clone())
                .ok_or_else(|| mismatch(format!("{rendered} changes nothing")))?;
            actions.push(action);
        }
        Ok(actions)
    }
}

/// The actions of `actions` that `model` can take in order from its first initial state,
/// skipping each one not enabled where it comes up (as the minimizer replays a shortened
/// path). Running one variant's counterexample against another variant this way never
/// delivers a message the other variant did not send.
pub fn enabled_actions<M: Model>(model: &M, actions: &[M::Action]) -> Vec<M::Action> {
    let Some(mut state) = model.init_states().into_iter().next() else {
        return Vec::new();
    };
    let mut enabled = Vec::new();
    let mut taken = Vec::with_capacity(actions.len());
    for action in actions {
        enabled.clear();
        model.actions(&state, &mut enabled);
        if !enabled.contains(action) {
            continue;
        }
        if let Some(next) = model.next_state(&state, action.clone()) {
            state = next;
            taken.push(action.clone());
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_checker::checker::Checker;
    use crate::model_checker::two_phase_commit::{TwoPhaseCommit, TwoPhaseVariant};

    fn counterexample() -> (TwoPhaseCommit, TraceFile) {
        let model = TwoPhaseCommit::with_variant(3, TwoPhaseVariant::CommitEarly);
        let report = Checker::new(&model).bfs();
        let counterexample = report.violation.expect("committing early is caught");
        let config = BTreeMap::from([("rms".to_string(), Value::from(3))]);
        let file = TraceFile::from_path(
            &model,
            &counterexample.path,
            "2pc",
            "commit-early",
            config,
            &counterexample.property,
        );
        (model, file)
    }

    #[test]
    fn a_written_trace_reads_back_and_replays_the_same_actions() {
        let (model, file) = counterexample();
        let read = TraceFile::from_json(&file.to_json()).expect("reads back");
        assert_eq!(read, file);
        assert_eq!(read.config_u64("rms"), Some(3));
        let actions = read.actions(&model).expect("replays");
        assert_eq!(actions.len(), 5);
        let rendered: Vec<String> = actions.iter().map(|action| format!("{action:?}")).collect();
        let recorded: Vec<String> = file.steps.iter().map(|step| step.action.clone()).collect();
        assert_eq!(rendered, recorded);
    }

    #[test]
    fn a_trace_of_another_model_is_refused_at_the_step_that_differs() {
        let (_, mut file) = counterexample();
        let other = TwoPhaseCommit::with_variant(4, TwoPhaseVariant::CommitEarly);
        file.steps[1].action = "RmPrepare(7)".to_string();
        match file.actions(&other) {
            Err(TraceFileError::Mismatch { step, .. }) => assert!(step <= 2, "step {step}"),
            other => panic!("expected a mismatch, got {other:?}"),
        }
        file.steps[0].index = 99;
        assert!(matches!(
            file.actions(&other),
            Err(TraceFileError::Mismatch { step: 1, .. })
        ));
    }

    #[test]
    fn the_correct_protocol_takes_only_the_steps_it_enables() {
        let (model, file) = counterexample();
        let actions = file.actions(&model).expect("replays");
        assert_eq!(enabled_actions(&model, &actions), actions);
        // The correct TM never commits early, so that step and the ones that depend on it
        // drop out.
        let correct = TwoPhaseCommit::new(3);
        let taken = enabled_actions(&correct, &actions);
        assert!(taken.len() < actions.len(), "{taken:?}");
        assert!(
            !taken
                .iter()
                .any(|action| format!("{action:?}") == "TmCommit")
        );
    }

    #[test]
    fn other_formats_and_versions_are_refused() {
        let (_, mut file) = counterexample();
        file.version = TRACE_VERSION + 1;
        assert!(matches!(
            TraceFile::from_json(&file.to_json()),
            Err(TraceFileError::Unsupported { .. })
        ));
        assert!(matches!(
            TraceFile::from_json("{\"history\": []}"),
            Err(TraceFileError::Json(_))
        ));
    }
}
