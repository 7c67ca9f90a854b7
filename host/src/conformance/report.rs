//! A conformance report as text for people, JSON for programs and JUnit XML for CI.

use super::{Outcome, Report};
use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
use serde_json::{Value, json};

/// One line per rule (`ok`, `FAIL`, `skip`), what went wrong indented under it, and a tally.
pub fn text(report: &Report) -> String {
    let mut out = format!(
        "checking {} `{}` against {}\n",
        report.kind, report.plugin, report.against
    );
    let width = report
        .results
        .iter()
        .map(|r| r.rule.len())
        .max()
        .unwrap_or(0);
    for r in &report.results {
        let mark = match r.outcome {
            Outcome::Passed => "ok  ",
            Outcome::Failed(_) => "FAIL",
            Outcome::Skipped(_) => "skip",
        };
        out.push_str(&format!("  {mark}  {:width$}  {}\n", r.rule, r.demands));
        if let Some(detail) = r.outcome.detail() {
            for line in detail.lines() {
                out.push_str(&format!("        {:width$}  {line}\n", ""));
            }
        }
    }
    out.push_str(&format!(
        "{} passed, {} failed, {} skipped\n",
        report.count("passed"),
        report.count("failed"),
        report.count("skipped")
    ));
    out
}

pub fn json(report: &Report) -> Value {
    let rules: Vec<Value> = report
        .results
        .iter()
        .map(|r| {
            json!({
                "rule": r.rule,
                "demands": r.demands,
                "outcome": r.outcome.label(),
                "detail": r.outcome.detail(),
                "elapsed_ms": r.elapsed.as_millis() as u64,
            })
        })
        .collect();
    json!({
        "plugin": report.plugin,
        "kind": report.kind,
        "against": report.against,
        "passed": report.count("passed"),
        "failed": report.count("failed"),
        "skipped": report.count("skipped"),
        "rules": rules,
    })
}

/// One test case per rule, in a suite named after the plugin.
pub fn junit(report: &Report) -> String {
    let suite_name = format!("engine plugins check {}", report.plugin);
    let mut suite = TestSuite::new(suite_name.clone());
    for r in &report.results {
        let mut status = match &r.outcome {
            Outcome::Passed => TestCaseStatus::success(),
            Outcome::Failed(_) => TestCaseStatus::non_success(NonSuccessKind::Failure),
            Outcome::Skipped(_) => TestCaseStatus::skipped(),
        };
        if let Some(detail) = r.outcome.detail() {
            status.set_message(detail.to_string());
        }
        let mut case = TestCase::new(r.rule, status);
        case.set_classname(format!("{}.{}", report.kind, report.plugin))
            .set_time(r.elapsed);
        suite.add_test_case(case);
    }
    let mut out = quick_junit::Report::new(suite_name);
    out.add_test_suite(suite);
    out.to_string().expect("a JUnit report serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::RuleResult;
    use std::time::Duration;

    fn report() -> Report {
        let rule = |rule, outcome| RuleResult {
            rule,
            demands: "something",
            outcome,
            elapsed: Duration::from_millis(5),
        };
        Report {
            plugin: "p".into(),
            kind: "provider",
            against: "services a".into(),
            results: vec![
                rule("one", Outcome::Passed),
                rule("two", Outcome::Failed("it did X\nand Y".into())),
                rule("three", Outcome::Skipped("no feature".into())),
            ],
        }
    }

    #[test]
    fn text_marks_each_rule_and_indents_what_failed() {
        let text = text(&report());
        assert!(text.contains("  ok    one    something\n"), "{text}");
        assert!(text.contains("  FAIL  two    something\n"), "{text}");
        assert!(text.contains("               it did X\n"), "{text}");
        assert!(text.contains("               and Y\n"), "{text}");
        assert!(text.ends_with("1 passed, 1 failed, 1 skipped\n"), "{text}");
    }

    #[test]
    fn json_and_junit_carry_every_rule() {
        let value = json(&report());
        assert_eq!(value["failed"], 1);
        assert_eq!(value["rules"][1]["detail"], "it did X\nand Y");
        let xml = junit(&report());
        assert!(xml.contains(r#"tests="3""#), "{xml}");
        assert!(xml.contains(r#"failures="1""#), "{xml}");
        assert!(xml.contains(r#"skipped="1""#), "{xml}");
    }
}
