//! The forward step: in a cluster the application is reached where the
//! client sent the connection (the pod's IP and port) from
//! [`plexus_core::app_source`]; in local mode at `PLEXUS_INBOUND_APP_ADDR`.
//! HTTP requests carry the verified client's identity, opaque TCP is copied
//! as is; both are judged by the policy as it is now, not as it was when the
//! connection opened.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use plexus_core::Direction;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::Inbound;
use super::policy::{CLIENT_ID_HEADER, Client, PolicyWatch};
use crate::detect::{PrefixedIo, Protocol};
use crate::drain;
use crate::error::ProxyError;
use crate::http::RequestPath;
use crate::opaque;
use crate::telemetry::RequestSpan;
use crate::transport::ORIG_PROTO_HEADER;
use crate::upstream::Upstream;

/// Where a connection goes, known before any byte is read.
pub(super) struct Route {
    /// The application; `None`: not redirected and no `PLEXUS_INBOUND_APP_ADDR`.
    app: Option<App>,
    /// Skip detection: the environment or the policy says the port is opaque.
    pub(super) opaque: bool,
}

/// The application's address, and the local address to reach it from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct App {
    addr: SocketAddr,
    /// `None`: the kernel picks (local mode).
    source: Option<IpAddr>,
}

impl Route {
    pub(super) fn of(inbound: &Inbound, stream: &TcpStream) -> Self {
        let app = App::of((inbound.original_dst)(stream), inbound.app_addr);
        let policy = inbound.policy.borrow();
        Self {
            app,
            opaque: app.is_some_and(|a| {
                let port = a.addr.port();
                inbound.opaque_ports.contains(port) || policy.opaque_ports.contains(port)
            }),
        }
    }
}

impl App {
    /// A redirected connection goes where the client sent it, the pod's own
    /// IP (an app bound to loopback only is not reachable from other pods,
    /// as without a mesh), from the address plexus-init lets through to the
    /// app: from any other, the proxy's UID dialling the pod IP would be
    /// redirected back to this listener. Not redirected: local mode.
    fn of(original: Option<SocketAddr>, local_mode: Option<SocketAddr>) -> Option<Self> {
        match original {
            Some(addr) => {
                let source: IpAddr = match addr {
                    SocketAddr::V4(_) => plexus_core::app_source::V4.into(),
                    SocketAddr::V6(_) => plexus_core::app_source::V6.into(),
                };
                Some(Self {
                    addr,
                    source: Some(source),
                })
            }
            None => local_mode.map(|addr| Self { addr, source: None }),
        }
    }
}

/// Serves a connection whose protocol is known, from `client`.
pub(super) async fn forward<I>(
    inbound: &Inbound,
    io: I,
    prefix: Bytes,
    protocol: Protocol,
    route: Route,
    client: Client,
    drain: drain::Watch,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            // A refused HTTP client still gets an answer: 403 `forbidden`.
            let requests = InboundRequests {
                app: route
                    .app
                    .map(|app| Upstream::passthrough_from(app.addr, app.source)),
                client,
                policy: inbound.policy.clone(),
                rate_limited: inbound.http.metrics.rate_limited.clone(),
            };
            let io = PrefixedIo::new(prefix, io);
            crate::http::serve(io, protocol, inbound.http.clone(), requests, drain).await;
        }
        Protocol::Tls | Protocol::Opaque => {
            if let Err(why) = client.admitted(&inbound.policy) {
                tracing::debug!(%why, "inbound TCP connection refused by policy: closed");
                return;
            }
            let Some(app) = route.app else {
                tracing::debug!(
                    direction = "inbound",
                    "opaque connection with no original destination: closed"
                );
                return;
            };
            let (connect, idle) = (inbound.connect_timeout, inbound.http.idle_timeout);
            let copied = opaque::forward(io, prefix, app.addr, app.source, connect, idle, drain);
            // Dropping the copy closes both sides.
            tokio::select! {
                () = copied => {}
                why = client.refused(inbound.policy.clone()) => {
                    tracing::debug!(%why, "open inbound TCP connection refused by a policy change: closed");
                }
            }
        }
    }
}

/// The requests of one inbound connection: all to the application, each
/// judged by the current policy for the connection's client.
struct InboundRequests {
    app: Option<Upstream>,
    client: Client,
    policy: PolicyWatch,
    /// `plexus_proxy_inbound_rate_limited_total`.
    rate_limited: Counter,
}

impl RequestPath for InboundRequests {
    const DIRECTION: Direction = Direction::Inbound;

    fn received(&self, request: &mut Request<Incoming>) {
        if request.headers_mut().remove(ORIG_PROTO_HEADER).is_some() {
            // The client proxy upgraded an HTTP/1 request for the hop between proxies.
            *request.version_mut() = http::Version::HTTP_11;
        }
    }

    /// The application is the destination here: nothing to balance.
    fn source(&self) -> Option<&std::net::IpAddr> {
        None
    }

    fn admit(
        &self,
        request: &mut Request<Incoming>,
        span: &mut RequestSpan,
    ) -> Result<(), ProxyError> {
        let admitted = self
            .client
            .admit_request(&self.policy, request.headers_mut());
        if let Err(ProxyError::RateLimited { .. }) = admitted {
            self.rate_limited.inc();
            span.set_rate_limited();
        }
        admitted?;
        if span.is_recording() {
            // Set from the verified certificate by `admit_request`, never by the client.
            let client = request.headers().get(CLIENT_ID_HEADER);
            span.set_identities(client.and_then(|id| id.to_str().ok()), None);
        }
        Ok(())
    }

    async fn upstream(&self, _: &Request<Incoming>) -> Result<Upstream, ProxyError> {
        self.app.clone().ok_or_else(|| {
            ProxyError::UnknownTarget(
                "inbound connection: not redirected and PLEXUS_INBOUND_APP_ADDR unset".into(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirected_connection_reaches_the_app_on_the_pod_ip_from_the_app_source() {
        let pod_v4: SocketAddr = "10.203.0.3:8080".parse().unwrap();
        let pod_v6: SocketAddr = "[fd00::3]:9090".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let v4 = App::of(Some(pod_v4), Some(local)).unwrap();
        assert_eq!(
            (v4.addr, v4.source),
            (pod_v4, Some("127.0.0.6".parse().unwrap()))
        );
        let v6 = App::of(Some(pod_v6), None).unwrap();
        assert_eq!((v6.addr, v6.source), (pod_v6, Some("::6".parse().unwrap())));
    }

    #[test]
    fn local_mode_reaches_the_configured_app_from_any_source() {
        let local: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let app = App::of(None, Some(local));
        assert_eq!(
            app,
            Some(App {
                addr: local,
                source: None
            })
        );
        assert_eq!(App::of(None, None), None);
    }
}
