//! The strategy contract, enforced: a strategy is the least-privileged plugin kind, so the
//! executor checks every decision it makes against the rollout before carrying it out.
//!
//! - only the candidate and the stable revision may take traffic;
//! - a revision that takes traffic is never retired (the serving one least of all);
//! - `done` comes only after `promote`;
//! - a rollout takes at most [`MAX_STEPS`] decisions, counted across resumes (the count is in
//!   the checkpoint), and every wait lasts at least [`MIN_WAIT`], so a strategy cannot spin the
//!   executor (each step writes a checkpoint).
//!
//! A decision that breaks the contract aborts the rollout, with the rule it broke as reason.

use crate::port::Decision;
use std::collections::BTreeMap;
use std::time::Duration;

/// The most decisions one rollout may take, however often it is resumed.
pub const MAX_STEPS: u32 = 1000;

/// The shortest wait a strategy gets: shorter ones are lengthened to this.
pub const MIN_WAIT: Duration = Duration::from_millis(100);

/// What the executor knows of a rollout while it checks a strategy's decisions.
#[derive(Debug, Clone)]
pub struct Contract {
    candidate: String,
    stable: Option<String>,
    /// Each revision's current share of traffic.
    split: BTreeMap<String, u8>,
    promoted: bool,
    steps: u32,
}

impl Contract {
    /// A rollout whose candidate has `candidate_percent` of the traffic now (a resumed run
    /// starts where the checkpoint left it).
    pub fn new(candidate: &str, stable: Option<&str>, candidate_percent: u8) -> Contract {
        let mut split = BTreeMap::new();
        if candidate_percent > 0 {
            split.insert(candidate.to_string(), candidate_percent);
        }
        if let Some(stable) = stable
            && candidate_percent < 100
        {
            split.insert(stable.to_string(), 100 - candidate_percent);
        }
        Contract {
            candidate: candidate.to_string(),
            stable: stable.map(str::to_string),
            split,
            promoted: candidate_percent == 100,
            steps: 0,
        }
    }

    /// The same rollout resumed after `steps` decisions an earlier run took.
    pub fn resumed_after(mut self, steps: u32) -> Contract {
        self.steps = steps;
        self
    }

    /// The decisions taken so far.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// Checks a decision before it is carried out, and records its effect.
    pub fn check(&mut self, decision: &Decision) -> Result<(), String> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(format!(
                "it took more than {MAX_STEPS} decisions without finishing"
            ));
        }
        match decision {
            Decision::SetTraffic(targets) => {
                if let Some(other) = targets.iter().find(|t| !self.takes_part(&t.revision)) {
                    return Err(format!(
                        "it sent traffic to {}, which is neither the candidate ({}) nor the stable revision ({})",
                        other.revision,
                        self.candidate,
                        self.stable.as_deref().unwrap_or("none")
                    ));
                }
                self.split = targets
                    .iter()
                    .filter(|t| t.percent > 0)
                    .map(|t| (t.revision.clone(), t.percent))
                    .collect();
            }
            Decision::Promote => {
                self.split = BTreeMap::from([(self.candidate.clone(), 100)]);
                self.promoted = true;
            }
            Decision::Retire(revision) => {
                if let Some(percent) = self.split.get(revision) {
                    return Err(format!(
                        "it retired {revision}, which serves {percent}% of the traffic"
                    ));
                }
            }
            Decision::Done if !self.promoted => {
                return Err("it said done without promoting the candidate".into());
            }
            _ => {}
        }
        Ok(())
    }

    fn takes_part(&self, revision: &str) -> bool {
        revision == self.candidate || self.stable.as_deref() == Some(revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::TrafficShare;

    fn split(pairs: &[(&str, u8)]) -> Decision {
        Decision::SetTraffic(
            pairs
                .iter()
                .map(|(r, p)| TrafficShare::new(r, *p))
                .collect(),
        )
    }

    #[test]
    fn a_canary_keeps_the_contract() {
        let mut c = Contract::new("r2", Some("r1"), 0);
        for d in [
            split(&[("r2", 10), ("r1", 90)]),
            Decision::Wait(1000),
            Decision::Promote,
            Decision::Retire("r1".into()),
            Decision::Done,
        ] {
            assert_eq!(c.check(&d), Ok(()));
        }
    }

    #[test]
    fn broken_rules_are_named() {
        let mut c = Contract::new("r2", Some("r1"), 0);
        assert!(
            c.check(&split(&[("r0", 100)]))
                .unwrap_err()
                .contains("sent traffic to r0")
        );
        let mut c = Contract::new("r2", Some("r1"), 0);
        assert_eq!(
            c.check(&Decision::Retire("r1".into())).unwrap_err(),
            "it retired r1, which serves 100% of the traffic"
        );
        let mut c = Contract::new("r2", Some("r1"), 0);
        assert_eq!(
            c.check(&Decision::Done).unwrap_err(),
            "it said done without promoting the candidate"
        );
        let mut c = Contract::new("r2", None, 0);
        let steps: Vec<_> = (0..=MAX_STEPS)
            .map(|_| c.check(&Decision::Wait(0)))
            .collect();
        assert!(steps[..MAX_STEPS as usize].iter().all(Result::is_ok));
        assert!(
            steps[MAX_STEPS as usize]
                .as_ref()
                .unwrap_err()
                .contains("more than 1000")
        );
    }

    #[test]
    fn a_resumed_promoted_rollout_may_finish() {
        let mut c = Contract::new("r2", Some("r1"), 100);
        assert_eq!(c.check(&Decision::Retire("r1".into())), Ok(()));
        assert_eq!(c.check(&Decision::Done), Ok(()));
    }

    #[test]
    fn the_step_budget_is_not_renewed_by_a_resume() {
        let mut c = Contract::new("r2", Some("r1"), 0).resumed_after(MAX_STEPS - 1);
        assert!(c.check(&Decision::Wait(1000)).is_ok());
        assert_eq!(c.steps(), MAX_STEPS);
        assert!(
            c.check(&Decision::Wait(1000))
                .unwrap_err()
                .contains("more than 1000")
        );
    }
}
