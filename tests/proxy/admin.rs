//! The admin server and draining.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use plexus_proxy::body;
use plexus_tests::bins::bin;
use plexus_tests::http::*;
use plexus_tests::proxy::*;
use plexus_tests::temp::TempDir;
use plexus_tests::upstream::*;
use plexus_tests::wait::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn admin_endpoints() {
    let upstream = echo_upstream().await;
    let yaml = static_config(&[(
        &["web.default.svc.cluster.local:80", "web:80"],
        &[upstream.addr],
    )]);
    let proxy = proxy().static_config(yaml).start().await;

    assert_eq!(admin_get(proxy.admin_addr, "/live").await.0, 200);
    assert_eq!(admin_get(proxy.admin_addr, "/ready").await.0, 200);
    assert_eq!(admin_get(proxy.admin_addr, "/nope").await.0, 404);

    let mut client = http1(proxy.outbound_addr).await;
    let response = client.send_request(get("/", "web")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let _ = text(response).await;

    let (status, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("plexus_proxy_requests_total{"))
        .unwrap_or_else(|| panic!("no request counter in:\n{metrics}"));
    for label in [
        "direction=\"outbound\"",
        "target=\"web.default.svc.cluster.local:80\"",
        "route=\"default\"",
        "status=\"200\"",
    ] {
        assert!(line.contains(label), "{label} missing in {line}");
    }
    assert!(line.ends_with(" 1"), "{line}");
    assert!(
        metrics.contains("plexus_proxy_request_duration_seconds_bucket{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("plexus_proxy_open_connections{direction=\"outbound\"} 1"),
        "{metrics}"
    );

    let (status, config) = admin_get(proxy.admin_addr, "/config").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let target = &config["destinations"][0];
    assert_eq!(target["name"], "web.default.svc.cluster.local:80");
    assert_eq!(
        target["backends"]["backends"]["default"]["endpoints"][0]["address"],
        upstream.addr.to_string()
    );
}

/// The admin port's HTTP edge is the data plane's: Host required in
/// HTTP/1.1, the head limit applied, hyper's own replies tagged, and a
/// half-closed client answered.
#[tokio::test]
async fn admin_requests_meet_the_same_http_rules() {
    let proxy = proxy()
        .env("PLEXUS_MAX_HEADER_BYTES", 16 * 1024)
        .start()
        .await;
    let admin = proxy.admin_addr;
    let big = "x".repeat(100 * 1024);
    let oversized = format!("GET /live HTTP/1.1\r\nHost: admin\r\nx-big: {big}\r\n\r\n");
    for (request, status, reason) in [
        (&b"GET /live HTTP/1.1\r\n\r\n"[..], "400", "bad-request"),
        (b"NOT AN HTTP\r\n\r\n", "400", "bad-request"),
        (oversized.as_bytes(), "431", "headers-too-large"),
    ] {
        let response = bounded("admin", raw_exchange(admin, request, "\r\n\r\n")).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{response}"
        );
        assert!(
            response.contains(&format!("\r\nplexus-error: {reason}\r\n")),
            "{response}"
        );
    }

    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(b"GET /live HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut response = String::new();
    bounded("half-closed", stream.read_to_string(&mut response))
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.ends_with("\r\n\r\nlive\n"), "{response}");
}

/// `POST /shutdown` on the admin port, from loopback: status, `plexus-error`, body.
async fn post_shutdown(admin: std::net::SocketAddr) -> (StatusCode, Option<String>, String) {
    let mut client = http1(admin).await;
    let shutdown = Request::builder()
        .method("POST")
        .uri("/shutdown")
        .header("host", "admin")
        .body(body::empty())
        .unwrap();
    let response = bounded("POST /shutdown", client.send_request(shutdown))
        .await
        .unwrap();
    let reason = response
        .headers()
        .get("plexus-error")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status(), reason, text(response).await)
}

/// Without `PLEXUS_SHUTDOWN_ENDPOINT` even the pod itself cannot drain the
/// proxy over HTTP: refused with a body that says how to enable it, and the
/// proxy keeps serving.
#[tokio::test]
async fn shutdown_is_refused_unless_enabled_and_the_proxy_keeps_serving() {
    let upstream = echo_upstream().await;
    let yaml = static_config(&[(&["web:80"], &[upstream.addr])]);
    let proxy = proxy().static_config(yaml).start().await;

    let (status, reason, body) = post_shutdown(proxy.admin_addr).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(reason.as_deref(), Some("forbidden"));
    assert!(body.contains("PLEXUS_SHUTDOWN_ENDPOINT=enabled"), "{body}");
    assert!(body.contains("plexus.io/shutdown-endpoint"), "{body}");

    assert_eq!(admin_get(proxy.admin_addr, "/ready").await.0, 200);
    let mut client = http1(proxy.outbound_addr).await;
    let response = client.send_request(get("/", "web")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Enabled, a loopback caller drains the proxy: `202`, and the drain completes.
#[tokio::test]
async fn shutdown_from_loopback_drains_when_enabled() {
    let mut proxy = proxy()
        .env("PLEXUS_SHUTDOWN_ENDPOINT", "enabled")
        .start()
        .await;
    let (status, reason, body) = post_shutdown(proxy.admin_addr).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(reason, None);
    assert_eq!(body, "draining\n");
    assert!(bounded("drained", proxy.drained()).await);
}

/// A request that takes `delay` to answer, to have something in flight.
async fn slow_upstream(delay: Duration) -> Upstream {
    http_upstream(move |_request: Request<Incoming>| async move {
        tokio::time::sleep(delay).await;
        Response::new(body::full("slow but done"))
    })
    .await
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_stops_accepting() {
    let upstream = slow_upstream(Duration::from_millis(500)).await;
    let yaml = static_config(&[(&["slow:80"], &[upstream.addr])]);
    let proxy = proxy().static_config(yaml).start().await;
    let outbound = proxy.outbound_addr;

    let mut client = http1(outbound).await;
    let in_flight = tokio::spawn(async move {
        let response = client.send_request(get("/", "slow")).await.unwrap();
        (response.status(), text(response).await)
    });
    // Wait until the request is in flight at the upstream.
    bounded("request reaches upstream", async {
        while upstream.connections() == 0 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let drained = bounded("drain", proxy.shutdown()).await;
    assert!(drained, "everything finished within the drain timeout");
    let (status, body) = bounded("in-flight response", in_flight).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "slow but done");
    // The listener is closed: new connections are refused.
    assert!(tokio::net::TcpStream::connect(outbound).await.is_err());
}

#[tokio::test]
async fn http2_clients_get_goaway_and_finish_their_streams() {
    let slow = slow_upstream(Duration::from_secs(1)).await;
    let fast = echo_upstream().await;
    let yaml = static_config(&[(&["slow:80"], &[slow.addr]), (&["fast:80"], &[fast.addr])]);
    let mut proxy = proxy()
        .static_config(yaml)
        .env("PLEXUS_SHUTDOWN_ENDPOINT", "enabled")
        .start()
        .await;
    let client = http2(proxy.outbound_addr).await;
    let request = |host: &str| {
        Request::builder()
            .uri(format!("http://{host}/"))
            .body(body::empty())
            .unwrap()
    };
    let in_flight = tokio::spawn(client.clone().send_request(request("slow")));
    bounded("request reaches upstream", async {
        while slow.connections() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // POST /shutdown starts the drain, as a Job's last step would.
    assert_eq!(
        post_shutdown(proxy.admin_addr).await.0,
        StatusCode::ACCEPTED
    );

    // GOAWAY: the connection refuses new streams while the old one is still
    // being served (a plain close would have ended the in-flight one too).
    bounded("new streams refused", async {
        while client.clone().send_request(request("fast")).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "refused before the slow stream ended"
    );
    let response = bounded("in-flight h2", in_flight).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "slow but done");
    assert!(bounded("drained", proxy.drained()).await);
}

#[tokio::test]
async fn drain_gives_up_after_the_timeout() {
    let upstream = slow_upstream(Duration::from_secs(60)).await;
    let yaml = static_config(&[(&["stuck:80"], &[upstream.addr])]);
    let proxy = proxy()
        .static_config(yaml)
        .env("PLEXUS_DRAIN_TIMEOUT_MS", 200)
        .start()
        .await;
    let mut client = http1(proxy.outbound_addr).await;
    let in_flight = tokio::spawn(async move { client.send_request(get("/", "stuck")).await });
    bounded("request reaches upstream", async {
        while upstream.connections() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        !bounded("drain", proxy.shutdown()).await,
        "drain reports the timeout"
    );
    // The stuck request's connection was closed by the proxy.
    assert!(bounded("closed", in_flight).await.unwrap().is_err());
}

/// The real binary: SIGTERM drains, the in-flight request finishes, exit 0.
#[tokio::test]
async fn sigterm_drains_the_binary_and_exits_zero() {
    let upstream = slow_upstream(Duration::from_millis(400)).await;
    let dir = TempDir::new("proxy-sigterm");
    let config = dir.join("static.yaml");
    std::fs::write(&config, static_config(&[(&["slow:80"], &[upstream.addr])])).unwrap();
    let (outbound, admin) = (unused_addr().port(), unused_addr().port());
    let mut child = tokio::process::Command::new(bin("plexus-proxy"))
        .env("PLEXUS_OUTBOUND_ADDR", format!("127.0.0.1:{outbound}"))
        .env("PLEXUS_INBOUND_ADDR", "127.0.0.1:0")
        .env("PLEXUS_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("PLEXUS_STATIC_CONFIG", &config)
        .env("PLEXUS_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    bounded("ready", async {
        loop {
            if let Ok(stream) = tokio::net::TcpStream::connect(admin_addr).await {
                drop(stream);
                if admin_get(admin_addr, "/ready").await.0 == 200 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let mut client = http1(format!("127.0.0.1:{outbound}").parse().unwrap()).await;
    let in_flight = tokio::spawn(async move {
        let response = client.send_request(get("/", "slow")).await.unwrap();
        (response.status(), text(response).await)
    });
    bounded("request reaches upstream", async {
        while upstream.connections() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let pid = child.id().expect("running") as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

    let (status, body) = bounded("in-flight response", in_flight).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "slow but done");
    let exit = bounded("exit", child.wait()).await.unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// A static file's rule and backend filters reach `/config` in the proto's
/// shape, and the in-process proxy's outbound listener applies them end to end.
#[tokio::test]
async fn config_shows_rule_filters_that_the_outbound_listener_applies() {
    let upstream = echo_upstream().await;
    let shadow = echo_upstream().await;
    let yaml = format!(
        r#"destinations:
  - aliases: ["web:80"]
    target:
      routes:
        default_backend: default
        http:
          - name: default/moved
            rules:
              - matches: [{{ path: {{ type: PathPrefix, value: /old }} }}]
                filters:
                  request_redirect: {{ path: {{ type: ReplacePrefixMatch, value: /new }}, status_code: 301 }}
              - matches: [{{ path: {{ type: PathPrefix, value: /api }} }}]
                filters:
                  url_rewrite: {{ hostname: api.internal, path: {{ type: ReplacePrefixMatch, value: /v2 }} }}
                  request_mirrors: [{{ backend: shadow }}]
                backends: [{{ backend: default }}]
              - filters:
                  response_header_modifier: {{ set: [{{ name: x-served-by, value: plexus }}] }}
                backends:
                  - backend: default
                    filters: {{ response_header_modifier: {{ add: [{{ name: x-backend, value: default }}] }} }}
      backends:
        backends:
          default: {{ endpoints: [{{ address: "{}", ready: true }}] }}
          shadow: {{ endpoints: [{{ address: "{}", ready: true }}] }}
"#,
        upstream.addr, shadow.addr
    );
    let proxy = proxy().static_config(yaml).start().await;
    let (status, config) = admin_get(proxy.admin_addr, "/config").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let rules = &config["destinations"][0]["routes"]["http"][0]["rules"];
    assert_eq!(
        rules[0]["filters"]["request_redirect"]["path"]["type"],
        "ReplacePrefixMatch"
    );
    assert_eq!(
        rules[1]["filters"]["url_rewrite"]["hostname"],
        "api.internal"
    );
    assert_eq!(
        rules[1]["filters"]["request_mirrors"][0]["backend"],
        "shadow"
    );
    assert_eq!(
        rules[2]["filters"]["response_header_modifier"]["set"][0]["name"],
        "x-served-by"
    );
    assert_eq!(
        rules[2]["backends"][0]["filters"]["response_header_modifier"]["add"][0]["value"],
        "default"
    );

    let mut client = http1(proxy.outbound_addr).await;
    let response = client
        .send_request(get("/old/page?x=1", "web"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(response.headers()["location"], "http://web/new/page?x=1");
    let _ = text(response).await;
    assert_eq!(upstream.requests(), 0, "the redirect reached no backend");
    let response = client.send_request(get("/other", "web")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-served-by"], "plexus");
    assert_eq!(response.headers()["x-backend"], "default");
    let _ = text(response).await;
    assert_eq!(upstream.requests(), 1);
    let response = client.send_request(get("/api/items", "web")).await.unwrap();
    assert_eq!(response.headers()["x-path"], "/v2/items");
    assert_eq!(response.headers()["x-host-header"], "api.internal");
    let _ = text(response).await;
    eventually(BOUND, "the mirror's copy", || shadow.requests() == 1).await;
}

/// A static file's GRPCRoute retry on gRPC statuses and success-rate accrual
/// reach `/config` in the proto's shape, and the outbound listener retries
/// an UNAVAILABLE call end to end over HTTP/2.
#[tokio::test]
async fn config_shows_grpc_retries_and_success_rate_that_the_outbound_listener_applies() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let upstream = h2c_upstream({
        let calls = calls.clone();
        move |_| {
            let first = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            async move { grpc_reply(if first { "14" } else { "0" }, false) }
        }
    })
    .await;
    let yaml = format!(
        r#"destinations:
  - aliases: ["grpc:9090"]
    target:
      protocol: {{ protocol: http2 }}
      routes:
        default_backend: default
        grpc:
          - name: shop/cart
            rules:
              - backends: [{{ backend: default }}]
                retry: {{ attempts: 3, grpc_codes: [14, 8] }}
      backends:
        backends:
          default:
            endpoints: [{{ address: "{}", ready: true }}]
            resilience:
              failure_accrual: {{ success_rate: {{ threshold: 0.8, min_endpoints: 3 }} }}
"#,
        upstream.addr
    );
    let proxy = proxy().static_config(yaml).start().await;
    let (status, config) = admin_get(proxy.admin_addr, "/config").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let target = &config["destinations"][0];
    let retry = &target["routes"]["grpc"][0]["rules"][0]["retry"];
    assert_eq!(retry["grpc_codes"], serde_json::json!([14, 8]), "{retry}");
    let accrual = &target["backends"]["backends"]["default"]["resilience"]["failure_accrual"];
    assert_eq!(accrual["success_rate"]["threshold"], 0.8, "{accrual}");

    let mut client = http2(proxy.outbound_addr).await;
    let call = Request::post("http://grpc:9090/shop.Cart/Get")
        .header("content-type", "application/grpc")
        .body(body::empty())
        .unwrap();
    let response = bounded("the call", client.send_request(call))
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "0", "the retry's answer");
    let _ = text(response).await;
    assert_eq!(upstream.requests(), 2, "UNAVAILABLE retried once");
}
