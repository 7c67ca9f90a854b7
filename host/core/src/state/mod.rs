//! What the engine remembers between runs: runs, each service's rollout checkpoint within a
//! run, the history of revisions per service, and the lock that keeps two runs of one pipeline
//! and environment apart.
//!
//! The default is a SQLite file (`.engine/state.db` beside the pipeline); teams whose runs span
//! several CI machines point `--state` at PostgreSQL instead. Both run the same statements
//! ([`backend`] only connects, migrates and binds). Every text stored passes through the secret
//! redactor first. Each write is one statement, so a crash (kill -9 included) leaves either the
//! old or the new checkpoint, never half of one.

mod backend;
mod process;
mod resources;

pub use backend::Location;
use backend::{Backend, Row, Value};
pub use process::Liveness;
pub use resources::ResourceRecord;

use crate::redact::redactor;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A state store error.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {location}: {message}")]
    Database { location: String, message: String },
    #[error("cannot create the state directory {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state database {location} was written by a newer engine (schema {found}, this engine knows up to {}); upgrade the engine",
        backend::SCHEMA_VERSION
    )]
    TooNew { location: String, found: i64 },
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
    /// The process's start (`BOOT_ID/TICKS`, see [`process`]), so that a reused PID is not
    /// taken for the holder; `None` where unknown.
    pub process_start: Option<String>,
}

impl Holder {
    /// This process.
    pub fn this_process(name: impl Into<String>) -> Holder {
        Holder {
            name: name.into(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            process_start: process::start_identity(std::process::id()),
        }
    }

    /// Whether the holder still runs. Only a holder on this machine is judged (a zombie or a
    /// reused PID counts as gone); one on another machine is [`Liveness::Unknown`].
    pub fn liveness(&self) -> Liveness {
        let here = gethostname::gethostname().to_string_lossy().into_owned();
        if self.host != here {
            return Liveness::Unknown;
        }
        process::liveness_here(self.pid, self.process_start.as_deref())
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
    /// `deployed`, `promoted`, `aborted`, `deploy-failed`, `rolled-back-to`, `retired`…
    pub outcome: String,
    pub detail: Option<String>,
    /// The digest of the release the row's run deployed ([`crate::config::Service::release_digest`]),
    /// by which a rerun of a rejected release is recognised; none in rows of other commands
    /// and rows written before schema version 3.
    pub release: Option<String>,
}

/// The revision that serves a service's traffic, from its history (newest first): the latest
/// one promoted or rolled back to, unless the service was destroyed since. A revision
/// deployed and then aborted or retired never served, so it is passed over.
pub fn serving_revision(history: &[RevisionRecord]) -> Option<&RevisionRecord> {
    history
        .iter()
        .take_while(|r| r.outcome != "destroyed")
        .find(|r| r.outcome == "promoted" || r.outcome == "rolled-back-to")
}

/// A finished or unfinished run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub id: i64,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub outcome: Option<String>,
}

/// Milliseconds since the Unix epoch; the databases store integers as i64.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A row of a service's revision history, with the service it belongs to.
pub struct HistoryEntry<'a> {
    pub pipeline: &'a str,
    pub environment: &'a str,
    pub service: &'a str,
    pub record: &'a RevisionRecord,
}

fn checkpoint_write(run: i64, service: &str, data: &str) -> (&'static str, Vec<Value>) {
    (
        "INSERT INTO checkpoints (run_id, service, data, updated_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (run_id, service) DO UPDATE SET data = excluded.data, updated_ms = excluded.updated_ms",
        vec![run.into(), service.into(), redactor().redact(data).into(), now_ms().into()],
    )
}

fn revision_write(history: &HistoryEntry<'_>, run: Option<i64>) -> (&'static str, Vec<Value>) {
    let record = history.record;
    (
        "INSERT INTO revisions (pipeline, environment, service, revision, run_id, recorded_ms, traffic, outcome, detail, release_digest)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        vec![
            history.pipeline.into(),
            history.environment.into(),
            history.service.into(),
            record.revision.as_str().into(),
            run.into(),
            record.recorded_ms.into(),
            i64::from(record.traffic).into(),
            record.outcome.as_str().into(),
            record.detail.as_deref().map(|d| redactor().redact(d)).into(),
            record.release.clone().into(),
        ],
    )
}

/// The state store.
pub struct Store {
    backend: Backend,
    location: Location,
}

/// A held lock; give it back with [`Store::unlock`]. If the process dies instead, the next run
/// detects it (a dead process on this machine; a closed session on PostgreSQL) and breaks it.
#[derive(Debug)]
#[must_use = "a lock must be released with Store::unlock"]
pub struct Lock {
    pipeline: String,
    environment: String,
    host: String,
    pid: u32,
}

/// The PostgreSQL advisory-lock key of a pipeline and environment, as SQL over `$1`, `$2`.
const ADVISORY_KEY: &str = "hashtextextended('engine:' || $1 || '/' || $2, 0)";

impl Store {
    /// Opens (creating and migrating if needed) the SQLite file at `path`.
    pub async fn open(path: &Path) -> Result<Store, StateError> {
        Store::connect(&Location::Sqlite(path.to_path_buf())).await
    }

    /// A store in memory, gone when dropped: where a simulated run (`engine plan`) keeps its
    /// checkpoints, so that it drives the executor without writing any state.
    pub async fn in_memory() -> Result<Store, StateError> {
        Store::open(Path::new(":memory:")).await
    }

    /// Opens the store at `location`, a SQLite file or a PostgreSQL database.
    pub async fn connect(location: &Location) -> Result<Store, StateError> {
        Ok(Store {
            backend: Backend::open(location).await?,
            location: location.clone(),
        })
    }

    /// Where the store is, for messages (a URL without its password).
    pub fn location(&self) -> &Location {
        &self.location
    }

    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StateError> {
        self.backend.query(&self.location, sql, params).await
    }

    /// Takes the lock of a pipeline and environment. A lock whose holder is gone (a dead
    /// process on this machine, or a closed PostgreSQL session) is broken, and said so in the
    /// log; any other holder makes this fail with [`StateError::LockBusy`].
    pub async fn lock(
        &self,
        pipeline: &str,
        environment: &str,
        holder: &Holder,
    ) -> Result<Lock, StateError> {
        let key = [Value::from(pipeline), Value::from(environment)];
        if self.backend.is_postgres() {
            // The session-level advisory lock is the real lock: PostgreSQL drops it when the
            // holder's connection ends, however the holder died. The row says who holds it.
            let got = self
                .query(
                    &format!("SELECT pg_try_advisory_lock({ADVISORY_KEY})"),
                    &key,
                )
                .await?;
            if got[0].int(0) != Some(1) {
                return Err(self.busy(pipeline, environment).await?);
            }
            if let Some((stale, _)) = self.lock_holder(pipeline, environment).await? {
                tracing::warn!(
                    "breaking the lock of pipeline `{pipeline}` ({environment}): its holder, {} on {}, lost its database session",
                    stale.name,
                    stale.host
                );
                self.query(
                    "DELETE FROM locks WHERE pipeline = $1 AND environment = $2",
                    &key,
                )
                .await?;
            }
        }
        for _ in 0..2 {
            let inserted = self
                .query(
                    "INSERT INTO locks (pipeline, environment, holder, host, pid, acquired_ms, process_start)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (pipeline, environment) DO NOTHING RETURNING pid",
                    &[
                        pipeline.into(),
                        environment.into(),
                        holder.name.as_str().into(),
                        holder.host.as_str().into(),
                        i64::from(holder.pid).into(),
                        now_ms().into(),
                        holder.process_start.clone().into(),
                    ],
                )
                .await?;
            if !inserted.is_empty() {
                return Ok(Lock {
                    pipeline: pipeline.into(),
                    environment: environment.into(),
                    host: holder.host.clone(),
                    pid: holder.pid,
                });
            }
            let Some((current, acquired_ms)) = self.lock_holder(pipeline, environment).await?
            else {
                continue; // released meanwhile: try again
            };
            if current.liveness() != Liveness::Gone {
                break;
            }
            tracing::warn!(
                "breaking the lock of pipeline `{pipeline}` ({environment}): its holder, process {} on this machine, is gone (exited, a zombie, or its PID reused)",
                current.pid
            );
            // Delete exactly the stale row, so a run that took the lock meanwhile keeps it.
            self.query(
                "DELETE FROM locks WHERE pipeline = $1 AND environment = $2 AND host = $3 AND pid = $4 AND acquired_ms = $5",
                &[
                    pipeline.into(),
                    environment.into(),
                    current.host.as_str().into(),
                    i64::from(current.pid).into(),
                    acquired_ms.into(),
                ],
            )
            .await?;
        }
        Err(self.busy(pipeline, environment).await?)
    }

    async fn busy(&self, pipeline: &str, environment: &str) -> Result<StateError, StateError> {
        let (holder, since) = self
            .lock_holder(pipeline, environment)
            .await?
            .unwrap_or_else(|| {
                (
                    Holder {
                        name: "another run".into(),
                        host: "an unknown host".into(),
                        pid: 0,
                        process_start: None,
                    },
                    now_ms(),
                )
            });
        Ok(StateError::LockBusy {
            pipeline: pipeline.into(),
            environment: environment.into(),
            holder: holder.name,
            host: holder.host,
            pid: holder.pid,
            since: humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_millis(since.max(0) as u64),
            )
            .to_string(),
        })
    }

    /// Releases a lock this process holds.
    pub async fn unlock(&self, lock: Lock) -> Result<(), StateError> {
        self.query(
            "DELETE FROM locks WHERE pipeline = $1 AND environment = $2 AND host = $3 AND pid = $4",
            &[
                lock.pipeline.as_str().into(),
                lock.environment.as_str().into(),
                lock.host.as_str().into(),
                i64::from(lock.pid).into(),
            ],
        )
        .await?;
        if self.backend.is_postgres() {
            self.query(
                &format!("SELECT pg_advisory_unlock({ADVISORY_KEY})"),
                &[
                    lock.pipeline.as_str().into(),
                    lock.environment.as_str().into(),
                ],
            )
            .await?;
        }
        Ok(())
    }

    /// Who holds the lock of a pipeline and environment, and since when (ms), if anyone.
    pub async fn lock_holder(
        &self,
        pipeline: &str,
        environment: &str,
    ) -> Result<Option<(Holder, i64)>, StateError> {
        let rows = self
            .query(
                "SELECT holder, host, pid, acquired_ms, process_start FROM locks WHERE pipeline = $1 AND environment = $2",
                &[pipeline.into(), environment.into()],
            )
            .await?;
        Ok(rows.first().map(|r| {
            (
                Holder {
                    name: r.text(0).unwrap_or_default(),
                    host: r.text(1).unwrap_or_default(),
                    pid: r.int(2).unwrap_or(0) as u32,
                    process_start: r.text(4),
                },
                r.int(3).unwrap_or(0),
            )
        }))
    }

    /// The unfinished run of a pipeline and environment, if there is one.
    pub async fn open_run(
        &self,
        pipeline: &str,
        environment: &str,
    ) -> Result<Option<i64>, StateError> {
        let rows = self
            .query(
                "SELECT id FROM runs WHERE pipeline = $1 AND environment = $2 AND finished_ms IS NULL ORDER BY id DESC LIMIT 1",
                &[pipeline.into(), environment.into()],
            )
            .await?;
        Ok(rows.first().and_then(|r| r.int(0)))
    }

    /// Starts a run, or returns the unfinished one of this pipeline and environment so the
    /// caller resumes it. The boolean says whether the run is resumed.
    pub async fn begin_run(
        &self,
        pipeline: &str,
        environment: &str,
    ) -> Result<(i64, bool), StateError> {
        if let Some(id) = self.open_run(pipeline, environment).await? {
            return Ok((id, true));
        }
        let rows = self
            .query(
                "INSERT INTO runs (pipeline, environment, started_ms) VALUES ($1, $2, $3) RETURNING id",
                &[pipeline.into(), environment.into(), now_ms().into()],
            )
            .await?;
        Ok((rows[0].int(0).expect("RETURNING gives the id"), false))
    }

    /// Marks a run finished with its outcome (`deployed`, `failed`…).
    pub async fn finish_run(&self, run: i64, outcome: &str) -> Result<(), StateError> {
        self.query(
            "UPDATE runs SET finished_ms = $2, outcome = $3 WHERE id = $1",
            &[run.into(), now_ms().into(), outcome.into()],
        )
        .await?;
        Ok(())
    }

    /// The runs of a pipeline and environment, newest first.
    pub async fn runs(
        &self,
        pipeline: &str,
        environment: &str,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StateError> {
        let rows = self
            .query(
                "SELECT id, started_ms, finished_ms, outcome FROM runs WHERE pipeline = $1 AND environment = $2 ORDER BY id DESC LIMIT $3",
                &[pipeline.into(), environment.into(), (limit as i64).into()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| RunRecord {
                id: r.int(0).unwrap_or(0),
                started_ms: r.int(1).unwrap_or(0),
                finished_ms: r.int(2),
                outcome: r.text(3),
            })
            .collect())
    }

    /// Saves a service's checkpoint within a run (any serialised rollout state), replacing the
    /// previous one atomically.
    pub async fn save_checkpoint(
        &self,
        run: i64,
        service: &str,
        data: &str,
    ) -> Result<(), StateError> {
        let (sql, params) = checkpoint_write(run, service, data);
        self.query(sql, &params).await?;
        Ok(())
    }

    /// Saves a checkpoint and appends the history row of the step it records, in one
    /// transaction: a crash between the two can neither lose the row nor, on resume, repeat it.
    pub async fn save_checkpoint_and_record(
        &self,
        run: i64,
        data: &str,
        history: &HistoryEntry<'_>,
    ) -> Result<(), StateError> {
        let checkpoint = checkpoint_write(run, history.service, data);
        let row = revision_write(history, Some(run));
        self.backend
            .write_all(&self.location, &[checkpoint, row])
            .await
    }

    /// A service's last checkpoint in a run.
    pub async fn checkpoint(&self, run: i64, service: &str) -> Result<Option<String>, StateError> {
        let rows = self
            .query(
                "SELECT data FROM checkpoints WHERE run_id = $1 AND service = $2",
                &[run.into(), service.into()],
            )
            .await?;
        Ok(rows.first().and_then(|r| r.text(0)))
    }

    /// Appends to a service's revision history.
    pub async fn record_revision(
        &self,
        pipeline: &str,
        environment: &str,
        service: &str,
        run: Option<i64>,
        record: &RevisionRecord,
    ) -> Result<(), StateError> {
        let history = HistoryEntry {
            pipeline,
            environment,
            service,
            record,
        };
        let (sql, params) = revision_write(&history, run);
        self.query(sql, &params).await?;
        Ok(())
    }

    /// A service's revision history, newest first.
    pub async fn history(
        &self,
        pipeline: &str,
        environment: &str,
        service: &str,
    ) -> Result<Vec<RevisionRecord>, StateError> {
        let rows = self
            .query(
                "SELECT revision, run_id, recorded_ms, traffic, outcome, detail, release_digest FROM revisions
                 WHERE pipeline = $1 AND environment = $2 AND service = $3 ORDER BY id DESC",
                &[pipeline.into(), environment.into(), service.into()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| RevisionRecord {
                revision: r.text(0).unwrap_or_default(),
                run_id: r.int(1),
                recorded_ms: r.int(2).unwrap_or(0),
                traffic: r.int(3).unwrap_or(0).clamp(0, 100) as u8,
                outcome: r.text(4).unwrap_or_default(),
                // Again on the way out: a record may predate the value's registration.
                detail: r.text(5).map(|d| redactor().redact(&d)),
                release: r.text(6),
            })
            .collect())
    }
}
