//! Routing and traffic splits with real loopback traffic.

use plexus_api::v1 as proto;
use plexus_proxy::logical::RouteLabel;
use plexus_tests::logical::*;
use plexus_tests::upstream::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_follows_its_weights_over_2000_requests() {
    let stable = http_upstream(|_| async { ok() }).await;
    let canary = http_upstream(|_| async { ok() }).await;
    let dark = http_upstream(|_| async { ok() }).await;
    let routes = catch_all(proto::HttpRouteRule {
        backends: vec![
            weighted("stable", 4),
            weighted("canary", 1),
            weighted("dark", 0),
        ],
        ..Default::default()
    });
    let h = Harness::new(target(
        routes,
        vec![
            ("stable", backend(vec![endpoint(stable.addr)], None)),
            ("canary", backend(vec![endpoint(canary.addr)], None)),
            ("dark", backend(vec![endpoint(dark.addr)], None)),
        ],
    ));
    const N: usize = 2000;
    for _ in 0..N {
        let answer = h.get("/").await;
        assert_eq!(answer.status, 200);
    }
    // 80 % expected; 3 % of 2000 is 60, over 3 standard deviations (~18).
    let share = stable.requests() as f64 / N as f64;
    assert!((0.77..=0.83).contains(&share), "stable got {share:.3}");
    assert_eq!(stable.requests() + canary.requests(), N);
    assert_eq!(dark.requests(), 0, "weight 0 gets nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_backend_of_the_most_specific_rule_and_carry_its_label() {
    let api = http_upstream(|_| async { ok() }).await;
    let users = http_upstream(|_| async { ok() }).await;
    let fallback = http_upstream(|_| async { ok() }).await;
    let rule = |kind: &str, path: &str, backend: &str| proto::HttpRouteRule {
        matches: vec![proto::HttpMatch {
            path: Some(proto::PathMatch {
                r#type: kind.into(),
                value: path.into(),
            }),
            ..Default::default()
        }],
        backends: vec![weighted(backend, 1)],
        ..Default::default()
    };
    let routes = proto::RouteTable {
        http: vec![
            proto::HttpRoute {
                name: "test/api".into(),
                rules: vec![rule("PathPrefix", "/api", "api")],
            },
            proto::HttpRoute {
                name: "test/users".into(),
                rules: vec![rule("Exact", "/api/users", "users")],
            },
        ],
        grpc: vec![],
        default_backend: "fallback".into(),
    };
    let h = Harness::new(target(
        routes,
        vec![
            ("api", backend(vec![endpoint(api.addr)], None)),
            ("users", backend(vec![endpoint(users.addr)], None)),
            ("fallback", backend(vec![endpoint(fallback.addr)], None)),
        ],
    ));
    let label = |a: &Answer| a.extensions.get::<RouteLabel>().map(|l| l.0.to_string());
    let answer = h.get("/api/users").await;
    assert_eq!(label(&answer).as_deref(), Some("test/users"));
    let answer = h.get("/api/orders").await;
    assert_eq!(label(&answer).as_deref(), Some("test/api"));
    let answer = h.get("/apiary").await;
    assert_eq!(label(&answer).as_deref(), Some("default"));
    assert_eq!(
        (api.requests(), users.requests(), fallback.requests()),
        (1, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_without_ready_endpoints_answers_no_endpoints() {
    let h = Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("empty", 1)],
            ..Default::default()
        }),
        vec![("empty", backend(vec![], None))],
    ));
    let answer = h.get("/").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("plexus-error"), Some("no-endpoints"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolved_backend_gets_its_share_as_500_and_the_other_backend_the_rest() {
    let stable = http_upstream(|_| async { ok() }).await;
    let gone = proto::WeightedBackend {
        unresolved: "BackendNotFound: Service test/gone does not exist".into(),
        ..weighted("gone.test.svc.cluster.local:80", 1)
    };
    let h = Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("stable", 1), gone],
            ..Default::default()
        }),
        vec![("stable", backend(vec![endpoint(stable.addr)], None))],
    ));
    const N: usize = 400;
    let mut unresolved = 0;
    for _ in 0..N {
        let answer = h.get("/").await;
        match answer.status.as_u16() {
            200 => assert_eq!(answer.header("plexus-error"), None),
            500 => {
                assert_eq!(answer.header("plexus-error"), Some("unresolved-backend"));
                let body = String::from_utf8_lossy(&answer.body);
                assert!(
                    body.contains("Service test/gone does not exist"),
                    "the body says why: {body}"
                );
                unresolved += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        stable.requests() + unresolved,
        N,
        "every 200 came from stable"
    );
    // 50 % expected; 50 of 400 is 5 standard deviations (10).
    assert!(
        (150..=250).contains(&unresolved),
        "{unresolved} of {N} unresolved"
    );
}
