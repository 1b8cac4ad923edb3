//! Request timeouts and `grpc-timeout` with real loopback traffic.

use std::time::{Duration, Instant};

use plexus_api::v1 as proto;
use plexus_proxy::body;
use plexus_tests::logical::*;
use plexus_tests::upstream::*;

/// An upstream that takes `delay` and echoes the `grpc-timeout` it received.
async fn slow(delay: Duration) -> Upstream {
    http_upstream(move |request: http::Request<hyper::body::Incoming>| {
        let seen = request.headers().get("grpc-timeout").cloned();
        async move {
            // The slowness under test, not synchronisation.
            tokio::time::sleep(delay).await;
            let mut response = ok();
            if let Some(seen) = seen {
                response.headers_mut().insert("x-seen-grpc-timeout", seen);
            }
            response
        }
    })
    .await
}

fn harness(upstream: &Upstream, request_ms: u64) -> Harness {
    Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("b", 1)],
            timeouts: Some(proto::Timeouts {
                request_ms,
                backend_request_ms: 0,
            }),
            ..Default::default()
        }),
        vec![("b", backend(vec![endpoint(upstream.addr)], None))],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_gets_504_timeout() {
    let server = slow(Duration::from_secs(5)).await;
    let h = harness(&server, 200);
    let started = Instant::now();
    let answer = h.get("/").await;
    assert_eq!(answer.status, 504);
    assert_eq!(answer.header("plexus-error"), Some("timeout"));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callee_sees_what_is_left_of_the_callers_grpc_timeout() {
    let server = slow(Duration::ZERO).await;
    let h = harness(&server, 2_000);
    let mut request = request("POST", "/shop.Cart/Get", body::full("x"));
    request
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    request
        .headers_mut()
        .insert("grpc-timeout", "10S".parse().unwrap());
    let answer = h.send(request).await;
    assert_eq!(answer.status, 200);
    let seen = answer
        .header("x-seen-grpc-timeout")
        .expect("grpc-timeout forwarded");
    let (amount, unit) = seen.split_at(seen.len() - 1);
    let amount: u64 = amount.parse().expect("digits");
    let nanos = match unit {
        "n" => amount,
        "u" => amount * 1_000,
        "m" => amount * 1_000_000,
        "S" => amount * 1_000_000_000,
        other => panic!("unexpected unit {other}"),
    };
    // Shortened to the route's 2 s, minus the time already spent.
    assert!(nanos <= 2_000_000_000, "{seen}");
    assert!(nanos >= 1_000_000_000, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_grpc_timeout_is_deadline_exceeded() {
    let server = slow(Duration::from_secs(5)).await;
    let h = harness(&server, 0);
    let mut request = request("POST", "/shop.Cart/Get", body::full("x"));
    request
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    request
        .headers_mut()
        .insert("grpc-timeout", "150m".parse().unwrap());
    let started = Instant::now();
    let answer = h.send(request).await;
    assert_eq!(answer.header("grpc-status"), Some("4"));
    assert_eq!(answer.header("plexus-error"), Some("timeout"));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeouts_of_u64_max_ms_and_the_longest_grpc_timeout_never_panic() {
    let server = slow(Duration::ZERO).await;
    let h = Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("b", 1)],
            timeouts: Some(proto::Timeouts {
                request_ms: u64::MAX,
                backend_request_ms: u64::MAX,
            }),
            ..Default::default()
        }),
        vec![("b", backend(vec![endpoint(server.addr)], None))],
    ));
    assert_eq!(h.get("/").await.status, 200);
    let mut request = request("POST", "/shop.Cart/Get", body::full("x"));
    request
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    request
        .headers_mut()
        .insert("grpc-timeout", "99999999H".parse().unwrap());
    assert_eq!(h.send(request).await.status, 200);
}
