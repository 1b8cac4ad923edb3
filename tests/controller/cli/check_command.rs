//! `plexusctl check` against the in-process API server stand-in: an empty
//! cluster, a healthy installation (its webhook the controller's real
//! injector, which the stand-in calls over verified HTTPS on a dry-run pod),
//! and the half-working states in between, in-process and as the binary a
//! user runs (kubeconfig, exit code).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Pod;
use plexus_identity::Ca;
use plexus_tests::apiserver::ApiServer;
use plexus_tests::bins::bin;
use plexus_tests::controller::injector;
use plexusctl::check::{
    API_SERVER, BUNDLE_VERSION, CHANNEL, CONTROLLER, CheckCommand, CheckResult, GATEWAY_API,
    INJECTION, POD_PROXY, WEBHOOK, run_checks,
};
use serde_json::{Value, json};

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
const WEBHOOKS: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
const PODS: &str = "/api/v1/pods";
const SECRETS: &str = "/api/v1/secrets";
const BOUND: Duration = Duration::from_secs(30);
/// The chart's name for release `plexus` in namespace `plexus`.
const CONFIGURATION: &str = "plexus-plexus-injector";

fn crd(plural: &str, kind: &str, channel: &str, version: &str) -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": format!("{plural}.gateway.networking.k8s.io"),
                        "annotations": {CHANNEL: channel, BUNDLE_VERSION: version}},
           "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
                    "names": {"plural": plural, "kind": kind},
                    "versions": [{"name": "v1", "served": true, "storage": true}]}})
}

fn gateway_api(server: &ApiServer, channel: &str, version: &str) {
    server.apply(CRDS, crd("httproutes", "HTTPRoute", channel, version));
    server.apply(CRDS, crd("grpcroutes", "GRPCRoute", channel, version));
}

fn controller(ready: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"namespace": "plexus", "name": "plexus-controller"},
           "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "plexus"}},
                    "template": {"metadata": {"labels": {"app": "plexus"}}}},
           "status": {"readyReplicas": ready}})
}

/// base64, as a Kubernetes object carries bytes.
fn base64(bytes: &[u8]) -> Value {
    serde_json::to_value(ByteString(bytes.to_vec())).unwrap()
}

/// The CA Secret the controller writes (`ca.crt` is what the check reads).
fn ca_secret(ca: &Ca) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"namespace": "plexus", "name": "plexus-ca"},
           "data": {"ca.crt": base64(ca.trust_anchor_pem().as_bytes())}})
}

/// The chart's webhook configuration (`name`), with `ca_bundle` as the
/// controller patches it in, and `failure_policy`.
fn webhook_configuration(name: &str, ca_bundle: Option<&[u8]>, failure_policy: &str) -> Value {
    let mut client_config = json!({"service": {"name": "plexus-injector", "namespace": "plexus",
                                                "path": "/inject", "port": 443}});
    if let Some(bundle) = ca_bundle {
        client_config["caBundle"] = base64(bundle);
    }
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": name},
           "webhooks": [{"name": "inject.plexus.io", "clientConfig": client_config,
                         "admissionReviewVersions": ["v1"], "sideEffects": "None",
                         "failurePolicy": failure_policy, "timeoutSeconds": 10,
                         "rules": [{"operations": ["CREATE"], "apiGroups": [""],
                                    "apiVersions": ["v1"], "resources": ["pods"]}],
                         "namespaceSelector": {"matchExpressions": [
                             {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                              "values": ["plexus", "kube-system"]}]}}]})
}

fn pod(proxy_ready: Option<bool>) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": "shop", "name": "web-1"},
           "spec": {"containers": [{"name": "app"}]}, "status": {}});
    if let Some(ready) = proxy_ready {
        pod["spec"]["initContainers"] =
            json!([{"name": "plexus-proxy", "restartPolicy": "Always"}]);
        pod["status"]["initContainerStatuses"] = json!([{"name": "plexus-proxy", "ready": ready,
            "restartCount": 3, "image": "plexus/proxy", "imageID": ""}]);
    }
    pod
}

/// A cluster with Plexus installed and working: the controller's CA in its
/// Secret and in the caBundle, and its injector behind the Service the
/// configuration names. Returns the CA.
async fn healthy(server: &ApiServer) -> Arc<Ca> {
    let ca = Arc::new(Ca::new_root("cluster.local", Duration::from_secs(3600)).unwrap());
    server.route_service("plexus", "plexus-injector", 443, injector(ca.clone()).await);
    gateway_api(server, "experimental", "v1.2.1");
    server.apply(DEPLOYMENTS, controller(2));
    server.apply(SECRETS, ca_secret(&ca));
    let bundle = ca.trust_anchor_pem().as_bytes();
    server.apply(
        WEBHOOKS,
        webhook_configuration(CONFIGURATION, Some(bundle), "Ignore"),
    );
    server.apply(PODS, pod(Some(true)));
    ca
}

fn options(pod: bool) -> CheckCommand {
    CheckCommand {
        namespace: "plexus".into(),
        release: "plexus".into(),
        probe_namespace: "default".into(),
        pod: pod.then(|| ("shop".into(), "web-1".into())),
    }
}

async fn check(server: &ApiServer, pod: bool) -> Vec<CheckResult> {
    check_with(server, &options(pod)).await
}

async fn check_with(server: &ApiServer, options: &CheckCommand) -> Vec<CheckResult> {
    tokio::time::timeout(BOUND, run_checks(&server.client(), options))
        .await
        .expect("checks finish within bound")
}

fn hint<'a>(results: &'a [CheckResult], name: &str) -> &'a str {
    by_name(results, name).hint.as_deref().unwrap_or_default()
}

fn by_name<'a>(results: &'a [CheckResult], name: &str) -> &'a CheckResult {
    results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no {name} in {results:?}"))
}

#[tokio::test]
async fn a_healthy_installation_passes_every_check() {
    let server = ApiServer::start().await;
    healthy(&server).await;
    let results = check(&server, true).await;
    let names: Vec<&str> = results.iter().map(|r| r.name).collect();
    assert_eq!(
        names,
        [
            API_SERVER,
            GATEWAY_API,
            CONTROLLER,
            WEBHOOK,
            INJECTION,
            POD_PROXY
        ]
    );
    assert!(results.iter().all(|r| r.passed), "{results:#?}");
    assert!(by_name(&results, API_SERVER).detail.contains("v1.32.0"));
    assert!(
        by_name(&results, GATEWAY_API)
            .detail
            .contains("experimental v1.2.1")
    );
    assert!(by_name(&results, CONTROLLER).detail.contains("2/2 ready"));
    assert!(
        by_name(&results, WEBHOOK)
            .detail
            .contains("caBundle holds the CA of Secret plexus/plexus-ca")
    );
    assert!(
        by_name(&results, INJECTION)
            .detail
            .contains("added plexus-proxy")
    );
    // The probe was a dry run: the only pod stored is the test's own.
    let pods = kube::Api::<Pod>::all(server.client());
    let stored = pods.list(&Default::default()).await.unwrap();
    assert_eq!(stored.items.len(), 1, "{:?}", stored.items);
}

#[tokio::test]
async fn an_empty_cluster_fails_with_hints() {
    let server = ApiServer::start().await;
    let results = check(&server, true).await;
    assert!(by_name(&results, API_SERVER).passed);
    let gateway = by_name(&results, GATEWAY_API);
    assert!(!gateway.passed);
    assert!(
        gateway
            .detail
            .contains("httproutes.gateway.networking.k8s.io")
            && gateway
                .detail
                .contains("grpcroutes.gateway.networking.k8s.io"),
        "{gateway:?}"
    );
    assert!(hint(&results, GATEWAY_API).contains("experimental-install.yaml"));
    for name in [GATEWAY_API, CONTROLLER, WEBHOOK, INJECTION, POD_PROXY] {
        let result = by_name(&results, name);
        assert!(!result.passed, "{result:?}");
        assert!(
            result.detail.contains("not found") || [GATEWAY_API, INJECTION].contains(&name),
            "{result:?}"
        );
        assert!(result.hint.as_deref().is_some_and(|h| !h.is_empty()));
    }
    // No webhook configuration, so the dry-run pod came back as it went.
    assert!(
        by_name(&results, INJECTION)
            .detail
            .contains("without plexus-proxy")
    );
    assert!(
        by_name(&results, CONTROLLER)
            .hint
            .as_deref()
            .unwrap()
            .contains("helm install")
    );
}

#[tokio::test]
async fn half_working_states_are_each_caught() {
    let server = ApiServer::start().await;
    healthy(&server).await;
    // The controller has not come up, so it never set the caBundle, and the
    // pod's proxy waits for its certificate.
    server.apply(DEPLOYMENTS, controller(0));
    server.apply(
        WEBHOOKS,
        webhook_configuration(CONFIGURATION, None, "Ignore"),
    );
    server.apply(PODS, pod(Some(false)));
    let results = check(&server, true).await;
    assert!(by_name(&results, GATEWAY_API).passed);
    let controller = by_name(&results, CONTROLLER);
    assert!(!controller.passed && controller.detail.contains("0/2"));
    let webhook = by_name(&results, WEBHOOK);
    assert!(
        !webhook.passed
            && webhook
                .detail
                .contains("inject.plexus.io: caBundle is empty"),
        "{webhook:?}"
    );
    // Without a caBundle the API server cannot verify the webhook, and
    // failurePolicy Ignore admits the pod uninjected.
    let injection = by_name(&results, INJECTION);
    assert!(!injection.passed, "{injection:?}");
    assert!(hint(&results, INJECTION).contains("failurePolicy Ignore"));
    let proxy = by_name(&results, POD_PROXY);
    assert!(!proxy.passed && proxy.detail.contains("not ready"));
    assert!(
        proxy
            .hint
            .as_deref()
            .unwrap()
            .contains("logs web-1 -c plexus-proxy")
    );

    // A pod that never got the proxy.
    server.apply(PODS, pod(None));
    let results = check(&server, true).await;
    assert!(by_name(&results, POD_PROXY).detail.contains("not meshed"));
}

/// Runs the binary with a kubeconfig pointing at `server_url`.
async fn run_binary(server_url: &str, args: &[&str]) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!(
        "plexusctl-check-{}-{}",
        std::process::id(),
        server_url.rsplit(':').next().unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters: [{{name: test, cluster: {{server: \"{server_url}\"}}}}]\n\
             users: [{{name: test, user: {{}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: test}}}}]\n"
        ),
    )
    .unwrap();
    let output = tokio::time::timeout(
        BOUND,
        tokio::process::Command::new(bin("plexusctl"))
            .arg("check")
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output(),
    )
    .await
    .expect("plexusctl check finishes within bound")
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    output
}

#[tokio::test]
async fn the_binary_exits_zero_only_when_every_check_passes() {
    let server = ApiServer::start().await;
    healthy(&server).await;
    let output = run_binary(&server.url(), &["--pod", "shop/web-1"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with('✔')).count(),
        6,
        "{stdout}"
    );

    // The standard channel: everything else still passes.
    gateway_api(&server, "standard", "v1.2.1");
    let output = run_binary(&server.url(), &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("✘ Gateway API CRDs present: httproutes"),
        "{stdout}"
    );
    assert!(stdout.contains("standard channel v1.2.1"), "{stdout}");
    assert!(
        stdout.contains("    hint: install the experimental channel"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("1 of 5 checks failed"),
        "{output:?}"
    );

    // Another release's names: found with its --release, not without.
    gateway_api(&server, "experimental", "v1.3.0");
    let theirs = server
        .object(WEBHOOKS, "", CONFIGURATION)
        .map(|mut config| {
            config["metadata"]["name"] = json!("mesh-plexus-injector");
            config
        })
        .unwrap();
    server.delete(WEBHOOKS, "", CONFIGURATION);
    server.apply(WEBHOOKS, theirs);
    let output = run_binary(&server.url(), &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(
            "✘ webhook configured: MutatingWebhookConfiguration plexus-plexus-injector not found"
        ),
        "{stdout}"
    );
    let output = run_binary(&server.url(), &["--release", "mesh"]).await;
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test]
async fn an_unreachable_api_server_is_one_failed_line() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let output = run_binary(&url, &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(stdout.starts_with("✘ API server reachable"), "{stdout}");
    assert_eq!(stdout.matches('✘').count(), 1, "{stdout}");
}

#[tokio::test]
async fn the_gateway_api_must_be_the_experimental_channel_from_v1_2() {
    let server = ApiServer::start().await;
    healthy(&server).await;
    for (channel, version, wanted) in [
        (
            "standard",
            "v1.2.1",
            "standard channel v1.2.1: the API server prunes HTTPRoute retry",
        ),
        (
            "experimental",
            "v1.1.0",
            "experimental channel v1.1.0, older than v1.2",
        ),
        (
            "experimental",
            "main",
            "experimental channel of unknown version",
        ),
    ] {
        gateway_api(&server, channel, version);
        let results = check(&server, false).await;
        let gateway = by_name(&results, GATEWAY_API);
        assert!(
            !gateway.passed && gateway.detail.contains(wanted),
            "{gateway:?}"
        );
        assert!(
            gateway.detail.contains("httproutes") && gateway.detail.contains("grpcroutes"),
            "{gateway:?}"
        );
        let hint = hint(&results, GATEWAY_API);
        assert!(
            hint.contains("releases/download/v1.2.1/experimental-install.yaml"),
            "{hint}"
        );
    }
    // CRDs that are not from a release bundle say nothing of their channel.
    server.apply(
        CRDS,
        json!({"apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "httproutes.gateway.networking.k8s.io"}}),
    );
    let results = check(&server, false).await;
    assert!(
        by_name(&results, GATEWAY_API)
            .detail
            .contains("channel unknown")
    );
    gateway_api(&server, "experimental", "v1.3.0");
    assert!(by_name(&check(&server, false).await, GATEWAY_API).passed);
}

#[tokio::test]
async fn a_ca_bundle_of_another_ca_fails_and_so_does_the_injection_it_breaks() {
    let server = ApiServer::start().await;
    healthy(&server).await;
    // The bundle of another install's CA: the TLS handshake to the webhook fails.
    let other = Ca::new_root("cluster.local", Duration::from_secs(3600)).unwrap();
    let bundle = other.trust_anchor_pem().as_bytes();
    server.apply(
        WEBHOOKS,
        webhook_configuration(CONFIGURATION, Some(bundle), "Ignore"),
    );
    let results = check(&server, false).await;
    let webhook = by_name(&results, WEBHOOK);
    assert!(
        !webhook.passed && webhook.detail.contains("does not hold the controller's CA"),
        "{webhook:?}"
    );
    assert!(hint(&results, WEBHOOK).contains("ca.crt of Secret plexus/plexus-ca"));
    let injection = by_name(&results, INJECTION);
    assert!(
        !injection.passed && injection.detail.contains("without plexus-proxy"),
        "{injection:?}"
    );

    // Under failurePolicy Fail the same handshake failure is the create's error.
    server.apply(
        WEBHOOKS,
        webhook_configuration(CONFIGURATION, Some(bundle), "Fail"),
    );
    let results = check(&server, false).await;
    let injection = by_name(&results, INJECTION);
    assert!(
        !injection.passed
            && injection
                .detail
                .contains("failed calling webhook \"inject.plexus.io\""),
        "{injection:?}"
    );

    // Not PEM at all.
    server.apply(
        WEBHOOKS,
        webhook_configuration(CONFIGURATION, Some(&b"not a certificate"[..]), "Ignore"),
    );
    let results = check(&server, false).await;
    let webhook = by_name(&results, WEBHOOK);
    assert!(
        webhook.detail.contains("caBundle holds no PEM certificate"),
        "{webhook:?}"
    );

    // The CA Secret gone: nothing to compare with.
    server.delete(SECRETS, "plexus", "plexus-ca");
    let results = check(&server, false).await;
    let webhook = by_name(&results, WEBHOOK);
    assert!(
        webhook.detail.contains("Secret plexus/plexus-ca not found"),
        "{webhook:?}"
    );
}

#[tokio::test]
async fn the_probe_in_a_namespace_the_webhook_skips_is_not_injected() {
    let server = ApiServer::start().await;
    healthy(&server).await;
    let options = CheckCommand {
        probe_namespace: "kube-system".into(),
        ..options(false)
    };
    let results = check_with(&server, &options).await;
    assert!(by_name(&results, WEBHOOK).passed);
    let injection = by_name(&results, INJECTION);
    assert!(
        !injection.passed && injection.detail.contains("dry-run Pod in kube-system"),
        "{injection:?}"
    );
    assert!(hint(&results, INJECTION).contains("namespaceSelector excludes kube-system"));
}

#[tokio::test]
async fn a_webhook_registered_by_url_is_dialled_there_and_must_be_named_by_its_certificate() {
    let server = ApiServer::start().await;
    let ca = healthy(&server).await;
    let addr = injector(ca.clone()).await;
    let by_url = |url: String| {
        let mut config = webhook_configuration(CONFIGURATION, None, "Fail");
        config["webhooks"][0]["clientConfig"] = json!({"url": url,
            "caBundle": base64(ca.trust_anchor_pem().as_bytes())});
        config
    };
    // The injector's certificate names its Service only, not the IP (issue 11's
    // out-of-cluster case): the API server's handshake fails on the name.
    server.apply(WEBHOOKS, by_url(format!("https://{addr}/inject")));
    let results = check(&server, false).await;
    let injection = failed_injection(&results);
    assert!(
        injection.contains(&format!("https://{addr}/inject")) && injection.contains("certificate"),
        "{injection}"
    );
    // Nothing outside loopback is dialled.
    server.apply(WEBHOOKS, by_url("https://192.0.2.1/inject".into()));
    let results = check(&server, false).await;
    assert!(failed_injection(&results).contains("loopback IPs only"));
}

/// The failed injection line's detail.
fn failed_injection(results: &[CheckResult]) -> String {
    let injection = by_name(results, INJECTION);
    assert!(!injection.passed, "{injection:?}");
    injection.detail.clone()
}
