//! Opaque TCP: bytes copied both ways, half-close passed on, idle connections closed.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use plexus_api::v1::Target;
use plexus_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::drain;

/// An endpoint of a meshed target for opaque TCP over mTLS: a ready one,
/// with a proxy and an expected identity, chosen at random (connections are
/// long-lived and few; the logical side's balancing is for requests).
/// Endpoints of the target's default backend, the target itself.
pub fn meshed_endpoint(target: &Target) -> Option<(SocketAddr, SpiffeId)> {
    let default = target.routes.as_ref().map(|r| r.default_backend.as_str());
    let backends = &target.backends.as_ref()?.backends;
    let backend = default
        .and_then(|name| backends.get(name))
        .or_else(|| backends.values().next())?;
    let candidates: Vec<(SocketAddr, SpiffeId)> = backend
        .endpoints
        .iter()
        .filter(|e| e.ready && e.meshed)
        .filter_map(|e| Some((e.address.parse().ok()?, e.identity.parse().ok()?)))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    candidates
        .get(rand::random_range(0..candidates.len()))
        .cloned()
}

/// Connects to `addr` within `timeout`, with Nagle off (the proxy forwards as it receives).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    connect_from(addr, None, timeout).await
}

/// [`connect`], from the local address `source` when given (bound before
/// connecting, any port).
pub async fn connect_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let connecting = async {
        let Some(source) = source else {
            return TcpStream::connect(addr).await;
        };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0)).map_err(|e| {
            io::Error::new(e.kind(), format!("binding source address {source}: {e}"))
        })?;
        socket.connect(addr).await
    };
    let stream = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opaque TCP to `addr` in plaintext: a destination that is not meshed, or
/// inbound's application (from `source`). `prefix`: the bytes detection read.
pub async fn forward<C>(
    client: C,
    prefix: Bytes,
    addr: SocketAddr,
    source: Option<IpAddr>,
    connect_timeout: Duration,
    idle: Duration,
    drain: drain::Watch,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    match connect_from(addr, source, connect_timeout).await {
        Ok(server) => {
            if let Err(e) = proxy_until_closed(client, server, &prefix, idle, drain).await {
                tracing::debug!(%addr, error = %e, "opaque connection ended");
            }
        }
        Err(e) => tracing::debug!(%addr, error = %e, "connecting for opaque TCP failed"),
    }
}

/// [`proxy`] until it ends or the drain closes the connection (after the
/// drain's grace period: an opaque connection has no way to finish sooner).
pub async fn proxy_until_closed<C, S>(
    client: C,
    server: S,
    prefix: &[u8],
    idle: Duration,
    mut drain: drain::Watch,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        result = proxy(client, server, prefix, idle) => result,
        () = drain.closed() => Ok(()),
    }
}

/// Copies between `client` and `server` until both sides have closed, or
/// nothing moved either way for `idle`. `prefix`: bytes already read from
/// the client (during detection), sent first.
pub async fn proxy<C, S>(client: C, mut server: S, prefix: &[u8], idle: Duration) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !prefix.is_empty() {
        server.write_all(prefix).await?;
    }
    let start = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let mut client = Active {
        io: client,
        start,
        last: activity.clone(),
    };
    let mut server = Active {
        io: server,
        start,
        last: activity.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
    tokio::pin!(copy);
    let mut deadline = start + idle;
    loop {
        tokio::select! {
            result = &mut copy => return result.map(drop),
            () = tokio::time::sleep_until(deadline) => {
                let last = start + Duration::from_millis(activity.load(Ordering::Relaxed));
                if last + idle <= Instant::now() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                }
                deadline = last + idle;
            }
        }
    }
}

/// Records, in milliseconds since `start`, when bytes last moved.
struct Active<I> {
    io: I,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<I> Active<I> {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Active<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Active<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close_on() {
        let (mut app, proxy_client) = tokio::io::duplex(1024);
        let (proxy_server, mut upstream) = tokio::io::duplex(1024);
        let task = tokio::spawn(proxy(
            proxy_client,
            proxy_server,
            b"hello ",
            Duration::from_secs(60),
        ));
        app.write_all(b"world").await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
        // The other direction still works after the client's half-close.
        upstream.write_all(b"bye").await.unwrap();
        drop(upstream);
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"bye");
        task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed() {
        let (_app, proxy_client) = tokio::io::duplex(1024);
        let (proxy_server, _upstream) = tokio::io::duplex(1024);
        let err = proxy(proxy_client, proxy_server, b"", Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
