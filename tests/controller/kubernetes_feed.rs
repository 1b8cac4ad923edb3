//! The Kubernetes feed against the in-process API server stand-in: initial
//! lists, watch events, bookmarks, a dropped watch, a relist after `410
//! Gone` that removes what was deleted unseen, and the route status written
//! back (`Accepted`, "Fall Back", `ResolvedRefs` as Services and
//! ReferenceGrants come and go), and a Service's balancing annotations in
//! its backend (a bad hash key refused by field).

use plexus_controller::leader::Leadership;
use std::sync::Arc;
use std::time::Duration;

use plexus_discovery::feed::{Readiness, kubernetes};
use plexus_discovery::index::{IndexConfig, SharedIndex, TargetView};
use plexus_tests::apiserver::ApiServer;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const NAMESPACES: &str = "/api/v1/namespaces";
const SERVICES: &str = "/api/v1/services";
const PODS: &str = "/api/v1/pods";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const GRPC_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/grpcroutes";
const REFERENCE_GRANTS: &str = "/apis/gateway.networking.k8s.io/v1beta1/referencegrants";

const BOUND: Duration = Duration::from_secs(30);

fn slice(name: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "shop", "name": name, "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints,
    })
}

fn web_service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "shop", "name": "web"},
           "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}})
}

/// One HTTPRoute rule on `web`, to `web` itself.
fn web_route() -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"namespace": "shop", "name": "web-route"},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                    "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}})
}

/// `web` is served with [`web_route`]'s one rule.
fn routed(view: &TargetView) -> bool {
    view.meshed
        .as_ref()
        .is_some_and(|t| t.routes.value.http.len() == 1)
}

fn endpoints(view: &TargetView) -> Vec<String> {
    let Some(target) = &view.meshed else {
        return Vec::new();
    };
    let mut out: Vec<String> = target.backends.value.backends[&target.name]
        .endpoints
        .iter()
        .map(|e| e.address.clone())
        .collect();
    out.sort();
    out
}

/// Waits until the watched view satisfies `done`.
async fn until(
    rx: &mut watch::Receiver<Arc<TargetView>>,
    what: &str,
    done: impl Fn(&TargetView) -> bool,
) {
    let waited = tokio::time::timeout(BOUND, async {
        loop {
            if done(&rx.borrow_and_update()) {
                return;
            }
            if rx.changed().await.is_err() {
                panic!("watch closed while waiting for {what}");
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "timed out waiting for {what}: {:?}",
        endpoints(&rx.borrow())
    );
}

async fn until_requests(
    api: &ApiServer,
    path: &str,
    what: &str,
    done: impl Fn((usize, usize)) -> bool,
) {
    let waited = tokio::time::timeout(BOUND, async {
        while !done(api.requests(path)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "timed out waiting for {what}: {:?}",
        api.requests(path)
    );
}

/// The feed on `api` into a new index, once it reported its initial lists
/// synced (`stuck` is the failure if it never does), and a watch on the
/// target `web.shop`.
async fn synced_feed(
    api: &ApiServer,
    stuck: &str,
) -> (JoinHandle<()>, watch::Receiver<Arc<TargetView>>) {
    synced_feed_into(api, SharedIndex::new(IndexConfig::default()), stuck).await
}

/// [`synced_feed`] into `index`, which the test reads too.
async fn synced_feed_into(
    api: &ApiServer,
    index: SharedIndex,
    stuck: &str,
) -> (JoinHandle<()>, watch::Receiver<Arc<TargetView>>) {
    let ready = Readiness::default();
    let feed = tokio::spawn(kubernetes::run(
        api.client(),
        index.clone(),
        ready.clone(),
        Leadership::sole().receiver(),
    ));
    let synced = tokio::time::timeout(BOUND, async {
        while !ready.is_ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(synced.is_ok(), "{stuck}");
    let rx = index
        .lock()
        .watch_target("web.shop.svc.cluster.local:80", "")
        .unwrap();
    (feed, rx)
}

#[tokio::test]
async fn lists_watches_and_relists_into_the_index() {
    let api = ApiServer::start().await;
    api.apply(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    );
    api.apply(SERVICES, web_service());
    api.apply(SLICES, slice("web-a", &["10.0.0.1"]));
    api.apply(
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "shop", "name": "web-1"},
               "spec": {"serviceAccountName": "web", "containers": [{"name": "app"}, {"name": "plexus-proxy"}]},
               "status": {"podIP": "10.0.0.1", "phase": "Running"}}),
    );

    let (feed, mut rx) =
        synced_feed(&api, "the feed never reported its initial lists synced").await;
    for path in [
        NAMESPACES,
        SERVICES,
        PODS,
        SLICES,
        HTTP_ROUTES,
        GRPC_ROUTES,
        REFERENCE_GRANTS,
    ] {
        assert!(api.requests(path).0 >= 1, "{path} was listed");
    }

    until(&mut rx, "the initial endpoint", |v| {
        endpoints(v) == ["10.0.0.1:8080"]
    })
    .await;

    // A watch event, and a route.
    until_requests(&api, SLICES, "the slice watch", |(_, watches)| watches >= 1).await;
    api.apply(SLICES, slice("web-a", &["10.0.0.1", "10.0.0.2"]));
    until(&mut rx, "a MODIFIED slice", |v| endpoints(v).len() == 2).await;
    api.bookmark(SLICES, "discovery.k8s.io/v1", "EndpointSlice");
    api.apply(HTTP_ROUTES, web_route());
    until(&mut rx, "the route", routed).await;

    // A dropped watch: the feed watches again from where it was and misses nothing.
    let (_, watches_before) = api.requests(SLICES);
    api.drop_watches(SLICES);
    until_requests(&api, SLICES, "a new watch", |(_, w)| w > watches_before).await;
    api.apply(SLICES, slice("web-b", &["10.0.0.3"]));
    until(&mut rx, "a slice added after the reconnect", |v| {
        endpoints(v).len() == 3
    })
    .await;

    // 410 Gone: the feed relists, and what was deleted unseen disappears.
    let (lists_before, _) = api.requests(SLICES);
    api.delete_unseen(SLICES, "shop", "web-a");
    api.expire(SLICES);
    until(&mut rx, "the relist", |v| endpoints(v) == ["10.0.0.3:8080"]).await;
    assert!(api.requests(SLICES).0 > lists_before, "a relist happened");

    // And a DELETED event after the relist.
    until_requests(&api, SLICES, "the watch after the relist", |(_, w)| {
        w > watches_before + 1
    })
    .await;
    api.delete(SLICES, "shop", "web-b");
    until(&mut rx, "the DELETED slice", |v| endpoints(v).is_empty()).await;

    feed.abort();
}

#[tokio::test]
async fn route_status_is_written_once_beside_other_controllers() {
    let api = ApiServer::start().await;
    let refused = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": "other", "name": "consumer", "generation": 2},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "namespace": "shop"}]},
        "status": {"parents": [{"parentRef": {"name": "gw"}, "controllerName": "example.com/gateway", "conditions": []}]},
    });
    api.apply(HTTP_ROUTES, refused);
    let index = SharedIndex::new(IndexConfig::default());
    let feed = tokio::spawn(kubernetes::run(
        api.client(),
        index.clone(),
        Readiness::default(),
        Leadership::sole().receiver(),
    ));

    let written = tokio::time::timeout(BOUND, async {
        loop {
            if let Some(patch) = api.status_patches(HTTP_ROUTES).first() {
                return patch.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the route status is written");
    let parents = written["status"]["parents"].as_array().unwrap();
    assert_eq!(
        parents[0]["controllerName"], "example.com/gateway",
        "others' entries kept"
    );
    let condition = &parents[1]["conditions"][0];
    assert_eq!(condition["type"], "Accepted");
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "NotAllowedByParent");
    assert_eq!(condition["observedGeneration"], 2);

    // Another route's status gets written; the first, already as desired
    // (its MODIFIED event came back), is not written again.
    api.apply(
        HTTP_ROUTES,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"namespace": "shop", "name": "producer"},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}),
    );
    let all = tokio::time::timeout(BOUND, async {
        loop {
            let patches = api.status_patches(HTTP_ROUTES);
            let producer = patches
                .iter()
                .position(|p| p["status"]["parents"][0]["conditions"][0]["status"] == "True");
            if producer.is_some() {
                return patches;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the second route's status is written");
    let consumer_writes = all
        .iter()
        .filter(|p| p["status"]["parents"][1]["conditions"][0]["reason"] == "NotAllowedByParent")
        .count();
    assert_eq!(consumer_writes, 1, "{all:#?}");
    feed.abort();
}

/// Version `generation` of the HTTPRoute `shop/split` with `rules`.
fn split(generation: i64, rules: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"namespace": "shop", "name": "split", "generation": generation},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                    "rules": rules}})
}

/// Until the route `name`'s status, as written back to the API server,
/// satisfies `done`; returns our conditions.
async fn our_conditions(
    api: &ApiServer,
    name: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let found = tokio::time::timeout(BOUND, async {
        loop {
            let object = api.object(HTTP_ROUTES, "shop", name).unwrap_or_default();
            let conditions: Vec<Value> = object["status"]["parents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["controllerName"] == "plexus.io/mesh-controller")
                .flat_map(|p| p["conditions"].as_array().cloned().unwrap_or_default())
                .collect();
            if done(&conditions) {
                return conditions;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "timed out waiting for {what}: {:#}",
            api.object(HTTP_ROUTES, "shop", name).unwrap_or_default()
        )
    })
}

fn condition<'a>(conditions: &'a [Value], kind: &str) -> Option<&'a Value> {
    conditions.iter().find(|c| c["type"] == kind)
}

#[tokio::test]
async fn a_bad_new_route_generation_falls_back_to_the_served_one_and_its_status_says_why() {
    let api = ApiServer::start().await;
    api.apply(SERVICES, web_service());
    api.apply(
        HTTP_ROUTES,
        split(1, json!([{"backendRefs": [{"name": "web", "port": 80}]}])),
    );
    // A route this build's types cannot read (a filter type from a newer
    // Gateway API), listed from the start: it must not hold up the lists.
    let mut newer = split(
        1,
        json!([{"filters": [{"type": "RateLimit"}], "backendRefs": [{"name": "web", "port": 80}]}]),
    );
    newer["metadata"]["name"] = json!("newer");
    api.apply(HTTP_ROUTES, newer);

    let (feed, mut rx) = synced_feed(&api, "an unreadable route held up the initial lists").await;
    let routes = |v: &TargetView| v.meshed.as_ref().map_or(0, |t| t.routes.value.http.len());
    until(&mut rx, "the route served", |v| routes(v) == 1).await;
    let newer = our_conditions(&api, "newer", "the unreadable route refused", |c| {
        !c.is_empty()
    })
    .await;
    let accepted = condition(&newer, "Accepted").unwrap();
    assert_eq!(accepted["status"], "False");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("spec.rules[0].filters[0].type"),
        "{accepted:#}"
    );

    // Generation 2 cannot be read; generation 3 reads, with two bad fields.
    // Each time generation 1 stays in force, and the status says why.
    api.apply(
        HTTP_ROUTES,
        split(2, json!([{"filters": [{"type": "RateLimit"}]}])),
    );
    let conditions = our_conditions(&api, "split", "generation 2 refused", |c| {
        condition(c, "PartiallyInvalid").is_some_and(|p| p["observedGeneration"] == 2)
    })
    .await;
    let accepted = condition(&conditions, "Accepted").unwrap();
    assert_eq!(
        (&accepted["status"], &accepted["observedGeneration"]),
        (&json!("True"), &json!(1))
    );
    let invalid = condition(&conditions, "PartiallyInvalid").unwrap();
    assert!(
        invalid["message"]
            .as_str()
            .unwrap()
            .contains("spec.rules[0].filters[0].type"),
        "{invalid:#}"
    );

    api.apply(
        HTTP_ROUTES,
        split(3, json!([{"matches": [{"path": {"type": "PathPrefix", "value": "api"}}],
                         "backendRefs": [{"name": "web", "port": 80}], "timeouts": {"request": "soon"}}])),
    );
    let conditions = our_conditions(&api, "split", "generation 3 refused", |c| {
        condition(c, "PartiallyInvalid").is_some_and(|p| p["observedGeneration"] == 3)
    })
    .await;
    let message = condition(&conditions, "PartiallyInvalid").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("Fall Back: generation 3 refused"),
        "{message}"
    );
    for field in [
        "spec.rules[0].matches[0].path.value",
        "spec.rules[0].timeouts.request",
    ] {
        assert!(message.contains(field), "{message}");
    }
    assert_eq!(
        condition(&conditions, "Accepted").unwrap()["observedGeneration"],
        1
    );
    assert_eq!(
        routes(&rx.borrow_and_update()),
        1,
        "generation 1 still routes"
    );
    let rule = rx.borrow().meshed.as_ref().unwrap().routes.value.http[0].rules[0].clone();
    assert!(
        rule.matches.is_empty() && rule.timeouts.is_none(),
        "{rule:?}"
    );

    // A good generation 4 applies, and the status is plain Accepted again.
    api.apply(
        HTTP_ROUTES,
        split(
            4,
            json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                         "backendRefs": [{"name": "web", "port": 80}]}]),
        ),
    );
    until(&mut rx, "generation 4 served", |v| {
        v.meshed
            .as_ref()
            .is_some_and(|t| t.routes.value.http[0].rules[0].matches.len() == 1)
    })
    .await;
    let conditions = our_conditions(&api, "split", "generation 4 accepted", |c| {
        condition(c, "Accepted").is_some_and(|a| a["observedGeneration"] == 4)
    })
    .await;
    assert!(
        condition(&conditions, "PartiallyInvalid").is_none(),
        "{conditions:#?}"
    );
    feed.abort();
}

#[tokio::test]
async fn without_the_gateway_api_crds_the_feed_is_ready_and_routes_apply_once_they_are_installed() {
    let api = ApiServer::start().await;
    api.set_served(HTTP_ROUTES, false);
    api.set_served(GRPC_ROUTES, false);
    api.set_served(REFERENCE_GRANTS, false);
    api.apply(SERVICES, web_service());
    api.apply(SLICES, slice("web-a", &["10.0.0.1"]));
    let (feed, mut rx) = synced_feed(&api, "missing route kinds held readiness").await;
    until(&mut rx, "the service, routes or not", |v| {
        endpoints(v) == ["10.0.0.1:8080"]
    })
    .await;
    assert!(
        api.requests(HTTP_ROUTES).0 >= 1,
        "HTTPRoutes were asked for"
    );

    // The CRDs installed, a route created: picked up without a restart, on
    // the watcher's next list (its backoff stays below 30 s).
    api.set_served(HTTP_ROUTES, true);
    api.apply(HTTP_ROUTES, web_route());
    until(&mut rx, "the route after the CRDs appeared", routed).await;
    feed.abort();
}

fn service(namespace: &str, name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": namespace, "name": name},
           "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}})
}

#[tokio::test]
async fn resolved_refs_follow_services_and_reference_grants_as_they_come() {
    let api = ApiServer::start().await;
    api.apply(SERVICES, service("shop", "web", "10.96.0.10"));
    api.apply(
        HTTP_ROUTES,
        split(
            1,
            json!([{"backendRefs": [
                {"name": "web", "port": 80},
                {"name": "canary", "port": 80},
                {"name": "db", "namespace": "data", "port": 80},
            ]}]),
        ),
    );
    let (feed, mut rx) =
        synced_feed(&api, "the feed never reported its initial lists synced").await;
    let resolved_refs = |conditions: &[Value]| condition(conditions, "ResolvedRefs").cloned();
    let conditions = our_conditions(&api, "split", "ResolvedRefs written", |c| {
        resolved_refs(c).is_some()
    })
    .await;
    assert_eq!(
        condition(&conditions, "Accepted").unwrap()["status"],
        "True",
        "the route applies"
    );
    let refs = resolved_refs(&conditions).unwrap();
    assert_eq!(
        (
            &refs["status"],
            &refs["reason"],
            &refs["observedGeneration"]
        ),
        (&json!("False"), &json!("BackendNotFound"), &json!(1))
    );
    let message = refs["message"].as_str().unwrap();
    assert!(
        message.contains("spec.rules[0].backendRefs[1]: Service shop/canary does not exist")
            && message
                .contains("spec.rules[0].backendRefs[2]: Service data/db is in another namespace"),
        "each bad backendRef named: {message}"
    );
    let unresolved = |v: &TargetView| -> Vec<String> {
        v.meshed.as_ref().map_or_else(Vec::new, |t| {
            t.routes.value.http[0].rules[0]
                .backends
                .iter()
                .map(|b| {
                    b.unresolved
                        .split(':')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        })
    };
    until(&mut rx, "the unresolved shares marked", |v| {
        unresolved(v) == ["", "BackendNotFound", "RefNotPermitted"]
    })
    .await;

    // The canary Service appears: only the cross-namespace backendRef is left.
    api.apply(SERVICES, service("shop", "canary", "10.96.0.11"));
    our_conditions(&api, "split", "RefNotPermitted once canary exists", |c| {
        resolved_refs(c).is_some_and(|r| r["reason"] == "RefNotPermitted")
    })
    .await;

    // The Service in `data`, and a grant there for HTTPRoutes from `shop`.
    api.apply(SERVICES, service("data", "db", "10.96.0.20"));
    api.apply(
        REFERENCE_GRANTS,
        json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
               "metadata": {"namespace": "data", "name": "from-shop"},
               "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
                        "to": [{"group": "", "kind": "Service", "name": "db"}]}}),
    );
    let conditions = our_conditions(&api, "split", "every backendRef resolved", |c| {
        resolved_refs(c).is_some_and(|r| r["status"] == "True")
    })
    .await;
    assert_eq!(
        resolved_refs(&conditions).unwrap()["reason"],
        "ResolvedRefs"
    );
    until(&mut rx, "every share served", |v| {
        unresolved(v) == ["", "", ""]
    })
    .await;

    // The grant goes: RefNotPermitted again.
    api.delete(REFERENCE_GRANTS, "data", "from-shop");
    our_conditions(
        &api,
        "split",
        "RefNotPermitted once the grant is gone",
        |c| resolved_refs(c).is_some_and(|r| r["reason"] == "RefNotPermitted"),
    )
    .await;
    feed.abort();
}

/// The HTTPRoute `shop/name` on `web`, one rule to `web` with `filter`.
fn filtered(name: &str, filter: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"namespace": "shop", "name": name},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                    "rules": [{"backendRefs": [{"name": "web", "port": 80}], "filters": [filter]}]}})
}

#[tokio::test]
async fn filtered_routes_carry_their_filters_and_an_unknown_extension_ref_is_refused_by_field() {
    let api = ApiServer::start().await;
    api.apply(SERVICES, web_service());
    api.apply(
        HTTP_ROUTES,
        filtered(
            "headers",
            json!({"type": "RequestHeaderModifier",
                   "requestHeaderModifier": {"set": [{"name": "x-env", "value": "prod"}]}}),
        ),
    );
    api.apply(
        HTTP_ROUTES,
        filtered(
            "rewrite",
            json!({"type": "URLRewrite", "urlRewrite": {"hostname": "elsewhere",
                   "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}),
        ),
    );
    // The mirror's Service does not exist: accepted, its ref unresolved.
    api.apply(
        HTTP_ROUTES,
        filtered(
            "mirror",
            json!({"type": "RequestMirror", "requestMirror": {
                   "backendRef": {"name": "shadow", "port": 8080}, "percent": 25}}),
        ),
    );
    api.apply(
        HTTP_ROUTES,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"namespace": "shop", "name": "backend-headers"},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                        "rules": [{"backendRefs": [{"name": "web", "port": 80, "filters": [
                            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                                "add": [{"name": "x-backend", "value": "web"}]}}]}]}]}}),
    );
    api.apply(
        HTTP_ROUTES,
        filtered(
            "extension",
            json!({"type": "ExtensionRef", "extensionRef": {
                   "group": "faults.example.io", "kind": "Fault", "name": "slow"}}),
        ),
    );
    let (feed, mut rx) = synced_feed(&api, "the feed never synced").await;
    until(
        &mut rx,
        "every accepted route's filters in the target",
        |v| {
            let Some(t) = v.meshed.as_ref() else {
                return false;
            };
            let rule = |name: &str| {
                t.routes
                    .value
                    .http
                    .iter()
                    .find(|r| r.name == name)
                    .map(|r| r.rules[0].clone())
            };
            let filters = |name: &str| rule(name).and_then(|r| r.filters);
            let names: Vec<&str> = t
                .routes
                .value
                .http
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            let header_set = filters("shop/headers")
                .and_then(|f| f.request_header_modifier)
                .is_some_and(|m| m.set[0].value == "prod");
            let rewrite = filters("shop/rewrite").and_then(|f| f.url_rewrite);
            let rewritten = rewrite.is_some_and(|r| {
                r.hostname == "elsewhere"
                    && r.path
                        .is_some_and(|p| p.r#type == "ReplacePrefixMatch" && p.value == "/v2")
            });
            let mirrors = filters("shop/mirror")
                .map(|f| f.request_mirrors)
                .unwrap_or_default();
            let mirrored = mirrors.first().is_some_and(|m| {
                m.backend == "shadow.shop.svc.cluster.local:8080"
                    && m.unresolved.starts_with("BackendNotFound: ")
                    && m.fraction
                        .as_ref()
                        .is_some_and(|f| (f.numerator, f.denominator) == (25, 100))
            });
            let backend_headers = rule("shop/backend-headers")
                .and_then(|r| r.backends[0].filters.clone())
                .and_then(|f| f.response_header_modifier)
                .is_some_and(|m| m.add[0].value == "web");
            names.len() == 4 && header_set && rewritten && mirrored && backend_headers
        },
    )
    .await;
    for name in ["headers", "rewrite", "mirror", "backend-headers"] {
        let accepted = our_conditions(&api, name, "Accepted", |c| {
            condition(c, "Accepted").is_some()
        })
        .await;
        assert_eq!(
            condition(&accepted, "Accepted").unwrap()["status"],
            "True",
            "{name}"
        );
    }
    // Named alone once `web` is indexed too (the index may write status before).
    let missing =
        "spec.rules[0].filters[0].requestMirror.backendRef: Service shop/shadow does not exist";
    let mirror = our_conditions(&api, "mirror", "the mirror's ref named unresolved", |c| {
        condition(c, "ResolvedRefs").is_some_and(|r| r["message"] == missing)
    })
    .await;
    let refs = condition(&mirror, "ResolvedRefs").unwrap();
    assert_eq!(refs["status"], "False");
    assert_eq!(refs["reason"], "BackendNotFound");
    let refused = our_conditions(&api, "extension", "extension refused", |c| {
        condition(c, "Accepted").is_some()
    })
    .await;
    let refused = condition(&refused, "Accepted").unwrap();
    assert_eq!(refused["status"], "False");
    assert_eq!(refused["reason"], "UnsupportedValue");
    assert_eq!(
        refused["message"],
        "spec.rules[0].filters[0].type: ExtensionRef is not supported"
    );
    feed.abort();
}

/// `web_service` with `annotations`.
fn annotated_web(annotations: Value) -> Value {
    let mut service = web_service();
    service["metadata"]["annotations"] = annotations;
    service
}

/// The load balancer and hash key of `web`'s own backend.
fn balancer(view: &TargetView) -> Option<(String, String)> {
    let target = view.meshed.as_ref()?;
    let resilience = target.backends.value.backends[&target.name]
        .resilience
        .as_ref()?;
    Some((
        resilience.load_balancer.clone(),
        resilience.hash_key.clone(),
    ))
}

#[tokio::test]
async fn hash_annotations_reach_the_backend_and_a_bad_key_is_named() {
    let api = ApiServer::start().await;
    let hashed = |key: &str| {
        annotated_web(
            json!({"plexus.io/load-balancer": "consistent-hash", "plexus.io/hash-key": key}),
        )
    };
    api.apply(SERVICES, hashed("header:X-User"));
    let index = SharedIndex::new(IndexConfig::default());
    let (feed, mut rx) = synced_feed_into(&api, index.clone(), "the feed never synced").await;
    let by_user = Some(("consistent-hash".to_owned(), "header:x-user".to_owned()));
    until(&mut rx, "consistent hashing by x-user", |v| {
        balancer(v) == by_user
    })
    .await;

    // A key the proxy cannot read: the version is refused by field, the served one stays.
    api.apply(SERVICES, hashed("identity"));
    plexus_tests::wait::eventually(BOUND, "the bad hash key refused", || {
        !index.lock().refusals().is_empty()
    })
    .await;
    let refusal = index.lock().refusals().remove(0);
    assert_eq!(refusal.object, "shop/web");
    let problem = &refusal.problems[0];
    assert_eq!(problem.field, "metadata.annotations[plexus.io/hash-key]");
    assert!(
        problem
            .message
            .starts_with("\"identity\" is not a key the balancing proxy can read"),
        "{}",
        problem.message
    );
    assert_eq!(balancer(&rx.borrow()), by_user);
    feed.abort();
}
