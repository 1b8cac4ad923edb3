//! The outbound path: the local application's connections to services.
//!
//! accept → detect → route → balance → connect
//!
//! 1. **accept** ([`crate::accept`]): the app's connection, redirected by
//!    iptables (or sent to the listener directly).
//! 2. **detect** ([`crate::detect`]): HTTP/1, HTTP/2, TLS or opaque TCP, from
//!    the first bytes; skipped for opaque ports and opaque targets.
//! 3. **route** ([`route`]): the connection's target from its original
//!    destination, or each request's from its `Host` / `:authority`.
//! 4. **balance** ([`balance`]): a meshed target's `Logical` picks the route
//!    rule, the backend and the endpoint of each request.
//! 5. **connect** ([`connect`]): opaque TCP to an endpoint's proxy over mTLS
//!    or to the original destination; HTTP requests through
//!    [`crate::transport`]'s pooled clients.

mod balance;
mod connect;
mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plexus_core::Direction;
use tokio::net::TcpStream;

pub use balance::{Targets, release_idle_destinations};

use crate::accept::{Listener, accept_until_drained};
use crate::detect::{self, PrefixedIo, Protocol};
use crate::drain;
use crate::http::{self, HttpShared};
use crate::orig_dst::OriginalDst;
use crate::ports::PortSet;
use crate::tls::{MeshTls, TlsMetrics};
use route::Route;

/// What every outbound connection shares.
pub struct Outbound {
    pub http: Arc<HttpShared>,
    pub targets: Arc<Targets>,
    pub original_dst: OriginalDst,
    /// Destination ports never sniffed.
    pub opaque_ports: PortSet,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    /// This proxy's identity: opaque TCP to meshed targets uses mTLS with it.
    pub mesh: Option<MeshTls>,
    pub tls_metrics: TlsMetrics,
}

impl Outbound {
    /// Accepts until draining starts.
    pub async fn run(self: Arc<Self>, listener: Listener, drain: drain::Watch) {
        let metrics = self.http.metrics.clone();
        accept_until_drained(
            listener,
            Direction::Outbound,
            metrics,
            drain,
            move |stream, peer, drain| {
                let this = self.clone();
                async move { this.serve(stream, peer, drain).await }
            },
        )
        .await;
    }

    async fn serve(&self, mut stream: TcpStream, peer: SocketAddr, drain: drain::Watch) {
        let route = Route::of(self, &stream, peer.ip()).await;
        let (protocol, prefix) = if route.opaque {
            (Protocol::Opaque, Bytes::new())
        } else {
            match detect::detect_or_log(&mut stream, self.detect_timeout, peer).await {
                Some(detected) => detected,
                None => return,
            }
        };
        match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let io = PrefixedIo::new(prefix, stream);
                http::serve(io, protocol, self.http.clone(), route.requests, drain).await;
            }
            // The application's own TLS is opaque to the proxy.
            Protocol::Tls | Protocol::Opaque => {
                connect::opaque(self, stream, prefix, route, drain).await;
            }
        }
    }
}
