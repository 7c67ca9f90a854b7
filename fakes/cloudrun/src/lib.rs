//! A test server for the Cloud Run Admin API v2, for the `cloudrun` provider's tests. No
//! Cloud Run emulator exists, so this one plays the part, and is held to Google's published
//! description of the API: every request and every response is checked against the discovery
//! documents ([`discovery`]); a request that does not conform is refused with 400 and recorded
//! as a violation ([`Fake::violations`]), so a test fails even if the provider swallowed the
//! error.
//!
//! What it models: services with revisions (a new revision whenever the template changes, named
//! by `template.revision` when given), traffic split by percent with tags and per-tag URLs,
//! long-running operations that finish on the second poll, a revision whose container fails to
//! start (an image containing `fail-to-start`), IAM policies with etags, and the two v1 reads
//! `gcloud run services describe` and `list` make, so gcloud can be used as an independent
//! client. Its "data plane" answers at the services' URLs (`/_run/…`): the revision chosen by
//! traffic weight (or by tag) answers like a health endpoint (failing a share of requests when
//! its container sets `FAKE_ERROR_RATE`), a service that does not grant `allUsers` the invoker
//! role wants a bearer token, and `/metrics` exports the answers under the names Google's
//! managed Prometheus gives Cloud Run's metrics.
//!
//! Beside the run API, each held to its own discovery document: Cloud Scheduler v1 jobs
//! (`scheduler.rs`), and the IAM, Serverless VPC Access and Secret Manager reads `plan` makes
//! to check what a service names ([`directory`]), which tests seed through [`Fake::directory`].

pub mod directory;
pub mod discovery;
mod model;
mod scheduler;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use discovery::{Direction, Document};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub use model::Model;

/// An error in Google's JSON error shape.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub status: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, status: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            status,
            message: message.into(),
        }
    }

    fn body(&self) -> Value {
        json!({ "error": { "code": self.code, "message": self.message, "status": self.status } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body())).into_response()
    }
}

struct Shared {
    v2: Document,
    v1: Document,
    /// The other APIs the provider calls, each its own document: Cloud Scheduler for
    /// `scheduler-job` resources, IAM, VPC Access and Secret Manager for the lookups `plan`
    /// makes and the secret IAM bindings. Tried in this order; run v1 serves what none routes.
    others: Vec<(Api, Document)>,
    jobs: Mutex<scheduler::Jobs>,
    directory: Mutex<directory::Directory>,
    model: Mutex<Model>,
    /// `127.0.0.1:PORT`, to recognise gcloud's regional host names (`us-central1-127.0.0.1:PORT`).
    own: String,
    violations: Mutex<Vec<String>>,
    requests: Mutex<Vec<String>>,
}

/// A running test server.
pub struct Fake {
    /// `http://127.0.0.1:PORT`: the API endpoint, and the base of the services' URLs.
    pub url: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Fake {
    /// Starts a server on a free loopback port, with the discovery documents from the cache
    /// (downloading them on first use).
    pub async fn start() -> anyhow::Result<Fake> {
        let cache = discovery::default_cache();
        let (v2, v1, others) = tokio::task::spawn_blocking(move || {
            let (v2, v1) = discovery::fetch(&cache)?;
            let others = Api::OTHERS
                .iter()
                .map(|api| {
                    Ok((
                        *api,
                        Document::new(&discovery::read(&cache, api.document())?),
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::Ok((v2, v1, others))
        })
        .await??;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let shared = Arc::new(Shared {
            v2: Document::new(&v2),
            v1: Document::new(&v1),
            others,
            jobs: Mutex::default(),
            directory: Mutex::default(),
            model: Mutex::new(Model::new(&url)),
            own: addr.to_string(),
            violations: Mutex::default(),
            requests: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, app).await;
        });
        Ok(Fake {
            url,
            addr,
            shared,
            task,
        })
    }

    /// Every request or response that broke the discovery document, as `METHOD path: problem`.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.shared.violations).clone()
    }

    /// Every API request, as `METHOD path?query`, in order.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.requests).clone()
    }

    /// Cloud Scheduler's jobs, by full name.
    pub fn jobs(&self) -> std::collections::BTreeMap<String, Value> {
        lock(&self.shared.jobs).jobs.clone()
    }

    /// Service accounts, VPC connectors and secrets, for setting up what services name.
    pub fn directory(&self) -> std::sync::MutexGuard<'_, directory::Directory> {
        lock(&self.shared.directory)
    }

    /// The model, for assertions and for setting up a scenario.
    pub fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        lock(&self.shared.model)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (status, axum::Json(value.clone())).into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_start_matches('/').to_string();
    let query: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(String::from);

    if let Some(rest) = path.strip_prefix("_run/") {
        let caller = model::Caller {
            bearer: bearer.as_deref(),
            source: peer.ip(),
        };
        return lock(&shared.model).serve(method.as_str(), rest, caller);
    }
    if path == "metrics" {
        let text = lock(&shared.model).metrics();
        return ([("content-type", "text/plain; version=0.0.4")], text).into_response();
    }

    let shown = match uri.query() {
        Some(q) => format!("{method} /{path}?{q}"),
        None => format!("{method} /{path}"),
    };
    lock(&shared.requests).push(shown.clone());
    let violation = |problem: String| {
        lock(&shared.violations).push(format!("{shown}: {problem}"));
    };

    let routed = match path.starts_with("v2/") {
        true => shared
            .v2
            .route(method.as_str(), &path)
            .map(|r| (Api::RunV2, &shared.v2, r)),
        false => shared
            .others
            .iter()
            .find_map(|(api, doc)| Some((*api, doc, doc.route(method.as_str(), &path)?)))
            .or_else(|| {
                let r = shared.v1.route(method.as_str(), &path)?;
                Some((Api::RunV1, &shared.v1, r))
            }),
    };
    let Some((api, document, (api_method, params))) = routed else {
        violation("no method of the modelled APIs serves it".into());
        return ApiError::new(
            404,
            "NOT_FOUND",
            format!("{method} /{path} is not part of the APIs the test server models"),
        )
        .into_response();
    };
    if bearer.as_deref().is_none_or(str::is_empty) {
        violation("no bearer token".into());
        return ApiError::new(
            401,
            "UNAUTHENTICATED",
            "Request is missing required authentication credential. Expected OAuth 2 access token.",
        )
        .into_response();
    }
    let mut problems = document.check_query(api_method, &query);
    let input = if api_method.request.is_some() {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("the body is not JSON: {e}"));
                Value::Null
            }
        }
    } else {
        Value::Null
    };
    if let Some(schema) = &api_method.request
        && !input.is_null()
    {
        problems.extend(
            document
                .check(schema, &input, Direction::Request)
                .into_iter()
                .map(|p| format!("request {p}")),
        );
    }
    if !problems.is_empty() {
        for p in &problems {
            violation(p.clone());
        }
        return ApiError::new(400, "INVALID_ARGUMENT", problems.join("; ")).into_response();
    }

    // gcloud's regional host name carries the region: `us-central1-127.0.0.1:PORT`.
    let host = uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default();
    let region = host
        .strip_suffix(&format!("-{}", shared.own))
        .map(String::from);

    let result = match api {
        Api::Scheduler => lock(&shared.jobs).call(&api_method.id, &params, &query, input),
        Api::Iam | Api::VpcAccess | Api::SecretManager => {
            lock(&shared.directory).call(&api_method.id, &params, input)
        }
        Api::RunV2 => lock(&shared.model).call(&api_method.id, &params, &query, input),
        Api::RunV1 => lock(&shared.model).call_v1(&api_method.id, &params, region.as_deref()),
    };
    match result {
        Ok(output) => {
            if let Some(schema) = &api_method.response {
                for p in document.check(schema, &output, Direction::Response) {
                    violation(format!("response {p} (a bug in the fake)"));
                }
            }
            json_response(StatusCode::OK, &output)
        }
        Err(e) => e.into_response(),
    }
}

/// The Google APIs the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    RunV2,
    RunV1,
    Scheduler,
    Iam,
    VpcAccess,
    SecretManager,
}

impl Api {
    /// Those beside Cloud Run's own, in the order paths are matched against them.
    const OTHERS: [Api; 4] = [Api::Scheduler, Api::Iam, Api::VpcAccess, Api::SecretManager];

    fn document(self) -> &'static str {
        match self {
            Api::RunV2 => "run.v2.json",
            Api::RunV1 => "run.v1.json",
            Api::Scheduler => "cloudscheduler.v1.json",
            Api::Iam => "iam.v1.json",
            Api::VpcAccess => "vpcaccess.v1.json",
            Api::SecretManager => "secretmanager.v1.json",
        }
    }
}
