//! A response body that carries its request's span, so the span covers the
//! body's transfer and learns a gRPC status sent in the trailers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::RequestSpan;
use crate::body::{Body, BoxError};

/// Ends the span when the body ends, fails, or is dropped (client gone).
pub struct SpanBody {
    inner: Body,
    span: Option<RequestSpan>,
}

impl SpanBody {
    pub fn new(inner: Body, span: RequestSpan) -> SpanBody {
        SpanBody {
            inner,
            span: Some(span),
        }
    }
}

impl HttpBody for SpanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(span)) = (frame.trailers_ref(), &self.span) {
                    span.record_trailers(trailers);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(span) = self.span.take() {
                    span.record_error(&**error);
                }
            }
            Poll::Ready(None) => self.span = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
