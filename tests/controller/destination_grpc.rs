//! The Destination API over real gRPC on loopback, with a tonic client from
//! `plexus-api`: snapshot then deltas, a backendRef unresolved and then
//! resolved, gRPC retry and success-rate annotations, not-meshed targets,
//! server policies,
//! a slow watcher that does not hold up the others, and HTTP/2 clients that
//! flood PINGs or SETTINGS without reading, closed by the port's keep-alive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use plexus_api::v1::destination_client::DestinationClient;
use plexus_api::v1::{DestinationUpdate, ServerRequest, WatchRequest};
use plexus_controller::destination::DestinationService;
use plexus_controller::grpc::{self, GrpcTransport};
use plexus_controller::metrics::Metrics;
use plexus_core::KeepAlive;
use plexus_discovery::index::{IndexConfig, SharedIndex};
use plexus_tests::h2_frames::{GOAWAY, NO_ERROR, PING, SETTINGS, flood, frame, frames};
use serde_json::{Value, json};
use tonic::Streaming;
use tonic::transport::Channel;

const BOUND: Duration = Duration::from_secs(20);

async fn start(index: SharedIndex) -> DestinationClient<Channel> {
    connect(serve(index).await).await
}

/// The gRPC port, plaintext, over `index`.
async fn serve(index: SharedIndex) -> SocketAddr {
    serve_with(index, KeepAlive::CONTROL_PLANE).await
}

async fn serve_with(index: SharedIndex, keep_alive: KeepAlive) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = tonic::service::Routes::new(
        DestinationService::new(index, Arc::new(Metrics::new())).into_server(),
    );
    tokio::spawn(grpc::serve(
        listener,
        routes,
        GrpcTransport::Plaintext,
        keep_alive,
    ));
    addr
}

async fn connect(addr: SocketAddr) -> DestinationClient<Channel> {
    DestinationClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn service() -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "web"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]},
    }))
    .unwrap()
}

fn slice(ips: &[String]) -> EndpointSlice {
    let endpoints: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "web-a", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

async fn next(stream: &mut Streaming<DestinationUpdate>) -> DestinationUpdate {
    tokio::time::timeout(BOUND, stream.message())
        .await
        .expect("an update in time")
        .expect("stream ok")
        .expect("stream open")
}

fn endpoint_count(update: &DestinationUpdate) -> Option<usize> {
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

async fn watch(
    client: &mut DestinationClient<Channel>,
    target: &str,
) -> Streaming<DestinationUpdate> {
    client
        .watch(WatchRequest {
            target: target.to_string(),
            context_namespace: "shop".to_string(),
            proxy_id: "test".to_string(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn snapshot_then_only_what_changed() {
    let index = SharedIndex::new(IndexConfig::default());
    index.lock().apply(service());
    let mut client = start(index.clone()).await;

    let mut stream = watch(&mut client, "web:80").await;
    let first = next(&mut stream).await;
    assert!(first.snapshot && !first.not_meshed);
    let target = first.target.as_ref().unwrap();
    assert_eq!(target.name, "web.shop.svc.cluster.local:80");
    assert!(target.protocol.is_some() && target.routes.is_some());
    assert_eq!(endpoint_count(&first), Some(0));

    index.lock().apply(slice(&["10.0.0.1".to_string()]));
    let delta = next(&mut stream).await;
    assert!(!delta.snapshot && !delta.not_meshed);
    let target = delta.target.as_ref().unwrap();
    assert!(
        target.protocol.is_none() && target.routes.is_none(),
        "{target:?}"
    );
    assert_eq!(endpoint_count(&delta), Some(1));
}

#[tokio::test]
async fn a_backend_ref_to_a_missing_service_is_marked_unresolved_until_it_appears() {
    let index = SharedIndex::new(IndexConfig::default());
    index.lock().apply(service());
    let route: HttpRoute = serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "canary"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                 "rules": [{"backendRefs": [{"name": "canary", "port": 80}]}]},
    }))
    .unwrap();
    index.lock().apply(route);
    let mut client = start(index.clone()).await;
    let mut stream = watch(&mut client, "web:80").await;
    let split = |update: &DestinationUpdate| {
        let routes = update.target.as_ref()?.routes.as_ref()?;
        Some(routes.http.first()?.rules.first()?.backends.clone())
    };
    let first = next(&mut stream).await;
    let backends = split(&first).expect("the route");
    assert_eq!(backends[0].backend, "canary.shop.svc.cluster.local:80");
    assert_eq!(
        backends[0].unresolved,
        "BackendNotFound: Service shop/canary does not exist"
    );

    let mut canary = service();
    canary.metadata.name = Some("canary".into());
    canary.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.11".into());
    index.lock().apply(canary);
    let delta = next(&mut stream).await;
    assert_eq!(split(&delta).expect("the route again")[0].unresolved, "");
    let target = delta.target.as_ref().unwrap();
    assert!(
        target
            .backends
            .as_ref()
            .unwrap()
            .backends
            .contains_key("canary.shop.svc.cluster.local:80"),
        "{target:?}"
    );
}

#[tokio::test]
async fn grpc_retry_and_success_rate_annotations_reach_the_target_and_bad_ones_are_named() {
    let index = SharedIndex::new(IndexConfig::default());
    let mut web = service();
    web.metadata.annotations = Some(
        [
            ("plexus.io/failure-accrual-success-rate", "enabled"),
            ("plexus.io/failure-accrual-success-rate-stdev-factor", "1.5"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into(),
    );
    index.lock().apply(web);
    let grpc_route = |name: &str, codes: &str| -> GrpcRoute {
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name,
                         "annotations": {"plexus.io/retry-grpc-codes": codes}},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                     "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
        }))
        .unwrap()
    };
    index.lock().apply(grpc_route("cart", "unavailable,14"));
    index
        .lock()
        .apply(grpc_route("orders", "unavailable,resource-exhausted"));
    let mut client = start(index.clone()).await;
    let first = next(&mut watch(&mut client, "web:80").await).await;
    let target = first.target.expect("a target");
    let routes = target.routes.expect("routes");
    let names: Vec<&str> = routes.grpc.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["shop/orders"],
        "the route with a bad annotation is refused"
    );
    let retry = routes.grpc[0].rules[0]
        .retry
        .clone()
        .expect("a retry policy");
    assert_eq!((retry.grpc_codes, retry.attempts), (vec![14, 8], 3));
    let backend = &target.backends.expect("backends").backends[&target.name];
    let resilience = backend.resilience.clone().expect("resilience");
    let success_rate = resilience.failure_accrual.and_then(|a| a.success_rate);
    assert_eq!(success_rate.and_then(|s| s.stdev_factor), Some(1.5));

    let statuses = index.lock().route_statuses();
    let cart = statuses
        .iter()
        .find(|s| s.route.name == "cart")
        .expect("cart's status");
    assert!(!cart.parents[0].accepted);
    assert!(
        cart.parents[0]
            .message
            .starts_with("metadata.annotations[plexus.io/retry-grpc-codes]: \"unavailable,14\""),
        "{}",
        cart.parents[0].message
    );
}

#[tokio::test]
async fn fault_annotations_reach_every_rule_and_bad_ones_are_named() {
    let index = SharedIndex::new(IndexConfig::default());
    index.lock().apply(service());
    let http_route = |name: &str, annotations: Value| -> HttpRoute {
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name, "annotations": annotations},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}]},
                               {"matches": [{"path": {"type": "PathPrefix", "value": "/b"}}]}]},
        }))
        .unwrap()
    };
    index.lock().apply(http_route(
        "chaos",
        json!({"plexus.io/fault-delay": "250ms", "plexus.io/fault-delay-percent": "10",
               "plexus.io/fault-abort-status": "503", "plexus.io/fault-abort-percent": "1.5"}),
    ));
    index.lock().apply(http_route(
        "broken",
        json!({"plexus.io/fault-abort-status": "200", "plexus.io/fault-delay-percent": "x"}),
    ));
    let mut client = start(index.clone()).await;
    let first = next(&mut watch(&mut client, "web:80").await).await;
    let routes = first.target.expect("a target").routes.expect("routes");
    let names: Vec<&str> = routes.http.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["shop/chaos"],
        "the route with bad annotations is refused"
    );
    let expected = plexus_api::v1::Fault {
        delay_ms: 250,
        delay_percent: 10.0,
        abort_status: 503,
        abort_grpc_status: 0,
        abort_percent: 1.5,
    };
    for rule in &routes.http[0].rules {
        assert_eq!(rule.fault.as_ref(), Some(&expected));
    }

    let statuses = index.lock().route_statuses();
    let broken = statuses
        .iter()
        .find(|s| s.route.name == "broken")
        .expect("broken's status");
    let message = &broken.parents[0].message;
    assert!(!broken.parents[0].accepted);
    for named in [
        "metadata.annotations[plexus.io/fault-abort-status]: \"200\" is not an HTTP error status",
        "metadata.annotations[plexus.io/fault-delay-percent]: \"x\" is not a percentage",
    ] {
        assert!(message.contains(named), "{named} not in {message}");
    }
}

#[tokio::test]
async fn unknown_targets_are_not_meshed_and_bad_ones_refused() {
    let index = SharedIndex::new(IndexConfig::default());
    let mut client = start(index.clone()).await;
    for target in ["nothing:80", "api.example.com:443", "10.1.2.3:80"] {
        let update = next(&mut watch(&mut client, target).await).await;
        assert!(update.not_meshed && update.snapshot, "{target}");
    }
    let status = client
        .watch(WatchRequest {
            target: "no-port".to_string(),
            ..WatchRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn server_policy_stream() {
    let index = SharedIndex::new(IndexConfig::default());
    let mut client = start(index.clone()).await;
    let mut stream = client
        .watch_server(ServerRequest {
            namespace: "shop".into(),
            pod: "web-1".into(),
            service_account: "web".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(BOUND, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.mtls_mode, "permissive");
    index.lock().apply(
        serde_json::from_value::<k8s_openapi::api::core::v1::Namespace>(
            json!({"metadata": {"name": "shop", "annotations": {"plexus.io/mtls-mode": "strict"}}}),
        )
        .unwrap(),
    );
    let second = tokio::time::timeout(BOUND, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.mtls_mode, "strict");
}

#[tokio::test]
async fn a_slow_watcher_skips_to_the_latest_and_holds_up_no_one() {
    let index = SharedIndex::new(IndexConfig::default());
    index.lock().apply(service());
    let mut client = start(index.clone()).await;
    let mut slow = watch(&mut client, "web:80").await;
    let mut fast = watch(&mut client, "web.shop.svc.cluster.local:80").await;
    next(&mut slow).await;
    next(&mut fast).await;

    // 200 changes while `slow` reads nothing; `fast` keeps up with each.
    let mut ips = Vec::new();
    for i in 1..=200u32 {
        ips.push(format!("10.0.{}.{}", i / 250, i % 250 + 1));
        index.lock().apply(slice(&ips));
        let mut seen = endpoint_count(&next(&mut fast).await);
        while seen != Some(ips.len()) {
            seen = endpoint_count(&next(&mut fast).await);
        }
    }
    // The slow one then reaches the latest state in far fewer than 200 messages.
    let mut messages = 0;
    loop {
        messages += 1;
        if endpoint_count(&next(&mut slow).await) == Some(200) {
            break;
        }
        assert!(
            messages < 200,
            "the slow watcher replayed every intermediate state"
        );
    }
}

#[tokio::test]
async fn control_frame_floods_are_closed_by_the_keepalive_and_quiet_watches_are_not() {
    let index = SharedIndex::new(IndexConfig::default());
    index.lock().apply(service());
    // Shorter than the binary's, so the test waits seconds, not tens of them;
    // the same code path either way.
    let keep_alive = KeepAlive {
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
    };
    let addr = serve_with(index.clone(), keep_alive).await;
    let mut client = connect(addr).await;
    let mut quiet = watch(&mut client, "web:80").await;
    assert!(next(&mut quiet).await.snapshot);

    // h2 answers every PING and SETTINGS (or stalls once the socket is
    // full); the keep-alive ping goes unanswered and closes the connection.
    let bound = keep_alive.bound() * 2;
    let ping = frame(PING, 0, 0, b"flooding");
    let settings = frame(SETTINGS, 0, 0, &[]);
    let (pings, settings) = tokio::join!(
        flood(addr, &ping, 200_000, bound),
        flood(addr, &settings, 200_000, bound)
    );
    for flooded in [pings, settings] {
        // An orderly close ends with GOAWAY; a reset (replies unread) has none to check.
        if flooded.end.is_ok() {
            let frames = frames(&flooded.bytes);
            let last = frames.last().expect("frames");
            assert_eq!((last.kind, last.error_code()), (GOAWAY, Some(NO_ERROR)));
        }
    }

    // The watch, quiet for longer than the keep-alive's bound, still gets changes.
    index.lock().apply(slice(&["10.0.0.1".to_string()]));
    assert_eq!(endpoint_count(&next(&mut quiet).await), Some(1));
}
