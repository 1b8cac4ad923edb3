//! The request-head timeout (`PLEXUS_REQUEST_HEAD_TIMEOUT_MS`), apart from
//! the keep-alive idle timeout: a slow-loris client that trickles a head a
//! byte at a time holds a connection for as long as the head may take.
//!
//! hyper's own `header_read_timeout` starts when hyper waits for a head,
//! idle keep-alive time included, so it cannot be short without closing
//! apps' pooled connections. [`HeadDeadline`] starts the clock at the first
//! byte read while a head is awaited instead (outside a request body, not
//! after a protocol switch) and ends it when the service is handed the head
//! ([`HeadClock::received`]). hyper's HTTP/1 server, with half-close on,
//! reads nothing between a request's body and its response's end, so a
//! byte read then is the next head's.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What the service of one connection tells its [`HeadTimeout`].
#[derive(Debug, Default)]
pub struct HeadClock {
    /// Heads handed to the service so far.
    heads: AtomicU64,
    /// A request body is being read: its bytes are no head's.
    in_body: AtomicBool,
    /// Protocols switched: no head comes any more.
    switched: AtomicBool,
}

impl HeadClock {
    /// The service was handed a request head.
    pub fn received(&self) {
        self.heads.fetch_add(1, Ordering::AcqRel);
    }

    pub fn heads(&self) -> u64 {
        self.heads.load(Ordering::Acquire)
    }

    /// Between the start and the end (or drop) of a request body.
    pub fn reading_body(&self, reading: bool) {
        self.in_body.store(reading, Ordering::Release);
    }

    /// The connection switched protocols (`101`, `2xx` to `CONNECT`).
    pub fn switching(&self) {
        self.switched.store(true, Ordering::Release);
    }

    fn awaits_head(&self) -> bool {
        !self.in_body.load(Ordering::Acquire) && !self.switched.load(Ordering::Acquire)
    }
}

/// A deadline `timeout` from now; past what the clock can hold, none that
/// comes (tokio's far future).
pub fn deadline_in(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// The head timing of an HTTP/1 server connection's reads (its IO is
/// [`crate::auto_reply::TagAutoReplies`], which reads through this): a read
/// fails once a started request head is late.
pub struct HeadDeadline {
    clock: Arc<HeadClock>,
    timeout: Duration,
    /// The head count when the running clock started, and its deadline.
    running: Option<(u64, Pin<Box<Sleep>>)>,
}

impl HeadDeadline {
    pub fn new(clock: Arc<HeadClock>, timeout: Duration) -> Self {
        Self {
            clock,
            timeout,
            running: None,
        }
    }

    /// Reads from `io` into `buf`, or fails with `TimedOut`.
    pub fn poll_read<I: AsyncRead + Unpin>(
        &mut self,
        io: &mut I,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let heads = self.clock.heads();
        if let Some((started_at, deadline)) = &mut self.running {
            if *started_at != heads {
                self.running = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not received within PLEXUS_REQUEST_HEAD_TIMEOUT_MS",
                )));
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(io).poll_read(cx, buf))?;
        if self.running.is_none() && buf.filled().len() > before && self.clock.awaits_head() {
            // Polled on hyper's next read, which registers the wake-up.
            let deadline = Box::pin(tokio::time::sleep_until(deadline_in(self.timeout)));
            self.running = Some((heads, deadline));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::auto_reply::TagAutoReplies;

    fn timed<I>(io: I, clock: &Arc<HeadClock>) -> TagAutoReplies<I> {
        TagAutoReplies::new(io, None).timing_heads(HeadDeadline::new(clock.clone(), TIMEOUT))
    }

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_started_head_not_received_in_time_fails_the_read() {
        let (mut client, server) = tokio::io::duplex(64);
        let clock = Arc::new(HeadClock::default());
        let mut io = timed(server, &clock);
        // Idle for longer than the timeout: no head started, nothing fails.
        let mut buf = [0; 16];
        let idle = tokio::time::timeout(TIMEOUT * 3, io.read(&mut buf)).await;
        assert!(idle.is_err(), "an idle connection is not timed out");
        client.write_all(b"GET").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_received_head_or_a_body_stops_the_clock() {
        let (mut client, server) = tokio::io::duplex(64);
        let clock = Arc::new(HeadClock::default());
        let mut io = timed(server, &clock);
        let mut buf = [0; 16];
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 16);
        clock.received();
        clock.reading_body(true);
        // Body bytes long after: no head of theirs is timed.
        tokio::time::advance(TIMEOUT * 2).await;
        client.write_all(b"body").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
        tokio::time::advance(TIMEOUT * 2).await;
        client.write_all(b"more").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
    }
}
