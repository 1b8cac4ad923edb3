//! A response body carries its request's span, so the span covers the body's
//! transfer and learns a gRPC status sent in the trailers; it ends when the
//! body ends, fails, or is dropped (client gone).

use bytes::Bytes;
use http_body::Frame;

use super::RequestSpan;
use crate::body::{BodyGuard, BoxError};

impl BodyGuard for RequestSpan {
    fn on_frame(&self, frame: &Frame<Bytes>) {
        if let Some(trailers) = frame.trailers_ref() {
            self.record_trailers(trailers);
        }
    }

    fn on_error(&self, error: &BoxError) {
        self.record_error(&**error);
    }
}
