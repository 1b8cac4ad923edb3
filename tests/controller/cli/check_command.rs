//! `plexusctl check` against the controller's in-process API server stand-in:
//! an empty cluster, a healthy installation, and the half-working states in
//! between, in-process and as the binary a user runs (kubeconfig, exit code).

use std::time::Duration;

use plexus_tests::apiserver::ApiServer;
use plexus_tests::bins::bin;
use plexusctl::check::{
    API_SERVER, CONTROLLER, CheckCommand, CheckResult, GATEWAY_API, POD_PROXY, WEBHOOK, run_checks,
};
use serde_json::{Value, json};

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
const WEBHOOKS: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
const PODS: &str = "/api/v1/pods";
const BOUND: Duration = Duration::from_secs(30);

fn crd(plural: &str, kind: &str) -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": format!("{plural}.gateway.networking.k8s.io")},
           "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
                    "names": {"plural": plural, "kind": kind},
                    "versions": [{"name": "v1", "served": true, "storage": true}]}})
}

fn controller(ready: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"namespace": "plexus", "name": "plexus-controller"},
           "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "plexus"}},
                    "template": {"metadata": {"labels": {"app": "plexus"}}}},
           "status": {"readyReplicas": ready}})
}

fn webhook_configuration(ca_bundle: Option<&str>) -> Value {
    let mut client_config = json!({"service": {"name": "plexus-injector", "namespace": "plexus"}});
    if let Some(bundle) = ca_bundle {
        client_config["caBundle"] = json!(bundle);
    }
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": "plexus-injector"},
           "webhooks": [{"name": "inject.plexus.io", "clientConfig": client_config,
                         "admissionReviewVersions": ["v1"], "sideEffects": "None"}]})
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

/// A cluster with Plexus installed and working.
fn healthy(server: &ApiServer) {
    server.apply(CRDS, crd("httproutes", "HTTPRoute"));
    server.apply(CRDS, crd("grpcroutes", "GRPCRoute"));
    server.apply(DEPLOYMENTS, controller(2));
    server.apply(WEBHOOKS, webhook_configuration(Some("LS0tLS1CRUdJTg==")));
    server.apply(PODS, pod(Some(true)));
}

fn options(pod: bool) -> CheckCommand {
    CheckCommand {
        namespace: "plexus".into(),
        pod: pod.then(|| ("shop".into(), "web-1".into())),
    }
}

async fn check(server: &ApiServer, pod: bool) -> Vec<CheckResult> {
    tokio::time::timeout(BOUND, run_checks(&server.client(), &options(pod)))
        .await
        .expect("checks finish within bound")
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
    healthy(&server);
    let results = check(&server, true).await;
    let names: Vec<&str> = results.iter().map(|r| r.name).collect();
    assert_eq!(
        names,
        [API_SERVER, GATEWAY_API, CONTROLLER, WEBHOOK, POD_PROXY]
    );
    assert!(results.iter().all(|r| r.passed), "{results:#?}");
    assert!(by_name(&results, API_SERVER).detail.contains("v1.32.0"));
    assert!(by_name(&results, CONTROLLER).detail.contains("2/2 ready"));
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
    for name in [GATEWAY_API, CONTROLLER, WEBHOOK, POD_PROXY] {
        let result = by_name(&results, name);
        assert!(!result.passed, "{result:?}");
        assert!(result.detail.contains("not found") || name == GATEWAY_API);
        assert!(result.hint.as_deref().is_some_and(|h| !h.is_empty()));
    }
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
    healthy(&server);
    // The controller has not come up, so it never set the caBundle, and the
    // pod's proxy waits for its certificate.
    server.apply(DEPLOYMENTS, controller(0));
    server.apply(WEBHOOKS, webhook_configuration(None));
    server.apply(PODS, pod(Some(false)));
    let results = check(&server, true).await;
    assert!(by_name(&results, GATEWAY_API).passed);
    let controller = by_name(&results, CONTROLLER);
    assert!(!controller.passed && controller.detail.contains("0/2"));
    let webhook = by_name(&results, WEBHOOK);
    assert!(!webhook.passed && webhook.detail.contains("no caBundle"));
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
    healthy(&server);
    let output = run_binary(&server.url(), &["--pod", "shop/web-1"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with('✔')).count(),
        5,
        "{stdout}"
    );

    server.apply(WEBHOOKS, webhook_configuration(None));
    let output = run_binary(&server.url(), &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.contains("✘ webhook configured"), "{stdout}");
    assert!(stdout.contains("    hint: "), "{stdout}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("1 of 4 checks failed"),
        "{output:?}"
    );
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
