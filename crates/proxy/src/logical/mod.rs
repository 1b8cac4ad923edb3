//! The logical side of the proxy: everything between "an HTTP request for a
//! known target" and "an attempt sent to one endpoint". A request is routed
//! (`routes`), a backend drawn from the rule's weighted split (`split`), admitted by the
//! backend's concurrency limit (`concurrency`), sent to an endpoint picked by
//! the balancer (`balance`; consistent hashing by `maglev` over a
//! `request_key`), retried within the route's policy and the
//! backend's budget (`retry`, `backend`), all under the route's timeouts.
//! Outcomes feed failure accrual (`accrual`), which ejects failing endpoints
//! (consecutive failures, and success-rate outliers: `outlier`);
//! a gRPC response's outcome is its `grpc-status` (`grpc_status`, `outcome`).
//! A rule's filters (`routes`) change the request and response on the way,
//! and may copy the request to mirrors (`mirror`).
//!
//! The target's model is the Destination API's `Target`; it is compiled once
//! per update, never per request.

mod accrual;
mod backend;
mod balance;
mod concurrency;
mod fault;
mod grpc_status;
mod grpc_timeout;
mod maglev;
mod metrics;
mod mirror;
mod outcome;
mod outlier;
mod permit_body;
mod replay;
mod request_key;
mod retry;
mod routes;
mod split;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{Request, Response};
use plexus_api::v1::Target;
use tokio::sync::watch;
use tokio::time::Instant;

use self::backend::Backend;
use self::fault::Fault;
use self::metrics::FaultKind;
use self::outcome::InFlight;
use self::replay::ReplayBody;
use self::retry::AttemptFailure;
use self::routes::{Filters, RouteTable, Rule};
use crate::body::{self, Body};
use crate::connect::{AppProtocol, EndpointClient, EndpointTarget};
use crate::error::ProxyError;
use crate::telemetry::{AttemptSpan, RequestSpan};

pub use self::metrics::LogicalMetrics;

/// The name of the route that served a response ("namespace/name", or
/// "default" when no route matched); put into the response's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLabel(pub Arc<str>);

/// The logical service of one target. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Logical {
    inner: Arc<Inner>,
}

struct Inner {
    target: watch::Receiver<Arc<Target>>,
    compiled: RwLock<Arc<Compiled>>,
    /// One compilation at a time; requests meanwhile use the previous one.
    compiling: Mutex<()>,
    client: Arc<dyn EndpointClient>,
    metrics: LogicalMetrics,
}

/// A target compiled for serving: routes and live backends.
struct Compiled {
    source: Arc<Target>,
    routes: RouteTable,
    backends: HashMap<String, Arc<Backend>>,
}

/// What compiling `target` would skip or replace by a default (a route rule
/// that does not compile, an unknown load balancer), each naming its field
/// (`routes.http[0].rules[1]…`, `backends.backends["web"].resilience…`). A
/// running `Logical` logs these and serves on; a static file is refused.
pub fn check(target: &Target) -> Vec<String> {
    let mut problems = target
        .routes
        .as_ref()
        .map(RouteTable::check)
        .unwrap_or_default();
    for (name, backend) in target.backends.iter().flat_map(|t| &t.backends) {
        if let Err(problem) = balance::Strategy::parse(backend.resilience.as_ref()) {
            problems.push(format!("backends.backends[{name:?}].resilience.{problem}"));
        }
        let success_rate = backend
            .resilience
            .as_ref()
            .and_then(|r| r.failure_accrual.as_ref()?.success_rate.as_ref());
        for problem in success_rate.iter().flat_map(|s| outlier::check(s)) {
            problems.push(format!(
                "backends.backends[{name:?}].resilience.failure_accrual.success_rate.{problem}"
            ));
        }
    }
    problems
}

impl Logical {
    pub fn new(
        target: watch::Receiver<Arc<Target>>,
        client: Arc<dyn EndpointClient>,
        metrics: LogicalMetrics,
    ) -> Logical {
        let source = target.borrow().clone();
        let compiled = Compiled::new(source, None, &client, &metrics);
        Logical {
            inner: Arc::new(Inner {
                target,
                compiled: RwLock::new(Arc::new(compiled)),
                compiling: Mutex::new(()),
                client,
                metrics,
            }),
        }
    }

    /// Serves one request. Never fails: the proxy's own errors become
    /// responses (gRPC-aware) carrying `plexus-error`.
    pub async fn handle(&self, request: Request<Body>) -> Response<Body> {
        self.handle_traced(request, None, &mut RequestSpan::default())
            .await
    }

    /// As [`Logical::handle`], for a request from the application at
    /// `source` (what consistent hashing by `source-ip` reads), recording into
    /// the request's `span`: the route, the backend, the proxy's own error,
    /// and (on routes that retry) one child span per attempt.
    pub async fn handle_traced(
        &self,
        request: Request<Body>,
        source: Option<&IpAddr>,
        span: &mut RequestSpan,
    ) -> Response<Body> {
        let grpc = routes::is_grpc(request.headers());
        let compiled = self.inner.current();
        let rule = compiled.routes.route(&request).clone();
        span.set_route(&rule.label.0);
        let served = match &rule.filters {
            None => serve(&compiled, &rule, request, source, grpc, span).await,
            Some(filters) => {
                // Boxed: its future holds `serve`'s and more, and would grow every
                // request's future; a filtered request pays the allocation instead.
                let filtered =
                    serve_filtered(&compiled, &rule, filters, request, source, grpc, span);
                Box::pin(filtered).await
            }
        };
        let mut response = match served {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(route = %rule.label.0, %error, "request failed in the proxy");
                span.record_error(&error);
                error.into_response(grpc)
            }
        };
        response.extensions_mut().insert(rule.label.clone());
        response
    }
}

impl Inner {
    /// The compiled form of the latest target, recompiled when it changed.
    fn current(&self) -> Arc<Compiled> {
        let latest = self.target.borrow().clone();
        let compiled = self.read_compiled();
        if Arc::ptr_eq(&compiled.source, &latest) {
            return compiled;
        }
        let _one_at_a_time = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        let compiled = self.read_compiled();
        if Arc::ptr_eq(&compiled.source, &latest) {
            return compiled;
        }
        let next = Arc::new(Compiled::new(
            latest,
            Some(&compiled),
            &self.client,
            &self.metrics,
        ));
        *self.compiled.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        next
    }

    fn read_compiled(&self) -> Arc<Compiled> {
        self.compiled
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Compiled {
    /// Backends whose resilience settings did not change are kept (budget,
    /// limit and endpoints); others are rebuilt around the same endpoints.
    fn new(
        source: Arc<Target>,
        previous: Option<&Compiled>,
        client: &Arc<dyn EndpointClient>,
        metrics: &LogicalMetrics,
    ) -> Compiled {
        let mut backends = HashMap::new();
        let protocol = AppProtocol::of(&source);
        if let Some(table) = &source.backends {
            for (name, proto) in &table.backends {
                let known = previous.and_then(|p| p.backends.get(name));
                let backend = match known {
                    Some(known) if known.same_resilience(proto) => {
                        known.update_endpoints(proto, protocol, client);
                        known.clone()
                    }
                    _ => Arc::new(Backend::new(
                        &source.name,
                        name,
                        proto,
                        known.map(|b| &**b),
                        protocol,
                        client,
                        metrics,
                    )),
                };
                backends.insert(name.clone(), backend);
            }
        }
        for (name, gone) in previous.iter().flat_map(|p| &p.backends) {
            if !backends.contains_key(name) {
                gone.retire();
            }
        }
        let table = source.routes.clone().unwrap_or_default();
        let default_backend = if table.default_backend.is_empty() {
            source.name.as_str()
        } else {
            table.default_backend.as_str()
        };
        let routes = RouteTable::compile(&table, default_backend);
        Compiled {
            source,
            routes,
            backends,
        }
    }
}

/// Routes `request` to a backend and sends it there, within the rule's
/// timeouts. `grpc`: the request is a gRPC call. With the rule's filters, a
/// request the rule's fault lets through is copied to the mirrors, then the
/// backend's own filters apply, and the response gets the rule's response
/// headers, then the backend's.
async fn serve(
    compiled: &Compiled,
    rule: &Rule,
    mut request: Request<Body>,
    source: Option<&IpAddr>,
    grpc: bool,
    span: &mut RequestSpan,
) -> Result<Response<Body>, ProxyError> {
    let picked = rule
        .split
        .pick()
        .ok_or_else(|| ProxyError::NoEndpoints(rule.label.0.to_string()))?;
    span.set_backend(&picked.name);
    if let Some(why) = &picked.unresolved {
        return Err(ProxyError::UnresolvedBackend {
            backend: picked.name.to_string(),
            why: why.to_string(),
        });
    }
    let backend = compiled
        .backends
        .get(&*picked.name)
        .ok_or_else(|| ProxyError::NoEndpoints(picked.name.to_string()))?;
    if let Some(fault) = &rule.fault {
        inject(fault, backend, span).await?;
    }
    let filters = rule.filters.as_deref();
    if let Some(filters) = filters.filter(|f| !f.mirrors.is_empty()) {
        let (backends, mirrors, timeout) =
            (&compiled.backends, &filters.mirrors, rule.request_timeout);
        // Boxed: only mirroring requests carry its future.
        let copied = Box::pin(mirror::send_copies(
            backends, mirrors, request, source, timeout,
        ));
        request = copied.await?;
    }
    let backend_filters = filters.and(picked.filters.as_deref());
    if let Some(own) = backend_filters {
        own.request_headers.apply(request.headers_mut());
    }

    // The caller's gRPC deadline bounds the request like the route's timeout.
    let caller_timeout = request
        .headers()
        .get(grpc_timeout::GRPC_TIMEOUT)
        .and_then(grpc_timeout::parse);
    let timeout = match (rule.request_timeout, caller_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // A timeout past what the clock holds (u64::MAX ms from the controller) is none.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let hash = backend.hash(&request, source);

    let admitted = async {
        let permit = backend.admit().await?;
        let sent = send_with_retries(backend, rule, request, hash, deadline, grpc, span);
        let response = sent.await?;
        Ok(match permit {
            // The slot is held until the response body has been read.
            Some(permit) => response.map(|b| body::boxed(body::GuardedBody::new(b, permit))),
            None => response,
        })
    };
    let mut response = match (deadline, timeout) {
        (Some(deadline), Some(timeout)) => tokio::time::timeout_at(deadline, admitted)
            .await
            .unwrap_or_else(|_| Err(ProxyError::Timeout(millis(timeout)))),
        _ => admitted.await,
    }?;
    if let Some(filters) = filters {
        filters.response_headers.apply(response.headers_mut());
    }
    if let Some(own) = backend_filters {
        own.response_headers.apply(response.headers_mut());
    }
    Ok(response)
}

/// The rule's faults for this request, each drawn on its own: a delay is
/// waited out before the request goes on (outside the route's timeouts, as a
/// slow network would be), an abort answers it with the fault's status.
async fn inject(fault: &Fault, backend: &Backend, span: &RequestSpan) -> Result<(), ProxyError> {
    if let Some(delay) = fault.delay() {
        backend.fault_injected(FaultKind::delay);
        span.set_fault("plexus.fault.delayed");
        tokio::time::sleep(delay).await;
    }
    if let Some(abort) = fault.abort() {
        backend.fault_injected(FaultKind::abort);
        span.set_fault("plexus.fault.aborted");
        return Err(ProxyError::FaultInjected {
            status: abort.status,
            grpc_code: abort.grpc_code,
        });
    }
    Ok(())
}

/// [`serve`] through the rule's filters: a redirect is answered here; else
/// the request's headers, host and path are changed and the request is sent
/// (and mirrored).
async fn serve_filtered(
    compiled: &Compiled,
    rule: &Rule,
    filters: &Filters,
    mut request: Request<Body>,
    source: Option<&IpAddr>,
    grpc: bool,
    span: &mut RequestSpan,
) -> Result<Response<Body>, ProxyError> {
    if let Some(redirect) = &filters.redirect {
        return Ok(redirect.respond(&request));
    }
    filters.request_headers.apply(request.headers_mut());
    if let Some(rewrite) = &filters.rewrite {
        rewrite.apply(&mut request);
    }
    serve(compiled, rule, request, source, grpc, span).await
}

/// Sends attempts until one is final, the policy's attempts are used up, or
/// the backend's retry budget refuses a retry. On a route that retries, every
/// attempt is a child span of `span` (the first included: whether a retry
/// follows is only known afterwards). `hash`: the request's consistent-hash
/// key, the same for every attempt.
async fn send_with_retries(
    backend: &Arc<Backend>,
    rule: &Rule,
    request: Request<Body>,
    hash: Option<NonZeroU64>,
    deadline: Option<Instant>,
    grpc: bool,
    span: &mut RequestSpan,
) -> Result<Response<Body>, ProxyError> {
    backend.deposit();
    let policy = &rule.retry;
    let (parts, body) = request.into_parts();
    let replay = if policy.retries() {
        ReplayBody::try_new(body)
    } else {
        Err(body)
    };
    let replay = match replay {
        Ok(replay) => replay,
        // Known to exceed the replay limit: exactly one attempt, streamed, no copy.
        Err(body) => {
            let request = Request::from_parts(parts, body);
            let trace = Some(AttemptTrace::Request(&*span));
            let outcome = attempt(backend, rule, request, hash, deadline, grpc, trace).await;
            return final_result(outcome, backend);
        }
    };

    let mut backoff = policy.backoff();
    let mut attempts = 1;
    // Why the attempt about to be sent is a retry; described only when traced.
    let mut retry_reason: Option<String> = None;
    loop {
        let request = rebuild(&parts, body::boxed(replay.clone()));
        let trace = span.is_recording().then_some(AttemptTrace::Own {
            span: &mut *span,
            n: attempts,
            reason: retry_reason.as_deref(),
        });
        let outcome = attempt(backend, rule, request, hash, deadline, grpc, trace).await;
        let reason = match &outcome {
            Ok(response) => policy.retryable_response(response),
            Err(failure) => policy.retryable_failure(failure, &parts.method),
        };
        let Some(reason) = reason else {
            return final_result(outcome, backend);
        };
        // A body still arriving counts as replayable: the retry replays the copy,
        // then continues with the client's remaining frames.
        if attempts >= policy.attempts() || !replay.replayable() {
            return final_result(outcome, backend);
        }
        if !backend.withdraw_retry() {
            return match outcome {
                Ok(response) => Ok(response),
                Err(_) => Err(ProxyError::BudgetExhausted(backend.name.to_string())),
            };
        }
        backend.retried(reason);
        if span.is_recording() {
            retry_reason = Some(retry::describe(reason, &outcome));
        }
        drop(outcome);
        retry::wait(&mut backoff).await;
        attempts += 1;
    }
}

/// Where an attempt goes in the request's trace.
enum AttemptTrace<'a> {
    /// A span of its own, child of the request's (a route that retries).
    Own {
        span: &'a mut RequestSpan,
        /// 1 for the first try.
        n: u32,
        /// Why this attempt is a retry.
        reason: Option<&'a str>,
    },
    /// The request's only attempt: its span records the endpoint.
    Request(&'a RequestSpan),
}

impl AttemptTrace<'_> {
    /// The attempt's span, once its endpoint is known.
    fn start(
        self,
        endpoint: &EndpointTarget,
        headers: &mut http::HeaderMap,
    ) -> Option<AttemptSpan> {
        match self {
            AttemptTrace::Own { span, n, reason } => {
                Some(span.attempt(n, reason, endpoint, headers))
            }
            AttemptTrace::Request(span) => {
                span.set_endpoint(endpoint);
                None
            }
        }
    }
}

/// One attempt on one endpoint, within the per-try timeout; its outcome feeds
/// the endpoint's failure accrual. Traced, it is a span of its own, which the
/// endpoint sees as the parent of its work.
async fn attempt(
    backend: &Arc<Backend>,
    rule: &Rule,
    mut request: Request<Body>,
    hash: Option<NonZeroU64>,
    deadline: Option<Instant>,
    grpc: bool,
    trace: Option<AttemptTrace<'_>>,
) -> Result<Response<Body>, AttemptFailure> {
    let now = Instant::now();
    if request.headers().contains_key(grpc_timeout::GRPC_TIMEOUT) {
        // Tell the callee what is left of the caller's deadline (and of this try).
        let left = deadline.map(|d| d.saturating_duration_since(now));
        let left = match (left, rule.try_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(left) = left {
            request
                .headers_mut()
                .insert(grpc_timeout::GRPC_TIMEOUT, grpc_timeout::encode(left));
        }
    }
    let picked = backend
        .pick(hash)
        .map_err(|_| AttemptFailure::NoEndpoints)?;
    let attempt_span = trace.and_then(|t| t.start(&picked.endpoint.target, request.headers_mut()));
    let in_flight = InFlight::new(backend, picked);
    let sent = in_flight.picked().endpoint.send(request);
    let outcome = match rule.try_timeout {
        Some(limit) => match tokio::time::timeout(limit, sent).await {
            Ok(outcome) => outcome.map_err(AttemptFailure::Send),
            Err(_) => Err(AttemptFailure::TryTimeout(millis(limit))),
        },
        None => sent.await.map_err(AttemptFailure::Send),
    };
    let outcome = in_flight.finish(outcome, grpc);
    match attempt_span {
        Some(span) => record_attempt(&span, outcome, backend),
        None => outcome,
    }
}

/// Records how an attempt ended into its span.
fn record_attempt(
    span: &AttemptSpan,
    outcome: Result<Response<Body>, AttemptFailure>,
    backend: &Backend,
) -> Result<Response<Body>, AttemptFailure> {
    match outcome {
        Ok(response) => {
            let (head, body) = response.into_parts();
            span.record_response(&head);
            Ok(Response::from_parts(head, body))
        }
        Err(failure) => {
            span.record_error(&failure.clone().into_proxy_error(&backend.name));
            Err(failure)
        }
    }
}

/// The response, or the proxy error an attempt's failure becomes.
fn final_result(
    outcome: Result<Response<Body>, AttemptFailure>,
    backend: &Backend,
) -> Result<Response<Body>, ProxyError> {
    outcome.map_err(|failure| failure.into_proxy_error(&backend.name))
}

/// A copy of the original request for another attempt.
fn rebuild(parts: &http::request::Parts, body: Body) -> Request<Body> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use plexus_api::v1 as proto;

    use super::*;
    use crate::connect::{EndpointTarget, ResponseFuture, SendError};
    use crate::logical::metrics::{BackendLabels, RetryReason};

    /// An in-memory endpoint client answering every request with `answer`.
    struct Scripted {
        calls: AtomicUsize,
        answer: fn(usize) -> Option<Result<Response<Body>, SendError>>,
    }

    impl EndpointClient for Scripted {
        fn send(&self, _: &EndpointTarget, _: Request<Body>) -> ResponseFuture {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            match (self.answer)(call) {
                Some(answer) => Box::pin(async move { answer }),
                None => Box::pin(std::future::pending()),
            }
        }
    }

    fn status(code: u16) -> Option<Result<Response<Body>, SendError>> {
        let mut response = Response::new(body::empty());
        *response.status_mut() = http::StatusCode::from_u16(code).unwrap();
        Some(Ok(response))
    }

    fn logical(
        answer: fn(usize) -> Option<Result<Response<Body>, SendError>>,
        rule: proto::HttpRouteRule,
        budget: Option<proto::RetryBudget>,
    ) -> (Logical, Arc<Scripted>, LogicalMetrics) {
        let client = Arc::new(Scripted {
            calls: AtomicUsize::new(0),
            answer,
        });
        let backend = proto::Backend {
            name: "b".into(),
            endpoints: vec![proto::Endpoint {
                address: "127.0.0.1:1".into(),
                ready: true,
                ..Default::default()
            }],
            resilience: Some(proto::Resilience {
                retry_budget: budget,
                ..Default::default()
            }),
        };
        let target = proto::Target {
            name: "t".into(),
            protocol: None,
            routes: Some(proto::RouteTable {
                http: vec![proto::HttpRoute {
                    name: "ns/r".into(),
                    rules: vec![proto::HttpRouteRule {
                        backends: vec![proto::WeightedBackend {
                            backend: "b".into(),
                            ..Default::default()
                        }],
                        ..rule
                    }],
                }],
                grpc: vec![],
                default_backend: String::new(),
            }),
            backends: Some(proto::BackendTable {
                backends: [("b".to_owned(), backend)].into_iter().collect(),
            }),
        };
        let (_tx, rx) = watch::channel(Arc::new(target));
        let metrics = LogicalMetrics::default();
        let l = Logical::new(rx, client.clone(), metrics.clone());
        (l, client, metrics)
    }

    fn retry(attempts: u32) -> Option<proto::RetryPolicy> {
        Some(proto::RetryPolicy {
            attempts,
            codes: vec![503],
            ..Default::default()
        })
    }

    const NO_BUDGET: Option<proto::RetryBudget> = Some(proto::RetryBudget {
        ratio: Some(0.0),
        min_per_second: Some(0),
        ttl_ms: None,
    });

    fn get(method: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri("/")
            .body(body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn the_request_future_is_send_and_small() {
        fn send<T: Send>(_: &T) {}
        let (l, _, _) = logical(|_| status(200), proto::HttpRouteRule::default(), None);
        let future = l.handle(get("GET"));
        send(&future);
        // Lives once per in-flight request: keep an eye on its size.
        assert!(
            std::mem::size_of_val(&future) < 4096,
            "{}",
            std::mem::size_of_val(&future)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_a_final_response_and_labels_the_route() {
        let rule = proto::HttpRouteRule {
            retry: retry(4),
            ..Default::default()
        };
        let (l, client, metrics) =
            logical(|call| status(if call < 2 { 503 } else { 200 }), rule, None);
        let response = l.handle(get("GET")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(client.calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            metrics.retries_total(&BackendLabels::new("t", "b"), RetryReason::status),
            2
        );
        metrics.forget_target("t");
        assert_eq!(
            metrics.retries_total(&BackendLabels::new("t", "b"), RetryReason::status),
            0,
            "a forgotten target's series start again"
        );
        let label = response.extensions().get::<RouteLabel>().unwrap();
        assert_eq!(label.0.as_ref(), "ns/r");
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_budget_returns_the_last_response() {
        let rule = proto::HttpRouteRule {
            retry: retry(3),
            ..Default::default()
        };
        let (l, client, _) = logical(|_| status(503), rule, NO_BUDGET);
        let response = l.handle(get("GET")).await;
        assert_eq!(response.status(), 503);
        assert!(
            response.headers().get("plexus-error").is_none(),
            "the upstream's answer"
        );
        assert_eq!(client.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_budget_without_a_response_is_budget_exhausted() {
        let rule = proto::HttpRouteRule {
            retry: retry(3),
            ..Default::default()
        };
        let (l, _, _) = logical(
            |_| Some(Err(SendError::Connect("refused".into()))),
            rule,
            NO_BUDGET,
        );
        let response = l.handle(get("GET")).await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["plexus-error"], "budget-exhausted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_post_is_not_retried_a_refused_one_is() {
        let rule = proto::HttpRouteRule {
            retry: retry(3),
            ..Default::default()
        };
        let (l, client, _) = logical(
            |_| Some(Err(SendError::Request("reset".into()))),
            rule.clone(),
            None,
        );
        let response = l.handle(get("POST")).await;
        assert_eq!(response.status(), 502);
        assert_eq!(response.headers()["plexus-error"], "upstream-failed");
        assert_eq!(client.calls.load(Ordering::SeqCst), 1);

        let (l, client, _) = logical(
            |_| Some(Err(SendError::Connect("refused".into()))),
            rule,
            None,
        );
        let response = l.handle(get("POST")).await;
        assert_eq!(response.headers()["plexus-error"], "connect-failed");
        assert_eq!(client.calls.load(Ordering::SeqCst), 3);
    }

    /// Answers 200 at once, but never to the mirror's endpoint (port 2),
    /// whose copies it counts.
    #[derive(Default)]
    struct SilentMirror {
        copies: AtomicUsize,
    }

    impl EndpointClient for SilentMirror {
        fn send(&self, target: &EndpointTarget, _: Request<Body>) -> ResponseFuture {
            if target.addr.port() == 2 {
                self.copies.fetch_add(1, Ordering::SeqCst);
                return Box::pin(std::future::pending());
            }
            Box::pin(async { status(200).expect("an answer") })
        }
    }

    /// A `Logical` whose rule sends to "b" (port 1) and mirrors every request
    /// to "m" (port 2), over a [`SilentMirror`].
    fn mirroring(timeouts: Option<proto::Timeouts>) -> (Logical, Arc<SilentMirror>) {
        let one_endpoint = |port: u16| proto::Backend {
            endpoints: vec![proto::Endpoint {
                address: format!("127.0.0.1:{port}"),
                ready: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let rule = proto::HttpRouteRule {
            backends: vec![proto::WeightedBackend {
                backend: "b".into(),
                ..Default::default()
            }],
            filters: Some(proto::HttpFilters {
                request_mirrors: vec![proto::RequestMirror {
                    backend: "m".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            timeouts,
            ..Default::default()
        };
        let target = proto::Target {
            name: "t".into(),
            routes: Some(proto::RouteTable {
                http: vec![proto::HttpRoute {
                    name: "ns/r".into(),
                    rules: vec![rule],
                }],
                ..Default::default()
            }),
            backends: Some(proto::BackendTable {
                backends: [
                    ("b".to_owned(), one_endpoint(1)),
                    ("m".to_owned(), one_endpoint(2)),
                ]
                .into_iter()
                .collect(),
            }),
            ..Default::default()
        };
        let client = Arc::new(SilentMirror::default());
        let (_tx, rx) = watch::channel(Arc::new(target));
        let l = Logical::new(rx, client.clone(), LogicalMetrics::default());
        (l, client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_mirror_holds_a_bounded_number_of_copies_until_they_time_out() {
        let (l, client) = mirroring(None);
        let copies = || client.copies.load(Ordering::SeqCst);
        // Lets the copies' tasks run (this runtime has one thread).
        let settle = || async {
            for _ in 0..1_000 {
                tokio::task::yield_now().await;
            }
        };
        for _ in 0..100 {
            assert_eq!(l.handle(get("GET")).await.status(), 200);
        }
        settle().await;
        assert_eq!(
            copies(),
            mirror::MAX_COPIES_IN_FLIGHT,
            "the rest were dropped"
        );
        tokio::time::advance(mirror::COPY_TIMEOUT).await;
        settle().await;
        assert_eq!(l.handle(get("GET")).await.status(), 200);
        settle().await;
        assert_eq!(
            copies(),
            mirror::MAX_COPIES_IN_FLIGHT + 1,
            "timed-out copies free their slots"
        );
    }

    /// A body of a known length whose bytes never come.
    struct StalledBody;

    impl http_body::Body for StalledBody {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            std::task::Poll::Pending
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(10)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_mirrored_body_that_never_comes_is_bounded_by_the_request_timeout() {
        let (l, client) = mirroring(Some(proto::Timeouts {
            request_ms: 1_000,
            backend_request_ms: 0,
        }));
        let request = Request::post("/").body(body::boxed(StalledBody)).unwrap();
        let started = Instant::now();
        let response = l.handle(request).await;
        assert_eq!(response.status(), 504);
        assert_eq!(started.elapsed(), Duration::from_millis(1_000));
        assert_eq!(client.copies.load(Ordering::SeqCst), 0, "nothing to copy");
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_timeout_covers_every_attempt() {
        let rule = proto::HttpRouteRule {
            retry: retry(3),
            timeouts: Some(proto::Timeouts {
                request_ms: 1_000,
                backend_request_ms: 400,
            }),
            ..Default::default()
        };
        let (l, client, _) = logical(|_| None, rule, None);
        let started = Instant::now();
        let response = l.handle(get("GET")).await;
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()["plexus-error"], "timeout");
        assert_eq!(started.elapsed(), Duration::from_millis(1_000));
        // Tries at 0 and 400 ms timed out and were retried; the third was cut short.
        assert_eq!(client.calls.load(Ordering::SeqCst), 3);
    }
}
