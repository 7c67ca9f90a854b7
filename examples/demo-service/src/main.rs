//! The quickstart's demo service: answers `GET /` with its name and version, and `/healthz`
//! (or `/health`) with `ok`. Its arguments make a release good or bad: `--error-rate 0.2` answers one request
//! in five with a 500, `--latency-ms 300` delays every answer.
//!
//! The local platform starts it with `PORT` set; `--port` overrides that. With `--load URL` it
//! is a small load generator instead, printing each second which versions answered.

use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The service's name, shown in its answers
    #[arg(long, default_value = "demo")]
    name: String,
    /// The release this process plays, shown in its answers
    #[arg(long = "release", default_value = "v1")]
    release: String,
    /// Share of `GET /` answered with 500, from 0 to 1 (`/healthz` and `/health` always answer 200)
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Milliseconds added to every answer
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// The port to listen on (127.0.0.1)
    #[arg(long, env = "PORT", required_unless_present = "load")]
    port: Option<u16>,
    /// Instead of serving, send requests to this URL and print, every second, how many answers
    /// came from each version (to watch a canary's weights move)
    #[arg(long, value_name = "URL")]
    load: Option<String>,
    /// Requests per second in `--load` mode
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Requests handled at once
    #[arg(long, default_value_t = 32)]
    threads: usize,
}

/// Decides which requests fail so that exactly `rate` of them do, spread evenly: request n
/// fails when floor(n·rate) moves past floor((n−1)·rate).
struct ErrorBudget {
    rate: f64,
    served: AtomicU64,
}

impl ErrorBudget {
    fn next_fails(&self) -> bool {
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        (n as f64 * self.rate).floor() > ((n - 1) as f64 * self.rate).floor()
    }
}

/// `--load URL`: a steady stream of requests and a line per second of who answered.
fn load(url: &str, rate: u32) -> ! {
    let pause = Duration::from_secs(1) / rate.max(1);
    loop {
        let mut seen: std::collections::BTreeMap<String, u32> = Default::default();
        let second = std::time::Instant::now();
        while second.elapsed() < Duration::from_secs(1) {
            let answer = match ureq_get(url) {
                Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["version"].as_str().map(String::from))
                    .unwrap_or_else(|| "other".into()),
                Ok((status, _)) => format!("HTTP {status}"),
                Err(e) => format!("no answer ({e})"),
            };
            *seen.entry(answer).or_default() += 1;
            std::thread::sleep(pause);
        }
        let line: Vec<String> = seen.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!("{}", line.join("  "));
    }
}

/// A plain HTTP/1.1 GET over a TCP socket: the load mode needs no client library.
fn ureq_get(url: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host.replace("localhost", "127.0.0.1"))
        .map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("not an HTTP answer")?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

fn main() {
    let args = Args::parse();
    if let Some(url) = &args.load {
        load(url, args.rate);
    }
    let port = args
        .port
        .expect("clap requires --port or PORT without --load");
    if !(0.0..=1.0).contains(&args.error_rate) {
        eprintln!(
            "error: --error-rate must be between 0 and 1, not {}",
            args.error_rate
        );
        std::process::exit(2);
    }
    let server = match tiny_http::Server::http(("127.0.0.1", port)) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("error: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "{} {} listening on 127.0.0.1:{} (error rate {}, latency {} ms)",
        args.name, args.release, port, args.error_rate, args.latency_ms
    );
    let budget = Arc::new(ErrorBudget {
        rate: args.error_rate,
        served: AtomicU64::new(0),
    });
    let args = Arc::new(args);
    let workers: Vec<_> = (0..args.threads.max(1))
        .map(|_| {
            let (server, budget, args) = (server.clone(), budget.clone(), args.clone());
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    if args.latency_ms > 0 {
                        std::thread::sleep(Duration::from_millis(args.latency_ms));
                    }
                    let (status, body) = match request.url() {
                        "/healthz" | "/health" => (200, "ok\n".to_string()),
                        "/" if budget.next_fails() => (
                            500,
                            format!(
                                "{} {} failed this request on purpose\n",
                                args.name, args.release
                            ),
                        ),
                        "/" => (
                            200,
                            serde_json::json!({ "service": args.name, "version": args.release })
                                .to_string(),
                        ),
                        _ => (404, "not found\n".to_string()),
                    };
                    let response = tiny_http::Response::from_string(body).with_status_code(status);
                    let _ = request.respond(response);
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_budget_fails_exactly_the_asked_share_evenly() {
        let budget = ErrorBudget {
            rate: 0.2,
            served: AtomicU64::new(0),
        };
        let fails: Vec<bool> = (0..10).map(|_| budget.next_fails()).collect();
        assert_eq!(fails.iter().filter(|f| **f).count(), 2);
        assert_eq!(
            fails[..5].iter().filter(|f| **f).count(),
            1,
            "spread, not bunched"
        );
        let none = ErrorBudget {
            rate: 0.0,
            served: AtomicU64::new(0),
        };
        assert!((0..100).all(|_| !none.next_fails()));
    }
}
