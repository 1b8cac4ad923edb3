//! The server side of an HTTP/2 connection, guarded against control-frame
//! floods: a client that sends PINGs or SETTINGS by the thousand gets
//! GOAWAY(ENHANCE_YOUR_CALM) and a closed connection.
//!
//! h2 (0.4) answers each PING and SETTINGS before it reads the next frame,
//! so a flood costs the proxy no memory of its own, but the ACKs pile up in
//! the kernel's socket buffers (megabytes per connection) for a client that
//! does not read them, and once those are full h2 stops reading and waits
//! for ever: the connection is stalled, never closed. h2 has no setting for
//! it, so the guard sits at the IO boundary, under hyper, in the spirit of
//! Envoy's `max_outbound_control_frames` (1000) and gRPC's `too_many_pings`:
//!
//! - It follows the frame headers of what the client sends (9 bytes each,
//!   payloads skipped) and counts the frames that demand a reply: PING and
//!   SETTINGS without ACK. More than [`MAX_CONTROL_REPLIES`] of them within
//!   [`CONTROL_WINDOW`], with no response HEADERS or DATA written meanwhile,
//!   is a flood: the client asks for replies and nothing else.
//! - While the socket takes no writes (the client does not read), the count
//!   does not decay, and the guard reads ahead for h2 (at most
//!   [`READ_AHEAD`] bytes, kept for h2 in order) to see whether the client
//!   keeps asking; so a slow flood that filled the buffers is caught too.
//! - Then h2 is no longer served: the frame h2 was writing is completed (the
//!   guard follows the frame boundaries of what h2 writes), a GOAWAY with the
//!   highest client stream seen is written after it, the write side is shut,
//!   and the client's bytes are read and dropped until it closes, so the
//!   close is not a reset that could lose the GOAWAY; all within [`LINGER`].
//!
//! Real clients stay far below the bound: browsers send SETTINGS at the start
//! and a ping now and then; gRPC clients keep-alive pings 10 s apart at the
//! most, and their BDP pings (hyper's too) answer the DATA the proxy sends,
//! which resets the count.
//!
//! Cost: a few comparisons per read and write, plus the 9-byte header of each
//! frame and a clock read per PING or SETTINGS; memory: the read-ahead buffer
//! only while writes are blocked.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// PINGs and SETTINGS in a [`CONTROL_WINDOW`] without a response, beyond
/// which the client is flooding (Envoy's `max_outbound_control_frames` default).
pub const MAX_CONTROL_REPLIES: usize = 1000;
pub const CONTROL_WINDOW: Duration = Duration::from_secs(1);
/// What is read ahead for h2 while the socket takes no writes: more than
/// 1000 PINGs (17 bytes each) or empty SETTINGS (9 bytes).
const READ_AHEAD: usize = 32 * 1024;
/// How long a flooding client has to read the GOAWAY and close.
const LINGER: Duration = Duration::from_secs(10);
/// Reads done in one poll while closing, before yielding to other tasks.
const DISCARD_READS_PER_POLL: usize = 16;

const CLIENT_PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// An HTTP/2 server connection's IO (from the client preface on), guarded.
pub struct FloodGuard<I> {
    io: I,
    input: Input,
    /// Where h2's output stands in its frames.
    output: FrameCursor,
    /// Reply-demanding frames received in this window without a response.
    replies: usize,
    /// When the first of them arrived.
    window_start: Option<Instant>,
    /// The last write did not go through: the client is not reading.
    write_blocked: bool,
    /// Bytes read ahead for h2 while writes are blocked.
    ahead: BytesMut,
    /// End of input met while reading ahead, for h2 once `ahead` is drained.
    ahead_end: Option<io::Result<()>>,
    closing: Option<Box<Closing>>,
}

impl<I> FloodGuard<I> {
    pub fn new(io: I) -> Self {
        Self {
            io,
            input: Input::default(),
            output: FrameCursor::default(),
            replies: 0,
            window_start: None,
            write_blocked: false,
            ahead: BytesMut::new(),
            ahead_end: None,
            closing: None,
        }
    }

    /// Counts what the client sent; starts closing on a flood.
    fn received(&mut self, bytes: &[u8]) {
        let demanding = self.input.feed(bytes);
        if demanding == 0 || self.closing.is_some() {
            return;
        }
        let now = Instant::now();
        match self.window_start {
            // Replies the client does not read keep counting.
            Some(start) if self.write_blocked || now < start + CONTROL_WINDOW => {}
            _ => {
                self.window_start = Some(now);
                self.replies = 0;
            }
        }
        self.replies += demanding;
        if self.replies > MAX_CONTROL_REPLIES {
            tracing::info!(
                replies = self.replies,
                unread = self.write_blocked,
                "HTTP/2 client floods PING/SETTINGS: GOAWAY(ENHANCE_YOUR_CALM)"
            );
            self.closing = Some(Box::new(Closing::new(self.input.last_stream)));
            // What was read ahead is never served.
            self.ahead = BytesMut::new();
        }
    }

    fn wrote(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.write_blocked = false;
        let mut responded = false;
        self.output.advance(bytes, |header| {
            responded |= matches!(header.kind, DATA | HEADERS)
        });
        if responded {
            self.window_start = None;
            self.replies = 0;
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> FloodGuard<I> {
    /// The socket takes no writes: reads what the client keeps sending, for
    /// h2 later, up to [`READ_AHEAD`].
    fn read_ahead(&mut self, cx: &mut Context<'_>) {
        self.write_blocked = true;
        while self.closing.is_none() && self.ahead_end.is_none() && self.ahead.len() < READ_AHEAD {
            let mut chunk = [0u8; 4096];
            let room = (READ_AHEAD - self.ahead.len()).min(chunk.len());
            let mut buf = ReadBuf::new(&mut chunk[..room]);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => self.ahead_end = Some(Ok(())),
                Poll::Ready(Ok(())) => {
                    self.ahead.extend_from_slice(buf.filled());
                    self.received(buf.filled());
                }
                Poll::Ready(Err(e)) => self.ahead_end = Some(Err(e)),
                Poll::Pending => break,
            }
        }
    }

    /// A write could not go through: reads ahead, and closes on a flood.
    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.read_ahead(cx);
        if self.closing.is_some() {
            return self.poll_close(cx);
        }
        Poll::Pending
    }

    /// While closing, h2 may only complete the frame it was writing.
    fn poll_write_closing(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let rest = self.output.until_boundary();
        if rest > 0 && !data.is_empty() {
            let part = &data[..rest.min(data.len())];
            if let Poll::Ready(written) = Pin::new(&mut self.io).poll_write(cx, part) {
                let n = written?;
                self.output.advance(&part[..n], |_| {});
                if self.output.until_boundary() == 0 {
                    // The GOAWAY can go now: poll again even if h2 has nothing more to write.
                    cx.waker().wake_by_ref();
                }
                return Poll::Ready(Ok(n));
            }
        }
        self.poll_close(cx).map(Err)
    }

    /// Drives the close; `Ready` with the error that ends the connection.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(closing) = self.closing.as_mut() else {
            return Poll::Pending;
        };
        closing.poll(cx, &mut self.io, &self.output)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for FloodGuard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing.is_some() {
            return this.poll_close(cx).map(Err);
        }
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.advance(n);
            if this.ahead.is_empty() {
                // Only a blocked connection needs the buffer.
                this.ahead = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(end) = this.ahead_end.take() {
            return Poll::Ready(end);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.received(&buf.filled()[before..]);
        if this.closing.is_some() {
            buf.set_filled(before);
            return this.poll_close(cx).map(Err);
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for FloodGuard<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.closing.is_some() {
            return this.poll_write_closing(cx, data);
        }
        match Pin::new(&mut this.io).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                this.wrote(&data[..n]);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.blocked(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.closing.is_some() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return this.poll_write_closing(cx, first);
        }
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                let mut left = n;
                for buf in bufs {
                    let take = left.min(buf.len());
                    this.wrote(&buf[..take]);
                    left -= take;
                    if left == 0 {
                        break;
                    }
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.blocked(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing.is_some() {
            return this.poll_close(cx).map(Err);
        }
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.blocked(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing.is_some() {
            return this.poll_close(cx).map(Err);
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The client's side of the connection: the preface, then frames.
struct Input {
    preface_left: usize,
    frames: FrameCursor,
    /// Highest stream the client opened (HEADERS), for the GOAWAY.
    last_stream: u32,
}

impl Default for Input {
    fn default() -> Self {
        Self {
            preface_left: CLIENT_PREFACE_LEN,
            frames: FrameCursor::default(),
            last_stream: 0,
        }
    }
}

impl Input {
    /// Follows `bytes`; returns how many reply-demanding frames began in them.
    fn feed(&mut self, bytes: &[u8]) -> usize {
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        let mut demanding = 0;
        let last_stream = &mut self.last_stream;
        self.frames
            .advance(&bytes[skip..], |header| match header.kind {
                PING | SETTINGS if header.flags & ACK == 0 => demanding += 1,
                HEADERS if header.stream % 2 == 1 => {
                    *last_stream = (*last_stream).max(header.stream)
                }
                _ => {}
            });
        demanding
    }
}

struct FrameHeader {
    length: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// A position in a stream of HTTP/2 frames, carried across reads or writes.
#[derive(Default)]
struct FrameCursor {
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload_left: usize,
}

impl FrameCursor {
    /// Moves over `bytes`, calling `on_header` for each frame header completed.
    fn advance(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(&FrameHeader)) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == FRAME_HEADER_LEN {
                self.header_len = 0;
                let h = &self.header;
                let header = FrameHeader {
                    length: usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]),
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                };
                self.payload_left = header.length;
                on_header(&header);
            }
        }
    }

    /// Bytes until the current frame ends (0: between frames).
    fn until_boundary(&self) -> usize {
        if self.payload_left > 0 {
            self.payload_left
        } else if self.header_len > 0 {
            FRAME_HEADER_LEN - self.header_len
        } else {
            0
        }
    }
}

/// The close of a flooded connection, step by step.
struct Closing {
    goaway: [u8; FRAME_HEADER_LEN + 8],
    sent: usize,
    step: Step,
    client_closed: bool,
    deadline: Pin<Box<Sleep>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// h2 completes the frame it was writing.
    FinishFrame,
    Goaway,
    Flush,
    Shutdown,
    /// Reads until the client closes.
    Linger,
}

impl Closing {
    fn new(last_stream: u32) -> Self {
        let mut goaway = [0u8; FRAME_HEADER_LEN + 8];
        goaway[2] = 8; // payload length
        goaway[3] = GOAWAY;
        goaway[9..13].copy_from_slice(&last_stream.to_be_bytes());
        goaway[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        Self {
            goaway,
            sent: 0,
            step: Step::FinishFrame,
            client_closed: false,
            deadline: Box::pin(tokio::time::sleep(LINGER)),
        }
    }

    fn poll<I: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
        output: &FrameCursor,
    ) -> Poll<io::Error> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(flooded_error());
        }
        // The client's bytes are dropped, so that it can finish sending and read.
        if let Err(e) = self.discard_input(cx, io) {
            return Poll::Ready(e);
        }
        loop {
            match self.step {
                Step::FinishFrame if output.until_boundary() > 0 => return Poll::Pending,
                Step::FinishFrame => self.step = Step::Goaway,
                Step::Goaway if self.sent == self.goaway.len() => self.step = Step::Flush,
                Step::Goaway => {
                    match Pin::new(&mut *io).poll_write(cx, &self.goaway[self.sent..]) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(io::ErrorKind::WriteZero.into()),
                        Poll::Ready(Ok(n)) => self.sent += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(e),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Step::Flush => match Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.step = Step::Shutdown,
                    Poll::Ready(Err(e)) => return Poll::Ready(e),
                    Poll::Pending => return Poll::Pending,
                },
                Step::Shutdown => match Pin::new(&mut *io).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => self.step = Step::Linger,
                    Poll::Ready(Err(e)) => return Poll::Ready(e),
                    Poll::Pending => return Poll::Pending,
                },
                Step::Linger if self.client_closed => return Poll::Ready(flooded_error()),
                Step::Linger => return Poll::Pending,
            }
        }
    }

    fn discard_input<I: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
    ) -> io::Result<()> {
        let mut scratch = [0u8; 8192];
        for _ in 0..DISCARD_READS_PER_POLL {
            if self.client_closed {
                return Ok(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => self.client_closed = true,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(()),
            }
        }
        // Still sending: come back after other tasks had their turn.
        cx.waker().wake_by_ref();
        Ok(())
    }
}

fn flooded_error() -> io::Error {
    io::Error::other(
        "HTTP/2 control frame flood: connection closed after GOAWAY(ENHANCE_YOUR_CALM)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn pings(n: usize) -> Vec<u8> {
        frame(PING, 0, 0, b"12345678").repeat(n)
    }

    #[test]
    fn frames_are_followed_across_any_split() {
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        stream.extend(frame(SETTINGS, ACK, 0, &[]));
        stream.extend(frame(HEADERS, 0x4, 5, b"\x82\x86\x84"));
        stream.extend(frame(DATA, 0x1, 5, &[7; 300]));
        stream.extend(frame(PING, ACK, 0, b"12345678"));
        stream.extend(frame(PING, 0, 0, b"12345678"));
        stream.extend(frame(HEADERS, 0x4, 3, b"\x82"));
        for split in [1, 2, 9, 10, 17, stream.len()] {
            let mut input = Input::default();
            let demanding: usize = stream.chunks(split).map(|c| input.feed(c)).sum();
            assert_eq!(
                demanding, 2,
                "split {split}: SETTINGS and PING, not their ACKs"
            );
            assert_eq!(input.last_stream, 5, "split {split}");
            assert_eq!(input.frames.until_boundary(), 0, "split {split}");
        }
        let mut output = FrameCursor::default();
        output.advance(&frame(DATA, 0, 1, &[0; 20])[..5], |_| {});
        assert_eq!(output.until_boundary(), 4, "the rest of the header");
        output.advance(&[0, 0, 0, 1], |_| {});
        assert_eq!(output.until_boundary(), 20, "the payload");
    }

    /// Writes `bytes` as the client and reads them through the guard.
    async fn pass(client: &mut DuplexStream, guard: &mut FloodGuard<DuplexStream>, bytes: &[u8]) {
        client.write_all(bytes).await.unwrap();
        let mut sink = vec![0u8; bytes.len()];
        guard.read_exact(&mut sink).await.unwrap();
        assert_eq!(sink, bytes);
    }

    #[tokio::test(start_paused = true)]
    async fn more_than_the_bound_within_the_window_without_a_response_is_a_flood() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut guard = FloodGuard::new(server);
        pass(&mut client, &mut guard, &[PREFACE, &pings(900)].concat()).await;
        // A response resets the count (BDP pings answer DATA).
        guard
            .write_all(&frame(HEADERS, 0x4, 1, b"\x88"))
            .await
            .unwrap();
        pass(&mut client, &mut guard, &pings(900)).await;
        // So does time.
        tokio::time::advance(CONTROL_WINDOW).await;
        pass(&mut client, &mut guard, &pings(MAX_CONTROL_REPLIES)).await;
        assert!(guard.closing.is_none(), "{} replies", guard.replies);
        client.write_all(&pings(1)).await.unwrap();
        // Nothing of it reaches h2; the client never closes, so LINGER ends the wait.
        let flooded = guard.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(flooded.to_string(), flooded_error().to_string());
    }

    #[tokio::test]
    async fn the_goaway_follows_the_frame_being_written_and_the_close_waits_for_the_client() {
        // Small pipes: the guard's writes block as soon as the client stops reading.
        let (client, server) = tokio::io::duplex(64);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut guard = FloodGuard::new(server);
        let first = frame(DATA, 0, 1, &[1; 100]);
        let second = frame(DATA, 0, 1, &[2; 100]);
        let server = tokio::spawn(async move {
            let both = [first.clone(), second].concat();
            guard.write_all(&both).await
        });
        let mut flood = PREFACE.to_vec();
        flood.extend(frame(HEADERS, 0x5, 7, b"\x82"));
        flood.extend(pings(2 * MAX_CONTROL_REPLIES));
        // Only a guard that keeps reading lets the flood be written.
        client_write.write_all(&flood).await.unwrap();
        let mut got = Vec::new();
        client_read.read_to_end(&mut got).await.unwrap();
        let mut goaway = frame(GOAWAY, 0, 0, &7u32.to_be_bytes());
        goaway.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        goaway[2] = 8;
        assert_eq!(got, [frame(DATA, 0, 1, &[1; 100]), goaway].concat());
        drop((client_read, client_write));
        let closed = server.await.unwrap().unwrap_err();
        assert_eq!(closed.to_string(), flooded_error().to_string());
    }
}
