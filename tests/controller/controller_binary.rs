//! The `plexus-controller` binary on a file feed: it reports where it
//! listens, becomes ready, answers Destination watches, and with a CA
//! directory serves the Identity API (TLS) and issues bootstrap tokens.

use std::path::Path;
use std::time::Duration;

use plexus_api::v1::WatchRequest;
use plexus_api::v1::destination_client::DestinationClient;
use plexus_identity::tls as identity_tls;
use plexus_tests::bins::{bin, start_controller};
use plexus_tests::http::raw_get;
use plexus_tests::temp::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const BOUND: Duration = Duration::from_secs(30);

const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, annotations: {plexus.io/inject: enabled}}
spec: {serviceAccountName: web, containers: [{name: app}]}
status: {podIP: 10.0.0.1}
"#;

/// Starts the binary on [`OBJECTS`] and returns it with its (gRPC, admin,
/// webhook) addresses.
async fn start(dir: &Path, extra: &[&str]) -> (Child, String, String, String) {
    let controller = start_controller(dir, OBJECTS, extra, &[]).await;
    (
        controller.process.child,
        controller.grpc,
        controller.admin,
        controller.webhook,
    )
}

async fn until_ready(admin: &str) {
    let ready = tokio::time::timeout(BOUND, async {
        while !raw_get(admin, "/ready").await.starts_with("HTTP/1.1 200") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "the controller became ready");
}

#[tokio::test]
async fn plaintext_destination_api_from_a_file() {
    let dir = TempDir::new("controller-plaintext");
    let (mut child, grpc, admin, webhook) = start(&dir, &["--grpc-plaintext"]).await;
    until_ready(&admin).await;
    assert_eq!(webhook, "off", "no webhook on the file feed unless asked");

    let mut client = DestinationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut stream = client
        .watch(WatchRequest {
            target: "web.shop.svc.cluster.local:80".into(),
            ..WatchRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(BOUND, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.snapshot && !first.not_meshed);
    assert_eq!(first.target.unwrap().name, "web.shop.svc.cluster.local:80");

    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn identity_mode_makes_a_ca_and_bootstrap_tokens() {
    let dir = TempDir::new("controller-identity");
    let (ca, tokens) = (dir.join("ca"), dir.join("tokens"));
    let (mut child, _grpc, admin, _webhook) = start(
        &dir,
        &[
            &format!("--ca-dir={}", ca.display()),
            &format!("--bootstrap-token-dir={}", tokens.display()),
        ],
    )
    .await;
    until_ready(&admin).await;
    assert!(ca.join("ca.crt").exists() && ca.join("tls.key").exists());
    // The token is issued right after the load that made the controller ready.
    let token = tokens.join("shop.web.token");
    let issued = tokio::time::timeout(BOUND, async {
        while !token.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(issued.is_ok(), "a bootstrap token for the meshed pod");

    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_webhook_serves_https_with_a_certificate_from_the_ca_dir() {
    let dir = TempDir::new("controller-webhook");
    let (ca, tokens) = (dir.join("ca"), dir.join("tokens"));
    let (mut child, _grpc, admin, webhook) = start(
        &dir,
        &[
            &format!("--ca-dir={}", ca.display()),
            &format!("--bootstrap-token-dir={}", tokens.display()),
            "--webhook-addr=127.0.0.1:0",
            "--namespace=mesh",
        ],
    )
    .await;
    until_ready(&admin).await;
    let anchors = std::fs::read_to_string(ca.join("ca.crt")).unwrap();
    let roots = identity_tls::trust_anchors_from_pem(anchors.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(identity_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&webhook).await.unwrap();
    // The names follow --namespace: the API server dials plexus-injector.<ns>.svc.
    let name = rustls::pki_types::ServerName::try_from("plexus-injector.mesh.svc").unwrap();
    let mut tls = tokio::time::timeout(
        BOUND,
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    .unwrap()
    .expect("the webhook's certificate verifies against the CA for the Service name");
    let mut review: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/admission/pod-create.json")).unwrap();
    review["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({"plexus.io/inject": "enabled"});
    let body = review.to_string();
    let head = format!(
        "POST /inject HTTP/1.1\r\nhost: plexus-injector.mesh.svc\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(BOUND, tls.read_to_end(&mut response))
        .await
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, json) = response.split_once("\r\n\r\n").unwrap();
    let answer: serde_json::Value = serde_json::from_str(json).unwrap();
    let k8s_openapi::ByteString(patch) =
        serde_json::from_value(answer["response"]["patch"].clone()).unwrap();
    let patch = String::from_utf8(patch).unwrap();
    // The proxy gets the very PEM of --ca-dir (JSON-escaped inside the patch).
    let escaped = serde_json::to_string(&anchors).unwrap();
    assert!(patch.contains(escaped.trim_matches('"')), "{patch}");

    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn file_feed_without_a_ca_needs_plaintext() {
    let dir = TempDir::new("controller-no-ca");
    let output = Command::new(bin("plexus-controller"))
        .arg(format!("--feed=file:{}", dir.join("none.yaml").display()))
        .args(["--grpc-addr=127.0.0.1:0", "--admin-addr=127.0.0.1:0"])
        .output();
    let output = tokio::time::timeout(BOUND, output).await.unwrap().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--ca-dir"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
