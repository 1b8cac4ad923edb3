//! Errors the proxy makes itself, and the one place they become responses.
//!
//! Every response the proxy synthesises carries `plexus-error: <reason>` so a
//! user can tell a proxy failure from an application one.

use http::{HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

/// The response header naming why the proxy answered instead of the upstream.
pub const ERROR_HEADER: &str = "plexus-error";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("no route or destination for {0}")]
    UnknownTarget(String),
    #[error("backend {0} has no ready endpoints")]
    NoEndpoints(String),
    /// A backendRef the controller could not resolve (Gateway API: its share gets 500).
    #[error("backend {backend} does not resolve: {why}")]
    UnresolvedBackend { backend: String, why: String },
    #[error("connecting to {endpoint} failed: {reason}")]
    ConnectFailed { endpoint: String, reason: String },
    #[error("upstream {endpoint} failed: {reason}")]
    UpstreamFailed { endpoint: String, reason: String },
    #[error("request timed out after {0} ms")]
    Timeout(u64),
    #[error("backend {0} is overloaded")]
    Overloaded(String),
    #[error("retry budget of backend {0} is exhausted")]
    BudgetExhausted(String),
    #[error("client {0} is not allowed")]
    Forbidden(String),
    /// The workload's inbound rate limit; the client may retry after that many seconds.
    #[error("rate limit exceeded: retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("proxy is shutting down")]
    ShuttingDown,
    /// The rule's fault injection aborted the request (resilience testing).
    #[error("fault injected by the route: {status}")]
    FaultInjected { status: StatusCode, grpc_code: u16 },
}

impl ProxyError {
    /// The value of the `plexus-error` header: short, stable, machine-readable.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::HeadersTooLarge => "headers-too-large",
            Self::UnknownTarget(_) => "unknown-target",
            Self::NoEndpoints(_) => "no-endpoints",
            Self::UnresolvedBackend { .. } => "unresolved-backend",
            Self::ConnectFailed { .. } => "connect-failed",
            Self::UpstreamFailed { .. } => "upstream-failed",
            Self::Timeout(_) => "timeout",
            Self::Overloaded(_) => "overloaded",
            Self::BudgetExhausted(_) => "budget-exhausted",
            Self::Forbidden(_) => "forbidden",
            Self::RateLimited { .. } => "rate-limited",
            Self::ShuttingDown => "shutting-down",
            Self::FaultInjected { .. } => "fault-injected",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UnresolvedBackend { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::FaultInjected { status, .. } => *status,
            Self::UnknownTarget(_) | Self::ConnectFailed { .. } | Self::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::NoEndpoints(_)
            | Self::Overloaded(_)
            | Self::BudgetExhausted(_)
            | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The response the client sees. gRPC clients get a trailers-only response
    /// with a matching `grpc-status`, so their libraries report it properly.
    pub fn into_response(self, grpc: bool) -> Response<Body> {
        let reason = HeaderValue::from_static(self.reason());
        let mut response = if grpc {
            let mut r = Response::new(body::empty());
            let headers = r.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", HeaderValue::from(self.grpc_code()));
            if let Ok(message) = HeaderValue::from_str(&self.to_string()) {
                headers.insert("grpc-message", message);
            }
            r
        } else {
            let mut r = Response::new(body::full(format!("{self}\n")));
            *r.status_mut() = self.status();
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        };
        response.headers_mut().insert(ERROR_HEADER, reason);
        if let Self::RateLimited { retry_after_secs } = self {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs),
            );
        }
        response
    }

    /// The gRPC status code that matches this error (UNAVAILABLE, DEADLINE_EXCEEDED, …).
    pub fn grpc_code(&self) -> u16 {
        match self {
            Self::BadRequest(_) | Self::HeadersTooLarge => 3, // INVALID_ARGUMENT
            Self::Forbidden(_) => 7,                          // PERMISSION_DENIED
            Self::Timeout(_) => 4,                            // DEADLINE_EXCEEDED
            Self::FaultInjected { grpc_code, .. } => *grpc_code,
            Self::Overloaded(_) | Self::BudgetExhausted(_) | Self::RateLimited { .. } => 8, // RESOURCE_EXHAUSTED
            Self::UnknownTarget(_)
            | Self::NoEndpoints(_)
            | Self::UnresolvedBackend { .. }
            | Self::ConnectFailed { .. }
            | Self::UpstreamFailed { .. }
            | Self::ShuttingDown => 14, // UNAVAILABLE
        }
    }
}

/// An error with each of its sources after it: hyper's and hyper-util's
/// errors hide the useful part (refused, reset, a bad chunk size) there.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
