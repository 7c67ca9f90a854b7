//! The strategy scenario: the strategy's state machine driven through whole rollouts the way
//! the executor drives it (every decision checked against [`Contract`]), answered healthy,
//! unhealthy, approved and rejected, with the two promises of a step checked on the way: it is
//! a pure function of its inputs, and a rollout resumed from any checkpoint goes on the same.

use super::{Rules, Violation, violated};
use crate::port::{CheckOutcome, Decision, Feature, Observation, Rollout, Step, Strategy, Verdict};
use crate::run::contract::{Contract, MIN_WAIT};

/// How the host answers the strategy's decisions in one rollout.
#[derive(Debug, Clone)]
struct Answers {
    /// The verdict of each analysis in turn; the last one repeats.
    verdicts: Vec<Verdict>,
    /// Whether approvals are rejected.
    reject: bool,
}

impl Answers {
    fn healthy() -> Answers {
        Answers {
            verdicts: vec![Verdict::Healthy],
            reject: false,
        }
    }

    fn observe(&self, decision: &Decision, analyses: &mut usize) -> Option<Observation> {
        Some(match decision {
            Decision::SetTraffic(split) => Observation::TrafficSet(split.clone()),
            Decision::Wait(_) => Observation::Waited,
            Decision::Analyse(_) => {
                let verdict = self.verdicts[(*analyses).min(self.verdicts.len() - 1)];
                *analyses += 1;
                Observation::Analysed(vec![CheckOutcome {
                    name: "ready".into(),
                    verdict,
                    message: format!("GET /healthz: {}", verdict.name()),
                }])
            }
            Decision::AwaitApproval(_) if self.reject => {
                Observation::Rejected("rejected by the conformance check".into())
            }
            Decision::AwaitApproval(_) => Observation::Approved,
            Decision::Promote => Observation::Promoted,
            Decision::Retire(revision) => Observation::Retired(revision.clone()),
            Decision::Done | Decision::Abort(_) => return None,
        })
    }
}

/// Where a rollout was before one step: what the executor would have checkpointed.
#[derive(Debug, Clone)]
struct Checkpoint {
    state: Option<String>,
    observation: Observation,
    analyses: usize,
    now_ms: u64,
    contract: Contract,
}

/// A rollout driven to its end.
#[derive(Debug, Default)]
struct Drive {
    checkpoints: Vec<Checkpoint>,
    steps: Vec<Step>,
    /// The first step that answered differently when asked twice.
    impure: Option<String>,
}

/// The clock a driven rollout starts at (any fixed time will do: steps must not read another).
const START_MS: u64 = 1_800_000_000_000;

/// The strategy being checked, and the rollout it is given.
pub struct Subject<'a> {
    pub strategy: &'a dyn Strategy,
    pub rollout: Rollout,
}

impl Subject<'_> {
    fn rollout(&self, stable: bool, features: Vec<Feature>) -> Rollout {
        Rollout {
            stable: stable.then(|| self.rollout.stable.clone()).flatten(),
            features,
            ..self.rollout.clone()
        }
    }

    async fn drive(
        &self,
        rollout: &Rollout,
        answers: &Answers,
        from: Checkpoint,
    ) -> Result<Drive, Violation> {
        let mut at = from;
        let mut drive = Drive::default();
        loop {
            let step = self.step(rollout, &at).await?;
            let again = self.step(rollout, &at).await?;
            if step != again && drive.impure.is_none() {
                drive.impure = Some(format!(
                    "step {} answered {:?} and then {:?} to the same inputs",
                    drive.steps.len() + 1,
                    step.decision,
                    again.decision
                ));
            }
            drive.checkpoints.push(at.clone());
            if let Err(rule) = at.contract.check(&step.decision) {
                violated!(
                    "step {} ({:?}) breaks the contract: {rule}",
                    drive.steps.len() + 1,
                    step.decision
                );
            }
            let next = answers.observe(&step.decision, &mut at.analyses);
            if let Decision::Wait(ms) = step.decision {
                at.now_ms += ms.max(MIN_WAIT.as_millis() as u64);
            }
            at.state = Some(step.state.clone());
            drive.steps.push(step);
            match next {
                Some(observation) => at.observation = observation,
                None => return Ok(drive),
            }
        }
    }

    async fn step(&self, rollout: &Rollout, at: &Checkpoint) -> Result<Step, Violation> {
        self.strategy
            .step(rollout, at.state.as_deref(), &at.observation, at.now_ms)
            .await
            .map_err(|e| Violation(format!("step failed: {e}")))
    }

    fn start(&self, rollout: &Rollout) -> Checkpoint {
        Checkpoint {
            state: None,
            observation: Observation::Start,
            analyses: 0,
            now_ms: START_MS,
            contract: Contract::new(&rollout.candidate, rollout.stable.as_deref(), 0),
        }
    }

    /// Resumes the rollout from every checkpoint of `drive`: the rest must be the same.
    async fn resumes(
        &self,
        rollout: &Rollout,
        answers: &Answers,
        drive: &Drive,
    ) -> Result<(), Violation> {
        for (i, checkpoint) in drive.checkpoints.iter().enumerate() {
            let rest = self.drive(rollout, answers, checkpoint.clone()).await?;
            if rest.steps != drive.steps[i..] {
                let decisions = |s: &[Step]| {
                    s.iter()
                        .map(|s| format!("{:?}", s.decision))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                violated!(
                    "resumed from checkpoint {i}, the rollout went on with [{}] instead of [{}]",
                    decisions(&rest.steps),
                    decisions(&drive.steps[i..])
                );
            }
        }
        Ok(())
    }
}

fn decided(drive: &Drive, wanted: impl Fn(&Decision) -> bool) -> bool {
    drive.steps.iter().any(|s| wanted(&s.decision))
}

fn last(drive: &Drive) -> Option<&Decision> {
    drive.steps.last().map(|s| &s.decision)
}

/// One rollout of the scenario: what the host answers, and what must come of it.
struct Case {
    rule: &'static str,
    demands: &'static str,
    stable: bool,
    answers: Answers,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            rule: "healthy-rollout",
            demands: "with every analysis healthy and approvals given, it promotes the candidate and ends with done",
            stable: true,
            answers: Answers::healthy(),
        },
        Case {
            rule: "first-release",
            demands: "without a stable revision (a first deploy), it promotes the candidate and ends with done",
            stable: false,
            answers: Answers::healthy(),
        },
        Case {
            rule: "unhealthy-aborts",
            demands: "when the first analysis is unhealthy, it aborts without promoting",
            stable: true,
            answers: Answers {
                verdicts: vec![Verdict::Unhealthy],
                reject: false,
            },
        },
        Case {
            rule: "rejection-aborts",
            demands: "when an approval is rejected, it aborts without promoting",
            stable: true,
            answers: Answers {
                verdicts: vec![Verdict::Healthy],
                reject: true,
            },
        },
    ]
}

const ALL_FEATURES: [Feature; 4] = [
    Feature::TrafficSplit,
    Feature::RevisionUrls,
    Feature::InstanceBatches,
    Feature::RetireRevisions,
];

/// Runs the scenario and returns every rule's result.
pub async fn check(subject: &Subject<'_>) -> Rules {
    let mut rules = Rules::default();
    let mut drives = Vec::new();
    let mut healthy: Option<(bool, bool)> = None;
    for case in cases() {
        let rollout = subject.rollout(case.stable, ALL_FEATURES.to_vec());
        let start = subject.start(&rollout);
        let skip = match (case.rule, healthy) {
            ("unhealthy-aborts", Some((false, _))) => Some("it never asks for an analysis"),
            ("rejection-aborts", Some((_, false))) => Some("it never asks for approval"),
            _ => None,
        };
        if let Some(why) = skip {
            rules.skip(case.rule, case.demands, why);
            continue;
        }
        let drive = rules
            .check(case.rule, case.demands, async {
                let drive = subject.drive(&rollout, &case.answers, start).await?;
                judge(case.rule, &drive)?;
                Ok(drive)
            })
            .await;
        if let Some(drive) = drive {
            if case.rule == "healthy-rollout" {
                healthy = Some((
                    decided(&drive, |d| matches!(d, Decision::Analyse(_))),
                    decided(&drive, |d| matches!(d, Decision::AwaitApproval(_))),
                ));
            }
            drives.push((rollout, case.answers, drive));
        }
    }
    rules
        .check(
            "pure-steps",
            "a step is a pure function of the rollout, its state, the observation and the time",
            async {
                match drives.iter().find_map(|(_, _, d)| d.impure.clone()) {
                    Some(impure) => Err(Violation(impure)),
                    None => Ok(()),
                }
            },
        )
        .await;
    rules
        .check(
            "resume",
            "a rollout resumed from any checkpoint goes on exactly as it would have",
            async {
                for (rollout, answers, drive) in &drives {
                    subject.resumes(rollout, answers, drive).await?;
                }
                Ok(())
            },
        )
        .await;
    rules
}

/// Whether a rollout that ran to its end ended as its case demands.
fn judge(rule: &str, drive: &Drive) -> Result<(), Violation> {
    let promoted = decided(drive, |d| matches!(d, Decision::Promote));
    match (rule, last(drive)) {
        ("healthy-rollout" | "first-release", Some(Decision::Done)) => Ok(()),
        ("healthy-rollout" | "first-release", Some(Decision::Abort(why))) => {
            violated!("it aborted a healthy rollout: {why}")
        }
        (_, Some(Decision::Abort(_))) if !promoted => Ok(()),
        (_, Some(Decision::Abort(_))) => {
            violated!("it promoted the candidate before it aborted")
        }
        (_, Some(Decision::Done)) => {
            violated!("it finished with done although the candidate failed")
        }
        (_, other) => violated!("the rollout ended with {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::{AnalysisRequest, PortError, TrafficShare};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A canary written as a state machine over the number of steps taken; `impure` makes
    /// every call answer differently.
    struct Canary {
        calls: AtomicU32,
        impure: bool,
        promote_on_unhealthy: bool,
    }

    #[async_trait::async_trait]
    impl Strategy for Canary {
        async fn step(
            &self,
            rollout: &Rollout,
            state: Option<&str>,
            observation: &Observation,
            _now_ms: u64,
        ) -> Result<Step, PortError> {
            let n: u32 = state.map_or(0, |s| s.parse().unwrap());
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let unhealthy = matches!(observation, Observation::Analysed(c) if c[0].verdict == Verdict::Unhealthy);
            let c = rollout.candidate.clone();
            let decision = match n {
                _ if unhealthy && !self.promote_on_unhealthy => Decision::Abort("unhealthy".into()),
                0 => Decision::SetTraffic(vec![TrafficShare::new(
                    &c,
                    10 + (self.impure as u8) * (call % 2) as u8,
                )]),
                1 => Decision::Analyse(AnalysisRequest {
                    revision: c,
                    checks: vec![],
                }),
                2 => Decision::Promote,
                _ => Decision::Done,
            };
            Ok(Step {
                state: (n + 1).to_string(),
                decision,
                phase: String::new(),
            })
        }
    }

    fn subject(strategy: &Canary) -> Subject<'_> {
        Subject {
            strategy,
            rollout: Rollout {
                service: "api".into(),
                stable: Some("api-r1".into()),
                candidate: "api-r2".into(),
                features: vec![],
                config: "{}".into(),
            },
        }
    }

    async fn outcomes(strategy: Canary) -> Vec<(String, String)> {
        let rules = check(&subject(&strategy)).await.into_results();
        rules
            .into_iter()
            .map(|r| (r.rule.to_string(), r.outcome.label().to_string()))
            .collect()
    }

    fn canary() -> Canary {
        Canary {
            calls: AtomicU32::new(0),
            impure: false,
            promote_on_unhealthy: false,
        }
    }

    #[tokio::test]
    async fn a_good_canary_passes_and_skips_what_it_never_asks() {
        let found = outcomes(canary()).await;
        let expect =
            |r: &str, o: &str| assert!(found.contains(&(r.into(), o.into())), "{r}: {found:?}");
        expect("healthy-rollout", "passed");
        expect("first-release", "passed");
        expect("unhealthy-aborts", "passed");
        expect("rejection-aborts", "skipped");
        expect("pure-steps", "passed");
        expect("resume", "passed");
    }

    #[tokio::test]
    async fn an_impure_or_reckless_canary_fails_the_rules_it_breaks() {
        let found = outcomes(Canary {
            impure: true,
            ..canary()
        })
        .await;
        assert!(
            found.contains(&("pure-steps".into(), "failed".into())),
            "{found:?}"
        );
        let found = outcomes(Canary {
            promote_on_unhealthy: true,
            ..canary()
        })
        .await;
        assert!(
            found.contains(&("unhealthy-aborts".into(), "failed".into())),
            "{found:?}"
        );
    }
}
