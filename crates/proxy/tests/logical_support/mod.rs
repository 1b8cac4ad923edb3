//! Shared pieces of the `logical_*` tests: tiny hyper upstreams on loopback,
//! a `Logical` over a static target with the real transport client, and
//! metric reading. Each test binary uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use plexus_api::v1 as proto;
use plexus_proxy::body::{self, Body};
use plexus_proxy::logical::{Logical, LogicalMetrics};
use plexus_proxy::transport::HttpEndpointClient;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// A loopback HTTP server (HTTP/1 and HTTP/2) counting what it serves.
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub in_flight: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// Starts an upstream on 127.0.0.1:0 answering with `handler`.
pub async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let (req_count, flight) = (requests.clone(), in_flight.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (handler, req_count, flight) = (handler.clone(), req_count.clone(), flight.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let (handler, flight) = (handler.clone(), flight.clone());
                    req_count.fetch_add(1, Ordering::SeqCst);
                    flight.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let response = handler(request).await;
                        flight.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        requests,
        in_flight,
    }
}

pub fn ok() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

pub fn status(code: u16) -> Response<Full<Bytes>> {
    let mut response = ok();
    *response.status_mut() = StatusCode::from_u16(code).expect("valid status");
    response
}

/// An address nobody listens on (bound, then released).
pub fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind loopback")
}

pub fn endpoint(addr: SocketAddr) -> proto::Endpoint {
    proto::Endpoint {
        address: addr.to_string(),
        ready: true,
        ..Default::default()
    }
}

pub fn backend(
    endpoints: Vec<proto::Endpoint>,
    resilience: Option<proto::Resilience>,
) -> proto::Backend {
    proto::Backend {
        name: String::new(),
        endpoints,
        resilience,
    }
}

/// A route with one rule matching everything.
pub fn catch_all(rule: proto::HttpRouteRule) -> proto::RouteTable {
    proto::RouteTable {
        http: vec![proto::HttpRoute {
            name: "test/route".into(),
            rules: vec![rule],
        }],
        grpc: vec![],
        default_backend: String::new(),
    }
}

pub fn weighted(backend: &str, weight: u32) -> proto::WeightedBackend {
    proto::WeightedBackend {
        backend: backend.into(),
        weight: Some(weight),
    }
}

pub fn target(routes: proto::RouteTable, backends: Vec<(&str, proto::Backend)>) -> proto::Target {
    proto::Target {
        name: "web.test.svc.cluster.local:80".into(),
        protocol: None,
        routes: Some(routes),
        backends: Some(proto::BackendTable {
            backends: backends
                .into_iter()
                .map(|(name, b)| (name.to_owned(), b))
                .collect::<HashMap<_, _>>(),
        }),
    }
}

/// A `Logical` over a target the test can change, with its metrics.
pub struct Harness {
    pub logical: Logical,
    pub target: watch::Sender<Arc<proto::Target>>,
    registry: Registry,
}

impl Harness {
    pub fn new(target: proto::Target) -> Harness {
        let (tx, rx) = watch::channel(Arc::new(target));
        let mut registry = Registry::default();
        let metrics = LogicalMetrics::register(&mut registry);
        let client = Arc::new(HttpEndpointClient::new(Duration::from_secs(1)));
        Harness {
            logical: Logical::new(rx, client, metrics),
            target: tx,
            registry,
        }
    }

    pub fn update(&self, target: proto::Target) {
        self.target.send_replace(Arc::new(target));
    }

    /// Sum of the samples of metric `name` that carry every one of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encode metrics");
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(request("GET", path, body::empty())).await
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.logical.handle(request).await;
        let (parts, body) = response.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => Bytes::from(format!("body error: {error}")),
        };
        Answer {
            status: parts.status,
            headers: parts.headers,
            extensions: parts.extensions,
            body,
        }
    }
}

pub fn request(method: &str, path: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "web.test:80")
        .body(body)
        .expect("valid request")
}

/// A response, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub extensions: http::Extensions,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Polls `condition` every 10 ms until it holds, failing after `within`.
pub async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let polled = tokio::time::timeout(within, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        polled.is_ok(),
        "timed out after {within:?} waiting for {what}"
    );
}
