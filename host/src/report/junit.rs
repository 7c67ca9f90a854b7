//! The run as JUnit XML, so CI systems show a failed gate where people look for failed tests.

use super::CheckRecord;
use crate::run::{Outcome, RunReport};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

/// One test case per service (skipped ones as skipped, one awaiting approval as skipped with
/// the reason) and one per health check that ran.
pub fn junit(pipeline: &str, report: &RunReport, checks: &[CheckRecord]) -> String {
    let mut suite = TestSuite::new(format!("engine run {pipeline}"));
    for s in &report.services {
        let mut status = match &s.outcome {
            o if o.succeeded() => TestCaseStatus::success(),
            Outcome::Skipped(_) | Outcome::AwaitingApproval(_) | Outcome::Interrupted(_) => {
                TestCaseStatus::skipped()
            }
            _ => TestCaseStatus::non_success(NonSuccessKind::Failure),
        };
        if let Some(reason) = s.outcome.reason() {
            status.set_message(reason).set_type(s.outcome.label());
        }
        let mut case = TestCase::new(s.service.clone(), status);
        case.set_classname(pipeline).set_time(s.elapsed);
        suite.add_test_case(case);
    }
    for c in checks {
        let failed = c.verdict == "unhealthy";
        let mut status = if failed {
            TestCaseStatus::non_success(NonSuccessKind::Failure)
        } else {
            TestCaseStatus::success()
        };
        if failed {
            status.set_message(c.message.clone()).set_type("unhealthy");
        }
        let mut case = TestCase::new(format!("{} / {}", c.service, c.check), status);
        case.set_classname(format!("{pipeline}.health"));
        suite.add_test_case(case);
    }
    let mut out = Report::new(format!("engine {pipeline}"));
    out.add_test_suite(suite);
    out.to_string().expect("a JUnit report serialises")
}
