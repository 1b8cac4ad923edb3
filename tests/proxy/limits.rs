//! Timeouts and caps against hostile clients: slow-loris request heads
//! (`PLEXUS_REQUEST_HEAD_TIMEOUT_MS`), connections beyond a listener's cap
//! (`PLEXUS_MAX_*_CONNECTIONS`, shed and counted), HTTP/2 keep-alive PINGs
//! and the stream limit a server advertises, and durations too large for
//! the clock (from the environment and from a route).

use std::time::Duration;

use http::StatusCode;
use plexus_proxy::RunningProxy;
use plexus_proxy::config::Config;
use plexus_tests::h2_frames::*;
use plexus_tests::http::*;
use plexus_tests::proxy::*;
use plexus_tests::upstream::*;
use plexus_tests::wait::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

const HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// One `GET /` to `web` on a new connection to `proxy`'s outbound listener.
async fn served(proxy: &RunningProxy) -> StatusCode {
    let mut client = http1(proxy.outbound_addr).await;
    let response = bounded("a response", client.send_request(get("/", "web")))
        .await
        .expect("response");
    response.status()
}

/// A slow-loris client: the request line and one field at once, then one
/// byte of a field every 200 ms, never the end of the head (at most 10 s).
/// How long after its start the proxy closed it; `None`: it never did.
async fn slow_loris(addr: std::net::SocketAddr) -> Option<Duration> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    write
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: ")
        .await
        .expect("the request line");
    let mut trickle = tokio::time::interval(Duration::from_millis(200));
    let mut buf = [0u8; 1024];
    for _ in 0..50 {
        tokio::select! {
            read = read.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => panic!("the proxy answered a head that never ended"),
            },
            _ = trickle.tick() => {
                if write.write_all(b"x").await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
    None
}

#[tokio::test]
async fn slow_loris_heads_are_closed_within_the_head_timeout_while_requests_are_served() {
    const LORISES: usize = 200;
    let upstream = echo_upstream().await;
    let proxy = proxy()
        .static_config(static_config(&[(&["web:80"], &[upstream.addr])]))
        .env("PLEXUS_REQUEST_HEAD_TIMEOUT_MS", HEAD_TIMEOUT.as_millis())
        .start()
        .await;
    let mut lorises = JoinSet::new();
    for _ in 0..LORISES {
        lorises.spawn(slow_loris(proxy.outbound_addr));
    }
    // Meanwhile, a well-behaved client is served, a request each 100 ms
    // until every slow-loris connection is closed (10 s at most).
    let mut closed = Vec::new();
    let mut ok = 0;
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..100 {
        while let Some(done) = lorises.try_join_next() {
            closed.push(done.expect("a slow-loris task"));
        }
        if lorises.is_empty() {
            break;
        }
        pace.tick().await;
        assert_eq!(served(&proxy).await, StatusCode::OK);
        ok += 1;
    }
    assert!(ok >= 5, "only {ok} requests were served during the run");
    closed.extend(bounded("the slow-loris clients", lorises.join_all()).await);
    assert_eq!(closed.len(), LORISES);
    for after in closed {
        let after = after.expect("a slow-loris head still open after 10 s");
        assert!(
            after >= HEAD_TIMEOUT - Duration::from_millis(100),
            "{after:?}"
        );
        assert!(
            after <= HEAD_TIMEOUT * 3,
            "closed {after:?} after its start"
        );
    }
    // Heads sent at once are not timed out, on a connection kept alive idle.
    let mut client = http1(proxy.outbound_addr).await;
    for _ in 0..2 {
        let response = bounded("a response", client.send_request(get("/", "web")))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let _ = text(response).await;
    }
}

/// The value of the first `/metrics` line starting with `series`.
async fn metric(proxy: &RunningProxy, series: &str) -> Option<String> {
    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    let line = metrics.lines().find(|l| l.starts_with(series))?;
    line.rsplit(' ').next().map(str::to_owned)
}

#[tokio::test]
async fn connections_beyond_the_cap_are_shed_and_counted_until_some_close() {
    const CAP: usize = 3;
    let upstream = echo_upstream().await;
    let proxy = proxy()
        .static_config(static_config(&[(&["web:80"], &[upstream.addr])]))
        .env("PLEXUS_MAX_OUTBOUND_CONNECTIONS", CAP)
        .start()
        .await;
    let mut clients = Vec::new();
    for _ in 0..CAP {
        let mut client = http1(proxy.outbound_addr).await;
        let response = bounded("a response", client.send_request(get("/", "web")))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let _ = text(response).await;
        clients.push(client);
    }
    // One more: accepted by the kernel, closed by the proxy at once.
    let mut shed = TcpStream::connect(proxy.outbound_addr)
        .await
        .expect("connect");
    let _ = shed.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
    let mut buf = [0u8; 256];
    let read = bounded("the shed connection's close", shed.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the connection over the cap was served: {read:?}"
    );
    let shed_total = "plexus_proxy_connections_shed_total{direction=\"outbound\"}";
    within(BOUND, "the shed connection counted", || async {
        match metric(&proxy, shed_total).await.as_deref() {
            Some("1") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // One closes: a new connection is served again.
    drop(clients.pop());
    let open = "plexus_proxy_open_connections{direction=\"outbound\"}";
    within(BOUND, "a connection closed", || async {
        match metric(&proxy, open).await.as_deref() {
            Some(n) if n == (CAP - 1).to_string() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(served(&proxy).await, StatusCode::OK);
    assert_eq!(metric(&proxy, shed_total).await.as_deref(), Some("1"));
}

/// The value of `id` in a SETTINGS frame's payload.
fn setting(payload: &[u8], id: u16) -> Option<u32> {
    payload.chunks_exact(6).find_map(|s| {
        (u16::from_be_bytes([s[0], s[1]]) == id)
            .then(|| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
    })
}

#[tokio::test]
async fn inbound_http2_advertises_a_stream_limit_and_pings_an_idle_client() {
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    let app = echo_upstream().await;
    let proxy = proxy()
        .env("PLEXUS_INBOUND_APP_ADDR", app.addr)
        // Longer than the ping interval: the idle connection is not closed first.
        .env("PLEXUS_REQUEST_HEAD_TIMEOUT_MS", 60_000)
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.inbound_addr)
        .await
        .expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.expect("the preface");
    let started = Instant::now();
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    // The keep-alive interval (10 s) and then some.
    let ping = tokio::time::timeout(Duration::from_secs(25), async {
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert_ne!(n, 0, "the proxy closed the idle connection");
            read.extend_from_slice(&buf[..n]);
            let frames = frames(&read);
            if let Some(ping) = frames.iter().find(|f| f.kind == PING && f.flags & ACK == 0) {
                let ack = frame(PING, ACK, 0, &ping.payload);
                stream.write_all(&ack).await.expect("the ACK");
                return frames;
            }
        }
    })
    .await
    .expect("no PING from the proxy within 25 s");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(5), "PING after {waited:?}");
    let settings = ping
        .iter()
        .find(|f| f.kind == SETTINGS && f.flags & ACK == 0)
        .expect("the server's SETTINGS");
    assert_eq!(
        setting(&settings.payload, MAX_CONCURRENT_STREAMS),
        Some(1000),
        "SETTINGS_MAX_CONCURRENT_STREAMS"
    );
}

#[tokio::test]
async fn huge_durations_from_the_environment_are_refused_by_name_and_a_year_is_served() {
    let huge = u64::MAX.to_string();
    let env = std::collections::HashMap::from([
        ("PLEXUS_IDLE_TIMEOUT_MS".to_owned(), huge.clone()),
        ("PLEXUS_DETECT_TIMEOUT_MS".to_owned(), huge.clone()),
        ("PLEXUS_REQUEST_HEAD_TIMEOUT_MS".to_owned(), huge.clone()),
    ]);
    let refused = Config::from_env(&env).expect_err("huge durations are refused");
    let names: Vec<_> = refused.bad.iter().map(|bad| bad.name).collect();
    for name in env.keys() {
        assert!(
            names.contains(&name.as_str()),
            "{name} not named in {refused}"
        );
    }

    // The longest accepted, every deadline computed from it included.
    let upstream = echo_upstream().await;
    let year = (365u64 * 24 * 3600 * 1000).to_string();
    let proxy = proxy()
        .static_config(static_config(&[(&["web:80"], &[upstream.addr])]))
        .env("PLEXUS_IDLE_TIMEOUT_MS", &year)
        .env("PLEXUS_DETECT_TIMEOUT_MS", &year)
        .env("PLEXUS_REQUEST_HEAD_TIMEOUT_MS", &year)
        .env("PLEXUS_CONNECT_TIMEOUT_MS", &year)
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(served(&proxy).await, StatusCode::OK);
    }
}
