//! Load balancing and live endpoint changes with real loopback traffic.

use std::time::Duration;

use futures_util::future::join_all;
use plexus_api::v1 as proto;
use plexus_tests::logical::*;
use plexus_tests::upstream::*;
use plexus_tests::wait::*;

fn one_backend(endpoints: Vec<proto::Endpoint>) -> proto::Target {
    target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("b", 1)],
            ..Default::default()
        }),
        vec![("b", backend(endpoints, None))],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_avoids_a_slow_endpoint() {
    let fast = http_upstream(|_| async { ok() }).await;
    let slow = http_upstream(|_| async {
        // The slowness under test, not synchronisation.
        tokio::time::sleep(Duration::from_millis(25)).await;
        ok()
    })
    .await;
    let h = Harness::new(one_backend(vec![endpoint(fast.addr), endpoint(slow.addr)]));
    // 8 concurrent clients, 50 requests each.
    let clients = (0..8).map(|_| async {
        for _ in 0..50 {
            assert_eq!(h.get("/").await.status, 200);
        }
    });
    join_all(clients).await;
    let total = fast.requests() + slow.requests();
    assert_eq!(total, 400);
    assert!(
        fast.requests() * 100 >= total * 80,
        "fast {} slow {}",
        fast.requests(),
        slow.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_endpoint_fails_none_of_its_requests_in_flight() {
    let held = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let blocking = |held: std::sync::Arc<tokio::sync::Semaphore>| {
        move |_| {
            let held = held.clone();
            async move {
                // Released by the test once the endpoint set has changed.
                let _ = held.acquire().await.map(|p| p.forget());
                ok()
            }
        }
    };
    let a = http_upstream(blocking(held.clone())).await;
    let b = http_upstream(blocking(held.clone())).await;
    let c = http_upstream(|_| async { ok() }).await;
    let h = std::sync::Arc::new(Harness::new(one_backend(vec![
        endpoint(a.addr),
        endpoint(b.addr),
    ])));

    const IN_FLIGHT: usize = 20;
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.get("/").await.status })
        })
        .collect();
    eventually(Duration::from_secs(10), "all requests in flight", || {
        a.in_flight() + b.in_flight() == IN_FLIGHT
    })
    .await;
    let a_before = a.requests();

    // `a` goes away, `b` starts terminating, `c` arrives.
    let mut terminating = endpoint(b.addr);
    terminating.ready = false;
    h.update(one_backend(vec![terminating, endpoint(c.addr)]));
    for _ in 0..50 {
        assert_eq!(h.get("/").await.status, 200);
    }
    assert_eq!(c.requests(), 50, "only the new endpoint gets new requests");

    held.add_permits(IN_FLIGHT);
    for request in requests {
        assert_eq!(request.await.expect("request task"), 200);
    }
    assert_eq!(a.requests(), a_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_evenly() {
    let servers = join_all((0..3).map(|_| http_upstream(|_| async { ok() }))).await;
    let mut t = one_backend(servers.iter().map(|s| endpoint(s.addr)).collect());
    if let Some(b) = t.backends.as_mut().and_then(|t| t.backends.get_mut("b")) {
        b.resilience = Some(proto::Resilience {
            load_balancer: "round-robin".into(),
            ..Default::default()
        });
    }
    let h = Harness::new(t);
    for _ in 0..300 {
        assert_eq!(h.get("/").await.status, 200);
    }
    for s in &servers {
        assert_eq!(s.requests(), 100);
    }
}
