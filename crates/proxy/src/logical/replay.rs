//! Request bodies that can be sent more than once. Only a body of known length
//! up to 64 KiB is made replayable; it still streams on the first attempt,
//! each frame being kept as it passes, and later attempts replay the kept
//! frames (then continue from the source if an earlier attempt stopped early).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};

/// Largest request body kept for replay.
pub const MAX_REPLAY_BYTES: u64 = 64 * 1024;

/// One handle on a replayable body; each attempt gets its own (`Clone`).
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// Next kept frame this handle will yield.
    cursor: usize,
    size: SizeHint,
}

#[derive(Debug)]
struct Shared {
    kept: Vec<Kept>,
    source: Body,
    /// The source has ended: the kept frames are the whole body.
    complete: bool,
    /// The source failed: the body cannot be replayed.
    failed: bool,
}

#[derive(Debug, Clone)]
enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl ReplayBody {
    /// Wraps `body` when it can be replayed, else gives it back untouched.
    pub fn try_new(body: Body) -> Result<ReplayBody, Body> {
        let size = body.size_hint();
        match size.exact() {
            Some(len) if len <= MAX_REPLAY_BYTES => Ok(ReplayBody {
                shared: Arc::new(Mutex::new(Shared {
                    complete: body.is_end_stream(),
                    kept: Vec::new(),
                    source: body,
                    failed: false,
                })),
                cursor: 0,
                size,
            }),
            _ => Err(body),
        }
    }

    /// False once reading the source failed: a retry would send a truncated body.
    pub fn replayable(&self) -> bool {
        !self.lock().failed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clone for ReplayBody {
    /// A fresh handle that starts from the beginning.
    fn clone(&self) -> Self {
        ReplayBody {
            shared: self.shared.clone(),
            cursor: 0,
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
        let mut shared = this
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(kept) = shared.kept.get(this.cursor) {
            this.cursor += 1;
            return Poll::Ready(Some(Ok(match kept.clone() {
                Kept::Data(data) => Frame::data(data),
                Kept::Trailers(trailers) => Frame::trailers(trailers),
            })));
        }
        if shared.complete {
            return Poll::Ready(None);
        }
        if shared.failed {
            return Poll::Ready(Some(
                Err("request body failed on an earlier attempt".into()),
            ));
        }
        match Pin::new(&mut shared.source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.complete = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                shared.failed = true;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let kept = match frame.data_ref() {
                    Some(data) => Kept::Data(data.clone()),
                    None => match frame.trailers_ref() {
                        Some(trailers) => Kept::Trailers(trailers.clone()),
                        // Unknown frame kinds are passed on but not kept.
                        None => return Poll::Ready(Some(Ok(frame))),
                    },
                };
                shared.kept.push(kept);
                this.cursor += 1;
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.lock();
        shared.complete && self.cursor >= shared.kept.len()
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

    fn chunked(chunks: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        body::boxed(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test]
    async fn every_attempt_sees_the_whole_body() {
        let first = ReplayBody::try_new(body::full("hello world")).expect("small body");
        let second = first.clone();
        assert_eq!(first.collect().await.unwrap().to_bytes(), "hello world");
        assert_eq!(
            second.clone().collect().await.unwrap().to_bytes(),
            "hello world"
        );
        assert!(second.replayable());
    }

    /// A body of known length delivered in several frames.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
        }
    }

    #[tokio::test]
    async fn a_retry_after_a_partial_read_continues_from_the_source() {
        let source = Chunks(
            [&b"ab"[..], b"cd", b"ef"]
                .into_iter()
                .map(Bytes::from_static)
                .collect(),
        );
        let first = ReplayBody::try_new(body::boxed(source)).expect("known length");
        let mut partial = first.clone();
        let frame = partial.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(partial);
        assert_eq!(first.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[test]
    fn unknown_or_large_bodies_are_not_replayable() {
        assert!(ReplayBody::try_new(chunked(&["a", "b"])).is_err());
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
