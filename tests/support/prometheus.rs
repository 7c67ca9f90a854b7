//! A real Prometheus server (Debian's `prometheus` package) for the tests of the `metrics`
//! check's Prometheus source: one private server per test, on a free loopback port, scraping
//! the given targets every second.
//!
//! Its parent is a shell that waits on a pipe from this process: when the `Prometheus` value is
//! dropped, or the test process ends in whatever way, the pipe closes and the shell stops the
//! server and deletes its directory.

use std::net::SocketAddr;
use std::process::{Child, Command};

pub struct Prometheus {
    /// The API's base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    guard: Child,
}

fn binary() -> String {
    let found = Command::new("prometheus")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "the Prometheus tests need the prometheus binary: install it (`apt-get install prometheus`, as .ci/run does)"
    );
    "prometheus".into()
}

impl Prometheus {
    /// Starts a server scraping `targets` (their `/metrics`) every second, and waits until it
    /// is ready.
    pub async fn start(targets: &[SocketAddr]) -> Prometheus {
        let binary = binary();
        let port = super::free_port();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: engine\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let start = format!(
            r#"cat >"$dir/prometheus.yml" <<'YAML'
{config}YAML
{binary} --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
  --web.listen-address=127.0.0.1:{port} --log.level=warn >"$dir/server.log" 2>&1 &"#
        );
        let guard = super::guarded_server("prometheus", &start);
        let url = format!("http://127.0.0.1:{port}");
        super::wait_until_ready(&format!("{url}/-/ready"), "the Prometheus test server").await;
        Prometheus { url, guard }
    }

    /// The value of an instant query that returns one series or a scalar; None without data.
    pub async fn value(&self, query: &str) -> Option<f64> {
        let answer: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let text = match answer["data"]["resultType"].as_str()? {
            "scalar" => answer["data"]["result"][1].as_str()?.to_string(),
            _ => answer["data"]["result"][0]["value"][1]
                .as_str()?
                .to_string(),
        };
        text.parse().ok().filter(|v: &f64| !v.is_nan())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        super::stop_guarded(&mut self.guard);
    }
}
