//! A real PostgreSQL server for the tests that need one.
//!
//! With `ENGINE_TEST_POSTGRES_URL` set (a server someone else runs), that server is used.
//! Otherwise the first test that asks starts a private server from the installed PostgreSQL
//! binaries (Debian's `postgresql` package), in a temporary directory, on a free loopback port.
//! Its parent is a shell that waits on a pipe from this process: when the test process ends, in
//! whatever way, the pipe closes and the shell stops the server and deletes its directory.
//! Each test gets a database of its own.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The server: its admin URL (database `postgres`) and the shell that owns it.
struct Server {
    admin_url: String,
    _guard: Option<Mutex<Child>>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The directory of `initdb` and `postgres`.
fn binaries() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> Server {
    if let Ok(url) = std::env::var("ENGINE_TEST_POSTGRES_URL") {
        return Server {
            admin_url: url,
            _guard: None,
        };
    }
    let bin = binaries().unwrap_or_else(|| {
        panic!(
            "the PostgreSQL tests need PostgreSQL: install it (`apt-get install postgresql`, as .ci/run does) \
             or point ENGINE_TEST_POSTGRES_URL at a server where the user may create databases"
        )
    });
    let port = free_port();
    let script = format!(
        r#"set -e
dir=$(mktemp -d /tmp/engine-test-pg-XXXXXX)
"{bin}/initdb" -D "$dir/data" -U engine --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 || {{ cat "$dir/initdb.log" >&2; exit 1; }}
"{bin}/postgres" -D "$dir/data" -p {port} -k "$dir" -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 >"$dir/server.log" 2>&1 &
pid=$!
read _ || true
kill -INT $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
rm -rf "$dir"
"#,
        bin = bin.display()
    );
    // initdb refuses to run as root; Debian's package creates the `postgres` user for this.
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut command = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    let child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the PostgreSQL test server");
    let admin_url = format!("postgres://engine@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the PostgreSQL test server did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Server {
        admin_url,
        _guard: Some(Mutex::new(child)),
    }
}

/// A fresh, empty database on the test server; returns its URL.
pub async fn database() -> String {
    let server = SERVER.get_or_init(start);
    let name = format!("engine_test_{}", rand_suffix());
    // The server may accept connections a moment before it accepts logins.
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        match tokio_postgres::connect(&server.admin_url, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                break client;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot reach the PostgreSQL test server: {e}"),
        }
    };
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    let (base, _) = server
        .admin_url
        .rsplit_once('/')
        .expect("a URL with a path");
    format!("{base}/{name}")
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

/// Keeps `stdin` of the guard open for the life of the process (dropping `Server` never happens:
/// it lives in a static), and lets a test stop the server early if it must.
#[allow(dead_code)]
pub fn stop() {
    if let Some(Server {
        _guard: Some(child),
        ..
    }) = SERVER.get()
    {
        let mut child = child.lock().unwrap();
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = stdin.write_all(b"stop\n");
        }
        let _ = child.wait();
    }
}
