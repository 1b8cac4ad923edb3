//! Serving HTTP on an accepted connection, the same in both directions:
//! hyper-util's server (HTTP/1 with keep-alive and upgrades, HTTP/2), heads
//! checked, hop-by-hop headers stripped, each request proxied to its
//! upstream, metered and traced. What differs by direction (policy, where a
//! request goes) is a [`RequestPath`].

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use plexus_core::Direction;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::auto_reply::{Replies, TagAutoReplies};
use crate::body::{self, Body, BodyGuard, BoxError, ClientBody, ClientBodyFailure, GuardedBody};
use crate::connect::EndpointClient;
use crate::detect::Protocol;
use crate::drain;
use crate::error::ProxyError;
use crate::h2_flood::FloodGuard;
use crate::head_timeout::{self, HeadClock, HeadDeadline};
use crate::hop_by_hop;
use crate::logical::RouteLabel;
use crate::metrics::{ProxyMetrics, RequestSeries};
use crate::telemetry::{RequestSpan, Telemetry};
use crate::upstream::Upstream;

/// hyper refuses smaller HTTP/1 read buffers (it asserts).
const MIN_HTTP1_BUF: usize = 8 * 1024;

/// HTTP/2 server keep-alive, as gRPC servers and Linkerd ping: a dead peer
/// is found within half a minute, a live one costs a PING frame each 10 s.
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent requests on one HTTP/2 connection (each holds a stream's
/// buffers). Not 100 (RFC 9113's floor, Envoy's advice for edges): a mesh
/// peer multiplexes every request to this pod over one connection, and h2
/// clients queue beyond the limit rather than open another.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 1000;

/// What every HTTP connection of a proxy shares.
pub struct HttpShared {
    pub server: auto::Builder<TokioExecutor>,
    /// `PLEXUS_MAX_HEADER_BYTES`; HTTP/2 heads are checked against it by
    /// the proxy itself, HTTP/1 heads by hyper ([`HttpShared::server`]).
    pub max_header_bytes: usize,
    pub client: Arc<dyn EndpointClient>,
    pub metrics: ProxyMetrics,
    pub idle_timeout: Duration,
    /// `PLEXUS_REQUEST_HEAD_TIMEOUT_MS` ([`crate::head_timeout`]).
    pub request_head_timeout: Duration,
    /// Spans of proxied requests; disabled, it costs a branch per request.
    pub telemetry: Telemetry,
}

impl HttpShared {
    /// hyper's server settings. An HTTP/1 head over `max_header_bytes` is
    /// answered `431` by hyper, tagged on its way out ([`crate::auto_reply`]).
    /// HTTP/2 gets twice the limit from h2, and the proxy answers heads
    /// between the two itself (`431`, `plexus-error`); beyond that h2 answers
    /// `431` itself, untagged, and far beyond it sends GOAWAY.
    ///
    /// `idle`: an HTTP/1 connection waiting longer than this for a request
    /// head (an idle keep-alive connection included) is closed. hyper's own
    /// default (30 s) would close apps' pooled connections under them; a
    /// head once started has [`HttpShared::request_head_timeout`].
    ///
    /// HTTP/2: a PING every [`H2_KEEPALIVE_INTERVAL`] finds a peer gone
    /// silently (no FIN, no RST), which is closed after
    /// [`H2_KEEPALIVE_TIMEOUT`] without the ACK; at most
    /// [`H2_MAX_CONCURRENT_STREAMS`] requests at once on a connection.
    pub fn server(max_header_bytes: usize, idle: Duration) -> auto::Builder<TokioExecutor> {
        let mut server = auto::Builder::new(TokioExecutor::new());
        server
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(idle)
            .max_buf_size(http1_buf_size(max_header_bytes))
            // A client that sent its request and shut its side down still
            // gets the response.
            .half_close(true)
            // hyper's queued writes start each response head on a write of
            // its own, where `TagAutoReplies` looks for hyper's replies.
            .writev(true);
        let h2_limit = max_header_bytes.saturating_mul(2);
        server
            .http2()
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_header_list_size(u32::try_from(h2_limit).unwrap_or(u32::MAX));
        server
    }
}

/// hyper's HTTP/1 read buffer, which bounds a request head: `max_header_bytes`.
pub fn http1_buf_size(max_header_bytes: usize) -> usize {
    max_header_bytes.max(MIN_HTTP1_BUF)
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host` (the proxy and
/// the app would otherwise disagree on where it goes); a server answers 400.
pub fn check_host<B>(request: &Request<B>) -> Result<(), ProxyError> {
    if request.version() != Version::HTTP_11 {
        return Ok(());
    }
    let mut hosts = request.headers().get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), None) => Ok(()),
        (None, _) => Err(ProxyError::BadRequest(
            "HTTP/1.1 request without Host".into(),
        )),
        (Some(_), Some(_)) => Err(ProxyError::BadRequest(
            "HTTP/1.1 request with more than one Host".into(),
        )),
    }
}

/// What one direction does with each request of a connection, in the order
/// [`serve`] asks; everything else is the same both ways.
pub trait RequestPath: Send + Sync + 'static {
    /// The `direction` of the request metrics and spans.
    const DIRECTION: Direction;

    /// First, before the span starts: undoes what the previous hop did to
    /// the request.
    fn received(&self, request: &mut Request<Incoming>);

    /// Whether the client may send the request. `Err` is answered (403) but
    /// is not the server's failure, so the span records only the status.
    fn admit(
        &self,
        request: &mut Request<Incoming>,
        span: &mut RequestSpan,
    ) -> Result<(), ProxyError>;

    /// The address of the application that sent the connection's requests,
    /// which consistent hashing by `source-ip` reads; `None` where no
    /// balancing happens (inbound).
    /// (A reference: it rides in every request's future, where it costs a word.)
    fn source(&self) -> Option<&IpAddr>;

    /// Where the request goes.
    fn upstream(
        &self,
        request: &Request<Incoming>,
    ) -> impl Future<Output = Result<Upstream, ProxyError>> + Send;
}

/// Serves HTTP on `io`, whose `protocol` detection found (HTTP/1 or HTTP/2),
/// until the client closes, or the drain ends it. What guards the connection
/// depends on the protocol: HTTP/1 gets hyper's own error replies tagged,
/// HTTP/2 a control-frame flood guard.
pub async fn serve<I, P>(
    io: I,
    protocol: Protocol,
    shared: Arc<HttpShared>,
    path: P,
    drain: drain::Watch,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: RequestPath,
{
    let head = Arc::new(HeadClock::default());
    if protocol == Protocol::Http2 {
        let io = FloodGuard::new(io);
        serve_guarded(io, None, head, shared, path, drain).await;
    } else {
        let http1 = Http1::default();
        let deadline = HeadDeadline::new(head.clone(), shared.request_head_timeout);
        let io = TagAutoReplies::new(io, Some(http1.replies.clone())).timing_heads(deadline);
        serve_guarded(io, Some(http1), head, shared, path, drain).await;
    }
}

async fn serve_guarded<I, P>(
    io: I,
    http1: Option<Http1>,
    head: Arc<HeadClock>,
    shared: Arc<HttpShared>,
    path: P,
    mut drain: drain::Watch,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: RequestPath,
{
    // HTTP/2: the first request must come within the head timeout (HTTP/1
    // heads are timed in the IO, by `HeadDeadline`).
    let first_request_late = {
        let (head, http2) = (head.clone(), http1.is_none());
        let deadline = head_timeout::deadline_in(shared.request_head_timeout);
        async move {
            if !http2 {
                return std::future::pending().await;
            }
            tokio::time::sleep_until(deadline).await;
            if head.heads() > 0 {
                std::future::pending::<()>().await;
            }
        }
    };
    let service = ProxyService(Arc::new(Connection {
        shared: shared.clone(),
        path,
        drain: drain.clone(),
        last_series: Mutex::new(None),
        http1,
        head,
    }));
    let conn = shared
        .server
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = first_request_late => {
            tracing::debug!("HTTP/2 connection without a request within the head timeout: closed");
            return;
        }
        () = drain.draining() => {
            // HTTP/2 GOAWAY, HTTP/1 close after the response in flight.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                () = drain.closed() => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

struct Connection<P> {
    shared: Arc<HttpShared>,
    path: P,
    drain: drain::Watch,
    /// The metrics series this connection's last response was recorded in.
    last_series: Mutex<Option<RequestSeries>>,
    /// `None` for HTTP/2.
    http1: Option<Http1>,
    /// Told of every request head received (and, in HTTP/1, of bodies).
    head: Arc<HeadClock>,
}

/// What an HTTP/1 connection's service shares with what hyper does around it.
#[derive(Default)]
struct Http1 {
    /// Tells hyper's own replies from the service's.
    replies: Arc<Replies>,
    /// Tells a broken request body from a failing upstream.
    client_body: Arc<ClientBodyFailure>,
}

struct ProxyService<P>(Arc<Connection<P>>);

impl<P> Clone for ProxyService<P> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<P: RequestPath> hyper::service::Service<Request<Incoming>> for ProxyService<P> {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.0.head.received();
        if let Some(http1) = &self.0.http1 {
            http1.replies.called();
        }
        let conn = self.0.clone();
        Box::pin(async move { Ok(conn.proxy(request).await) })
    }
}

impl<P: RequestPath> Connection<P> {
    /// Records the response head into `span` and lets the response body carry
    /// it, so the span ends when the body has been sent (or the client left).
    fn end_span_with_body(&self, span: RequestSpan, response: Response<Body>) -> Response<Body> {
        if !span.is_recording() {
            // Off or not sampled: nothing to record, no body wrapper to allocate.
            return response;
        }
        let (head, body) = response.into_parts();
        span.record_response(&head);
        let in_flight = SpanInFlight {
            span,
            _drain: self.drain.clone(),
        };
        Response::from_parts(head, body::boxed(GuardedBody::new(body, in_flight)))
    }

    async fn proxy(&self, mut request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let grpc = is_grpc(&request);
        let connect = request.method() == Method::CONNECT;
        // As the client sent it, before `received` undoes the previous hop.
        let head = self.check_head(&request);
        let upgrade = hop_by_hop::wants_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        hop_by_hop::strip(request.headers_mut(), upgrade);
        self.path.received(&mut request);
        let (mut request, mut span) = self.start_span(request);
        if let Err(error) = head.and_then(|()| self.path.admit(&mut request, &mut span)) {
            // A malformed head (400, 431) or a refused client (403): not the
            // server's failure, so the span only records the status (HTTP
            // conventions for server spans).
            let response = error.into_response(grpc);
            self.record(&UNKNOWN, &response, started);
            return self.end_span_with_body(span, response);
        }

        let upstream = match self.path.upstream(&request).await {
            Ok(upstream) => upstream,
            Err(error) => {
                span.record_error(&error);
                let response = error.into_response(grpc);
                self.record(&UNKNOWN, &response, started);
                return self.end_span_with_body(span, response);
            }
        };
        let mut response = match self.send(&upstream, request, grpc, &mut span).await {
            Ok(response) => response,
            // The client's fault again: the span records only the status.
            Err(error) => {
                let response = error.into_response(grpc);
                self.record(upstream.name(), &response, started);
                return self.end_span_with_body(span, response);
            }
        };

        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let Some(http1) = &self.http1
            && (switched || (connect && response.status().is_success()))
        {
            http1.replies.switching();
            self.head.switching();
        }
        match client_upgrade {
            Some(client) if switched => {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(splice(
                    client,
                    upstream_upgrade,
                    self.shared.idle_timeout,
                    self.drain.clone(),
                ));
            }
            _ => {}
        }
        hop_by_hop::strip(response.headers_mut(), switched);
        self.record(upstream.name(), &response, started);
        self.end_span_with_body(span, response)
    }

    /// Sends the request upstream for its response. On HTTP/1 the client's
    /// body is watched: when it breaks first (a chunk size that does not
    /// parse, the client gone), the upstream's failure that follows is not
    /// its own, so the attempt is dropped (cancelled, as far as failure
    /// accrual goes) and the client's fault answered. An HTTP/2 body that
    /// fails resets its stream instead: no response is read.
    async fn send(
        &self,
        upstream: &Upstream,
        request: Request<Incoming>,
        grpc: bool,
        span: &mut RequestSpan,
    ) -> Result<Response<Body>, ProxyError> {
        let client = self.shared.client.as_ref();
        let source = self.path.source();
        let watched = self.http1.as_ref().map(|h| &h.client_body);
        let Some(failure) = watched.filter(|_| !request.body().is_end_stream()) else {
            return Ok(upstream
                .send(client, request.map(body::boxed), source, grpc, span)
                .await);
        };
        let request =
            request.map(|b| body::boxed(ClientBody::new(b, failure.clone(), self.head.clone())));
        tokio::select! {
            biased;
            reason = failure.failed() => {
                Err(ProxyError::BadRequest(format!("request body: {reason}")))
            }
            response = upstream.send(client, request, source, grpc, span) => Ok(response),
        }
    }

    /// What the proxy requires of a head before it goes anywhere: one `Host`
    /// in HTTP/1.1, HTTP/2 within the size limit (HTTP/1 heads over it never
    /// reach the service).
    fn check_head(&self, request: &Request<Incoming>) -> Result<(), ProxyError> {
        check_host(request)?;
        if request.version() == Version::HTTP_2
            && h2_header_list_size(request) > self.shared.max_header_bytes
        {
            return Err(ProxyError::HeadersTooLarge);
        }
        Ok(())
    }

    /// The request's span (server span inbound, client span outbound), and
    /// the request carrying it to the next hop in `traceparent`.
    fn start_span<B>(&self, request: Request<B>) -> (Request<B>, RequestSpan) {
        let telemetry = &self.shared.telemetry;
        if !telemetry.is_enabled() {
            return (request, RequestSpan::default());
        }
        let (mut head, body) = request.into_parts();
        let span = telemetry.start_request(P::DIRECTION, &mut head);
        (Request::from_parts(head, body), span)
    }

    fn record(&self, target: &Arc<str>, response: &Response<Body>, started: Instant) {
        let route = response
            .extensions()
            .get::<RouteLabel>()
            .map_or_else(|| NO_ROUTE.clone(), |r| r.0.clone());
        // Uncontended for HTTP/1 (one request at a time); concurrent HTTP/2
        // requests that find it busy record without the cache.
        let mut uncached = None;
        let mut cached = self.last_series.try_lock();
        let last = match cached.as_deref_mut() {
            Ok(last) => last,
            Err(_) => &mut uncached,
        };
        self.shared.metrics.record_request(
            last,
            P::DIRECTION,
            target,
            &route,
            response.status().as_u16(),
            started,
        );
    }
}

/// The `target` label of a request whose target could not be found.
static UNKNOWN: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("unknown"));
/// The `route` label when the upstream named none (passthrough).
static NO_ROUTE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

/// A recorded span riding on its response body, holding the drain open: the
/// drain, and so the span flush at exit, waits for the body to end even where
/// the body outlives its connection's task (an HTTP/2 stream's body is sent
/// by a task of its own, which can still hold it after the connection ended).
struct SpanInFlight {
    span: RequestSpan,
    _drain: drain::Watch,
}

impl BodyGuard for SpanInFlight {
    fn on_frame(&self, frame: &Frame<Bytes>) {
        self.span.on_frame(frame);
    }

    fn on_error(&self, error: &BoxError) {
        self.span.on_error(error);
    }
}

/// The size HTTP/2 gives a request's header list (RFC 9113 §6.5.2: name,
/// value and 32 per field, pseudo-header fields included), as h2 measures it
/// against its own limit.
fn h2_header_list_size<B>(request: &Request<B>) -> usize {
    const PER_FIELD: usize = 32;
    let uri = request.uri();
    let pseudo = [
        ":method".len() + request.method().as_str().len(),
        ":scheme".len() + uri.scheme_str().map_or(0, str::len),
        ":authority".len() + uri.authority().map_or(0, |a| a.as_str().len()),
        ":path".len() + uri.path_and_query().map_or(0, |p| p.as_str().len()),
    ];
    let fields = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + PER_FIELD);
    pseudo
        .iter()
        .map(|size| size + PER_FIELD)
        .chain(fields)
        .sum()
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// After both sides agreed to switch protocols, copies bytes between them.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
    drain: drain::Watch,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = crate::opaque::proxy_until_closed(client, upstream, b"", idle, drain).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}
