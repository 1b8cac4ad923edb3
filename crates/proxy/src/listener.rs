//! The outbound and inbound listeners: accept, find the target, detect the
//! protocol, then serve HTTP or copy opaque TCP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};

use crate::config::PortSet;
use crate::detect::{self, PrefixedIo, Protocol};
use crate::drain;
use crate::http::{self, ConnUpstream, HttpShared};
use crate::metrics::Direction;
use crate::orig_dst::OriginalDst;
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
}

/// Where a connection goes before any byte is read.
struct Route {
    /// For opaque TCP; `None`: nowhere (outbound, not redirected).
    addr: Option<SocketAddr>,
    http: ConnUpstream,
    /// Skip detection: the port or the target says the protocol is opaque.
    opaque: bool,
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
            (Protocol::Opaque, Bytes::new())
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
            Protocol::Http1 | Protocol::Http2 => {
                let io = PrefixedIo::new(prefix, stream);
                http::serve(io, self.http.clone(), self.direction, route.http, drain).await;
            }
            Protocol::Tls if self.direction == Direction::Inbound => {
                self.inbound_tls(stream, prefix, route.addr, drain).await;
            }
            Protocol::Tls | Protocol::Opaque => {
                self.opaque(stream, prefix, route.addr, drain).await;
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
                    }
                }
                None => Route {
                    addr: None,
                    opaque: false,
                    http: ConnUpstream::ByAuthority(Mutex::new(None)),
                },
            },
            Direction::Inbound => {
                let addr = original.or(self.app_addr);
                Route {
                    addr,
                    opaque: addr.is_some_and(|a| self.opaque_ports.contains(a.port())),
                    http: match addr {
                        Some(addr) => ConnUpstream::Fixed(Upstream::passthrough(addr)),
                        None => ConnUpstream::Nowhere,
                    },
                }
            }
        }
    }

    /// HOOK for mTLS (the TLS work fills this): an inbound connection that
    /// starts with a TLS ClientHello. Until then it is passed on as opaque
    /// TCP, so TLS between apps still works end to end.
    async fn inbound_tls(
        &self,
        stream: TcpStream,
        client_hello: Bytes,
        addr: Option<SocketAddr>,
        drain: drain::Watch,
    ) {
        self.opaque(stream, client_hello, addr, drain).await;
    }

    async fn opaque(
        &self,
        stream: TcpStream,
        prefix: Bytes,
        addr: Option<SocketAddr>,
        mut drain: drain::Watch,
    ) {
        let Some(addr) = addr else {
            tracing::debug!(
                direction = self.direction.as_str(),
                "opaque connection with no original destination: closed"
            );
            return;
        };
        let upstream = match crate::opaque::connect(addr, self.connect_timeout).await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::debug!(%addr, error = %e, "connecting for opaque TCP failed");
                return;
            }
        };
        let copy = crate::opaque::proxy(stream, upstream, &prefix, self.http.idle_timeout);
        tokio::select! {
            result = copy => if let Err(e) = result {
                tracing::debug!(%addr, error = %e, "opaque connection ended");
            },
            () = drain.closed() => {}
        }
    }
}
