//! The quickstart's demo service: answers `GET /` with its name and version, and `/healthz`
//! with `ok`. Its arguments make a release good or bad: `--error-rate 0.2` answers one request
//! in five with a 500, `--latency-ms 300` delays every answer.
//!
//! The local platform starts it with `PORT` set; `--port` overrides that.

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
    /// Share of `GET /` answered with 500, from 0 to 1 (`/healthz` always answers 200)
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Milliseconds added to every answer
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// The port to listen on (127.0.0.1)
    #[arg(long, env = "PORT")]
    port: u16,
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

fn main() {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.error_rate) {
        eprintln!(
            "error: --error-rate must be between 0 and 1, not {}",
            args.error_rate
        );
        std::process::exit(2);
    }
    let server = match tiny_http::Server::http(("127.0.0.1", args.port)) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("error: cannot listen on 127.0.0.1:{}: {e}", args.port);
            std::process::exit(1);
        }
    };
    println!(
        "{} {} listening on 127.0.0.1:{} (error rate {}, latency {} ms)",
        args.name, args.release, args.port, args.error_rate, args.latency_ms
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
                        "/healthz" => (200, "ok\n".to_string()),
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
