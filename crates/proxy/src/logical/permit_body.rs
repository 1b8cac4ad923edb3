//! A response body that holds its backend's concurrency slot until it ends,
//! so a long download counts as in flight.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use crate::body::{Body, BoxError};

pub struct PermitBody {
    inner: Body,
    /// Released when the body ends or is dropped.
    permit: Option<OwnedSemaphorePermit>,
}

impl PermitBody {
    pub fn new(inner: Body, permit: OwnedSemaphorePermit) -> PermitBody {
        PermitBody {
            inner,
            permit: Some(permit),
        }
    }
}

impl HttpBody for PermitBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.permit = None;
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
