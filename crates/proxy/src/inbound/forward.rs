//! The forward step: the application is reached on localhost at the port the
//! client asked for; HTTP requests carry the verified client's identity,
//! opaque TCP is copied as is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use plexus_core::Direction;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::Inbound;
use super::policy::{Admission, CLIENT_ID_HEADER};
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
    addr: Option<SocketAddr>,
    /// Skip detection: the environment or the policy says the port is opaque.
    pub(super) opaque: bool,
}

impl Route {
    pub(super) fn of(inbound: &Inbound, stream: &TcpStream) -> Self {
        // The app is reached on localhost at the port the client asked for:
        // dialling the pod's own IP as the proxy's UID would be redirected
        // back to this listener by plexus-init.
        let addr = (inbound.original_dst)(stream)
            .map(app_on_localhost)
            .or(inbound.app_addr);
        let policy = inbound.policy.borrow();
        Self {
            addr,
            opaque: addr.is_some_and(|a| {
                inbound.opaque_ports.contains(a.port()) || policy.opaque_ports.contains(a.port())
            }),
        }
    }
}

/// Where inbound traffic for `original` reaches the app: the same port on
/// the loopback address of the same family.
fn app_on_localhost(original: SocketAddr) -> SocketAddr {
    let loopback: IpAddr = match original {
        SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
    };
    SocketAddr::new(loopback, original.port())
}

/// Serves a connection whose protocol is known, after the policy judged its client.
pub(super) async fn forward<I>(
    inbound: &Inbound,
    io: I,
    prefix: Bytes,
    protocol: Protocol,
    route: Route,
    admission: Admission,
    drain: drain::Watch,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            // A refused HTTP client still gets an answer: 403 `forbidden`.
            let requests = InboundRequests {
                app: route.addr.map(Upstream::passthrough),
                admission,
            };
            let io = PrefixedIo::new(prefix, io);
            crate::http::serve(io, protocol, inbound.http.clone(), requests, drain).await;
        }
        Protocol::Tls | Protocol::Opaque => {
            if let Admission::Refused(why) = admission {
                tracing::debug!(%why, "inbound TCP connection refused by policy: closed");
                return;
            }
            let Some(addr) = route.addr else {
                tracing::debug!(
                    direction = "inbound",
                    "opaque connection with no original destination: closed"
                );
                return;
            };
            let (connect, idle) = (inbound.connect_timeout, inbound.http.idle_timeout);
            opaque::forward(io, prefix, addr, connect, idle, drain).await;
        }
    }
}

/// The requests of one inbound connection: all to the application, each
/// judged by the connection's [`Admission`].
struct InboundRequests {
    app: Option<Upstream>,
    admission: Admission,
}

impl RequestPath for InboundRequests {
    const DIRECTION: Direction = Direction::Inbound;

    fn received(&self, request: &mut Request<Incoming>) {
        if request.headers_mut().remove(ORIG_PROTO_HEADER).is_some() {
            // The client proxy upgraded an HTTP/1 request for the hop between proxies.
            *request.version_mut() = http::Version::HTTP_11;
        }
    }

    fn admit(
        &self,
        request: &mut Request<Incoming>,
        span: &mut RequestSpan,
    ) -> Result<(), ProxyError> {
        self.admission.apply(request.headers_mut())?;
        if span.is_recording() {
            // Set from the verified certificate by `apply`, never by the client.
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
    fn inbound_reaches_the_app_on_localhost_at_the_original_port() {
        let pod_v4: SocketAddr = "10.203.0.3:8080".parse().unwrap();
        let pod_v6: SocketAddr = "[fd00::3]:9090".parse().unwrap();
        assert_eq!(app_on_localhost(pod_v4), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(app_on_localhost(pod_v6), "[::1]:9090".parse().unwrap());
    }
}
