//! Retries and the retry budget with real loopback traffic.

mod logical_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use logical_support::*;
use plexus_api::v1 as proto;
use plexus_proxy::body;
use rand::Rng;

fn retry(attempts: u32, codes: Vec<u32>) -> Option<proto::RetryPolicy> {
    Some(proto::RetryPolicy {
        attempts,
        codes,
        grpc_codes: vec![14],
        backoff_base_ms: 1,
        backoff_max_ms: 5,
    })
}

fn resilience(budget: Option<proto::RetryBudget>) -> Option<proto::Resilience> {
    Some(proto::Resilience {
        retry_budget: budget,
        // Only one endpoint: accrual could never eject it anyway (half rule).
        failure_accrual: None,
        load_balancer: String::new(),
        concurrency: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_30_percent_looks_healthy_with_retries() {
    let flaky = upstream(|_| async {
        if rand::rng().random_bool(0.3) {
            status(503)
        } else {
            ok()
        }
    })
    .await;
    // Masking 30 % failures takes ~43 % extra requests: more than the default
    // 20 % budget allows, so this backend is given a larger one.
    let budget = proto::RetryBudget {
        ratio: Some(1.0),
        ..Default::default()
    };
    let h = Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("flaky", 1)],
            retry: retry(5, vec![503]),
            ..Default::default()
        }),
        vec![(
            "flaky",
            backend(vec![endpoint(flaky.addr)], resilience(Some(budget))),
        )],
    ));
    const N: usize = 1000;
    let mut succeeded = 0;
    for _ in 0..N {
        if h.get("/").await.status == 200 {
            succeeded += 1;
        }
    }
    assert!(succeeded >= N * 99 / 100, "only {succeeded}/{N} succeeded");
    assert!(
        flaky.requests() > N + N / 5,
        "retries must have happened: {}",
        flaky.requests()
    );
    assert!(
        h.metric(
            "plexus_proxy_retries_total",
            &[("backend", "flaky"), ("reason", "status")]
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_every_request_sees_no_more_than_the_budget() {
    let broken = upstream(|_| async { status(503) }).await;
    let h = Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("broken", 1)],
            retry: retry(3, vec![503]),
            ..Default::default()
        }),
        vec![(
            "broken",
            backend(vec![endpoint(broken.addr)], resilience(None)),
        )],
    ));
    const N: usize = 500;
    let started = Instant::now();
    for _ in 0..N {
        let answer = h.get("/").await;
        // Budget exhausted or attempts used up: the last response is returned.
        assert_eq!(answer.status, 503);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Default budget: 20 % of requests plus 10/s over the 10 s window (the
    // window's worth is available at once, so at least 10 s of it counts).
    let budget = N as f64 * 0.2 + 10.0 * elapsed.max(10.0).ceil();
    let extra = (broken.requests() - N) as f64;
    assert!(
        extra <= budget + 5.0,
        "{extra} retries exceed the budget of {budget}"
    );
    assert!(
        extra >= 150.0,
        "retries should have used the budget, got {extra}"
    );
    assert!(
        h.metric(
            "plexus_proxy_retry_budget_exhausted_total",
            &[("backend", "broken")]
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_that_times_out_is_retried_on_another_attempt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let first_slow = upstream({
        let calls = calls.clone();
        move |_| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    // The slowness under test, not synchronisation.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                ok()
            }
        }
    })
    .await;
    let h = Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("b", 1)],
            timeouts: Some(proto::Timeouts {
                request_ms: 0,
                backend_request_ms: 200,
            }),
            retry: retry(2, vec![]),
            ..Default::default()
        }),
        vec![(
            "b",
            backend(vec![endpoint(first_slow.addr)], resilience(None)),
        )],
    ));
    let started = Instant::now();
    let answer = h.get("/").await;
    assert_eq!(answer.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(first_slow.requests(), 2);
    assert_eq!(
        h.metric(
            "plexus_proxy_retries_total",
            &[("backend", "b"), ("reason", "timeout")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried_with_the_whole_request_body() {
    let bodies = Arc::new(std::sync::Mutex::new(Vec::<Bytes>::new()));
    let server = upstream({
        let bodies = bodies.clone();
        move |request: http::Request<hyper::body::Incoming>| {
            let bodies = bodies.clone();
            async move {
                let body = request.into_body().collect().await.map(|c| c.to_bytes());
                let mut seen = bodies.lock().unwrap();
                seen.push(body.unwrap_or_default());
                let mut response = ok();
                response
                    .headers_mut()
                    .insert("content-type", "application/grpc".parse().unwrap());
                let code = if seen.len() == 1 { "14" } else { "0" };
                response
                    .headers_mut()
                    .insert("grpc-status", code.parse().unwrap());
                response
            }
        }
    })
    .await;
    let h = Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("g", 1)],
            retry: retry(3, vec![]),
            ..Default::default()
        }),
        vec![("g", backend(vec![endpoint(server.addr)], resilience(None)))],
    ));
    let mut request = request("POST", "/shop.Cart/Get", body::full("payload-bytes"));
    request
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    let answer = h.send(request).await;
    assert_eq!(answer.header("grpc-status"), Some("0"));
    let seen = bodies.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![Bytes::from("payload-bytes"), Bytes::from("payload-bytes")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_are_retried_even_for_post() {
    let live = upstream(|_| async { ok() }).await;
    let rr = Some(proto::Resilience {
        load_balancer: "round-robin".into(),
        ..Default::default()
    });
    let h = Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("b", 1)],
            retry: retry(3, vec![]),
            ..Default::default()
        }),
        vec![(
            "b",
            backend(vec![endpoint(dead_addr()), endpoint(live.addr)], rr),
        )],
    ));
    for _ in 0..20 {
        let answer = h
            .send(request("POST", "/orders", body::full("order")))
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    assert_eq!(live.requests(), 20);
    assert!(
        h.metric(
            "plexus_proxy_retries_total",
            &[("backend", "b"), ("reason", "connect")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_unknown_length_is_streamed_and_not_retried() {
    let broken = upstream(|_| async { status(503) }).await;
    let h = Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("b", 1)],
            retry: retry(3, vec![503]),
            ..Default::default()
        }),
        vec![("b", backend(vec![endpoint(broken.addr)], resilience(None)))],
    ));
    let chunks: Vec<Result<http_body::Frame<Bytes>, body::BoxError>> =
        vec![Ok(http_body::Frame::data(Bytes::from_static(b"streamed")))];
    let streamed = body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        chunks,
    )));
    let answer = h.send(request("PUT", "/", streamed)).await;
    assert_eq!(answer.status, 503);
    assert_eq!(broken.requests(), 1);
}
