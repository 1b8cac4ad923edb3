//! The tracer end to end: spans recorded here, exported over OTLP/gRPC into
//! the OTLP receiver (plexus-traces), and a dead or stalled collector that must cost
//! requests nothing.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, request, response};
use plexus_traces::{AssemblyConfig, Receiver, StatusCode as SpanStatus, Trace};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::*;
use crate::connect::{AppProtocol, EndpointTarget};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const WAIT: Duration = Duration::from_secs(20);

fn config(endpoint: String, service: &str) -> TelemetryConfig {
    TelemetryConfig {
        endpoint: Some(endpoint),
        service_name: service.to_owned(),
        namespace: Some("shop".into()),
        pod_name: Some(format!("{service}-0")),
        export_interval: Duration::from_millis(50),
        ..TelemetryConfig::default()
    }
}

fn request_parts(uri: &str, headers: &[(&'static str, &str)]) -> request::Parts {
    let mut builder = http::Request::builder().method("GET").uri(uri);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder
        .body(())
        .expect("a valid test request")
        .into_parts()
        .0
}

fn response_parts(status: u16, headers: &[(&'static str, &str)]) -> response::Parts {
    let mut builder = http::Response::builder().status(status);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder
        .body(())
        .expect("a valid test response")
        .into_parts()
        .0
}

fn traceparent(headers: &HeaderMap) -> (String, String, String) {
    let value = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("a traceparent");
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

async fn receiver() -> Receiver {
    let any = "127.0.0.1:0".parse().expect("literal address");
    Receiver::bind_with(
        any,
        any,
        AssemblyConfig {
            quiet_period: Duration::from_millis(500),
            root_settle: Duration::from_millis(200),
            ..AssemblyConfig::default()
        },
    )
    .await
    .expect("receiver binds")
}

async fn next_trace(receiver: &mut Receiver) -> Trace {
    tokio::time::timeout(WAIT, receiver.next_trace())
        .await
        .expect("a trace arrives in time")
        .expect("the receiver runs")
}

/// Exports everything queued; blocking, so off the runtime's threads.
async fn flush(telemetry: &Telemetry) {
    let telemetry = telemetry.clone();
    tokio::task::spawn_blocking(move || telemetry.shutdown(Duration::from_secs(10)))
        .await
        .expect("shutdown task");
}

fn endpoint_target(addr: &str) -> EndpointTarget {
    EndpointTarget {
        addr: addr.parse().expect("literal address"),
        identity: Some("spiffe://cluster.local/ns/shop/sa/backend".into()),
        meshed: true,
        protocol: AppProtocol::AsRequested,
        source: None,
    }
}

#[test]
fn disabled_tracing_leaves_requests_alone() {
    let telemetry = Telemetry::disabled();
    let header = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let mut parts = request_parts("http://web/", &[("traceparent", &header)]);
    let mut span = telemetry.start_request(Direction::Outbound, &mut parts);
    let attempt = span.attempt(1, None, &endpoint_target("10.0.0.1:80"), &mut parts.headers);
    attempt.record_response(&response_parts(200, &[]));
    span.set_route("r");
    assert!(!span.is_recording());
    assert_eq!(parts.headers["traceparent"], header.as_str());
    assert_eq!(parts.headers.len(), 1);
    // Off, a span is one null pointer: nothing to allocate or move around.
    assert_eq!(
        std::mem::size_of::<RequestSpan>(),
        std::mem::size_of::<usize>()
    );
    assert_eq!(
        std::mem::size_of::<AttemptSpan>(),
        std::mem::size_of::<usize>()
    );
}

#[test]
fn spans_can_travel_with_a_response_body_across_tasks() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Telemetry>();
    send_sync::<RequestSpan>();
    send_sync::<AttemptSpan>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hops_with_a_retry_form_one_trace() {
    let mut receiver = receiver().await;
    let mut registry = Registry::default();
    let client_proxy = Telemetry::new(&config(receiver.grpc_endpoint(), "frontend"), &mut registry)
        .expect("client-side telemetry");
    let server_proxy = Telemetry::new(
        &config(receiver.grpc_endpoint(), "backend"),
        &mut Registry::default(),
    )
    .expect("server-side telemetry");

    // The app calls the backend with a context of its own.
    let incoming = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let mut parts = request_parts(
        "http://backend.shop:8080/api/items?secret=1",
        &[("traceparent", &incoming), ("tracestate", "app=1")],
    );
    let mut outbound = client_proxy.start_request(Direction::Outbound, &mut parts);
    assert!(outbound.is_recording());
    outbound.set_route("backend-route");
    outbound.set_http_route("/api/items");
    outbound.set_backend("backend-v2");
    let (trace, request_span_id, flags) = traceparent(&parts.headers);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(request_span_id, CALLER_SPAN, "the next hop is our child");
    assert_eq!(
        parts.headers["tracestate"], "app=1",
        "tracestate is carried on"
    );

    let mut first = parts.headers.clone();
    let attempt = outbound.attempt(1, None, &endpoint_target("10.0.0.7:8080"), &mut first);
    attempt.record_response(&response_parts(503, &[]));
    attempt.finish();
    let mut second = parts.headers.clone();
    let attempt = outbound.attempt(
        2,
        Some("status 503"),
        &endpoint_target("10.0.0.8:8080"),
        &mut second,
    );
    let (_, second_attempt_id, _) = traceparent(&second);

    // The server-side proxy receives the second attempt.
    let mut server_parts = request_parts("http://backend.shop:8080/api/items", &[]);
    server_parts.headers = second;
    let inbound = server_proxy.start_request(Direction::Inbound, &mut server_parts);
    inbound.set_identities(
        Some("spiffe://cluster.local/ns/shop/sa/frontend"),
        Some("spiffe://cluster.local/ns/shop/sa/backend"),
    );
    inbound.record_response(&response_parts(200, &[]));
    inbound.finish();

    attempt.record_response(&response_parts(200, &[]));
    attempt.finish();
    outbound.record_response(&response_parts(200, &[]));
    outbound.finish();
    flush(&client_proxy).await;
    flush(&server_proxy).await;

    let trace = next_trace(&mut receiver).await;
    assert_eq!(trace.trace_id, TRACE);
    assert_eq!(trace.spans.len(), 4, "{trace:#?}");
    let request = trace.span("GET /api/items").expect("the client span");
    assert_eq!(request.parent_span_id.as_deref(), Some(CALLER_SPAN));
    assert_eq!(request.span_id, request_span_id);
    assert_eq!(request.service, "frontend");
    assert_eq!(request.attr_str("http.request.method"), Some("GET"));
    assert_eq!(
        request.attr_str("url.full"),
        Some("http://backend.shop:8080/api/items?secret=1")
    );
    assert_eq!(request.attr_str("url.path"), None, "a server attribute");
    assert_eq!(request.attr_str("http.route"), Some("/api/items"));
    assert_eq!(request.attr_str("server.address"), Some("backend.shop"));
    assert_eq!(request.attr_i64("server.port"), Some(8080));
    assert_eq!(request.attr_str("plexus.route"), Some("backend-route"));
    assert_eq!(request.attr_str("plexus.backend"), Some("backend-v2"));
    assert_eq!(request.attr_i64("plexus.retry.count"), Some(1));
    assert_eq!(request.status.code, SpanStatus::Unset);

    let attempts: Vec<_> = trace.children(&request.span_id).collect();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].attr_i64("plexus.retry.attempt"), Some(1));
    assert_eq!(attempts[0].attr_i64("http.response.status_code"), Some(503));
    assert_eq!(
        attempts[0].status.code,
        SpanStatus::Error,
        "a 503 fails a client span"
    );
    assert_eq!(
        attempts[0].attr_str("network.peer.address"),
        Some("10.0.0.7")
    );
    assert_eq!(attempts[1].span_id, second_attempt_id);
    assert_eq!(
        attempts[1].attr_str("plexus.retry.reason"),
        Some("status 503")
    );
    assert_eq!(attempts[1].attr_i64("http.request.resend_count"), Some(1));
    for key in ["http.request.method", "server.address", "url.full"] {
        assert_eq!(
            attempts[1].attr(key),
            request.attr(key),
            "attempts repeat {key}"
        );
    }
    assert_eq!(
        attempts[1].attr_str("plexus.server.identity"),
        Some("spiffe://cluster.local/ns/shop/sa/backend")
    );

    let server: Vec<_> = trace.children(&second_attempt_id).collect();
    assert_eq!(
        server.len(),
        1,
        "the server span is the second attempt's child"
    );
    assert_eq!(server[0].service, "backend");
    assert_eq!(server[0].kind, plexus_traces::SpanKind::Server);
    assert_eq!(
        server[0].attr_str("plexus.client.identity"),
        Some("spiffe://cluster.local/ns/shop/sa/frontend")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_context_starts_a_trace_and_grpc_is_described() {
    let mut receiver = receiver().await;
    let telemetry = Telemetry::new(
        &config(receiver.grpc_endpoint(), "web"),
        &mut Registry::default(),
    )
    .expect("telemetry");
    let mut parts = request_parts(
        "http://api:9090/shop.v1.Cart/Add",
        &[("content-type", "application/grpc")],
    );
    let span = telemetry.start_request(Direction::Inbound, &mut parts);
    let (trace_id, span_id, flags) = traceparent(&parts.headers);
    assert_eq!(
        flags, "01",
        "new traces are sampled at the default ratio 1.0"
    );
    span.record_response(&response_parts(
        200,
        &[("content-type", "application/grpc")],
    ));
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("14"));
    trailers.insert("grpc-message", HeaderValue::from_static("backend gone"));
    span.record_trailers(&trailers);
    span.finish();
    flush(&telemetry).await;

    let trace = next_trace(&mut receiver).await;
    assert_eq!(trace.trace_id, trace_id);
    let root = &trace.spans[0];
    assert_eq!(root.span_id, span_id);
    assert_eq!(root.parent_span_id, None);
    assert_eq!(root.name, "shop.v1.Cart/Add");
    assert_eq!(root.attr_str("rpc.system"), Some("grpc"));
    assert_eq!(root.attr_str("rpc.service"), Some("shop.v1.Cart"));
    assert_eq!(root.attr_str("rpc.method"), Some("Add"));
    assert_eq!(root.attr_i64("rpc.grpc.status_code"), Some(14));
    assert_eq!(root.status.code, SpanStatus::Error);
    assert_eq!(root.status.message, "backend gone");
}

/// A port where nothing listens.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampled_flag_and_the_ratio_are_honoured() {
    let mut never = config(closed_port().await, "web");
    never.sampling = 0.0;
    let telemetry = Telemetry::new(&never, &mut Registry::default()).expect("telemetry");

    let mut parts = request_parts("http://web/", &[]);
    let span = telemetry.start_request(Direction::Inbound, &mut parts);
    assert!(!span.is_recording(), "ratio 0 records no new trace");
    assert_eq!(
        traceparent(&parts.headers).2,
        "00",
        "and tells the next hops so"
    );

    let sampled = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let mut parts = request_parts("http://web/", &[("traceparent", &sampled)]);
    assert!(
        telemetry
            .start_request(Direction::Inbound, &mut parts)
            .is_recording(),
        "a sampled caller is followed whatever the ratio"
    );

    let mut always = config(closed_port().await, "web");
    always.sampling = 1.0;
    let telemetry = Telemetry::new(&always, &mut Registry::default()).expect("telemetry");
    let unsampled = format!("00-{TRACE}-{CALLER_SPAN}-00");
    let mut parts = request_parts("http://web/", &[("traceparent", &unsampled)]);
    let span = telemetry.start_request(Direction::Outbound, &mut parts);
    assert!(!span.is_recording(), "an unsampled caller is followed too");
    let (trace, _, flags) = traceparent(&parts.headers);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));

    let mut parts = request_parts("http://web/", &[("b3", "0")]);
    assert!(
        !telemetry
            .start_request(Direction::Inbound, &mut parts)
            .is_recording()
    );
    assert_eq!(traceparent(&parts.headers).2, "00");
    assert!(
        parts.headers["b3"]
            .to_str()
            .is_ok_and(|v| v.ends_with("-0"))
    );

    let b3 = format!("{TRACE}-{CALLER_SPAN}");
    let mut parts = request_parts("http://web/", &[("b3", &b3)]);
    assert!(
        telemetry
            .start_request(Direction::Inbound, &mut parts)
            .is_recording(),
        "a deferred B3 decision is ours: ratio 1.0 records it"
    );
    assert_eq!(traceparent(&parts.headers).0, TRACE);
}

fn metric(registry: &Registry, series: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// 10,000 requests with retries against a collector that cannot take them:
/// bounded time, and the lost spans are counted.
async fn requests_are_not_slowed_by(endpoint: String) {
    let mut registry = Registry::default();
    let mut config = config(endpoint, "web");
    config.queue_size = 256;
    let telemetry = Telemetry::new(&config, &mut registry).expect("telemetry");
    let started = tokio::time::Instant::now();
    for _ in 0..10_000 {
        let mut parts = request_parts("http://backend:8080/items", &[]);
        let mut span = telemetry.start_request(Direction::Outbound, &mut parts);
        let attempt = span.attempt(
            1,
            None,
            &endpoint_target("10.0.0.1:8080"),
            &mut parts.headers,
        );
        attempt.record_response(&response_parts(200, &[]));
        attempt.finish();
        span.record_response(&response_parts(200, &[]));
        span.finish();
    }
    let elapsed = started.elapsed();
    eprintln!("10,000 requests (20,000 spans) recorded in {elapsed:?}");
    // Typically ~0.1 s in a debug build; the bound only catches blocking on export.
    assert!(
        elapsed < Duration::from_secs(10),
        "20,000 spans took {elapsed:?}"
    );
    let queue_full = metric(
        &registry,
        "plexus_trace_spans_dropped_total{reason=\"queue_full\"}",
    );
    let failed = metric(
        &registry,
        "plexus_trace_spans_dropped_total{reason=\"export_failed\"}",
    );
    assert!(queue_full > 0, "the bounded queue overflowed");
    // Every span is exported, dropped, or among the at most 256 still queued.
    assert!(
        queue_full + failed >= 20_000 - 256,
        "dropped {queue_full} + {failed}"
    );
    assert_eq!(metric(&registry, "plexus_trace_spans_exported_total"), 0);
    // Do not wait for the stuck exporter at the end of the test.
    let quick = telemetry.clone();
    tokio::task::spawn_blocking(move || quick.shutdown(Duration::from_millis(100)))
        .await
        .expect("shutdown task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_never_slows_requests() {
    requests_are_not_slowed_by(closed_port().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_never_slows_requests() {
    // Accepts connections and never answers a byte.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let stalled = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    requests_are_not_slowed_by(format!("http://{addr}")).await;
    stalled.abort();
}
