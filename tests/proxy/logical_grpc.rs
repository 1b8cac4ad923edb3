//! gRPC outcomes with real HTTP/2 loopback traffic: `grpc-status` ejects
//! endpoints (trailers-only and in the trailers), an endpoint failing half its
//! calls is ejected by success rate where consecutive failures never would,
//! and a GRPCRoute's retry policy retries the listed statuses only.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use plexus_api::v1 as proto;
use plexus_proxy::body;
use plexus_tests::logical::*;
use plexus_tests::upstream::*;
use plexus_tests::wait::bounded;

/// A target whose one GRPCRoute sends every call to backend `g`.
fn grpc_target(rule: proto::GrpcRouteRule, g: proto::Backend) -> proto::Target {
    let routes = proto::RouteTable {
        grpc: vec![proto::GrpcRoute {
            name: "test/grpc".into(),
            rules: vec![proto::GrpcRouteRule {
                backends: vec![weighted("g", 1)],
                ..rule
            }],
        }],
        ..Default::default()
    };
    target(routes, vec![("g", g)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_answering_unavailable_is_ejected_trailers_only_or_in_trailers() {
    for in_trailers in [false, true] {
        let sick = h2c_upstream(move |_| async move { grpc_reply("14", in_trailers) }).await;
        let healthy = h2c_upstream(move |_| async move { grpc_reply("0", in_trailers) }).await;
        let resilience = proto::Resilience {
            failure_accrual: Some(proto::FailureAccrual {
                consecutive_failures: Some(3),
                min_backoff_ms: Some(60_000),
                ..Default::default()
            }),
            load_balancer: "round-robin".into(),
            ..Default::default()
        };
        let endpoints = vec![endpoint(sick.addr), endpoint(healthy.addr)];
        let h = Harness::new(grpc_target(
            proto::GrpcRouteRule::default(),
            backend(endpoints, Some(resilience)),
        ));
        let mut unavailable = 0;
        for _ in 0..30 {
            let answer = h.send(grpc_call("/shop.Cart/Get", body::empty())).await;
            assert_eq!(answer.status, 200);
            if answer.grpc_status() == Some("14") {
                unavailable += 1;
            }
        }
        let mode = if in_trailers {
            "in trailers"
        } else {
            "trailers-only"
        };
        assert_eq!(unavailable, 3, "{mode}: ejected after 3 UNAVAILABLE");
        assert_eq!(sick.requests(), 3, "{mode}");
        assert_eq!(
            healthy.requests(),
            27,
            "{mode}: the rest went to the healthy one"
        );
        let ejected = h.metric("plexus_proxy_endpoints_ejected", &[("backend", "g")]);
        assert_eq!(ejected, 1.0, "{mode}");
        let counted = |code| {
            h.metric(
                "plexus_proxy_grpc_responses_total",
                &[("backend", "g"), ("grpc_status", code)],
            )
        };
        assert_eq!((counted("14"), counted("0")), (3.0, 27.0), "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_ok_do_not_eject() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = h2c_upstream({
        let calls = calls.clone();
        move |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { grpc_reply(if n.is_multiple_of(2) { "5" } else { "0" }, n % 4 < 2) }
        }
    })
    .await;
    let other = h2c_upstream(|_| async { grpc_reply("5", true) }).await;
    let resilience = proto::Resilience {
        failure_accrual: Some(proto::FailureAccrual {
            consecutive_failures: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    };
    let endpoints = vec![endpoint(server.addr), endpoint(other.addr)];
    let h = Harness::new(grpc_target(
        proto::GrpcRouteRule::default(),
        backend(endpoints, Some(resilience)),
    ));
    for _ in 0..20 {
        let answer = h.send(grpc_call("/shop.Cart/Get", body::empty())).await;
        assert!(matches!(answer.grpc_status(), Some("0" | "5")));
    }
    let ejected = h.metric("plexus_proxy_endpoint_ejections_total", &[("backend", "g")]);
    assert_eq!(
        ejected, 0.0,
        "NOT_FOUND is the caller's problem, not the endpoint's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_route_retries_unavailable_and_not_not_found() {
    for (first, retried) in [("14", true), ("5", false)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let server = h2c_upstream({
            let calls = calls.clone();
            move |_| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move { grpc_reply(if n == 0 { first } else { "0" }, false) }
            }
        })
        .await;
        let rule = proto::GrpcRouteRule {
            // What `plexus.io/retry-grpc-codes: unavailable` and
            // `plexus.io/retry-attempts: 2` on the GRPCRoute become.
            retry: Some(proto::RetryPolicy {
                attempts: 3,
                grpc_codes: vec![14],
                ..Default::default()
            }),
            ..Default::default()
        };
        let h = Harness::new(grpc_target(
            rule,
            backend(vec![endpoint(server.addr)], None),
        ));
        let answer = h.send(grpc_call("/shop.Cart/Get", body::empty())).await;
        let expected = if retried { "0" } else { first };
        assert_eq!(answer.grpc_status(), Some(expected), "first answer {first}");
        assert_eq!(
            server.requests(),
            if retried { 2 } else { 1 },
            "first answer {first}"
        );
        let retries = h.metric(
            "plexus_proxy_retries_total",
            &[("backend", "g"), ("reason", "grpc_status")],
        );
        assert_eq!(retries, if retried { 1.0 } else { 0.0 });
    }
}

/// Three endpoints, one of which answers every other call UNAVAILABLE (in
/// the trailers): never 5 failures in a row.
async fn one_flaky_of_three(success_rate: Option<proto::SuccessRate>) -> (Harness, Upstream) {
    let calls = Arc::new(AtomicUsize::new(0));
    let flaky = h2c_upstream(move |_| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move { grpc_reply(if n.is_multiple_of(2) { "14" } else { "0" }, true) }
    })
    .await;
    let mut endpoints = vec![endpoint(flaky.addr)];
    for _ in 0..2 {
        let healthy = h2c_upstream(|_| async { grpc_reply("0", true) }).await;
        endpoints.push(endpoint(healthy.addr));
    }
    let resilience = proto::Resilience {
        failure_accrual: Some(proto::FailureAccrual {
            consecutive_failures: Some(5),
            min_backoff_ms: Some(60_000),
            success_rate,
            ..Default::default()
        }),
        load_balancer: "round-robin".into(),
        ..Default::default()
    };
    let h = Harness::new(grpc_target(
        proto::GrpcRouteRule::default(),
        backend(endpoints, Some(resilience)),
    ));
    (h, flaky)
}

async fn call(h: &Harness) {
    let answer = h.send(grpc_call("/shop.Cart/Get", body::empty())).await;
    assert!(
        matches!(answer.grpc_status(), Some("0" | "14")),
        "{}",
        answer.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_half_its_calls_is_ejected_by_success_rate_only() {
    let (h, flaky) = one_flaky_of_three(None).await;
    for _ in 0..300 {
        call(&h).await;
    }
    let ejections = h.metric("plexus_proxy_endpoint_ejections_total", &[("backend", "g")]);
    assert_eq!(ejections, 0.0, "consecutive failures alone never eject it");
    assert_eq!(flaky.requests(), 100);

    // Peers at 100 %, it at 50 %: mean 0.83, stddev 0.24, the floor at k = 1 is 0.6.
    let (h, flaky) = one_flaky_of_three(Some(proto::SuccessRate {
        interval_ms: Some(300),
        min_requests: Some(10),
        min_endpoints: Some(3),
        stdev_factor: Some(1.0),
        threshold: None,
    }))
    .await;
    bounded("the flaky endpoint ejected by success rate", async {
        while h.metric("plexus_proxy_endpoints_ejected", &[("backend", "g")]) < 1.0 {
            call(&h).await;
        }
    })
    .await;
    let before = flaky.requests();
    for _ in 0..60 {
        call(&h).await;
    }
    assert_eq!(flaky.requests(), before, "no call reaches it while ejected");
    let ejected = h.metric("plexus_proxy_endpoints_ejected", &[("backend", "g")]);
    assert_eq!(ejected, 1.0, "only the outlier");
}
