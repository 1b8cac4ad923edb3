//! The one body type that flows through the proxy: boxed, streamed, never
//! buffered whole (replay buffering for retries is bounded, in `logical`).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body on its way through the proxy.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body whose errors can be boxed (hyper's `Incoming`, tonic's, …).
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Something a body carries until its transfer is over: a concurrency slot,
/// a request's span. It is dropped when the body ends, fails, or is dropped
/// (the client went away), so its `Drop` is where it lets go.
pub trait BodyGuard: Unpin {
    /// A frame passed through (e.g. trailers carrying a gRPC status).
    fn on_frame(&self, _frame: &http_body::Frame<Bytes>) {}
    /// The body failed; the guard is dropped right after.
    fn on_error(&self, _error: &BoxError) {}
}

/// A body that holds `G` until it is over; frames pass through unchanged.
pub struct GuardedBody<G> {
    inner: Body,
    guard: Option<G>,
}

impl<G: BodyGuard> GuardedBody<G> {
    pub fn new(inner: Body, guard: G) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<G: BodyGuard> http_body::Body for GuardedBody<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(guard) = &self.guard {
                    guard.on_frame(frame);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(guard) = self.guard.take() {
                    guard.on_error(error);
                }
            }
            Poll::Ready(None) => self.guard = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
