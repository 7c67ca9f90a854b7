//! A provider plugin that misbehaves on purpose, for the host's sandbox tests.
//!
//! `read` takes its orders from the service's config: `{"mode": "...", ...}`. Modes that probe
//! a capability report what happened in `ServiceStatus.deployed` as
//! `{"outcome": "ok" | "err", "detail": "..."}` so the test can assert the exact result; modes
//! that attack the host (loops, memory, traps) never return.

use engine_sdk::http::Client;
use engine_sdk::secrets::Secret;
use engine_sdk::{
    Capabilities, DeploymentPlan, Diagnostic, DirNeed, Endpoint, Error, ErrorExt, PlanAction,
    PluginInfo, Provider, Revision, ServiceRef, ServiceSpec, ServiceStatus, TrafficTarget,
};
use serde_json::{Value, json};

mod leftovers;
mod raw;

pub struct Hostile;

fn report(result: Result<String, String>) -> Option<ServiceStatus> {
    let (outcome, detail) = match result {
        Ok(d) => ("ok", d),
        Err(d) => ("err", d),
    };
    Some(ServiceStatus {
        revisions: Vec::new(),
        traffic: Vec::new(),
        url: None,
        deployed: json!({ "outcome": outcome, "detail": detail }).to_string(),
    })
}

fn arg<'a>(config: &'a Value, key: &str) -> &'a str {
    config.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// A status with one ready revision of this id and nothing else.
fn one_revision(id: String) -> ServiceStatus {
    ServiceStatus {
        revisions: vec![Revision {
            id,
            artifact: None,
            created_at_ms: None,
            ready: true,
            message: None,
        }],
        traffic: Vec::new(),
        url: None,
        deployed: "{}".into(),
    }
}

/// The secret named in `secret` as `url` reflects it (`reversed = true`: the server sends it
/// backwards, a spelling the host cannot recognise, and it is turned the right way round here).
fn reflected(config: &Value) -> Result<String, Error> {
    let secret = Secret::open(arg(config, "secret"))?;
    let text = Client::new()
        .with_retry(engine_sdk::http::RetryPolicy::none())
        .get(arg(config, "url"))
        .bearer(&secret)
        .send()?
        .text();
    Ok(match config["reversed"].as_bool() {
        Some(true) => text.chars().rev().collect(),
        _ => text,
    })
}

/// Passes a reflected secret on to `to`, in the `place` given: its query, a header or a body.
fn relay(config: &Value) -> Result<String, String> {
    let value = reflected(config).map_err(|e| e.describe())?;
    let client = Client::new().with_retry(engine_sdk::http::RetryPolicy::none());
    let to = arg(config, "to");
    let request = match arg(config, "place") {
        "query" => client.get(&format!("{to}?v={value}")),
        "header" => client.get(to).header("x-relay", value.clone()),
        _ => {
            let mut body = vec![b'x'; 100_000];
            body.extend_from_slice(value.as_bytes());
            body.extend_from_slice(&[b'y'; 100]);
            client.post(to).body(body)
        }
    };
    request
        .send()
        .map(|r| format!("{} {}", r.status, r.text()))
        .map_err(|e| e.describe())
}

impl Provider for Hostile {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Misbehaves on purpose, for sandbox tests".into(),
            config_schema: r#"{"type":"object"}"#.into(),
            features: Vec::new(),
            capabilities: Capabilities {
                http: vec!["http://*:*".into(), "https://kubernetes.invalid".into()],
                env: vec!["HOSTILE_GRANTED".into(), "PATH".into()],
                dirs: vec![DirNeed {
                    path: "/data".into(),
                    writable: true,
                    purpose: "sandbox tests".into(),
                }],
                secrets: vec!["token".into()],
            },
        }
    }

    /// With `in_validate = true` in its config, carries out its orders while being validated
    /// (as `engine validate` in a pull request would run it) and reports the outcome.
    fn validate(spec: ServiceSpec) -> Vec<Diagnostic> {
        let config: Value = serde_json::from_str(&spec.config).unwrap_or_default();
        if config["in_validate"] != Value::Bool(true) {
            return Vec::new();
        }
        let outcome = Self::read(ServiceRef {
            name: spec.name,
            config: spec.config,
        });
        vec![Diagnostic {
            severity: engine_sdk::Severity::Warning,
            path: "mode".into(),
            message: format!("carried out in validate: {outcome:?}"),
            hint: None,
        }]
    }

    fn read(service: ServiceRef) -> Result<Option<ServiceStatus>, Error> {
        let config: Value = serde_json::from_str(&service.config)
            .map_err(|e| Error::invalid_config(e.to_string()))?;
        match arg(&config, "mode") {
            "ok" => Ok(report(Ok("fine".into()))),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory-bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 8 << 20]));
                }
            }
            "read-file" => Ok(report(
                std::fs::read_to_string(arg(&config, "path")).map_err(|e| e.to_string()),
            )),
            "write-file" => Ok(report(
                std::fs::write(arg(&config, "path"), b"written by the hostile plugin")
                    .map(|()| "written".to_string())
                    .map_err(|e| e.to_string()),
            )),
            "list-dir" => Ok(report(
                std::fs::read_dir(arg(&config, "path"))
                    .map(|entries| {
                        let mut names: Vec<String> = entries
                            .filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect();
                        names.sort();
                        names.join(",")
                    })
                    .map_err(|e| e.to_string()),
            )),
            "env" => Ok(report(
                std::env::var(arg(&config, "name")).map_err(|e| e.to_string()),
            )),
            "env-all" => Ok(report(Ok(std::env::vars()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
                .join(",")))),
            "http" => {
                let client = Client::new().with_retry(engine_sdk::http::RetryPolicy::none());
                let mut request = client.get(arg(&config, "url"));
                if let Some(name) = config.get("secret").and_then(Value::as_str) {
                    let secret = Secret::open(name)?;
                    request = request.bearer(&secret);
                }
                Ok(report(
                    request
                        .send()
                        .map(|r| format!("{} {}", r.status, r.text()))
                        .map_err(|e| e.describe()),
                ))
            }
            "post" => Ok(report(
                Client::new()
                    .with_retry(engine_sdk::http::RetryPolicy::none())
                    .post(arg(&config, "url"))
                    .json(&json!({"mutate": true}))
                    .send()
                    .map(|r| format!("{} {}", r.status, r.text()))
                    .map_err(|e| e.describe()),
            )),
            "leak-secret" => {
                // Gets the value reflected back by an echo server, then tries every way out.
                let secret = Secret::open(arg(&config, "secret"))?;
                let echoed = Client::new()
                    .get(arg(&config, "url"))
                    .bearer(&secret)
                    .send()?
                    .text();
                println!("stdout: {echoed}");
                eprintln!("stderr: {echoed}");
                engine_sdk::log::write(
                    engine_sdk::log::Level::Warn,
                    &format!("log: {echoed}"),
                    &[("echoed", &echoed)],
                );
                Err(Error::fatal(format!("error: {echoed}")))
            }
            "relay" => Ok(report(relay(&config))),
            "aws-signed" => {
                // An AWS JSON-protocol call the host signs; `sign_header` (raw) replaces the
                // SDK's header value, to try malformed or borrowed ones.
                let secret = Secret::open(arg(&config, "secret"))?;
                let value = match config.get("sign_header").and_then(Value::as_str) {
                    Some(raw) => raw.replace("PLACEHOLDER", secret.placeholder()),
                    None => secret.aws_sigv4(arg(&config, "service"), arg(&config, "region")),
                };
                Ok(report(
                    Client::new()
                        .with_retry(engine_sdk::http::RetryPolicy::none())
                        .post(arg(&config, "url"))
                        .header("content-type", "application/x-amz-json-1.1")
                        .header(
                            "x-amz-target",
                            match arg(&config, "target") {
                                "" => "AmazonEC2ContainerServiceV20141113.DescribeClusters",
                                target => target,
                            },
                        )
                        .header("x-engine-aws-sigv4", value)
                        .body(r#"{"clusters":["default"]}"#)
                        .send()
                        .map(|r| format!("{} {}", r.status, r.text()))
                        .map_err(|e| e.to_string()),
                ))
            }
            "cluster" => {
                // A request to the cluster a kubeconfig grant names (`path`, `method`), or, with
                // `url`, the cluster's header sent elsewhere; `header` (raw, PLACEHOLDER
                // replaced) overrides the header's value, `authorization` adds the plugin's own.
                let secret = Secret::open(arg(&config, "secret"))?;
                let named = match config.get("header").and_then(Value::as_str) {
                    Some(raw) => raw.replace("PLACEHOLDER", secret.placeholder()),
                    None => secret.placeholder().to_string(),
                };
                let url = match arg(&config, "url") {
                    "" => format!("https://kubernetes.invalid{}", arg(&config, "path")),
                    url => url.to_string(),
                };
                let method = match arg(&config, "method") {
                    "" => "GET",
                    m => m,
                };
                let client = Client::new().with_retry(engine_sdk::http::RetryPolicy::none());
                let mut request = client
                    .request(method, &url)
                    .header("x-engine-kubernetes", named);
                if let Some(own) = config.get("authorization").and_then(Value::as_str) {
                    request = request.header("authorization", own);
                }
                Ok(report(
                    request
                        .send_once()
                        .map(|r| format!("{} {}", r.status, r.text()))
                        .map_err(|e| e.to_string()),
                ))
            }
            "post-secret" => {
                // The secret's placeholder in a JSON body; the response as the plugin reads it.
                let secret = Secret::open(arg(&config, "secret"))?;
                let body = json!({ "headers": { "X-Admin-Key": secret.placeholder() } });
                Ok(report(
                    Client::new()
                        .post(arg(&config, "url"))
                        .json(&body)
                        .send()
                        .map(|r| format!("{} {}", r.status, r.text()))
                        .map_err(|e| e.to_string()),
                ))
            }
            "secret-id" => {
                // Returns a reflected secret as a revision id, to be stored and printed.
                Ok(Some(one_revision(reflected(&config)?)))
            }
            "symlink" => Ok(report(raw::symlink(
                arg(&config, "dir"),
                arg(&config, "target"),
                arg(&config, "link"),
            ))),
            "fill-disk" => {
                // Writes `mib` MiB in 1 MiB pieces, then says how far it got.
                let chunk = vec![b'x'; 1 << 20];
                let mut file = std::fs::File::create(arg(&config, "path"))
                    .map_err(|e| Error::fatal(e.to_string()))?;
                for _ in 0..config["mib"].as_u64().unwrap_or(1) {
                    std::io::Write::write_all(&mut file, &chunk)
                        .map_err(|e| Error::fatal(e.to_string()))?;
                }
                Ok(report(Ok("filled".into())))
            }
            "upload" => Ok(report(raw::upload(
                arg(&config, "url"),
                config["mib"].as_u64().unwrap_or(1),
            ))),
            "fan-out" => Ok(report(raw::fan_out(
                arg(&config, "url"),
                config["count"].as_u64().unwrap_or(1) as u32,
            ))),
            "forge-output" => {
                // Lines that would forge CI annotations and drive the terminal, were they
                // printed raw.
                let forged =
                    "fine\n::error file=x::forged\n::stop-commands::t\u{1b}]0;owned\u{7}\u{1b}[2J";
                engine_sdk::log::write(engine_sdk::log::Level::Warn, forged, &[("k", forged)]);
                println!("{forged}");
                Err(Error::fatal(forged))
            }
            "log-flood" => {
                for i in 0..config["lines"].as_u64().unwrap_or(5000) {
                    engine_sdk::log::write(engine_sdk::log::Level::Info, &format!("line {i}"), &[]);
                }
                Ok(report(Ok("flooded".into())))
            }
            "leftovers" => Ok(report(Ok(leftovers::count_then_leave(
                config["grow_mib"].as_u64().unwrap_or(8) as usize,
            )
            .to_string()))),
            "long-id" => Ok(Some(one_revision("r".repeat(70_000)))),
            "panic" => panic!("hostile plugin panicked on purpose"),
            "trap" => {
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[cfg(not(target_arch = "wasm32"))]
                unreachable!()
            }
            "malformed" => Ok(Some(ServiceStatus {
                revisions: Vec::new(),
                traffic: vec![
                    TrafficTarget {
                        revision: "a".into(),
                        percent: 150,
                    },
                    TrafficTarget {
                        revision: "b".into(),
                        percent: 100,
                    },
                ],
                url: None,
                deployed: "{not json".into(),
            })),
            "error" => Err(Error::rate_limited("slow down", Some(1500))),
            other => Err(Error::invalid_config(format!("unknown mode {other:?}"))),
        }
    }

    fn plan(
        _desired: ServiceSpec,
        _current: Option<ServiceStatus>,
    ) -> Result<DeploymentPlan, Error> {
        Ok(DeploymentPlan {
            action: PlanAction::NoChange,
            changes: Vec::new(),
            summary: "nothing".into(),
        })
    }

    fn deploy(_spec: ServiceSpec, deployment_id: String) -> Result<Revision, Error> {
        Ok(Revision {
            id: deployment_id,
            artifact: None,
            created_at_ms: None,
            ready: true,
            message: None,
        })
    }

    fn set_traffic(_service: ServiceRef, _split: Vec<TrafficTarget>) -> Result<(), Error> {
        Ok(())
    }

    fn get_traffic(_service: ServiceRef) -> Result<Vec<TrafficTarget>, Error> {
        Ok(Vec::new())
    }

    fn endpoints(_service: ServiceRef, _revision: Option<String>) -> Result<Vec<Endpoint>, Error> {
        Ok(Vec::new())
    }

    fn retire(_service: ServiceRef, _revision: String) -> Result<(), Error> {
        Ok(())
    }

    fn destroy(_service: ServiceRef) -> Result<(), Error> {
        Ok(())
    }
}

/// Resources whose answers break the contract, by the spec's `mode`: the host must refuse each
/// as malformed output before anything is stored or written into another spec.
impl engine_sdk::ResourceProvider for Hostile {
    fn kinds() -> Vec<engine_sdk::resources::ResourceKind> {
        vec![engine_sdk::resources::ResourceKind {
            name: "hostile-object".into(),
            description: "answers as its spec's mode says".into(),
            spec_schema: r#"{"type":"object"}"#.into(),
            outputs: vec!["value".into()],
        }]
    }

    fn read(
        target: engine_sdk::resources::ResourceSpec,
    ) -> Result<Option<engine_sdk::resources::ResourceStatus>, Error> {
        Ok(Some(hostile_status(&target)))
    }

    fn plan(
        _desired: engine_sdk::resources::ResourceSpec,
        _current: Option<engine_sdk::resources::ResourceStatus>,
    ) -> Result<DeploymentPlan, Error> {
        Ok(DeploymentPlan {
            action: PlanAction::Update,
            changes: Vec::new(),
            summary: "\u{1b}[2Jcleared your terminal\nerror: forged".into(),
        })
    }

    fn apply(
        desired: engine_sdk::resources::ResourceSpec,
        _current: Option<engine_sdk::resources::ResourceStatus>,
    ) -> Result<engine_sdk::resources::ResourceStatus, Error> {
        Ok(hostile_status(&desired))
    }

    fn delete(_target: engine_sdk::resources::ResourceSpec) -> Result<(), Error> {
        Ok(())
    }

    /// Place URLs that would be written into other services' specs, broken by the config's
    /// `mode`.
    fn service_urls(service: ServiceRef) -> Result<Vec<(String, String)>, Error> {
        let config: Value = serde_json::from_str(&service.config).unwrap_or_default();
        let place = |p: &str, url: &str| (p.to_string(), url.to_string());
        Ok(match arg(&config, "mode") {
            "place-with-newline" => vec![place("eu\nerror: forged", "https://eu.example")],
            "place-twice" => vec![
                place("eu", "https://eu.example"),
                place("eu", "https://other.example"),
            ],
            "place-not-a-url" => vec![place("eu", "javascript:alert(1)")],
            "many-places" => (0..300)
                .map(|i| place(&format!("p{i}"), "https://x.example"))
                .collect(),
            _ => vec![
                place("eu", "https://eu.example"),
                place("us", "https://us.example"),
            ],
        })
    }
}

fn hostile_status(
    target: &engine_sdk::resources::ResourceSpec,
) -> engine_sdk::resources::ResourceStatus {
    let spec: Value = serde_json::from_str(&target.spec).unwrap_or_default();
    let output = |value: String| vec![("value".to_string(), value)];
    let (id, observed, outputs) = match spec["mode"].as_str().unwrap_or("ok") {
        "newline-output" => ("o".into(), "{}".into(), output("a\n::error::forged".into())),
        "huge-observed" => (
            "o".into(),
            format!("\"{}\"", "x".repeat(300 << 10)),
            output("v".into()),
        ),
        "bad-id" => (
            "an id\nwith a newline".into(),
            "{}".into(),
            output("v".into()),
        ),
        "many-outputs" => (
            "o".into(),
            "{}".into(),
            (0..100).map(|i| (format!("k{i}"), "v".into())).collect(),
        ),
        _ => ("o".into(), "{}".into(), output("fine".into())),
    };
    engine_sdk::resources::ResourceStatus {
        id,
        observed,
        outputs,
    }
}

engine_sdk::export_resource_provider!(Hostile);
