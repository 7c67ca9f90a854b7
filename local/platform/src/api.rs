//! The admin API (routes and payloads in the `local-api` crate's documentation).

use crate::{Platform, Refusal};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use local_api::{ApiError, Health, RevisionRequest, Weight};
use std::sync::Arc;

type Shared = State<Arc<Platform>>;

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ApiError {
                error: self.message,
            }),
        )
            .into_response()
    }
}

fn not_found(service: &str) -> Refusal {
    Refusal {
        status: 404,
        message: format!("the local platform has no service `{service}`"),
    }
}

/// The routes. Every one needs the platform's token except the read-only ones that reveal
/// nothing but request counts and latencies (health, metrics), which the `metrics` check and
/// Prometheus read.
pub fn router(platform: Arc<Platform>) -> Router {
    let open = Router::new()
        .route("/v1/health", get(health))
        .route(
            "/v1/services/{service}/revisions/{revision}/metrics",
            get(metrics),
        )
        .route("/metrics", get(prometheus));
    let guarded = Router::new()
        .route("/v1/services", get(list))
        .route("/v1/services/{service}", get(show).delete(destroy))
        .route("/v1/services/{service}/traffic", put(traffic))
        .route(
            "/v1/services/{service}/revisions/{revision}",
            put(deploy).delete(retire),
        )
        .route("/v1/secret-files", post(allow_secret_files))
        .route("/v1/shutdown", post(shutdown))
        .route_layer(middleware::from_fn_with_state(platform.clone(), authorize));
    open.merge(guarded).with_state(platform)
}

/// Refuses a call without the platform's token: 401, saying where the token is.
async fn authorize(State(p): Shared, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if p.authorizes(header) {
        return next.run(request).await;
    }
    Refusal {
        status: 401,
        message: "the local platform's admin API needs its access token (Authorization: Bearer …); the engine reads it from the token file of this port and gives it only to its own `local` provider".into(),
    }
    .into_response()
}

async fn allow_secret_files(State(p): Shared, Json(files): Json<Vec<String>>) -> Response {
    match p.allow_secret_files(&files) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn health(State(p): Shared) -> Json<Health> {
    Json(Health {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        logs: p.logs_dir().display().to_string(),
    })
}

async fn list(State(p): Shared) -> Json<Vec<local_api::ServiceView>> {
    Json(p.services().iter().map(|s| s.view()).collect())
}

async fn show(State(p): Shared, Path(service): Path<String>) -> Response {
    match p.service(&service) {
        Some(s) => Json(s.view()).into_response(),
        None => not_found(&service).into_response(),
    }
}

async fn destroy(State(p): Shared, Path(service): Path<String>) -> StatusCode {
    p.destroy(&service).await;
    StatusCode::NO_CONTENT
}

async fn deploy(
    State(p): Shared,
    Path((service, revision)): Path<(String, String)>,
    Json(request): Json<RevisionRequest>,
) -> Response {
    match p.deploy(&service, &revision, request).await {
        Ok((view, true)) => (StatusCode::CREATED, Json(view)).into_response(),
        Ok((view, false)) => Json(view).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn retire(State(p): Shared, Path((service, revision)): Path<(String, String)>) -> Response {
    match p.retire(&service, &revision).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn traffic(
    State(p): Shared,
    Path(service): Path<String>,
    Json(weights): Json<Vec<Weight>>,
) -> Response {
    match p.set_traffic(&service, &weights) {
        Ok(view) => Json(view).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(serde::Deserialize)]
struct Since {
    #[serde(default)]
    since_ms: u64,
}

async fn metrics(
    State(p): Shared,
    Path((service, revision)): Path<(String, String)>,
    Query(since): Query<Since>,
) -> Response {
    let Some(svc) = p.service(&service) else {
        return not_found(&service).into_response();
    };
    match svc.revision(&revision) {
        Some(r) => Json(r.metrics.summary(since.since_ms)).into_response(),
        None => Refusal {
            status: 404,
            message: format!("`{service}` has no revision {revision}"),
        }
        .into_response(),
    }
}

async fn prometheus(State(p): Shared) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        p.prometheus(),
    )
}

async fn shutdown(State(p): Shared) -> StatusCode {
    p.request_shutdown();
    StatusCode::ACCEPTED
}
