//! The transport side of [`EndpointClient`]: pooled HTTP/1 and HTTP/2
//! connections to endpoints, used by the logical side and by passthrough.
//!
//! One hyper-util pooled client per endpoint and protocol, whose connector
//! always dials that endpoint. The request keeps its own authority, so the
//! upstream sees the `Host` / `:authority` the app sent, while pooling stays
//! per endpoint. Meshed endpoints get HTTP/2, over mTLS when this proxy has
//! an identity and the Destination API announced the endpoint's (the server
//! must prove exactly that identity); others get the protocol their target's
//! hint names ([`AppProtocol`]: h2c for `http2`), else that of the request.
//! Between proxies, `plexus-orig-proto` tells the inbound proxy that its
//! application gets HTTP/1; without it the application gets HTTP/2.

mod connector;
mod mesh_io;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use plexus_identity::SpiffeId;
use tokio::time::Instant;

use crate::body::{self, Body};
use crate::connect::{AppProtocol, EndpointClient, EndpointTarget, ResponseFuture, SendError};
use crate::error::error_chain;
use crate::tls::{MeshTls, TlsMetrics};
use connector::EndpointConnector;
pub use connector::{MeshConnect, connect_mesh};

/// Set on a request carried over HTTP/2 between proxies (meshed endpoints
/// always get HTTP/2) for an application that gets HTTP/1 (the client spoke
/// HTTP/1, or the hint says `http1`); the inbound proxy removes it and speaks
/// HTTP/1 to its application again.
pub const ORIG_PROTO_HEADER: &str = "plexus-orig-proto";

/// How long an unused pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Sends requests to endpoints over pooled connections.
pub struct HttpEndpointClient {
    connect_timeout: Duration,
    /// This proxy's identity: meshed endpoints are reached over mTLS.
    mesh: Option<(MeshTls, TlsMetrics)>,
    /// Keyed by what applications send (a passthrough destination's
    /// address), so entries unused for the destination idle timeout go
    /// ([`EndpointClient::release_idle`]), their idle connections with them.
    pools: RwLock<HashMap<PoolKey, Arc<Pool>>>,
    /// The origin of [`Pool::last_used`].
    started: Instant,
}

/// One endpoint's pooled client and when a request last took it.
struct Pool {
    client: Arc<Client<EndpointConnector, Body>>,
    /// Milliseconds after `HttpEndpointClient::started`: an atomic, so the
    /// request path stamps it under the map's read lock.
    last_used: AtomicU64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    source: Option<IpAddr>,
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
            started: Instant::now(),
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
        let now = self.millis_since_start();
        let pools = self.pools.read().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.get(&key) {
            pool.last_used.store(now, Ordering::Relaxed);
            return pool.client.clone();
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
                let connector =
                    EndpointConnector::new(key.addr, key.source, self.connect_timeout, tls);
                let client = Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .http2_only(key.http2)
                    .http2_adaptive_window(true)
                    // A peer proxy gone silently fails its requests in 30 s, not never.
                    .http2_keep_alive_interval(crate::http::H2_KEEPALIVE_INTERVAL)
                    .http2_keep_alive_timeout(crate::http::H2_KEEPALIVE_TIMEOUT)
                    .build(connector);
                Arc::new(Pool {
                    client: Arc::new(client),
                    last_used: AtomicU64::new(now),
                })
            })
            .client
            .clone()
    }

    fn millis_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl EndpointClient for HttpEndpointClient {
    fn release_idle(&self, idle: Duration) -> bool {
        let now = self.millis_since_start();
        let idle = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        let before = pools.len();
        pools.retain(|_, pool| {
            // Another holder is a request still in flight.
            let in_flight = Arc::strong_count(&pool.client) > 1;
            in_flight || now.saturating_sub(pool.last_used.load(Ordering::Relaxed)) < idle
        });
        plexus_core::memory::shrink_swept(&mut pools);
        pools.len() < before
    }

    fn send(&self, target: &EndpointTarget, mut request: Request<Body>) -> ResponseFuture {
        let wire = Wire::of(target, &request);
        if let Err(e) = absolute_uri(&mut request, target.addr) {
            return Box::pin(std::future::ready(Err(e)));
        }
        wire.translate(&mut request);
        let client = match self.mtls_identity(target) {
            Ok(identity) => self.pool(PoolKey {
                addr: target.addr,
                source: target.source,
                http2: wire.http2,
                identity,
            }),
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        Box::pin(async move {
            match client.request(request).await {
                Ok(response) => Ok(response.map(body::boxed)),
                Err(e) if e.is_connect() => Err(SendError::Connect(error_chain(&e))),
                Err(e) => Err(SendError::Request(error_chain(&e))),
            }
        })
    }
}

/// How one request travels to its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wire {
    /// The connection's protocol: HTTP/2 to a meshed endpoint's proxy, or
    /// to an application that speaks it.
    http2: bool,
    /// What the application behind the endpoint is to receive.
    app_http2: bool,
}

impl Wire {
    fn of<B>(target: &EndpointTarget, request: &Request<B>) -> Wire {
        // Upgrades (WebSocket) exist only in HTTP/1, so they stay HTTP/1 whatever the hint.
        if request.headers().contains_key(http::header::UPGRADE) {
            return Wire {
                http2: false,
                app_http2: false,
            };
        }
        let app_http2 = match target.protocol {
            AppProtocol::Http2 => true,
            AppProtocol::Http1 => false,
            AppProtocol::AsRequested => request.version() == Version::HTTP_2,
        };
        Wire {
            http2: app_http2 || target.meshed,
            app_http2,
        }
    }

    /// Makes the request fit the wire: HTTP/2 toward an HTTP/1 application
    /// (the hop between proxies) is marked for the inbound proxy to undo; an
    /// HTTP/1 request for an HTTP/2 application carries its `Host` in
    /// `:authority` (already in the URI, see [`absolute_uri`]); an HTTP/2
    /// request over HTTP/1 is HTTP/1.1. hyper answers an HTTP/1 client in
    /// HTTP/1 whatever the upstream's version.
    fn translate(self, request: &mut Request<Body>) {
        let http2_request = request.version() == Version::HTTP_2;
        if self.http2 && !self.app_http2 {
            request.headers_mut().insert(
                ORIG_PROTO_HEADER,
                http::HeaderValue::from_static("HTTP/1.1"),
            );
        } else if self.app_http2 && !http2_request {
            request.headers_mut().remove(http::header::HOST);
            *request.version_mut() = Version::HTTP_2;
        }
        if !self.http2 {
            if http2_request {
                *request.version_mut() = Version::HTTP_11;
            }
            body::keep_unsized_body(request);
        }
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
            protocol: AppProtocol::AsRequested,
            source: None,
        };
        let request = Request::builder()
            .uri("/")
            .header("host", "web:80")
            .body(body::empty())
            .unwrap();
        let err = client.send(&target, request).await.unwrap_err();
        assert!(matches!(err, SendError::Connect(_)), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn pools_unused_for_the_idle_timeout_are_released() {
        let client = HttpEndpointClient::new(Duration::from_secs(1));
        let key = |port| PoolKey {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            source: None,
            http2: false,
            identity: None,
        };
        let idle = Duration::from_secs(30);
        let pools = |client: &HttpEndpointClient| client.pools.read().unwrap().len();
        drop(client.pool(key(1)));
        let in_flight = client.pool(key(2));
        tokio::time::advance(idle / 2).await;
        drop(client.pool(key(3)));
        assert!(!client.release_idle(idle), "nothing is idle yet");
        assert_eq!(pools(&client), 3);

        tokio::time::advance(idle).await;
        drop(client.pool(key(3)));
        assert!(client.release_idle(idle));
        // 1 idled out; 2 is held by a request in flight; 3 was just used.
        assert_eq!(pools(&client), 2);
        assert!(client.pools.read().unwrap().contains_key(&key(2)));
        drop(in_flight);
        assert!(client.release_idle(idle));
        assert_eq!(pools(&client), 1);
    }

    #[test]
    fn requests_are_translated_for_what_the_app_speaks() {
        let target = |meshed, protocol| EndpointTarget {
            addr: "127.0.0.1:1".parse().unwrap(),
            identity: None,
            meshed,
            protocol,
            source: None,
        };
        let request = |version, upgrade: bool| {
            let mut request = Request::builder()
                .version(version)
                .uri("/a")
                .header("host", "web:80");
            if upgrade {
                request = request.header("upgrade", "websocket");
            }
            request.body(body::empty()).unwrap()
        };
        use AppProtocol::{AsRequested, Http1, Http2};
        let (h1, h2) = (Version::HTTP_11, Version::HTTP_2);
        // (meshed, hint, client's version, upgrade) → (wire HTTP/2, version sent, orig-proto, Host kept)
        let cases = [
            ((false, AsRequested, h1, false), (false, h1, false, true)),
            ((false, AsRequested, h2, false), (true, h2, false, true)),
            ((false, Http2, h1, false), (true, h2, false, false)),
            ((false, Http1, h2, false), (false, h1, false, true)),
            ((false, Http2, h1, true), (false, h1, false, true)),
            ((true, AsRequested, h1, false), (true, h1, true, true)),
            ((true, AsRequested, h2, false), (true, h2, false, true)),
            ((true, Http2, h1, false), (true, h2, false, false)),
            ((true, Http1, h2, false), (true, h2, true, true)),
            ((true, Http2, h1, true), (false, h1, false, true)),
        ];
        for ((meshed, hint, version, upgrade), expected) in cases {
            let target = target(meshed, hint);
            let mut request = request(version, upgrade);
            let wire = Wire::of(&target, &request);
            absolute_uri(&mut request, target.addr).unwrap();
            wire.translate(&mut request);
            let got = (
                wire.http2,
                request.version(),
                request.headers().contains_key(ORIG_PROTO_HEADER),
                request.headers().contains_key(http::header::HOST),
            );
            let case = (meshed, hint, version, upgrade);
            assert_eq!(got, expected, "{case:?}");
            assert_eq!(request.uri(), "http://web:80/a", "{case:?}");
        }
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
