//! The controller's own spans: the binary, given `--otlp-endpoint`, exports
//! its Certify calls, Destination pushes and file-feed loads over OTLP/gRPC to
//! a real receiver (`plexusctl traces`'), flushes them on SIGTERM, and never
//! records a token.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use plexus_api::v1::destination_client::DestinationClient;
use plexus_api::v1::identity_client::IdentityClient;
use plexus_api::v1::{CertifyRequest, WatchRequest};
use plexus_identity::tls::{client_config, trust_anchors_from_pem};
use plexus_identity::{CertificateRequest, SpiffeId};
use plexus_tests::bins::start_controller;
use plexus_tests::temp::TempDir;
use plexus_traces::{AttributeValue, Receiver, Span, StatusCode};
use tokio::net::TcpStream;
use tokio::process::Child;
use tonic::transport::{Channel, Endpoint};

const BOUND: Duration = Duration::from_secs(30);
const WRONG_TOKEN: &str = "not-a-token-but-secret-looking-0123456789";

const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}, annotations: {plexus.io/inject: enabled}}
spec: {serviceAccountName: web, containers: [{name: app}]}
status: {podIP: 10.0.0.1}
"#;

/// Starts the binary with TLS (a CA directory, bootstrap tokens) and OTLP
/// export to `otlp`; returns it with its gRPC address.
async fn start(dir: &Path, otlp: &str) -> (Child, String) {
    let ca_dir = format!("--ca-dir={}", dir.join("ca").display());
    let token_dir = format!("--bootstrap-token-dir={}", dir.join("tokens").display());
    let otlp = format!("--otlp-endpoint={otlp}");
    let controller = start_controller(
        dir,
        OBJECTS,
        &[&ca_dir, &token_dir, &otlp],
        &[
            ("PLEXUS_NAMESPACE", "mesh"),
            ("PLEXUS_POD_NAME", "plexus-controller-0"),
        ],
    )
    .await;
    (controller.process.child, controller.grpc)
}

/// A gRPC channel over TLS that accepts only the controller's identity.
fn channel(grpc: &str, anchors_pem: &[u8]) -> Channel {
    let roots = trust_anchors_from_pem(anchors_pem).unwrap();
    let controller: SpiffeId = "spiffe://cluster.local/ns/mesh/sa/plexus-controller"
        .parse()
        .unwrap();
    let config = Arc::new(client_config(roots, controller, None).unwrap());
    let connector = tower::service_fn(move |uri: http::Uri| {
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        async move {
            let addr = format!(
                "{}:{}",
                uri.host().unwrap_or_default(),
                uri.port_u16().unwrap_or(0)
            );
            let tcp = TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("controller")
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Ok::<_, io::Error>(TokioIo::new(connector.connect(name, tcp).await?))
        }
    });
    Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect_with_connector_lazy(connector)
}

/// Waits for a file another process writes.
async fn read_when_written(path: &Path) -> Vec<u8> {
    tokio::time::timeout(BOUND, async {
        loop {
            match std::fs::read(path) {
                Ok(bytes) if !bytes.is_empty() => return bytes,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} was written", path.display()))
}

fn text(span: &Span, key: &str) -> String {
    span.attr(key)
        .map(ToString::to_string)
        .unwrap_or_else(|| panic!("span {} has no {key}: {:?}", span.name, span.attributes))
}

/// Every string in an attribute value, nested ones included.
fn strings(value: &AttributeValue, out: &mut Vec<String>) {
    match value {
        AttributeValue::String(s) => out.push(s.clone()),
        AttributeValue::Array(items) => items.iter().for_each(|v| strings(v, out)),
        AttributeValue::Map(map) => map.values().for_each(|v| strings(v, out)),
        other => out.push(other.to_string()),
    }
}

#[tokio::test]
async fn certify_and_watch_pushes_are_traced_without_tokens() {
    let dir = TempDir::new("controller-tracing");
    let mut receiver = Receiver::bind(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let (mut child, grpc) = start(&dir, &receiver.grpc_endpoint()).await;
    let token = read_when_written(&dir.join("tokens").join("shop.web.token")).await;
    let token = String::from_utf8(token).unwrap().trim().to_string();
    let anchors = read_when_written(&dir.join("ca").join("ca.crt")).await;
    let channel = channel(&grpc, &anchors);

    // One certificate issued, one refused for a wrong token.
    let web: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let mut identity = IdentityClient::new(channel.clone());
    let csr = CertificateRequest::new(&web).unwrap();
    let request = |token: &str| CertifyRequest {
        identity: web.to_string(),
        token: token.to_string(),
        csr_der: csr.csr.to_vec(),
    };
    tokio::time::timeout(BOUND, identity.certify(request(&token)))
        .await
        .unwrap()
        .expect("the bootstrap token is accepted");
    let refused = tokio::time::timeout(BOUND, identity.certify(request(WRONG_TOKEN)))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // A watch gets its snapshot push.
    let mut destination = DestinationClient::new(channel);
    let mut stream = tokio::time::timeout(
        BOUND,
        destination.watch(WatchRequest {
            target: "web.shop.svc.cluster.local:80".into(),
            proxy_id: "client-proxy-1".into(),
            ..WatchRequest::default()
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    let first = tokio::time::timeout(BOUND, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.snapshot);
    drop(stream);

    // SIGTERM: the controller stops and flushes its spans before exiting.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(BOUND, child.wait())
        .await
        .expect("the controller exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");

    // Every span the receiver got, by name.
    let mut spans: HashMap<String, Vec<Span>> = HashMap::new();
    let wanted = |spans: &HashMap<String, Vec<Span>>| {
        spans.get("plexus.identity.certify").map_or(0, Vec::len) >= 2
            && spans.contains_key("plexus.destination.push")
            && spans.contains_key("plexus.feed.file.load")
    };
    let collected = tokio::time::timeout(BOUND, async {
        while !wanted(&spans) {
            let Some(trace) = receiver.next_trace().await else {
                break;
            };
            for span in trace.spans {
                spans.entry(span.name.clone()).or_default().push(span);
            }
        }
    })
    .await;
    assert!(
        collected.is_ok() && wanted(&spans),
        "spans received: {:?}",
        spans.keys().collect::<Vec<_>>()
    );

    let certify = &spans["plexus.identity.certify"];
    let issued = certify
        .iter()
        .find(|s| text(s, "plexus.identity.outcome") == "issued")
        .expect("a span of the issued certificate");
    assert_eq!(issued.service, "plexus-controller");
    assert_eq!(text(issued, "plexus.identity.requested"), web.to_string());
    assert_eq!(text(issued, "rpc.method"), "Certify");
    assert_eq!(issued.attr_i64("rpc.grpc.status_code"), Some(0));
    assert!(
        issued
            .attr_i64("plexus.certificate.not_after_unix")
            .unwrap_or(0)
            > 0
    );
    assert_ne!(issued.status.code, StatusCode::Error);
    let refused = certify
        .iter()
        .find(|s| text(s, "plexus.identity.outcome") == "token_refused")
        .expect("a span of the refused token");
    assert_eq!(refused.status.code, StatusCode::Error);
    assert_eq!(
        refused.attr_i64("rpc.grpc.status_code"),
        Some(tonic::Code::Unauthenticated as i64)
    );

    let push = spans["plexus.destination.push"]
        .iter()
        .find(|s| text(s, "plexus.proxy_id") == "client-proxy-1")
        .expect("a push to the test's watch");
    assert_eq!(push.service, "plexus-controller");
    assert_eq!(text(push, "plexus.target"), "web.shop.svc.cluster.local:80");
    assert_eq!(text(push, "plexus.push.kind"), "snapshot");
    assert_eq!(text(push, "plexus.push.parts"), "protocol,routes,backends");
    assert_eq!(
        push.attr("plexus.push.snapshot"),
        Some(&AttributeValue::Bool(true))
    );
    assert!(
        push.attr_i64("plexus.push.endpoints").is_some(),
        "{:?}",
        push.attributes
    );

    let load = &spans["plexus.feed.file.load"][0];
    assert_eq!(load.attr_i64("plexus.feed.objects"), Some(2));
    assert_eq!(load.attr_i64("plexus.feed.problems"), Some(0));

    // No token in any attribute of any span, nor in a status message.
    for span in spans.values().flatten() {
        let mut values = vec![span.status.message.clone()];
        for value in span.attributes.values() {
            strings(value, &mut values);
        }
        for value in values {
            assert!(
                !value.contains(&token) && !value.contains(WRONG_TOKEN),
                "span {} carries a token: {value}",
                span.name
            );
        }
    }
}
