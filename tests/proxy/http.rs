//! HTTP through the real listeners: keep-alive, HTTP/2, gRPC streaming with
//! trailers, upgrades, passthrough, and the proxy's own error responses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use plexus_proxy::body::{self, Body};
use plexus_tests::http::*;
use plexus_tests::proxy;
use plexus_tests::proxy::*;
use plexus_tests::upstream::*;
use plexus_tests::wait::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[tokio::test]
async fn http1_keep_alive_reuses_connections_on_both_sides() {
    let upstream = echo_upstream().await;
    let yaml = static_config(&[(
        &["web.default.svc.cluster.local:80", "web:80"],
        &[upstream.addr],
    )]);
    let proxy = proxy().static_config(yaml).start().await;

    let mut client = http1(proxy.outbound_addr).await;
    for i in 0..5 {
        bounded("ready", client.ready()).await.unwrap();
        let request = Request::builder()
            .method("POST")
            .uri(format!("/items/{i}"))
            .header("host", "web")
            .body(body::full(format!("body {i}")))
            .unwrap();
        let response = bounded("response", client.send_request(request))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-host"], "web");
        assert_eq!(response.headers()["x-path"], format!("/items/{i}").as_str());
        assert_eq!(text(response).await, format!("body {i}"));
    }
    assert_eq!(
        upstream.connections(),
        1,
        "the proxy pools its upstream connection"
    );
}

#[tokio::test]
async fn http2_requests_are_multiplexed_and_stay_http2() {
    let upstream = echo_upstream().await;
    let yaml = static_config(&[(&["grpc.default:8080"], &[upstream.addr])]);
    let proxy = proxy().static_config(yaml).start().await;

    let client = http2(proxy.outbound_addr).await;
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut client = client.clone();
        calls.push(tokio::spawn(async move {
            let request = Request::builder()
                .uri(format!("http://grpc.default:8080/{i}"))
                .body(body::full(format!("{i}")))
                .unwrap();
            let response = client.send_request(request).await.unwrap();
            assert_eq!(response.headers()["x-version"], "HTTP/2.0");
            assert_eq!(response.headers()["x-host"], "grpc.default:8080");
            assert_eq!(text(response).await, format!("{i}"));
        }));
    }
    for call in calls {
        bounded("h2 call", call).await.unwrap();
    }
    assert_eq!(
        upstream.connections(),
        1,
        "one multiplexed upstream connection"
    );
}

/// A gRPC-shaped bidirectional stream: each request message is answered as
/// it arrives, and the response ends with `grpc-status` trailers.
#[tokio::test]
async fn grpc_bidirectional_streaming_keeps_trailers() {
    let upstream = http_upstream(|request: Request<Incoming>| async move {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let mut body = request.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    let mut echoed = b"echo:".to_vec();
                    echoed.extend_from_slice(&data);
                    if tx.send(Ok(Frame::data(echoed.into()))).await.is_err() {
                        return;
                    }
                }
            }
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("grpc-message", "all-good".parse().unwrap());
            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
        });
        Response::builder()
            .header("content-type", "application/grpc")
            .body(body::boxed(StreamBody::new(ReceiverStream::new(rx))))
            .unwrap()
    })
    .await;
    let yaml = static_config(&[(&["echo.default:9090"], &[upstream.addr])]);
    let proxy = proxy().static_config(yaml).start().await;

    let mut client = http2(proxy.outbound_addr).await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let request = Request::builder()
        .method("POST")
        .uri("http://echo.default:9090/echo.Echo/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body::boxed(StreamBody::new(ReceiverStream::new(rx))))
        .unwrap();
    let response = bounded("grpc response headers", client.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // Each message is answered before the next is sent: nothing is buffered whole.
    for message in ["one", "two", "three"] {
        tx.send(Ok(Frame::data(Bytes::from(message))))
            .await
            .unwrap();
        let frame = bounded("echoed message", body.frame())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            frame.into_data().unwrap(),
            format!("echo:{message}").as_bytes()
        );
    }
    drop(tx);
    let trailers = loop {
        let frame = bounded("trailers", body.frame()).await.unwrap().unwrap();
        if let Ok(trailers) = frame.into_trailers() {
            break trailers;
        }
    };
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "all-good");
}

#[tokio::test]
async fn websocket_upgrade_is_passed_through() {
    let upstream = http_upstream(|mut request: Request<Incoming>| async move {
        echo_after_upgrade(&mut request);
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(body::empty())
            .unwrap()
    })
    .await;
    let yaml = static_config(&[(&["ws.default:80"], &[upstream.addr])]);
    let proxy = proxy().static_config(yaml).start().await;

    let mut client = http1(proxy.outbound_addr).await;
    let request = Request::builder()
        .uri("/socket")
        .header("host", "ws.default")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .body(body::empty())
        .unwrap();
    let response = bounded("101", client.send_request(request)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["upgrade"], "websocket");
    let on_upgrade = hyper::upgrade::on(response);
    let mut io = TokioIo::new(bounded("upgrade", on_upgrade).await.unwrap());
    // The last looks like the replies the proxy tags: tunnelled bytes are not.
    for message in [
        &b"ping"[..],
        b"a longer second message",
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
    ] {
        io.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        bounded("echo", io.read_exact(&mut echoed)).await.unwrap();
        assert_eq!(echoed, message);
    }
}

#[tokio::test]
async fn redirected_unknown_destination_is_passed_through() {
    let upstream = echo_upstream().await;
    // No static config: the original destination is not meshed.
    let proxy = proxy().original_dst(upstream.addr).start().await;
    let mut client = http1(proxy.outbound_addr).await;
    let response = bounded(
        "response",
        client.send_request(get("/x", "anything.example")),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["x-host"],
        "anything.example",
        "Host is kept"
    );
    assert_eq!(response.headers()["x-path"], "/x");
}

#[tokio::test]
async fn inbound_forwards_to_the_app_address() {
    let upstream = echo_upstream().await;
    let proxy = proxy()
        .env("PLEXUS_INBOUND_APP_ADDR", upstream.addr)
        .start()
        .await;
    let client = http2(proxy.inbound_addr).await;
    let mut client = client.clone();
    let request = Request::builder()
        .uri("http://app.default:8080/in")
        .body(body::empty())
        .unwrap();
    let response = bounded("response", client.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-path"], "/in");
    assert_eq!(response.headers()["x-version"], "HTTP/2.0");
}

#[tokio::test]
async fn proxy_errors_carry_plexus_error() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = proxy().start().await;
    let mut client = http1(proxy.outbound_addr).await;
    // Not redirected and not a known target: nowhere to send it.
    let response = client
        .send_request(get("/", "unknown.example"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["plexus-error"], "unknown-target");

    // Redirected to an address where nobody listens.
    let proxy = proxy::proxy().original_dst(dead).start().await;
    let mut client = http1(proxy.outbound_addr).await;
    let response = client.send_request(get("/", "dead.example")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["plexus-error"], "connect-failed");

    // A gRPC client gets a trailers-only gRPC error.
    let mut client = http2(proxy.outbound_addr).await;
    let request = Request::builder()
        .method("POST")
        .uri("http://dead.example/svc/Method")
        .header("content-type", "application/grpc")
        .body(body::empty())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(response.headers()["plexus-error"], "connect-failed");
}

/// `request`, raw on a new connection to `addr`, is answered by the proxy
/// itself: `HTTP/1.1 <status>`, tagged `plexus-error: <reason>`.
async fn assert_proxy_reply(
    addr: SocketAddr,
    request: &[u8],
    what: &str,
    status: &str,
    reason: &str,
) {
    let response = bounded(what, raw_exchange(addr, request, "\r\n\r\n")).await;
    assert!(
        response.starts_with(&format!("HTTP/1.1 {status} ")),
        "{what}: {response}"
    );
    assert!(
        response.contains(&format!("\r\nplexus-error: {reason}\r\n")),
        "{what}: {response}"
    );
}

#[tokio::test]
async fn malformed_requests_get_400_with_plexus_error() {
    let proxy = proxy().start().await;
    for (request, why) in [
        // The proxy's own checks.
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "no Host"),
        (
            b"GET / HTTP/1.1\r\nHost: web\r\nHost: app\r\n\r\n",
            "two Hosts",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: web:notaport\r\n\r\n",
            "an invalid authority",
        ),
        // hyper answers these itself; the proxy tags its reply.
        (
            b"GET / HTTP/1.1\r\nHost: web\r\nbad header\r\n\r\n",
            "a header line",
        ),
        (b"GET /a b HTTP/1.1\r\nHost: web\r\n\r\n", "a request line"),
    ] {
        assert_proxy_reply(proxy.outbound_addr, request, why, "400", "bad-request").await;
    }
}

/// hyper's reply is told from the upstream's by whether the service was
/// called, not by its looks: the upstream's empty 400 is byte for byte
/// what hyper would write.
#[tokio::test]
async fn an_upstreams_400_is_not_tagged_and_a_later_malformed_request_is() {
    let upstream = http_upstream(|request: Request<Incoming>| async move {
        let mut response = Response::new(full(""));
        if request.uri().path() == "/400" {
            *response.status_mut() = StatusCode::BAD_REQUEST;
        }
        response
    })
    .await;
    let yaml = static_config(&[(&["web:80"], &[upstream.addr])]);
    let proxy = proxy().static_config(yaml).start().await;
    let mut stream = tokio::net::TcpStream::connect(proxy.outbound_addr)
        .await
        .unwrap();
    for (request, status) in [("GET /400", "400 Bad Request"), ("GET /", "200 OK")] {
        let request = format!("{request} HTTP/1.1\r\nHost: web\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = bounded("response", read_until(&mut stream, "\r\n\r\n")).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{response}"
        );
        assert!(!response.contains("plexus-error"), "{response}");
    }
    // The same connection, kept alive: now hyper answers.
    stream
        .write_all(b"GET /a b HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let response = bounded("hyper's 400", read_until(&mut stream, "\r\n\r\n")).await;
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\nplexus-error: bad-request\r\n"),
        "{response}"
    );
    assert_eq!(upstream.requests(), 2);
}

/// RFC 9112 §3.2: an HTTP/1.1 request without Host never reaches the app.
#[tokio::test]
async fn http11_requests_without_host_get_400_in_both_directions() {
    let app = http_upstream(|_| async { ok() }).await;
    let inbound = proxy()
        .env("PLEXUS_INBOUND_APP_ADDR", app.addr)
        .start()
        .await;
    let outbound = proxy().original_dst(app.addr).start().await;
    for addr in [inbound.inbound_addr, outbound.outbound_addr] {
        let no_host = &b"GET / HTTP/1.1\r\n\r\n"[..];
        assert_proxy_reply(addr, no_host, "no Host", "400", "bad-request").await;
    }
    assert_eq!(app.requests(), 0, "the app saw none");
    // HTTP/1.0 has no such rule.
    for addr in [inbound.inbound_addr, outbound.outbound_addr] {
        let response = bounded(
            "HTTP/1.0",
            raw_exchange(addr, b"GET / HTTP/1.0\r\n\r\n", "\r\n\r\nok"),
        )
        .await;
        assert!(response.starts_with("HTTP/1.0 200 "), "{response}");
    }
    assert_eq!(app.requests(), 2);
}

/// hyper's HTTP/1 client takes a GET for bodyless unless it is told the
/// body is chunked: the body must reach the upstream whatever the path.
#[tokio::test]
async fn a_chunked_get_keeps_its_body() {
    const CHUNKED_GET: &[u8] = b"GET /chunked HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\
        Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let app = echo_upstream().await;

    // Straight to an address (passthrough), and to a target (its `Logical`).
    let passthrough = proxy().original_dst(app.addr).start().await;
    let yaml = static_config(&[(&["web:80"], &[app.addr])]);
    let logical = proxy().static_config(yaml).start().await;
    // Between proxies over HTTP/2, then HTTP/1 again to the app.
    let server = proxy()
        .env("PLEXUS_INBOUND_APP_ADDR", app.addr)
        .start()
        .await;
    let yaml = static_config_with(&[(&["web:80"], &[server.inbound_addr])], true);
    let meshed = proxy().static_config(yaml).start().await;

    for (addr, path) in [
        (passthrough.outbound_addr, "passthrough"),
        (logical.outbound_addr, "a target"),
        (meshed.outbound_addr, "a meshed hop"),
    ] {
        let response = bounded(path, raw_exchange(addr, CHUNKED_GET, "abc")).await;
        assert!(response.starts_with("HTTP/1.1 200 "), "{path}: {response}");
        assert!(
            response.ends_with("abc"),
            "{path}: the body is lost: {response}"
        );
    }
    assert_eq!(app.requests(), 3);
}

/// A retried chunked GET: every attempt carries the body.
#[tokio::test]
async fn a_retried_chunked_get_sends_its_body_on_every_attempt() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let upstream = http_upstream(move |request: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let mut seen = seen.lock().unwrap();
            seen.push(body.clone());
            // The first attempt fails, the retry is echoed.
            let mut response = Response::new(full(body));
            if seen.len() == 1 {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            response
        }
    })
    .await;
    let yaml = format!(
        r#"destinations:
  - aliases: ["web:80"]
    target:
      name: "web.default.svc.cluster.local:80"
      routes:
        default_backend: web
        http:
          - name: "default/web"
            rules:
              - backends: [{{ backend: web }}]
                retry: {{ attempts: 2, codes: [503], backoff_base_ms: 1, backoff_max_ms: 5 }}
      backends:
        backends:
          web: {{ endpoints: [{{ address: "{}", ready: true }}] }}
"#,
        upstream.addr
    );
    let proxy = proxy().static_config(yaml).start().await;
    let request = b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\
        Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let response = bounded("retried", raw_exchange(proxy.outbound_addr, request, "abc")).await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.ends_with("abc"), "{response}");
    assert_eq!(*bodies.lock().unwrap(), ["abc", "abc"]);
}

/// A chunk size that does not parse is the client's fault, on the path to a
/// target (`Logical`) as on a passthrough: 400, and not an upstream failure
/// in the metrics.
#[tokio::test]
async fn a_malformed_request_body_gets_400_not_an_upstream_error() {
    const BAD_CHUNK: &[u8] = b"POST / HTTP/1.1\r\nHost: web\r\n\
        Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nabc\r\n0\r\n\r\n";
    let app = echo_upstream().await;
    let yaml = static_config(&[(&["web:80"], &[app.addr])]);
    let logical = proxy().static_config(yaml).start().await;
    let passthrough = proxy().original_dst(app.addr).start().await;
    for proxy in [&logical, &passthrough] {
        assert_proxy_reply(
            proxy.outbound_addr,
            BAD_CHUNK,
            "bad chunk",
            "400",
            "bad-request",
        )
        .await;
        let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
        let requests: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("plexus_proxy_requests_total{"))
            .collect();
        assert_eq!(requests.len(), 1, "{metrics}");
        assert!(requests[0].contains("status=\"400\""), "{}", requests[0]);
    }
}

/// A client that sends its request and shuts its side down (as `nc -N`
/// does) still gets the response.
#[tokio::test]
async fn a_half_closed_client_gets_its_response() {
    let upstream = http_upstream(|_| async { ok() }).await;
    let yaml = static_config(&[(&["web:80"], &[upstream.addr])]);
    let proxy = proxy().static_config(yaml).start().await;
    let mut stream = tokio::net::TcpStream::connect(proxy.outbound_addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut response = String::new();
    bounded("response", stream.read_to_string(&mut response))
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.ends_with("\r\n\r\nok"), "{response}");
}

#[tokio::test]
async fn oversized_headers_get_431_with_plexus_error() {
    let upstream = echo_upstream().await;
    let yaml = static_config(&[(&["web:80"], &[upstream.addr])]);
    let proxy = proxy()
        .static_config(yaml)
        .env("PLEXUS_MAX_HEADER_BYTES", 16 * 1024)
        .start()
        .await;
    // HTTP/1: hyper's 431, tagged.
    let big = "x".repeat(64 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: web\r\nx-big: {big}\r\n\r\n");
    assert_proxy_reply(
        proxy.outbound_addr,
        request.as_bytes(),
        "h1 431",
        "431",
        "headers-too-large",
    )
    .await;

    // HTTP/2: up to twice the limit h2 lets the proxy answer (beyond it, h2
    // answers 431 itself and resets the stream; far beyond, GOAWAY).
    let mut client = http2(proxy.outbound_addr).await;
    let request = Request::builder()
        .uri("http://web/")
        .header("x-big", "y".repeat(20 * 1024))
        .body(body::empty())
        .unwrap();
    let response = bounded("h2 431", client.send_request(request))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(response.headers()["plexus-error"], "headers-too-large");
    // Just under the limit passes, on the same connection.
    let request = Request::builder()
        .uri("http://web/")
        .header("x-big", "y".repeat(15 * 1024))
        .body(body::empty())
        .unwrap();
    let response = bounded("h2 under", client.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.requests(), 1);
    // A normal request on a new connection still works.
    let mut client = http1(proxy.outbound_addr).await;
    let response = client.send_request(get("/", "web")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn response_bodies_stream_before_they_end() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let upstream = http_upstream(move |_request: Request<Incoming>| {
        let mut release = release_rx.clone();
        async move {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await;
                let _ = release.wait_for(|r| *r).await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"second"))))
                    .await;
            });
            Response::new(body::boxed(StreamBody::new(ReceiverStream::new(rx))))
        }
    })
    .await;
    let yaml = static_config(&[(&["stream:80"], &[upstream.addr])]);
    let proxy = proxy().static_config(yaml).start().await;
    let mut client = http1(proxy.outbound_addr).await;
    let response = bounded("headers", client.send_request(get("/", "stream")))
        .await
        .unwrap();
    let mut body: Body = body::boxed(response.into_body());
    let first = bounded("first chunk", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    release_tx.send_replace(true);
    let second = bounded("second chunk", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.into_data().unwrap(), "second");
}

/// Meshed endpoints get HTTP/2 whatever the app spoke; the inbound proxy
/// gives its app HTTP/1 back.
#[tokio::test]
async fn http1_is_carried_over_http2_between_proxies() {
    let app = echo_upstream().await;
    let server_proxy = proxy()
        .env("PLEXUS_INBOUND_APP_ADDR", app.addr)
        .start()
        .await;
    let yaml = static_config_with(&[(&["web:80"], &[server_proxy.inbound_addr])], true);
    let client_proxy = proxy().static_config(yaml).start().await;
    let mut client = http1(client_proxy.outbound_addr).await;
    let response = bounded("response", client.send_request(get("/mesh", "web")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["x-version"],
        "HTTP/1.1",
        "the app got HTTP/1 back"
    );
    assert_eq!(response.headers()["x-host"], "web");
    assert_eq!(response.headers()["x-path"], "/mesh");

    // Without the inbound proxy in between, the hop is visibly HTTP/2.
    let yaml = static_config_with(&[(&["web:80"], &[app.addr])], true);
    let direct = proxy().static_config(yaml).start().await;
    let mut client = http1(direct.outbound_addr).await;
    let response = bounded("response", client.send_request(get("/mesh", "web")))
        .await
        .unwrap();
    assert_eq!(response.headers()["x-version"], "HTTP/2.0");
    assert_eq!(response.headers()["x-host"], "web");
}

#[tokio::test]
async fn idle_http1_connections_are_closed_after_the_idle_timeout() {
    let upstream = echo_upstream().await;
    let yaml = static_config(&[(&["web:80"], &[upstream.addr])]);
    let proxy = proxy()
        .static_config(yaml)
        .env("PLEXUS_IDLE_TIMEOUT_MS", 300)
        .start()
        .await;
    let mut stream = tokio::net::TcpStream::connect(proxy.outbound_addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = bounded("response", stream.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let idle_since = tokio::time::Instant::now();
    // Keep reading: the proxy closes the idle keep-alive connection.
    loop {
        match bounded("close", stream.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert!(
        idle_since.elapsed() >= Duration::from_millis(250),
        "{:?}",
        idle_since.elapsed()
    );
}
