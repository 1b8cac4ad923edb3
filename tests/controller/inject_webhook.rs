//! The injector webhook on real AdmissionReview JSON (fixtures/admission/).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Container, Pod};
use plexus_controller::admission::webhook::{NamespaceAnnotations, review};
use plexus_core::annotations::INJECT;
use plexus_inject::InjectConfig;
use serde_json::{Value, json};

const POD: &str = include_str!("fixtures/admission/pod-create.json");
const HOST_NETWORK_POD: &str = include_str!("fixtures/admission/pod-host-network.json");
const DEPLOYMENT: &str = include_str!("fixtures/admission/deployment-create.json");

/// Namespace name -> value of its `plexus.io/inject` annotation.
struct Namespaces(BTreeMap<String, String>);

impl NamespaceAnnotations for Namespaces {
    fn annotation(&self, namespace: &str, key: &str) -> Option<String> {
        (key == INJECT)
            .then(|| self.0.get(namespace).cloned())
            .flatten()
    }
}

fn shop_enabled() -> Namespaces {
    Namespaces(BTreeMap::from([(
        "shop".to_string(),
        "enabled".to_string(),
    )]))
}

fn no_namespaces() -> Namespaces {
    Namespaces(BTreeMap::new())
}

/// What the controller's CA gives the webhook (the text only has to reach the proxy as is).
const TRUST_ANCHORS: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn config() -> InjectConfig {
    InjectConfig {
        trust_anchors: TRUST_ANCHORS.to_string(),
        ..InjectConfig::default()
    }
}

/// The `response` of the review the webhook answers to `request`.
fn respond(request: &Value, namespaces: &Namespaces) -> Value {
    let body = serde_json::to_vec(request).unwrap();
    let answer: Value = serde_json::from_slice(&review(&body, namespaces, &config()))
        .expect("the webhook answers JSON");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = answer["response"].clone();
    assert_eq!(
        response["allowed"], true,
        "the injector never denies: {response}"
    );
    response
}

/// The pod after applying the response's base64 JSON Patch to the request's object.
fn patched_pod(request: &Value, response: &Value) -> Pod {
    assert_eq!(response["patchType"], "JSONPatch");
    let ByteString(bytes) =
        serde_json::from_value(response["patch"].clone()).expect("patch is base64 text");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut object = request["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).expect("the patch applies to the object");
    serde_json::from_value(object).unwrap()
}

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn with_pod_annotations(mut request: Value, annotations: Value) -> Value {
    request["request"]["object"]["metadata"]["annotations"] = annotations;
    request
}

fn env<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

#[test]
fn a_pod_in_an_enabled_namespace_gets_init_and_the_native_sidecar() {
    let request = fixture(POD);
    let response = respond(&request, &shop_enabled());
    assert_eq!(response["uid"], request["request"]["uid"]);
    let pod = patched_pod(&request, &response);
    let spec = pod.spec.unwrap();

    let init = spec.init_containers.unwrap();
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["plexus-init", "plexus-proxy", "migrate"]);
    assert_eq!(spec.containers.len(), 1, "app containers untouched");

    let rules = &init[0];
    let caps = rules
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let rules_sc = rules.security_context.as_ref().unwrap();
    assert_eq!(
        (rules_sc.run_as_user, rules_sc.privileged),
        (Some(0), Some(false))
    );
    assert!(rules.args.iter().flatten().any(|a| a == "--proxy-uid=2102"));

    let proxy = &init[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let startup = proxy
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(startup.path.as_deref(), Some("/ready"));
    assert_eq!(
        startup.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15020)
    );
    assert!(proxy.readiness_probe.is_some() && proxy.liveness_probe.is_some());
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(2102));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        env(proxy, "PLEXUS_IDENTITY"),
        Some("spiffe://cluster.local/ns/$(PLEXUS_POD_NAMESPACE)/sa/$(PLEXUS_SERVICE_ACCOUNT)")
    );
    for name in ["PLEXUS_CONTROLLER_ADDR", "PLEXUS_IDENTITY_ADDR"] {
        assert_eq!(
            env(proxy, name),
            Some("plexus-controller.plexus.svc.cluster.local:8090")
        );
    }
    assert_eq!(
        env(proxy, "PLEXUS_CONTROLLER_IDENTITY"),
        Some("spiffe://cluster.local/ns/plexus/sa/plexus-controller")
    );
    let by_field = |name: &str| {
        proxy
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| {
                e.value_from
                    .as_ref()?
                    .field_ref
                    .as_ref()
                    .map(|f| f.field_path.clone())
            })
    };
    assert_eq!(
        by_field("PLEXUS_POD_NAME").as_deref(),
        Some("metadata.name")
    );
    assert_eq!(
        by_field("PLEXUS_POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(
        by_field("PLEXUS_SERVICE_ACCOUNT").as_deref(),
        Some("spec.serviceAccountName")
    );
    // The fixture's pod is labelled `app: backend`: traces name the workload, not the pod.
    assert_eq!(
        by_field("PLEXUS_WORKLOAD").as_deref(),
        Some("metadata.labels['app']")
    );
    let token_file = env(proxy, "PLEXUS_IDENTITY_TOKEN_FILE").unwrap();
    let mounts = proxy.volume_mounts.as_ref().unwrap();
    let mount = mounts
        .iter()
        .find(|m| m.name == "plexus-identity-token")
        .unwrap();
    assert!(token_file.starts_with(&format!("{}/", mount.mount_path)));
    // Inline PEM: a pod cannot mount anything from the controller's namespace.
    assert_eq!(
        env(proxy, "PLEXUS_IDENTITY_TRUST_ANCHORS"),
        Some(TRUST_ANCHORS)
    );
    assert_eq!(mounts.len(), 1, "{mounts:?}");

    let volumes = spec.volumes.unwrap();
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["kube-api-access-x7k2p", "plexus-identity-token"]);
    let token = volumes[1]
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some("plexus-identity"));
}

#[test]
fn injecting_an_injected_pod_changes_nothing() {
    let request = fixture(POD);
    let once = patched_pod(&request, &respond(&request, &shop_enabled()));
    let mut again = request.clone();
    again["request"]["object"] = serde_json::to_value(&once).unwrap();
    let response = respond(&again, &shop_enabled());
    assert!(response.get("patch").is_none(), "{response}");
    assert!(response.get("warnings").is_none(), "{response}");
}

#[test]
fn a_pod_annotation_enables_without_the_namespace_and_disabled_wins() {
    let enabled = with_pod_annotations(fixture(POD), json!({"plexus.io/inject": "enabled"}));
    let response = respond(&enabled, &no_namespaces());
    assert!(response["patch"].is_string(), "{response}");

    let disabled = with_pod_annotations(fixture(POD), json!({"plexus.io/inject": "disabled"}));
    assert!(respond(&disabled, &shop_enabled()).get("patch").is_none());

    // Neither the pod nor its namespace asks for the mesh.
    assert!(
        respond(&fixture(POD), &no_namespaces())
            .get("patch")
            .is_none()
    );
}

#[test]
fn host_network_pods_are_left_alone() {
    let response = respond(&fixture(HOST_NETWORK_POD), &shop_enabled());
    assert!(response.get("patch").is_none(), "{response}");
}

#[test]
fn annotations_override_and_bad_values_are_warned_about_not_applied() {
    let request = with_pod_annotations(
        fixture(POD),
        json!({
            "plexus.io/skip-inbound-ports": "9090,9100-9102",
            "plexus.io/skip-outbound-ports": "5432",
            "plexus.io/opaque-ports": "3306",
            "plexus.io/proxy-cpu-limit": "1",
            "plexus.io/proxy-memory-request": "not-a-size",
            "plexus.io/log-level": "debug",
            "plexus.io/trace-sampling": "0.1"
        }),
    );
    let response = respond(&request, &shop_enabled());
    let warnings = response["warnings"]
        .as_array()
        .expect("a warning for the bad value");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("plexus.io/proxy-memory-request")
    );

    let init = patched_pod(&request, &response)
        .spec
        .unwrap()
        .init_containers
        .unwrap();
    let args = init[0].args.clone().unwrap();
    assert!(
        args.contains(&"--skip-inbound-ports=9090,9100-9102".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--skip-outbound-ports=5432".to_string()),
        "{args:?}"
    );
    let proxy = &init[1];
    assert_eq!(env(proxy, "PLEXUS_LOG"), Some("debug"));
    assert_eq!(env(proxy, "PLEXUS_TRACE_SAMPLING"), Some("0.1"));
    assert_eq!(env(proxy, "PLEXUS_INBOUND_OPAQUE_PORTS"), Some("3306"));
    let resources = proxy.resources.as_ref().unwrap();
    assert_eq!(resources.limits.as_ref().unwrap()["cpu"].0, "1");
    assert_eq!(
        resources.requests.as_ref().unwrap()["memory"].0,
        "32Mi",
        "default kept"
    );
}

#[test]
fn what_it_does_not_understand_passes_with_a_warning() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"{not json".to_vec()),
        ("empty object", b"{}".to_vec()),
        (
            "no request",
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#.to_vec(),
        ),
        ("a deployment", DEPLOYMENT.as_bytes().to_vec()),
    ];
    for (what, body) in cases {
        let answer: Value =
            serde_json::from_slice(&review(&body, &shop_enabled(), &InjectConfig::default()))
                .unwrap();
        let response = &answer["response"];
        assert_eq!(response["allowed"], true, "{what}: {answer}");
        assert!(response.get("patch").is_none(), "{what}: {answer}");
        let warnings = response["warnings"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: {answer}"));
        assert!(
            warnings[0].as_str().unwrap().starts_with("plexus: "),
            "{what}"
        );
    }
    // A Pod object the typed model rejects is let through too, with the request's uid.
    let mut bad = fixture(POD);
    bad["request"]["object"]["spec"]["containers"] = json!("not a list");
    let response = respond(&bad, &shop_enabled());
    assert_eq!(response["uid"], bad["request"]["uid"]);
    assert!(response.get("patch").is_none() && response["warnings"].is_array());
}
