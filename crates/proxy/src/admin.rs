//! The admin server: `/live`, `/ready`, `/metrics`, `/config`, `POST /shutdown`.
//!
//! It runs on its own thread with a single-threaded runtime, so scraping
//! metrics never takes time from the data plane's workers. Its HTTP edge is
//! the data plane's: the same head limit, `Host` required in HTTP/1.1, and
//! hyper's own replies tagged with `plexus-error`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::auto_reply::{Replies, TagAutoReplies};
use crate::body::{self, Body};
use crate::destinations::Destinations;
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
}

/// Serves on its own thread until `stop` changes or its sender is dropped;
/// request heads over `max_header_bytes` get `431`.
pub fn spawn(
    listener: std::net::TcpListener,
    admin: Arc<Admin>,
    max_header_bytes: usize,
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
                    let stream = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                        _ = stop.wait_for(|stop| *stop) => return,
                    };
                    let admin = admin.clone();
                    let replies = Arc::new(Replies::default());
                    let io = TagAutoReplies::new(stream, Some(replies.clone()));
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            replies.called();
                            let response = match check_host(&request) {
                                Ok(()) => handle(&admin, &request),
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

fn handle(admin: &Admin, request: &Request<Incoming>) -> Response<Body> {
    match (request.method(), request.uri().path()) {
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
