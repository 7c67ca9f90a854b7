//! What the engine remembers between runs, in a SQLite file (`.engine/state.db` beside the
//! pipeline by default): runs, each service's rollout checkpoint within a run, the history of
//! revisions per service, and the lock that keeps two runs of one pipeline and environment apart.
//!
//! Every text stored passes through the secret redactor first. Writes are transactions, so a
//! crash (kill -9 included) leaves either the old or the new checkpoint, never half of one.

use crate::runtime::secrets::redactor;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The schema version this code writes; older files are migrated forward when opened.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = "
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    environment TEXT NOT NULL,
    started_ms  INTEGER NOT NULL,
    finished_ms INTEGER,
    outcome     TEXT
);
CREATE INDEX runs_by_pipeline ON runs (pipeline, environment, id);
CREATE TABLE checkpoints (
    run_id     INTEGER NOT NULL REFERENCES runs (id),
    service    TEXT NOT NULL,
    data       TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, service)
);
CREATE TABLE revisions (
    id          INTEGER PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    revision    TEXT NOT NULL,
    run_id      INTEGER REFERENCES runs (id),
    recorded_ms INTEGER NOT NULL,
    traffic     INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX revisions_by_service ON revisions (pipeline, environment, service, id);
CREATE TABLE locks (
    pipeline    TEXT NOT NULL,
    environment TEXT NOT NULL,
    holder      TEXT NOT NULL,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    acquired_ms INTEGER NOT NULL,
    PRIMARY KEY (pipeline, environment)
);
";

/// A state store error.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Database {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the state directory {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state database {path} was written by a newer engine (schema {found}, this engine knows up to {SCHEMA_VERSION}); upgrade the engine"
    )]
    TooNew { path: String, found: i64 },
    #[error(
        "pipeline `{pipeline}` (environment `{environment}`) is locked by {holder}, running on {host} as process {pid} since {since}"
    )]
    LockBusy {
        pipeline: String,
        environment: String,
        holder: String,
        host: String,
        pid: u32,
        since: String,
    },
}

/// Who takes a lock: shown to a second run that finds it busy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// For people, such as `engine run (ci job 4412)`.
    pub name: String,
    pub host: String,
    pub pid: u32,
}

impl Holder {
    /// This process.
    pub fn this_process(name: impl Into<String>) -> Holder {
        Holder {
            name: name.into(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
        }
    }

    /// Whether the holder is a process on this machine that no longer exists, so its lock can
    /// be broken safely. A holder on another machine is never judged dead from here.
    pub fn is_dead_here(&self) -> bool {
        let here = gethostname::gethostname().to_string_lossy().into_owned();
        self.host == here
            && cfg!(target_os = "linux")
            && !Path::new("/proc").join(self.pid.to_string()).exists()
    }
}

/// One revision in a service's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRecord {
    pub revision: String,
    pub run_id: Option<i64>,
    pub recorded_ms: i64,
    /// Percent of traffic it had when recorded.
    pub traffic: u8,
    /// `deployed`, `promoted`, `aborted`, `rolled-back`, `retired`…
    pub outcome: String,
    pub detail: Option<String>,
}

/// A finished or unfinished run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub id: i64,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub outcome: Option<String>,
}

/// Milliseconds since the Unix epoch; SQLite stores integers as i64.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The state store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// The default location for a pipeline file: `.engine/state.db` beside it.
    pub fn default_path(pipeline_file: &Path) -> PathBuf {
        pipeline_file
            .parent()
            .unwrap_or(Path::new("."))
            .join(".engine")
            .join("state.db")
    }

    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StateError::Directory {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let db = |source| StateError::Database {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(db)?;
        // WAL lets `engine status` read while a run writes; the busy timeout rides out the short
        // moments when two processes write at once.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        // In WAL mode NORMAL survives any crash of the process (kill -9 included); only a power
        // loss may drop the last commits, and resuming then repeats a step, which every provider
        // call and strategy step must tolerate anyway. FULL would cost an fsync per checkpoint.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(db)?;
        conn.pragma_update(None, "foreign_keys", true).map_err(db)?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.migrate()?;
        Ok(store)
    }

    fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Database {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn migrate(&self) -> Result<(), StateError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if version > SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path: self.path.display().to_string(),
                found: version,
            });
        }
        if version < 1 {
            self.conn
                .execute_batch(&format!(
                    "BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
                ))
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Takes the lock of a pipeline and environment. A lock held by a dead process on this
    /// machine is broken (and said so in the log); any other holder makes this fail with
    /// [`StateError::LockBusy`].
    pub fn lock(
        &mut self,
        pipeline: &str,
        environment: &str,
        holder: &Holder,
    ) -> Result<Lock, StateError> {
        let path = self.path.display().to_string();
        let tx = self
            .conn
            .transaction()
            .map_err(|source| StateError::Database {
                path: path.clone(),
                source,
            })?;
        let db = |source| StateError::Database {
            path: path.clone(),
            source,
        };
        let existing: Option<(String, String, u32, i64)> = tx
            .query_row(
                "SELECT holder, host, pid, acquired_ms FROM locks WHERE pipeline = ?1 AND environment = ?2",
                params![pipeline, environment],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db)?;
        if let Some((name, host, pid, acquired_ms)) = existing {
            let current = Holder { name, host, pid };
            if !current.is_dead_here() {
                return Err(StateError::LockBusy {
                    pipeline: pipeline.into(),
                    environment: environment.into(),
                    holder: current.name,
                    host: current.host,
                    pid: current.pid,
                    since: humantime::format_rfc3339_seconds(
                        UNIX_EPOCH + Duration::from_millis(acquired_ms.max(0) as u64),
                    )
                    .to_string(),
                });
            }
            tracing::warn!(
                "breaking the lock of pipeline `{pipeline}` ({environment}): its holder, process {pid} on this machine, is gone"
            );
        }
        tx.execute(
            "INSERT OR REPLACE INTO locks (pipeline, environment, holder, host, pid, acquired_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![pipeline, environment, holder.name, holder.host, holder.pid, now_ms()],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Lock {
            pipeline: pipeline.into(),
            environment: environment.into(),
            pid: holder.pid,
        })
    }

    /// Releases a lock this process holds.
    pub fn unlock(&self, lock: Lock) -> Result<(), StateError> {
        self.conn
            .execute(
                "DELETE FROM locks WHERE pipeline = ?1 AND environment = ?2 AND pid = ?3",
                params![lock.pipeline, lock.environment, lock.pid],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Who holds the lock of a pipeline and environment, and since when (ms), if anyone.
    pub fn lock_holder(
        &self,
        pipeline: &str,
        environment: &str,
    ) -> Result<Option<(Holder, i64)>, StateError> {
        self.conn
            .query_row(
                "SELECT holder, host, pid, acquired_ms FROM locks WHERE pipeline = ?1 AND environment = ?2",
                params![pipeline, environment],
                |r| Ok((Holder { name: r.get(0)?, host: r.get(1)?, pid: r.get(2)? }, r.get(3)?)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Starts a run, or returns the unfinished one of this pipeline and environment so the
    /// caller resumes it. The boolean says whether the run is resumed.
    pub fn begin_run(&self, pipeline: &str, environment: &str) -> Result<(i64, bool), StateError> {
        let unfinished: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM runs WHERE pipeline = ?1 AND environment = ?2 AND finished_ms IS NULL ORDER BY id DESC LIMIT 1",
                params![pipeline, environment],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(id) = unfinished {
            return Ok((id, true));
        }
        self.conn
            .execute(
                "INSERT INTO runs (pipeline, environment, started_ms) VALUES (?1, ?2, ?3)",
                params![pipeline, environment, now_ms()],
            )
            .map_err(|e| self.err(e))?;
        Ok((self.conn.last_insert_rowid(), false))
    }

    /// Marks a run finished with its outcome (`deployed`, `failed`…).
    pub fn finish_run(&self, run: i64, outcome: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE runs SET finished_ms = ?2, outcome = ?3 WHERE id = ?1",
                params![run, now_ms(), outcome],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The runs of a pipeline and environment, newest first.
    pub fn runs(
        &self,
        pipeline: &str,
        environment: &str,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, started_ms, finished_ms, outcome FROM runs WHERE pipeline = ?1 AND environment = ?2 ORDER BY id DESC LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![pipeline, environment, limit as i64], |r| {
                Ok(RunRecord {
                    id: r.get(0)?,
                    started_ms: r.get(1)?,
                    finished_ms: r.get(2)?,
                    outcome: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Saves a service's checkpoint within a run (any serialised rollout state), replacing the
    /// previous one atomically.
    pub fn save_checkpoint(&self, run: i64, service: &str, data: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO checkpoints (run_id, service, data, updated_ms) VALUES (?1, ?2, ?3, ?4)",
                params![run, service, redactor().redact(data), now_ms()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A service's last checkpoint in a run.
    pub fn checkpoint(&self, run: i64, service: &str) -> Result<Option<String>, StateError> {
        self.conn
            .query_row(
                "SELECT data FROM checkpoints WHERE run_id = ?1 AND service = ?2",
                params![run, service],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Appends to a service's revision history.
    pub fn record_revision(
        &self,
        pipeline: &str,
        environment: &str,
        service: &str,
        run: Option<i64>,
        record: &RevisionRecord,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO revisions (pipeline, environment, service, revision, run_id, recorded_ms, traffic, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    pipeline,
                    environment,
                    service,
                    record.revision,
                    run,
                    record.recorded_ms,
                    record.traffic,
                    record.outcome,
                    record.detail.as_deref().map(|d| redactor().redact(d)),
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A service's revision history, newest first.
    pub fn history(
        &self,
        pipeline: &str,
        environment: &str,
        service: &str,
    ) -> Result<Vec<RevisionRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT revision, run_id, recorded_ms, traffic, outcome, detail FROM revisions
                 WHERE pipeline = ?1 AND environment = ?2 AND service = ?3 ORDER BY id DESC",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![pipeline, environment, service], |r| {
                Ok(RevisionRecord {
                    revision: r.get(0)?,
                    run_id: r.get(1)?,
                    recorded_ms: r.get(2)?,
                    traffic: r.get(3)?,
                    outcome: r.get(4)?,
                    detail: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

/// A held lock; give it back with [`Store::unlock`]. If the process dies instead, the next run
/// on this machine detects the dead holder and breaks the lock.
#[derive(Debug)]
#[must_use = "a lock must be released with Store::unlock"]
pub struct Lock {
    pipeline: String,
    environment: String,
    pid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(".engine/state.db")).unwrap();
        (dir, store)
    }

    fn holder(name: &str, host: &str, pid: u32) -> Holder {
        Holder {
            name: name.into(),
            host: host.into(),
            pid,
        }
    }

    #[test]
    fn a_second_holder_finds_the_lock_busy_and_is_told_who_holds_it() {
        let (dir, mut first) = store();
        let mut second = Store::open(&dir.path().join(".engine/state.db")).unwrap();
        let me = Holder::this_process("engine run (job 1)");
        let lock = first.lock("shop", "production", &me).unwrap();
        match second.lock(
            "shop",
            "production",
            &Holder::this_process("engine run (job 2)"),
        ) {
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
        assert!(
            second.lock("shop", "staging", &me).is_ok(),
            "another environment has its own lock"
        );
        first.unlock(lock).unwrap();
        assert!(
            second.lock("shop", "production", &me).is_ok(),
            "released locks can be taken"
        );
    }

    #[test]
    fn a_dead_local_holder_is_broken_but_a_remote_one_is_not() {
        let (_dir, mut store) = store();
        let here = Holder::this_process("x").host;
        let dead_pid = 4_000_000; // above Linux's pid_max, so no such process
        let _ = store
            .lock("shop", "prod", &holder("crashed run", &here, dead_pid))
            .unwrap();
        assert!(
            store
                .lock("shop", "prod", &Holder::this_process("new run"))
                .is_ok(),
            "a crashed holder's lock is broken"
        );

        let _ = store
            .lock(
                "other",
                "prod",
                &holder("run elsewhere", "another-machine", dead_pid),
            )
            .unwrap();
        let err = store
            .lock("other", "prod", &Holder::this_process("new run"))
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "is locked by run elsewhere, running on another-machine as process 4000000"
            ),
            "{err}"
        );
    }

    #[test]
    fn an_unfinished_run_is_resumed() {
        let (_dir, store) = store();
        let (first, resumed) = store.begin_run("shop", "prod").unwrap();
        assert!(!resumed);
        assert_eq!(store.begin_run("shop", "prod").unwrap(), (first, true));
        assert_ne!(store.begin_run("shop", "staging").unwrap().0, first);
        store.finish_run(first, "deployed").unwrap();
        let (second, resumed) = store.begin_run("shop", "prod").unwrap();
        assert!(!resumed && second != first);
        let runs = store.runs("shop", "prod", 10).unwrap();
        assert_eq!(
            runs.iter().map(|r| r.id).collect::<Vec<_>>(),
            [second, first]
        );
        assert_eq!(runs[1].outcome.as_deref(), Some("deployed"));
    }

    #[test]
    fn checkpoints_replace_each_other_and_survive_reopening() {
        let (dir, store) = store();
        let (run, _) = store.begin_run("shop", "prod").unwrap();
        assert_eq!(store.checkpoint(run, "api").unwrap(), None);
        store.save_checkpoint(run, "api", r#"{"step":1}"#).unwrap();
        store.save_checkpoint(run, "api", r#"{"step":2}"#).unwrap();
        drop(store);
        let store = Store::open(&dir.path().join(".engine/state.db")).unwrap();
        assert_eq!(
            store.checkpoint(run, "api").unwrap().as_deref(),
            Some(r#"{"step":2}"#)
        );
    }

    #[test]
    fn stored_text_is_redacted() {
        let (_dir, store) = store();
        redactor().register("state-test-secret-value");
        let (run, _) = store.begin_run("shop", "prod").unwrap();
        store
            .save_checkpoint(run, "api", "token=state-test-secret-value")
            .unwrap();
        assert_eq!(
            store.checkpoint(run, "api").unwrap().as_deref(),
            Some("token=[REDACTED]")
        );
        let record = RevisionRecord {
            revision: "api-2".into(),
            run_id: Some(run),
            recorded_ms: now_ms(),
            traffic: 0,
            outcome: "aborted".into(),
            detail: Some("health check saw state-test-secret-value".into()),
        };
        store
            .record_revision("shop", "prod", "api", Some(run), &record)
            .unwrap();
        assert_eq!(
            store.history("shop", "prod", "api").unwrap()[0]
                .detail
                .as_deref(),
            Some("health check saw [REDACTED]")
        );
    }

    #[test]
    fn history_is_newest_first_per_service() {
        let (_dir, store) = store();
        for (revision, outcome) in [
            ("api-1", "promoted"),
            ("api-2", "aborted"),
            ("api-3", "promoted"),
        ] {
            let r = RevisionRecord {
                revision: revision.into(),
                run_id: None,
                recorded_ms: now_ms(),
                traffic: 100,
                outcome: outcome.into(),
                detail: None,
            };
            store
                .record_revision("shop", "prod", "api", None, &r)
                .unwrap();
        }
        let history = store.history("shop", "prod", "api").unwrap();
        assert_eq!(
            history
                .iter()
                .map(|r| r.revision.as_str())
                .collect::<Vec<_>>(),
            ["api-3", "api-2", "api-1"]
        );
        assert!(store.history("shop", "prod", "web").unwrap().is_empty());
        assert!(store.history("shop", "staging", "api").unwrap().is_empty());
    }

    #[test]
    fn a_database_from_a_newer_engine_is_refused() {
        let (dir, store) = store();
        store.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(store);
        let err = Store::open(&dir.path().join(".engine/state.db"))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("written by a newer engine (schema 99"),
            "{err}"
        );
    }
}
