//! The outbound and inbound listeners: accept, find the target, detect the
//! protocol (inbound: terminate mesh TLS first and apply the policy), then
//! serve HTTP or copy opaque TCP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use plexus_api::v1::Target;
use plexus_core::Direction;
use plexus_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::detect::{self, PrefixedIo, Protocol};
use crate::drain;
use crate::http::{self, ConnUpstream, HttpShared};
use crate::inbound_policy::{Admission, PolicyWatch};
use crate::orig_dst::OriginalDst;
use crate::ports::PortSet;
use crate::tls::{
    ClientAuth, HandshakeFailure, MeshTls, PeekedHello, TlsMetrics, peek_client_hello,
    peer_identity,
};
use crate::transport::{MeshConnect, connect_mesh};
use crate::upstream::Upstream;

/// What one listener's connections share.
pub struct Listener {
    pub direction: Direction,
    pub http: Arc<HttpShared>,
    pub original_dst: OriginalDst,
    /// Destination ports never sniffed.
    pub opaque_ports: PortSet,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    /// Inbound, local mode: where a connection that was not redirected goes.
    pub app_addr: Option<SocketAddr>,
    /// Inbound: who may connect (unused outbound).
    pub policy: PolicyWatch,
    /// This proxy's identity: inbound mesh TLS is terminated with it.
    pub mesh: Option<MeshTls>,
    pub tls_metrics: TlsMetrics,
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

/// PERMISSIVE opaque ports: the wait for a mesh client's ClientHello.
const OPAQUE_TLS_WINDOW: Duration = Duration::from_secs(1);

/// A ClientHello larger than this is not a mesh client's (ours are well under 1 KiB).
const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Where a connection goes before any byte is read.
struct Route {
    /// For opaque TCP; `None`: nowhere (outbound, not redirected).
    addr: Option<SocketAddr>,
    http: ConnUpstream,
    /// Skip detection: the port or the target says the protocol is opaque.
    opaque: bool,
    /// Outbound: the meshed target, for opaque TCP over mTLS.
    target: Option<watch::Receiver<Arc<Target>>>,
}

impl Listener {
    /// Accepts until draining starts.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut drain: drain::Watch) {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, do not spin.
                        tracing::warn!(error = %e, direction = self.direction.as_str(), "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = drain.draining() => return,
            };
            let this = self.clone();
            let drain = drain.clone();
            tokio::spawn(async move { this.serve(stream, peer, drain).await });
        }
    }

    async fn serve(&self, mut stream: TcpStream, peer: SocketAddr, drain: drain::Watch) {
        let _open = self.http.metrics.open_connection(self.direction);
        // Nagle would delay small writes (response heads) for no gain.
        let _ = stream.set_nodelay(true);
        let route = self.route(&stream).await;
        let (protocol, prefix) = if route.opaque {
            match self.opaque_tls_window() {
                Some(window) => match detect::detect(&mut stream, window).await {
                    // Only mesh TLS is looked for: the port is still never sniffed for HTTP.
                    Ok((Protocol::Tls, hello)) => (Protocol::Tls, hello),
                    Ok((_, prefix)) => (Protocol::Opaque, prefix),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "reading the first bytes failed");
                        return;
                    }
                },
                None => (Protocol::Opaque, Bytes::new()),
            }
        } else {
            match detect::detect(&mut stream, self.detect_timeout).await {
                Ok(detected) => detected,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "reading the first bytes failed");
                    return;
                }
            }
        };
        match protocol {
            Protocol::Tls if self.direction == Direction::Inbound => {
                self.inbound_tls(stream, prefix, route, drain).await;
            }
            _ => {
                self.forward(stream, prefix, protocol, route, None, drain)
                    .await;
            }
        }
    }

    /// Inbound to an opaque port with mTLS on: how long to wait for a mesh
    /// client's ClientHello (sent as soon as it connects) before serving the
    /// connection as plaintext. A plaintext client of a server-speaks-first
    /// protocol waits that long for its greeting; under STRICT it would be
    /// refused anyway, so the whole detection timeout applies.
    fn opaque_tls_window(&self) -> Option<Duration> {
        if self.direction != Direction::Inbound || self.mesh.is_none() {
            return None;
        }
        Some(if self.policy.borrow().strict {
            self.detect_timeout
        } else {
            OPAQUE_TLS_WINDOW.min(self.detect_timeout)
        })
    }

    /// Serves a connection whose protocol is known, after the inbound policy
    /// judged its client: `client` is the mTLS identity, `None` for plaintext.
    async fn forward<I>(
        &self,
        io: I,
        prefix: Bytes,
        protocol: Protocol,
        route: Route,
        client: Option<SpiffeId>,
        drain: drain::Watch,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let admission = match self.direction {
            Direction::Outbound => Admission::Outbound,
            Direction::Inbound => Admission::inbound(&self.policy.borrow(), client.as_ref()),
        };
        match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                // A refused HTTP client still gets an answer: 403 `forbidden`.
                let io = PrefixedIo::new(prefix, io);
                http::serve(
                    io,
                    self.http.clone(),
                    self.direction,
                    route.http,
                    admission,
                    drain,
                )
                .await;
            }
            Protocol::Tls | Protocol::Opaque => {
                if let Admission::Refused(why) = admission {
                    tracing::debug!(%why, "inbound TCP connection refused by policy: closed");
                    return;
                }
                self.opaque(io, prefix, route, drain).await;
            }
        }
    }

    async fn route(&self, stream: &TcpStream) -> Route {
        let original = (self.original_dst)(stream);
        match self.direction {
            Direction::Outbound => match original {
                Some(addr) => {
                    let redirected = self.http.targets.by_original_dst(addr).await;
                    Route {
                        addr: Some(addr),
                        opaque: redirected.opaque || self.opaque_ports.contains(addr.port()),
                        http: ConnUpstream::Fixed(redirected.upstream),
                        target: redirected.target,
                    }
                }
                None => Route {
                    addr: None,
                    opaque: false,
                    target: None,
                    http: ConnUpstream::ByAuthority(Mutex::new(None)),
                },
            },
            Direction::Inbound => {
                // The app is reached on localhost at the port the client
                // asked for: dialling the pod's own IP as the proxy's UID
                // would be redirected back to this listener by plexus-init.
                let addr = original.map(app_on_localhost).or(self.app_addr);
                let policy = self.policy.borrow();
                Route {
                    addr,
                    opaque: addr.is_some_and(|a| {
                        self.opaque_ports.contains(a.port())
                            || policy.opaque_ports.contains(a.port())
                    }),
                    http: match addr {
                        Some(addr) => ConnUpstream::Fixed(Upstream::passthrough(addr)),
                        None => ConnUpstream::Nowhere,
                    },
                    target: None,
                }
            }
        }
    }

    /// An inbound connection that starts with a TLS ClientHello. Mesh TLS
    /// (the SNI names this workload) is terminated here: the client's
    /// identity comes from its certificate, then the decrypted stream is
    /// detected and served like any other. An application's own TLS is
    /// passed through as opaque TCP.
    async fn inbound_tls(
        &self,
        mut stream: TcpStream,
        prefix: Bytes,
        route: Route,
        drain: drain::Watch,
    ) {
        let Some(mesh) = &self.mesh else {
            return self
                .forward(stream, prefix, Protocol::Opaque, route, None, drain)
                .await;
        };
        let (hello, prefix) = match self
            .read_client_hello(&mut stream, prefix, mesh.identity())
            .await
        {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(error = %e, "reading the ClientHello failed");
                return;
            }
        };
        if hello != PeekedHello::Mesh {
            return self
                .forward(stream, prefix, Protocol::Opaque, route, None, drain)
                .await;
        }
        // STRICT needs a client certificate; PERMISSIVE lets a TLS client
        // without one reach the policy as unauthenticated.
        let auth = if self.policy.borrow().strict {
            ClientAuth::Required
        } else {
            ClientAuth::Optional
        };
        let acceptor = TlsAcceptor::from(mesh.server_config(auth));
        let handshake = acceptor.accept(PrefixedIo::new(prefix, stream));
        let mut tls = match tokio::time::timeout(self.detect_timeout, handshake).await {
            Ok(Ok(tls)) => {
                self.tls_metrics.handshake(Direction::Inbound);
                tls
            }
            Ok(Err(e)) => {
                let reason = HandshakeFailure::of_io(&e);
                self.tls_metrics.failure(Direction::Inbound, reason);
                tracing::info!(%reason, error = %e, "inbound mTLS handshake failed");
                return;
            }
            Err(_) => {
                self.tls_metrics
                    .failure(Direction::Inbound, HandshakeFailure::Other);
                tracing::info!("inbound mTLS handshake timed out");
                return;
            }
        };
        let client = peer_identity(tls.get_ref().1);
        let (protocol, prefix) = if route.opaque {
            (Protocol::Opaque, Bytes::new())
        } else {
            match detect::detect(&mut tls, self.detect_timeout).await {
                Ok(detected) => detected,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the first decrypted bytes failed");
                    return;
                }
            }
        };
        self.forward(tls, prefix, protocol, route, client, drain)
            .await;
    }

    /// Reads until the whole ClientHello is buffered (it may span several
    /// segments), to classify it by its SNI. Returns every byte read.
    async fn read_client_hello(
        &self,
        stream: &mut TcpStream,
        prefix: Bytes,
        own: &SpiffeId,
    ) -> std::io::Result<(PeekedHello, Bytes)> {
        let mut buf = BytesMut::from(prefix);
        let deadline = tokio::time::Instant::now() + self.detect_timeout;
        loop {
            match peek_client_hello(&buf, own) {
                PeekedHello::Incomplete if buf.len() < MAX_CLIENT_HELLO => {}
                // Too big to be ours: whatever it is, it is not mesh TLS.
                PeekedHello::Incomplete => return Ok((PeekedHello::OtherTls, buf.freeze())),
                peeked => return Ok((peeked, buf.freeze())),
            }
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Err(_) | Ok(Ok(0)) => return Ok((PeekedHello::OtherTls, buf.freeze())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// Opaque TCP: outbound to a meshed target, to one of its endpoints'
    /// proxies over mTLS (never downgraded to plaintext if that fails);
    /// otherwise to the original destination (inbound: the application).
    async fn opaque<I>(&self, stream: I, prefix: Bytes, route: Route, drain: drain::Watch)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(addr) = route.addr else {
            tracing::debug!(
                direction = self.direction.as_str(),
                "opaque connection with no original destination: closed"
            );
            return;
        };
        let meshed = match (&self.mesh, &route.target) {
            (Some(mesh), Some(target)) => {
                let endpoint = crate::opaque::meshed_endpoint(&target.borrow());
                endpoint.map(|(endpoint, expected)| {
                    let tls = MeshConnect {
                        mesh: mesh.clone(),
                        expected,
                        metrics: self.tls_metrics.clone(),
                    };
                    (endpoint, tls)
                })
            }
            _ => None,
        };
        match meshed {
            Some((endpoint, tls)) => {
                match connect_mesh(endpoint, self.connect_timeout, tls).await {
                    Ok(upstream) => self.copy(stream, upstream, &prefix, endpoint, drain).await,
                    Err(e) => {
                        tracing::info!(%addr, %endpoint, error = %e, "opaque mTLS connection failed")
                    }
                }
            }
            None => match crate::opaque::connect(addr, self.connect_timeout).await {
                Ok(upstream) => self.copy(stream, upstream, &prefix, addr, drain).await,
                Err(e) => tracing::debug!(%addr, error = %e, "connecting for opaque TCP failed"),
            },
        }
    }

    async fn copy<C, S>(
        &self,
        client: C,
        server: S,
        prefix: &[u8],
        addr: SocketAddr,
        mut drain: drain::Watch,
    ) where
        C: AsyncRead + AsyncWrite + Unpin,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let copy = crate::opaque::proxy(client, server, prefix, self.http.idle_timeout);
        tokio::select! {
            result = copy => if let Err(e) = result {
                tracing::debug!(%addr, error = %e, "opaque connection ended");
            },
            () = drain.closed() => {}
        }
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
