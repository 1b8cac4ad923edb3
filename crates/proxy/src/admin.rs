//! The admin server: `/live`, `/ready`, `/metrics`, `/config`, `POST /shutdown`.
//!
//! It runs on its own thread with a single-threaded runtime, so scraping
//! metrics never takes time from the data plane's workers. Its HTTP edge is
//! the data plane's: the same head limit, `Host` required in HTTP/1.1, and
//! hyper's own replies tagged with `plexus-error`.
//!
//! The port is reachable from the whole cluster (plexus-init exempts it from
//! redirection so the kubelet and Prometheus reach it), so only `/live`,
//! `/ready` and `/metrics` answer anyone. `/config` (every destination and
//! the identity) and `POST /shutdown` (drains the proxy) answer only callers
//! in the pod itself, on loopback, and `/shutdown` only when the workload
//! asked for it (`PLEXUS_SHUTDOWN_ENDPOINT=enabled`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::auto_reply::{Replies, TagAutoReplies};
use crate::body::{self, Body};
use crate::destinations::Destinations;
use crate::error::{ERROR_HEADER, ProxyError};
use crate::head_timeout::{HeadClock, HeadDeadline};
use crate::http::{check_host, http1_buf_size};
use crate::tls::{IdentityStatus, MeshTls};

pub struct Admin {
    pub ready: AtomicBool,
    pub registry: Registry,
    pub destinations: Destinations,
    /// This proxy's identity: `/ready` waits for its certificate, `/config` shows it.
    pub identity: Option<MeshTls>,
    /// Set to `true` to ask the proxy to drain.
    pub shutdown: watch::Sender<bool>,
    /// `PLEXUS_SHUTDOWN_ENDPOINT`: whether `POST /shutdown` drains (for
    /// loopback callers) or is refused.
    pub shutdown_endpoint: bool,
}

/// Serves on its own thread until `stop` changes or its sender is dropped;
/// request heads over `max_header_bytes` get `431`, heads not received
/// within `head_timeout` of their first byte close the connection.
pub fn spawn(
    listener: std::net::TcpListener,
    admin: Arc<Admin>,
    max_header_bytes: usize,
    head_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("plexus-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener");
                        return;
                    }
                };
                loop {
                    let (stream, peer) = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok(accepted) => accepted,
                            Err(_) => continue,
                        },
                        _ = stop.wait_for(|stop| *stop) => return,
                    };
                    let admin = admin.clone();
                    let replies = Arc::new(Replies::default());
                    let head = Arc::new(HeadClock::default());
                    let deadline = HeadDeadline::new(head.clone(), head_timeout);
                    let io =
                        TagAutoReplies::new(stream, Some(replies.clone())).timing_heads(deadline);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            head.received();
                            replies.called();
                            let response = match check_host(&request) {
                                Ok(()) => handle(&admin, &request, peer),
                                Err(error) => error.into_response(false),
                            };
                            async move { Ok::<_, Infallible>(response) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .max_buf_size(http1_buf_size(max_header_bytes))
                            .half_close(true)
                            .writev(true)
                            .serve_connection(TokioIo::new(io), service)
                            .await;
                    });
                }
            });
        })
}

/// The answer to `request` from `peer` (the connection's source address).
fn handle<B>(admin: &Admin, request: &Request<B>, peer: SocketAddr) -> Response<Body> {
    let path = request.uri().path();
    if matches!(path, "/config" | "/shutdown") && !is_local_caller(peer) {
        return forbidden(&format!(
            "{path} answers only callers in the pod (loopback), not {}\n",
            peer.ip()
        ));
    }
    match (request.method(), path) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready")
            if admin.ready.load(Ordering::Acquire)
                && admin.identity.as_ref().is_none_or(MeshTls::ready) =>
        {
            text(StatusCode::OK, "ready\n")
        }
        (&Method::GET, "/ready") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        (&Method::GET, "/metrics") => metrics(&admin.registry),
        (&Method::GET, "/config") => config(admin),
        (&Method::POST, "/shutdown") if !admin.shutdown_endpoint => forbidden(
            "POST /shutdown is disabled: set PLEXUS_SHUTDOWN_ENDPOINT=enabled \
             (in a pod: the annotation plexus.io/shutdown-endpoint: enabled)\n",
        ),
        (&Method::POST, "/shutdown") => {
            admin.shutdown.send_replace(true);
            text(StatusCode::ACCEPTED, "draining\n")
        }
        (_, "/live" | "/ready" | "/metrics" | "/config" | "/shutdown") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Whether `peer` is this host (and so, in a pod, this pod): IPv4
/// 127.0.0.0/8, IPv6 `::1`, or IPv4-mapped loopback (`::ffff:127.0.0.1`, how
/// a dual-stack listener sees an IPv4 loopback client).
pub fn is_local_caller(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// `403` with `plexus-error: forbidden` and `message` as the body.
fn forbidden(message: &str) -> Response<Body> {
    let mut response = text(StatusCode::FORBIDDEN, message);
    let reason = ProxyError::Forbidden(String::new()).reason();
    response
        .headers_mut()
        .insert(ERROR_HEADER, http::HeaderValue::from_static(reason));
    response
}

fn metrics(registry: &Registry) -> Response<Body> {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"));
    }
    let mut response = Response::new(body::full(out));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}

fn config(admin: &Admin) -> Response<Body> {
    #[derive(Serialize)]
    struct Config<'a> {
        /// `null` when the proxy runs without an identity (no mTLS).
        identity: Option<IdentityStatus>,
        destinations: Vec<&'a plexus_api::v1::Target>,
    }
    let known = admin.destinations.known();
    let config = Config {
        identity: admin.identity.as_ref().map(MeshTls::status),
        destinations: known.iter().map(|t| t.as_ref()).collect(),
    };
    match serde_json::to_vec_pretty(&config) {
        Ok(json) => {
            let mut response = Response::new(body::full(json));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(body::full(message.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::FixedDestinations;

    fn admin(shutdown_endpoint: bool) -> (Admin, watch::Receiver<bool>) {
        let (shutdown, requested) = watch::channel(false);
        let admin = Admin {
            ready: true.into(),
            registry: Registry::default(),
            destinations: Destinations::new(Arc::new(FixedDestinations::new(Vec::new()))),
            identity: None,
            shutdown,
            shutdown_endpoint,
        };
        (admin, requested)
    }

    fn request(method: Method, path: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn local_callers_are_loopback_in_every_spelling() {
        for local in [
            "127.0.0.1:1",
            "127.1.2.3:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_local_caller(addr(local)), "{local}");
        }
        for remote in ["10.0.0.5:1", "[::ffff:10.0.0.5]:1", "[2001:db8::1]:1"] {
            assert!(!is_local_caller(addr(remote)), "{remote}");
        }
    }

    #[test]
    fn another_pod_gets_403_for_config_and_shutdown_and_cannot_drain() {
        let (admin, requested) = admin(true);
        for peer in ["10.0.0.5:40000", "[::ffff:10.0.0.5]:40000"] {
            for (method, path) in [(Method::GET, "/config"), (Method::POST, "/shutdown")] {
                let response = handle(&admin, &request(method, path), addr(peer));
                assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path} {peer}");
                assert_eq!(response.headers()[ERROR_HEADER], "forbidden");
            }
        }
        assert!(
            !*requested.borrow(),
            "a remote POST /shutdown started a drain"
        );
    }

    #[test]
    fn another_pod_still_reaches_live_ready_and_metrics() {
        let (admin, _requested) = admin(true);
        for path in ["/live", "/ready", "/metrics"] {
            let response = handle(&admin, &request(Method::GET, path), addr("10.0.0.5:1"));
            assert_eq!(response.status(), StatusCode::OK, "{path}");
        }
    }

    #[test]
    fn shutdown_drains_only_when_enabled_and_asked_on_loopback() {
        let loopback = addr("127.0.0.1:40000");
        let (disabled, requested) = admin(false);
        let response = handle(&disabled, &request(Method::POST, "/shutdown"), loopback);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[ERROR_HEADER], "forbidden");
        assert!(!*requested.borrow());

        let (enabled, requested) = admin(true);
        let response = handle(&enabled, &request(Method::POST, "/shutdown"), loopback);
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert!(*requested.borrow());
    }
}
