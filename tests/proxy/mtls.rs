//! Proxy-to-proxy mTLS on loopback: a client proxy (outbound) and a server
//! proxy (inbound, in front of an app), each with a certificate from the
//! controller's real Identity API (its CA, bootstrap tokens and TLS serving,
//! in-process), with a recording TCP relay between the two proxies.
//!
//! An expired certificate being refused is covered where the verifier lives:
//! `plexus-identity`'s `verify` tests, and `tls::tests::keeps_the_old_certificate_while_certify_fails_but_never_presents_it_expired`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use plexus_identity::{CertificateRequest, SpiffeId, Validity, tls};
use plexus_proxy::RunningProxy;
use plexus_proxy::body;
use plexus_tests::controller::{Authority, MeshedPair, id};
use plexus_tests::http::{admin_get, get, http1, text};
use plexus_tests::upstream::{Upstream, echo_after_upgrade, http_upstream, tcp_upstream};
use plexus_tests::wait::{bounded, within};
use rustls::sign::SingleCertAndKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn web() -> SpiffeId {
    id("shop", "web")
}

pub(super) fn frontend() -> SpiffeId {
    id("shop", "frontend")
}

/// The app: answers with the `plexus-client-id` it received (`-` if none).
pub(crate) async fn app() -> Upstream {
    http_upstream(|request: Request<Incoming>| async move {
        let client = request
            .headers()
            .get_all("plexus-client-id")
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
            .join(",");
        Response::builder()
            .header(
                "x-client-id",
                if client.is_empty() {
                    "-".into()
                } else {
                    client
                },
            )
            .body(body::full("hello"))
            .expect("response")
    })
    .await
}

/// What the relay saw: connections, and the first bytes each client sent.
#[derive(Default)]
struct Recording {
    connections: AtomicUsize,
    first_bytes: Mutex<Vec<Vec<u8>>>,
}

/// A TCP relay to `to` that records the client-to-server bytes' start.
async fn relay(to: SocketAddr) -> (SocketAddr, Arc<Recording>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("relay addr");
    let recording = Arc::new(Recording::default());
    let seen = recording.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            seen.connections.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(to).await else {
                    return;
                };
                // Record up to 4 KiB of what the client sends first.
                let mut first = vec![0u8; 4096];
                let Ok(n) = client.read(&mut first).await else {
                    return;
                };
                first.truncate(n);
                if server.write_all(&first).await.is_err() {
                    return;
                }
                seen.first_bytes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(first);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, recording)
}

/// A static config: `web:80` has one meshed endpoint, expected to be `identity`.
fn meshed_target(endpoint: SocketAddr, identity: &SpiffeId) -> String {
    format!(
        "destinations:\n  - aliases: [\"web:80\"]\n    target:\n      name: web.shop.svc.cluster.local:80\n      routes: {{ default_backend: default }}\n      backends:\n        backends:\n          default: {{ endpoints: [{{ address: \"{endpoint}\", ready: true, meshed: true, identity: \"{identity}\" }}] }}\n"
    )
}

pub(crate) async fn wait_ready(proxy: &RunningProxy) {
    bounded("the proxy gets its certificate", async {
        while admin_get(proxy.admin_addr, "/ready").await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A sample of `/metrics` by its name and labels (the line's prefix).
pub(crate) async fn metric(proxy: &RunningProxy, series: &str) -> f64 {
    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0.0)
}

pub(crate) async fn call(proxy: &RunningProxy, forged: Option<&str>) -> Response<Incoming> {
    let mut send = http1(proxy.outbound_addr).await;
    let mut request = get("/", "web:80");
    if let Some(forged) = forged {
        request
            .headers_mut()
            .insert("plexus-client-id", forged.parse().expect("header"));
    }
    send.send_request(request).await.expect("response")
}

pub(crate) fn header<'a>(response: &'a Response<Incoming>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Server proxy in front of `app` as `server_id`, and a client proxy as
/// `frontend` whose `web:80` goes through a recording relay to it,
/// expecting `expected`.
struct Pair {
    client: RunningProxy,
    server: RunningProxy,
    recording: Arc<Recording>,
}

async fn pair(
    client_ca: &Authority,
    server_ca: &Authority,
    server_id: &SpiffeId,
    expected: &SpiffeId,
    server_env: &[(&str, &str)],
) -> Pair {
    let app = app().await;
    pair_for(
        app.addr, client_ca, server_ca, server_id, expected, server_env,
    )
    .await
}

async fn pair_for(
    app: SocketAddr,
    client_ca: &Authority,
    server_ca: &Authority,
    server_id: &SpiffeId,
    expected: &SpiffeId,
    server_env: &[(&str, &str)],
) -> Pair {
    let mut server = server_ca
        .sidecar(server_id)
        .env("PLEXUS_INBOUND_APP_ADDR", app);
    for (name, value) in server_env {
        server = server.env(name, value);
    }
    let server = server.start().await;
    let (relay, recording) = relay(server.inbound_addr).await;
    let client = client_ca
        .sidecar(&frontend())
        .static_config(meshed_target(relay, expected))
        .start()
        .await;
    wait_ready(&server).await;
    wait_ready(&client).await;
    Pair {
        client,
        server,
        recording,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_sees_the_verified_client_identity_and_the_wire_carries_only_tls() {
    let ca = Authority::start(Duration::from_secs(3600)).await;
    let p = pair(&ca, &ca, &web(), &web(), &[]).await;

    let response = bounded(
        "a request",
        call(&p.client, Some("spiffe://evil/ns/x/sa/y")),
    )
    .await;
    assert_eq!(response.status(), 200, "{:?}", response.headers());
    assert_eq!(
        header(&response, "x-client-id"),
        frontend().as_str(),
        "the forged header is replaced by the verified identity"
    );
    assert_eq!(text(response).await, "hello");

    let first = p.recording.first_bytes.lock().unwrap().clone();
    assert_eq!(first.len(), 1, "one connection between the proxies");
    let bytes = &first[0];
    assert_eq!(bytes.first(), Some(&0x16), "a TLS handshake record");
    let wire = String::from_utf8_lossy(bytes);
    for plaintext in [
        "GET ",
        "HTTP/1.1",
        "PRI * HTTP/2.0",
        "plexus-client-id",
        "web:80",
    ] {
        assert!(
            !wire.contains(plaintext),
            "{plaintext:?} visible on the wire"
        );
    }

    // What the proxies report about it.
    let (_, config) = admin_get(p.client.admin_addr, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).expect("/config JSON");
    assert_eq!(config["identity"]["identity"], frontend().as_str());
    assert_eq!(config["identity"]["ready"], true);
    let not_after = config["identity"]["not_after_unix"]
        .as_u64()
        .expect("expiry");
    // The gauge follows the certificate from its own task: it may lag the
    // handshake that used the certificate by a scheduling step.
    within(Duration::from_secs(5), "the expiry gauge", || async {
        let gauge = metric(
            &p.client,
            "plexus_proxy_identity_certificate_expiry_seconds ",
        )
        .await;
        if gauge as u64 == not_after {
            Ok(())
        } else {
            Err(format!("gauge {gauge}, certificate {not_after}"))
        }
    })
    .await;
    assert_eq!(
        metric(
            &p.client,
            "plexus_proxy_tls_handshakes_total{direction=\"outbound\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &p.server,
            "plexus_proxy_tls_handshakes_total{direction=\"inbound\"}"
        )
        .await,
        1.0
    );
}

async fn assert_refused(client: &RunningProxy, reason: &str, expected: &SpiffeId) {
    let response = bounded("a request", call(client, None)).await;
    assert_eq!(response.status(), 502);
    assert_eq!(header(&response, "plexus-error"), "connect-failed");
    let body = text(response).await;
    assert!(body.contains(expected.as_str()), "{body}");
    assert!(body.contains(reason), "{body}");
    let failures = metric(
        client,
        &format!(
            "plexus_proxy_tls_handshake_failures_total{{direction=\"outbound\",reason=\"{reason}\"}}"
        ),
    )
    .await;
    assert!(failures >= 1.0, "{reason} counted: {failures}");
}

/// A TLS server at a meshed endpoint's address that presents a valid
/// certificate of the mesh, for another service account than expected
/// (a stale endpoint whose IP now belongs to another pod, or an impostor).
/// A proxy would not present its certificate for another workload's name,
/// so this one answers any name.
async fn impostor(ca: &Authority, presented: &SpiffeId) -> SocketAddr {
    let request = CertificateRequest::new(presented).expect("CSR");
    let issued = ca
        .ca
        .certify(
            &request.csr,
            presented,
            Validity::starting_now(Duration::from_secs(3600)),
        )
        .expect("certificate");
    let key = tls::certified_key(&request.key, issued.leaf, issued.chain).expect("key");
    let roots = tls::trust_anchors_from_pem(ca.ca.trust_anchor_pem().as_bytes()).expect("roots");
    let config = tls::server_config(
        roots,
        tls::ClientAuth::Optional,
        Arc::new(SingleCertAndKey::from(key)),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_service_accounts_certificate_is_refused() {
    let ca = Authority::start(Duration::from_secs(3600)).await;
    let endpoint = impostor(&ca, &id("shop", "api")).await;
    let client = ca
        .sidecar(&frontend())
        .static_config(meshed_target(endpoint, &web()))
        .start()
        .await;
    wait_ready(&client).await;
    assert_refused(&client, "identity_mismatch", &web()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certified_by_another_ca_is_refused() {
    let ours = Authority::start(Duration::from_secs(3600)).await;
    let theirs = Authority::start(Duration::from_secs(3600)).await;
    let p = pair(&ours, &theirs, &web(), &web(), &[]).await;
    assert_refused(&p.client, "unknown_ca", &web()).await;
}

/// A plaintext client straight to the server proxy's inbound port.
pub(crate) async fn plaintext_get(server: &RunningProxy) -> Response<Incoming> {
    let mut send = http1(server.inbound_addr).await;
    let mut request = get("/", "web:80");
    request.headers_mut().insert(
        "plexus-client-id",
        "spiffe://forged/ns/a/sa/b".parse().unwrap(),
    );
    bounded("a plaintext request", send.send_request(request))
        .await
        .expect("response")
}

/// Opaque plaintext TCP to the server proxy: returns whether the proxy
/// closed it without a byte from the app (any answer means the bytes
/// reached the app).
async fn plaintext_tcp_is_closed(server: &RunningProxy) -> bool {
    let mut stream = TcpStream::connect(server.inbound_addr)
        .await
        .expect("connect");
    stream
        .write_all(b"HELLO \x01\x02 not http\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    matches!(
        bounded("the connection's fate", stream.read(&mut buf)).await,
        Ok(0) | Err(_)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_plaintext_while_permissive_accepts_it() {
    let ca = Authority::start(Duration::from_secs(3600)).await;

    let strict = pair(
        &ca,
        &ca,
        &web(),
        &web(),
        &[("PLEXUS_INBOUND_MTLS_MODE", "strict")],
    )
    .await;
    let refused = plaintext_get(&strict.server).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(header(&refused, "plexus-error"), "forbidden");
    assert!(plaintext_tcp_is_closed(&strict.server).await);
    // mTLS from a meshed client is what STRICT is for.
    let meshed = bounded("an mTLS request", call(&strict.client, None)).await;
    assert_eq!(meshed.status(), 200);
    assert_eq!(header(&meshed, "x-client-id"), frontend().as_str());

    let permissive = pair(&ca, &ca, &web(), &web(), &[]).await;
    let accepted = plaintext_get(&permissive.server).await;
    assert_eq!(accepted.status(), 200);
    assert_eq!(
        header(&accepted, "x-client-id"),
        "-",
        "a plaintext client's plexus-client-id is stripped"
    );

    // Opaque TCP under PERMISSIVE reaches an app that never closes first
    // (an HTTP app answering garbage may reset the connection).
    let database = tcp_upstream(b"greeting\n").await;
    let permissive_tcp = ca
        .sidecar(&web())
        .env("PLEXUS_INBOUND_APP_ADDR", database)
        .start()
        .await;
    wait_ready(&permissive_tcp).await;
    assert!(!plaintext_tcp_is_closed(&permissive_tcp).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_identities_get_in() {
    let ca = Authority::start(Duration::from_secs(3600)).await;
    let allowed = format!("{}, {}", id("shop", "admin"), id("ops", "prober"));
    let p = pair(
        &ca,
        &ca,
        &web(),
        &web(),
        &[("PLEXUS_INBOUND_ALLOWED_IDENTITIES", &allowed)],
    )
    .await;
    let response = bounded("a request", call(&p.client, None)).await;
    assert_eq!(response.status(), 403);
    assert_eq!(header(&response, "plexus-error"), "forbidden");
    assert!(text(response).await.contains(frontend().as_str()));

    let with_frontend = format!("{allowed},{}", frontend());
    let p = pair(
        &ca,
        &ca,
        &web(),
        &web(),
        &[("PLEXUS_INBOUND_ALLOWED_IDENTITIES", &with_frontend)],
    )
    .await;
    let response = bounded("a request", call(&p.client, None)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_cost_at_most_two_handshakes() {
    const REQUESTS: usize = 10_000;
    const CONNECTIONS: usize = 16;
    let ca = Authority::start(Duration::from_secs(3600)).await;
    let p = pair(&ca, &ca, &web(), &web(), &[]).await;

    let started = std::time::Instant::now();
    let outbound = p.client.outbound_addr;
    let run = async {
        let mut workers = Vec::new();
        for _ in 0..CONNECTIONS {
            workers.push(tokio::spawn(async move {
                let mut send = http1(outbound).await;
                let mut ok = 0;
                for _ in 0..REQUESTS / CONNECTIONS {
                    send.ready().await.expect("connection open");
                    let response = send
                        .send_request(get("/", "web:80"))
                        .await
                        .expect("response");
                    assert_eq!(response.status(), 200);
                    text(response).await;
                    ok += 1;
                }
                ok
            }));
        }
        let mut ok = 0;
        for worker in workers {
            ok += worker.await.expect("worker");
        }
        ok
    };
    let ok = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("10,000 requests within 120 s");
    let elapsed = started.elapsed();
    assert_eq!(ok, REQUESTS);
    let connections = p.recording.connections.load(Ordering::SeqCst);
    let handshakes = metric(
        &p.server,
        "plexus_proxy_tls_handshakes_total{direction=\"inbound\"}",
    )
    .await;
    eprintln!(
        "{ok} requests in {elapsed:?} over {CONNECTIONS} app connections: \
         {connections} proxy-to-proxy connections, {handshakes} handshakes"
    );
    assert!(connections <= 2, "{connections} connections");
    assert!((1.0..=2.0).contains(&handshakes), "{handshakes} handshakes");
}

/// The serial of a proxy's current certificate.
async fn serial(proxy: &RunningProxy) -> String {
    let (_, config) = admin_get(proxy.admin_addr, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).expect("/config JSON");
    config["identity"]["serial"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_flows_through_certificate_rotations_without_a_failure() {
    // Certificates last 4 s (renewed at about 2.8 s); traffic runs 12 s.
    const LIFETIME: Duration = Duration::from_secs(4);
    const RUN: Duration = Duration::from_secs(12);
    let ca = Authority::start(LIFETIME).await;
    let p = pair(&ca, &ca, &web(), &web(), &[]).await;
    let relay_addr = {
        // New client proxies reach the same server through a second relay.
        relay(p.server.inbound_addr).await.0
    };

    let deadline = tokio::time::Instant::now() + RUN;
    let mut server_serials = std::collections::HashSet::new();
    let mut client_serials = std::collections::HashSet::new();
    let (mut pooled, mut fresh) = (0u32, 0u32);
    let mut send = http1(p.client.outbound_addr).await;
    let mut last_fresh = tokio::time::Instant::now();
    while tokio::time::Instant::now() < deadline {
        assert!(pooled < 1_000_000, "bounded loop");
        // Traffic on the long-lived pooled mTLS connection.
        bounded("the connection is ready", send.ready())
            .await
            .expect("connection open");
        let response = bounded("a request", send.send_request(get("/", "web:80")))
            .await
            .expect("response");
        assert_eq!(response.status(), 200, "request {pooled} failed");
        assert_eq!(header(&response, "x-client-id"), frontend().as_str());
        text(response).await;
        pooled += 1;

        // Every 500 ms: a new client proxy, so new full handshakes meet the
        // server's current certificate.
        if last_fresh.elapsed() >= Duration::from_millis(500) {
            last_fresh = tokio::time::Instant::now();
            let newcomer = ca
                .sidecar(&frontend())
                .static_config(meshed_target(relay_addr, &web()))
                .start()
                .await;
            wait_ready(&newcomer).await;
            let response = bounded("a new client's request", call(&newcomer, None)).await;
            assert_eq!(response.status(), 200, "new client {fresh} failed");
            text(response).await;
            fresh += 1;
            server_serials.insert(serial(&p.server).await);
            client_serials.insert(serial(&p.client).await);
            newcomer.shutdown().await;
        }
    }
    eprintln!(
        "{pooled} pooled requests, {fresh} new clients; server certificates {}, client certificates {}",
        server_serials.len(),
        client_serials.len()
    );
    assert!(
        server_serials.len() >= 3,
        "the server rotated at least twice"
    );
    assert!(
        client_serials.len() >= 3,
        "the client rotated at least twice"
    );
    let failures = metric(
        &p.client,
        "plexus_proxy_tls_handshake_failures_total{direction=\"outbound\",reason=\"expired\"}",
    )
    .await;
    assert_eq!(failures, 0.0);
}

/// The file feed's objects: `web-1` (service account `web`) behind the
/// Service `web`, announced on its sidecar's inbound port (local mode), in a
/// namespace whose mTLS mode is `mode` and whose `plexus.io/allowed-clients`
/// is `allowed_clients` (empty: any); `frontend-1` (service account `frontend`).
pub(crate) fn objects(mode: &str, allowed_clients: &str, inbound_port: u16) -> String {
    objects_annotated(mode, allowed_clients, "", inbound_port)
}

/// [`objects`] with `web_annotations` (YAML flow-map entries, each followed
/// by a comma) on `web-1`, and `admin-1` (service account `admin`).
pub(crate) fn objects_annotated(
    mode: &str,
    allowed_clients: &str,
    web_annotations: &str,
    inbound_port: u16,
) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop, annotations: {{plexus.io/inject: enabled, plexus.io/mtls-mode: {mode}, plexus.io/allowed-clients: "{allowed_clients}"}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80, targetPort: {inbound_port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-local, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: {inbound_port}, protocol: TCP}}]
endpoints:
  - addresses: ["127.0.0.1"]
    conditions: {{ready: true, serving: true, terminating: false}}
    targetRef: {{kind: Pod, name: web-1, namespace: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-1, namespace: shop, annotations: {{{web_annotations} plexus.io/inject: enabled}}}}
spec: {{serviceAccountName: web, containers: [{{name: app}}]}}
status: {{podIP: 127.0.0.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: frontend-1, namespace: shop, annotations: {{plexus.io/inject: enabled}}}}
spec: {{serviceAccountName: frontend, containers: [{{name: app}}]}}
status: {{podIP: 127.0.0.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: admin-1, namespace: shop, annotations: {{plexus.io/inject: enabled}}}}
spec: {{serviceAccountName: admin, containers: [{{name: app}}]}}
status: {{podIP: 127.0.0.3}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_feeds_destinations_and_the_inbound_policy_over_tls() {
    let app = app().await;
    let pair = MeshedPair::start(app.addr, |inbound| objects("strict", "", inbound)).await;
    let MeshedPair {
        server,
        client,
        file,
        ready,
        ..
    } = pair;
    wait_ready(&server).await;
    wait_ready(&client).await;

    // STRICT, from the namespace's annotation through WatchServer.
    bounded("the server proxy applies STRICT", async {
        while plaintext_get(&server).await.status() != 403 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(plaintext_tcp_is_closed(&server).await);

    // The target, its endpoint and the endpoint's identity come from the
    // Destination API; the hop is mTLS, which STRICT lets through.
    let response = bounded("a meshed request through the controller's view", async {
        loop {
            let response = call(&client, None).await;
            if response.status() == 200 {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(header(&response, "x-client-id"), frontend().as_str());
    let (_, config) = admin_get(client.admin_addr, "/config").await;
    assert!(config.contains(web().as_str()), "{config}");
    assert_eq!(
        metric(
            &client,
            "plexus_proxy_tls_handshakes_total{direction=\"outbound\"}"
        )
        .await,
        1.0
    );

    // A policy change reaches the running proxy.
    std::fs::write(&file, objects("permissive", "", server.inbound_addr.port()))
        .expect("feed file");
    bounded("the server proxy applies PERMISSIVE", async {
        while plaintext_get(&server).await.status() != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ready.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_to_a_meshed_target_travels_inside_mtls() {
    let ca = Authority::start(Duration::from_secs(3600)).await;
    // A server-speaks-first database: greets, then echoes.
    let database = tcp_upstream(b"greeting\n").await;
    let server = ca
        .sidecar(&web())
        .env("PLEXUS_INBOUND_APP_ADDR", database)
        .env("PLEXUS_INBOUND_OPAQUE_PORTS", database.port())
        .env("PLEXUS_INBOUND_MTLS_MODE", "strict")
        .start()
        .await;
    let (relay, recording) = relay(server.inbound_addr).await;
    let service: SocketAddr = "10.96.0.10:5432".parse().unwrap();
    let client = ca
        .sidecar(&frontend())
        .static_config(format!(
            "destinations:\n  - aliases: [\"{service}\"]\n    target:\n      name: db.shop.svc.cluster.local:5432\n      protocol: {{ protocol: opaque }}\n      routes: {{ default_backend: default }}\n      backends:\n        backends:\n          default: {{ endpoints: [{{ address: \"{relay}\", ready: true, meshed: true, identity: \"{}\" }}] }}\n",
            web()
        ))
        // The app's connection to the Service address, as iptables redirects it.
        .original_dst(service)
        .start()
        .await;
    wait_ready(&server).await;
    wait_ready(&client).await;

    let mut app = TcpStream::connect(client.outbound_addr)
        .await
        .expect("connect");
    let mut greeting = [0u8; 9];
    bounded("the server's greeting", app.read_exact(&mut greeting))
        .await
        .expect("greeting");
    assert_eq!(&greeting, b"greeting\n");
    app.write_all(b"SELECT 1;").await.expect("write");
    let mut echo = [0u8; 9];
    bounded("the echo", app.read_exact(&mut echo))
        .await
        .expect("echo");
    assert_eq!(&echo, b"SELECT 1;");

    let first = recording.first_bytes.lock().unwrap().clone();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].first(), Some(&0x16), "a TLS handshake record");
    assert!(!String::from_utf8_lossy(&first[0]).contains("SELECT"));
    assert_eq!(
        metric(
            &server,
            "plexus_proxy_tls_handshakes_total{direction=\"inbound\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_upgrade_to_a_meshed_endpoint_stays_http1_inside_mtls() {
    let ca = Authority::start(Duration::from_secs(3600)).await;
    let websocket = http_upstream(|mut request: Request<Incoming>| async move {
        let client = header_of(&request, "plexus-client-id");
        echo_after_upgrade(&mut request);
        Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("x-client-id", client)
            .body(body::empty())
            .expect("response")
    })
    .await;
    let p = pair_for(websocket.addr, &ca, &ca, &web(), &web(), &[]).await;

    let mut send = http1(p.client.outbound_addr).await;
    let request = Request::builder()
        .uri("/socket")
        .header("host", "web:80")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .body(body::empty())
        .expect("request");
    let response = bounded("101", send.send_request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), 101);
    assert_eq!(header(&response, "x-client-id"), frontend().as_str());
    let on_upgrade = hyper::upgrade::on(response);
    let mut io = TokioIo::new(bounded("upgrade", on_upgrade).await.expect("upgraded"));
    io.write_all(b"ping").await.expect("write");
    let mut echoed = [0u8; 4];
    bounded("echo", io.read_exact(&mut echoed))
        .await
        .expect("echo");
    assert_eq!(&echoed, b"ping");
    let first = p.recording.first_bytes.lock().unwrap().clone();
    assert_eq!(first[0].first(), Some(&0x16), "inside mTLS");
}

fn header_of<B>(request: &Request<B>, name: &str) -> String {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

#[tokio::test]
async fn a_proxy_without_a_certificate_is_not_ready() {
    let ca = Authority::start(Duration::from_secs(3600)).await;
    // Where nothing listens: Certify never answers.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let proxy = ca
        .sidecar(&web())
        .env("PLEXUS_IDENTITY_ADDR", nowhere)
        .start()
        .await;
    assert_eq!(admin_get(proxy.admin_addr, "/ready").await.0, 503);
    let (_, config) = admin_get(proxy.admin_addr, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).expect("/config JSON");
    assert_eq!(config["identity"]["identity"], web().as_str());
    assert_eq!(config["identity"]["ready"], false);
    assert!(config["identity"]["not_after_unix"].is_null());
    assert_eq!(
        metric(&proxy, "plexus_proxy_identity_certificate_expiry_seconds ").await,
        0.0
    );
}
