//! The executor driven through its port by the in-memory platform and strategy
//! ([`super::memory`]): each phase transition, abort path and resume point, with a real SQLite
//! state and no Wasm.

use super::memory::Cloud;
use super::*;
use crate::port::ErrorKind;
use std::sync::Mutex;

/// `db` (no checks) and `api` (one check) depending on it; `strategy_config` is api's.
fn pipeline_text(api_strategy: &str) -> String {
    format!(
        r#"
name = "shop"

[defaults]
provider = "local"
strategy = "canary"

[services.db]
image = "db:1"

[services.api]
image = "api:1"
depends_on = ["db"]
strategy_config = {{ {api_strategy} }}

[[services.api.checks]]
plugin = "http"
"#
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    cloud: Cloud,
    events: Mutex<Vec<Event>>,
    /// Cancelled when a phase starting with this text begins, as a signal would.
    interrupt_at_phase: Mutex<Option<(String, CancellationToken)>>,
}

impl Observer for Fixture {
    fn event(&self, event: &Event) {
        match event {
            Event::Check { check, .. } => self.cloud.note(format!("reported {check}")),
            Event::Phase { phase, .. } => {
                if let Some((at, token)) = &*self.interrupt_at_phase.lock().unwrap()
                    && phase.starts_with(at.as_str())
                {
                    token.cancel();
                }
            }
            _ => {}
        }
        self.events.lock().unwrap().push(event.clone());
    }
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).await.unwrap();
        Fixture {
            dir,
            store,
            cloud: Cloud::default(),
            events: Mutex::default(),
            interrupt_at_phase: Mutex::default(),
        }
    }

    /// The pipeline with api's strategy configured by `api_strategy` (TOML inline-table
    /// fields) and api's image `api_image`.
    fn pipeline(&self, api_strategy: &str, api_image: &str) -> Pipeline {
        self.parse(&pipeline_text(api_strategy).replace("api:1", api_image))
    }

    fn parse(&self, text: &str) -> Pipeline {
        crate::config::parse("pipeline.toml", text, self.dir.path(), None).unwrap()
    }

    async fn run_with(&self, pipeline: &Pipeline, options: &RunOptions) -> RunReport {
        execute_with(pipeline, &self.cloud, &self.store, self, options)
            .await
            .unwrap()
    }

    async fn run(&self, pipeline: &Pipeline) -> RunReport {
        self.run_with(pipeline, &RunOptions::default()).await
    }

    /// A service's history as `(revision, outcome)`, oldest first.
    async fn history(&self, service: &str) -> Vec<(String, String)> {
        let rows = self.store.history("shop", "default", service).await;
        let mut rows: Vec<_> = rows
            .unwrap()
            .into_iter()
            .map(|r| (r.revision, r.outcome))
            .collect();
        rows.reverse();
        rows
    }

    async fn open_run(&self) -> Option<i64> {
        self.store.open_run("shop", "default").await.unwrap()
    }
}

fn outcome<'r>(report: &'r RunReport, service: &str) -> &'r Outcome {
    &report
        .services
        .iter()
        .find(|s| s.service == service)
        .unwrap()
        .outcome
}

fn pairs(list: &[(&str, u8)]) -> Option<Vec<(String, u8)>> {
    Some(list.iter().map(|(r, p)| (r.to_string(), *p)).collect())
}

fn rows(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(r, o)| (r.to_string(), o.to_string()))
        .collect()
}

/// A fixture whose first run deployed everything (api-r1 and db-r1 serve).
async fn deployed_once() -> Fixture {
    let f = Fixture::new().await;
    let report = f.run(&f.pipeline("", "api:1")).await;
    assert!(report.succeeded(), "{report:?}");
    f
}

#[tokio::test]
async fn a_new_service_is_deployed_promoted_and_recorded() {
    let f = Fixture::new().await;
    let report = f.run(&f.pipeline("", "api:1")).await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(f.cloud.traffic("api"), pairs(&[("api-r1", 100)]));
    assert_eq!(
        f.history("api").await,
        rows(&[("api-r1", "deployed"), ("api-r1", "promoted")])
    );
    // db comes first: api depends on it.
    let calls = f.cloud.calls();
    let position = |call: &str| calls.iter().position(|c| c == call).unwrap();
    assert!(
        position("deploy db r1") < position("deploy api r1"),
        "{calls:?}"
    );
    assert_eq!(f.open_run().await, None, "a finished run is closed");
}

#[tokio::test]
async fn an_update_goes_through_the_canary_and_retires_the_old_revision() {
    let f = deployed_once().await;
    let report = f.run(&f.pipeline("", "api:2")).await;
    assert_eq!(outcome(&report, "api"), &Outcome::Deployed);
    assert_eq!(outcome(&report, "db"), &Outcome::Unchanged);
    assert_eq!(f.cloud.revisions("api"), ["api-r2"]);
    assert!(f.cloud.count("set-traffic api api-r2=10,api-r1=90") == 1);
    assert_eq!(
        f.history("api").await[2..],
        rows(&[
            ("api-r2", "deployed"),
            ("api-r2", "promoted"),
            ("api-r1", "retired")
        ])
    );
    let api = &report.services[1];
    assert_eq!(
        (api.checks_passed, api.checks_run, api.traffic),
        (1, 1, 100)
    );
}

#[tokio::test]
async fn an_unhealthy_candidate_is_rolled_back_and_its_dependents_skipped() {
    let f = Fixture::new().await;
    let text = pipeline_text("").replace(
        "[[services.api.checks]]",
        "[services.web]\nimage = \"web:1\"\ndepends_on = [\"api\"]\n\n[[services.api.checks]]",
    );
    let first = f.parse(&text);
    assert!(f.run(&first).await.succeeded());
    f.cloud.make_unhealthy("api-r2");
    let second = f.parse(&text.replace("api:1", "api:2").replace("web:1", "web:2"));
    let report = f.run(&second).await;
    assert!(
        matches!(outcome(&report, "api"), Outcome::RolledBack(r) if r.contains("api-r2 is unhealthy")),
        "{report:?}"
    );
    assert_eq!(
        outcome(&report, "web"),
        &Outcome::Skipped(SkipReason::Dependency {
            service: "api".into(),
            outcome: "rolled-back",
        })
    );
    assert_eq!(f.cloud.traffic("api"), pairs(&[("api-r1", 100)]));
    assert_eq!(
        f.cloud.revisions("api"),
        ["api-r1"],
        "the candidate is retired"
    );
    assert_eq!(f.history("api").await.last().unwrap().1, "aborted");
    assert_eq!(
        f.cloud.count("deploy web"),
        1,
        "web was not attempted again"
    );
    assert!(report.failed());
}

#[tokio::test]
async fn a_new_service_that_fails_its_gate_is_removed() {
    let f = Fixture::new().await;
    f.cloud.make_unhealthy("api-r1");
    let report = f.run(&f.pipeline("", "api:1")).await;
    assert!(
        matches!(outcome(&report, "api"), Outcome::RolledBack(r) if r.contains("did not exist before this run")),
        "{report:?}"
    );
    assert_eq!(f.cloud.traffic("api"), None);
    assert_eq!(f.cloud.traffic("db"), pairs(&[("db-r1", 100)]));
}

#[tokio::test]
async fn transient_and_rate_limited_errors_are_retried_and_others_are_not() {
    let f = Fixture::new().await;
    f.cloud.fail("deploy api", ErrorKind::Transient, 2);
    f.cloud.fail(
        "read db",
        ErrorKind::RateLimited {
            retry_after: Some(Duration::from_millis(10)),
        },
        1,
    );
    let report = f.run(&f.pipeline("", "api:1")).await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(f.cloud.count("deploy api"), 3);
    assert_eq!(f.cloud.count("read db"), 2);

    let f = Fixture::new().await;
    f.cloud.fail("deploy api", ErrorKind::Permanent, 1);
    let report = f.run(&f.pipeline("", "api:1")).await;
    assert!(
        matches!(outcome(&report, "api"), Outcome::Failed(r) if r.contains("as the test asked")),
        "{report:?}"
    );
    assert_eq!(f.cloud.count("deploy api"), 1);
}

#[tokio::test]
async fn traffic_that_cannot_be_moved_aborts_and_restores_the_previous_split() {
    let f = deployed_once().await;
    f.cloud
        .fail("set-traffic api api-r2=10", ErrorKind::Permanent, 1);
    let report = f.run(&f.pipeline("", "api:2")).await;
    assert!(
        matches!(outcome(&report, "api"), Outcome::RolledBack(_)),
        "{report:?}"
    );
    assert_eq!(f.cloud.traffic("api"), pairs(&[("api-r1", 100)]));
    assert_eq!(f.cloud.revisions("api"), ["api-r1"]);
}

#[tokio::test]
async fn a_rejected_release_is_refused_until_it_changes_or_is_retried() {
    let f = deployed_once().await;
    f.cloud.make_unhealthy("api-r2");
    let rejected = f.pipeline("", "api:2");
    let report = f.run(&rejected).await;
    assert!(matches!(outcome(&report, "api"), Outcome::RolledBack(_)));

    // The same release again: refused with the run and the reason, nothing deployed.
    let report = f.run(&rejected).await;
    let Outcome::Failed(why) = outcome(&report, "api") else {
        panic!("{report:?}")
    };
    assert!(
        why.starts_with("this release was rejected in run 2: ")
            && why.contains("api-r2 is unhealthy"),
        "{why}"
    );
    assert!(why.contains("--retry-rejected"), "{why}");
    assert_eq!(f.cloud.count("deploy api r3"), 0);
    assert_eq!(f.cloud.traffic("api"), pairs(&[("api-r1", 100)]));
    assert!(report.failed());

    // Asked to, it is tried again (and is healthy this time).
    let retry = RunOptions {
        retry_rejected: true,
        ..RunOptions::default()
    };
    let report = f.run_with(&rejected, &retry).await;
    assert_eq!(outcome(&report, "api"), &Outcome::Deployed, "{report:?}");
    assert_eq!(f.cloud.traffic("api"), pairs(&[("api-r4", 100)]));

    // A new release is never refused for an old one's rejection.
    f.cloud.make_unhealthy("api-r5");
    assert!(matches!(
        outcome(&f.run(&f.pipeline("", "api:3")).await, "api"),
        Outcome::RolledBack(_)
    ));
    let report = f.run(&f.pipeline("", "api:4")).await;
    assert_eq!(outcome(&report, "api"), &Outcome::Deployed, "{report:?}");
}

#[tokio::test]
async fn a_failed_deploy_is_in_the_history_and_rejects_its_release_when_permanent() {
    let f = deployed_once().await;
    f.cloud.fail("deploy api", ErrorKind::Permanent, 1);
    let release = f.pipeline("", "api:2");
    let report = f.run(&release).await;
    assert!(
        matches!(outcome(&report, "api"), Outcome::Failed(r) if r.contains("nothing was deployed")),
        "{report:?}"
    );
    let history = f.store.history("shop", "default", "api").await.unwrap();
    assert_eq!(
        (history[0].revision.as_str(), history[0].outcome.as_str()),
        ("r2", "deploy-failed")
    );
    assert!(
        history[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("as the test asked")
    );
    let api = release.service("api").unwrap();
    assert_eq!(history[0].release, Some(api.release_digest()));
    let report = f.run(&release).await;
    assert!(
        matches!(outcome(&report, "api"), Outcome::Failed(r) if r.starts_with("this release was rejected in run 2")),
        "{report:?}"
    );

    // A failure that may pass by itself is recorded, and the next run tries again.
    let f = deployed_once().await;
    f.cloud.fail("deploy api", ErrorKind::Transient, 5); // every attempt of one run
    let report = f.run(&release).await;
    assert!(matches!(outcome(&report, "api"), Outcome::Failed(_)));
    assert_eq!(
        f.history("api").await.last().unwrap(),
        &("r2".into(), "deploy-error".into())
    );
    let report = f.run(&release).await;
    assert_eq!(outcome(&report, "api"), &Outcome::Deployed, "{report:?}");
}

#[tokio::test]
async fn a_candidate_left_behind_by_a_failed_abort_is_retired_by_the_next_run() {
    let f = deployed_once().await;
    f.cloud.make_unhealthy("api-r2");
    // The abort cannot retire the candidate: it stays, without traffic.
    f.cloud.fail("retire api-r2", ErrorKind::Permanent, 1);
    let report = f.run(&f.pipeline("", "api:2")).await;
    assert!(
        matches!(outcome(&report, "api"), Outcome::Failed(r) if r.contains("retiring api-r2 failed")),
        "{report:?}"
    );
    assert_eq!(f.cloud.revisions("api"), ["api-r1", "api-r2"]);
    let report = f.run(&f.pipeline("", "api:3")).await;
    assert_eq!(outcome(&report, "api"), &Outcome::Deployed, "{report:?}");
    assert_eq!(f.cloud.revisions("api"), ["api-r3"]);
    assert!(
        f.history("api")
            .await
            .contains(&("api-r2".into(), "retired".into()))
    );
}

#[tokio::test]
async fn an_old_revision_that_will_not_retire_after_promotion_is_a_warning() {
    let f = deployed_once().await;
    f.cloud.fail("retire api-r1", ErrorKind::Permanent, 1);
    let report = f.run(&f.pipeline("", "api:2")).await;
    let api = &report.services[1];
    assert_eq!(api.outcome, Outcome::Deployed, "{report:?}");
    assert!(
        api.warnings[0].contains("retiring api-r1 failed"),
        "{api:?}"
    );
    assert_eq!(f.history("api").await.last().unwrap().1, "retire-failed");
}

#[tokio::test]
async fn a_rollout_awaits_approval_and_a_later_run_promotes_or_aborts_it() {
    for (approval, expected) in [
        (admin::Approval::Approve, "api-r2"),
        (admin::Approval::Reject("not today".into()), "api-r1"),
    ] {
        let f = deployed_once().await;
        let pipeline = f.pipeline("approval = true", "api:2");
        let report = f.run(&pipeline).await;
        assert!(
            matches!(outcome(&report, "api"), Outcome::AwaitingApproval(w) if w == "promote api-r2"),
            "{report:?}"
        );
        assert!(!report.failed());
        assert!(f.open_run().await.is_some(), "the run stays open");
        admin::decide(&f.store, &pipeline, "api", &approval)
            .await
            .unwrap();
        let report = f.run(&pipeline).await;
        assert!(report.resumed);
        assert_eq!(
            f.cloud.count("deploy api r2"),
            1,
            "resumed, not deployed again"
        );
        assert_eq!(f.cloud.traffic("api"), pairs(&[(expected, 100)]));
        assert_eq!(f.open_run().await, None);
    }
}

#[tokio::test]
async fn fail_fast_stops_new_work_but_not_for_a_service_waiting_on_approval() {
    let f = Fixture::new().await;
    // api waits for approval, web on api, worker on web, and cache on nothing: a skip because
    // a dependency (however indirect) awaits approval is no failure, so --fail-fast does not
    // stop cache.
    let text = pipeline_text("approval = true").replace(
        "[[services.api.checks]]",
        "[services.web]\nimage = \"web:1\"\ndepends_on = [\"api\"]\n\n[services.worker]\nimage = \"worker:1\"\ndepends_on = [\"web\", \"db\"]\n\n[services.cache]\nimage = \"cache:1\"\n\n[[services.api.checks]]",
    );
    let pipeline = f.parse(&text);
    let options = RunOptions {
        fail_fast: true,
        concurrency: 1,
        ..RunOptions::default()
    };
    let report = f.run_with(&pipeline, &options).await;
    assert!(matches!(
        outcome(&report, "api"),
        Outcome::AwaitingApproval(_)
    ));
    for waiting in ["web", "worker"] {
        assert_eq!(
            outcome(&report, waiting),
            &Outcome::Skipped(SkipReason::DependencyAwaitingApproval {
                service: "api".into()
            }),
            "{waiting}"
        );
    }
    assert_eq!(outcome(&report, "cache"), &Outcome::Deployed);
    assert!(!report.failed(), "{report:?}");

    // A failure, though, stops what has not started.
    let f = Fixture::new().await;
    f.cloud.fail("deploy db", ErrorKind::Permanent, 1);
    let text = pipeline_text("").replace(
        "[[services.api.checks]]",
        "[services.cache]\nimage = \"cache:1\"\n\n[[services.api.checks]]",
    );
    let pipeline = f.parse(&text);
    let report = f.run_with(&pipeline, &options).await;
    assert!(matches!(outcome(&report, "db"), Outcome::Failed(_)));
    assert_eq!(
        outcome(&report, "cache"),
        &Outcome::Skipped(SkipReason::FailFast)
    );
}

#[tokio::test]
async fn a_strategy_that_breaks_its_contract_is_aborted() {
    let f = deployed_once().await;
    let report = f.run(&f.pipeline("breaks_contract = true", "api:2")).await;
    assert!(
        matches!(outcome(&report, "api"), Outcome::RolledBack(r) if r.contains("broke its contract")),
        "{report:?}"
    );
    assert_eq!(f.cloud.count("set-traffic api elsewhere"), 0);
    assert_eq!(f.cloud.traffic("api"), pairs(&[("api-r1", 100)]));
}

#[tokio::test]
async fn an_interrupted_run_stops_at_a_checkpoint_and_the_next_resumes_it() {
    // Interrupted at each resume point: during the deploy, during the wait, at the promotion.
    for at in [
        "deploy api",
        "get-traffic api",
        "set-traffic api api-r2=100",
    ] {
        let f = deployed_once().await;
        let pipeline = f.pipeline("wait_ms = 200", "api:2");
        let interrupt = CancellationToken::new();
        f.cloud.interrupt_on(at, interrupt.clone());
        let options = RunOptions {
            interrupt,
            ..RunOptions::default()
        };
        let report = f.run_with(&pipeline, &options).await;
        assert!(
            matches!(outcome(&report, "api"), Outcome::Interrupted(r) if r.contains("stopped at a checkpoint")),
            "{at}: {report:?}"
        );
        assert!(!report.failed());
        assert!(f.open_run().await.is_some(), "{at}: the run stays open");
        let report = f.run(&pipeline).await;
        assert!(report.resumed && report.succeeded(), "{at}: {report:?}");
        assert_eq!(f.cloud.count("deploy api r2"), 1, "{at}: deployed once");
        assert_eq!(f.cloud.revisions("api"), ["api-r2"], "{at}");
        let history = f.history("api").await;
        let promoted = history.iter().filter(|(_, o)| o == "promoted").count();
        assert_eq!(
            promoted, 2,
            "{at}: api-r1 and api-r2, once each: {history:?}"
        );
    }
}

#[tokio::test]
async fn a_run_interrupted_before_it_starts_starts_nothing() {
    let f = Fixture::new().await;
    let options = RunOptions::default();
    options.interrupt.cancel();
    let report = f.run_with(&f.pipeline("", "api:1"), &options).await;
    assert_eq!(report.interrupted().len(), 2, "{report:?}");
    assert!(f.cloud.calls().is_empty());
}

#[tokio::test]
async fn a_rollback_decided_before_an_interruption_is_carried_out() {
    let f = deployed_once().await;
    let interrupt = CancellationToken::new();
    // The signal arrives during the call whose failure aborts the rollout.
    f.cloud
        .interrupt_on("set-traffic api api-r2=10", interrupt.clone());
    f.cloud
        .fail("set-traffic api api-r2=10", ErrorKind::Permanent, 1);
    let options = RunOptions {
        interrupt,
        ..RunOptions::default()
    };
    let report = f.run_with(&f.pipeline("", "api:2"), &options).await;
    assert!(
        matches!(outcome(&report, "api"), Outcome::RolledBack(_)),
        "{report:?}"
    );
    assert_eq!(f.cloud.traffic("api"), pairs(&[("api-r1", 100)]));
    assert_eq!(f.cloud.revisions("api"), ["api-r1"]);
}

#[tokio::test]
async fn each_check_is_reported_as_it_ends_not_when_the_analysis_does() {
    let f = Fixture::new().await;
    let text = pipeline_text("").replace(
        "[[services.api.checks]]\nplugin = \"http\"\n",
        "[[services.api.checks]]\nplugin = \"http\"\n\n[[services.api.checks]]\nname = \"second\"\nplugin = \"http\"\n",
    );
    assert!(f.run(&f.parse(&text)).await.succeeded());
    let calls = f.cloud.calls();
    let analysis: Vec<&str> = calls
        .iter()
        .map(String::as_str)
        .filter(|c| c.starts_with("check api") || c.starts_with("reported "))
        .collect();
    assert_eq!(
        analysis,
        [
            "check api-r1 http",
            "reported http",
            "check api-r1 second",
            "reported second"
        ]
    );
}

// `engine plan`: the same executor, over a simulation of the platform.

impl Fixture {
    /// The plans of `pipeline`, by service.
    async fn plan(&self, pipeline: &Pipeline) -> BTreeMap<String, plan::ServicePlan> {
        self.plan_with(pipeline, false).await
    }

    /// The plans of `pipeline`, reading this fixture's state, by service.
    async fn plan_with(
        &self,
        pipeline: &Pipeline,
        retry_rejected: bool,
    ) -> BTreeMap<String, plan::ServicePlan> {
        let inputs = plan::PlanInputs {
            state: Some(&self.store),
            retry_rejected,
        };
        plan::simulate(pipeline, &self.cloud, inputs)
            .await
            .into_iter()
            .map(|p| (p.service.clone(), p))
            .collect()
    }

    /// Calls that change the cloud.
    fn changes(&self) -> Vec<String> {
        let reads = [
            "read ",
            "plan ",
            "get-traffic ",
            "endpoints ",
            "check ",
            "reported ",
        ];
        let calls = self.cloud.calls();
        calls
            .into_iter()
            .filter(|c| !reads.iter().any(|r| c.starts_with(r)))
            .collect()
    }
}

#[tokio::test]
async fn a_plan_follows_the_strategy_in_dependency_order_and_changes_nothing() {
    let f = Fixture::new().await;
    let plans = f.plan(&f.pipeline("", "api:1")).await;
    let names: Vec<&str> = plans.keys().map(String::as_str).collect();
    assert_eq!(names, ["api", "db"]);
    let db = &plans["db"];
    assert_eq!(db.action.as_deref(), Some("create"));
    assert_eq!(
        db.timeline,
        [
            "analyse db-planned (no checks configured)",
            "promote db-planned",
            "done"
        ]
    );
    assert_eq!(
        plans["api"].timeline,
        ["analyse api-planned: http", "promote api-planned", "done"]
    );
    assert!(f.changes().is_empty(), "{:?}", f.cloud.calls());
    // Nothing was recorded either: the run was simulated in a store of its own.
    assert_eq!(f.open_run().await, None);
    assert!(f.history("api").await.is_empty());
}

#[tokio::test]
async fn a_plan_says_a_release_was_rejected_unless_it_would_be_retried() {
    let f = deployed_once().await;
    f.cloud.make_unhealthy("api-r2");
    let rejected = f.pipeline("", "api:2");
    f.run(&rejected).await;
    let plans = f.plan(&rejected).await;
    let error = plans["api"].error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("this release was rejected in run 2: "),
        "{error}"
    );
    assert!(plans["api"].timeline.is_empty());
    assert_eq!(plans["db"].error, None);

    let plans = f.plan_with(&rejected, true).await;
    assert_eq!(plans["api"].error, None, "{:?}", plans["api"]);
    assert_eq!(
        plans["api"].timeline.last().map(String::as_str),
        Some("done")
    );
    // The plan wrote nothing into the real state.
    assert_eq!(f.history("api").await.last().unwrap().1, "aborted");
}

#[tokio::test]
async fn a_plan_of_an_update_jumps_waits_gives_approvals_and_lists_hooks() {
    let f = deployed_once().await;
    let before = f.cloud.calls().len();
    let text = pipeline_text("approval = true, wait_ms = 600000")
        .replace("api:1", "api:2")
        .replace(
            "depends_on = [\"db\"]",
            "depends_on = [\"db\"]\nhooks = { pre = [\"touch pre-ran\"], post = [\"touch post-ran\"] }",
        );
    let plans = f.plan(&f.parse(&text)).await;
    assert_eq!(plans["db"].action.as_deref(), Some("no-change"));
    assert!(plans["db"].timeline.is_empty());
    let api = &plans["api"];
    assert_eq!(api.action.as_deref(), Some("update"));
    assert_eq!(api.error, None);
    assert_eq!(
        api.timeline,
        [
            "run pre hook (not run in a plan): touch pre-ran",
            "set traffic: api-planned 10%, api-r1 90%",
            "wait 10m",
            "analyse api-planned: http",
            "await approval: promote api-planned",
            "promote api-planned",
            "retire api-r1",
            "run post hook (not run in a plan): touch post-ran",
            "done",
        ]
    );
    assert!(!f.dir.path().join("pre-ran").exists());
    assert!(!f.dir.path().join("post-ran").exists());
    let calls = f.cloud.calls();
    assert!(
        calls[before..]
            .iter()
            .all(|c| c.starts_with("read ") || c.starts_with("plan ")),
        "{calls:?}"
    );
    assert_eq!(f.cloud.traffic("api"), pairs(&[("api-r1", 100)]));
}

#[tokio::test]
async fn a_plan_reports_what_a_run_would_refuse() {
    let f = deployed_once().await;
    let plans = f.plan(&f.pipeline("breaks_contract = true", "api:2")).await;
    let error = plans["api"].error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("a run would roll back: strategy `canary` broke its contract"),
        "{error}"
    );

    let plans = f.plan(&f.pipeline("never_finishes = true", "api:2")).await;
    let api = &plans["api"];
    let error = api.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("the strategy did not finish within 1000 simulated steps"),
        "{error}"
    );
    assert_eq!(api.timeline.len(), 1000);

    // A service that cannot be read cannot be planned, nor can what depends on it.
    f.cloud.fail("read db", ErrorKind::Permanent, 1);
    let plans = f.plan(&f.pipeline("", "api:2")).await;
    assert_eq!(plans["db"].action, None);
    assert!(
        plans["db"]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("read db failed"),
        "{plans:?}"
    );
    assert_eq!(
        plans["api"].error.as_deref(),
        Some("not planned, because dependency `db` failed")
    );
    assert!(
        f.changes().iter().all(|c| !c.contains("r2")),
        "{:?}",
        f.cloud.calls()
    );
}

#[tokio::test]
async fn a_resumed_run_goes_on_with_the_pre_hook_after_the_ones_that_passed() {
    let f = Fixture::new().await;
    let text = pipeline_text("").replace(
        "depends_on = [\"db\"]",
        "depends_on = [\"db\"]\nhooks.pre = [\"echo one >> ran; sleep 0.3\", \"echo two >> ran\"]",
    );
    let pipeline = f.parse(&text);
    let options = RunOptions::default();
    let ran = f.dir.path().join("ran");
    // The signal comes while the first hook runs: it finishes, the second does not start.
    let signal = async {
        while !ran.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        options.interrupt.cancel();
    };
    let (report, ()) = tokio::join!(f.run_with(&pipeline, &options), signal);
    assert!(
        matches!(outcome(&report, "api"), Outcome::Interrupted(_)),
        "{report:?}"
    );
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "one\n");
    let report = f.run(&pipeline).await;
    assert!(report.resumed && report.succeeded(), "{report:?}");
    assert_eq!(
        std::fs::read_to_string(&ran).unwrap(),
        "one\ntwo\n",
        "the hook that passed is not run again"
    );
}

#[tokio::test]
async fn a_check_delay_is_waited_before_the_check_and_resumed_after_an_interruption() {
    let f = deployed_once().await;
    let text = pipeline_text("")
        .replace("api:1", "api:2")
        .replace("plugin = \"http\"\n", "plugin = \"http\"\ndelay = \"1h\"\n");
    let pipeline = f.parse(&text);
    let plans = f.plan(&pipeline).await;
    assert!(
        plans["api"]
            .timeline
            .contains(&"analyse api-planned: http (after 1h)".to_string()),
        "{:?}",
        plans["api"].timeline
    );

    // Interrupted while it waits: stopped at a checkpoint, nothing checked yet.
    let interrupt = CancellationToken::new();
    *f.interrupt_at_phase.lock().unwrap() = Some(("waiting".into(), interrupt.clone()));
    let options = RunOptions {
        interrupt,
        ..RunOptions::default()
    };
    let report = f.run_with(&pipeline, &options).await;
    assert!(
        matches!(outcome(&report, "api"), Outcome::Interrupted(r) if r.contains("stopped at a checkpoint")),
        "{report:?}"
    );
    let waited = f.events.lock().unwrap().iter().any(
        |e| matches!(e, Event::Phase { phase, .. } if phase == "waiting 1h before checking api-r2"),
    );
    assert!(waited);
    assert_eq!(f.cloud.count("check api-r2 http"), 0);

    // Resumed with a short delay, the wait is counted from the same traffic change, and the
    // check runs after it, once, against the same candidate.
    let text = text.replace("delay = \"1h\"", "delay = \"50ms\"");
    let report = f.run(&f.parse(&text)).await;
    assert!(report.resumed && report.succeeded(), "{report:?}");
    assert_eq!(f.cloud.count("deploy api r2"), 1);
    assert_eq!(f.cloud.count("check api-r2 http"), 1);
    assert_eq!(f.cloud.traffic("api"), pairs(&[("api-r2", 100)]));
}

/// `api`, a job calling its URL, and `web` reading the job's id: the references order them.
const WITH_RESOURCES: &str = r#"
name = "shop"

[defaults]
provider = "local"
strategy = "canary"

[services.api]
image = "api:1"

[resources.job]
provider = "local"
kind = "job"
spec = { uri = "${services.api.url}/reset", schedule = "0 0 * * *" }

[services.web]
image = "web:1"
env = { JOB = "${resources.job.outputs.id}", LITERAL = "$${not.a.reference}" }
"#;

#[tokio::test]
async fn references_order_the_graph_and_are_filled_in_from_what_was_deployed() {
    let f = Fixture::new().await;
    let pipeline = f.parse(WITH_RESOURCES);
    let web = pipeline.service("web").unwrap();
    assert_eq!(web.depends_on, ["job"], "the reference implies the edge");
    assert_eq!(pipeline.resource("job").unwrap().depends_on, ["api"]);
    let report = f.run(&pipeline).await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(
        f.cloud.resource("job").unwrap()["uri"],
        "http://api.memory/reset"
    );
    let calls = f.cloud.calls();
    let at = |prefix: &str| calls.iter().position(|c| c.starts_with(prefix)).unwrap();
    assert!(at("deploy api") < at("apply-resource job"), "{calls:?}");
    assert!(at("apply-resource job") < at("deploy web"), "{calls:?}");
    let job = report.services.iter().find(|s| s.service == "job").unwrap();
    assert_eq!(job.resource.as_deref(), Some("job"));
    assert_eq!(job.outcome, Outcome::Deployed);
    let recorded = f
        .store
        .resource("shop", "default", "job")
        .await
        .unwrap()
        .unwrap();
    assert!(
        recorded.created,
        "it did not exist before the engine applied it"
    );
    assert_eq!(recorded.outputs["id"], "memory/job");
    assert!(recorded.spec.contains("http://api.memory/reset"));

    // Again: the job is unchanged and not applied twice.
    let report = f.run(&pipeline).await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(outcome(&report, "job"), &Outcome::Unchanged);
    assert_eq!(f.cloud.count("apply-resource job"), 1);
}

#[tokio::test]
async fn a_resource_that_fails_skips_what_depends_on_it_and_one_found_existing_is_not_ours() {
    let f = Fixture::new().await;
    let pipeline = f.parse(WITH_RESOURCES);
    f.cloud
        .put_resource("job", serde_json::json!({"made": "by hand"}));
    f.cloud.fail("apply-resource job", ErrorKind::Permanent, 1);
    let report = f.run(&pipeline).await;
    assert!(
        matches!(outcome(&report, "job"), Outcome::Failed(r) if r.contains("apply-resource job")),
        "{report:?}"
    );
    assert!(
        matches!(outcome(&report, "web"), Outcome::Skipped(SkipReason::Dependency { service, .. }) if service == "job"),
        "{report:?}"
    );
    assert_eq!(f.cloud.count("deploy web"), 0);

    // Applied over what existed, it is recorded as not the engine's: destroy leaves it.
    let report = f.run(&pipeline).await;
    assert!(report.succeeded(), "{report:?}");
    let recorded = f
        .store
        .resource("shop", "default", "job")
        .await
        .unwrap()
        .unwrap();
    assert!(!recorded.created);
}
