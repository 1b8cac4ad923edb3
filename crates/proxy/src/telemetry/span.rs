//! The spans of one proxied request: [`RequestSpan`] (server span inbound,
//! client span outbound) and its [`AttemptSpan`] children, with attributes
//! from OpenTelemetry's HTTP and RPC semantic conventions.
//!
//! When tracing is off both are an empty `Option`: every method is a branch
//! on `None`, with no allocation.

use http::HeaderMap;
use http::{request, response};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;
use plexus_core::Direction;

use super::propagation::{self, Format};
use crate::connect::{EndpointTarget, SendError};
use crate::error::ProxyError;

/// The span kind of a request crossing the proxy in `direction`: the proxy
/// is the server of inbound requests and the client of outbound ones.
pub(super) fn span_kind(direction: Direction) -> SpanKind {
    match direction {
        Direction::Inbound => SpanKind::Server,
        Direction::Outbound => SpanKind::Client,
    }
}

/// The span of one request through the proxy. Ends on [`RequestSpan::finish`]
/// or when dropped.
#[derive(Debug, Default)]
#[must_use = "the span ends when this is dropped"]
pub struct RequestSpan(Option<Box<ActiveRequest>>);

/// The span of one attempt (try) of an outbound request, child of its
/// [`RequestSpan`]. Ends on [`AttemptSpan::finish`] or when dropped.
#[derive(Debug, Default)]
#[must_use = "the span ends when this is dropped"]
pub struct AttemptSpan(Option<Box<Recorded>>);

#[derive(Debug)]
struct ActiveRequest {
    recorded: Recorded,
    tracer: SdkTracer,
    /// The B3 form the context came in, rewritten for every attempt too.
    b3: Option<Format>,
    method: http::Method,
    attempts: u32,
}

/// A started span and what decides its status.
#[derive(Debug)]
struct Recorded {
    cx: Context,
    kind: SpanKind,
    grpc: bool,
}

impl RequestSpan {
    pub(super) fn start(
        tracer: &SdkTracer,
        direction: Direction,
        parent: Context,
        b3: Option<Format>,
        parts: &mut request::Parts,
    ) -> RequestSpan {
        let grpc = is_grpc(&parts.headers);
        let kind = span_kind(direction);
        let span = tracer
            .span_builder(span_name(parts, grpc))
            .with_kind(kind.clone())
            .with_attributes(request_attributes(parts, grpc))
            .start_with_context(tracer, &parent);
        let cx = Context::new().with_span(span);
        propagation::inject(cx.span().span_context(), b3, &mut parts.headers);
        RequestSpan(Some(Box::new(ActiveRequest {
            recorded: Recorded { cx, kind, grpc },
            tracer: tracer.clone(),
            b3,
            method: parts.method.clone(),
            attempts: 0,
        })))
    }

    /// Whether this request is being recorded (tracing on and sampled).
    pub fn is_recording(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|r| r.recorded.cx.span().is_recording())
    }

    /// Starts the span of attempt `n` (1 for the first try) sent to `endpoint`,
    /// and makes the attempt's `headers` carry it as the next hop's parent.
    /// `reason` says why this is a retry (e.g. `status 503`, `connect failed`).
    pub fn attempt(
        &mut self,
        n: u32,
        reason: Option<&str>,
        endpoint: &EndpointTarget,
        headers: &mut HeaderMap,
    ) -> AttemptSpan {
        let Some(active) = self.0.as_deref_mut() else {
            return AttemptSpan(None);
        };
        active.attempts = active.attempts.max(n);
        let mut attributes = vec![
            KeyValue::new("plexus.retry.attempt", i64::from(n)),
            KeyValue::new("network.peer.address", endpoint.addr.ip().to_string()),
            KeyValue::new("network.peer.port", i64::from(endpoint.addr.port())),
        ];
        if n > 1 {
            attributes.push(KeyValue::new("http.request.resend_count", i64::from(n - 1)));
        }
        if let Some(reason) = reason {
            attributes.push(KeyValue::new("plexus.retry.reason", reason.to_owned()));
        }
        if let Some(identity) = &endpoint.identity {
            attributes.push(KeyValue::new("plexus.server.identity", identity.clone()));
        }
        let span = active
            .tracer
            .span_builder("attempt")
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&active.tracer, &active.recorded.cx);
        let cx = Context::new().with_span(span);
        propagation::inject(cx.span().span_context(), active.b3, headers);
        AttemptSpan(Some(Box::new(Recorded {
            cx,
            kind: SpanKind::Client,
            grpc: active.recorded.grpc,
        })))
    }

    /// The matched route's name (`plexus.route`).
    pub fn set_route(&self, name: &str) {
        self.set("plexus.route", name);
    }

    /// The matched path template (`http.route`), which also names the span
    /// `{method} {route}` as the HTTP conventions ask. Ignored for gRPC.
    pub fn set_http_route(&self, route: &str) {
        let Some(active) = &self.0 else { return };
        if active.recorded.grpc {
            return;
        }
        let span = active.recorded.cx.span();
        span.set_attribute(KeyValue::new("http.route", route.to_owned()));
        span.update_name(format!("{} {route}", active.method));
    }

    /// The backend (Service, or split member) the request went to (`plexus.backend`).
    pub fn set_backend(&self, name: &str) {
        self.set("plexus.backend", name);
    }

    /// The SPIFFE IDs of both ends, when known (mTLS).
    pub fn set_identities(&self, client: Option<&str>, server: Option<&str>) {
        if let Some(client) = client {
            self.set("plexus.client.identity", client);
        }
        if let Some(server) = server {
            self.set("plexus.server.identity", server);
        }
    }

    /// The response head sent back (status code, and `grpc-status` of a
    /// trailers-only gRPC response).
    pub fn record_response(&self, response: &response::Parts) {
        if let Some(active) = &self.0 {
            active.recorded.response(response);
        }
    }

    /// Trailers of a gRPC response, where `grpc-status` normally is.
    pub fn record_trailers(&self, trailers: &HeaderMap) {
        if let Some(active) = &self.0 {
            active.recorded.trailers(trailers);
        }
    }

    /// The request failed without a response from upstream.
    pub fn record_error(&self, error: &(dyn std::error::Error + 'static)) {
        if let Some(active) = &self.0 {
            active.recorded.error(error);
        }
    }

    /// Ends the span now (also what dropping it does).
    pub fn finish(self) {
        drop(self);
    }

    fn set(&self, key: &'static str, value: &str) {
        if let Some(active) = &self.0 {
            active
                .recorded
                .cx
                .span()
                .set_attribute(KeyValue::new(key, value.to_owned()));
        }
    }
}

impl Drop for ActiveRequest {
    /// Runs before `recorded` ends the span.
    fn drop(&mut self) {
        if self.attempts > 1 {
            self.recorded.cx.span().set_attribute(KeyValue::new(
                "plexus.retry.count",
                i64::from(self.attempts - 1),
            ));
        }
    }
}

impl AttemptSpan {
    pub fn record_response(&self, response: &response::Parts) {
        if let Some(recorded) = &self.0 {
            recorded.response(response);
        }
    }

    pub fn record_trailers(&self, trailers: &HeaderMap) {
        if let Some(recorded) = &self.0 {
            recorded.trailers(trailers);
        }
    }

    pub fn record_error(&self, error: &(dyn std::error::Error + 'static)) {
        if let Some(recorded) = &self.0 {
            recorded.error(error);
        }
    }

    /// Ends the span now (also what dropping it does).
    pub fn finish(self) {
        drop(self);
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}

impl Recorded {
    fn response(&self, response: &response::Parts) {
        let span = self.cx.span();
        let status = response.status.as_u16();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        // Client spans count 4xx as errors, server spans only 5xx (HTTP conventions).
        let error_from = if self.kind == SpanKind::Server {
            500
        } else {
            400
        };
        if status >= error_from {
            span.set_status(Status::error(""));
        }
        if self.grpc {
            self.trailers(&response.headers);
        }
    }

    fn trailers(&self, trailers: &HeaderMap) {
        let Some(code) = trailers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u16>().ok())
        else {
            return;
        };
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
        if grpc_code_is_error(code, &self.kind) {
            let message = trailers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            span.set_status(Status::error(message.to_owned()));
        }
    }

    fn error(&self, error: &(dyn std::error::Error + 'static)) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("error.type", error_type(error)));
        span.set_status(Status::error(error.to_string()));
    }
}

/// Server spans flag only codes that mean the server failed (RPC conventions);
/// client spans flag every non-OK code.
fn grpc_code_is_error(code: u16, kind: &SpanKind) -> bool {
    match kind {
        SpanKind::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
        _ => code != 0,
    }
}

/// A low-cardinality name for `error.type`.
fn error_type(error: &(dyn std::error::Error + 'static)) -> &'static str {
    if let Some(e) = error.downcast_ref::<ProxyError>() {
        return e.reason();
    }
    match error.downcast_ref::<SendError>() {
        Some(SendError::Connect(_)) => "connect-failed",
        Some(SendError::Request(_)) => "request-failed",
        None => "_OTHER",
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
fn grpc_service_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

fn span_name(parts: &request::Parts, grpc: bool) -> String {
    match grpc_service_method(parts.uri.path()) {
        Some((service, method)) if grpc => format!("{service}/{method}"),
        _ => parts.method.as_str().to_owned(),
    }
}

fn request_attributes(parts: &request::Parts, grpc: bool) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("http.request.method", parts.method.as_str().to_owned()),
        KeyValue::new("url.path", parts.uri.path().to_owned()),
        KeyValue::new("network.protocol.version", protocol_version(parts.version)),
    ];
    let authority = parts.uri.authority().cloned().or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse().ok())
    });
    if let Some(authority) = authority {
        attributes.push(KeyValue::new("server.address", authority.host().to_owned()));
        if let Some(port) = authority.port_u16() {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
    }
    if grpc && let Some((service, method)) = grpc_service_method(parts.uri.path()) {
        attributes.push(KeyValue::new("rpc.system", "grpc"));
        attributes.push(KeyValue::new("rpc.service", service.to_owned()));
        attributes.push(KeyValue::new("rpc.method", method.to_owned()));
    }
    attributes
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            grpc_service_method("/plexus.v1.Destination/Watch"),
            Some(("plexus.v1.Destination", "Watch"))
        );
        assert_eq!(grpc_service_method("/only"), None);
        assert_eq!(grpc_service_method("//Watch"), None);
        assert_eq!(grpc_service_method("/a/b/c"), None);
    }

    #[test]
    fn server_spans_flag_only_server_side_grpc_failures() {
        assert!(grpc_code_is_error(14, &SpanKind::Server));
        assert!(
            !grpc_code_is_error(5, &SpanKind::Server),
            "NOT_FOUND is the caller's problem"
        );
        assert!(grpc_code_is_error(5, &SpanKind::Client));
        assert!(!grpc_code_is_error(0, &SpanKind::Client));
    }

    #[test]
    fn errors_get_stable_types() {
        assert_eq!(error_type(&ProxyError::Timeout(100)), "timeout");
        assert_eq!(
            error_type(&SendError::Connect("refused".into())),
            "connect-failed"
        );
        let io = std::io::Error::other("x");
        assert_eq!(error_type(&io), "_OTHER");
    }
}
