//! The controller's admin endpoint (:9990): `/live`, `/ready` (once the feed
//! has loaded its initial objects), `/metrics` (Prometheus text) and
//! `/status` (JSON, the file feed's stand-in for status subresources):
//! whether this replica leads (writes to the API server), the file feed's file (the version served, the last one refused and why, with
//! its line), route statuses, the problems of served objects, and every
//! refused object version with the version served instead.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::leader::Leadership;
use crate::metrics::Metrics;
use plexus_discovery::feed::Readiness;
use plexus_discovery::index::{FileStatus, Problem, Refusal, RouteStatus, SharedIndex};

#[derive(Clone, Debug)]
pub struct Admin {
    pub index: SharedIndex,
    pub metrics: Arc<Metrics>,
    pub ready: Readiness,
    pub leadership: Leadership,
}

#[derive(Serialize)]
struct Status {
    ready: bool,
    /// Holds the Lease (always, outside a cluster).
    leader: bool,
    /// With the file feed.
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<FileStatus>,
    routes: Vec<RouteStatus>,
    problems: Vec<Problem>,
    refused: Vec<Refusal>,
}

impl Admin {
    /// Serves connections from `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "admin: accept failed");
                    continue;
                }
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.respond(&req)) }
                });
                if let Err(e) = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "admin: connection ended");
                }
            });
        }
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match req.uri().path() {
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" if self.ready.is_ready() => text(StatusCode::OK, "ready\n".into()),
            "/ready" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "initial objects not loaded yet\n".into(),
            ),
            "/metrics" => {
                let sizes = self.index.lock().sizes();
                match self.metrics.encode(&sizes) {
                    Ok(body) => with_type(
                        StatusCode::OK,
                        body,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                    Err(_) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "metrics encoding failed\n".into(),
                    ),
                }
            }
            "/status" => {
                let status = {
                    let index = self.index.lock();
                    Status {
                        ready: self.ready.is_ready(),
                        leader: self.leadership.is_leader(),
                        file: index.file_status().cloned(),
                        routes: index.route_statuses(),
                        problems: index.problems(),
                        refused: index.refusals(),
                    }
                };
                match serde_json::to_string_pretty(&status) {
                    Ok(body) => with_type(StatusCode::OK, body, "application/json"),
                    Err(_) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "status encoding failed\n".into(),
                    ),
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "try /live, /ready, /metrics, /status\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, body, "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
