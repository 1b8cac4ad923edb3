//! The inbound path: connections from clients (other proxies, or anything
//! in plaintext) to the local application.
//!
//! accept → TLS → policy → forward
//!
//! 1. **accept** ([`crate::accept`]): the connection, redirected by iptables;
//!    where it would have gone names the application's port ([`forward`]),
//!    then its first bytes are detected ([`crate::detect`]).
//! 2. **TLS** ([`tls`]): mesh TLS (a ClientHello naming this workload) is
//!    terminated, the client's identity taken from its certificate, and the
//!    decrypted stream detected again; the application's own TLS passes.
//! 3. **policy** ([`policy`]): whether the client may call this workload,
//!    asked again on every HTTP request and, for opaque TCP, on every change;
//!    HTTP requests beyond the workload's rate limit ([`rate_limit`]) get 429.
//! 4. **forward** ([`forward`]): HTTP requests or opaque TCP to the
//!    application on the pod's IP (from 127.0.0.6), with the verified client
//!    in `plexus-client-id`.

mod forward;
pub mod policy;
mod rate_limit;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plexus_core::Direction;
use tokio::net::TcpStream;

use crate::accept::{Listener, accept_until_drained};
use crate::detect::{self, Protocol};
use crate::drain;
use crate::http::HttpShared;
use crate::orig_dst::OriginalDst;
use crate::ports::PortSet;
use crate::tls::{MeshTls, TlsMetrics};
use forward::Route;
use policy::{Client, PolicyWatch};

/// What every inbound connection shares.
pub struct Inbound {
    pub http: Arc<HttpShared>,
    pub original_dst: OriginalDst,
    /// Application ports never sniffed.
    pub opaque_ports: PortSet,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    /// Local mode: where a connection that was not redirected goes.
    pub app_addr: Option<SocketAddr>,
    /// Who may connect.
    pub policy: PolicyWatch,
    /// This proxy's identity: mesh TLS is terminated with it.
    pub mesh: Option<MeshTls>,
    pub tls_metrics: TlsMetrics,
}

impl Inbound {
    /// Accepts until draining starts.
    pub async fn run(self: Arc<Self>, listener: Listener, drain: drain::Watch) {
        let metrics = self.http.metrics.clone();
        accept_until_drained(
            listener,
            Direction::Inbound,
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
        let route = Route::of(self, &stream);
        let (protocol, prefix) = if route.opaque {
            match tls::opaque_port_window(self) {
                // Only mesh TLS is looked for: the port is still never sniffed for HTTP.
                Some(window) => match detect::detect_or_log(&mut stream, window, peer).await {
                    Some((Protocol::Tls, hello)) => (Protocol::Tls, hello),
                    Some((_, prefix)) => (Protocol::Opaque, prefix),
                    None => return,
                },
                None => (Protocol::Opaque, Bytes::new()),
            }
        } else {
            match detect::detect_or_log(&mut stream, self.detect_timeout, peer).await {
                Some(detected) => detected,
                None => return,
            }
        };
        if protocol != Protocol::Tls {
            let client = Client::new(None);
            return forward::forward(self, stream, prefix, protocol, route, client, drain).await;
        }
        match tls::accept(self, stream, prefix, &route, peer).await {
            Some(tls::Accepted::Mesh {
                stream,
                client,
                protocol,
                prefix,
            }) => {
                let client = Client::new(client);
                forward::forward(self, stream, prefix, protocol, route, client, drain).await;
            }
            Some(tls::Accepted::Other { stream, prefix }) => {
                let (client, protocol) = (Client::new(None), Protocol::Opaque);
                forward::forward(self, stream, prefix, protocol, route, client, drain).await;
            }
            None => {}
        }
    }
}
