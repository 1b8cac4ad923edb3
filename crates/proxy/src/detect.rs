//! Protocol detection: what the client speaks, judged from its first bytes.
//!
//! The bytes are read (not peeked: a peek cannot wait for *more* data) into a
//! small buffer and replayed to whoever serves the connection through
//! [`PrefixedIo`]. A client that sends nothing within the timeout, such as
//! the client of a server-speaks-first protocol, is served as opaque TCP.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (the client sent the connection preface).
    Http2,
    /// A TLS ClientHello (inbound: the mTLS hook decides what to do with it).
    Tls,
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request line longer than this is left to hyper (414/431), not sniffed further.
const MAX_DETECT_BYTES: usize = 8 * 1024;
/// The longest method we wait for before calling a stream not-HTTP.
const MAX_METHOD_LEN: usize = 24;

/// Reads the client's first bytes until the protocol is known, the client
/// closes, or `timeout` passes. Returns the bytes read, to be replayed.
pub async fn detect<I>(io: &mut I, timeout: Duration) -> io::Result<(Protocol, Bytes)>
where
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(protocol) = classify(&buf) {
            return Ok((protocol, buf.freeze()));
        }
        if buf.len() >= MAX_DETECT_BYTES {
            return Ok((Protocol::Opaque, buf.freeze()));
        }
        buf.reserve(1024.min(MAX_DETECT_BYTES - buf.len()));
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_elapsed) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Ok(0)) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// [`detect`], with a failed read logged: `None` means the connection is
/// done for (the client reset it while the proxy was listening).
pub async fn detect_or_log<I>(
    io: &mut I,
    timeout: Duration,
    peer: SocketAddr,
) -> Option<(Protocol, Bytes)>
where
    I: AsyncRead + Unpin,
{
    match detect(io, timeout).await {
        Ok(detected) => Some(detected),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "reading the first bytes failed");
            None
        }
    }
}

/// `None`: not enough bytes to tell yet.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return None;
    }
    if buf.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    if buf[0] == 0x16 {
        // TLS record: content type handshake, major version 3, then the
        // handshake message type at offset 5 (1 = ClientHello).
        return match buf.get(1..6) {
            None if buf.get(1).is_none_or(|&v| v == 3) => None,
            Some([3, _, _, _, 1]) => Some(Protocol::Tls),
            _ => Some(Protocol::Opaque),
        };
    }
    classify_http1(buf)
}

/// HTTP/1 when the first line is `METHOD SP target SP HTTP/1.x`.
fn classify_http1(buf: &[u8]) -> Option<Protocol> {
    let method_len = buf.iter().take_while(|b| is_method_char(**b)).count();
    match buf.get(method_len) {
        None if method_len <= MAX_METHOD_LEN => return None,
        Some(b' ') if (1..=MAX_METHOD_LEN).contains(&method_len) => {}
        _ => return Some(Protocol::Opaque),
    }
    let rest = &buf[method_len + 1..];
    let Some(end) = rest.iter().position(|b| *b == b'\n') else {
        return if rest.iter().any(|b| b.is_ascii_control() && *b != b'\r') {
            Some(Protocol::Opaque)
        } else if buf.len() >= MAX_DETECT_BYTES {
            // A huge request line: let hyper answer it (414).
            Some(Protocol::Http1)
        } else {
            None
        };
    };
    let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
    let http1 = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
    Some(if http1 {
        Protocol::Http1
    } else {
        Protocol::Opaque
    })
}

fn is_method_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

/// An IO that replays the bytes detection read, then reads from `io`.
#[derive(Debug)]
pub struct PrefixedIo<I> {
    prefix: Bytes,
    io: I,
}

impl<I> PrefixedIo<I> {
    pub fn new(prefix: Bytes, io: I) -> Self {
        Self { prefix, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Release the detection buffer now rather than with the connection.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
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

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b""), None);
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"DELETE /x?y=1 HTTP/1.0\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET / HT"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(
            classify(b"\x16\x03\x01\x02\x00\x01\x00"),
            Some(Protocol::Tls)
        );
        assert_eq!(classify(b"\x16\x03"), None);
        assert_eq!(
            classify(b"\x16\x03\x01\x02\x00\x02"),
            Some(Protocol::Opaque)
        );
        assert_eq!(classify(b"GARBAGE\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET / SPDY/3\r\n"), Some(Protocol::Opaque));
        assert_eq!(
            classify(b"\x00\x00\x00\x08\x04\xd2\x16/"),
            Some(Protocol::Opaque)
        );
        assert_eq!(classify(b"get / HTTP/1.1\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET /\x01"), Some(Protocol::Opaque));
    }

    #[tokio::test]
    async fn detection_replays_what_it_read() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let (protocol, prefix) = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        let mut io = PrefixedIo::new(prefix, server);
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_opaque_after_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (protocol, prefix) = detect(&mut server, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(protocol, Protocol::Opaque);
        assert!(prefix.is_empty());
    }
}
