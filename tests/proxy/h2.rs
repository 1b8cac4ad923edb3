//! HTTP/2 specifics: applications that speak only HTTP/2 (h2c), reached from
//! HTTP/1 clients because their target's protocol hint says so (the static
//! file's `protocol`, a Service port's `appProtocol` through the controller),
//! directly and through a pair of proxies.

use std::net::SocketAddr;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use plexus_discovery::feed::{self, Readiness};
use plexus_discovery::index::{DEFAULT_CLUSTER_DOMAIN, Index, IndexConfig, SharedIndex};
use plexus_proxy::RunningProxy;
use plexus_proxy::body;
use plexus_tests::controller::{Authority, TRUST_DOMAIN, id};
use plexus_tests::http::{get, http1, http2, text};
use plexus_tests::proxy::proxy;
use plexus_tests::temp::TempDir;
use plexus_tests::upstream::{echo_upstream, h2c_echo_upstream};
use plexus_tests::wait::{BOUND, bounded, within};

/// A static file: `web:80` → `endpoint`, with the target's protocol hint.
fn hinted(protocol: &str, endpoint: SocketAddr, meshed: bool) -> String {
    format!(
        "destinations:\n  - aliases: [\"web:80\"]\n    target:\n      name: web.shop.svc.cluster.local:80\n      protocol: {{ protocol: {protocol} }}\n      routes: {{ default_backend: default }}\n      backends:\n        backends:\n          default: {{ endpoints: [{{ address: \"{endpoint}\", ready: true, meshed: {meshed} }}] }}\n"
    )
}

fn header<B>(response: &http::Response<B>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .unwrap_or_default()
}

/// One HTTP/1.1 request, as curl sends it, through `proxy`'s outbound listener.
async fn curl(proxy: &RunningProxy, host: &str, body: &str) -> http::Response<Incoming> {
    let mut client = http1(proxy.outbound_addr).await;
    let request = Request::post("/items?x=1")
        .header("host", host)
        .body(body::full(body.to_owned()))
        .expect("request");
    bounded("the response", client.send_request(request))
        .await
        .expect("response")
}

/// What the h2c app reports about an HTTP/1 client's request that reached it.
async fn assert_reached_as_h2c(response: http::Response<Incoming>, authority: &str) {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.version(),
        http::Version::HTTP_11,
        "the client gets HTTP/1.1"
    );
    assert_eq!(
        header(&response, "x-version"),
        "HTTP/2.0",
        "the app saw HTTP/2"
    );
    assert_eq!(
        header(&response, "x-host"),
        authority,
        ":authority is the Host"
    );
    assert_eq!(
        header(&response, "x-host-header"),
        "-",
        "Host became :authority"
    );
    assert_eq!(header(&response, "x-path"), "/items");
    assert_eq!(text(response).await, "the body");
}

#[tokio::test]
async fn an_http1_request_reaches_an_h2c_app_hinted_http2_in_the_static_file() {
    let app = h2c_echo_upstream().await;

    // Without the hint the app gets HTTP/1 and refuses it.
    let unhinted = proxy()
        .static_config(hinted("detect", app.addr, false))
        .start()
        .await;
    let response = curl(&unhinted, "web", "the body").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(header(&response, "plexus-error"), "upstream-failed");

    let proxy = proxy()
        .static_config(hinted("http2", app.addr, false))
        .start()
        .await;
    assert_reached_as_h2c(curl(&proxy, "web", "the body").await, "web").await;
    // HTTP/2 clients are unchanged.
    let mut client = http2(proxy.outbound_addr).await;
    let response = bounded(
        "h2 response",
        client.send_request(get("http://web/items", "web")),
    )
    .await
    .expect("response");
    assert_eq!(header(&response, "x-version"), "HTTP/2.0");
}

#[tokio::test]
async fn an_http1_request_reaches_an_h2c_app_behind_a_meshed_proxy() {
    let app = h2c_echo_upstream().await;
    let server = proxy()
        .env("PLEXUS_INBOUND_APP_ADDR", app.addr)
        .start()
        .await;
    // No `plexus-orig-proto` on the hop: the server proxy keeps HTTP/2.
    let client = proxy()
        .static_config(hinted("http2", server.inbound_addr, true))
        .start()
        .await;
    assert_reached_as_h2c(curl(&client, "web", "the body").await, "web").await;
}

#[tokio::test]
async fn an_http2_request_for_an_app_hinted_http1_reaches_it_as_http1() {
    let app = echo_upstream().await;
    let direct = proxy()
        .static_config(hinted("http1", app.addr, false))
        .start()
        .await;
    let server = proxy()
        .env("PLEXUS_INBOUND_APP_ADDR", app.addr)
        .start()
        .await;
    let meshed = proxy()
        .static_config(hinted("http1", server.inbound_addr, true))
        .start()
        .await;
    for proxy in [&direct, &meshed] {
        let mut client = http2(proxy.outbound_addr).await;
        let response = bounded("response", client.send_request(get("http://web/h1", "web")))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(header(&response, "x-version"), "HTTP/1.1");
        assert_eq!(header(&response, "x-host"), "web");
    }
}

/// The file feed's objects: in the meshed namespace `shop`, Service `grpc`
/// (port 80, `appProtocol: kubernetes.io/h2c`) on an unmeshed endpoint, the
/// h2c app itself; Service `web` (same `appProtocol`) on the meshed pod
/// `web-1`, announced on its sidecar's inbound port; and `frontend-1`.
fn h2c_services(app_port: u16, inbound_port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop, annotations: {{plexus.io/inject: enabled}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: grpc, namespace: shop}}
spec: {{clusterIP: 10.96.0.11, ports: [{{name: grpc, port: 80, targetPort: {app_port}, appProtocol: kubernetes.io/h2c}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: grpc-local, namespace: shop, labels: {{kubernetes.io/service-name: grpc}}}}
addressType: IPv4
ports: [{{name: grpc, port: {app_port}, protocol: TCP}}]
endpoints:
  - addresses: ["127.0.0.1"]
    conditions: {{ready: true, serving: true, terminating: false}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{clusterIP: 10.96.0.10, ports: [{{name: grpc, port: 80, targetPort: {inbound_port}, appProtocol: kubernetes.io/h2c}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-local, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: grpc, port: {inbound_port}, protocol: TCP}}]
endpoints:
  - addresses: ["127.0.0.1"]
    conditions: {{ready: true, serving: true, terminating: false}}
    targetRef: {{kind: Pod, name: web-1, namespace: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-1, namespace: shop}}
spec: {{serviceAccountName: web, containers: [{{name: app}}]}}
status: {{podIP: 127.0.0.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: frontend-1, namespace: shop}}
spec: {{serviceAccountName: frontend, containers: [{{name: app}}]}}
status: {{podIP: 127.0.0.2}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_protocol_h2c_of_a_service_port_reaches_h2c_apps_directly_and_over_mtls() {
    let index = SharedIndex::new(IndexConfig {
        trust_domain: TRUST_DOMAIN.into(),
        cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
    });
    let controller = Authority::controller(index.clone()).await;
    let sidecar = |sa: &str, pod: &str| {
        controller
            .sidecar(&id("shop", sa))
            .env("PLEXUS_CONTROLLER_ADDR", controller.addr)
            .env("PLEXUS_POD_NAMESPACE", "shop")
            .env("PLEXUS_POD_NAME", pod)
    };
    let app = h2c_echo_upstream().await;
    let server = sidecar("web", "web-1")
        .env("PLEXUS_INBOUND_APP_ADDR", app.addr)
        .start()
        .await;
    let client = sidecar("frontend", "frontend-1").start().await;
    let dir = TempDir::new("h2c");
    let file = dir.join("objects.yaml");
    let objects = h2c_services(app.addr.port(), server.inbound_addr.port());
    std::fs::write(&file, objects).expect("feed file");
    tokio::spawn(feed::file::run(
        file,
        index,
        Readiness::default(),
        |_: &Index| {},
    ));

    for service in ["grpc", "web"] {
        let authority = format!("{service}.shop.svc.cluster.local:80");
        // Until the proxies have their certificates and the controller's view.
        let response = within(BOUND, "the h2c app answers through the proxy", || {
            let (client, authority) = (&client, authority.clone());
            async move {
                let response = curl(client, &authority, "the body").await;
                match response.status() {
                    StatusCode::OK => Ok(response),
                    status => Err(format!("{status} {:?}", response.headers())),
                }
            }
        })
        .await;
        assert_reached_as_h2c(response, &authority).await;
    }
}
