//! The transport side of [`EndpointClient`]: pooled HTTP/1 and HTTP/2
//! connections to endpoints, used by the logical side and by passthrough.
//!
//! One hyper-util pooled client per endpoint and protocol, whose connector
//! always dials that endpoint. The request keeps its own authority, so the
//! upstream sees the `Host` / `:authority` the app sent, while pooling stays
//! per endpoint. Meshed endpoints get HTTP/2, over mTLS when this proxy has
//! an identity and the Destination API announced the endpoint's (the server
//! must prove exactly that identity); others get the protocol of the request.

mod connector;
mod mesh_io;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use plexus_identity::SpiffeId;

use crate::body::{self, Body};
use crate::connect::{EndpointClient, EndpointTarget, ResponseFuture, SendError};
use crate::tls::{MeshTls, TlsMetrics};
use connector::EndpointConnector;
pub use connector::{MeshConnect, connect_mesh};

/// Set on an HTTP/1 request carried over HTTP/2 between proxies (meshed
/// endpoints always get HTTP/2); the inbound proxy removes it and speaks
/// HTTP/1 to its application again.
pub const ORIG_PROTO_HEADER: &str = "plexus-orig-proto";

/// How long an unused pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Sends requests to endpoints over pooled connections.
pub struct HttpEndpointClient {
    connect_timeout: Duration,
    /// This proxy's identity: meshed endpoints are reached over mTLS.
    mesh: Option<(MeshTls, TlsMetrics)>,
    /// Endpoints are few and stable; entries are small and live as long as the proxy.
    pools: RwLock<HashMap<PoolKey, Arc<Client<EndpointConnector, Body>>>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    http2: bool,
    /// mTLS to a server that must be this identity.
    identity: Option<SpiffeId>,
}

impl HttpEndpointClient {
    /// Plaintext to every endpoint (no identity).
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            mesh: None,
            pools: RwLock::default(),
        }
    }

    /// mTLS to meshed endpoints with an expected identity.
    pub fn with_mesh(connect_timeout: Duration, mesh: MeshTls, metrics: TlsMetrics) -> Self {
        Self {
            mesh: Some((mesh, metrics)),
            ..Self::new(connect_timeout)
        }
    }

    /// The identity a request to `target` must reach over mTLS, if any.
    /// An identity that does not parse is refused rather than dropped:
    /// falling back to plaintext would be a silent downgrade.
    fn mtls_identity(&self, target: &EndpointTarget) -> Result<Option<SpiffeId>, SendError> {
        match (&self.mesh, target.meshed, &target.identity) {
            (Some(_), true, Some(identity)) => identity.parse().map(Some).map_err(|_| {
                SendError::Connect(format!(
                    "endpoint {}: invalid expected identity {identity:?}",
                    target.addr
                ))
            }),
            _ => Ok(None),
        }
    }

    fn pool(&self, key: PoolKey) -> Arc<Client<EndpointConnector, Body>> {
        let pools = self.pools.read().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = pools.get(&key) {
            return client.clone();
        }
        drop(pools);
        // A panic elsewhere while holding the lock leaves the map itself intact.
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(key.clone())
            .or_insert_with(|| {
                let tls = match (&self.mesh, key.identity) {
                    (Some((mesh, metrics)), Some(expected)) => Some(MeshConnect {
                        mesh: mesh.clone(),
                        expected,
                        metrics: metrics.clone(),
                    }),
                    _ => None,
                };
                let connector = EndpointConnector::new(key.addr, self.connect_timeout, tls);
                let client = Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .http2_only(key.http2)
                    .http2_adaptive_window(true)
                    .build(connector);
                Arc::new(client)
            })
            .clone()
    }
}

impl EndpointClient for HttpEndpointClient {
    fn send(&self, target: &EndpointTarget, mut request: Request<Body>) -> ResponseFuture {
        // Upgrades (WebSocket) exist only in HTTP/1, so they stay HTTP/1 even to meshed endpoints.
        let upgrade = request.headers().contains_key(http::header::UPGRADE);
        let http2 = !upgrade && (target.meshed || request.version() == Version::HTTP_2);
        if !http2 {
            body::keep_unsized_body(&mut request);
        }
        if !http2 && request.version() == Version::HTTP_2 {
            *request.version_mut() = Version::HTTP_11;
        } else if http2 && request.version() != Version::HTTP_2 {
            request.headers_mut().insert(
                ORIG_PROTO_HEADER,
                http::HeaderValue::from_static("HTTP/1.1"),
            );
        }
        let client = match self.mtls_identity(target) {
            Ok(identity) => self.pool(PoolKey {
                addr: target.addr,
                http2,
                identity,
            }),
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let endpoint = target.addr;
        Box::pin(async move {
            absolute_uri(&mut request, endpoint)?;
            match client.request(request).await {
                Ok(response) => Ok(response.map(body::boxed)),
                Err(e) if e.is_connect() => Err(SendError::Connect(error_chain(&e))),
                Err(e) => Err(SendError::Request(error_chain(&e))),
            }
        })
    }
}

/// The pooled client wants `scheme://authority/path`; an HTTP/1 request in
/// origin form gets its authority from `Host`, or else the endpoint address.
fn absolute_uri(request: &mut Request<Body>, endpoint: SocketAddr) -> Result<(), SendError> {
    if request.uri().scheme().is_some() && request.uri().authority().is_some() {
        return Ok(());
    }
    let authority = match request.uri().authority() {
        Some(authority) => authority.clone(),
        None => match request.headers().get(http::header::HOST) {
            Some(host) => Authority::try_from(host.as_bytes())
                .map_err(|_| SendError::Connect(format!("invalid Host header {host:?}")))?,
            None => Authority::try_from(endpoint.to_string())
                .map_err(|e| SendError::Connect(e.to_string()))?,
        },
    };
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme.get_or_insert(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *request.uri_mut() =
        Uri::from_parts(parts).map_err(|e| SendError::Connect(format!("request URI: {e}")))?;
    Ok(())
}

/// hyper-util's errors hide the useful part (refused, reset, …) in their sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        // Bind then drop to get a port nobody listens on.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let client = HttpEndpointClient::new(Duration::from_secs(1));
        let target = EndpointTarget {
            addr,
            identity: None,
            meshed: false,
        };
        let request = Request::builder()
            .uri("/")
            .header("host", "web:80")
            .body(body::empty())
            .unwrap();
        let err = client.send(&target, request).await.unwrap_err();
        assert!(matches!(err, SendError::Connect(_)), "{err:?}");
    }

    #[test]
    fn origin_form_gets_the_host_as_authority() {
        let mut request = Request::builder()
            .uri("/a?b=c")
            .header("host", "web.default:8080")
            .body(body::empty())
            .unwrap();
        absolute_uri(&mut request, "127.0.0.1:1".parse().unwrap()).unwrap();
        assert_eq!(request.uri(), "http://web.default:8080/a?b=c");
        let mut request = Request::builder().uri("/").body(body::empty()).unwrap();
        absolute_uri(&mut request, "127.0.0.1:1".parse().unwrap()).unwrap();
        assert_eq!(request.uri(), "http://127.0.0.1:1/");
    }
}
