//! HTTP/2 specifics: applications that speak only HTTP/2 (h2c), reached from
//! HTTP/1 clients because their target's protocol hint says so (the static
//! file's `protocol`, a Service port's `appProtocol` through the controller),
//! directly and through a pair of proxies; and control-frame floods (PINGs or
//! SETTINGS by the hundred thousand, their ACKs unread, in raw frames),
//! answered with GOAWAY(ENHANCE_YOUR_CALM), while clients whose pings come
//! with requests, or are BDP and keep-alive pings, keep their connection.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use plexus_proxy::RunningProxy;
use plexus_proxy::body;
use plexus_tests::controller::MeshedPair;
use plexus_tests::h2_frames::*;
use plexus_tests::http::{get, http1, http2, text};
use plexus_tests::proxy::proxy;
use plexus_tests::upstream::{echo_upstream, h2c_echo_upstream};
use plexus_tests::wait::{BOUND, bounded, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    let app = h2c_echo_upstream().await;
    let pair = MeshedPair::start(app.addr, |inbound| h2c_services(app.addr.port(), inbound)).await;
    let MeshedPair { client, .. } = pair;

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

// ---- Control-frame floods, in raw frames -------------------------------

/// The proxy's bound on PINGs and SETTINGS a second without a response.
const MAX_CONTROL_REPLIES: usize = 1000;
/// As many frames as the reported flood.
const FLOOD: usize = 200_000;

/// [`FLOOD`] copies of `one`, unread: the proxy reads them all, and its
/// last word is GOAWAY(ENHANCE_YOUR_CALM), before all were answered, then
/// an orderly close. Returns how many were answered.
async fn assert_calmed(addr: SocketAddr, one: &[u8]) -> usize {
    let flooded = flood(addr, one, FLOOD, BOUND).await;
    flooded.written.expect("the proxy reads the whole flood");
    flooded.end.expect("an orderly close, not a reset");
    let frames = frames(&flooded.bytes);
    let last = frames.last().expect("frames");
    assert_eq!(last.kind, GOAWAY, "the last frame is a GOAWAY");
    assert_eq!(last.error_code(), Some(ENHANCE_YOUR_CALM));
    let acks = frames
        .iter()
        .filter(|f| f.kind == one[3] && f.flags & ACK != 0)
        .count();
    assert!(acks < FLOOD, "cut short: {acks} of {FLOOD} answered");
    acks
}

#[tokio::test]
async fn ping_floods_get_goaway_enhance_your_calm_on_both_listeners() {
    let app = echo_upstream().await;
    let proxy = proxy()
        .env("PLEXUS_INBOUND_APP_ADDR", app.addr)
        .start()
        .await;
    let ping = frame(PING, 0, 0, b"flooding");
    for addr in [proxy.outbound_addr, proxy.inbound_addr] {
        let acks = assert_calmed(addr, &ping).await;
        eprintln!("{addr}: {acks} PINGs answered before the GOAWAY");
    }
}

#[tokio::test]
async fn settings_floods_get_goaway_enhance_your_calm() {
    let proxy = proxy().start().await;
    // An empty SETTINGS, and one that changes nothing (INITIAL_WINDOW_SIZE to its default).
    let empty = frame(SETTINGS, 0, 0, &[]);
    let window = frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]);
    for settings in [empty, window] {
        let acks = assert_calmed(proxy.outbound_addr, &settings).await;
        eprintln!("{acks} SETTINGS answered before the GOAWAY");
    }
}

/// `GET http://web/`, HPACK-encoded by hand: `:method GET`, `:scheme http`,
/// `:path /` from the static table, `:authority web` as a literal.
fn get_web(stream: u32) -> Vec<u8> {
    let block = b"\x82\x86\x84\x01\x03web";
    frame(HEADERS, END_STREAM | END_HEADERS, stream, block)
}

#[tokio::test]
async fn a_client_sending_ping_bursts_between_its_requests_keeps_its_connection() {
    let app = echo_upstream().await;
    let proxy = proxy()
        .static_config(hinted("detect", app.addr, false))
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.outbound_addr)
        .await
        .expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.expect("write");
    // Five times the bound in pings, in bursts each followed by a request.
    let per_burst = MAX_CONTROL_REPLIES / 2;
    let burst = frame(PING, 0, 0, b"pingpong").repeat(per_burst);
    let mut read = Vec::new();
    for round in 0..10u32 {
        let id = 2 * round + 1;
        stream
            .write_all(&[burst.clone(), get_web(id)].concat())
            .await
            .expect("write");
        bounded("the burst's ACKs and the response", async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf).await.expect("read");
                assert_ne!(n, 0, "round {round}: the proxy closed the connection");
                read.extend_from_slice(&buf[..n]);
                let frames = frames(&read);
                assert!(
                    frames.iter().all(|f| f.kind != GOAWAY),
                    "round {round}: GOAWAY"
                );
                let acks = frames
                    .iter()
                    .filter(|f| f.kind == PING && f.flags & ACK != 0)
                    .count();
                let answered = frames.iter().any(|f| f.kind == HEADERS && f.stream == id);
                if answered && acks == per_burst * (round as usize + 1) {
                    return;
                }
            }
        })
        .await;
    }
}

#[tokio::test]
async fn an_http2_client_with_keepalive_and_bdp_pings_keeps_its_connection() {
    let app = echo_upstream().await;
    let proxy = proxy()
        .static_config(hinted("detect", app.addr, false))
        .start()
        .await;
    let stream = TcpStream::connect(proxy.outbound_addr)
        .await
        .expect("connect");
    let (mut client, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .keep_alive_interval(Duration::from_millis(5))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let connection = tokio::spawn(connection);
    let body = "x".repeat(256 * 1024);
    for i in 0..20 {
        let request = Request::post(format!("http://web/upload/{i}"))
            .body(body::full(body.clone()))
            .expect("request");
        let response = bounded("response", client.send_request(request))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await.len(), body.len());
        // Not a wait for anything: room for keep-alive pings between requests.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!connection.is_finished(), "the connection is still open");
}
