//! Retry decisions: which outcomes of an attempt may be retried, and how long
//! to wait before the next one. Whether a retry is *afforded* is the backend's
//! retry budget's call (`tower::retry::budget::TpsBudget`, see `backend`).

use std::time::Duration;

use http::{Method, Response};
use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::util::rng::HasherRng;

use super::grpc_status::{GRPC_STATUS, GrpcStatus};
use super::metrics::RetryReason;
use crate::connect::SendError;
use crate::error::ProxyError;

/// A route rule's retry policy, compiled from `plexus_api::v1::RetryPolicy`.
#[derive(Debug, Clone, Default)]
pub struct RetryPolicy {
    /// Total attempts, the first included; 1 = no retries.
    attempts: u32,
    codes: Vec<u16>,
    grpc_codes: Vec<u32>,
    backoff: Option<ExponentialBackoffMaker>,
}

/// How one attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone)]
pub enum AttemptFailure {
    Send(SendError),
    /// The per-try timeout (ms) expired before the response headers arrived.
    TryTimeout(u64),
    /// The backend had no ready endpoint for this attempt.
    NoEndpoints,
}

impl AttemptFailure {
    /// The error the client is told about when this was the last attempt
    /// on `backend`.
    pub fn into_proxy_error(self, backend: &str) -> ProxyError {
        match self {
            AttemptFailure::Send(SendError::Connect(reason)) => ProxyError::ConnectFailed {
                endpoint: backend.to_owned(),
                reason,
            },
            AttemptFailure::Send(SendError::Request(reason)) => ProxyError::UpstreamFailed {
                endpoint: backend.to_owned(),
                reason,
            },
            AttemptFailure::TryTimeout(ms) => ProxyError::Timeout(ms),
            AttemptFailure::NoEndpoints => ProxyError::NoEndpoints(backend.to_owned()),
        }
    }
}

impl RetryPolicy {
    pub fn from_proto(proto: Option<&plexus_api::v1::RetryPolicy>) -> RetryPolicy {
        let Some(proto) = proto else {
            return RetryPolicy::none();
        };
        let codes = proto
            .codes
            .iter()
            .filter_map(|&c| u16::try_from(c).ok())
            .collect();
        let base = Duration::from_millis(proto.backoff_base_ms);
        let max = Duration::from_millis(proto.backoff_max_ms).max(base);
        // Jitter 1.0: each wait is uniform in [base·2ⁿ, 2·base·2ⁿ], capped at max.
        let backoff = (!base.is_zero())
            .then(|| ExponentialBackoffMaker::new(base, max, 1.0, HasherRng::default()).ok())
            .flatten();
        RetryPolicy {
            attempts: proto.attempts.max(1),
            codes,
            grpc_codes: proto.grpc_codes.clone(),
            backoff,
        }
    }

    pub fn none() -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn retries(&self) -> bool {
        self.attempts > 1
    }

    /// Why a response may be retried: a listed HTTP status, or a listed gRPC
    /// status in the headers of a trailers-only response. A status in the
    /// trailers comes after the response went on to the client (it is never
    /// held back to wait for them): too late to retry, it counts for accrual
    /// and metrics only.
    pub fn retryable_response<B>(&self, response: &Response<B>) -> Option<RetryReason> {
        if self.codes.contains(&response.status().as_u16()) {
            return Some(RetryReason::status);
        }
        if self.grpc_codes.is_empty() {
            return None;
        }
        match GrpcStatus::of(response.headers()) {
            Some(GrpcStatus::Code(code)) if self.grpc_codes.contains(&u32::from(code)) => {
                Some(RetryReason::grpc_status)
            }
            _ => None,
        }
    }

    /// Why a failed attempt may be retried. A request that may have reached the
    /// server is retried only when its method is idempotent.
    pub fn retryable_failure(
        &self,
        failure: &AttemptFailure,
        method: &Method,
    ) -> Option<RetryReason> {
        match failure {
            AttemptFailure::Send(SendError::Connect(_)) => Some(RetryReason::connect),
            AttemptFailure::Send(SendError::Request(_)) => {
                is_idempotent(method).then_some(RetryReason::request_error)
            }
            AttemptFailure::TryTimeout(_) => is_idempotent(method).then_some(RetryReason::timeout),
            AttemptFailure::NoEndpoints => None,
        }
    }

    /// A fresh backoff sequence for one request, `None` when retries do not wait.
    pub fn backoff(&self) -> Option<ExponentialBackoff> {
        self.backoff.clone().map(|mut maker| maker.make_backoff())
    }
}

/// Why an attempt is retried, for its span: `status 503`, `grpc-status 14`,
/// `connect failed`, `request failed`, `try timeout`.
pub fn describe<B>(reason: RetryReason, outcome: &Result<Response<B>, AttemptFailure>) -> String {
    let response = outcome.as_ref().ok();
    match reason {
        RetryReason::status => match response {
            Some(response) => format!("status {}", response.status().as_u16()),
            None => "status".to_owned(),
        },
        RetryReason::grpc_status => {
            let code = response
                .and_then(|r| r.headers().get(GRPC_STATUS))
                .and_then(|v| v.to_str().ok());
            match code {
                Some(code) => format!("grpc-status {code}"),
                None => "grpc-status".to_owned(),
            }
        }
        RetryReason::connect => "connect failed".to_owned(),
        RetryReason::request_error => "request failed".to_owned(),
        RetryReason::timeout => "try timeout".to_owned(),
    }
}

/// The next wait of a request's backoff sequence.
pub async fn wait(backoff: &mut Option<ExponentialBackoff>) {
    if let Some(backoff) = backoff {
        backoff.next_backoff().await;
    }
}

/// RFC 9110 §9.2.2: repeating the request has the same effect as sending it once.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn policy() -> RetryPolicy {
        RetryPolicy::from_proto(Some(&plexus_api::v1::RetryPolicy {
            attempts: 3,
            codes: vec![502, 503],
            grpc_codes: vec![14],
            backoff_base_ms: 10,
            backoff_max_ms: 100,
        }))
    }

    fn response(status: u16, grpc_status: Option<&'static str>) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(g) = grpc_status {
            r.headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static(g));
        }
        r
    }

    #[test]
    fn listed_statuses_are_retried_others_are_not() {
        let p = policy();
        assert_eq!(
            p.retryable_response(&response(503, None)),
            Some(RetryReason::status)
        );
        assert_eq!(p.retryable_response(&response(500, None)), None);
        assert_eq!(p.retryable_response(&response(200, None)), None);
    }

    #[test]
    fn grpc_status_of_trailers_only_responses_is_retried() {
        let p = policy();
        assert_eq!(
            p.retryable_response(&response(200, Some("14"))),
            Some(RetryReason::grpc_status)
        );
        assert_eq!(p.retryable_response(&response(200, Some("13"))), None);
        assert_eq!(p.retryable_response(&response(200, Some("x"))), None);
    }

    #[test]
    fn connect_failures_are_always_retried_request_failures_only_when_idempotent() {
        let p = policy();
        let connect = SendError::Connect("refused".into());
        let broken = SendError::Request("reset".into());
        assert_eq!(
            p.retryable_failure(&AttemptFailure::Send(connect), &Method::POST),
            Some(RetryReason::connect)
        );
        assert_eq!(
            p.retryable_failure(&AttemptFailure::Send(broken.clone()), &Method::POST),
            None
        );
        assert_eq!(
            p.retryable_failure(&AttemptFailure::Send(broken.clone()), &Method::PUT),
            Some(RetryReason::request_error)
        );
        assert_eq!(
            p.retryable_failure(&AttemptFailure::TryTimeout(10), &Method::GET),
            Some(RetryReason::timeout)
        );
        assert_eq!(
            p.retryable_failure(&AttemptFailure::TryTimeout(10), &Method::PATCH),
            None
        );
    }

    #[test]
    fn retry_reasons_are_described_for_attempt_spans() {
        let unavailable: Result<_, AttemptFailure> = Ok(response(503, None));
        assert_eq!(describe(RetryReason::status, &unavailable), "status 503");
        let grpc: Result<_, AttemptFailure> = Ok(response(200, Some("14")));
        assert_eq!(describe(RetryReason::grpc_status, &grpc), "grpc-status 14");
        let refused: Result<Response<()>, _> =
            Err(AttemptFailure::Send(SendError::Connect("refused".into())));
        assert_eq!(describe(RetryReason::connect, &refused), "connect failed");
        let slow: Result<Response<()>, _> = Err(AttemptFailure::TryTimeout(10));
        assert_eq!(describe(RetryReason::timeout, &slow), "try timeout");
    }

    #[test]
    fn absent_or_zero_attempts_mean_no_retries() {
        assert!(!RetryPolicy::from_proto(None).retries());
        let zero = plexus_api::v1::RetryPolicy::default();
        assert_eq!(RetryPolicy::from_proto(Some(&zero)).attempts(), 1);
        assert!(RetryPolicy::from_proto(Some(&zero)).backoff().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_exponentially_within_base_and_max() {
        let p = policy();
        for _ in 0..50 {
            let mut backoff = p.backoff().expect("backoff configured");
            let mut floor = Duration::from_millis(10);
            for _ in 0..6 {
                let sleep = backoff.next_backoff();
                let wait = sleep.deadline() - tokio::time::Instant::now();
                assert!(
                    wait >= floor.min(Duration::from_millis(100)),
                    "{wait:?} < {floor:?}"
                );
                assert!(wait <= Duration::from_millis(100), "{wait:?} above max");
                assert!(wait <= floor * 2, "{wait:?} above 2x{floor:?}");
                floor *= 2;
            }
        }
    }
}
