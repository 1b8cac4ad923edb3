//! Failure accrual and concurrency limits with real loopback traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plexus_api::v1 as proto;
use plexus_tests::logical::*;
use plexus_tests::upstream::*;
use plexus_tests::wait::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_endpoint_comes_back_after_its_backoff() {
    let failing = Arc::new(AtomicBool::new(true));
    let sick = http_upstream({
        let failing = failing.clone();
        move |_| {
            let fail = failing.load(Ordering::SeqCst);
            async move { if fail { status(500) } else { ok() } }
        }
    })
    .await;
    let healthy = http_upstream(|_| async { ok() }).await;
    let resilience = proto::Resilience {
        failure_accrual: Some(proto::FailureAccrual {
            consecutive_failures: Some(3),
            min_backoff_ms: Some(1_000),
            max_backoff_ms: Some(4_000),
            success_rate: None,
        }),
        load_balancer: "round-robin".into(),
        ..Default::default()
    };
    let h = Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("b", 1)],
            ..Default::default()
        }),
        vec![(
            "b",
            backend(
                vec![endpoint(sick.addr), endpoint(healthy.addr)],
                Some(resilience),
            ),
        )],
    ));
    for _ in 0..20 {
        h.get("/").await;
    }
    assert_eq!(
        h.metric("plexus_proxy_endpoints_ejected", &[("backend", "b")]),
        1.0
    );
    assert_eq!(
        h.metric("plexus_proxy_endpoint_ejections_total", &[("backend", "b")]),
        1.0
    );
    assert_eq!(sick.requests(), 3, "ejected after 3 consecutive failures");

    // Ejected: while its backoff runs, everything goes to the healthy endpoint.
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(200) && served < 100 {
        assert_eq!(h.get("/").await.status, 200);
        served += 1;
    }
    assert_eq!(sick.requests(), 3, "no request during the backoff");

    failing.store(false, Ordering::SeqCst);
    // After the backoff one probe succeeds and the endpoint is readmitted.
    let readmitted = tokio::time::timeout(Duration::from_secs(10), async {
        while sick.requests() < 3 + 10 {
            assert_eq!(h.get("/").await.status, 200);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        readmitted.is_ok(),
        "endpoint not readmitted: {} requests",
        sick.requests()
    );
    assert_eq!(
        h.metric("plexus_proxy_endpoints_ejected", &[("backend", "b")]),
        0.0
    );
}

fn limited(server: &Upstream, max_in_flight: u32, max_queue: u32) -> Harness {
    let resilience = proto::Resilience {
        concurrency: Some(proto::Concurrency {
            max_in_flight,
            max_queue,
            queue_timeout_ms: Some(200),
        }),
        ..Default::default()
    };
    Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("b", 1)],
            ..Default::default()
        }),
        vec![("b", backend(vec![endpoint(server.addr)], Some(resilience)))],
    ))
}

/// An upstream whose requests wait until the test releases them.
async fn held_upstream() -> (Upstream, Arc<tokio::sync::Semaphore>) {
    let held = Arc::new(tokio::sync::Semaphore::new(0));
    let server = http_upstream({
        let held = held.clone();
        move |_| {
            let held = held.clone();
            async move {
                let _ = held.acquire().await.map(|p| p.forget());
                ok()
            }
        }
    })
    .await;
    (server, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backend_sheds_at_once_with_503_overloaded() {
    let (server, held) = held_upstream().await;
    let h = Arc::new(limited(&server, 2, 0));
    let running: Vec<_> = (0..2)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.get("/").await.status })
        })
        .collect();
    eventually(Duration::from_secs(10), "two requests in flight", || {
        server.in_flight() == 2
    })
    .await;

    let started = Instant::now();
    let shed = h.get("/").await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("plexus-error"), Some("overloaded"));
    assert!(started.elapsed() < Duration::from_secs(1), "shed at once");
    assert_eq!(server.requests(), 2);

    held.add_permits(2);
    for r in running {
        assert_eq!(r.await.expect("request task"), 200);
    }
    // Slots are free again.
    held.add_permits(1);
    assert_eq!(h.get("/").await.status, 200);
    assert_eq!(
        h.metric(
            "plexus_proxy_shed_requests_total",
            &[("backend", "b"), ("reason", "queue_full")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_is_shed_after_the_queue_timeout() {
    let (server, held) = held_upstream().await;
    let h = Arc::new(limited(&server, 1, 1));
    let running = {
        let h = h.clone();
        tokio::spawn(async move { h.get("/").await.status })
    };
    eventually(Duration::from_secs(10), "one request in flight", || {
        server.in_flight() == 1
    })
    .await;
    let started = Instant::now();
    let queued = h.get("/").await;
    assert_eq!(queued.status, 503);
    assert_eq!(queued.header("plexus-error"), Some("overloaded"));
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "waited in the queue"
    );
    held.add_permits(1);
    assert_eq!(running.await.expect("request task"), 200);
    assert_eq!(
        h.metric(
            "plexus_proxy_shed_requests_total",
            &[("backend", "b"), ("reason", "queue_timeout")]
        ),
        1.0
    );
}
