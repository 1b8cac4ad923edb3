//! Serving HTTP on an accepted connection, the same in both directions:
//! hyper-util's server (HTTP/1 with keep-alive and upgrades, HTTP/2), hop-by-hop
//! headers stripped, each request proxied to its upstream, metered and traced.
//! What differs by direction (policy, where a request goes) is a [`RequestPath`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use plexus_core::Direction;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::body::{self, Body};
use crate::connect::EndpointClient;
use crate::drain;
use crate::error::ProxyError;
use crate::hop_by_hop;
use crate::logical::RouteLabel;
use crate::metrics::{ProxyMetrics, RequestSeries};
use crate::telemetry::{RequestSpan, SpanBody, Telemetry};
use crate::upstream::Upstream;

/// hyper refuses smaller HTTP/1 read buffers (it asserts).
const MIN_HTTP1_BUF: usize = 8 * 1024;

/// What every HTTP connection of a proxy shares.
pub struct HttpShared {
    pub server: auto::Builder<TokioExecutor>,
    pub client: Arc<dyn EndpointClient>,
    pub metrics: ProxyMetrics,
    pub idle_timeout: Duration,
    /// Spans of proxied requests; disabled, it costs a branch per request.
    pub telemetry: Telemetry,
}

impl HttpShared {
    /// hyper's server settings. Oversized heads are answered by hyper itself:
    /// HTTP/1 with `431`, HTTP/2 with `431` then a stream reset (h2's choice),
    /// both without `plexus-error` since no service sees the request.
    ///
    /// `idle`: an HTTP/1 connection waiting longer than this for a request
    /// head (an idle keep-alive connection included) is closed. hyper's own
    /// default (30 s) would close apps' pooled connections under them.
    pub fn server(max_header_bytes: usize, idle: Duration) -> auto::Builder<TokioExecutor> {
        let mut server = auto::Builder::new(TokioExecutor::new());
        server
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(idle)
            .max_buf_size(max_header_bytes.max(MIN_HTTP1_BUF));
        server
            .http2()
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
        server
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

    /// Where the request goes.
    fn upstream(
        &self,
        request: &Request<Incoming>,
    ) -> impl Future<Output = Result<Upstream, ProxyError>> + Send;
}

/// Serves HTTP on `io` until the client closes, or the drain ends it.
pub async fn serve<I, P>(io: I, shared: Arc<HttpShared>, path: P, mut drain: drain::Watch)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: RequestPath,
{
    let service = ProxyService(Arc::new(Connection {
        shared: shared.clone(),
        path,
        drain: drain.clone(),
        last_series: Mutex::new(None),
    }));
    let conn = shared
        .server
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
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
        let conn = self.0.clone();
        Box::pin(async move { Ok(conn.proxy(request).await) })
    }
}

impl<P: RequestPath> Connection<P> {
    async fn proxy(&self, mut request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let grpc = is_grpc(&request);
        let upgrade = hop_by_hop::wants_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        hop_by_hop::strip(request.headers_mut(), upgrade);
        self.path.received(&mut request);
        let (mut request, mut span) = self.start_span(request);
        if let Err(error) = self.path.admit(&mut request, &mut span) {
            // A refused client is a 403: not the server's failure, so the span
            // only records the status (HTTP conventions for server spans).
            let response = error.into_response(grpc);
            self.record(&UNKNOWN, &response, started);
            return end_span_with_body(span, response);
        }

        let upstream = match self.path.upstream(&request).await {
            Ok(upstream) => upstream,
            Err(error) => {
                span.record_error(&error);
                let response = error.into_response(grpc);
                self.record(&UNKNOWN, &response, started);
                return end_span_with_body(span, response);
            }
        };
        let request = request.map(body::boxed);
        let mut response = upstream
            .send(self.shared.client.as_ref(), request, grpc, &mut span)
            .await;

        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
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
        end_span_with_body(span, response)
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

/// Records the response head into `span` and lets the response body carry
/// it, so the span ends when the body has been sent (or the client left).
fn end_span_with_body(span: RequestSpan, response: Response<Body>) -> Response<Body> {
    if !span.is_recording() {
        // Off or not sampled: nothing to record, no body wrapper to allocate.
        return response;
    }
    let (head, body) = response.into_parts();
    span.record_response(&head);
    Response::from_parts(head, body::boxed(SpanBody::new(body, span)))
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
