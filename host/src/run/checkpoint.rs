//! What the executor stores after every step of a service's rollout, so that a run stopped at
//! any point (kill -9 included) resumes without doing anything twice: deploys are named by the
//! run, traffic changes are idempotent, and a strategy given the same state and observation
//! decides the same thing again.

use crate::port::{CheckOutcome, Observation, TrafficShare, Verdict};
use serde::{Deserialize, Serialize};

/// The checkpoint format written by this release. Version 1 had no `version` field and kept
/// the phase as a set of flags; it still loads ([`Checkpoint::parse`]).
pub const CHECKPOINT_VERSION: u32 = 3;

/// Where a service's rollout is: its phase, and what the rollout has learnt so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    #[serde(flatten)]
    pub phase: Phase,
    /// The revision this run deployed, once deployed.
    pub candidate: Option<String>,
    /// The revision serving traffic before the run.
    pub stable: Option<String>,
    /// The split before the run, restored on abort.
    pub previous_split: Vec<(String, u8)>,
    /// The strategy's state after its last step.
    pub strategy_state: Option<String>,
    /// The decisions the strategy has taken in this rollout, across resumes (the contract
    /// bounds them).
    pub strategy_steps: u32,
    /// The candidate's share of traffic.
    pub traffic: u8,
    /// The service did not exist before this run, so aborting removes it.
    pub new_service: bool,
    /// When the current traffic split was applied (ms since the epoch): health checks that
    /// read metrics look at the window since then.
    pub window_start_ms: Option<u64>,
    /// What went wrong after the candidate was promoted without undoing it (an old revision
    /// that would not retire): reported as warnings with the deployed outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The release this run deploys ([`crate::config::Service::release_digest`]), written into
    /// the history rows of its attempt. Absent in checkpoints from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

impl Default for Checkpoint {
    fn default() -> Checkpoint {
        Checkpoint {
            version: CHECKPOINT_VERSION,
            phase: Phase::Planning,
            candidate: None,
            stable: None,
            previous_split: Vec::new(),
            strategy_state: None,
            strategy_steps: 0,
            traffic: 0,
            new_service: false,
            window_start_ms: None,
            warnings: Vec::new(),
            release: None,
        }
    }
}

/// The phases of a rollout, in order; every change of phase is stored. A run stopped in a
/// phase resumes at its start, so each phase's work is safe to repeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// Nothing changed yet: read and plan the service, retire what earlier runs left.
    Planning,
    /// A change was planned and the first `done` pre hooks passed: run the next one. (Since
    /// version 3: a version 2 checkpoint ran them all in `planning`.)
    PreHooks { done: usize },
    /// The pre hooks passed: deploy the candidate. A run stopped between the provider's
    /// `deploy` and storing its result calls it again with the same deployment id (providers
    /// make it idempotent) instead of planning again, which would see its own new revision
    /// as the one serving.
    Deploying,
    /// The candidate is deployed: tell the strategy `pending` and carry out its decision.
    Driving { pending: Observed },
    /// Waiting, as the strategy asked, until this time (ms since the epoch), so a resumed run
    /// waits only for what is left of it.
    WaitingUntil { wait_until_ms: u64 },
    /// Paused until a person runs `engine promote` or `engine abort`; says what to approve.
    AwaitingApproval { what: String },
    /// Rolling back, with this reason (a failed step, or `engine abort`).
    Aborting { reason: String },
    /// Done in this run: a resumed run reports it without doing it again.
    Finished { outcome: Finished },
}

impl Checkpoint {
    /// A stored checkpoint, of this version or an earlier one.
    pub fn parse(text: &str) -> Result<Checkpoint, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        match value.get("version").and_then(|v| v.as_u64()) {
            None => serde_json::from_value::<CheckpointV1>(value)
                .map(Checkpoint::from)
                .map_err(|e| e.to_string()),
            // Version 3 only added a phase: a version 2 checkpoint reads as it is.
            Some(2 | 3) => {
                let mut checkpoint: Checkpoint =
                    serde_json::from_value(value).map_err(|e| e.to_string())?;
                checkpoint.version = CHECKPOINT_VERSION;
                Ok(checkpoint)
            }
            Some(v) => Err(format!(
                "it is of version {v}, written by a newer engine (this one reads up to {CHECKPOINT_VERSION}); finish the run with the engine that started it"
            )),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("checkpoints serialise")
    }

    /// The share of traffic of the revision a report names: the candidate's once there is one,
    /// else the share the stable revision had before the run (a service that failed before
    /// deploying still serves it).
    pub fn reported_traffic(&self) -> u8 {
        if self.candidate.is_some() {
            return self.traffic;
        }
        let stable = self.stable.as_deref();
        self.previous_split
            .iter()
            .find(|(revision, _)| Some(revision.as_str()) == stable)
            .map_or(self.traffic, |(_, percent)| *percent)
    }

    /// The finished outcome, once finished.
    pub fn finished(&self) -> Option<&Finished> {
        match &self.phase {
            Phase::Finished { outcome } => Some(outcome),
            _ => None,
        }
    }
}

/// The checkpoint of releases before phases: flags instead of a phase.
#[derive(Deserialize)]
struct CheckpointV1 {
    candidate: Option<String>,
    stable: Option<String>,
    previous_split: Vec<(String, u8)>,
    strategy_state: Option<String>,
    #[serde(default)]
    strategy_steps: u32,
    pending: Option<Observed>,
    traffic: u8,
    outcome: Option<Finished>,
    #[serde(default)]
    wait_until_ms: Option<u64>,
    #[serde(default)]
    awaiting_approval: Option<String>,
    #[serde(default)]
    abort_requested: Option<String>,
    #[serde(default)]
    new_service: bool,
    #[serde(default)]
    window_start_ms: Option<u64>,
    #[serde(default)]
    deploy_started: bool,
    #[serde(default)]
    warnings: Vec<String>,
}

impl From<CheckpointV1> for Checkpoint {
    fn from(v1: CheckpointV1) -> Checkpoint {
        let phase = if let Some(outcome) = v1.outcome {
            Phase::Finished { outcome }
        } else if v1.candidate.is_none() && v1.deploy_started {
            Phase::Deploying
        } else if v1.candidate.is_none() {
            Phase::Planning
        } else if let Some(reason) = v1.abort_requested {
            Phase::Aborting {
                reason: format!("aborted by `engine abort`: {reason}"),
            }
        } else if let Some(what) = v1.awaiting_approval {
            Phase::AwaitingApproval { what }
        } else if let Some(wait_until_ms) = v1.wait_until_ms {
            Phase::WaitingUntil { wait_until_ms }
        } else {
            Phase::Driving {
                pending: v1.pending.unwrap_or(Observed::Start),
            }
        };
        Checkpoint {
            version: CHECKPOINT_VERSION,
            phase,
            candidate: v1.candidate,
            stable: v1.stable,
            previous_split: v1.previous_split,
            strategy_state: v1.strategy_state,
            strategy_steps: v1.strategy_steps,
            traffic: v1.traffic,
            new_service: v1.new_service,
            window_start_ms: v1.window_start_ms,
            warnings: v1.warnings,
            release: None,
        }
    }
}

/// A finished service, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "reason", rename_all = "kebab-case")]
pub enum Finished {
    Deployed,
    Unchanged,
    RolledBack(String),
    Failed(String),
}

/// A strategy observation in a storable form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Observed {
    Start,
    TrafficSet { split: Vec<(String, u8)> },
    Waited,
    Analysed { checks: Vec<CheckSeen> },
    Approved,
    Rejected { reason: String },
    Promoted,
    Retired { revision: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckSeen {
    pub name: String,
    /// `healthy`, `unhealthy` or `inconclusive`.
    pub verdict: String,
    pub message: String,
}

pub fn split_pairs(split: &[TrafficShare]) -> Vec<(String, u8)> {
    split
        .iter()
        .map(|t| (t.revision.clone(), t.percent))
        .collect()
}

pub fn split_targets(pairs: &[(String, u8)]) -> Vec<TrafficShare> {
    pairs
        .iter()
        .map(|(revision, percent)| TrafficShare::new(revision, *percent))
        .collect()
}

impl Observed {
    /// The observation handed to the strategy.
    pub fn to_observation(&self) -> Observation {
        match self {
            Observed::Start => Observation::Start,
            Observed::TrafficSet { split } => Observation::TrafficSet(split_targets(split)),
            Observed::Waited => Observation::Waited,
            Observed::Analysed { checks } => Observation::Analysed(
                checks
                    .iter()
                    .map(|c| CheckOutcome {
                        name: c.name.clone(),
                        verdict: Verdict::parse(&c.verdict),
                        message: c.message.clone(),
                    })
                    .collect(),
            ),
            Observed::Approved => Observation::Approved,
            Observed::Rejected { reason } => Observation::Rejected(reason.clone()),
            Observed::Promoted => Observation::Promoted,
            Observed::Retired { revision } => Observation::Retired(revision.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Checkpoint {
        Checkpoint {
            version: CHECKPOINT_VERSION,
            phase: Phase::Driving {
                pending: Observed::Analysed {
                    checks: vec![CheckSeen {
                        name: "http".into(),
                        verdict: "unhealthy".into(),
                        message: "500s".into(),
                    }],
                },
            },
            candidate: Some("api-r3".into()),
            stable: Some("api-r2".into()),
            previous_split: vec![("api-r2".into(), 100)],
            strategy_state: Some("\"analysing\"".into()),
            strategy_steps: 7,
            traffic: 10,
            new_service: false,
            window_start_ms: Some(1_700_000_000_000),
            warnings: vec!["retiring api-r1 failed".into()],
            release: Some("sha256:0123".into()),
        }
    }

    #[test]
    fn every_phase_round_trips_through_json() {
        for phase in [
            Phase::Planning,
            Phase::PreHooks { done: 1 },
            Phase::Deploying,
            example().phase,
            Phase::WaitingUntil {
                wait_until_ms: 1_700_000_000_000,
            },
            Phase::AwaitingApproval {
                what: "promote api-r3".into(),
            },
            Phase::Aborting {
                reason: "checks failed".into(),
            },
            Phase::Finished {
                outcome: Finished::RolledBack("checks failed".into()),
            },
        ] {
            let c = Checkpoint { phase, ..example() };
            assert_eq!(Checkpoint::parse(&c.to_json()).unwrap(), c);
        }
        let Phase::Driving { pending } = example().phase else {
            unreachable!()
        };
        assert!(
            matches!(pending.to_observation(), Observation::Analysed(v) if v[0].verdict == Verdict::Unhealthy)
        );
    }

    /// Version 1 checkpoints, as the release before phases wrote them, load into the phase
    /// their flags meant.
    #[test]
    fn version_1_checkpoints_still_load() {
        let v1 = |fields: &str| {
            format!(
                r#"{{"candidate":"api-r3","stable":"api-r2","previous_split":[["api-r2",100]],"strategy_state":"s","strategy_steps":4,"traffic":10,"new_service":false,"window_start_ms":5{fields}}}"#
            )
        };
        let phase = |fields: &str| Checkpoint::parse(&v1(fields)).unwrap().phase;
        assert_eq!(
            phase(r#","pending":{"kind":"waited"},"outcome":null"#),
            Phase::Driving {
                pending: Observed::Waited
            }
        );
        assert_eq!(
            phase(r#","pending":null,"outcome":null,"wait_until_ms":9"#),
            Phase::WaitingUntil { wait_until_ms: 9 }
        );
        assert_eq!(
            phase(r#","pending":null,"outcome":null,"awaiting_approval":"promote""#),
            Phase::AwaitingApproval {
                what: "promote".into()
            }
        );
        assert_eq!(
            phase(r#","pending":null,"outcome":null,"abort_requested":"bad""#),
            Phase::Aborting {
                reason: "aborted by `engine abort`: bad".into()
            }
        );
        assert_eq!(
            phase(r#","pending":null,"outcome":{"kind":"deployed"}"#),
            Phase::Finished {
                outcome: Finished::Deployed
            }
        );
        let loaded = Checkpoint::parse(&v1(r#","pending":null,"outcome":null"#)).unwrap();
        assert_eq!(
            (
                loaded.strategy_steps,
                loaded.traffic,
                loaded.window_start_ms
            ),
            (4, 10, Some(5))
        );
        let not_deployed = r#"{"candidate":null,"stable":null,"previous_split":[],"strategy_state":null,"pending":null,"traffic":0,"outcome":null"#;
        assert_eq!(
            Checkpoint::parse(&format!("{not_deployed}}}")).unwrap(),
            Checkpoint::default()
        );
        assert_eq!(
            Checkpoint::parse(&format!(r#"{not_deployed},"deploy_started":true}}"#))
                .unwrap()
                .phase,
            Phase::Deploying
        );
    }

    #[test]
    fn a_checkpoint_from_a_newer_engine_is_refused_with_what_to_do() {
        let newer = example()
            .to_json()
            .replace(r#""version":3"#, r#""version":4"#);
        let error = Checkpoint::parse(&newer).unwrap_err();
        assert!(error.contains("written by a newer engine"), "{error}");
    }

    #[test]
    fn a_version_2_checkpoint_loads_and_is_saved_as_the_current_version() {
        let v2 = example()
            .to_json()
            .replace(r#""version":3"#, r#""version":2"#);
        let loaded = Checkpoint::parse(&v2).unwrap();
        assert_eq!(loaded.version, CHECKPOINT_VERSION);
        assert_eq!(loaded.phase, example().phase);
    }
}
