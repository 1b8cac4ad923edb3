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
    harness_timed(upstream, request_ms, 0)
}

fn harness_timed(upstream: &Upstream, request_ms: u64, backend_request_ms: u64) -> Harness {
    Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("b", 1)],
            timeouts: Some(proto::Timeouts {
                request_ms,
                backend_request_ms,
            }),
            ..Default::default()
        }),
        vec![("b", backend(vec![endpoint(upstream.addr)], None))],
    ))
}

/// A gRPC call whose caller's deadline is `grpc_timeout`.
fn grpc_call(grpc_timeout: &str) -> http::Request<plexus_proxy::body::Body> {
    let mut request = request("POST", "/shop.Cart/Get", body::full("x"));
    let headers = request.headers_mut();
    headers.insert("content-type", "application/grpc".parse().unwrap());
    headers.insert("grpc-timeout", grpc_timeout.parse().unwrap());
    request
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
    let request = grpc_call("10S");
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
    let request = grpc_call("150m");
    let started = Instant::now();
    let answer = h.send(request).await;
    assert_eq!(answer.header("grpc-status"), Some("4"));
    assert_eq!(answer.header("plexus-error"), Some("timeout"));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeouts_of_u64_max_ms_and_the_longest_grpc_timeout_never_panic() {
    let server = slow(Duration::ZERO).await;
    let h = harness_timed(&server, u64::MAX, u64::MAX);
    assert_eq!(h.get("/").await.status, 200);
    let request = grpc_call("99999999H");
    assert_eq!(h.send(request).await.status, 200);
}
