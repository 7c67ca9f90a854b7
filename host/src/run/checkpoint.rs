//! What the executor stores after every step of a service's rollout, so that a run stopped at
//! any point (kill -9 included) resumes without doing anything twice: deploys are named by the
//! run, traffic changes are idempotent, and a strategy given the same state and observation
//! decides the same thing again.

use crate::port::{CheckOutcome, Observation, TrafficShare, Verdict};
use serde::{Deserialize, Serialize};

/// Where a service's rollout is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
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
    #[serde(default)]
    pub strategy_steps: u32,
    /// The observation the strategy has not been told yet.
    pub pending: Option<Observed>,
    /// The candidate's share of traffic.
    pub traffic: u8,
    /// Set when the service is finished in this run.
    pub outcome: Option<Finished>,
    /// The end of a wait the strategy asked for (ms since the epoch), so a resumed run waits
    /// only for what is left of it.
    #[serde(default)]
    pub wait_until_ms: Option<u64>,
    /// What a person is asked to approve (`engine promote` / `engine abort`), while the rollout
    /// waits for it.
    #[serde(default)]
    pub awaiting_approval: Option<String>,
    /// Set by `engine abort` on a rollout that was not waiting for approval: the next run rolls
    /// it back instead of going on.
    #[serde(default)]
    pub abort_requested: Option<String>,
    /// The service's pre hooks ran and succeeded in this run.
    #[serde(default)]
    pub pre_hooks_done: bool,
    /// The service did not exist before this run, so aborting removes it.
    #[serde(default)]
    pub new_service: bool,
    /// When the current traffic split was applied (ms since the epoch): health checks that
    /// read metrics look at the window since then.
    #[serde(default)]
    pub window_start_ms: Option<u64>,
    /// Set (and stored) just before the provider's `deploy`: a run that stopped between that
    /// call and storing its result calls `deploy` again with the same deployment id (providers
    /// make it idempotent) instead of reading and planning again, which would see its own new
    /// revision as the one serving.
    #[serde(default)]
    pub deploy_started: bool,
    /// What went wrong after the candidate was promoted without undoing it (an old revision
    /// that would not retire): reported as warnings with the deployed outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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

    #[test]
    fn checkpoints_round_trip_through_json() {
        let c = Checkpoint {
            candidate: Some("api-r3".into()),
            stable: Some("api-r2".into()),
            previous_split: vec![("api-r2".into(), 100)],
            strategy_state: Some("\"analysing\"".into()),
            strategy_steps: 7,
            pending: Some(Observed::Analysed {
                checks: vec![CheckSeen {
                    name: "http".into(),
                    verdict: "unhealthy".into(),
                    message: "500s".into(),
                }],
            }),
            traffic: 100,
            outcome: Some(Finished::RolledBack("checks failed".into())),
            wait_until_ms: Some(1_700_000_000_000),
            awaiting_approval: Some("promote api-r3 to 100%".into()),
            abort_requested: None,
            pre_hooks_done: true,
            new_service: false,
            window_start_ms: Some(1_700_000_000_000),
            deploy_started: true,
            warnings: vec!["retiring api-r1 failed".into()],
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Checkpoint>(&text).unwrap(), c);
        let old = r#"{"candidate":null,"stable":null,"previous_split":[],"strategy_state":null,"pending":null,"traffic":0,"outcome":null}"#;
        assert_eq!(
            serde_json::from_str::<Checkpoint>(old).unwrap(),
            Checkpoint::default(),
            "checkpoints written before the newer fields still load"
        );
        assert!(
            matches!(c.pending.unwrap().to_observation(), Observation::Analysed(v) if v[0].verdict == Verdict::Unhealthy)
        );
    }
}
