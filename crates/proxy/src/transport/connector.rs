//! A connector that always dials one endpoint, whatever the request's
//! authority; over mTLS when the endpoint is a meshed proxy with an
//! expected identity.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use plexus_core::Direction;
use plexus_identity::SpiffeId;
use rustls::pki_types::ServerName;

use super::mesh_io::MeshIo;
use crate::tls::{HandshakeFailure, MeshTls, TlsMetrics, mesh_server_name};

#[derive(Clone)]
pub struct EndpointConnector {
    addr: SocketAddr,
    /// Where to connect from; `None`: the kernel picks.
    source: Option<IpAddr>,
    timeout: Duration,
    tls: Option<MeshConnect>,
}

/// How to reach a meshed endpoint's proxy: who it must be, and what to
/// count handshakes into.
#[derive(Clone)]
pub struct MeshConnect {
    pub mesh: MeshTls,
    pub expected: SpiffeId,
    pub metrics: TlsMetrics,
}

impl EndpointConnector {
    pub fn new(
        addr: SocketAddr,
        source: Option<IpAddr>,
        timeout: Duration,
        tls: Option<MeshConnect>,
    ) -> Self {
        Self {
            addr,
            source,
            timeout,
            tls,
        }
    }
}

impl tower::Service<Uri> for EndpointConnector {
    type Response = TokioIo<MeshIo>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, source, timeout) = (self.addr, self.source, self.timeout);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = crate::opaque::connect_from(addr, source, timeout).await?;
            let io = match tls {
                None => MeshIo::Plain(tcp),
                Some(tls) => MeshIo::Tls(Box::new(handshake(tcp, addr, timeout, tls).await?)),
            };
            Ok(TokioIo::new(io))
        })
    }
}

/// Connects to a meshed endpoint's proxy over mTLS (opaque TCP uses it directly).
pub async fn connect_mesh(
    addr: SocketAddr,
    timeout: Duration,
    tls: MeshConnect,
) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = crate::opaque::connect(addr, timeout).await?;
    handshake(tcp, addr, timeout, tls).await
}

/// The client side of mesh TLS: the server must prove `expected`.
async fn handshake(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    timeout: Duration,
    tls: MeshConnect,
) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let expected = &tls.expected;
    let failed = |reason: HandshakeFailure, detail: &dyn std::fmt::Display| {
        tls.metrics.failure(Direction::Outbound, reason);
        io::Error::other(format!(
            "mTLS handshake with {addr} expecting identity {expected} failed: {reason} ({detail})"
        ))
    };
    if !tls.mesh.ready() {
        return Err(failed(
            HandshakeFailure::Other,
            &"this proxy has no valid certificate yet",
        ));
    }
    // Connecting by IP would make the server take this for an app's own TLS.
    let name: ServerName<'static> = mesh_server_name(expected)
        .ok_or_else(|| failed(HandshakeFailure::Other, &"identity too long for a TLS name"))?;
    let connector = tokio_rustls::TlsConnector::from(tls.mesh.client_config(expected));
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => {
            tls.metrics.handshake(Direction::Outbound);
            Ok(stream)
        }
        Ok(Err(e)) => Err(failed(HandshakeFailure::of_io(&e), &e)),
        Err(_) => Err(failed(HandshakeFailure::Other, &"timed out")),
    }
}
