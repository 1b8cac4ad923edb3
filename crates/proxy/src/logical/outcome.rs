//! An attempt's outcome reaching its endpoint's failure accrual: at once when
//! the response head decides it, else (a gRPC response) when the trailers
//! pass by on their way to the client. Trailer observation costs the gRPC
//! response one body wrapper (a box and a check per frame, no copy); other
//! responses are not wrapped.

use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body::Frame;
use tokio::time::Instant;

use super::backend::Backend;
use super::balance::Picked;
use super::grpc_status::{self, GrpcStatus, HeadOutcome};
use super::retry::AttemptFailure;
use crate::body::{self, Body, BodyGuard, BoxError};

/// An attempt whose outcome is not yet recorded. Dropped unfinished (the
/// request was cancelled or timed out), it hands a probe back so the next
/// request can probe the ejected endpoint.
pub struct InFlight<'a> {
    backend: &'a Arc<Backend>,
    picked: Picked,
    finished: bool,
}

impl<'a> InFlight<'a> {
    pub fn new(backend: &'a Arc<Backend>, picked: Picked) -> InFlight<'a> {
        InFlight {
            backend,
            picked,
            finished: false,
        }
    }

    pub fn picked(&self) -> &Picked {
        &self.picked
    }

    /// Records the attempt's outcome now, or, for a gRPC response whose
    /// status is due in its trailers, makes the response's body record it.
    /// `grpc`: the request was a gRPC call.
    pub fn finish(
        mut self,
        outcome: Result<Response<Body>, AttemptFailure>,
        grpc: bool,
    ) -> Result<Response<Body>, AttemptFailure> {
        self.finished = true;
        let response = match outcome {
            Ok(response) => response,
            Err(failure) => {
                tracing::debug!(endpoint = %self.picked.endpoint.target.addr, ?failure, "attempt failed");
                self.backend.record(&self.picked, false);
                return Err(failure);
            }
        };
        match grpc_status::classify_head(&response, grpc) {
            HeadOutcome::Known { success, grpc } => {
                record(self.backend, &self.picked, success, grpc);
                Ok(response)
            }
            HeadOutcome::AtTrailers => {
                let pending = TrailersOutcome {
                    backend: self.backend.clone(),
                    picked: self.picked.clone(),
                    recorded: Cell::new(false),
                };
                Ok(response.map(|b| body::boxed(body::GuardedBody::new(b, pending))))
            }
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.finished {
            release_probe(&self.picked);
        }
    }
}

/// The attempt's outcome into its endpoint's accrual, and its gRPC status,
/// if it has one, into the backend's counters.
fn record(backend: &Backend, picked: &Picked, success: bool, status: Option<GrpcStatus>) {
    if let Some(status) = status {
        backend.count_grpc(status);
    }
    backend.record(picked, success);
}

/// An attempt that ends without an outcome hands its probe, if it was one,
/// back for the next request.
fn release_probe(picked: &Picked) {
    if picked.probe {
        picked.endpoint.accrual.release_probe(Instant::now());
    }
}

/// Rides on a gRPC response's body until its trailers say how the call ended.
struct TrailersOutcome {
    backend: Arc<Backend>,
    picked: Picked,
    recorded: Cell<bool>,
}

impl TrailersOutcome {
    fn record(&self, success: bool, status: Option<GrpcStatus>) {
        if !self.recorded.replace(true) {
            record(&self.backend, &self.picked, success, status);
        }
    }
}

impl BodyGuard for TrailersOutcome {
    fn on_frame(&self, frame: &Frame<Bytes>) {
        if let Some(trailers) = frame.trailers_ref() {
            let status = grpc_status::classify_trailers(trailers);
            self.record(!status.fails_endpoint(), Some(status));
        }
    }

    /// The stream broke (reset, connection lost): the endpoint failed the call.
    fn on_error(&self, _error: &BoxError) {
        self.record(false, None);
    }

    /// Ended without trailers: a gRPC call without a status failed.
    fn on_end(&self) {
        self.record(false, Some(GrpcStatus::Invalid));
    }
}

impl Drop for TrailersOutcome {
    /// The client went away first: no outcome, but a probe is handed back.
    fn drop(&mut self) {
        if !self.recorded.get() {
            release_probe(&self.picked);
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};
    use plexus_api::v1 as proto;

    use super::*;
    use crate::connect::{AppProtocol, EndpointClient, EndpointTarget, ResponseFuture};
    use crate::logical::metrics::{BackendLabels, LogicalMetrics};

    struct Unused;
    impl EndpointClient for Unused {
        fn send(&self, _: &EndpointTarget, _: http::Request<Body>) -> ResponseFuture {
            Box::pin(std::future::pending())
        }
    }

    /// Two endpoints; one failure ejects (one of two may go).
    fn backend(metrics: &LogicalMetrics) -> Arc<Backend> {
        let proto = proto::Backend {
            name: "b".into(),
            endpoints: (1..=2)
                .map(|port| proto::Endpoint {
                    address: format!("127.0.0.1:{port}"),
                    ready: true,
                    ..Default::default()
                })
                .collect(),
            resilience: Some(proto::Resilience {
                failure_accrual: Some(proto::FailureAccrual {
                    consecutive_failures: Some(1),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let client: Arc<dyn EndpointClient> = Arc::new(Unused);
        let protocol = AppProtocol::AsRequested;
        Arc::new(Backend::new(
            "t", "b", &proto, None, protocol, &client, metrics,
        ))
    }

    /// A streamed gRPC response: one message, then trailers with `grpc_status`.
    fn streamed(grpc_status: &'static str) -> Response<Body> {
        let mut trailers = http::HeaderMap::new();
        trailers.insert(
            grpc_status::GRPC_STATUS,
            grpc_status.parse().expect("value"),
        );
        let frames = [
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(Frame::trailers(trailers)),
        ];
        Response::new(body::boxed(StreamBody::new(tokio_stream::iter(frames))))
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_in_the_trailers_is_recorded_when_they_pass() {
        let metrics = LogicalMetrics::default();
        let backend = backend(&metrics);
        let picked = backend.pick(None).expect("endpoints");
        let response = InFlight::new(&backend, picked.clone())
            .finish(Ok(streamed("14")), true)
            .expect("the response");
        assert!(
            picked.endpoint.accrual.admits(),
            "nothing known before the end"
        );
        let collected = response.into_body().collect().await.expect("the body");
        assert!(
            collected.trailers().is_some(),
            "the trailers reach the client"
        );
        assert!(!picked.endpoint.accrual.admits(), "UNAVAILABLE ejects");
        let labels = BackendLabels::new("t", "b");
        let unavailable = metrics.grpc_responses_total(&labels, GrpcStatus::Code(14));
        assert_eq!(unavailable, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ok_trailers_and_a_body_dropped_early_do_not_eject() {
        let metrics = LogicalMetrics::default();
        let backend = backend(&metrics);
        for _ in 0..4 {
            let picked = backend.pick(None).expect("endpoints");
            let response = InFlight::new(&backend, picked)
                .finish(Ok(streamed("0")), true)
                .expect("the response");
            response.into_body().collect().await.expect("the body");
        }
        for _ in 0..4 {
            let picked = backend.pick(None).expect("endpoints");
            let response = InFlight::new(&backend, picked.clone())
                .finish(Ok(streamed("14")), true)
                .expect("the response");
            // The client went away before the trailers.
            drop(response);
            assert!(picked.endpoint.accrual.admits());
        }
        let ok = metrics.grpc_responses_total(&BackendLabels::new("t", "b"), GrpcStatus::Code(0));
        assert_eq!(ok, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trailers_only_unavailable_ejects_at_once() {
        let metrics = LogicalMetrics::default();
        let backend = backend(&metrics);
        let picked = backend.pick(None).expect("endpoints");
        let mut response = Response::new(body::empty());
        response.headers_mut().insert(
            grpc_status::GRPC_STATUS,
            http::HeaderValue::from_static("14"),
        );
        let response = InFlight::new(&backend, picked.clone()).finish(Ok(response), true);
        assert!(response.is_ok());
        assert!(!picked.endpoint.accrual.admits());
    }
}
