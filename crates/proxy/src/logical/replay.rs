//! Request bodies that can be sent more than once, as Linkerd does it: the
//! first attempt streams the body as it arrives while a copy of its frames
//! (data and trailers) is kept; a retry replays the copy, then continues with
//! whatever the client has not sent yet. A body whose copy would exceed 64 KiB
//! is no longer replayable and its copy is dropped, so a request never holds
//! more than that. Bodies known to be larger are never wrapped.
//!
//! One attempt at a time reads the client's live stream: the newest handle.
//! An older attempt (given up on, but perhaps still polled by its connection)
//! may replay what was already read but gets an error instead of live frames,
//! which resets its upstream stream rather than splitting the body in two.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};

/// Largest request body (data and trailers) kept for replay.
pub const MAX_REPLAY_BYTES: u64 = 64 * 1024;

/// One handle on a replayable body; each attempt gets its own (`Clone`), which
/// yields the whole body from the start.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// Frames of the body this handle has yielded.
    cursor: usize,
    /// This handle's place in the order of clones; the newest reads the source.
    generation: u64,
    size: SizeHint,
}

#[derive(Debug)]
struct Shared {
    source: Body,
    /// Copies of the frames read from the source, in order; empty once discarded.
    kept: Vec<Kept>,
    kept_bytes: u64,
    /// Frames read from the source so far (`kept.len()` until discarded).
    read: usize,
    /// The copy was dropped (too large, or nobody can replay it any more).
    discarded: bool,
    /// The source has ended: the frames read are the whole body.
    complete: bool,
    /// The source failed: the body cannot be replayed.
    failed: bool,
    /// Generation of the newest handle, the only one that reads the source.
    newest: u64,
}

#[derive(Debug, Clone)]
enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Kept {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Kept::Data(data) => Frame::data(data.clone()),
            Kept::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }
}

impl ReplayBody {
    /// Wraps `body` unless it is known to exceed the replay limit, in which
    /// case it is given back untouched (to be sent once, with no copy).
    pub fn try_new(body: Body) -> Result<ReplayBody, Body> {
        let size = body.size_hint();
        if size.lower() > MAX_REPLAY_BYTES {
            return Err(body);
        }
        Ok(ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                complete: body.is_end_stream(),
                source: body,
                kept: Vec::new(),
                kept_bytes: 0,
                read: 0,
                discarded: false,
                failed: false,
                newest: 0,
            })),
            cursor: 0,
            generation: 0,
            size,
        })
    }

    /// Whether another attempt could send the whole body: false once reading
    /// the source failed or the copy outgrew the limit. A body still arriving
    /// is replayable; the retry continues with the client's remaining frames.
    pub fn replayable(&self) -> bool {
        let shared = lock(&self.shared);
        !shared.failed && !shared.discarded
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Keeps a copy of `frame`, or drops the copy for good once it would
    /// exceed the limit. Data is copied rather than shared: a shared `Bytes`
    /// would pin the connection's whole read buffer, not just this frame.
    fn keep(&mut self, frame: &Frame<Bytes>) {
        let (kept, len) = if let Some(data) = frame.data_ref() {
            (Kept::Data(Bytes::copy_from_slice(data)), data.len())
        } else if let Some(trailers) = frame.trailers_ref() {
            let len = trailers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum();
            (Kept::Trailers(trailers.clone()), len)
        } else {
            // A frame kind this proxy does not know cannot be replayed faithfully.
            return self.discard();
        };
        let total = self.kept_bytes.saturating_add(len as u64);
        if total > MAX_REPLAY_BYTES {
            return self.discard();
        }
        self.kept_bytes = total;
        self.kept.push(kept);
    }

    fn discard(&mut self) {
        self.discarded = true;
        self.kept = Vec::new();
        self.kept_bytes = 0;
    }
}

impl Clone for ReplayBody {
    /// A fresh handle that starts from the beginning and, being the newest,
    /// takes the live stream over from older handles.
    fn clone(&self) -> Self {
        let generation = {
            let mut shared = lock(&self.shared);
            shared.newest += 1;
            shared.newest
        };
        ReplayBody {
            shared: self.shared.clone(),
            cursor: 0,
            generation,
            size: self.size,
        }
    }
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut guard = lock(&this.shared);
        let shared = &mut *guard;
        if this.cursor < shared.read {
            // Behind the source: replay the copy.
            return match shared.kept.get(this.cursor) {
                Some(kept) => {
                    this.cursor += 1;
                    Poll::Ready(Some(Ok(kept.frame())))
                }
                None => Poll::Ready(Some(Err(
                    "request body too large to replay on another attempt".into(),
                ))),
            };
        }
        if shared.complete {
            return Poll::Ready(None);
        }
        if shared.failed {
            return Poll::Ready(Some(
                Err("request body failed on an earlier attempt".into()),
            ));
        }
        if this.generation != shared.newest {
            return Poll::Ready(Some(Err(
                "request body handed over to a newer attempt".into()
            )));
        }
        let frame = match ready!(Pin::new(&mut shared.source).poll_frame(cx)) {
            None => {
                shared.complete = true;
                return Poll::Ready(None);
            }
            Some(Err(error)) => {
                shared.failed = true;
                return Poll::Ready(Some(Err(error)));
            }
            Some(Ok(frame)) => frame,
        };
        shared.read += 1;
        this.cursor += 1;
        if !shared.discarded {
            if Arc::strong_count(&this.shared) == 1 {
                // No other handle exists, so no attempt can follow: stop copying.
                shared.discard();
            } else {
                shared.keep(&frame);
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        shared.complete && self.cursor >= shared.read
    }

    fn size_hint(&self) -> SizeHint {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    type FrameResult = Result<Frame<Bytes>, BoxError>;

    /// A body of unknown length fed frame by frame, as a client streams it.
    fn live() -> (mpsc::Sender<FrameResult>, Body) {
        let (tx, rx) = mpsc::channel(16);
        (tx, body::boxed(StreamBody::new(ReceiverStream::new(rx))))
    }

    fn data(bytes: &'static [u8]) -> FrameResult {
        Ok(Frame::data(Bytes::from_static(bytes)))
    }

    fn trailers() -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
        trailers
    }

    #[tokio::test]
    async fn every_attempt_sees_the_whole_body() {
        let template = ReplayBody::try_new(body::full("hello world")).expect("small body");
        for _ in 0..2 {
            let attempt = template.clone().collect().await.unwrap();
            assert_eq!(attempt.to_bytes(), "hello world");
        }
        assert!(template.replayable());
    }

    #[tokio::test]
    async fn a_streamed_body_that_ends_under_the_limit_is_replayed_with_its_trailers() {
        let (tx, source) = live();
        let template = ReplayBody::try_new(source).expect("unknown length is replayable");
        let first = template.clone();
        for frame in [data(b"ab"), data(b"cd"), Ok(Frame::trailers(trailers()))] {
            tx.send(frame).await.unwrap();
        }
        drop(tx);
        let collected = first.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers()));
        assert_eq!(collected.to_bytes(), "abcd");
        assert!(template.replayable());

        let retry = template.clone().collect().await.unwrap();
        assert_eq!(retry.trailers(), Some(&trailers()), "trailers replayed");
        assert_eq!(retry.to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn a_retry_while_the_client_streams_replays_then_takes_the_live_stream() {
        let (tx, source) = live();
        let template = ReplayBody::try_new(source).expect("unknown length");
        let mut first = template.clone();
        tx.send(data(b"ab")).await.unwrap();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        // The first attempt failed early; its handle may outlive it.
        assert!(
            template.replayable(),
            "a body still arriving may be retried"
        );
        let mut retry = template.clone();
        let frame = retry.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab", "the copy comes first");

        tx.send(data(b"cd")).await.unwrap();
        let stale = first.frame().await.unwrap();
        assert!(stale.is_err(), "only the newest attempt reads the client");
        tx.send(Ok(Frame::trailers(trailers()))).await.unwrap();
        drop(tx);
        let rest = retry.collect().await.unwrap();
        assert_eq!(rest.trailers(), Some(&trailers()));
        assert_eq!(rest.to_bytes(), "cd");

        // A third attempt still gets everything.
        let third = template.clone().collect().await.unwrap();
        assert_eq!(third.trailers(), Some(&trailers()));
        assert_eq!(third.to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn a_body_outgrowing_the_limit_streams_on_but_is_not_replayable() {
        let (tx, source) = live();
        let template = ReplayBody::try_new(source).expect("unknown length");
        let first = template.clone();
        let chunk = vec![7u8; 16 * 1024];
        let chunks = 5; // 80 KiB
        let feeder = tokio::spawn(async move {
            for _ in 0..chunks {
                let frame = Ok(Frame::data(Bytes::from(chunk.clone())));
                tx.send(frame).await.unwrap();
            }
        });
        let sent = first.collect().await.unwrap().to_bytes();
        feeder.await.unwrap();
        assert_eq!(sent.len(), chunks * 16 * 1024, "the attempt got it all");
        assert!(!template.replayable());
        {
            let shared = lock(&template.shared);
            assert!(
                shared.kept.is_empty() && shared.kept_bytes == 0,
                "copy freed"
            );
        }
        assert!(template.clone().collect().await.is_err());
    }

    #[tokio::test]
    async fn the_copy_stops_once_no_attempt_can_follow() {
        let (tx, source) = live();
        let template = ReplayBody::try_new(source).expect("unknown length");
        let mut only = template.clone();
        tx.send(data(b"ab")).await.unwrap();
        only.frame().await.unwrap().unwrap();
        assert_eq!(lock(&only.shared).kept_bytes, 2);
        drop(template);
        tx.send(data(b"cd")).await.unwrap();
        only.frame().await.unwrap().unwrap();
        let shared = lock(&only.shared);
        assert!(shared.discarded && shared.kept.is_empty());
    }

    #[tokio::test]
    async fn a_failed_source_is_not_replayable() {
        let (tx, source) = live();
        let template = ReplayBody::try_new(source).expect("unknown length");
        tx.send(Err("client reset".into())).await.unwrap();
        assert!(template.clone().collect().await.is_err());
        assert!(!template.replayable());
    }

    #[test]
    fn only_bodies_known_to_be_too_large_are_not_wrapped() {
        let (_tx, unknown) = live();
        assert!(ReplayBody::try_new(unknown).is_ok());
        let big = vec![0u8; (MAX_REPLAY_BYTES + 1) as usize];
        assert!(ReplayBody::try_new(body::full(big)).is_err());
        let limit = vec![0u8; MAX_REPLAY_BYTES as usize];
        assert!(ReplayBody::try_new(body::full(limit)).is_ok());
    }

    #[tokio::test]
    async fn empty_bodies_are_replayable_and_end_at_once() {
        let b = ReplayBody::try_new(body::empty()).expect("empty body");
        assert!(b.is_end_stream());
        assert!(b.clone().collect().await.unwrap().to_bytes().is_empty());
    }
}
