//! What the host provides, outside WebAssembly: test a plugin's logic natively with `cargo test`.
//!
//! When a plugin is compiled for the host machine instead of `wasm32-wasip2`, the SDK's wrappers
//! fall back to these: log lines are kept for [`take_logs`], secrets come from [`grant_secret`],
//! the clock can be pinned with [`set_now_ms`], and [`crate::http`] uses a real HTTP client, so
//! tests can run the plugin against a server on loopback. Every piece of state is per thread,
//! which keeps parallel tests apart. For strategies, [`drive_strategy`] runs a whole rollout the
//! way the host would and checks purity and resumption from every checkpoint on the way.

use crate::log::Level;

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::LogLine;
    use crate::{Error, ErrorExt};
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    thread_local! {
        pub static LOGS: RefCell<Vec<LogLine>> = const { RefCell::new(Vec::new()) };
        pub static SECRETS: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
        pub static NOW_MS: Cell<Option<u64>> = const { Cell::new(None) };
    }

    pub fn placeholder(name: &str) -> String {
        format!("engine-secret-{name}-native")
    }

    pub fn open_secret(name: &str) -> Result<String, Error> {
        SECRETS.with(|s| {
            if s.borrow().contains_key(name) {
                Ok(placeholder(name))
            } else {
                Err(Error::unauthorized(format!(
                    "secret '{name}' is not granted (call engine_sdk::testing::grant_secret in the test)"
                )))
            }
        })
    }
}

/// Makes `name` available to [`crate::secrets::Secret::open`] in this thread.
#[cfg(not(target_arch = "wasm32"))]
pub fn grant_secret(name: &str, value: &str) {
    native::SECRETS.with(|s| s.borrow_mut().insert(name.into(), value.into()));
}

/// Replaces secret placeholders in a header value, as the host does for granted hosts.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn substitute_secrets(value: &str) -> String {
    native::SECRETS.with(|s| {
        s.borrow()
            .iter()
            .fold(value.to_string(), |v, (name, secret)| {
                v.replace(&native::placeholder(name), secret)
            })
    })
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn open_secret(name: &str) -> Result<String, crate::Error> {
    native::open_secret(name)
}

/// Returns and clears the lines logged in this thread.
#[cfg(not(target_arch = "wasm32"))]
pub fn take_logs() -> Vec<LogLine> {
    native::LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn record_log(level: Level, message: &str, fields: Vec<(String, String)>) {
    native::LOGS.with(|l| {
        l.borrow_mut().push(LogLine {
            level,
            message: message.to_string(),
            fields,
        })
    });
}

/// Pins [`crate::clock::now_ms`] for this thread.
#[cfg(not(target_arch = "wasm32"))]
pub fn set_now_ms(now: u64) {
    native::NOW_MS.with(|n| n.set(Some(now)));
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn native_now_ms() -> u64 {
    native::NOW_MS.with(|n| n.get()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// How [`drive_strategy`] answers a strategy's decisions, as the host would.
#[derive(Debug, Clone, PartialEq)]
pub struct HostAnswers {
    /// The verdict of each analysis in turn; the last one repeats.
    pub verdicts: Vec<crate::Verdict>,
    /// `None` approves every approval request; `Some(reason)` rejects them.
    pub rejection: Option<String>,
    /// The name and message of the one check every analysis reports.
    pub check: (String, String),
}

impl HostAnswers {
    /// Analyses answered with `verdicts` (the last repeats), approvals approved, the check
    /// named `ready` with message `GET /healthz`.
    pub fn verdicts(verdicts: &[crate::Verdict]) -> HostAnswers {
        assert!(!verdicts.is_empty(), "give at least one verdict");
        HostAnswers {
            verdicts: verdicts.to_vec(),
            rejection: None,
            check: ("ready".into(), "GET /healthz".into()),
        }
    }

    /// Rejects every approval request with `reason`.
    pub fn rejecting(mut self, reason: &str) -> HostAnswers {
        self.rejection = Some(reason.into());
        self
    }

    /// Names the check the analyses report, and its message.
    pub fn check(mut self, name: &str, message: &str) -> HostAnswers {
        self.check = (name.into(), message.into());
        self
    }

    /// The observation the host would report after `decision`; `None` after `done` or `abort`.
    /// `analyses` counts the analyses answered so far.
    fn observe(
        &self,
        decision: &crate::strategy::Decision,
        analyses: &mut usize,
    ) -> Option<crate::strategy::Observation> {
        use crate::strategy::{CheckOutcome, Decision, Observation};
        Some(match decision {
            Decision::SetTraffic(split) => Observation::TrafficSet(split.clone()),
            Decision::Wait(_) => Observation::Waited,
            Decision::Analyse(_) => {
                let verdict = self.verdicts[(*analyses).min(self.verdicts.len() - 1)];
                *analyses += 1;
                Observation::Analysed(vec![CheckOutcome {
                    name: self.check.0.clone(),
                    verdict,
                    message: self.check.1.clone(),
                    measurements: Vec::new(),
                }])
            }
            Decision::AwaitApproval(_) => match &self.rejection {
                None => Observation::Approved,
                Some(reason) => Observation::Rejected(reason.clone()),
            },
            Decision::Promote => Observation::Promoted,
            Decision::Retire(revision) => Observation::Retired(revision.clone()),
            Decision::Done | Decision::Abort(_) => return None,
        })
    }
}

/// A strategy's `step` with the rollout fixed: (state, observation) → the next step.
type StepFn<'a> = dyn Fn(
        Option<&str>,
        &crate::strategy::Observation,
    ) -> Result<crate::strategy::StepResult, crate::Error>
    + 'a;

/// Where a rollout was before one step: what the host would have checkpointed.
struct Checkpoint {
    state: Option<String>,
    observation: crate::strategy::Observation,
    analyses: usize,
}

fn drive_from(
    step: &StepFn<'_>,
    answers: &HostAnswers,
    from: Checkpoint,
) -> (Vec<Checkpoint>, Vec<crate::strategy::StepResult>) {
    use crate::ErrorExt;
    let Checkpoint {
        mut state,
        mut observation,
        mut analyses,
    } = from;
    let (mut checkpoints, mut steps) = (Vec::new(), Vec::new());
    loop {
        let run = |s: Option<&str>, o| {
            step(s, o).unwrap_or_else(|e| {
                panic!(
                    "step({s:?}, {o:?}) failed: {} (after {} steps)",
                    e.describe(),
                    steps.len()
                )
            })
        };
        let out = run(state.as_deref(), &observation);
        assert_eq!(
            out,
            run(state.as_deref(), &observation),
            "a step must be a pure function of its inputs"
        );
        checkpoints.push(Checkpoint {
            state: state.clone(),
            observation: observation.clone(),
            analyses,
        });
        let next = answers.observe(&out.decision, &mut analyses);
        state = Some(out.state.clone());
        steps.push(out);
        match next {
            Some(o) => observation = o,
            None => return (checkpoints, steps),
        }
        assert!(steps.len() < 10_000, "the rollout never ends");
    }
}

/// Runs a strategy's state machine from the start to `done` or `abort`, answering every
/// decision as the host would (see [`HostAnswers`]), and returns each step. On the way it
/// checks the contract's two promises: a step is a pure function of its inputs (each is taken
/// twice), and resuming from every checkpoint the host could hold gives the rest of the same
/// rollout.
///
/// ```ignore
/// let steps = drive_strategy(|state, observation| step(&rollout, state, observation),
///                            &HostAnswers::verdicts(&[Verdict::Healthy]));
/// ```
pub fn drive_strategy(
    step: impl Fn(
        Option<&str>,
        &crate::strategy::Observation,
    ) -> Result<crate::strategy::StepResult, crate::Error>,
    answers: &HostAnswers,
) -> Vec<crate::strategy::StepResult> {
    let start = Checkpoint {
        state: None,
        observation: crate::strategy::Observation::Start,
        analyses: 0,
    };
    let (checkpoints, steps) = drive_from(&step, answers, start);
    for (i, checkpoint) in checkpoints.into_iter().enumerate() {
        let (_, rest) = drive_from(&step, answers, checkpoint);
        assert_eq!(
            rest,
            steps[i..],
            "resuming from checkpoint {i} changed the rest of the rollout"
        );
    }
    steps
}
