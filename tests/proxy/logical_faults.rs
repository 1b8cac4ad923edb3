//! Fault injection with real loopback traffic: aborts and delays at their
//! configured shares over 2,000 requests, answered and counted by the proxy,
//! and gRPC calls aborted with a gRPC status.

use std::sync::Arc;
use std::time::Duration;

use plexus_api::v1 as proto;
use plexus_proxy::body;
use plexus_tests::logical::*;
use plexus_tests::upstream::*;
use tokio::time::Instant;

const REQUESTS: usize = 2_000;
/// Requests in flight at once: the delayed ones wait side by side.
const CONCURRENCY: usize = 50;

fn faulty(upstream: &Upstream, fault: proto::Fault) -> Harness {
    Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("web", 1)],
            fault: Some(fault),
            ..Default::default()
        }),
        vec![("web", backend(vec![endpoint(upstream.addr)], None))],
    ))
}

/// Sends `REQUESTS` GETs, `CONCURRENCY` at a time; each answer with how long it took.
async fn load(h: Harness) -> (Arc<Harness>, Vec<(Answer, Duration)>) {
    let h = Arc::new(h);
    let mut answers = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS / CONCURRENCY {
        let batch: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let answer = h.get("/").await;
                    (answer, started.elapsed())
                })
            })
            .collect();
        for request in batch {
            answers.push(request.await.expect("request task"));
        }
    }
    (h, answers)
}

/// Within five standard deviations of `share` of `REQUESTS` (binomial): a
/// wrong share fails, chance alone practically never.
fn assert_share(count: usize, share: f64, what: &str) {
    let n = REQUESTS as f64;
    let expected = n * share;
    let bound = 5.0 * (n * share * (1.0 - share)).sqrt();
    assert!(
        (count as f64 - expected).abs() <= bound,
        "{what}: {count} of {REQUESTS}, expected {expected} ± {bound:.0}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_hit_their_share_and_never_reach_the_backend() {
    let upstream = echo_upstream().await;
    let h = faulty(
        &upstream,
        proto::Fault {
            abort_status: 503,
            abort_percent: 20.0,
            ..Default::default()
        },
    );
    let (h, answers) = load(h).await;
    let aborted: Vec<_> = answers.iter().filter(|(a, _)| a.status == 503).collect();
    assert_share(aborted.len(), 0.20, "aborted");
    for (answer, _) in &aborted {
        assert_eq!(answer.header("plexus-error"), Some("fault-injected"));
    }
    assert!(
        answers
            .iter()
            .all(|(a, _)| a.status == 200 || a.status == 503),
        "every other request is served"
    );
    assert_eq!(upstream.requests(), REQUESTS - aborted.len());
    assert_eq!(
        h.metric("plexus_proxy_faults_injected_total", &[("fault", "abort")]),
        aborted.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_hit_their_share_and_every_request_is_served() {
    const DELAY: Duration = Duration::from_millis(30);
    let upstream = echo_upstream().await;
    let h = faulty(
        &upstream,
        proto::Fault {
            delay_ms: DELAY.as_millis() as u64,
            delay_percent: 10.0,
            ..Default::default()
        },
    );
    let (h, answers) = load(h).await;
    assert!(answers.iter().all(|(a, _)| a.status == 200));
    assert_eq!(upstream.requests(), REQUESTS);
    let delayed = h.metric("plexus_proxy_faults_injected_total", &[("fault", "delay")]) as usize;
    assert_share(delayed, 0.10, "delayed");
    // Each delayed request took the delay at least (others may too, on a
    // busy machine: a lower bound only).
    let slow = answers.iter().filter(|(_, took)| *took >= DELAY).count();
    assert!(
        slow >= delayed,
        "{slow} requests took {DELAY:?}, {delayed} were delayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_grpc_call_gets_the_fault_s_grpc_status() {
    let upstream = h2c_echo_upstream().await;
    let h = faulty(
        &upstream,
        proto::Fault {
            abort_status: 503,
            abort_grpc_status: 8,
            abort_percent: 100.0,
            ..Default::default()
        },
    );
    let answer = h.send(grpc_call("/pkg.Svc/Call", body::empty())).await;
    assert_eq!(answer.status, 200, "gRPC errors ride on 200");
    assert_eq!(answer.grpc_status(), Some("8"));
    assert_eq!(answer.header("plexus-error"), Some("fault-injected"));
    assert_eq!(upstream.requests(), 0);
}
