//! The spans of one proxied request: [`RequestSpan`] (server span inbound,
//! client span outbound) and its [`AttemptSpan`] children, with attributes
//! from OpenTelemetry's HTTP and RPC semantic conventions (HTTP spans, stable
//! since semconv 1.23): every required and conditionally required attribute,
//! and the recommended ones the proxy knows.
//!
//! When tracing is off both are an empty `Option`: every method is a branch
//! on `None`, with no allocation. When a request is not sampled its span
//! gets no attribute at all: they are only built for recording spans.

use std::borrow::Cow;

use http::uri::Authority;
use http::{HeaderMap, Method};
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
    /// `{method}` of the span name (`HTTP` for a method the conventions do not know).
    method: &'static str,
    /// What every attempt span repeats of its request (the conventions'
    /// required client attributes); empty unless recording.
    request_attributes: Vec<KeyValue>,
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
        let method = known_method(&parts.method);
        let span = tracer
            .span_builder(method.unwrap_or("HTTP"))
            .with_kind(kind.clone())
            .start_with_context(tracer, &parent);
        let cx = Context::new().with_span(span);
        propagation::inject(cx.span().span_context(), b3, &mut parts.headers);
        let mut request_attributes = Vec::new();
        if cx.span().is_recording() {
            let span = cx.span();
            let grpc_name = grpc
                .then(|| grpc_service_method(parts.uri.path()))
                .flatten();
            if let Some((service, method)) = grpc_name {
                span.update_name(format!("{service}/{method}"));
            }
            let request = RequestAttributes::of(parts, method);
            let mut attributes = if kind == SpanKind::Client {
                let client = request.client();
                request_attributes = client.clone();
                client
            } else {
                request.server()
            };
            request.push_common(&mut attributes, grpc_name);
            span.set_attributes(attributes);
        }
        RequestSpan(Some(Box::new(ActiveRequest {
            recorded: Recorded { cx, kind, grpc },
            tracer: tracer.clone(),
            b3,
            method: method.unwrap_or("HTTP"),
            request_attributes,
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
        let mut attributes = active.request_attributes.clone();
        attributes.push(KeyValue::new("plexus.retry.attempt", i64::from(n)));
        attributes.extend(endpoint_attributes(endpoint));
        if n > 1 {
            attributes.push(KeyValue::new("http.request.resend_count", i64::from(n - 1)));
        }
        if let Some(reason) = reason {
            attributes.push(KeyValue::new("plexus.retry.reason", reason.to_owned()));
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
        let Some(active) = self.recording() else {
            return;
        };
        if active.recorded.grpc {
            return;
        }
        let span = active.recorded.cx.span();
        span.set_attribute(KeyValue::new("http.route", route.to_owned()));
        span.update_name(format!("{} {route}", active.method));
    }

    /// The endpoint the request was sent to when it has no attempt spans (a
    /// route that does not retry): its address and, over mTLS, the identity
    /// it had to prove.
    pub fn set_endpoint(&self, endpoint: &EndpointTarget) {
        if let Some(active) = self.recording() {
            active
                .recorded
                .cx
                .span()
                .set_attributes(endpoint_attributes(endpoint));
        }
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

    /// The inbound rate limit refused the request (`plexus.rate_limited`).
    pub fn set_rate_limited(&self) {
        if let Some(active) = self.recording() {
            active
                .recorded
                .cx
                .span()
                .set_attribute(KeyValue::new("plexus.rate_limited", true));
        }
    }

    /// The route's fault injection delayed (`plexus.fault.delayed`) or
    /// aborted (`plexus.fault.aborted`) the request; both can be set.
    pub fn set_fault(&self, attribute: &'static str) {
        if let Some(active) = self.recording() {
            active
                .recorded
                .cx
                .span()
                .set_attribute(KeyValue::new(attribute, true));
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
        if let Some(active) = self.recording() {
            active
                .recorded
                .cx
                .span()
                .set_attribute(KeyValue::new(key, value.to_owned()));
        }
    }

    /// The request, when its span records: nothing is built for the others.
    fn recording(&self) -> Option<&ActiveRequest> {
        self.0
            .as_deref()
            .filter(|active| active.recorded.cx.span().is_recording())
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
            // The conventions' `error.type` for a status that fails the span.
            span.set_attribute(KeyValue::new(
                "error.type",
                response.status.as_str().to_owned(),
            ));
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

/// The methods the HTTP conventions know (RFC 9110 and PATCH), as
/// `http.request.method` spells them; `None` for any other (`_OTHER`).
fn known_method(method: &Method) -> Option<&'static str> {
    const KNOWN: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    KNOWN.into_iter().find(|known| *known == method.as_str())
}

/// `network.peer.*` and `plexus.server.identity` of the endpoint a request
/// or attempt was sent to.
fn endpoint_attributes(endpoint: &EndpointTarget) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("network.peer.address", endpoint.addr.ip().to_string()),
        KeyValue::new("network.peer.port", i64::from(endpoint.addr.port())),
    ];
    if let Some(identity) = &endpoint.identity {
        attributes.push(KeyValue::new("plexus.server.identity", identity.clone()));
    }
    attributes
}

/// What a request's head says, in the conventions' terms; built only for
/// recording spans.
struct RequestAttributes<'a> {
    parts: &'a request::Parts,
    method: Option<&'static str>,
    /// `url.scheme`: the request's own (HTTP/2's `:scheme`, an absolute
    /// HTTP/1 target) else `http`. The proxies speak mTLS between them, but
    /// the request is the app's plain `http` one (`transport` sends it with
    /// `:scheme http`), and an app's own TLS is never decrypted.
    scheme: &'a str,
    /// From the absolute target, else `Host` (HTTP/1) / `:authority` (HTTP/2).
    authority: Option<Authority>,
}

impl<'a> RequestAttributes<'a> {
    fn of(parts: &'a request::Parts, method: Option<&'static str>) -> Self {
        let authority = parts.uri.authority().cloned().or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse().ok())
        });
        RequestAttributes {
            parts,
            method,
            scheme: parts.uri.scheme_str().unwrap_or("http"),
            authority,
        }
    }

    /// The required attributes of a client span, which its attempts repeat:
    /// the method, `server.address`, `server.port`, `url.full`.
    fn client(&self) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(8);
        self.push_method(&mut attributes);
        self.push_server_address(&mut attributes);
        if let Some(authority) = &self.authority {
            attributes.push(KeyValue::new("url.full", self.full_url(authority)));
        }
        attributes
    }

    /// A server span's: the method, `url.scheme`, `url.path` and `url.query`
    /// apart, `server.*` and `user_agent.original`.
    fn server(&self) -> Vec<KeyValue> {
        let parts = self.parts;
        let mut attributes = Vec::with_capacity(12);
        self.push_method(&mut attributes);
        self.push_server_address(&mut attributes);
        attributes.push(KeyValue::new("url.scheme", self.scheme.to_owned()));
        attributes.push(KeyValue::new("url.path", parts.uri.path().to_owned()));
        if let Some(query) = parts.uri.query() {
            let query = redacted_query(query).into_owned();
            attributes.push(KeyValue::new("url.query", query));
        }
        let agent = parts.headers.get(http::header::USER_AGENT);
        if let Some(agent) = agent.and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
        }
        attributes
    }

    /// What spans of both kinds get: `network.protocol.version`, `rpc.*`.
    fn push_common(&self, attributes: &mut Vec<KeyValue>, grpc: Option<(&str, &str)>) {
        attributes.push(KeyValue::new(
            "network.protocol.version",
            protocol_version(self.parts.version),
        ));
        if let Some((service, method)) = grpc {
            attributes.push(KeyValue::new("rpc.system", "grpc"));
            attributes.push(KeyValue::new("rpc.service", service.to_owned()));
            attributes.push(KeyValue::new("rpc.method", method.to_owned()));
        }
    }

    /// `http.request.method`, and the method as sent when it is not one the
    /// conventions know.
    fn push_method(&self, attributes: &mut Vec<KeyValue>) {
        let Some(known) = self.method else {
            attributes.push(KeyValue::new("http.request.method", "_OTHER"));
            let original = self.parts.method.as_str().to_owned();
            attributes.push(KeyValue::new("http.request.method_original", original));
            return;
        };
        attributes.push(KeyValue::new("http.request.method", known));
    }

    /// `server.address` (an IPv6 address without its brackets) and
    /// `server.port` (the scheme's default when the authority has none).
    fn push_server_address(&self, attributes: &mut Vec<KeyValue>) {
        let Some(authority) = &self.authority else {
            return;
        };
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = authority
            .port_u16()
            .unwrap_or(if self.scheme == "https" { 443 } else { 80 });
        attributes.push(KeyValue::new("server.address", host.to_owned()));
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }

    /// `scheme://host[:port]/path[?query]`: never the userinfo of an
    /// absolute target (`Authority::host` leaves it out), and known
    /// credential parameters of the query redacted.
    fn full_url(&self, authority: &Authority) -> String {
        let uri = &self.parts.uri;
        let mut url = format!("{}://{}", self.scheme, authority.host());
        if let Some(port) = authority.port() {
            url.push(':');
            url.push_str(port.as_str());
        }
        url.push_str(uri.path());
        if let Some(query) = uri.query() {
            url.push('?');
            url.push_str(&redacted_query(query));
        }
        url
    }
}

/// Query parameters whose values the conventions ask to redact: signed-URL
/// credentials.
const REDACTED_PARAMETERS: [&str; 4] = ["AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"];

/// `query` with the values of [`REDACTED_PARAMETERS`] replaced by
/// `REDACTED`, the keys kept; borrowed when there is none.
fn redacted_query(query: &str) -> Cow<'_, str> {
    fn key(pair: &str) -> &str {
        pair.split_once('=').map_or(pair, |(key, _)| key)
    }
    let secret = |pair: &str| REDACTED_PARAMETERS.contains(&key(pair));
    if !query.split('&').any(secret) {
        return Cow::Borrowed(query);
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            if secret(pair) {
                format!("{}=REDACTED", key(pair))
            } else {
                pair.to_owned()
            }
        })
        .collect();
    Cow::Owned(pairs.join("&"))
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

    fn head(method: &str, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut request = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).expect("test request").into_parts().0
    }

    fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
        attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn client_spans_get_the_required_attributes_without_credentials() {
        let parts = head(
            "GET",
            "http://user:secret@web.shop:8080/items?color=blue&sig=abc&Signature",
            &[],
        );
        let request = RequestAttributes::of(&parts, known_method(&parts.method));
        let client = request.client();
        assert_eq!(
            attribute(&client, "http.request.method").as_deref(),
            Some("GET")
        );
        assert_eq!(
            attribute(&client, "server.address").as_deref(),
            Some("web.shop")
        );
        assert_eq!(attribute(&client, "server.port").as_deref(), Some("8080"));
        assert_eq!(
            attribute(&client, "url.full").as_deref(),
            Some("http://web.shop:8080/items?color=blue&sig=REDACTED&Signature=REDACTED")
        );

        // Origin form: the authority from Host, the port from the scheme.
        let parts = head("PURGE", "/cache", &[("host", "[fd00::7]")]);
        let request = RequestAttributes::of(&parts, known_method(&parts.method));
        let client = request.client();
        assert_eq!(
            attribute(&client, "http.request.method").as_deref(),
            Some("_OTHER")
        );
        assert_eq!(
            attribute(&client, "http.request.method_original").as_deref(),
            Some("PURGE")
        );
        assert_eq!(
            attribute(&client, "server.address").as_deref(),
            Some("fd00::7")
        );
        assert_eq!(attribute(&client, "server.port").as_deref(), Some("80"));
        assert_eq!(
            attribute(&client, "url.full").as_deref(),
            Some("http://[fd00::7]/cache")
        );
    }

    #[test]
    fn server_spans_split_path_and_query() {
        let parts = head(
            "POST",
            "/items/7?x=1&X-Goog-Signature=s",
            &[("host", "web"), ("user-agent", "curl/8")],
        );
        let request = RequestAttributes::of(&parts, known_method(&parts.method));
        let mut server = request.server();
        request.push_common(&mut server, None);
        for (key, value) in [
            ("http.request.method", "POST"),
            ("url.scheme", "http"),
            ("url.path", "/items/7"),
            ("url.query", "x=1&X-Goog-Signature=REDACTED"),
            ("server.address", "web"),
            ("server.port", "80"),
            ("user_agent.original", "curl/8"),
            ("network.protocol.version", "1.1"),
        ] {
            assert_eq!(attribute(&server, key).as_deref(), Some(value), "{key}");
        }
        assert_eq!(attribute(&server, "url.full"), None);
        assert!(matches!(redacted_query("a=1&b"), Cow::Borrowed("a=1&b")));
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
