//! The TLS step: a connection that starts with a ClientHello. Mesh TLS (the
//! SNI names this workload) is terminated here and the client's identity
//! read from its certificate; the application's own TLS is left alone.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use plexus_core::Direction;
use plexus_identity::SpiffeId;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::Inbound;
use super::forward::Route;
use crate::detect::{self, PrefixedIo, Protocol};
use crate::tls::{ClientAuth, HandshakeFailure, PeekedHello, peek_client_hello, peer_identity};

/// PERMISSIVE opaque ports: the wait for a mesh client's ClientHello.
const OPAQUE_TLS_WINDOW: Duration = Duration::from_secs(1);

/// A ClientHello larger than this is not a mesh client's (ours are well under 1 KiB).
const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// What a connection that started with a ClientHello turned out to be.
pub(super) enum Accepted {
    /// Mesh TLS, terminated: the decrypted stream, its detected protocol and
    /// first bytes, and the client's identity (`None`: no certificate).
    /// Boxed: a TLS session is ten times the size of a `TcpStream`.
    Mesh {
        stream: Box<TlsStream<PrefixedIo<TcpStream>>>,
        client: Option<SpiffeId>,
        protocol: Protocol,
        prefix: Bytes,
    },
    /// Someone else's TLS (or no mTLS here): opaque TCP, replayed as read.
    Other { stream: TcpStream, prefix: Bytes },
}

/// An opaque port with mTLS on: how long to wait for a mesh client's
/// ClientHello (sent as soon as it connects) before serving the connection
/// as plaintext. A plaintext client of a server-speaks-first protocol waits
/// that long for its greeting; under STRICT it would be refused anyway, so
/// the whole detection timeout applies. `None`: no mTLS, nothing to wait for.
pub(super) fn opaque_port_window(inbound: &Inbound) -> Option<Duration> {
    inbound.mesh.as_ref()?;
    Some(if inbound.policy.borrow().strict {
        inbound.detect_timeout
    } else {
        OPAQUE_TLS_WINDOW.min(inbound.detect_timeout)
    })
}

/// Terminates mesh TLS, or passes other TLS on; `None`: the connection
/// failed (logged) and is closed.
pub(super) async fn accept(
    inbound: &Inbound,
    mut stream: TcpStream,
    prefix: Bytes,
    route: &Route,
    peer: SocketAddr,
) -> Option<Accepted> {
    let Some(mesh) = &inbound.mesh else {
        return Some(Accepted::Other { stream, prefix });
    };
    let read = read_client_hello(&mut stream, prefix, mesh.identity(), inbound.detect_timeout);
    let (hello, prefix) = match read.await {
        Ok(read) => read,
        Err(e) => {
            tracing::debug!(error = %e, "reading the ClientHello failed");
            return None;
        }
    };
    if hello != PeekedHello::Mesh {
        return Some(Accepted::Other { stream, prefix });
    }
    // STRICT needs a client certificate; PERMISSIVE lets a TLS client
    // without one reach the policy as unauthenticated.
    let auth = if inbound.policy.borrow().strict {
        ClientAuth::Required
    } else {
        ClientAuth::Optional
    };
    let acceptor = TlsAcceptor::from(mesh.server_config(auth));
    let handshake = acceptor.accept(PrefixedIo::new(prefix, stream));
    let metrics = &inbound.tls_metrics;
    let mut tls = match tokio::time::timeout(inbound.detect_timeout, handshake).await {
        Ok(Ok(tls)) => {
            metrics.handshake(Direction::Inbound);
            tls
        }
        Ok(Err(e)) => {
            let reason = HandshakeFailure::of_io(&e);
            metrics.failure(Direction::Inbound, reason);
            tracing::info!(%reason, error = %e, "inbound mTLS handshake failed");
            return None;
        }
        Err(_) => {
            metrics.failure(Direction::Inbound, HandshakeFailure::Other);
            tracing::info!("inbound mTLS handshake timed out");
            return None;
        }
    };
    let client = peer_identity(tls.get_ref().1);
    let (protocol, prefix) = if route.opaque {
        (Protocol::Opaque, Bytes::new())
    } else {
        detect::detect_or_log(&mut tls, inbound.detect_timeout, peer).await?
    };
    Some(Accepted::Mesh {
        stream: Box::new(tls),
        client,
        protocol,
        prefix,
    })
}

/// Reads until the whole ClientHello is buffered (it may span several
/// segments), to classify it by its SNI. Returns every byte read.
async fn read_client_hello(
    stream: &mut TcpStream,
    prefix: Bytes,
    own: &SpiffeId,
    timeout: Duration,
) -> std::io::Result<(PeekedHello, Bytes)> {
    let mut buf = BytesMut::from(prefix);
    let deadline = tokio::time::Instant::now() + timeout;
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
