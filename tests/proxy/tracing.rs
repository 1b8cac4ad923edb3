//! Traces of real requests through in-process proxies, exported over
//! OTLP/gRPC into `plexusctl`'s receiver (which decodes them with the
//! official `opentelemetry-proto` types): the parent/child chain across two
//! meshed hops, the HTTP semantic conventions' attributes over an mTLS hop,
//! retries as attempt spans, traces started by the proxy that an
//! application's own spans join, and a dead collector that costs nothing.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use plexus_proxy::RunningProxy;
use plexus_proxy::body::{self, Body};
use plexus_tests::controller::{Authority, id};
use plexus_tests::http::*;
use plexus_tests::otlp;
use plexus_tests::proxy::*;
use plexus_tests::upstream::*;
use plexus_tests::wait::*;
use plexus_traces::{AssemblyConfig, Receiver, Span, SpanKind, StatusCode as SpanStatus, Trace};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// Generous: spans are exported at the proxies' exit, then assembled.
const TRACE_WAIT: Duration = Duration::from_secs(30);

async fn receiver() -> Receiver {
    otlp::receiver(AssemblyConfig {
        // A trace whose root is the test's own (unexported) caller is
        // judged finished only after this quiet period.
        quiet_period: Duration::from_secs(2),
        root_settle: Duration::from_millis(300),
        ..AssemblyConfig::default()
    })
    .await
}

async fn next_trace(receiver: &mut Receiver) -> Trace {
    otlp::next_trace(receiver, TRACE_WAIT).await
}

/// A proxy of workload `workload` that exports to `receiver`.
fn traced(receiver: &Receiver, workload: &str) -> TestProxy {
    traced_as(proxy(), receiver, workload)
}

/// `proxy` (a sidecar with an identity, say), exporting to `receiver` as `workload`.
fn traced_as(proxy: TestProxy, receiver: &Receiver, workload: &str) -> TestProxy {
    proxy
        .env("PLEXUS_OTLP_ENDPOINT", receiver.grpc_endpoint())
        .env("PLEXUS_WORKLOAD", workload)
        .env("PLEXUS_POD_NAMESPACE", "shop")
}

/// Drains the proxy, which exports its last spans before it reports drained.
async fn stop(proxy: RunningProxy) {
    bounded("proxy drains", proxy.shutdown()).await;
}

/// One target `alias` (`host:port`) whose every request takes the HTTP route
/// `route` to the backend `backend`; `retry` is the rule's retry policy in
/// the proto's YAML shape, or empty.
/// `rule`: more fields of the route's one rule (`retry: …`, `fault: …`).
fn routed(alias: &str, route: &str, endpoints: &[SocketAddr], meshed: bool, rule: &str) -> String {
    let backend = alias.split(':').next().unwrap_or(alias);
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{{ address: \"{e}\", ready: true, meshed: {meshed} }}"))
        .collect();
    let rule = if rule.is_empty() {
        String::new()
    } else {
        format!("\n                {rule}")
    };
    format!(
        r#"destinations:
  - aliases: ["{alias}"]
    target:
      name: "{backend}.shop.svc.cluster.local:80"
      routes:
        default_backend: {backend}
        http:
          - name: "{route}"
            rules:
              - backends: [{{ backend: {backend} }}]{rule}
      backends:
        backends:
          {backend}: {{ endpoints: [{endpoints}] }}
"#,
        endpoints = endpoints.join(", ")
    )
}

/// The one child of `parent`.
fn only_child<'a>(trace: &'a Trace, parent: &'a str) -> &'a Span {
    let children: Vec<_> = trace.children(parent).collect();
    assert_eq!(children.len(), 1, "children of {parent}: {trace:#?}");
    children[0]
}

/// `traceparent` → (trace id, parent span id, flags).
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "malformed traceparent {value:?}");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

/// The `traceparent` header values an application received, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn record(&self, headers: &HeaderMap) {
        let value = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        self.0.lock().expect("seen lock").push(value);
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().expect("seen lock").clone()
    }
}

fn response(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response
}

/// client → proxy A (outbound) → proxy B (inbound) → service A, which calls
/// service B the way apps must (through its proxy, passing `traceparent` on)
/// → proxy B (outbound) → proxy C (inbound) → service B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_meshed_hops_form_one_trace() {
    let mut receiver = receiver().await;

    // Service B: a 404, which the conventions call an error only client-side.
    let seen_by_b = Seen::default();
    let seen = seen_by_b.clone();
    let service_b = http_upstream(move |request: Request<Incoming>| {
        seen.record(request.headers());
        async { response(StatusCode::NOT_FOUND, "no such item") }
    })
    .await;
    let proxy_c = traced(&receiver, "service-b")
        .env("PLEXUS_INBOUND_APP_ADDR", service_b.addr)
        .start()
        .await;

    // Service A: calls B through its own proxy's outbound listener.
    let proxy_b_outbound = Arc::new(OnceLock::<SocketAddr>::new());
    let outbound = proxy_b_outbound.clone();
    let service_a = http_upstream(move |request: Request<Incoming>| {
        let outbound = outbound.get().copied();
        async move {
            let Some(outbound) = outbound else {
                return response(StatusCode::INTERNAL_SERVER_ERROR, "no proxy yet");
            };
            let mut call = Request::builder()
                .uri("/stock/42")
                .header("host", "service-b");
            if let Some(context) = request.headers().get("traceparent") {
                call = call.header("traceparent", context);
            }
            let call = call.body(body::empty()).expect("call to B");
            let answer = http1(outbound).await.send_request(call).await;
            match answer {
                Ok(answer) => {
                    let status = answer.status().as_u16();
                    let text = text(answer).await;
                    response(StatusCode::OK, format!("B said {status}: {text}"))
                }
                Err(e) => response(StatusCode::BAD_GATEWAY, e.to_string()),
            }
        }
    })
    .await;
    let stock = routed(
        "service-b:80",
        "shop/stock",
        &[proxy_c.inbound_addr],
        true,
        "",
    );
    let proxy_b = traced(&receiver, "service-a")
        .env("PLEXUS_INBOUND_APP_ADDR", service_a.addr)
        .static_config(stock)
        .start()
        .await;
    proxy_b_outbound
        .set(proxy_b.outbound_addr)
        .expect("set once");

    let checkout = routed(
        "service-a:80",
        "shop/checkout",
        &[proxy_b.inbound_addr],
        true,
        "",
    );
    let proxy_a = traced(&receiver, "frontend")
        .static_config(checkout)
        .start()
        .await;

    let mut client = http1(proxy_a.outbound_addr).await;
    let request = Request::builder()
        .uri("/checkout?item=42")
        .header("host", "service-a")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .body(body::empty())
        .expect("request");
    let answer = bounded("response", client.send_request(request))
        .await
        .expect("response");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(text(answer).await, "B said 404: no such item");
    drop(client);
    // Together: the trace has no root here (the caller's span is not
    // exported), so it is complete only once no span came for a while.
    futures_util::future::join_all([proxy_a, proxy_b, proxy_c].map(stop)).await;

    let trace = next_trace(&mut receiver).await;
    assert_eq!(trace.trace_id, TRACE);
    assert_eq!(trace.spans.len(), 4, "one span per proxy hop: {trace:#?}");
    assert_eq!(
        receiver.stats().spans_received,
        4,
        "every span went into this one trace"
    );

    let tops: Vec<_> = trace.tops().collect();
    assert_eq!(tops.len(), 1, "one chain: {trace:#?}");
    let a_out = tops[0];
    assert_eq!(a_out.parent_span_id.as_deref(), Some(CALLER_SPAN));
    let b_in = only_child(&trace, &a_out.span_id);
    let b_out = only_child(&trace, &b_in.span_id);
    let c_in = only_child(&trace, &b_out.span_id);

    let hops = [
        (
            a_out,
            "frontend",
            SpanKind::Client,
            "service-a",
            "/checkout",
            200,
        ),
        (
            b_in,
            "service-a",
            SpanKind::Server,
            "service-a",
            "/checkout",
            200,
        ),
        (
            b_out,
            "service-a",
            SpanKind::Client,
            "service-b",
            "/stock/42",
            404,
        ),
        (
            c_in,
            "service-b",
            SpanKind::Server,
            "service-b",
            "/stock/42",
            404,
        ),
    ];
    for (span, service, kind, host, path, status) in hops {
        let what = format!("{kind:?} span of {service}");
        assert_eq!(span.service, service, "{what}");
        assert_eq!(span.kind, kind, "{what}");
        assert_eq!(span.attr_str("http.request.method"), Some("GET"), "{what}");
        match kind {
            SpanKind::Server => {
                assert_eq!(span.attr_str("url.path"), Some(path), "{what}: no query")
            }
            _ => {
                let query = if path == "/checkout" { "?item=42" } else { "" };
                let url = format!("http://{host}{path}{query}");
                assert_eq!(span.attr_str("url.full"), Some(url.as_str()), "{what}");
            }
        }
        assert_eq!(span.attr_str("server.address"), Some(host), "{what}");
        assert_eq!(
            span.attr_i64("http.response.status_code"),
            Some(status),
            "{what}"
        );
    }
    assert_eq!(a_out.attr_str("plexus.route"), Some("shop/checkout"));
    assert_eq!(a_out.attr_str("plexus.backend"), Some("service-a"));
    assert_eq!(b_out.attr_str("plexus.route"), Some("shop/stock"));
    assert_eq!(b_out.attr_str("plexus.backend"), Some("service-b"));
    // 4xx: an error for the client that asked, not for the server that answered.
    assert_eq!(b_out.status.code, SpanStatus::Error);
    assert_eq!(c_in.status.code, SpanStatus::Unset);
    assert_eq!(b_in.status.code, SpanStatus::Unset);
    assert_eq!(a_out.status.code, SpanStatus::Unset);

    // Service B was told its caller is C's server span.
    let seen = seen_by_b.all();
    assert_eq!(seen.len(), 1);
    let (trace_id, parent, flags) = traceparent(&seen[0]);
    assert_eq!(
        (trace_id.as_str(), parent.as_str(), flags.as_str()),
        (TRACE, c_in.span_id.as_str(), "01")
    );
}

/// app → proxy (outbound, client span) → mTLS → proxy (inbound, server
/// span) → app, on a route that does not retry: both spans carry the HTTP
/// conventions' required attributes (and the recommended ones the proxy
/// knows), without the query in `url.path` or credentials in `url.full`, and
/// the client span names the identity the server proved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mtls_hop_follows_the_http_semantic_conventions() {
    let mut receiver = receiver().await;
    let app = echo_upstream().await;
    let ca = Authority::start(Duration::from_secs(3600)).await;
    let (frontend, web) = (id("shop", "frontend"), id("shop", "web"));
    let server = traced_as(ca.sidecar(&web), &receiver, "web")
        .env("PLEXUS_INBOUND_APP_ADDR", app.addr)
        .start()
        .await;
    let server_port = server.inbound_addr.port();
    let target = format!(
        r#"destinations:
  - aliases: ["web:80"]
    target:
      name: web.shop.svc.cluster.local:80
      routes: {{ default_backend: web }}
      backends:
        backends:
          web: {{ endpoints: [{{ address: "{}", ready: true, meshed: true, identity: "{web}" }}] }}
"#,
        server.inbound_addr
    );
    let client = traced_as(ca.sidecar(&frontend), &receiver, "frontend")
        .static_config(target)
        .start()
        .await;
    until_ready(&server).await;
    until_ready(&client).await;

    let mut send = http1(client.outbound_addr).await;
    let request = Request::builder()
        .uri("/items/7?color=blue&sig=s3cr3t")
        .header("host", "web:80")
        .header("user-agent", "curl/8.5.0")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .body(body::empty())
        .expect("request");
    let answer = bounded("response", send.send_request(request))
        .await
        .expect("response");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["x-path"], "/items/7");
    drop(send);
    futures_util::future::join_all([client, server].map(stop)).await;

    let trace = next_trace(&mut receiver).await;
    assert_eq!(
        trace.spans.len(),
        2,
        "no attempt spans without retries: {trace:#?}"
    );
    let out = trace.tops().next().expect("the client span");
    let inbound = only_child(&trace, &out.span_id);

    let text = |span: &Span, key: &str| span.attr_str(key).map(str::to_owned);
    let int = |span: &Span, key: &str| span.attr_i64(key);
    assert_eq!(
        (out.kind, out.service.as_str()),
        (SpanKind::Client, "frontend")
    );
    assert_eq!(out.name, "GET");
    for (key, value) in [
        ("http.request.method", "GET"),
        ("server.address", "web"),
        ("url.full", "http://web:80/items/7?color=blue&sig=REDACTED"),
        ("network.protocol.version", "1.1"),
        ("network.peer.address", "127.0.0.1"),
        ("plexus.server.identity", web.as_str()),
    ] {
        assert_eq!(
            text(out, key).as_deref(),
            Some(value),
            "client span's {key}"
        );
    }
    assert_eq!(int(out, "server.port"), Some(80));
    assert_eq!(int(out, "http.response.status_code"), Some(200));
    assert_eq!(
        int(out, "network.peer.port"),
        Some(i64::from(server_port)),
        "the server proxy's inbound listener"
    );
    assert_eq!(out.attr("url.path"), None, "a server span's attribute");
    assert_eq!(out.attr("error.type"), None);

    assert_eq!(
        (inbound.kind, inbound.service.as_str()),
        (SpanKind::Server, "web")
    );
    for (key, value) in [
        ("http.request.method", "GET"),
        ("url.scheme", "http"),
        ("url.path", "/items/7"),
        ("url.query", "color=blue&sig=REDACTED"),
        ("server.address", "web"),
        ("user_agent.original", "curl/8.5.0"),
        ("plexus.client.identity", frontend.as_str()),
    ] {
        assert_eq!(
            text(inbound, key).as_deref(),
            Some(value),
            "server span's {key}"
        );
    }
    assert_eq!(int(inbound, "server.port"), Some(80));
    assert_eq!(int(inbound, "http.response.status_code"), Some(200));
    assert_eq!(inbound.attr("url.full"), None, "a client span's attribute");
}

/// A 503 then a 200: the request span has one child per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_requests_show_their_attempts() {
    let mut receiver = receiver().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen_by_backend = Seen::default();
    let (count, seen) = (calls.clone(), seen_by_backend.clone());
    let backend = http_upstream(move |request: Request<Incoming>| {
        seen.record(request.headers());
        let first = count.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                response(StatusCode::SERVICE_UNAVAILABLE, "warming up")
            } else {
                response(StatusCode::OK, "items")
            }
        }
    })
    .await;
    let config = routed(
        "items:80",
        "shop/items",
        &[backend.addr],
        false,
        "retry: { attempts: 3, codes: [503], backoff_base_ms: 1, backoff_max_ms: 5 }",
    );
    let proxy = traced(&receiver, "web").static_config(config).start().await;
    let mut client = http1(proxy.outbound_addr).await;
    let answer = bounded("response", client.send_request(get("/items", "items")))
        .await
        .expect("response");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(text(answer).await, "items");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    drop(client);
    stop(proxy).await;

    let trace = next_trace(&mut receiver).await;
    assert_eq!(trace.spans.len(), 3, "{trace:#?}");
    let request = &trace.spans[0];
    assert_eq!(request.parent_span_id, None, "the proxy started the trace");
    assert_eq!(request.kind, SpanKind::Client);
    assert_eq!(request.attr_str("plexus.route"), Some("shop/items"));
    assert_eq!(request.attr_i64("http.response.status_code"), Some(200));
    assert_eq!(request.attr_i64("plexus.retry.count"), Some(1));
    assert_eq!(request.status.code, SpanStatus::Unset);

    let attempts: Vec<_> = trace.children(&request.span_id).collect();
    assert_eq!(attempts.len(), 2, "{trace:#?}");
    for (n, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt.name, "attempt");
        assert_eq!(attempt.attr_i64("plexus.retry.attempt"), Some(n as i64 + 1));
        assert_eq!(attempt.attr_str("network.peer.address"), Some("127.0.0.1"));
        assert_eq!(
            attempt.attr_i64("network.peer.port"),
            Some(i64::from(backend.addr.port()))
        );
    }
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(first.attr_str("plexus.retry.reason"), None);
    assert_eq!(first.attr_i64("http.response.status_code"), Some(503));
    assert_eq!(first.status.code, SpanStatus::Error);
    assert_eq!(second.attr_str("plexus.retry.reason"), Some("status 503"));
    assert_eq!(second.attr_i64("http.request.resend_count"), Some(1));
    assert_eq!(second.attr_i64("http.response.status_code"), Some(200));
    assert_eq!(second.status.code, SpanStatus::Unset);

    // Each try reached the backend as the child of its own attempt span.
    let parents: Vec<String> = seen_by_backend
        .all()
        .iter()
        .map(|value| traceparent(value).1)
        .collect();
    assert_eq!(parents, [first.span_id.clone(), second.span_id.clone()]);
}

/// A request the route's fault injection delayed and then aborted: its span
/// says both, and the backend saw nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_are_marked_on_the_span() {
    let mut receiver = receiver().await;
    let backend = echo_upstream().await;
    let config = routed(
        "items:80",
        "shop/items",
        &[backend.addr],
        false,
        "fault: { delay_ms: 5, delay_percent: 100, abort_status: 503, abort_percent: 100 }",
    );
    let proxy = traced(&receiver, "web").static_config(config).start().await;
    let mut client = http1(proxy.outbound_addr).await;
    let answer = bounded("response", client.send_request(get("/items", "items")))
        .await
        .expect("response");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers()["plexus-error"], "fault-injected");
    assert_eq!(backend.requests(), 0);
    drop(client);
    stop(proxy).await;

    let trace = next_trace(&mut receiver).await;
    assert_eq!(trace.spans.len(), 1, "{trace:#?}");
    let request = &trace.spans[0];
    assert_eq!(request.attr_bool("plexus.fault.delayed"), Some(true));
    assert_eq!(request.attr_bool("plexus.fault.aborted"), Some(true));
    assert_eq!(request.attr_i64("http.response.status_code"), Some(503));
}

/// Reads `traceparent` out of an HTTP request for the OpenTelemetry SDK.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The application's own tracer, a plain OpenTelemetry SDK one.
fn app_tracer(receiver: &Receiver) -> SdkTracerProvider {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(receiver.grpc_endpoint())
        .build()
        .expect("app exporter");
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder_empty()
                .with_service_name("web-app")
                .build(),
        )
        .build()
}

/// No incoming context: the inbound proxy starts the trace, the application
/// continues it with its own span, and the proxy's span lasts until the
/// (slow) response body has been sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_started_by_the_proxy_is_joined_by_the_app() {
    const BODY_PAUSE: Duration = Duration::from_millis(300);
    let mut receiver = receiver().await;
    let provider = app_tracer(&receiver);
    let tracer = provider.tracer("web-app");
    let seen_by_app = Seen::default();
    let seen = seen_by_app.clone();
    let app = http_upstream(move |request: Request<Incoming>| {
        seen.record(request.headers());
        let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
        let mut span = tracer.start_with_context("render page", &parent);
        span.end();
        async move {
            // The body's second half comes later: the proxy's span must cover it.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("first,")))).await;
                tokio::time::sleep(BODY_PAUSE).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from("second")))).await;
            });
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            Response::new(body::boxed(StreamBody::new(stream)))
        }
    })
    .await;
    let proxy = traced(&receiver, "web")
        .env("PLEXUS_INBOUND_APP_ADDR", app.addr)
        .start()
        .await;
    let mut client = http1(proxy.inbound_addr).await;
    let mut request = get("/page", "web");
    // A plaintext client cannot claim an identity, in the headers or the span.
    request.headers_mut().insert(
        "plexus-client-id",
        http::HeaderValue::from_static("spiffe://cluster.local/ns/shop/sa/admin"),
    );
    let answer = bounded("response", client.send_request(request))
        .await
        .expect("response");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(text(answer).await, "first,second");
    drop(client);
    // The app's span first: until the root arrives its trace looks
    // unfinished, so the receiver waits for it.
    let app_provider = provider.clone();
    tokio::task::spawn_blocking(move || app_provider.shutdown())
        .await
        .expect("app tracer shutdown task")
        .expect("app spans exported");
    stop(proxy).await;

    let seen = seen_by_app.all();
    assert_eq!(seen.len(), 1);
    let (trace_id, proxy_span_id, flags) = traceparent(&seen[0]);
    assert_eq!(flags, "01", "new traces are sampled (ratio 1.0)");

    let trace = next_trace(&mut receiver).await;
    assert_eq!(trace.trace_id, trace_id, "the app's trace is the proxy's");
    assert_eq!(trace.spans.len(), 2, "{trace:#?}");
    let (root, app_span) = (&trace.spans[0], &trace.spans[1]);
    assert_eq!(root.span_id, proxy_span_id);
    assert_eq!(root.parent_span_id, None);
    assert_eq!(root.service, "web");
    assert_eq!(root.kind, SpanKind::Server);
    assert_eq!(root.attr_str("url.path"), Some("/page"));
    assert_eq!(root.attr_i64("http.response.status_code"), Some(200));
    assert_eq!(root.attr_str("plexus.client.identity"), None);
    assert_eq!(app_span.service, "web-app");
    assert_eq!(app_span.name, "render page");
    assert_eq!(
        app_span.parent_span_id.as_deref(),
        Some(root.span_id.as_str())
    );
    assert!(
        Duration::from_nanos(root.duration_nanos()) >= BODY_PAUSE,
        "the server span ends with the body, not the head: {:?}",
        Duration::from_nanos(root.duration_nanos())
    );
}

/// A gRPC call whose status comes in the trailers: the span learns it from
/// the response body, which it outlives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_in_trailers_reaches_the_span() {
    let mut receiver = receiver().await;
    let service = http_upstream(|_: Request<Incoming>| async {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        trailers.insert(
            "grpc-message",
            http::HeaderValue::from_static("backend gone"),
        );
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(Frame::trailers(trailers)),
        ];
        Response::builder()
            .header("content-type", "application/grpc")
            .body(body::boxed(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
            .expect("grpc response")
    })
    .await;
    let config = static_config(&[(&["cart.shop:9090"], &[service.addr])]);
    let proxy = traced(&receiver, "web").static_config(config).start().await;
    let mut client = http2(proxy.outbound_addr).await;
    let request = Request::builder()
        .method("POST")
        .uri("http://cart.shop:9090/shop.v1.Cart/Add")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body::full(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("grpc request");
    let answer = bounded("grpc response", client.send_request(request))
        .await
        .expect("response");
    assert_eq!(answer.status(), StatusCode::OK);
    let collected = bounded("grpc body", answer.into_body().collect())
        .await
        .expect("body");
    let trailers = collected.trailers().cloned().expect("trailers passed on");
    assert_eq!(trailers["grpc-status"], "14");
    drop(client);
    stop(proxy).await;

    let trace = next_trace(&mut receiver).await;
    assert_eq!(trace.spans.len(), 1, "{trace:#?}");
    let call = &trace.spans[0];
    assert_eq!(call.name, "shop.v1.Cart/Add");
    assert_eq!(call.kind, SpanKind::Client);
    assert_eq!(call.attr_str("rpc.system"), Some("grpc"));
    assert_eq!(call.attr_str("rpc.service"), Some("shop.v1.Cart"));
    assert_eq!(call.attr_str("rpc.method"), Some("Add"));
    assert_eq!(call.attr_str("server.address"), Some("cart.shop"));
    assert_eq!(call.attr_i64("http.response.status_code"), Some(200));
    assert_eq!(call.attr_i64("rpc.grpc.status_code"), Some(14));
    assert_eq!(call.status.code, SpanStatus::Error);
    assert_eq!(call.status.message, "backend gone");
}

/// `value` of the series `series` in the proxy's `/metrics`.
async fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let (status, text) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// `n` GETs with a `traceparent` on one keep-alive connection; all must
/// succeed. Returns how long they took.
async fn send_many(proxy: &RunningProxy, n: usize) -> Duration {
    let mut client = http1(proxy.outbound_addr).await;
    let started = std::time::Instant::now();
    for i in 0..n {
        bounded("ready", client.ready())
            .await
            .unwrap_or_else(|e| panic!("connection before request {i}: {e}"));
        let request = Request::builder()
            .uri("/items")
            .header("host", "items")
            .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
            .body(body::empty())
            .expect("request");
        let answer = bounded("response", client.send_request(request))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(answer.status(), StatusCode::OK, "request {i}");
        text(answer).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_fails_no_request() {
    const N: usize = 2_000;
    let seen_by_backend = Seen::default();
    let seen = seen_by_backend.clone();
    let backend = http_upstream(move |request: Request<Incoming>| {
        seen.record(request.headers());
        async { response(StatusCode::OK, "items") }
    })
    .await;
    let config = static_config(&[(&["items:80"], &[backend.addr])]);

    // Tracing off: the caller's context passes untouched.
    let untraced = proxy().static_config(config.clone()).start().await;
    let untraced_time = send_many(&untraced, N).await;
    stop(untraced).await;
    let expected = format!("00-{TRACE}-{CALLER_SPAN}-01");
    assert!(seen_by_backend.all().iter().all(|tp| *tp == expected));

    let dead = proxy()
        .env("PLEXUS_OTLP_ENDPOINT", format!("http://{}", unused_addr()))
        .static_config(config)
        .start()
        .await;
    let traced_time = send_many(&dead, N).await;
    eprintln!(
        "{N} requests: {untraced_time:?} without tracing, {traced_time:?} tracing to a dead collector"
    );
    // The context was continued (a new parent per request) rather than dropped.
    let seen = seen_by_backend.all();
    let traced_parents: HashMap<String, usize> =
        seen[N..].iter().fold(HashMap::new(), |mut parents, tp| {
            let (trace_id, parent, _) = traceparent(tp);
            assert_eq!(trace_id, TRACE);
            *parents.entry(parent).or_default() += 1;
            parents
        });
    assert_eq!(traced_parents.len(), N, "one span per request");

    // The spans were made and lost, and the loss is counted.
    let lost = "plexus_trace_spans_dropped_total{reason=\"export_failed\"}";
    bounded("failed exports counted", async {
        while metric(dead.admin_addr, lost).await.unwrap_or(0.0) < 1.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        metric(dead.admin_addr, "plexus_trace_spans_exported_total").await,
        Some(0.0)
    );
    stop(dead).await;
}
