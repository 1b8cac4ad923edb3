//! The one body type that flows through the proxy: boxed, streamed, never
//! buffered whole (replay buffering for retries is bounded, in `logical`).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use tokio::sync::Notify;

use crate::head_timeout::HeadClock;

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
    /// The body ended (polled to its end); the guard is dropped right after.
    fn on_end(&self) {}
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
            Poll::Ready(None) => {
                if let Some(guard) = self.guard.take() {
                    guard.on_end();
                }
            }
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

/// The client's HTTP/1 request body, watched for failing: a chunk size hyper
/// cannot decode, a client gone mid-body. The request's upstream then fails
/// too, because its request body broke; [`ClientBodyFailure::failed`] lets
/// the proxy answer `400` first, and the upstream is not blamed.
/// While it is read, the connection's [`HeadClock`] does not time its bytes.
pub struct ClientBody {
    inner: Incoming,
    failure: Arc<ClientBodyFailure>,
    head: Arc<HeadClock>,
}

impl ClientBody {
    pub fn new(inner: Incoming, failure: Arc<ClientBodyFailure>, head: Arc<HeadClock>) -> Self {
        head.reading_body(true);
        Self {
            inner,
            failure,
            head,
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        self.head.reading_body(false);
    }
}

/// How a client's request body failed. One per HTTP/1 connection: after a
/// failed body hyper reads no further request from it.
#[derive(Debug, Default)]
pub struct ClientBodyFailure {
    notify: Notify,
    reason: OnceLock<String>,
}

impl ClientBodyFailure {
    /// Waits for the body to fail; what went wrong.
    pub async fn failed(&self) -> &str {
        self.notify.notified().await;
        self.reason.get().map_or("", String::as_str)
    }

    fn fail(&self, error: &hyper::Error) {
        // hyper's own message is generic; its source says what was wrong.
        let _ = self.reason.set(crate::error::error_chain(error));
        // Kept as a permit when nobody waits yet.
        self.notify.notify_one();
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Err(error))) => self.failure.fail(error),
            // What the client sends next is a head, though the body may be kept (retries).
            Poll::Ready(None) => self.head.reading_body(false),
            _ => {}
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

/// Keeps the body of a `GET` or `HEAD` of unknown length (sent chunked, or
/// over HTTP/2 without `content-length`) on its way to an HTTP/1 upstream:
/// hyper's HTTP/1 client takes these methods for bodyless and drops such a
/// body unless the request says `transfer-encoding: chunked`.
pub fn keep_unsized_body(request: &mut http::Request<Body>) {
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let body = request.body();
    let assumed_bodyless = matches!(*request.method(), http::Method::GET | http::Method::HEAD);
    if assumed_bodyless
        && !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !request.headers().contains_key(CONTENT_LENGTH)
    {
        request
            .headers_mut()
            .insert(TRANSFER_ENCODING, http::HeaderValue::from_static("chunked"));
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::StreamBody;

    use super::*;

    fn request(method: &str, body: Body) -> http::Request<Body> {
        http::Request::builder()
            .method(method)
            .body(body)
            .expect("request")
    }

    /// A body of unknown length, as a chunked one arrives.
    fn streamed() -> Body {
        let frame = http_body::Frame::data(Bytes::from_static(b"abc"));
        boxed(StreamBody::new(tokio_stream::iter([Ok::<
            _,
            std::convert::Infallible,
        >(frame)])))
    }

    #[test]
    fn only_gets_and_heads_of_unknown_length_are_marked_chunked() {
        for (method, body, chunked) in [
            ("GET", streamed(), true),
            ("HEAD", streamed(), true),
            ("GET", full("abc"), false),
            ("GET", empty(), false),
            // hyper chunks these itself.
            ("POST", streamed(), false),
        ] {
            let mut request = request(method, body);
            keep_unsized_body(&mut request);
            let te = request.headers().get(http::header::TRANSFER_ENCODING);
            assert_eq!(te.is_some(), chunked, "{method}");
        }
    }
}
