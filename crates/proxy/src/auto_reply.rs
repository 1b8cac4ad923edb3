//! hyper's own answers to HTTP/1 requests it cannot parse (`400` for a
//! malformed head, `431` for one over the size limit, `414`), given the
//! `plexus-error` header every response the proxy makes carries.
//!
//! hyper writes these without calling the service and has no hook for them,
//! so they are recognised on their way to the socket: [`TagAutoReplies`]
//! wraps an HTTP/1 server connection's IO and inserts `plexus-error` after
//! the status line of hyper's reply. It tells that reply from a forwarded
//! upstream `400` by [`Replies`], which the service keeps: hyper's HTTP/1
//! server reads the next request head only after the previous response was
//! handed over whole, and calls the service for every head that parsed, so a
//! response head written while no service call is waiting for its head is
//! hyper's own. Beyond that count, the reply must look exactly like hyper's
//! (`content-length: 0`, `date`, maybe `connection: close`, nothing after
//! it, written alone), so a body chunk is not taken for one unless it is
//! byte for byte such a reply.
//!
//! What the wrapper relies on in hyper's writes (the server forces
//! `writev(true)`, hyper's queued write strategy): a response head is the
//! first buffer of a write, and starts it unless the previous write was
//! partial. After a response that switches protocols (`101`, a `2xx` to
//! `CONNECT`) the connection carries other bytes: they pass untouched from
//! then on.
//!
//! The same IO times the connection's request heads when told to
//! ([`TagAutoReplies::timing_heads`], [`crate::head_timeout`]).
//!
//! Where that does not hold, the error is on the safe side: a head that
//! shares a write with bytes still unsent (pipelined bodyless responses
//! under backpressure) goes uncounted, and later replies of hyper's on that
//! connection go untagged; no forwarded response is tagged for it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{ERROR_HEADER, ProxyError};
use crate::head_timeout::HeadDeadline;

/// What the service of one HTTP/1 connection tells its [`TagAutoReplies`].
#[derive(Debug, Default)]
pub struct Replies {
    /// Requests handed to the service whose response head has not been
    /// seen written yet.
    awaited: AtomicUsize,
    /// A response switched protocols: the rest is not HTTP/1.
    switched: AtomicBool,
}

impl Replies {
    /// The service was handed a request; its response head comes next.
    pub fn called(&self) {
        self.awaited.fetch_add(1, Ordering::AcqRel);
    }

    /// The service's response switches protocols (`101`, `2xx` to `CONNECT`).
    pub fn switching(&self) {
        self.switched.store(true, Ordering::Release);
    }

    /// A response head was seen written: whether a service call awaited it.
    fn head_written(&self) -> bool {
        self.awaited
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// An HTTP/1 server connection's IO that tags hyper's automatic replies.
pub struct TagAutoReplies<I> {
    io: I,
    /// `None`: nothing to look at (protocols switched, or hyper's reply, its
    /// last write on the connection, already tagged).
    replies: Option<Arc<Replies>>,
    /// The last write was accepted whole: the next starts a new chunk of
    /// hyper's buffer (which may be a response head).
    at_write_start: bool,
    /// A tagged reply (longer than what hyper handed over), still being written.
    stash: Bytes,
    /// Reads go through it when request heads are timed.
    head: Option<HeadDeadline>,
}

impl<I> TagAutoReplies<I> {
    /// `replies`: the connection's; `None` passes every byte untouched (what
    /// the tests compare the tagged bytes with).
    pub fn new(io: I, replies: Option<Arc<Replies>>) -> Self {
        Self {
            io,
            replies,
            at_write_start: true,
            stash: Bytes::new(),
            head: None,
        }
    }

    /// Times the request heads read ([`crate::head_timeout`]).
    pub fn timing_heads(mut self, head: HeadDeadline) -> Self {
        self.head = Some(head);
        self
    }
}

impl<I: AsyncWrite + Unpin> TagAutoReplies<I> {
    fn poll_drain_stash(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.stash.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.stash))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.stash.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Looks at a write about to start with `first`, `alone` when no other
    /// bytes come with it. `Some`: hyper's reply, tagged, to write instead.
    fn inspect(&mut self, first: &[u8], alone: bool) -> Option<Bytes> {
        let replies = self.replies.as_ref()?;
        if replies.switched.load(Ordering::Acquire) {
            self.replies = None;
            return None;
        }
        if !self.at_write_start {
            return None;
        }
        // Once per chunk: a write that returns `Pending` is retried with the
        // same first bytes. [`Self::wrote`] says where the next one starts.
        self.at_write_start = false;
        // hyper's `100 Continue` may precede the response head in the same buffer.
        let head = first.strip_prefix(CONTINUE).unwrap_or(first);
        if !head.starts_with(b"HTTP/1.") || replies.head_written() {
            return None;
        }
        // hyper writes its reply alone: it is the last thing it writes.
        if !alone || head.len() != first.len() {
            return None;
        }
        let tagged = tag(head)?;
        self.replies = None;
        Some(tagged)
    }

    /// Writes `tagged` in place of the `consumed` bytes hyper handed over.
    fn replace(
        &mut self,
        cx: &mut Context<'_>,
        tagged: Bytes,
        consumed: usize,
    ) -> Poll<io::Result<usize>> {
        self.stash = tagged;
        match self.poll_drain_stash(cx) {
            // The rest is written on the next write, flush or shutdown.
            Poll::Ready(Ok(())) | Poll::Pending => Poll::Ready(Ok(consumed)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    /// A write of `len` bytes was passed on: accepted whole, the next one
    /// starts a new chunk of hyper's buffer; partly, it continues this one.
    fn wrote(&mut self, polled: Poll<io::Result<usize>>, len: usize) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = polled {
            self.at_write_start = n == len;
        }
        polled
    }
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// `head` with `plexus-error` after its status line, when it is one of
/// hyper's automatic replies: a `400`, `414` or `431` with no body and only
/// the fields hyper gives it.
fn tag(head: &[u8]) -> Option<Bytes> {
    let fields = head.strip_suffix(b"\r\n\r\n")?;
    let mut lines = fields.split(|b| *b == b'\n');
    let status_line = lines.next()?;
    if status_line.get(8) != Some(&b' ') || status_line.get(12) != Some(&b' ') {
        return None;
    }
    let reason = match StatusCode::from_bytes(&status_line[9..12]).ok()? {
        StatusCode::BAD_REQUEST | StatusCode::URI_TOO_LONG => {
            ProxyError::BadRequest(String::new()).reason()
        }
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ProxyError::HeadersTooLarge.reason(),
        _ => return None,
    };
    let mut empty_body = false;
    for line in lines {
        match line.strip_suffix(b"\r").unwrap_or(line) {
            b"content-length: 0" => empty_body = true,
            b"connection: close" => {}
            field if field.starts_with(b"date: ") => {}
            _ => return None,
        }
    }
    if !empty_body {
        return None;
    }
    let split = status_line.len() + 1;
    let mut tagged = Vec::with_capacity(head.len() + ERROR_HEADER.len() + reason.len() + 4);
    tagged.extend_from_slice(&head[..split]);
    tagged.extend_from_slice(ERROR_HEADER.as_bytes());
    tagged.extend_from_slice(b": ");
    tagged.extend_from_slice(reason.as_bytes());
    tagged.extend_from_slice(b"\r\n");
    tagged.extend_from_slice(&head[split..]);
    Some(tagged.into())
}

impl<I: AsyncRead + Unpin> AsyncRead for TagAutoReplies<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match &mut this.head {
            Some(head) => head.poll_read(&mut this.io, cx, buf),
            None => Pin::new(&mut this.io).poll_read(cx, buf),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TagAutoReplies<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain_stash(cx))?;
        if let Some(tagged) = this.inspect(buf, true) {
            return this.replace(cx, tagged, buf.len());
        }
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(polled, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain_stash(cx))?;
        let mut written = bufs.iter().filter(|b| !b.is_empty());
        if let Some(first) = written.next() {
            let alone = written.next().is_none();
            if let Some(tagged) = this.inspect(first, alone) {
                return this.replace(cx, tagged, first.len());
            }
        }
        let len = bufs.iter().map(|b| b.len()).sum();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(polled, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain_stash(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain_stash(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http::{Request, Response};
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const LIMIT: usize = 8 * 1024;
    /// Room for every exchange whole.
    const PIPE: usize = 64 * 1024;

    /// The service: `/400` answers an empty 400 (shaped like hyper's own
    /// reply), `/upgrade` switches protocols and echoes, anything else 200.
    async fn respond(
        mut request: Request<Incoming>,
        replies: Arc<Replies>,
    ) -> Result<Response<Empty<Bytes>>, Infallible> {
        let path = request.uri().path().to_owned();
        let upgrade = hyper::upgrade::on(&mut request);
        // Reading the body is what makes hyper send `100 Continue`.
        let _ = request.into_body().collect().await;
        let mut response = Response::new(Empty::new());
        match path.as_str() {
            "/400" => *response.status_mut() = StatusCode::BAD_REQUEST,
            "/upgrade" => {
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                response
                    .headers_mut()
                    .insert("upgrade", "echo".parse().unwrap());
                response
                    .headers_mut()
                    .insert("connection", "upgrade".parse().unwrap());
                replies.switching();
                tokio::spawn(async move {
                    let mut io = TokioIo::new(upgrade.await.unwrap());
                    let mut buf = [0u8; 256];
                    while let Ok(n @ 1..) = io.read(&mut buf).await {
                        io.write_all(&buf[..n]).await.unwrap();
                    }
                });
            }
            _ => {}
        }
        Ok(response)
    }

    /// hyper's HTTP/1 server, set up as the proxy's, on a pipe that takes
    /// `capacity` bytes at a time, through [`TagAutoReplies`] when `tagged`;
    /// the client's end.
    fn server(tagged: bool, capacity: usize) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(capacity);
        let replies = Arc::new(Replies::default());
        let io = TagAutoReplies::new(server, tagged.then(|| replies.clone()));
        let service = hyper::service::service_fn(move |request| {
            replies.called();
            respond(request, replies.clone())
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(LIMIT)
            .writev(true)
            .half_close(true)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::spawn(conn);
        client
    }

    /// Writes `request`, then reads all the server wrote until it closed,
    /// `date` lines dropped (they differ from one second to the next).
    async fn exchange(request: &[u8], tagged: bool, capacity: usize) -> String {
        let (mut read, mut write) = tokio::io::split(server(tagged, capacity));
        let mut got = Vec::new();
        let io = async {
            // A pipelined request waits for the previous response to be read;
            // the server may close before it read everything (431).
            let write = async {
                let _ = write.write_all(request).await;
                let _ = write.shutdown().await;
            };
            tokio::join!(write, read.read_to_end(&mut got)).1.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(10), io)
            .await
            .expect("the server answers and closes");
        without_dates(&got)
    }

    fn without_dates(written: &[u8]) -> String {
        String::from_utf8_lossy(written)
            .split_inclusive("\r\n")
            .filter(|line| !line.starts_with("date: "))
            .collect()
    }

    /// What hyper writes for `request`, untagged and tagged. The tagged bytes
    /// must not change when the pipe takes 3 bytes at a time (partial writes).
    async fn both(request: &[u8]) -> (String, String) {
        let plain = exchange(request, false, PIPE).await;
        let tagged = exchange(request, true, PIPE).await;
        assert_eq!(exchange(request, true, 3).await, tagged, "partial writes");
        (plain, tagged)
    }

    #[tokio::test]
    async fn hypers_replies_to_unparsable_heads_get_plexus_error() {
        let (plain, tagged) = both(b"NOT AN HTTP\r\n\r\n").await;
        // hyper's own reply, byte for byte (`date` aside).
        assert_eq!(
            plain,
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            tagged,
            "HTTP/1.1 400 Bad Request\r\nplexus-error: bad-request\r\n\
             connection: close\r\ncontent-length: 0\r\n\r\n"
        );

        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "y".repeat(LIMIT));
        let (plain, tagged) = both(big.as_bytes()).await;
        assert_eq!(
            plain,
            "HTTP/1.1 431 Request Header Fields Too Large\r\n\
             connection: close\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            tagged,
            "HTTP/1.1 431 Request Header Fields Too Large\r\nplexus-error: headers-too-large\r\n\
             connection: close\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn the_services_responses_are_untouched_and_counted() {
        // The service's empty 400 looks exactly like hyper's reply.
        let request = b"GET /400 HTTP/1.1\r\nhost: a\r\n\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let (plain, tagged) = both(request).await;
        assert_eq!(plain.matches("HTTP/1.1 ").count(), 2, "{plain}");
        assert_eq!(tagged, plain);

        // Kept alive, then unparsable: only hyper's reply is tagged.
        let request = b"GET /400 HTTP/1.1\r\nhost: a\r\n\r\nNOT AN HTTP\r\n\r\n";
        let (plain, tagged) = both(request).await;
        assert!(plain.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"));
        assert_eq!(
            tagged,
            plain.replacen(
                "\r\n\r\nHTTP/1.1 400 Bad Request\r\n",
                "\r\n\r\nHTTP/1.1 400 Bad Request\r\nplexus-error: bad-request\r\n",
                1
            )
        );
        assert_ne!(tagged, plain);
    }

    #[tokio::test]
    async fn hypers_100_continue_is_not_taken_for_the_services_response() {
        // As clients do it: the body only after `100 Continue`, which hyper
        // then writes on its own. Whole writes: were it cut short, the head
        // after it would go uncounted and hyper's reply untagged; over TCP it
        // is never short, the socket being idle when hyper sends it.
        let mut client = server(true, PIPE);
        let io = async {
            client
                .write_all(b"POST /400 HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
                .await
                .unwrap();
            let mut continued = [0u8; CONTINUE.len()];
            client.read_exact(&mut continued).await.unwrap();
            assert_eq!(continued, CONTINUE);
            client.write_all(b"hiNOT AN HTTP\r\n\r\n").await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            without_dates(&rest)
        };
        let rest = tokio::time::timeout(Duration::from_secs(10), io)
            .await
            .expect("the server answers and closes");
        assert_eq!(
            rest,
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n\
             HTTP/1.1 400 Bad Request\r\nplexus-error: bad-request\r\n\
             connection: close\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn bytes_after_a_protocol_switch_pass_untouched() {
        let tunnelled = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let request = format!(
            "GET /upgrade HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n{tunnelled}"
        );
        let (plain, tagged) = both(request.as_bytes()).await;
        assert!(plain.starts_with("HTTP/1.1 101"), "{plain}");
        assert!(plain.ends_with(tunnelled), "{plain}");
        assert_eq!(tagged, plain);
    }

    #[test]
    fn only_hypers_reply_shape_is_tagged() {
        for head in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nmore",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-app: 1\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            b"HTTP/1.1 400",
        ] {
            assert!(tag(head).is_none(), "{}", String::from_utf8_lossy(head));
        }
        let tagged = tag(b"HTTP/1.0 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n");
        assert_eq!(
            tagged.as_deref(),
            Some(
                &b"HTTP/1.0 414 URI Too Long\r\nplexus-error: bad-request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n"[..]
            )
        );
    }
}
