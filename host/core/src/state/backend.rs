//! The two databases behind [`super::Store`]: a SQLite file (the default, no server) and
//! PostgreSQL (shared by CI machines). The store writes its SQL once, with `$1`-style
//! parameters and the syntax both understand (`ON CONFLICT`, `RETURNING`); a backend only
//! connects, migrates, binds values and takes the pipeline lock its own way.

use super::StateError;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// A value bound to a parameter or read from a column. Nulls carry their type because
/// PostgreSQL checks parameter types.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(Option<i64>),
    Text(Option<String>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(Some(v))
    }
}
impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Value {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(Some(v.to_string()))
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(Some(v))
    }
}
impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Value {
        Value::Text(v)
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    pub fn int(&self, i: usize) -> Option<i64> {
        match &self.0[i] {
            Value::Int(v) => *v,
            Value::Text(v) => v.as_deref().and_then(|t| t.parse().ok()),
        }
    }
    pub fn text(&self, i: usize) -> Option<String> {
        match &self.0[i] {
            Value::Text(v) => v.clone(),
            Value::Int(v) => v.map(|n| n.to_string()),
        }
    }
}

/// Where the state lives, as given to `--state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` connection URL.
    Postgres(String),
}

impl Location {
    /// A connection URL is PostgreSQL; anything else is a SQLite file path.
    pub fn parse(text: &str) -> Location {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Location::Postgres(text.to_string())
        } else {
            Location::Sqlite(PathBuf::from(text))
        }
    }

    /// The default for a pipeline file: `.engine/state.db` beside it.
    pub fn beside(pipeline_file: &Path) -> Location {
        Location::Sqlite(
            pipeline_file
                .parent()
                .unwrap_or(Path::new("."))
                .join(".engine")
                .join("state.db"),
        )
    }
}

impl std::fmt::Display for Location {
    /// The path, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => match reqwest::Url::parse(url) {
                Ok(mut u) if u.password().is_some() => {
                    let _ = u.set_password(Some("***"));
                    write!(f, "{u}")
                }
                _ => write!(f, "{url}"),
            },
        }
    }
}

pub enum Backend {
    Sqlite(Mutex<rusqlite::Connection>),
    /// Behind a lock so that a transaction's statements are not interleaved with another
    /// task's on the one connection.
    Postgres(tokio::sync::Mutex<tokio_postgres::Client>),
}

/// The schema version this code writes; older databases are migrated forward when opened.
pub const SCHEMA_VERSION: i64 = 4;

/// Version 2: a lock records its holder's process start, so a reused PID is not taken for it.
const SCHEMA_V2: &str = "ALTER TABLE locks ADD COLUMN process_start TEXT;";

/// Version 3: a history row records the release (spec digest) its run deployed, so that a
/// rerun of a rejected release is recognised.
const SCHEMA_V3: &str = "ALTER TABLE revisions ADD COLUMN release_digest TEXT;";

/// Version 4: the resources (provisioning steps) a pipeline's runs applied, and whether the
/// engine created each, so that `destroy` deletes only what it created.
const SCHEMA_V4: &str = "
CREATE TABLE resources (
    pipeline    TEXT NOT NULL,
    environment TEXT NOT NULL,
    name        TEXT NOT NULL,
    provider    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    platform_id TEXT NOT NULL,
    spec        TEXT NOT NULL,
    config      TEXT NOT NULL,
    outputs     TEXT NOT NULL,
    created     BIGINT NOT NULL,
    digest      TEXT NOT NULL,
    run_id      BIGINT,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (pipeline, environment, name)
);";

const SQLITE_SCHEMA_V1: &str = "
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

/// The same tables in PostgreSQL's types (every integer a BIGINT, read back as i64).
const POSTGRES_SCHEMA_V1: &str = "
CREATE TABLE engine_schema (version BIGINT NOT NULL);
CREATE TABLE runs (
    id          BIGSERIAL PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    environment TEXT NOT NULL,
    started_ms  BIGINT NOT NULL,
    finished_ms BIGINT,
    outcome     TEXT
);
CREATE INDEX runs_by_pipeline ON runs (pipeline, environment, id);
CREATE TABLE checkpoints (
    run_id     BIGINT NOT NULL REFERENCES runs (id),
    service    TEXT NOT NULL,
    data       TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (run_id, service)
);
CREATE TABLE revisions (
    id          BIGSERIAL PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    revision    TEXT NOT NULL,
    run_id      BIGINT REFERENCES runs (id),
    recorded_ms BIGINT NOT NULL,
    traffic     BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX revisions_by_service ON revisions (pipeline, environment, service, id);
CREATE TABLE locks (
    pipeline    TEXT NOT NULL,
    environment TEXT NOT NULL,
    holder      TEXT NOT NULL,
    host        TEXT NOT NULL,
    pid         BIGINT NOT NULL,
    acquired_ms BIGINT NOT NULL,
    PRIMARY KEY (pipeline, environment)
);
";

/// SQLite's `?NNN` is PostgreSQL's `$NNN`.
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

fn sqlite_params(params: &[Value]) -> rusqlite::ParamsFromIter<Vec<rusqlite::types::Value>> {
    let bound: Vec<rusqlite::types::Value> = params
        .iter()
        .map(|v| match v {
            Value::Int(Some(n)) => rusqlite::types::Value::Integer(*n),
            Value::Text(Some(t)) => rusqlite::types::Value::Text(t.clone()),
            _ => rusqlite::types::Value::Null,
        })
        .collect();
    rusqlite::params_from_iter(bound)
}

type PostgresParam = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

fn postgres_params(params: &[Value]) -> Vec<PostgresParam> {
    params
        .iter()
        .map(|v| -> PostgresParam {
            match v {
                Value::Int(n) => Box::new(*n),
                Value::Text(t) => Box::new(t.clone()),
            }
        })
        .collect()
}

fn postgres_refs(owned: &[PostgresParam]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    owned
        .iter()
        .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

/// How long opening a SQLite state keeps trying while other engines open it too.
const OPEN_BUSY_FOR: Duration = Duration::from_secs(10);

/// Calls `step` again (after a few milliseconds, with jitter so that engines retrying together
/// do not collide again) while SQLite answers that the database is busy. The busy timeout covers
/// most waits, but SQLite answers some at once instead of waiting (switching a new file to WAL
/// while other connections open it, a lock upgrade that could deadlock): engines opening a new
/// state together then wait their turn here.
fn while_busy<T>(mut step: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + OPEN_BUSY_FOR;
    loop {
        match step() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10 + rand::random::<u64>() % 20));
            }
            other => return other,
        }
    }
}

fn sqlite_error(location: &Location) -> impl Fn(rusqlite::Error) -> StateError + '_ {
    move |e| StateError::Database {
        location: location.to_string(),
        message: e.to_string(),
    }
}

fn postgres_error(location: &Location) -> impl Fn(tokio_postgres::Error) -> StateError + '_ {
    move |e| {
        // The driver's Display hides the server's message behind "db error".
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => match std::error::Error::source(&e) {
                Some(source) => format!("{e}: {source}"),
                None => e.to_string(),
            },
        };
        StateError::Database {
            location: location.to_string(),
            message,
        }
    }
}

impl Backend {
    pub async fn open(location: &Location) -> Result<Backend, StateError> {
        match location {
            Location::Sqlite(path) => Self::open_sqlite(location, path),
            Location::Postgres(url) => Self::open_postgres(location, url).await,
        }
    }

    fn open_sqlite(location: &Location, path: &Path) -> Result<Backend, StateError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StateError::Directory {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let db = sqlite_error(location);
        let mut conn = rusqlite::Connection::open(path).map_err(&db)?;
        // First: every statement below may meet another engine opening the same file.
        conn.busy_timeout(Duration::from_secs(10)).map_err(&db)?;
        // WAL lets `engine status` read while a run writes.
        while_busy(|| conn.pragma_update(None, "journal_mode", "WAL")).map_err(&db)?;
        // In WAL mode NORMAL survives any crash of the process (kill -9 included); only a power
        // loss may drop the last commits, and resuming then repeats a step, which every provider
        // call and strategy step must tolerate anyway. FULL would cost an fsync per checkpoint.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(&db)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(&db)?;
        Self::migrate_sqlite(location, &mut conn)?;
        Ok(Backend::Sqlite(Mutex::new(conn)))
    }

    /// Creates the schema if the file has none, inside one write transaction: of engines
    /// opening a new file at once, the first creates it and the others, waiting on the busy
    /// timeout, find it made (the version read outside the transaction would be stale).
    fn migrate_sqlite(
        location: &Location,
        conn: &mut rusqlite::Connection,
    ) -> Result<(), StateError> {
        match while_busy(|| Self::migrate_sqlite_schema(conn)) {
            Ok(None) => Ok(()),
            Ok(Some(found)) => Err(StateError::TooNew {
                location: location.to_string(),
                found,
            }),
            Err(e) => Err(sqlite_error(location)(e)),
        }
    }

    /// Creates or upgrades the schema in one write transaction; a version newer than this
    /// engine's is returned, not touched.
    fn migrate_sqlite_schema(conn: &mut rusqlite::Connection) -> rusqlite::Result<Option<i64>> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Ok(Some(version));
        }
        if version < 1 {
            tx.execute_batch(SQLITE_SCHEMA_V1)?;
        }
        if version < 2 {
            tx.execute_batch(&format!("{SCHEMA_V2} PRAGMA user_version = 2;"))?;
        }
        if version < 3 {
            tx.execute_batch(&format!("{SCHEMA_V3} PRAGMA user_version = 3;"))?;
        }
        if version < 4 {
            tx.execute_batch(&format!("{SCHEMA_V4} PRAGMA user_version = 4;"))?;
        }
        tx.commit()?;
        Ok(None)
    }

    async fn open_postgres(location: &Location, url: &str) -> Result<Backend, StateError> {
        let db = postgres_error(location);
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(&db)?;
        // The connection does the I/O; it ends when the client is dropped, and with it the
        // session and any lock the session holds.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("PostgreSQL state connection ended: {e}");
            }
        });
        // Two engines opening a fresh database at once: the advisory lock lets one migrate.
        client
            .batch_execute(
                "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('engine:schema', 0));",
            )
            .await
            .map_err(&db)?;
        let exists: bool = client
            .query_one("SELECT to_regclass('engine_schema') IS NOT NULL", &[])
            .await
            .map_err(&db)?
            .get(0);
        let version: i64 = if exists {
            client
                .query_opt("SELECT version FROM engine_schema", &[])
                .await
                .map_err(&db)?
                .map_or(0, |r| r.get(0))
        } else {
            0
        };
        if version > SCHEMA_VERSION {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(StateError::TooNew {
                location: location.to_string(),
                found: version,
            });
        }
        if version < 1 {
            client
                .batch_execute(&format!(
                    "{POSTGRES_SCHEMA_V1} INSERT INTO engine_schema (version) VALUES (1);"
                ))
                .await
                .map_err(&db)?;
        }
        for (below, migration) in [(2, SCHEMA_V2), (3, SCHEMA_V3), (4, SCHEMA_V4)] {
            if version < below {
                client
                    .batch_execute(&format!(
                        "{migration} UPDATE engine_schema SET version = {below};"
                    ))
                    .await
                    .map_err(&db)?;
            }
        }
        client.batch_execute("COMMIT").await.map_err(&db)?;
        Ok(Backend::Postgres(tokio::sync::Mutex::new(client)))
    }

    /// Runs a statement; returns the rows it produced (for `SELECT` and `RETURNING`).
    pub async fn query(
        &self,
        location: &Location,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<Row>, StateError> {
        match self {
            Backend::Sqlite(conn) => {
                let db = sqlite_error(location);
                let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                let mut stmt = conn.prepare_cached(&sqlite_sql(sql)).map_err(&db)?;
                let columns = stmt.column_count();
                let mut rows = stmt.query(sqlite_params(params)).map_err(&db)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(&db)? {
                    let mut values = Vec::with_capacity(columns);
                    for i in 0..columns {
                        use rusqlite::types::ValueRef;
                        values.push(match row.get_ref(i).map_err(&db)? {
                            ValueRef::Integer(n) => Value::Int(Some(n)),
                            ValueRef::Null => Value::Text(None),
                            ValueRef::Text(t) => {
                                Value::Text(Some(String::from_utf8_lossy(t).into_owned()))
                            }
                            ValueRef::Real(r) => Value::Int(Some(r as i64)),
                            ValueRef::Blob(b) => {
                                Value::Text(Some(String::from_utf8_lossy(b).into_owned()))
                            }
                        });
                    }
                    out.push(Row(values));
                }
                Ok(out)
            }
            Backend::Postgres(client) => {
                use tokio_postgres::types::Type;
                let db = postgres_error(location);
                let owned = postgres_params(params);
                let rows = client
                    .lock()
                    .await
                    .query(sql, &postgres_refs(&owned))
                    .await
                    .map_err(&db)?;
                Ok(rows
                    .iter()
                    .map(|row| {
                        Row(row
                            .columns()
                            .iter()
                            .enumerate()
                            .map(|(i, c)| match *c.type_() {
                                Type::INT8 => Value::Int(row.get(i)),
                                Type::INT4 => {
                                    Value::Int(row.get::<_, Option<i32>>(i).map(i64::from))
                                }
                                Type::BOOL => {
                                    Value::Int(row.get::<_, Option<bool>>(i).map(i64::from))
                                }
                                _ => Value::Text(row.get(i)),
                            })
                            .collect())
                    })
                    .collect())
            }
        }
    }

    /// Runs statements that write, all or none: in one transaction.
    pub async fn write_all(
        &self,
        location: &Location,
        statements: &[(&str, Vec<Value>)],
    ) -> Result<(), StateError> {
        match self {
            Backend::Sqlite(conn) => {
                let db = sqlite_error(location);
                let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                let tx = conn.transaction().map_err(&db)?;
                for (sql, params) in statements {
                    tx.prepare_cached(&sqlite_sql(sql))
                        .and_then(|mut stmt| stmt.execute(sqlite_params(params)))
                        .map_err(&db)?;
                }
                tx.commit().map_err(&db)
            }
            Backend::Postgres(client) => {
                let db = postgres_error(location);
                let mut client = client.lock().await;
                let tx = client.transaction().await.map_err(&db)?;
                for (sql, params) in statements {
                    let owned = postgres_params(params);
                    tx.execute(*sql, &postgres_refs(&owned))
                        .await
                        .map_err(&db)?;
                }
                tx.commit().await.map_err(&db)
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }
}
