//! Retries and the retry budget with real loopback traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use plexus_api::v1 as proto;
use plexus_proxy::body;
use plexus_tests::logical::*;
use plexus_tests::upstream::*;
use plexus_tests::wait::*;
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
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_30_percent_looks_healthy_with_retries() {
    let flaky = http_upstream(|_| async {
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
    let broken = http_upstream(|_| async { status(503) }).await;
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
    let first_slow = http_upstream({
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
    let server = http_upstream({
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
    let live = http_upstream(|_| async { ok() }).await;
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
            backend(vec![endpoint(unused_addr()), endpoint(live.addr)], rr),
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

/// What an upstream received in one request: version, whether it carried a
/// content-length, data and trailers.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    version: http::Version,
    content_length: bool,
    data: Bytes,
    trailers: Option<http::HeaderMap>,
}

async fn receive(request: http::Request<hyper::body::Incoming>, whole: bool) -> Received {
    let version = request.version();
    let content_length = request.headers().contains_key("content-length");
    let mut body = request.into_body();
    let (data, trailers) = if whole {
        match body.collect().await {
            Ok(collected) => {
                let trailers = collected.trailers().cloned();
                (collected.to_bytes(), trailers)
            }
            Err(_) => (Bytes::new(), None),
        }
    } else {
        let first = body.frame().await.and_then(|f| f.ok()?.into_data().ok());
        (first.unwrap_or_default(), None)
    };
    Received {
        version,
        content_length,
        data,
        trailers,
    }
}

type Frame = Result<http_body::Frame<Bytes>, body::BoxError>;

fn streamed(frames: Vec<Frame>) -> body::Body {
    body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

fn checksum() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "c0ffee".parse().unwrap());
    trailers
}

fn grpc_route(server: &Upstream) -> Harness {
    Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("g", 1)],
            retry: retry(3, vec![]),
            ..Default::default()
        }),
        vec![("g", backend(vec![endpoint(server.addr)], resilience(None)))],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_without_length_is_retried_with_its_whole_body_and_trailers() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Received>::new()));
    let server = http_upstream({
        let seen = seen.clone();
        move |request| {
            let seen = seen.clone();
            async move {
                let received = receive(request, true).await;
                let mut seen = seen.lock().unwrap();
                seen.push(received);
                grpc_reply(if seen.len() == 1 { "14" } else { "0" }, false)
            }
        }
    })
    .await;
    let h = grpc_route(&server);
    let frames = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"\0\0\0\0\x05"))),
        Ok(http_body::Frame::data(Bytes::from_static(b"hello"))),
        Ok(http_body::Frame::trailers(checksum())),
    ];
    let answer = h.send(grpc_call("/shop.Cart/Put", streamed(frames))).await;
    assert_eq!(answer.header("grpc-status"), Some("0"), "{:?}", answer.body);
    let expected = Received {
        version: http::Version::HTTP_2,
        content_length: false,
        data: Bytes::from_static(b"\0\0\0\0\x05hello"),
        trailers: Some(checksum()),
    };
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec![expected.clone(), expected]);
    assert_eq!(
        h.metric(
            "plexus_proxy_retries_total",
            &[("backend", "g"), ("reason", "grpc_status")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_client_still_streams_sends_the_rest_of_the_body() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Received>::new()));
    let server = http_upstream({
        let seen = seen.clone();
        move |request| {
            let seen = seen.clone();
            async move {
                // The first attempt fails after one frame, the rest unread.
                let first = seen.lock().unwrap().is_empty();
                let received = receive(request, !first).await;
                seen.lock().unwrap().push(received);
                grpc_reply(if first { "14" } else { "0" }, false)
            }
        }
    })
    .await;
    let h = grpc_route(&server);
    let (tx, rx) = tokio::sync::mpsc::channel::<Frame>(4);
    let client = async {
        let data = |b: &'static [u8]| Ok(http_body::Frame::data(Bytes::from_static(b)));
        tx.send(data(b"first;")).await.unwrap();
        // The retry has begun before the client sent the rest.
        eventually(Duration::from_secs(10), "the retry", || {
            server.requests() == 2
        })
        .await;
        tx.send(data(b"second")).await.unwrap();
        tx.send(Ok(http_body::Frame::trailers(checksum())))
            .await
            .unwrap();
        drop(tx);
    };
    let live = body::boxed(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let (answer, ()) = tokio::join!(h.send(grpc_call("/shop.Cart/Put", live)), client);
    assert_eq!(answer.header("grpc-status"), Some("0"), "{:?}", answer.body);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].data, "first;");
    assert_eq!(
        seen[1].data, "first;second",
        "the retry sent the whole body"
    );
    assert_eq!(seen[1].trailers, Some(checksum()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_larger_than_64_kib_is_not_retried() {
    let sizes = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let server = http_upstream({
        let sizes = sizes.clone();
        move |request| {
            let sizes = sizes.clone();
            async move {
                let received = receive(request, true).await;
                sizes.lock().unwrap().push(received.data.len());
                grpc_reply("14", false)
            }
        }
    })
    .await;
    let h = grpc_route(&server);
    let chunk = Bytes::from(vec![b'x'; 4096]);
    let frames = (0..20)
        .map(|_| Ok(http_body::Frame::data(chunk.clone())))
        .collect();
    let answer = h.send(grpc_call("/shop.Cart/Put", streamed(frames))).await;
    assert_eq!(
        answer.header("grpc-status"),
        Some("14"),
        "the attempt's answer"
    );
    assert_eq!(server.requests(), 1);
    assert_eq!(*sizes.lock().unwrap(), vec![20 * 4096]);
}
