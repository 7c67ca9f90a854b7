//! The HTTP side: one front door per service that splits requests between revisions by weight,
//! and one listener per revision that reaches it alone. Both record every request's status and
//! latency in the revision's metrics.

use crate::Platform;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Instant;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// Smooth weighted round robin (as in nginx): over every 100 requests each revision gets exactly
/// its percent, interleaved rather than in runs.
#[derive(Debug, Default, Clone)]
pub struct Split {
    /// (revision, percent, running score)
    entries: Vec<(String, u8, i64)>,
}

impl Split {
    pub fn new(weights: &[local_api::Weight]) -> Split {
        Split {
            entries: weights
                .iter()
                .filter(|w| w.percent > 0)
                .map(|w| (w.revision.clone(), w.percent, 0))
                .collect(),
        }
    }

    pub fn weights(&self) -> Vec<local_api::Weight> {
        self.entries
            .iter()
            .map(|(r, p, _)| local_api::Weight {
                revision: r.clone(),
                percent: *p,
            })
            .collect()
    }

    /// The revision the next request goes to.
    pub fn pick(&mut self) -> Option<String> {
        let total: i64 = self.entries.iter().map(|e| e.1 as i64).sum();
        if total == 0 {
            return None;
        }
        for e in &mut self.entries {
            e.2 += e.1 as i64;
        }
        let best = self
            .entries
            .iter_mut()
            .max_by_key(|e| e.2)
            .expect("not empty");
        best.2 -= total;
        Some(best.0.clone())
    }
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(message + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

/// Serves one connection of a front door (`revision` none) or of a revision's own listener.
pub async fn serve(
    platform: Arc<Platform>,
    stream: tokio::net::TcpStream,
    service: String,
    revision: Option<String>,
) {
    let io = hyper_util::rt::TokioIo::new(stream);
    let handler = hyper::service::service_fn(move |request| {
        let (platform, service, revision) = (platform.clone(), service.clone(), revision.clone());
        async move { Ok::<_, hyper::Error>(forward(&platform, &service, revision, request).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, handler)
        .await;
}

async fn forward(
    platform: &Platform,
    service: &str,
    revision: Option<String>,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let Some(svc) = platform.service(service) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("the local platform has no service `{service}`"),
        );
    };
    let revision = match revision {
        Some(r) => r,
        None => match svc.pick() {
            Some(r) => r,
            None => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no revision of `{service}` takes traffic yet"),
                );
            }
        },
    };
    let Some(rev) = svc.revision(&revision) else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("revision {revision} of `{service}` is gone"),
        );
    };
    let Some(port) = rev.next_ready_port() else {
        rev.metrics.record(503, started.elapsed());
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no instance of {revision} is ready"),
        );
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = match format!("http://127.0.0.1:{port}{path}").parse() {
        Ok(uri) => uri,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad request path: {e}")),
    };
    match platform.client.request(request).await {
        Ok(response) => {
            rev.metrics
                .record(response.status().as_u16(), started.elapsed());
            response.map(|body| body.boxed())
        }
        Err(e) => {
            rev.metrics.record(502, started.elapsed());
            text(
                StatusCode::BAD_GATEWAY,
                format!("{revision} of `{service}` did not answer: {e}"),
            )
        }
    }
}

/// Accepts connections on `listener` until the task is aborted.
pub async fn accept(
    platform: Arc<Platform>,
    listener: tokio::net::TcpListener,
    service: String,
    revision: Option<String>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(
                    platform.clone(),
                    stream,
                    service.clone(),
                    revision.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!("accepting on {service}'s listener: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use local_api::Weight;

    fn w(r: &str, p: u8) -> Weight {
        Weight {
            revision: r.into(),
            percent: p,
        }
    }

    #[test]
    fn the_split_is_exact_per_hundred_and_interleaved() {
        let mut split = Split::new(&[w("v1", 75), w("v2", 25), w("v0", 0)]);
        let picks: Vec<String> = (0..100).map(|_| split.pick().unwrap()).collect();
        assert_eq!(picks.iter().filter(|p| *p == "v2").count(), 25);
        assert_eq!(picks.iter().filter(|p| *p == "v0").count(), 0);
        let longest_v1_run = picks
            .split(|p| p == "v2")
            .map(<[String]>::len)
            .max()
            .unwrap();
        assert!(longest_v1_run <= 3, "interleaved: {picks:?}");
        assert_eq!(Split::new(&[]).pick(), None);
    }
}
