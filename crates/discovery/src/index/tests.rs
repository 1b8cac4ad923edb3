//! The index driven directly with objects built in the test.

use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use plexus_api::v1::{Backend, RateLimit, Target};
use serde_json::{Value, json};

use super::*;

fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("test object")
}

fn service(ns: &str, name: &str, ip: &str, annotations: Value) -> Service {
    from(json!({
        "metadata": {"namespace": ns, "name": name, "annotations": annotations},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "grpc", "port": 9090, "appProtocol": "kubernetes.io/h2c"},
        ]},
    }))
}

/// The Service `shop/web` on 10.96.0.10 with `annotations`.
fn web(annotations: Value) -> Service {
    service("shop", "web", "10.96.0.10", annotations)
}

/// A slice of `service` listing (ip, pod, ready, terminating) on port name http -> 8080.
fn slice(
    ns: &str,
    name: &str,
    service: &str,
    endpoints: &[(&str, &str, bool, bool)],
) -> EndpointSlice {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, pod, ready, terminating)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": true, "terminating": terminating},
                "zone": "zone-a",
                "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
            })
        })
        .collect();
    from(json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 9090}],
        "endpoints": endpoints,
    }))
}

/// The slice `shop/web-a` of `web`: its pod `web-1` at 10.0.0.1, ready.
fn web_a() -> EndpointSlice {
    slice(
        "shop",
        "web-a",
        "web",
        &[("10.0.0.1", "web-1", true, false)],
    )
}

fn pod(ns: &str, name: &str, ip: &str, sa: &str, meshed: bool) -> Pod {
    let containers = if meshed {
        json!([{"name": "app"}, {"name": "plexus-proxy"}])
    } else {
        json!([{"name": "app"}])
    };
    from(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"serviceAccountName": sa, "containers": containers},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running",
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }))
}

fn route(ns: &str, name: &str, created: &str, parent_ns: Option<&str>, rules: Value) -> HttpRoute {
    from(json!({
        "metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "namespace": parent_ns, "port": 80}],
            "rules": rules,
        },
    }))
}

fn index() -> Index {
    Index::new(IndexConfig::default())
}

fn meshed_target(index: &mut Index, target: &str, ctx: &str) -> MeshedTarget {
    let view = index.resolve(target, ctx).expect("parses");
    view.meshed
        .clone()
        .unwrap_or_else(|| panic!("{target} is not meshed"))
}

fn default_backend(target: &MeshedTarget) -> Backend {
    target.backends.value.backends[&target.routes.value.default_backend].clone()
}

/// The resilience of `web:80`'s default backend, as `shop` sees it.
fn web_resilience(index: &mut Index) -> plexus_api::v1::Resilience {
    default_backend(&meshed_target(index, "web:80", "shop"))
        .resilience
        .expect("resilience")
}

/// The names of the HTTP routes `target` has for a client in `shop`.
fn route_names(index: &mut Index, target: &str) -> Vec<String> {
    meshed_target(index, target, "shop")
        .routes
        .value
        .http
        .iter()
        .map(|r| r.name.clone())
        .collect()
}

fn addresses(backend: &Backend) -> Vec<(String, bool)> {
    backend
        .endpoints
        .iter()
        .map(|e| (e.address.clone(), e.ready))
        .collect()
}

#[test]
fn endpoint_slices_of_a_service_merge() {
    let mut index = index();
    index.apply(web(json!({})));
    index.apply(web_a());
    index.apply(slice(
        "shop",
        "web-b",
        "web",
        &[
            ("10.0.0.2", "web-2", true, false),
            ("10.0.0.1", "web-1", true, false),
        ],
    ));

    let target = meshed_target(&mut index, "web.shop.svc.cluster.local:80", "");
    assert_eq!(target.name, "web.shop.svc.cluster.local:80");
    assert_eq!(
        addresses(&default_backend(&target)),
        [
            ("10.0.0.1:8080".to_string(), true),
            ("10.0.0.2:8080".to_string(), true)
        ]
    );

    index.delete::<EndpointSlice>(&ObjectRef::new("shop", "web-b"));
    let target = meshed_target(&mut index, "web.shop.svc.cluster.local:80", "");
    assert_eq!(
        addresses(&default_backend(&target)),
        [("10.0.0.1:8080".to_string(), true)]
    );
}

#[test]
fn terminating_endpoints_stay_listed_not_ready() {
    let mut index = index();
    index.apply(web(json!({})));
    index.apply(slice(
        "shop",
        "web-a",
        "web",
        &[
            ("10.0.0.1", "web-1", true, false),
            ("10.0.0.2", "web-2", false, true),
        ],
    ));
    let target = meshed_target(&mut index, "web.shop:80", "other");
    assert_eq!(
        addresses(&default_backend(&target)),
        [
            ("10.0.0.1:8080".to_string(), true),
            ("10.0.0.2:8080".to_string(), false)
        ]
    );
    assert_eq!(default_backend(&target).endpoints[0].zone, "zone-a");
}

#[test]
fn endpoints_carry_identity_when_meshed() {
    let mut index = index();
    index.apply(web(json!({})));
    index.apply(slice(
        "shop",
        "web-a",
        "web",
        &[
            ("10.0.0.1", "web-1", true, false),
            ("10.0.0.2", "web-2", true, false),
        ],
    ));
    index.apply(pod("shop", "web-1", "10.0.0.1", "web-sa", true));
    index.apply(pod("shop", "web-2", "10.0.0.2", "web-sa", false));

    let backend = default_backend(&meshed_target(&mut index, "web:80", "shop"));
    let e1 = &backend.endpoints[0];
    assert!(e1.meshed);
    assert_eq!(e1.identity, "spiffe://cluster.local/ns/shop/sa/web-sa");
    assert_eq!(e1.pod, "web-1");
    assert!(!backend.endpoints[1].meshed);
    assert_eq!(backend.endpoints[1].identity, "");

    // The namespace's inject annotation makes its pods meshed.
    index.apply(from::<Namespace>(json!({
        "metadata": {"name": "shop", "annotations": {"plexus.io/inject": "enabled"}},
    })));
    let backend = default_backend(&meshed_target(&mut index, "web:80", "shop"));
    assert!(backend.endpoints[1].meshed);
}

#[test]
fn cluster_ip_and_pod_ip_resolve() {
    let mut index = index();
    index.apply(web(json!({})));
    index.apply(pod("shop", "web-1", "10.0.0.1", "web-sa", true));

    assert_eq!(
        meshed_target(&mut index, "10.96.0.10:80", "").name,
        "web.shop.svc.cluster.local:80"
    );
    let by_pod = meshed_target(&mut index, "10.0.0.1:8080", "");
    assert_eq!(by_pod.name, "10.0.0.1:8080");
    let endpoint = &default_backend(&by_pod).endpoints[0];
    assert_eq!(
        endpoint.identity,
        "spiffe://cluster.local/ns/shop/sa/web-sa"
    );
    assert!(endpoint.ready);

    // Unknown IPs, unknown names and undeclared ports are not meshed.
    for target in [
        "10.9.9.9:80",
        "10.96.0.10:81",
        "nope.shop:80",
        "api.example.com:443",
    ] {
        assert!(
            index.resolve(target, "shop").unwrap().meshed.is_none(),
            "{target}"
        );
    }
}

#[test]
fn protocol_hints_from_app_protocol_and_opaque_ports() {
    let mut index = index();
    index.apply(web(json!({"plexus.io/opaque-ports": "80"})));
    let protocol = |index: &mut Index, t: &str| {
        meshed_target(index, t, "shop")
            .protocol
            .value
            .protocol
            .clone()
    };
    assert_eq!(protocol(&mut index, "web:80"), "opaque");
    assert_eq!(protocol(&mut index, "web:9090"), "http2");
    index.apply(web(json!({})));
    assert_eq!(protocol(&mut index, "web:80"), "detect");
}

#[test]
fn resilience_annotations_reach_the_backend_and_bad_values_are_reported() {
    let mut index = index();
    index.apply(web(
        json!({"plexus.io/max-concurrency": "50", "plexus.io/retry-budget-ratio": "lots"}),
    ));
    let resilience = web_resilience(&mut index);
    assert_eq!(resilience.concurrency.unwrap().max_in_flight, 50);
    assert_eq!(resilience.retry_budget, None);
    let problems = index.problems();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, "Service");
    assert_eq!(problems[0].object, "shop/web");
    assert_eq!(
        problems[0].field,
        "metadata.annotations[plexus.io/retry-budget-ratio]"
    );

    // Fixing the annotation clears the problem.
    index.apply(web(json!({})));
    assert!(index.problems().is_empty());
}

#[test]
fn success_rate_annotations_reach_the_failure_accrual_and_stray_tunings_are_named() {
    let mut index = index();
    index.apply(web(json!({
        "plexus.io/failure-accrual-success-rate": "enabled",
        "plexus.io/failure-accrual-success-rate-threshold": "0.8",
        "plexus.io/failure-accrual-success-rate-min-endpoints": "3",
    })));
    let accrual = web_resilience(&mut index).failure_accrual.expect("accrual");
    let success_rate = accrual.success_rate.expect("success rate on");
    assert_eq!(success_rate.threshold, Some(0.8));
    assert_eq!(success_rate.min_endpoints, Some(3));
    assert_eq!(accrual.consecutive_failures, None, "the default stays");

    // A tuning without the switch is refused: the served version stays.
    index.apply(web(
        json!({"plexus.io/failure-accrual-success-rate-interval": "5s"}),
    ));
    let served = web_resilience(&mut index).failure_accrual.expect("accrual");
    assert_eq!(served.success_rate.and_then(|s| s.threshold), Some(0.8));
    let refusal = &index.refusals()[0];
    let fields: Vec<&str> = refusal.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["metadata.annotations[plexus.io/failure-accrual-success-rate-interval]"]
    );
}

#[test]
fn routes_are_ordered_oldest_first_then_by_name() {
    let mut index = index();
    index.apply(web(json!({})));
    let rules = json!([{"backendRefs": [{"name": "web", "port": 80}]}]);
    index.apply(route(
        "shop",
        "zeta",
        "2026-01-01T00:00:00Z",
        None,
        rules.clone(),
    ));
    index.apply(route(
        "shop",
        "beta",
        "2026-01-02T00:00:00Z",
        None,
        rules.clone(),
    ));
    index.apply(route("shop", "alpha", "2026-01-02T00:00:00Z", None, rules));

    assert_eq!(
        route_names(&mut index, "web:80"),
        ["shop/zeta", "shop/alpha", "shop/beta"]
    );
    // Routes attach to port 80 only.
    assert!(route_names(&mut index, "web:9090").is_empty());
}

#[test]
fn route_rules_become_matches_weights_timeouts_and_retries() {
    let mut index = index();
    index.apply(web(json!({})));
    index.apply(service("shop", "web-canary", "10.96.0.11", json!({})));
    index.apply(route(
        "shop",
        "split",
        "2026-01-01T00:00:00Z",
        None,
        json!([{
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                         "headers": [{"name": "x-canary", "value": "1"}]}],
            "backendRefs": [{"name": "web", "port": 80, "weight": 90}, {"name": "web-canary", "port": 80, "weight": 10}],
            "timeouts": {"request": "10s", "backendRequest": "500ms"},
            "retry": {"attempts": 2, "codes": [503], "backoff": "100ms"},
        }]),
    ));
    let target = meshed_target(&mut index, "web:80", "shop");
    let rule = &target.routes.value.http[0].rules[0];
    let m = &rule.matches[0];
    assert_eq!(
        m.path
            .as_ref()
            .map(|p| (p.r#type.as_str(), p.value.as_str())),
        Some(("PathPrefix", "/api"))
    );
    assert_eq!(m.method, "GET");
    assert_eq!(
        (m.headers[0].r#type.as_str(), m.headers[0].name.as_str()),
        ("Exact", "x-canary")
    );
    let weights: Vec<_> = rule
        .backends
        .iter()
        .map(|b| (b.backend.as_str(), b.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("web.shop.svc.cluster.local:80", Some(90)),
            ("web-canary.shop.svc.cluster.local:80", Some(10))
        ]
    );
    let timeouts = rule.timeouts.unwrap();
    assert_eq!(
        (timeouts.request_ms, timeouts.backend_request_ms),
        (10_000, 500)
    );
    let retry = rule.retry.clone().unwrap();
    assert_eq!(
        (retry.attempts, retry.codes, retry.backoff_base_ms),
        (3, vec![503], 100)
    );
    // Both backends are in the table.
    assert!(
        target
            .backends
            .value
            .backends
            .contains_key("web-canary.shop.svc.cluster.local:80")
    );
}

#[test]
fn parent_in_another_namespace_is_refused() {
    let mut index = index();
    index.apply(web(json!({})));
    index.apply(route(
        "other",
        "sneaky",
        "2026-01-01T00:00:00Z",
        Some("shop"),
        json!([{"backendRefs": [{"name": "web", "port": 80}]}]),
    ));
    assert!(route_names(&mut index, "web:80").is_empty());
    let statuses = index.route_statuses();
    assert_eq!(statuses.len(), 1);
    let parent = &statuses[0].parents[0];
    assert!(!parent.accepted);
    assert_eq!(parent.reason, "NotAllowedByParent");
    assert!(
        parent.message.contains("another namespace"),
        "{}",
        parent.message
    );
    assert_eq!(index.problems()[0].object, "other/sneaky");
}

#[test]
fn invalid_route_is_not_accepted_and_names_the_field() {
    let mut index = index();
    index.apply(web(json!({})));
    index.apply(route(
        "shop",
        "broken",
        "2026-01-01T00:00:00Z",
        None,
        json!([{"backendRefs": [{"name": "web", "port": 80}], "timeouts": {"request": "5 seconds"}}]),
    ));
    index.apply(route(
        "shop",
        "good",
        "2026-01-01T00:00:00Z",
        None,
        json!([{"backendRefs": [{"name": "web", "port": 80}]}]),
    ));
    assert_eq!(route_names(&mut index, "web:80"), ["shop/good"]);
    let broken = index
        .route_statuses()
        .into_iter()
        .find(|s| s.route.name == "broken")
        .unwrap();
    assert!(!broken.parents[0].accepted);
    assert_eq!(broken.parents[0].reason, "UnsupportedValue");
    let problem = &index.problems()[0];
    assert_eq!(
        (problem.object.as_str(), problem.field.as_str()),
        ("shop/broken", "spec.rules[0].timeouts.request")
    );
    assert!(
        broken.parents[0]
            .message
            .starts_with("spec.rules[0].timeouts.request:"),
        "{}",
        broken.parents[0].message
    );
}

#[test]
fn reset_removes_what_the_relist_lacks() {
    let mut index = index();
    index.apply(web(json!({})));
    index.apply(service("shop", "old", "10.96.0.11", json!({})));
    index.reset(vec![web(json!({}))]);
    assert_eq!(index.sizes().services, 1);
    assert!(index.resolve("10.96.0.11:80", "").unwrap().meshed.is_none());
    assert!(index.resolve("old:80", "shop").unwrap().meshed.is_none());
}

#[tokio::test]
async fn watchers_get_only_the_parts_that_changed() {
    let mut index = index();
    index.apply(web(json!({})));
    let mut short = index.watch_target("web:80", "shop").unwrap();
    let mut ip = index.watch_target("10.96.0.10:80", "").unwrap();
    let mut full = index
        .watch_target("web.shop.svc.cluster.local:80", "")
        .unwrap();
    assert_eq!(
        index.sizes().target_watches,
        2,
        "names of one Service share a watch"
    );

    let first = short.borrow_and_update().clone();
    let snapshot = first.update_since(None).unwrap();
    assert!(snapshot.snapshot && !snapshot.not_meshed);

    index.apply(web_a());
    for rx in [&mut short, &mut ip, &mut full] {
        assert!(rx.has_changed().unwrap());
    }
    let second = short.borrow_and_update().clone();
    let delta = second.update_since(Some(&first)).unwrap();
    assert!(!delta.snapshot);
    let Target {
        protocol,
        routes,
        backends,
        ..
    } = delta.target.unwrap();
    assert!(protocol.is_none() && routes.is_none());
    assert_eq!(backends.unwrap().backends.len(), 1);

    // A change that does not alter the view wakes no one.
    index.apply(web_a());
    index.apply(service("shop", "unrelated", "10.96.0.99", json!({})));
    assert!(!short.has_changed().unwrap());
}

#[tokio::test]
async fn unknown_target_becomes_meshed_when_its_service_appears() {
    let mut index = index();
    let mut rx = index.watch_target("web.shop:80", "").unwrap();
    let first = rx.borrow_and_update().clone();
    let update = first.update_since(None).unwrap();
    assert!(update.not_meshed && update.snapshot);

    index.apply(web(json!({})));
    assert!(rx.has_changed().unwrap());
    let second = rx.borrow_and_update().clone();
    let update = second.update_since(Some(&first)).unwrap();
    assert!(update.snapshot && !update.not_meshed);

    index.delete::<Service>(&ObjectRef::new("shop", "web"));
    let third = rx.borrow_and_update().clone();
    assert!(third.update_since(Some(&second)).unwrap().not_meshed);
}

#[tokio::test]
async fn pod_changes_reach_the_targets_they_are_endpoints_of() {
    let mut index = index();
    index.apply(web(json!({})));
    index.apply(web_a());
    let mut rx = index.watch_target("web:80", "shop").unwrap();
    rx.borrow_and_update();
    index.apply(pod("shop", "web-1", "10.0.0.1", "web-sa", true));
    assert!(rx.has_changed().unwrap());
    let view = rx.borrow_and_update().clone();
    assert!(default_backend(view.meshed.as_ref().unwrap()).endpoints[0].meshed);
}

#[tokio::test]
async fn server_policy_follows_namespace_and_pod_annotations() {
    let mut index = index();
    let mut rx = index.watch_server("shop", "web-1");
    assert_eq!(rx.borrow_and_update().mtls_mode, "permissive");

    index.apply(from::<Namespace>(json!({
        "metadata": {"name": "shop", "annotations": {"plexus.io/mtls-mode": "strict", "plexus.io/opaque-ports": "3306"}},
    })));
    assert!(rx.has_changed().unwrap());
    let policy = rx.borrow_and_update().clone();
    assert_eq!(
        (policy.mtls_mode.as_str(), policy.opaque_ports.as_slice()),
        ("strict", &[3306][..])
    );

    let mut p = pod("shop", "web-1", "10.0.0.1", "web-sa", true);
    p.metadata.annotations = Some(
        [(
            "plexus.io/allowed-clients".to_string(),
            "shop/client".to_string(),
        )]
        .into_iter()
        .collect(),
    );
    index.apply(p);
    let policy = rx.borrow_and_update().clone();
    assert_eq!(
        policy.allowed_identities,
        ["spiffe://cluster.local/ns/shop/sa/client"]
    );
    assert_eq!(policy.mtls_mode, "strict");
}

#[tokio::test]
async fn a_rate_limit_annotation_reaches_the_server_policy_and_the_pods_wins() {
    let mut index = index();
    let mut rx = index.watch_server("shop", "web-1");
    assert_eq!(rx.borrow_and_update().rate_limit, None);

    index.apply(from::<Namespace>(json!({
        "metadata": {"name": "shop", "annotations": {"plexus.io/rate-limit": "600/m"}},
    })));
    assert_eq!(
        rx.borrow_and_update().rate_limit,
        Some(RateLimit {
            requests: 600,
            period_seconds: 60,
            burst: 10,
            per_identity: false
        })
    );

    let mut p = pod("shop", "web-1", "10.0.0.1", "web-sa", true);
    p.metadata.annotations = Some(
        [
            ("plexus.io/rate-limit", "5/s"),
            ("plexus.io/rate-limit-burst", "20"),
            ("plexus.io/rate-limit-per-identity", "enabled"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    index.apply(p.clone());
    assert_eq!(
        rx.borrow_and_update().rate_limit,
        Some(RateLimit {
            requests: 5,
            period_seconds: 1,
            burst: 20,
            per_identity: true
        })
    );

    // A bad value refuses the pod's new version, naming the annotation; its last good limit stays.
    p.metadata.annotations = Some(
        [("plexus.io/rate-limit".to_string(), "fast".to_string())]
            .into_iter()
            .collect(),
    );
    index.apply(p);
    assert_eq!(rx.borrow_and_update().rate_limit.unwrap().requests, 5);
    let refusals = index.refusals();
    assert_eq!(
        refusals[0].problems[0].field, "metadata.annotations[plexus.io/rate-limit]",
        "{refusals:?}"
    );
}

#[test]
fn dropped_watchers_are_swept() {
    let mut index = index();
    let rx = index.watch_target("web:80", "shop").unwrap();
    let server = index.watch_server("shop", "web-1");
    assert!(!index.sweep_watches(), "both watches are held");
    assert_eq!(
        (index.sizes().target_watches, index.sizes().server_watches),
        (1, 1)
    );
    drop((rx, server));
    assert!(index.sweep_watches(), "the sweep released them");
    assert_eq!(
        (index.sizes().target_watches, index.sizes().server_watches),
        (0, 0)
    );
    assert!(!index.sweep_watches(), "nothing left to release");
}

#[test]
fn meshed_identities_list_meshed_pods_only() {
    let mut index = index();
    index.apply(pod("shop", "web-1", "10.0.0.1", "web-sa", true));
    index.apply(pod("shop", "web-2", "10.0.0.2", "web-sa", true));
    index.apply(pod("shop", "db-1", "10.0.0.3", "db", false));
    let ids: Vec<String> = index.meshed_identities().into_iter().collect();
    assert_eq!(ids, ["spiffe://cluster.local/ns/shop/sa/web-sa"]);
}

#[test]
fn grpc_routes_attach_and_bad_regexes_are_refused() {
    let mut index = index();
    index.apply(web(json!({})));
    let grpc = |name: &str, method: Value| -> GrpcRoute {
        from(json!({
            "metadata": {"namespace": "shop", "name": name},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 9090}],
                "rules": [{"matches": [{"method": method}], "backendRefs": [{"name": "web", "port": 9090}]}],
            },
        }))
    };
    index.apply(grpc(
        "orders",
        json!({"type": "Exact", "service": "shop.Orders", "method": "Get"}),
    ));
    index.apply(grpc(
        "broken",
        json!({"type": "RegularExpression", "service": "shop.(", "method": "Get"}),
    ));

    let target = meshed_target(&mut index, "web:9090", "shop");
    let routes = &target.routes.value.grpc;
    assert_eq!(routes.len(), 1);
    let m = &routes[0].rules[0].matches[0];
    assert_eq!(
        (m.r#type.as_str(), m.service.as_str(), m.method.as_str()),
        ("Exact", "shop.Orders", "Get")
    );
    let broken = index
        .route_statuses()
        .into_iter()
        .find(|s| s.route.name == "broken")
        .unwrap();
    assert!(!broken.parents[0].accepted);
    assert!(
        broken.parents[0]
            .message
            .starts_with("spec.rules[0].matches[0].method.service:"),
        "{}",
        broken.parents[0].message
    );
}

#[test]
fn grpc_route_retry_annotations_reach_every_rule_and_bad_ones_are_named() {
    let mut index = index();
    index.apply(web(json!({})));
    let grpc = |name: &str, annotations: Value| -> GrpcRoute {
        from(json!({
            "metadata": {"namespace": "shop", "name": name, "annotations": annotations},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 9090}],
                "rules": [
                    {"matches": [{"method": {"service": "shop.Orders"}}], "backendRefs": [{"name": "web", "port": 9090}]},
                    {"backendRefs": [{"name": "web", "port": 9090}]},
                ],
            },
        }))
    };
    index.apply(grpc(
        "orders",
        json!({"plexus.io/retry-grpc-codes": "unavailable,RESOURCE_EXHAUSTED", "plexus.io/retry-attempts": "3"}),
    ));
    index.apply(grpc(
        "broken",
        json!({"plexus.io/retry-grpc-codes": "unavailable,sometimes"}),
    ));

    let target = meshed_target(&mut index, "web:9090", "shop");
    let routes = &target.routes.value.grpc;
    assert_eq!(routes.len(), 1, "the broken route is refused");
    for rule in &routes[0].rules {
        let retry = rule.retry.as_ref().expect("a retry policy on every rule");
        assert_eq!(retry.grpc_codes, [14, 8]);
        assert_eq!(retry.attempts, 4);
    }
    let broken = index
        .route_statuses()
        .into_iter()
        .find(|s| s.route.name == "broken")
        .unwrap();
    assert!(!broken.parents[0].accepted);
    assert!(
        broken.parents[0]
            .message
            .starts_with("metadata.annotations[plexus.io/retry-grpc-codes]:"),
        "{}",
        broken.parents[0].message
    );
}

/// The canary split of `route`, version `generation` of it.
fn split(generation: i64, rules: Value) -> HttpRoute {
    let mut route = route("shop", "split", "2026-01-01T00:00:00Z", None, rules);
    route.metadata.generation = Some(generation);
    route.metadata.resource_version = Some(format!("{}", 100 + generation));
    route
}

/// `web` and `web-canary`, and generation 1 of the split between them.
fn canary_split_served(index: &mut Index) {
    index.apply(web(json!({})));
    index.apply(service("shop", "web-canary", "10.96.0.11", json!({})));
    index.apply(split(
        1,
        json!([{"backendRefs": [{"name": "web", "port": 80, "weight": 50}, {"name": "web-canary", "port": 80, "weight": 50}]}]),
    ));
}

fn backends_of_first_rule(index: &mut Index) -> Vec<String> {
    let target = meshed_target(index, "web:80", "shop");
    target.routes.value.http[0].rules[0]
        .backends
        .iter()
        .map(|b| b.backend.clone())
        .collect()
}

#[test]
fn an_invalid_route_over_a_valid_one_keeps_the_served_split_and_names_every_bad_field() {
    let mut index = index();
    canary_split_served(&mut index);
    let served = backends_of_first_rule(&mut index);
    assert_eq!(served.len(), 2);

    // Generation 2 has three bad fields in two rules.
    index.apply(split(
        2,
        json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "api"}}],
             "backendRefs": [{"name": "web", "port": 80}], "timeouts": {"request": "soon"}},
            {"backendRefs": [{"name": "web-canary"}]},
        ]),
    ));
    assert_eq!(
        backends_of_first_rule(&mut index),
        served,
        "the split stays"
    );
    let refusals = index.refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let refusal = &refusals[0];
    assert_eq!(
        (
            refusal.served.as_ref().map(|v| v.generation),
            refusal.refused.generation
        ),
        (Some(1), 2)
    );
    let fields: Vec<&str> = refusal.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].matches[0].path.value",
            "spec.rules[0].timeouts.request",
            "spec.rules[1].backendRefs[0].port"
        ]
    );
    assert!(index.problems().is_empty(), "the served version has none");

    // The status: still accepted (by generation 1), the refusal named.
    let status = index.route_statuses().remove(0);
    assert_eq!(
        (status.generation, status.served_generation),
        (Some(2), Some(1))
    );
    let parent = &status.parents[0];
    assert!(parent.accepted);
    assert!(
        parent
            .message
            .starts_with("Fall Back: generation 2 refused ("),
        "{}",
        parent.message
    );
    for field in fields {
        assert!(parent.message.contains(field), "{}", parent.message);
    }

    // A valid generation 3 applies and clears the refusal.
    index.apply(split(
        3,
        json!([{"backendRefs": [{"name": "web-canary", "port": 80}]}]),
    ));
    assert_eq!(
        backends_of_first_rule(&mut index),
        ["web-canary.shop.svc.cluster.local:80"]
    );
    assert!(index.refusals().is_empty());
    let status = index.route_statuses().remove(0);
    assert_eq!((status.refused, status.served_generation), (None, Some(3)));
}

#[test]
fn a_new_route_with_bad_fields_is_refused_naming_them_all() {
    let mut index = index();
    index.apply(web(json!({})));
    index.apply(split(
        1,
        json!([{"matches": [{"headers": [{"type": "RegularExpression", "name": "x", "value": "("}]}],
                "backendRefs": [{"name": "web", "port": 80, "weight": -1}],
                "retry": {"codes": [200, 503, 700]}}]),
    ));
    assert!(
        route_names(&mut index, "web:80").is_empty(),
        "nothing served"
    );
    assert!(
        index.refusals().is_empty(),
        "nothing to fall back to: not a refusal"
    );
    let fields: Vec<String> = index.problems().into_iter().map(|p| p.field).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].matches[0].headers[0].value",
            "spec.rules[0].backendRefs[0].weight",
            "spec.rules[0].retry.codes[0]",
            "spec.rules[0].retry.codes[2]"
        ]
    );
    let parent = &index.route_statuses()[0].parents[0];
    assert!(!parent.accepted);
    assert_eq!(
        parent.message.matches("; ").count(),
        3,
        "{}",
        parent.message
    );
}

#[test]
fn an_unreadable_route_keeps_the_served_one_and_is_forgotten_with_it() {
    let mut index = index();
    canary_split_served(&mut index);
    let mut meta = split(2, json!([])).metadata;
    meta.creation_timestamp = None;
    index.refuse::<HttpRoute>(Unreadable {
        kind: Kind::HttpRoute,
        meta,
        problems: vec![Problem::new(
            Kind::HttpRoute,
            &ObjectRef::new("shop", "split"),
            "spec.rules[0].filters[0].type",
            "unknown variant `RateLimit`",
        )],
        parent_refs: vec![json!({"group": "", "kind": "Service", "name": "web", "port": 80})],
        status_parents: Vec::new(),
    });
    assert_eq!(
        backends_of_first_rule(&mut index).len(),
        2,
        "the split stays"
    );
    let status = index.route_statuses().remove(0);
    assert!(status.parents[0].accepted, "{status:?}");
    assert!(status.refused.unwrap().contains("RateLimit"));
    assert_eq!(
        index.refusals()[0].served.as_ref().map(|v| v.generation),
        Some(1)
    );

    // Deleting the route deletes it, refusal and all.
    index.delete::<HttpRoute>(&ObjectRef::new("shop", "split"));
    assert!(route_names(&mut index, "web:80").is_empty());
    assert!(index.refusals().is_empty() && index.route_statuses().is_empty());
}

#[test]
fn a_relist_forgets_refused_objects_it_no_longer_lists() {
    let mut index = index();
    let unreadable = |name: &str| Unreadable {
        kind: Kind::Service,
        meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            namespace: Some("shop".into()),
            name: Some(name.into()),
            ..Default::default()
        },
        problems: vec![Problem::new(
            Kind::Service,
            &ObjectRef::new("shop", name),
            "spec.ports[0].port",
            "invalid type",
        )],
        parent_refs: Vec::new(),
        status_parents: Vec::new(),
    };
    index.apply(web(json!({})));
    index.relist(
        Vec::<Service>::new(),
        vec![unreadable("web"), unreadable("new")],
    );
    assert_eq!(index.sizes().services, 1, "listed, unreadable: kept");
    assert_eq!(index.refusals().len(), 2);
    index.relist(vec![web(json!({}))], Vec::new());
    assert!(
        index.refusals().is_empty(),
        "read again, and gone from the list"
    );
}

#[tokio::test]
async fn a_pod_keeps_its_served_annotations_while_its_readiness_follows() {
    let mut index = index();
    index.apply(web(json!({})));
    index.apply(web_a());
    let annotated = |mtls: &str, ready: &str| {
        let mut p = pod("shop", "web-1", "10.0.0.1", "web", true);
        p.metadata.annotations =
            Some([("plexus.io/mtls-mode".to_string(), mtls.to_string())].into());
        if let Some(status) = p.status.as_mut() {
            status.conditions = Some(vec![from(json!({"type": "Ready", "status": ready}))]);
        }
        p
    };
    index.apply(annotated("strict", "True"));
    let mut rx = index.watch_server("shop", "web-1");
    assert_eq!(rx.borrow_and_update().mtls_mode, "strict");

    // A typo must not turn the pod permissive; that it is not ready still counts.
    index.apply(annotated("strct", "False"));
    assert_eq!(rx.borrow_and_update().mtls_mode, "strict");
    let view = index.resolve("10.0.0.1:8080", "").unwrap();
    let endpoint =
        &view.meshed.as_ref().unwrap().backends.value.backends["10.0.0.1:8080"].endpoints[0];
    assert!(!endpoint.ready, "the pod's readiness is news");
    let refusal = &index.refusals()[0];
    assert_eq!(
        (refusal.kind, refusal.problems[0].field.as_str()),
        (Kind::Pod, "metadata.annotations[plexus.io/mtls-mode]")
    );
}

#[test]
fn a_service_with_a_bad_new_annotation_keeps_its_served_version() {
    let mut index = index();
    index.apply(web(json!({"plexus.io/max-concurrency": "50"})));
    index.apply(web(
        json!({"plexus.io/max-concurrency": "fifty", "plexus.io/load-balancer": "random"}),
    ));
    let resilience = web_resilience(&mut index);
    assert_eq!(resilience.concurrency.unwrap().max_in_flight, 50);
    assert_eq!(
        index.refusals()[0].problems.len(),
        2,
        "both bad annotations named"
    );
}

#[test]
fn a_partly_valid_version_delivered_again_is_not_refused() {
    let mut index = index();
    let partly = || web(json!({"plexus.io/load-balancer": "random"}));
    index.apply(partly());
    // A relist, or a reload of the file: the same version again.
    index.reset(vec![partly()]);
    assert!(index.refusals().is_empty(), "{:?}", index.refusals());
    assert_eq!(index.problems().len(), 1, "its bad field is still named");

    // Another bad version is refused; the served one delivered again clears that.
    index.apply(web(json!({"plexus.io/max-queue": "many"})));
    assert_eq!(index.refusals().len(), 1);
    index.apply(partly());
    assert!(index.refusals().is_empty());
}
