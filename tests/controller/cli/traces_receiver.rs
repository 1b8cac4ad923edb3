//! The trace receiver as a real OTLP endpoint: spans sent by the OpenTelemetry
//! SDK's OTLP/gRPC exporter, by a plain OTLP/HTTP POST, and through the
//! `plexusctl traces` binary.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::KeyValue;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as OtlpKeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use opentelemetry_sdk::trace::SdkTracerProvider;
use plexus_tests::bins::bin;
use plexus_tests::otlp as collector;
use plexus_traces::{AssemblyConfig, Receiver, StatusCode, Trace};
use prost::Message;
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(20);

fn fast() -> AssemblyConfig {
    AssemblyConfig {
        quiet_period: Duration::from_millis(500),
        root_settle: Duration::from_millis(100),
        ..AssemblyConfig::default()
    }
}

async fn next_trace(receiver: &mut Receiver) -> Trace {
    collector::next_trace(receiver, WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assembles_a_tree_sent_by_the_sdk_otlp_grpc_exporter_with_gzip() {
    let mut receiver = collector::receiver(fast()).await;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(receiver.grpc_endpoint())
        // What the OpenTelemetry Collector's exporter does by default.
        .with_compression(opentelemetry_otlp::Compression::Gzip)
        .build()
        .expect("exporter");
    let provider = SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name("checkout")
                .build(),
        )
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("test");

    let root = tracer
        .span_builder("GET /cart")
        .with_kind(SpanKind::Server)
        .with_attributes([KeyValue::new("http.response.status_code", 200)])
        .start(&tracer);
    let root_cx = opentelemetry::Context::current_with_span(root);
    let mut child = tracer
        .span_builder("SELECT cart")
        .with_kind(SpanKind::Client)
        .start_with_context(&tracer, &root_cx);
    child.set_status(Status::error("db timeout"));
    let child_cx = root_cx.with_span(child);
    let grandchild = tracer.start_with_context("retry", &child_cx);
    drop(grandchild);
    drop(child_cx);
    drop(root_cx);
    let flushed = tokio::task::spawn_blocking(move || provider.force_flush())
        .await
        .expect("flush task");
    assert!(flushed.is_ok(), "{flushed:?}");

    let trace = next_trace(&mut receiver).await;
    let names: Vec<&str> = trace.spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["GET /cart", "SELECT cart", "retry"]);
    let [root, child, grandchild] = &trace.spans[..] else {
        panic!("three spans expected: {trace:?}");
    };
    assert_eq!(root.parent_span_id, None);
    assert_eq!(child.parent_span_id.as_deref(), Some(root.span_id.as_str()));
    assert_eq!(
        grandchild.parent_span_id.as_deref(),
        Some(child.span_id.as_str())
    );
    assert!(trace.spans.iter().all(|s| s.service == "checkout"));
    assert_eq!(root.attr_i64("http.response.status_code"), Some(200));
    assert_eq!(child.status.code, StatusCode::Error);
    assert_eq!(child.status.message, "db timeout");
    assert_eq!(receiver.stats().spans_received, 3);
}

fn kv(key: &str, value: any_value::Value) -> OtlpKeyValue {
    OtlpKeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn export_request(
    trace_id: [u8; 16],
    spans: &[(u8, Option<u8>, &str)],
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue("web".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![otlp::ScopeSpans {
                spans: spans
                    .iter()
                    .map(|(id, parent, name)| otlp::Span {
                        trace_id: trace_id.to_vec(),
                        span_id: vec![*id; 8],
                        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
                        name: (*name).into(),
                        start_time_unix_nano: 1_000 + u64::from(*id),
                        end_time_unix_nano: 2_000,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn post(url: &str, content_type: &str, body: Vec<u8>) -> (http::StatusCode, Bytes) {
    post_encoded(url, content_type, None, body).await
}

async fn post_encoded(
    url: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (http::StatusCode, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::post(url).header(http::header::CONTENT_TYPE, content_type);
    if let Some(encoding) = encoding {
        request = request.header(http::header::CONTENT_ENCODING, encoding);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    let response = tokio::time::timeout(WAIT, client.request(request))
        .await
        .expect("the POST answers in time")
        .expect("the POST succeeds");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    (status, body)
}

#[tokio::test]
async fn accepts_otlp_http_protobuf_plain_and_gzip_and_refuses_json() {
    let mut receiver = collector::receiver(fast()).await;
    let url = receiver.http_traces_url();
    // Spans arrive in two requests, child first, as they would from two processes.
    let (status, body) = post(
        &url,
        "application/x-protobuf",
        export_request([7; 16], &[(2, Some(1), "child")]).encode_to_vec(),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);
    let answer = ExportTraceServiceResponse::decode(body).expect("a protobuf answer");
    assert_eq!(answer.partial_success, None);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&export_request([7; 16], &[(1, None, "root")]).encode_to_vec())
        .expect("compress");
    let (status, _) = post_encoded(
        &url,
        "application/x-protobuf",
        Some("gzip"),
        gzip.finish().expect("compress"),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);

    let trace = next_trace(&mut receiver).await;
    assert_eq!(trace.trace_id, "07".repeat(16));
    let names: Vec<&str> = trace.spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["root", "child"]);

    let (status, _) = post(&url, "application/json", b"{}".to_vec()).await;
    assert_eq!(status, http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = post(&url, "application/x-protobuf", vec![0xff, 0xff, 0xff]).await;
    assert_eq!(status, http::StatusCode::BAD_REQUEST);
    let (status, _) = post_encoded(
        &url,
        "application/x-protobuf",
        Some("gzip"),
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(status, http::StatusCode::BAD_REQUEST);
    let (status, _) = post_encoded(&url, "application/x-protobuf", Some("br"), b"x".to_vec()).await;
    assert_eq!(status, http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn malformed_spans_are_reported_as_partial_success() {
    let mut receiver = collector::receiver(fast()).await;
    let mut client = TraceServiceClient::connect(receiver.grpc_endpoint())
        .await
        .expect("connect");
    let mut request = export_request([9; 16], &[(1, None, "root"), (2, Some(1), "bad")]);
    request.resource_spans[0].scope_spans[0].spans[1].span_id = vec![1, 2, 3];
    let answer = client.export(request).await.expect("export").into_inner();
    let partial = answer.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial.error_message.contains("span_id"), "{partial:?}");
    let trace = next_trace(&mut receiver).await;
    assert_eq!(trace.spans.len(), 1);
    assert_eq!(receiver.stats().spans_rejected, 1);
}

#[tokio::test]
async fn the_binary_prints_json_and_exits_after_max_traces() {
    let mut child = tokio::process::Command::new(bin("plexusctl"))
        .args([
            "traces",
            "--grpc-addr=127.0.0.1:0",
            "--http-addr=127.0.0.1:0",
            "--json",
            "--max-traces=1",
            "--quiet-period=300ms",
            "--timeout=60s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn plexusctl");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let url = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if let Some(rest) = line.split("(POST ").nth(1) {
                return rest.trim_end_matches(')').to_owned();
            }
        }
        panic!("plexusctl exited before printing its HTTP address");
    })
    .await
    .expect("the addresses are printed in time");

    let (status, _) = post(
        &url,
        "application/x-protobuf",
        export_request([3; 16], &[(1, None, "root"), (2, Some(1), "child")]).encode_to_vec(),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);

    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("plexusctl exits in time")
        .expect("plexusctl output");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(lines[0]).expect("one JSON document");
    assert_eq!(doc["trace_id"], "03".repeat(16));
    assert_eq!(doc["spans"][0]["name"], "root");
    assert_eq!(doc["spans"][0]["parent_span_id"], serde_json::Value::Null);
    assert_eq!(doc["spans"][1]["parent_span_id"], "01".repeat(8));
    assert_eq!(doc["spans"][1]["service"], "web");
    assert_eq!(doc["spans"][1]["status"]["code"], "unset");
    assert_eq!(doc["spans"][1]["start_unix_nano"], 1_002);
}
