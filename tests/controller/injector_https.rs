//! The injector webhook as the API server reaches it: HTTPS with a
//! certificate for the Service's DNS names from the controller's CA, `POST
//! /inject` answered from the index's namespaces, the body capped, and the
//! MutatingWebhookConfiguration's `caBundle` kept current against the API
//! server stand-in.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use plexus_controller::admission::ca_bundle::{self, Outcome};
use plexus_controller::admission::{MAX_REVIEW_BYTES, service_dns_names};
use plexus_identity::Ca;
use plexus_tests::apiserver::ApiServer;
use plexus_tests::controller::injector;
use plexus_tests::http::https_exchange;
use plexus_tests::wait::eventually;
use serde_json::{Value, json};

pub(crate) const POD: &str = include_str!("fixtures/admission/pod-create.json");
const BOUND: Duration = Duration::from_secs(30);
const WEBHOOK_CONFIGURATIONS: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";

/// An HTTPS client that trusts only `ca` and checks the server's DNS name,
/// as the API server does with the `caBundle`.
pub(crate) async fn send(
    ca: &Ca,
    addr: std::net::SocketAddr,
    server_name: &str,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Bytes), String> {
    https_exchange(ca.trust_anchor_pem().as_bytes(), addr, server_name, request).await
}

pub(crate) fn post(path: &str, body: impl Into<Bytes>) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("https://plexus-injector.plexus.svc{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

#[tokio::test]
async fn the_api_server_gets_a_patch_with_the_trust_anchors_over_verified_https() {
    let ca = Arc::new(Ca::new_root("cluster.local", Duration::from_secs(3600)).unwrap());
    let addr = injector(ca.clone()).await;
    for name in service_dns_names("plexus-injector", "plexus", "cluster.local") {
        let (status, body) =
            tokio::time::timeout(BOUND, send(&ca, addr, &name, post("/inject", POD)))
                .await
                .expect("answered within bound")
                .unwrap();
        assert_eq!(status, 200, "{name}");
        let answer: Value = serde_json::from_slice(&body).unwrap();
        let response = &answer["response"];
        assert_eq!(response["allowed"], true);
        let ByteString(patch) = serde_json::from_value(response["patch"].clone()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let request: Value = serde_json::from_str(POD).unwrap();
        let mut object = request["request"]["object"].clone();
        json_patch::patch(&mut object, &patch).unwrap();
        let pod: Pod = serde_json::from_value(object).unwrap();
        let proxy = pod
            .spec
            .unwrap()
            .init_containers
            .unwrap()
            .into_iter()
            .find(|c| c.name == "plexus-proxy")
            .expect("injected: namespace shop is annotated in the index");
        let anchors = proxy
            .env
            .unwrap()
            .into_iter()
            .find(|e| e.name == "PLEXUS_IDENTITY_TRUST_ANCHORS")
            .and_then(|e| e.value);
        assert_eq!(anchors.as_deref(), Some(ca.trust_anchor_pem()));
    }
}

#[tokio::test]
async fn other_paths_are_404_big_bodies_413_and_other_names_fail_the_handshake() {
    let ca = Arc::new(Ca::new_root("cluster.local", Duration::from_secs(3600)).unwrap());
    let addr = injector(ca.clone()).await;
    let name = "plexus-injector.plexus.svc";
    let exchange = |request| {
        let ca = ca.clone();
        async move {
            tokio::time::timeout(BOUND, send(&ca, addr, name, request))
                .await
                .expect("answered within bound")
        }
    };
    let (status, _) = exchange(post("/mutate", POD)).await.unwrap();
    assert_eq!(status, 404);
    let get = http::Request::get("https://plexus-injector.plexus.svc/inject")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(exchange(get).await.unwrap().0, 404);
    let (status, _) = exchange(post("/inject", vec![b' '; MAX_REVIEW_BYTES + 1]))
        .await
        .unwrap();
    assert_eq!(status, 413);
    // Garbage is still answered with an allowing review: a pod is never blocked.
    let (status, body) = exchange(post("/inject", "{not json")).await.unwrap();
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");

    // The certificate names the Service, nothing else.
    let wrong = tokio::time::timeout(
        BOUND,
        send(
            &ca,
            addr,
            "plexus-injector.default.svc",
            post("/inject", POD),
        ),
    )
    .await
    .expect("refused within bound")
    .unwrap_err();
    assert!(wrong.contains("certificate"), "{wrong}");
    // And a client trusting another CA refuses it.
    let other = Ca::new_root("cluster.local", Duration::from_secs(3600)).unwrap();
    let foreign = tokio::time::timeout(BOUND, send(&other, addr, name, post("/inject", POD)))
        .await
        .expect("refused within bound")
        .unwrap_err();
    assert!(foreign.contains("certificate"), "{foreign}");
}

fn webhook_configuration(bundles: &[Option<&str>]) -> Value {
    named_configuration("plexus-injector", bundles)
}

/// A configuration named `name` with one webhook entry per bundle.
fn named_configuration(name: &str, bundles: &[Option<&str>]) -> Value {
    let webhooks: Vec<Value> = bundles
        .iter()
        .enumerate()
        .map(|(i, bundle)| {
            let mut client_config = json!({"service": {"name": "plexus-injector", "namespace": "plexus", "path": "/inject", "port": 443}});
            if let Some(bundle) = bundle {
                client_config["caBundle"] = json!(bundle);
            }
            json!({"name": format!("inject{i}.plexus.io"), "admissionReviewVersions": ["v1"],
                   "sideEffects": "None", "clientConfig": client_config})
        })
        .collect();
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": name}, "webhooks": webhooks})
}

fn bundles(server: &ApiServer) -> Vec<Option<Vec<u8>>> {
    bundles_of(server, "plexus-injector")
}

fn bundles_of(server: &ApiServer, name: &str) -> Vec<Option<Vec<u8>>> {
    let Some(object) = server.object(WEBHOOK_CONFIGURATIONS, "", name) else {
        return Vec::new();
    };
    let config: MutatingWebhookConfiguration = serde_json::from_value(object).unwrap();
    config
        .webhooks
        .unwrap()
        .into_iter()
        .map(|w| w.client_config.ca_bundle.map(|b| b.0))
        .collect()
}

#[tokio::test]
async fn every_webhook_entry_gets_the_ca_bundle_and_a_current_one_is_left_alone() {
    let server = ApiServer::start().await;
    let api = kube::Api::all(server.client());
    let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    assert_eq!(
        ca_bundle::reconcile(&api, "plexus-injector", pem)
            .await
            .unwrap(),
        Outcome::Absent
    );

    // The chart leaves caBundle out; an old CA's bundle may linger in another entry.
    let old = serde_json::to_value(ByteString(b"old".to_vec())).unwrap();
    server.apply(
        WEBHOOK_CONFIGURATIONS,
        webhook_configuration(&[None, old.as_str()]),
    );
    assert_eq!(
        ca_bundle::reconcile(&api, "plexus-injector", pem)
            .await
            .unwrap(),
        Outcome::Patched(2)
    );
    assert_eq!(bundles(&server), [Some(pem.to_vec()), Some(pem.to_vec())]);
    assert_eq!(
        ca_bundle::reconcile(&api, "plexus-injector", pem)
            .await
            .unwrap(),
        Outcome::Current
    );
    assert_eq!(server.object_patches(WEBHOOK_CONFIGURATIONS).len(), 1);
}

#[tokio::test]
async fn a_configuration_created_late_gets_the_bundle_by_watch_and_a_revert_is_undone() {
    let server = ApiServer::start().await;
    // Another install's configuration, with its own CA's bundle.
    let theirs = serde_json::to_value(ByteString(b"THEIRS".to_vec())).unwrap();
    server.apply(
        WEBHOOK_CONFIGURATIONS,
        named_configuration("other-injector", &[theirs.as_str()]),
    );
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let want = vec![Some(pem.as_bytes().to_vec())];
    tokio::spawn(ca_bundle::keep_current(
        server.client(),
        "plexus-injector".into(),
        pem.into(),
    ));
    // The controller runs before `helm install` created its configuration.
    eventually(BOUND, "the watch is open", || {
        server.requests(WEBHOOK_CONFIGURATIONS).1 >= 1
    })
    .await;
    server.apply(WEBHOOK_CONFIGURATIONS, webhook_configuration(&[None]));
    eventually(
        Duration::from_secs(2),
        "caBundle patched within 2 s",
        || bundles(&server) == want,
    )
    .await;
    // `helm upgrade` (or a person) resets it: patched again, by the same watch.
    server.apply(WEBHOOK_CONFIGURATIONS, webhook_configuration(&[None]));
    eventually(
        Duration::from_secs(2),
        "the reverted caBundle re-applied",
        || bundles(&server) == want,
    )
    .await;
    assert_eq!(
        server.requests(WEBHOOK_CONFIGURATIONS).0,
        1,
        "one list, then the watch: no polling"
    );
    assert_eq!(
        bundles_of(&server, "other-injector"),
        [Some(b"THEIRS".to_vec())],
        "another install's configuration is untouched"
    );
    assert_eq!(server.object_patches(WEBHOOK_CONFIGURATIONS).len(), 2);
}
