//! The state store's behaviour, each on both backends: a SQLite file and a real PostgreSQL
//! server (see support/postgres.rs).

mod support;

use engine::state::{Holder, Location, RevisionRecord, StateError, Store, now_ms};
use std::future::Future;

/// Runs `check` against a fresh SQLite file.
async fn on_sqlite<F, Fut>(check: F)
where
    F: FnOnce(Location) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    check(Location::Sqlite(dir.path().join(".engine/state.db"))).await;
}

/// Runs `check` against a fresh PostgreSQL database.
async fn on_postgres<F, Fut>(check: F)
where
    F: FnOnce(Location) -> Fut,
    Fut: Future<Output = ()>,
{
    check(Location::Postgres(support::postgres::database().await)).await;
}

/// Declares one test per backend for an `async fn(Location)`.
macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        $(
            mod $check {
                #[tokio::test]
                async fn sqlite() {
                    super::on_sqlite(super::$check).await;
                }
                #[tokio::test]
                async fn postgres() {
                    super::on_postgres(super::$check).await;
                }
            }
        )*
    };
}

on_both_backends!(
    a_second_holder_finds_the_lock_busy_and_is_told_who_holds_it,
    of_many_racing_runs_exactly_one_takes_the_lock,
    an_unfinished_run_is_resumed,
    checkpoints_replace_each_other_and_survive_reopening,
    stored_text_is_redacted,
    history_is_newest_first_per_service,
    runs_opening_a_new_state_at_once_all_succeed,
    a_checkpoint_and_its_history_row_are_written_together_or_not_at_all,
    a_resource_record_keeps_who_created_it,
);

async fn a_second_holder_finds_the_lock_busy_and_is_told_who_holds_it(at: Location) {
    let first = Store::connect(&at).await.unwrap();
    let second = Store::connect(&at).await.unwrap();
    let me = Holder::this_process("engine run (job 1)");
    let lock = first.lock("shop", "production", &me).await.unwrap();
    match second
        .lock(
            "shop",
            "production",
            &Holder::this_process("engine run (job 2)"),
        )
        .await
    {
        Err(StateError::LockBusy {
            holder, host, pid, ..
        }) => {
            assert_eq!(
                (holder.as_str(), host.as_str(), pid),
                ("engine run (job 1)", me.host.as_str(), me.pid)
            );
        }
        other => panic!("expected a busy lock, got {other:?}"),
    }
    let staging = second.lock("shop", "staging", &me).await;
    assert!(staging.is_ok(), "another environment has its own lock");
    first.unlock(lock).await.unwrap();
    let again = second.lock("shop", "production", &me).await;
    assert!(again.is_ok(), "released locks can be taken: {again:?}");
}

async fn of_many_racing_runs_exactly_one_takes_the_lock(at: Location) {
    let mut stores = Vec::new();
    for _ in 0..8 {
        stores.push(Store::connect(&at).await.unwrap());
    }
    let attempts = stores.iter().enumerate().map(|(i, store)| async move {
        store
            .lock("shop", "prod", &Holder::this_process(format!("run {i}")))
            .await
    });
    let results = futures::future::join_all(attempts).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(StateError::LockBusy { .. })))
        .count();
    assert_eq!((won, busy), (1, 7), "{results:?}");
}

/// Eight engines started at once in a project that has no state yet: each creates or finds the
/// schema, none sees a half-made one ("table runs already exists" before the fix). Threads, not
/// tasks: opening SQLite blocks, so tasks on one runtime would take turns.
async fn runs_opening_a_new_state_at_once_all_succeed(at: Location) {
    for attempt in 0..5 {
        let at = match &at {
            Location::Sqlite(path) => {
                Location::Sqlite(path.with_file_name(format!("{attempt}.db")))
            }
            Location::Postgres(_) if attempt > 0 => return,
            Location::Postgres(url) => Location::Postgres(url.clone()),
        };
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let openers: Vec<_> = (0..8)
            .map(|_| {
                let (at, start) = (at.clone(), start.clone());
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    start.wait();
                    runtime
                        .block_on(Store::connect(&at))
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        let results: Vec<_> = openers.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(results.iter().all(Result::is_ok), "{at}: {results:?}");
        let store = Store::connect(&at).await.unwrap();
        let lock = store
            .lock("shop", "prod", &Holder::this_process("after"))
            .await;
        assert!(lock.is_ok(), "the schema is whole: {lock:?}");
    }
}

async fn an_unfinished_run_is_resumed(at: Location) {
    let store = Store::connect(&at).await.unwrap();
    let (first, resumed) = store.begin_run("shop", "prod").await.unwrap();
    assert!(!resumed);
    assert_eq!(store.open_run("shop", "prod").await.unwrap(), Some(first));
    assert_eq!(
        store.begin_run("shop", "prod").await.unwrap(),
        (first, true)
    );
    assert_ne!(store.begin_run("shop", "staging").await.unwrap().0, first);
    store.finish_run(first, "deployed").await.unwrap();
    assert_eq!(store.open_run("shop", "prod").await.unwrap(), None);
    let (second, resumed) = store.begin_run("shop", "prod").await.unwrap();
    assert!(!resumed && second != first);
    let runs = store.runs("shop", "prod", 10).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        [second, first]
    );
    assert_eq!(runs[1].outcome.as_deref(), Some("deployed"));
    assert!(runs[1].finished_ms.is_some() && runs[0].finished_ms.is_none());
}

async fn checkpoints_replace_each_other_and_survive_reopening(at: Location) {
    let store = Store::connect(&at).await.unwrap();
    let (run, _) = store.begin_run("shop", "prod").await.unwrap();
    assert_eq!(store.checkpoint(run, "api").await.unwrap(), None);
    store
        .save_checkpoint(run, "api", r#"{"step":1}"#)
        .await
        .unwrap();
    store
        .save_checkpoint(run, "api", r#"{"step":2}"#)
        .await
        .unwrap();
    drop(store);
    let store = Store::connect(&at).await.unwrap();
    assert_eq!(
        store.checkpoint(run, "api").await.unwrap().as_deref(),
        Some(r#"{"step":2}"#)
    );
}

/// Makes every insert into the revision history fail, as a full disk or a lost connection
/// would between the two writes.
async fn break_history_writes(at: &Location) {
    match at {
        Location::Sqlite(path) => rusqlite::Connection::open(path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER no_history BEFORE INSERT ON revisions
                 BEGIN SELECT RAISE(ABORT, 'history is broken'); END;",
            )
            .unwrap(),
        Location::Postgres(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .batch_execute(
                    "CREATE FUNCTION no_history() RETURNS trigger LANGUAGE plpgsql AS
                     $$ BEGIN RAISE EXCEPTION 'history is broken'; END $$;
                     CREATE TRIGGER no_history BEFORE INSERT ON revisions
                     FOR EACH ROW EXECUTE FUNCTION no_history();",
                )
                .await
                .unwrap();
        }
    }
}

async fn a_checkpoint_and_its_history_row_are_written_together_or_not_at_all(at: Location) {
    let store = Store::connect(&at).await.unwrap();
    let (run, _) = store.begin_run("shop", "prod").await.unwrap();
    let record = |outcome: &str| RevisionRecord {
        revision: "api-2".into(),
        run_id: Some(run),
        recorded_ms: now_ms(),
        traffic: 0,
        outcome: outcome.into(),
        detail: None,
        release: None,
    };
    let entry = |record| engine::state::HistoryEntry {
        pipeline: "shop",
        environment: "prod",
        service: "api",
        record,
    };
    let deployed = record("deployed");
    store
        .save_checkpoint_and_record(run, r#"{"step":1}"#, &entry(&deployed))
        .await
        .unwrap();

    break_history_writes(&at).await;
    let promoted = record("promoted");
    let err = store
        .save_checkpoint_and_record(run, r#"{"step":2}"#, &entry(&promoted))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("history is broken"), "{err}");
    assert_eq!(
        store.checkpoint(run, "api").await.unwrap().as_deref(),
        Some(r#"{"step":1}"#),
        "the checkpoint of a step whose history row failed is not kept"
    );
    let outcomes: Vec<String> = store
        .history("shop", "prod", "api")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(outcomes, ["deployed"]);
}

async fn stored_text_is_redacted(at: Location) {
    let store = Store::connect(&at).await.unwrap();
    engine::redact::redactor().register("state-test-secret-value");
    let (run, _) = store.begin_run("shop", "prod").await.unwrap();
    store
        .save_checkpoint(run, "api", "token=state-test-secret-value")
        .await
        .unwrap();
    assert_eq!(
        store.checkpoint(run, "api").await.unwrap().as_deref(),
        Some("token=[REDACTED]")
    );
    let record = RevisionRecord {
        revision: "api-2".into(),
        run_id: Some(run),
        recorded_ms: now_ms(),
        traffic: 0,
        outcome: "aborted".into(),
        detail: Some("health check saw state-test-secret-value".into()),
        release: Some("sha256:0123abcd".into()),
    };
    store
        .record_revision("shop", "prod", "api", Some(run), &record)
        .await
        .unwrap();
    let history = store.history("shop", "prod", "api").await.unwrap();
    assert_eq!(
        history[0].detail.as_deref(),
        Some("health check saw [REDACTED]")
    );
    assert_eq!(history[0].release.as_deref(), Some("sha256:0123abcd"));
}

async fn history_is_newest_first_per_service(at: Location) {
    let store = Store::connect(&at).await.unwrap();
    for (revision, outcome, traffic) in [
        ("api-1", "promoted", 100),
        ("api-2", "aborted", 0),
        ("api-3", "promoted", 100),
    ] {
        let r = RevisionRecord {
            revision: revision.into(),
            run_id: None,
            recorded_ms: now_ms(),
            traffic,
            outcome: outcome.into(),
            detail: None,
            release: None,
        };
        store
            .record_revision("shop", "prod", "api", None, &r)
            .await
            .unwrap();
    }
    let history = store.history("shop", "prod", "api").await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|r| (r.revision.as_str(), r.traffic, r.run_id))
            .collect::<Vec<_>>(),
        [
            ("api-3", 100, None),
            ("api-2", 0, None),
            ("api-1", 100, None)
        ]
    );
    assert!(
        store
            .history("shop", "prod", "web")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .history("shop", "staging", "api")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn sqlite_breaks_the_lock_of_a_dead_local_process_but_not_of_a_remote_one() {
    on_sqlite(|at| async move {
        let store = Store::connect(&at).await.unwrap();
        let here = Holder::this_process("x").host;
        let dead_pid = 4_000_000; // above Linux's pid_max, so no such process
        let crashed = Holder {
            name: "crashed run".into(),
            host: here,
            pid: dead_pid,
            process_start: None,
        };
        let _ = store.lock("shop", "prod", &crashed).await.unwrap();
        let new = store
            .lock("shop", "prod", &Holder::this_process("new run"))
            .await;
        assert!(new.is_ok(), "a crashed holder's lock is broken: {new:?}");

        let elsewhere = Holder {
            name: "run elsewhere".into(),
            host: "another-machine".into(),
            pid: dead_pid,
            process_start: None,
        };
        let _ = store.lock("other", "prod", &elsewhere).await.unwrap();
        let err = store
            .lock("other", "prod", &Holder::this_process("new run"))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "is locked by run elsewhere, running on another-machine as process 4000000"
            ),
            "{err}"
        );
    })
    .await;
}

/// A holder of this machine under `pid`, as the lock records it.
fn local_holder(name: &str, pid: u32, process_start: Option<String>) -> Holder {
    Holder {
        name: name.into(),
        pid,
        process_start,
        ..Holder::this_process("")
    }
}

/// A child that has exited and was not waited for: a zombie, whose `/proc` entry remains.
#[allow(clippy::zombie_processes)] // the point: the caller waits for it once the test is done
fn zombie() -> std::process::Child {
    let child = std::process::Command::new("true").spawn().unwrap();
    let stat = format!("/proc/{}/stat", child.id());
    for _ in 0..500 {
        let text = std::fs::read_to_string(&stat).unwrap_or_default();
        if text
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
        {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the child did not become a zombie");
}

#[tokio::test]
async fn sqlite_breaks_the_lock_of_a_zombie_or_of_a_reused_pid_but_not_of_a_live_holder() {
    on_sqlite(|at| async move {
        let store = Store::connect(&at).await.unwrap();
        let new_run = || Holder::this_process("new run");

        // Killed under a parent that never waits: /proc/PID exists, the process does not run.
        let mut zombie = zombie();
        let holder = local_holder("zombie run", zombie.id(), None);
        assert_eq!(holder.liveness(), engine::state::Liveness::Gone);
        let _ = store.lock("shop", "zombie", &holder).await.unwrap();
        let taken = store.lock("shop", "zombie", &new_run()).await;
        assert!(taken.is_ok(), "a zombie's lock is broken: {taken:?}");
        zombie.wait().unwrap();

        // A live process under the PID, but not the one that took the lock (another start).
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let reused = local_holder("old run", sleeper.id(), Some("another-boot/12345".into()));
        let _ = store.lock("shop", "reused", &reused).await.unwrap();
        let taken = store.lock("shop", "reused", &new_run()).await;
        assert!(taken.is_ok(), "a reused PID's lock is broken: {taken:?}");

        // The same process, with its real start: alive, so its lock holds.
        let live = local_holder("live run", sleeper.id(), start_of(sleeper.id()));
        assert_eq!(live.liveness(), engine::state::Liveness::Alive);
        let _ = store.lock("shop", "live", &live).await.unwrap();
        let err = store.lock("shop", "live", &new_run()).await.unwrap_err();
        assert!(matches!(err, StateError::LockBusy { .. }), "{err}");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        let taken = store.lock("shop", "live", &new_run()).await;
        assert!(
            taken.is_ok(),
            "once it exits, its lock is broken: {taken:?}"
        );
    })
    .await;
}

/// The start identity the engine records for `pid` (boot id and start ticks, from /proc).
fn start_of(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat
        .rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .to_string();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(format!("{}/{ticks}", boot.trim()))
}

#[tokio::test]
async fn a_state_from_before_schema_2_is_migrated_and_its_lock_and_history_still_read() {
    on_sqlite(|at| async move {
        drop(Store::connect(&at).await.unwrap());
        let Location::Sqlite(path) = &at else {
            unreachable!()
        };
        // Back to schema 1, as an engine before this one left it, with a lock held.
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch(
            "ALTER TABLE locks DROP COLUMN process_start;
             ALTER TABLE revisions DROP COLUMN release_digest; DROP TABLE resources;
             PRAGMA user_version = 1;
             INSERT INTO locks (pipeline, environment, holder, host, pid, acquired_ms)
             VALUES ('shop', 'prod', 'old engine', 'elsewhere', 7, 0);
             INSERT INTO revisions (pipeline, environment, service, revision, run_id, recorded_ms, traffic, outcome, detail)
             VALUES ('shop', 'prod', 'api', 'api-r1', NULL, 0, 100, 'promoted', NULL);",
        )
        .unwrap();
        drop(conn);
        let store = Store::connect(&at).await.unwrap();
        let (holder, _) = store.lock_holder("shop", "prod").await.unwrap().unwrap();
        assert_eq!(
            (holder.name.as_str(), holder.pid, holder.process_start),
            ("old engine", 7, None)
        );
        let history = store.history("shop", "prod", "api").await.unwrap();
        assert_eq!(
            (history[0].revision.as_str(), history[0].release.as_deref()),
            ("api-r1", None)
        );
        let version: i64 = rusqlite::Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 4);
    })
    .await;
}

#[tokio::test]
async fn postgres_frees_the_lock_when_the_holders_session_ends() {
    on_postgres(|at| async move {
        let crashed = Store::connect(&at).await.unwrap();
        // A holder on another machine: only its session says whether it is alive.
        let elsewhere = Holder {
            name: "run elsewhere".into(),
            host: "another-machine".into(),
            pid: 42,
            process_start: None,
        };
        let _lock = crashed.lock("shop", "prod", &elsewhere).await.unwrap();
        let other = Store::connect(&at).await.unwrap();
        let busy = other
            .lock("shop", "prod", &Holder::this_process("new run"))
            .await
            .unwrap_err();
        assert!(
            busy.to_string().contains("locked by run elsewhere"),
            "{busy}"
        );
        drop(crashed); // the connection closes, as when the process is killed
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match other
                .lock("shop", "prod", &Holder::this_process("new run"))
                .await
            {
                Ok(_) => break,
                Err(StateError::LockBusy { .. }) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                Err(e) => panic!("the lock of a closed session was not freed: {e}"),
            }
        }
        let holder = other.lock_holder("shop", "prod").await.unwrap().unwrap().0;
        assert_eq!(holder.name, "new run");
    })
    .await;
}

#[tokio::test]
async fn a_database_from_a_newer_engine_is_refused() {
    on_sqlite(|at| async move {
        drop(Store::connect(&at).await.unwrap());
        let Location::Sqlite(path) = &at else {
            unreachable!()
        };
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::connect(&at).await.err().unwrap();
        assert!(
            err.to_string()
                .contains("written by a newer engine (schema 99"),
            "{err}"
        );
    })
    .await;
    on_postgres(|at| async move {
        drop(Store::connect(&at).await.unwrap());
        let Location::Postgres(url) = &at else {
            unreachable!()
        };
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute("UPDATE engine_schema SET version = 99")
            .await
            .unwrap();
        let err = Store::connect(&at).await.err().unwrap();
        assert!(
            err.to_string()
                .contains("written by a newer engine (schema 99"),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_postgres_state_of_schema_2_is_migrated_and_its_history_kept() {
    on_postgres(|at| async move {
        drop(Store::connect(&at).await.unwrap());
        let Location::Postgres(url) = &at else {
            unreachable!()
        };
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        // Back to schema 2, as the engine before this one left it, with a history row.
        client
            .batch_execute(
                "ALTER TABLE revisions DROP COLUMN release_digest; DROP TABLE resources;
                 UPDATE engine_schema SET version = 2;
                 INSERT INTO revisions (pipeline, environment, service, revision, run_id, recorded_ms, traffic, outcome, detail)
                 VALUES ('shop', 'prod', 'api', 'api-r1', NULL, 0, 100, 'promoted', NULL);",
            )
            .await
            .unwrap();
        let store = Store::connect(&at).await.unwrap();
        let history = store.history("shop", "prod", "api").await.unwrap();
        assert_eq!(
            (history[0].revision.as_str(), history[0].release.as_deref()),
            ("api-r1", None)
        );
        let version: i64 = client
            .query_one("SELECT version FROM engine_schema", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, 4);
    })
    .await;
}

#[tokio::test]
async fn a_postgres_server_that_is_not_there_gives_a_clear_error() {
    let at = Location::parse("postgres://engine:hunter2@127.0.0.1:1/nothing");
    let err = Store::connect(&at).await.err().unwrap().to_string();
    assert!(
        err.starts_with("state database postgres://engine:***@127.0.0.1:1/nothing:"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

/// A resource's record keeps whether the engine created it from its first write: an object
/// found existing stays someone else's whatever later runs record.
async fn a_resource_record_keeps_who_created_it(at: Location) {
    use engine::state::ResourceRecord;
    {
        let store = Store::connect(&at).await.unwrap();
        let mut record = ResourceRecord {
            name: "nightly".into(),
            provider: "cloudrun".into(),
            kind: "scheduler-job".into(),
            platform_id: "projects/p/locations/l/jobs/nightly".into(),
            spec: r#"{"schedule":"0 0 * * *"}"#.into(),
            config: "{}".into(),
            outputs: [(
                "name".to_string(),
                "projects/p/locations/l/jobs/nightly".to_string(),
            )]
            .into(),
            created: false,
            digest: "sha256:1".into(),
            run_id: None,
            updated_ms: 0,
        };
        store
            .record_resource("shop", "prod", &record)
            .await
            .unwrap();
        record.created = true;
        record.spec = r#"{"schedule":"0 1 * * *"}"#.into();
        store
            .record_resource("shop", "prod", &record)
            .await
            .unwrap();
        let found = store
            .resource("shop", "prod", "nightly")
            .await
            .unwrap()
            .unwrap();
        assert!(!found.created, "the first record decides");
        assert_eq!(found.spec, r#"{"schedule":"0 1 * * *"}"#);
        assert_eq!(found.outputs["name"], "projects/p/locations/l/jobs/nightly");
        store
            .forget_resource("shop", "prod", "nightly")
            .await
            .unwrap();
        assert!(store.resources("shop", "prod").await.unwrap().is_empty());
    }
}
