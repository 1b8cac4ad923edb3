//! Controller benchmark (not a test): 10,000 Services / 100,000 endpoints in
//! the index, 1,000 concurrent Watch streams over real gRPC on loopback, all
//! watching one Service whose endpoints then change. Prints the time until
//! every watcher has the change (p50/p99/max over rounds), the initial
//! snapshot time, and the process RSS.
//!
//! `cargo run --release -p plexus-controller --example bench_controller`
//! The gRPC clients run in the same process, so the RSS after the streams
//! open includes them; the RSS before is the controller alone.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use plexus_api::v1::WatchRequest;
use plexus_api::v1::destination_client::DestinationClient;
use plexus_controller::destination::DestinationService;
use plexus_controller::grpc::{self, GrpcTransport};
use plexus_controller::metrics::Metrics;
use plexus_core::KeepAlive;
use plexus_discovery::index::{IndexConfig, SharedIndex};
use serde_json::json;
use tokio::time::Instant;

const SERVICES: usize = 10_000;
const ENDPOINTS_PER_SERVICE: usize = 10;
const NAMESPACES: usize = 100;
const WATCHERS: usize = 1_000;
/// Streams share connections as proxies on one node would not; 50 keeps the
/// process under the default file-descriptor limit.
const CONNECTIONS: usize = 50;
const ROUNDS: usize = 20;
const ROUND_BOUND: Duration = Duration::from_secs(30);

fn ip(service: usize, endpoint: usize) -> String {
    let n = service * 64 + endpoint;
    format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255)
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": format!("ns-{}", i % NAMESPACES), "name": format!("svc-{i}")},
        "spec": {"clusterIP": format!("172.16.{}.{}", i >> 8, i & 255),
                 "ports": [{"name": "http", "port": 80}]},
    }))
    .expect("service")
}

fn slice(i: usize, endpoints: usize) -> EndpointSlice {
    let eps: Vec<_> = (0..endpoints)
        .map(|e| {
            json!({"addresses": [ip(i, e)], "conditions": {"ready": true}, "zone": "zone-a",
                        "targetRef": {"kind": "Pod", "name": format!("svc-{i}-{e}")}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": format!("ns-{}", i % NAMESPACES), "name": format!("svc-{i}-slice"),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": eps,
    }))
    .expect("slice")
}

fn pod(i: usize, e: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": format!("ns-{}", i % NAMESPACES), "name": format!("svc-{i}-{e}")},
        "spec": {"serviceAccountName": format!("sa-{i}"),
                 "containers": [{"name": "app"}, {"name": "plexus-proxy"}]},
        "status": {"podIP": ip(i, e), "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .expect("pod")
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn endpoint_count(update: &plexus_api::v1::DestinationUpdate) -> Option<usize> {
    let target = update.target.as_ref()?;
    Some(
        target
            .backends
            .as_ref()?
            .backends
            .get(&target.name)?
            .endpoints
            .len(),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let index = SharedIndex::new(IndexConfig::default());
    let started = Instant::now();
    // One object at a time, as the Kubernetes feed applies a list.
    for i in 0..SERVICES {
        index.lock().apply(service(i));
        for e in 0..ENDPOINTS_PER_SERVICE {
            index.lock().apply(pod(i, e));
        }
        index.lock().apply(slice(i, ENDPOINTS_PER_SERVICE));
    }
    let build = started.elapsed();
    let sizes = index.lock().sizes();
    println!(
        "index: {} services, {} endpoints, {} pods built in {:.2?}",
        sizes.services, sizes.endpoints, sizes.pods, build
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let routes = tonic::service::Routes::new(
        DestinationService::new(index.clone(), Arc::new(Metrics::new())).into_server(),
    );
    tokio::spawn(grpc::serve(
        listener,
        routes,
        GrpcTransport::Plaintext,
        KeepAlive::CONTROL_PLANE,
    ));
    let rss_controller = rss_mib();
    println!("RSS with the index built and the server up: {rss_controller:.1} MiB");

    // The initial snapshot of one target, on a fresh stream each time.
    let mut client = DestinationClient::connect(format!("http://{addr}")).await?;
    let mut snapshot = Histogram::<u64>::new(3)?;
    for i in 0..200 {
        let t0 = Instant::now();
        let mut stream = client
            .watch(WatchRequest {
                target: format!("svc-{i}.ns-{}.svc.cluster.local:80", i % NAMESPACES),
                ..WatchRequest::default()
            })
            .await?
            .into_inner();
        stream.message().await?;
        snapshot.record(t0.elapsed().as_micros() as u64)?;
    }

    // 1,000 watchers of one Service.
    let watched = 42;
    let target = format!(
        "svc-{watched}.ns-{}.svc.cluster.local:80",
        watched % NAMESPACES
    );
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(DestinationClient::connect(format!("http://{addr}")).await?);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    for w in 0..WATCHERS {
        let mut client = channels[w % CONNECTIONS].clone();
        let (tx, opened_tx, target) = (tx.clone(), opened_tx.clone(), target.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let request = WatchRequest {
                target,
                ..WatchRequest::default()
            };
            let Ok(response) = client.watch(request).await else {
                return;
            };
            let mut stream = response.into_inner();
            if let Ok(Some(_)) = stream.message().await {
                let _ = opened_tx.send(t0.elapsed());
            }
            while let Ok(Some(update)) = stream.message().await {
                if let Some(count) = endpoint_count(&update) {
                    let _ = tx.send((count, Instant::now()));
                }
            }
        });
    }
    let mut open_all = Histogram::<u64>::new(3)?;
    for _ in 0..WATCHERS {
        let took = tokio::time::timeout(ROUND_BOUND, opened_rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("a watcher failed to open"))?;
        open_all.record(took.as_micros() as u64)?;
    }
    let rss_streams = rss_mib();

    let mut push = Histogram::<u64>::new(3)?;
    let mut all_received = Histogram::<u64>::new(3)?;
    for round in 1..=ROUNDS {
        let endpoints = ENDPOINTS_PER_SERVICE + round;
        let t0 = Instant::now();
        index.lock().apply(slice(watched, endpoints));
        let mut received = 0;
        let mut last = t0;
        while received < WATCHERS {
            let (count, at) = tokio::time::timeout(ROUND_BOUND, rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("watchers ended"))?;
            if count == endpoints {
                received += 1;
                push.record(at.duration_since(t0).as_micros() as u64)?;
                last = last.max(at);
            }
        }
        all_received.record(last.duration_since(t0).as_micros() as u64)?;
    }

    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "initial snapshot (200 fresh streams, 10 endpoints): p50 {:.2} ms, p99 {:.2} ms",
        ms(snapshot.value_at_quantile(0.5)),
        ms(snapshot.value_at_quantile(0.99))
    );
    println!(
        "opening {WATCHERS} concurrent streams: snapshot p50 {:.2} ms, p99 {:.2} ms",
        ms(open_all.value_at_quantile(0.5)),
        ms(open_all.value_at_quantile(0.99))
    );
    println!(
        "change -> each of {WATCHERS} watchers ({ROUNDS} rounds): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(push.value_at_quantile(0.5)),
        ms(push.value_at_quantile(0.99)),
        ms(push.max())
    );
    println!(
        "change -> all {WATCHERS} watchers have it: p50 {:.2} ms, p99 {:.2} ms",
        ms(all_received.value_at_quantile(0.5)),
        ms(all_received.value_at_quantile(0.99))
    );
    println!(
        "RSS: {rss_controller:.1} MiB controller alone, {rss_streams:.1} MiB with {WATCHERS} streams and their clients"
    );
    Ok(())
}
