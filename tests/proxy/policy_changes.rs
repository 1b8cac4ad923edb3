//! An inbound policy change reaching connections already open: the server
//! sidecar of [`MeshedPair`] takes its policy from the controller's
//! `WatchServer`, and the tests rewrite the controller's feed file while a
//! plaintext keep-alive connection, a pooled mTLS connection between the
//! proxies or an opaque TCP stream stays open across the change.

use std::time::Duration;

use plexus_proxy::RunningProxy;
use plexus_tests::controller::MeshedPair;
use plexus_tests::http::{get, http1, text};
use plexus_tests::upstream::tcp_upstream;
use plexus_tests::wait::{bounded, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::mtls::{app, call, frontend, header, metric, objects, plaintext_get, wait_ready};

const INBOUND_HANDSHAKES: &str = "plexus_proxy_tls_handshakes_total{direction=\"inbound\"}";
const OUTBOUND_HANDSHAKES: &str = "plexus_proxy_tls_handshakes_total{direction=\"outbound\"}";

/// Waits until new plaintext connections to `server` get `status`: the
/// policy change has reached the proxy's shared policy.
async fn until_plaintext_gets(server: &RunningProxy, status: u16) {
    within(Duration::from_secs(10), "the policy change", || async {
        match plaintext_get(server).await.status().as_u16() {
            s if s == status => Ok(()),
            s => Err(format!("a new plaintext connection got {s}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_the_next_request_on_an_open_plaintext_keep_alive_connection() {
    let app = app().await;
    // Bound whole: the pair's other fields (the controller) live to the end.
    let pair = MeshedPair::start(app.addr, |inbound| objects("permissive", "", inbound)).await;
    let MeshedPair { server, file, .. } = &pair;
    wait_ready(server).await;

    // One TCP connection for both requests: hyper's `SendRequest` has no other.
    let mut held = http1(server.inbound_addr).await;
    let served = bounded("a request", held.send_request(get("/", "web:80")))
        .await
        .expect("response");
    assert_eq!(served.status(), 200);
    text(served).await;

    let inbound = server.inbound_addr.port();
    std::fs::write(file, objects("strict", "", inbound)).expect("feed file");
    until_plaintext_gets(server, 403).await;
    let reached = app.requests();

    bounded("the held connection", held.ready())
        .await
        .expect("the keep-alive connection is still open");
    let refused = bounded("a request", held.send_request(get("/", "web:80")))
        .await
        .expect("a response on the same connection");
    assert_eq!(refused.status(), 403);
    assert_eq!(header(&refused, "plexus-error"), "forbidden");
    assert!(text(refused).await.contains("STRICT"));
    assert_eq!(
        app.requests(),
        reached,
        "the refused request reached the app"
    );
    // The probes' connections close; the held one is the proxy's last.
    within(
        Duration::from_secs(10),
        "one inbound connection",
        || async {
            match metric(
                server,
                "plexus_proxy_open_connections{direction=\"inbound\"}",
            )
            .await
            {
                1.0 => Ok(()),
                open => Err(format!("{open} open")),
            }
        },
    )
    .await;
}

/// A meshed request through the client proxy, retried until it gets
/// `status` (the controller's destinations, or a policy change, arriving).
async fn until_meshed_gets(
    client: &RunningProxy,
    status: u16,
) -> http::Response<hyper::body::Incoming> {
    within(
        Duration::from_secs(10),
        "a meshed request's status",
        || async {
            let response = call(client, None).await;
            match response.status().as_u16() {
                s if s == status => Ok(response),
                s => Err(format!("got {s}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_identity_is_refused_on_the_pooled_mtls_connection_and_admitted_again() {
    let app = app().await;
    let allowed = "shop/frontend, shop/admin";
    let pair = MeshedPair::start(app.addr, |inbound| objects("strict", allowed, inbound)).await;
    let MeshedPair {
        server,
        client,
        file,
        ..
    } = pair;
    wait_ready(&server).await;
    wait_ready(&client).await;
    let inbound = server.inbound_addr.port();

    let admitted = until_meshed_gets(&client, 200).await;
    assert_eq!(header(&admitted, "x-client-id"), frontend().as_str());
    assert_eq!(metric(&server, INBOUND_HANDSHAKES).await, 1.0);

    std::fs::write(&file, objects("strict", "shop/admin", inbound)).expect("feed file");
    let refused = until_meshed_gets(&client, 403).await;
    assert_eq!(header(&refused, "plexus-error"), "forbidden");
    assert!(text(refused).await.contains(frontend().as_str()));
    let reached = app.requests();
    let refused = call(&client, None).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(app.requests(), reached, "a refused request reached the app");

    std::fs::write(&file, objects("strict", allowed, inbound)).expect("feed file");
    let admitted = until_meshed_gets(&client, 200).await;
    assert_eq!(header(&admitted, "x-client-id"), frontend().as_str());

    // Every request took the one pooled connection between the proxies.
    assert_eq!(metric(&server, INBOUND_HANDSHAKES).await, 1.0);
    assert_eq!(metric(&client, OUTBOUND_HANDSHAKES).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_closes_an_open_plaintext_tcp_stream() {
    // A server-speaks-first database: greets, then echoes.
    let database = tcp_upstream(b"greeting\n").await;
    let pair = MeshedPair::start(database, |inbound| objects("permissive", "", inbound)).await;
    let MeshedPair { server, file, .. } = &pair;
    wait_ready(server).await;

    // Not HTTP: detected as opaque TCP, forwarded under PERMISSIVE.
    let query = b"\x01\x02 SELECT 1;\r\n";
    let mut stream = TcpStream::connect(server.inbound_addr)
        .await
        .expect("connect");
    stream.write_all(query).await.expect("write");
    let mut greeting = [0u8; 9];
    bounded("the greeting", stream.read_exact(&mut greeting))
        .await
        .expect("greeting");
    assert_eq!(&greeting, b"greeting\n");
    let mut echo = [0u8; 14];
    bounded("the echo", stream.read_exact(&mut echo))
        .await
        .expect("echo");
    assert_eq!(&echo, query);

    let changed = Instant::now();
    std::fs::write(file, objects("strict", "", server.inbound_addr.port())).expect("feed file");
    let mut rest = [0u8; 64];
    let read = bounded("the stream's close", stream.read(&mut rest)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    eprintln!("closed {:?} after the feed file changed", changed.elapsed());
}
