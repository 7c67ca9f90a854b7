//! `engine plugins check`: a plugin's conformance to the contract its kind promises, checked by
//! running the real component under the real runtime through a scripted scenario.
//!
//! Each rule of the contract is one [`RuleResult`]: passed, failed with what went wrong, or
//! skipped with why (a rule that needs a feature the plugin does not declare, or a step an
//! earlier failure left undone). The scenarios live one per plugin kind:
//! [`provider`] (against whatever platform the pipeline points at), [`strategy`] (the
//! strategy's state machine driven as the executor drives it) and [`health`] (against servers
//! the kit starts on loopback).

pub mod health;
pub mod provider;
pub mod report;
pub mod strategy;

use std::future::Future;
use std::time::{Duration, Instant};

/// How one rule came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// What the plugin did wrong.
    Failed(String),
    /// Why the rule was not checked.
    Skipped(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped(_) => "skipped",
        }
    }

    pub fn detail(&self) -> Option<&str> {
        match self {
            Outcome::Passed => None,
            Outcome::Failed(d) | Outcome::Skipped(d) => Some(d),
        }
    }
}

/// One rule of the contract, checked.
#[derive(Debug, Clone)]
pub struct RuleResult {
    /// A short, stable name (`deploy-repeat`), for CI reports and for reading the docs.
    pub rule: &'static str,
    /// What the rule demands, in a sentence.
    pub demands: &'static str,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

/// Everything a conformance run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The plugin's name in the pipeline.
    pub plugin: String,
    /// Its kind (`provider`, `strategy`, `health`).
    pub kind: &'static str,
    /// What the scenario ran against (`services api-check-a, api-check-b`).
    pub against: String,
    pub results: Vec<RuleResult>,
}

impl Report {
    pub fn count(&self, label: &str) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome.label() == label)
            .count()
    }

    pub fn passed(&self) -> bool {
        self.count("failed") == 0
    }
}

/// A rule's failure: what the plugin did, against what the rule demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl<E: std::fmt::Display> From<E> for Violation {
    fn from(error: E) -> Violation {
        Violation(error.to_string())
    }
}

/// Fails a rule with a message built like `format!`.
macro_rules! violated {
    ($($arg:tt)*) => {
        return Err($crate::conformance::Violation(format!($($arg)*)))
    };
}
pub(crate) use violated;

/// Collects rule results in the order they ran.
#[derive(Debug, Default)]
pub struct Rules {
    results: Vec<RuleResult>,
}

impl Rules {
    /// Runs one rule and records how it came out; returns what it produced, if it passed.
    pub async fn check<T>(
        &mut self,
        rule: &'static str,
        demands: &'static str,
        body: impl Future<Output = Result<T, Violation>>,
    ) -> Option<T> {
        let started = Instant::now();
        let (outcome, value) = match body.await {
            Ok(value) => (Outcome::Passed, Some(value)),
            Err(Violation(why)) => (Outcome::Failed(why), None),
        };
        self.results.push(RuleResult {
            rule,
            demands,
            outcome,
            elapsed: started.elapsed(),
        });
        value
    }

    /// Records a rule that was not checked, and why.
    pub fn skip(&mut self, rule: &'static str, demands: &'static str, why: impl Into<String>) {
        self.results.push(RuleResult {
            rule,
            demands,
            outcome: Outcome::Skipped(why.into()),
            elapsed: Duration::ZERO,
        });
    }

    pub fn into_results(self) -> Vec<RuleResult> {
        self.results
    }
}
