//! A `plexus_proxy::logical::Logical` (routes, splits, retries, timeouts,
//! balancing, circuit breaking) over a static target the test can change,
//! with the real transport client and its metrics, and builders for the
//! proto types of that target. The upstreams are [`crate::upstream`]'s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use plexus_api::v1 as proto;
use plexus_proxy::body::{self, Body};
use plexus_proxy::logical::{Logical, LogicalMetrics};
use plexus_proxy::transport::HttpEndpointClient;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

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
        ..Default::default()
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
        let (body, trailers) = match body.collect().await {
            Ok(collected) => {
                let trailers = collected.trailers().cloned();
                (collected.to_bytes(), trailers)
            }
            Err(error) => (Bytes::from(format!("body error: {error}")), None),
        };
        Answer {
            status: parts.status,
            headers: parts.headers,
            extensions: parts.extensions,
            body,
            trailers,
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

/// An HTTP/2 gRPC call whose body has no content-length, as tonic and grpc-go send it.
pub fn grpc_call(path: &str, body: Body) -> Request<Body> {
    let mut call = request("POST", path, body);
    *call.version_mut() = http::Version::HTTP_2;
    call.headers_mut()
        .insert("content-type", "application/grpc".parse().expect("value"));
    call
}

/// A response, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub extensions: http::Extensions,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The call's `grpc-status`: in the trailers, else (trailers-only) in the headers.
    pub fn grpc_status(&self) -> Option<&str> {
        let trailers = self.trailers.as_ref().and_then(|t| t.get("grpc-status"));
        trailers
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
    }
}
