//! Route filters with real loopback traffic: header modifiers seen by the
//! upstream and by the client, at rule and backend level; redirects answered
//! by the proxy itself; rewritten paths and hosts; mirrors that get their
//! share of copies without slowing or failing the requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use plexus_api::v1 as proto;
use plexus_proxy::body;
use plexus_tests::logical::*;
use plexus_tests::upstream::*;
use plexus_tests::wait::{BOUND, bounded, eventually};

fn header(name: &str, value: &str) -> proto::HeaderValue {
    proto::HeaderValue {
        name: name.into(),
        value: value.into(),
    }
}

/// Answers with the request's `x-*` headers, one `name: value` line each in
/// arrival order, and `x-upstream-env: dev` and `x-internal: secret`
/// headers of its own.
async fn header_echo() -> Upstream {
    http_upstream(|request| async move {
        let seen: String = request
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-"))
            .map(|(name, value)| format!("{name}: {}\n", value.to_str().unwrap_or("?")))
            .collect();
        Response::builder()
            .header("x-upstream-env", "dev")
            .header("x-internal", "secret")
            .body(Full::new(Bytes::from(seen)))
            .expect("a response")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifiers_change_what_the_upstream_and_the_client_see() {
    let upstream = header_echo().await;
    let filters = proto::HttpFilters {
        request_header_modifier: Some(proto::HeaderModifier {
            set: vec![header("X-Env", "prod")],
            add: vec![header("X-Tag", "mesh")],
            remove: vec!["X-Secret".into()],
        }),
        response_header_modifier: Some(proto::HeaderModifier {
            set: vec![header("X-Upstream-Env", "prod")],
            add: vec![header("X-Served-By", "plexus")],
            remove: vec!["X-INTERNAL".into()],
        }),
        ..Default::default()
    };
    let h = Harness::new(target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("web", 1)],
            filters: Some(filters),
            ..Default::default()
        }),
        vec![("web", backend(vec![endpoint(upstream.addr)], None))],
    ));
    let mut sent = request("GET", "/", body::empty());
    let headers = sent.headers_mut();
    headers.append("x-env", "dev".parse().unwrap());
    headers.append("x-env", "test".parse().unwrap());
    headers.append("x-tag", "app".parse().unwrap());
    headers.append("x-secret", "s3cr3t".parse().unwrap());
    let answer = h.send(sent).await;
    assert_eq!(answer.status, 200);
    let seen = String::from_utf8_lossy(&answer.body);
    let mut lines: Vec<&str> = seen.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["x-env: prod", "x-tag: app", "x-tag: mesh"],
        "set replaces every value, add appends, remove removes"
    );
    assert_eq!(answer.header("x-upstream-env"), Some("prod"));
    assert_eq!(answer.header("x-served-by"), Some("plexus"));
    assert_eq!(answer.header("x-internal"), None);
}

/// A rule matching `prefix` that redirects with `redirect`, and the target's
/// only backend, which must get nothing.
fn redirecting(
    prefix: &str,
    redirect: proto::RequestRedirect,
    backend_addr: std::net::SocketAddr,
) -> Harness {
    let rule = proto::HttpRouteRule {
        matches: vec![proto::HttpMatch {
            path: Some(proto::PathMatch {
                r#type: "PathPrefix".into(),
                value: prefix.into(),
            }),
            ..Default::default()
        }],
        filters: Some(proto::HttpFilters {
            request_redirect: Some(redirect),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut routes = catch_all(rule);
    routes.default_backend = "web".into();
    Harness::new(target(
        routes,
        vec![("web", backend(vec![endpoint(backend_addr)], None))],
    ))
}

fn path(kind: &str, value: &str) -> Option<proto::PathModifier> {
    Some(proto::PathModifier {
        r#type: kind.into(),
        value: value.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_build_their_location_per_gateway_api_and_reach_no_backend() {
    let upstream = http_upstream(|_| async { ok() }).await;
    // The harness's requests carry `Host: web.test:80`.
    let cases = [
        (
            "only a status: the request's scheme, host, port and path",
            proto::RequestRedirect {
                status_code: 301,
                ..Default::default()
            },
            "/a/b?q=1",
            301,
            "http://web.test/a/b?q=1",
        ),
        (
            "a scheme brings its well-known port",
            proto::RequestRedirect {
                scheme: "https".into(),
                ..Default::default()
            },
            "/a",
            302,
            "https://web.test/a",
        ),
        (
            "an explicit port other than the scheme's is written",
            proto::RequestRedirect {
                scheme: "https".into(),
                hostname: "secure.example".into(),
                port: Some(8443),
                ..Default::default()
            },
            "/a",
            302,
            "https://secure.example:8443/a",
        ),
        (
            "the scheme's own port is left out",
            proto::RequestRedirect {
                scheme: "https".into(),
                port: Some(443),
                ..Default::default()
            },
            "/a",
            302,
            "https://web.test/a",
        ),
        (
            "a port without a scheme keeps the request's scheme",
            proto::RequestRedirect {
                port: Some(8080),
                ..Default::default()
            },
            "/a",
            302,
            "http://web.test:8080/a",
        ),
        (
            "ReplaceFullPath replaces the path, the query stays",
            proto::RequestRedirect {
                path: path("ReplaceFullPath", "/new"),
                ..Default::default()
            },
            "/a/b?q=1",
            302,
            "http://web.test/new?q=1",
        ),
        (
            "ReplacePrefixMatch replaces the matched prefix",
            proto::RequestRedirect {
                path: path("ReplacePrefixMatch", "/v2"),
                ..Default::default()
            },
            "/a/b",
            302,
            "http://web.test/v2/b",
        ),
        (
            "ReplacePrefixMatch with / drops the prefix",
            proto::RequestRedirect {
                path: path("ReplacePrefixMatch", "/"),
                ..Default::default()
            },
            "/a/b",
            302,
            "http://web.test/b",
        ),
    ];
    for (why, redirect, request_path, status, location) in cases {
        let h = redirecting("/a", redirect, upstream.addr);
        let answer = h.get(request_path).await;
        assert_eq!(answer.status, status, "{why}");
        assert_eq!(answer.header("location"), Some(location), "{why}");
        assert!(answer.body.is_empty(), "{why}");
    }
    assert_eq!(upstream.requests(), 0, "a redirect touches no backend");

    // A host port other than 80 is the port the request was addressed to.
    let h = redirecting(
        "/",
        proto::RequestRedirect {
            hostname: "other.example".into(),
            ..Default::default()
        },
        upstream.addr,
    );
    let mut sent = request("GET", "/x", body::empty());
    sent.headers_mut()
        .insert("host", "web.test:8080".parse().unwrap());
    let answer = h.send(sent).await;
    assert_eq!(
        answer.header("location"),
        Some("http://other.example:8080/x")
    );
    // Outside the redirecting rule, requests reach the backend.
    let h = redirecting("/a", proto::RequestRedirect::default(), upstream.addr);
    assert_eq!(h.get("/elsewhere").await.status, 200);
    assert_eq!(upstream.requests(), 1);
}

/// Answers `<Host> <path and query>` of the request it got.
async fn uri_echo() -> Upstream {
    http_upstream(|request| async move {
        let host = request
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let uri = request
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        Response::new(Full::new(Bytes::from(format!("{host} {uri}"))))
    })
    .await
}

/// A rule matching the path prefix `prefix`, to `backends`, with `filters`.
fn prefix_rule(
    prefix: &str,
    backends: Vec<proto::WeightedBackend>,
    filters: proto::HttpFilters,
) -> proto::HttpRouteRule {
    proto::HttpRouteRule {
        matches: vec![proto::HttpMatch {
            path: Some(proto::PathMatch {
                r#type: "PathPrefix".into(),
                value: prefix.into(),
            }),
            ..Default::default()
        }],
        backends,
        filters: Some(filters),
        ..Default::default()
    }
}

fn rewrite(hostname: &str, path: Option<proto::PathModifier>) -> proto::HttpFilters {
    proto::HttpFilters {
        url_rewrite: Some(proto::UrlRewrite {
            hostname: hostname.into(),
            path,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_change_the_path_and_host_the_upstream_sees() {
    let upstream = uri_echo().await;
    let web = || vec![weighted("web", 1)];
    let mut routes = proto::RouteTable {
        http: vec![proto::HttpRoute {
            name: "test/rewrites".into(),
            rules: vec![
                prefix_rule(
                    "/foo",
                    web(),
                    rewrite("internal.example", path("ReplacePrefixMatch", "/bar")),
                ),
                prefix_rule(
                    "/strip",
                    web(),
                    rewrite("", path("ReplacePrefixMatch", "/")),
                ),
                prefix_rule(
                    "/full",
                    web(),
                    rewrite("", path("ReplaceFullPath", "/replaced")),
                ),
            ],
        }],
        ..Default::default()
    };
    routes.default_backend = "web".into();
    let h = Harness::new(target(
        routes,
        vec![("web", backend(vec![endpoint(upstream.addr)], None))],
    ));
    // The harness's requests carry `Host: web.test:80`.
    let cases = [
        ("/foo/baz?q=1", "internal.example /bar/baz?q=1"),
        ("/foo", "internal.example /bar"),
        ("/foo/", "internal.example /bar/"),
        ("/foobar", "web.test:80 /foobar"),
        ("/strip/baz", "web.test:80 /baz"),
        ("/strip", "web.test:80 /"),
        ("/full/x?y=1", "web.test:80 /replaced?y=1"),
    ];
    for (sent, seen) in cases {
        let answer = h.get(sent).await;
        assert_eq!(answer.status, 200, "{sent}");
        assert_eq!(String::from_utf8_lossy(&answer.body), seen, "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_filters_apply_after_the_rules_and_only_to_their_backend() {
    let (a, b) = (header_echo().await, header_echo().await);
    let own = |name: &str| proto::BackendFilters {
        request_header_modifier: Some(proto::HeaderModifier {
            set: vec![header("X-Backend", name)],
            ..Default::default()
        }),
        response_header_modifier: Some(proto::HeaderModifier {
            set: vec![header("X-Served-By", name)],
            ..Default::default()
        }),
    };
    let rule = proto::HttpRouteRule {
        backends: vec![
            proto::WeightedBackend {
                filters: Some(own("a")),
                ..weighted("a", 1)
            },
            weighted("b", 1),
        ],
        filters: Some(proto::HttpFilters {
            request_header_modifier: Some(proto::HeaderModifier {
                set: vec![header("X-Backend", "rule")],
                ..Default::default()
            }),
            response_header_modifier: Some(proto::HeaderModifier {
                set: vec![header("X-Served-By", "rule")],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let h = Harness::new(target(
        catch_all(rule),
        vec![
            ("a", backend(vec![endpoint(a.addr)], None)),
            ("b", backend(vec![endpoint(b.addr)], None)),
        ],
    ));
    let mut served_by_a = 0;
    for _ in 0..40 {
        let answer = h.get("/").await;
        assert_eq!(answer.status, 200);
        let seen = String::from_utf8_lossy(&answer.body).into_owned();
        match answer.header("x-served-by") {
            Some("a") => {
                assert_eq!(seen, "x-backend: a\n", "a's own filter after the rule's");
                served_by_a += 1;
            }
            Some("rule") => assert_eq!(seen, "x-backend: rule\n", "b: the rule's alone"),
            other => panic!("x-served-by {other:?}"),
        }
    }
    assert_eq!(a.requests(), served_by_a);
    assert_eq!(b.requests(), 40 - served_by_a);
    assert!(served_by_a > 0 && served_by_a < 40, "both backends served");
}

/// A mirror upstream: counts the copies that came with the shadow host and
/// the whole body of the request (`ping`), answering each at once.
async fn faithful_mirror(faithful: Arc<AtomicUsize>) -> Upstream {
    http_upstream(move |request| {
        let faithful = faithful.clone();
        async move {
            let shadowed = request
                .headers()
                .get("host")
                .is_some_and(|h| h == "web.test-shadow:80");
            let body = request.into_body().collect().await.map(|b| b.to_bytes());
            if shadowed && body.is_ok_and(|b| b == "ping") {
                faithful.fetch_add(1, Ordering::SeqCst);
            }
            ok()
        }
    })
    .await
}

fn mirror_to(backend: &str, fraction: Option<(u32, u32)>) -> proto::RequestMirror {
    proto::RequestMirror {
        backend: backend.into(),
        fraction: fraction.map(|(numerator, denominator)| proto::Fraction {
            numerator,
            denominator,
        }),
        ..Default::default()
    }
}

fn mirroring(mirrors: Vec<proto::RequestMirror>) -> proto::HttpRouteRule {
    proto::HttpRouteRule {
        backends: vec![weighted("web", 1)],
        filters: Some(proto::HttpFilters {
            request_mirrors: mirrors,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_its_fraction_of_copies_with_the_shadow_host_and_the_body() {
    let primary = echo_upstream().await;
    let faithful = Arc::new(AtomicUsize::new(0));
    let mirror = faithful_mirror(faithful.clone()).await;
    let h = Harness::new(target(
        catch_all(mirroring(vec![mirror_to("shadow", Some((1, 2)))])),
        vec![
            ("web", backend(vec![endpoint(primary.addr)], None)),
            ("shadow", backend(vec![endpoint(mirror.addr)], None)),
        ],
    ));
    for _ in 0..400 {
        let answer = h.send(request("POST", "/", body::full("ping"))).await;
        assert_eq!(answer.status, 200);
        assert!(answer.body.ends_with(b"ping"), "the primary got the body");
    }
    assert_eq!(primary.requests(), 400);
    // Copies are sent in the background; 1/2 of 400 is 200 (binomial sd 10).
    eventually(BOUND, "the mirror's share of copies", || {
        mirror.requests() >= 140
    })
    .await;
    let copies = mirror.requests();
    assert!(
        (140..=260).contains(&copies),
        "{copies} copies of 400 at 1/2"
    );
    eventually(BOUND, "every copy read", || {
        faithful.load(Ordering::SeqCst) == mirror.requests()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_never_answers_or_refuses_connections_slows_and_fails_nothing() {
    let primary = http_upstream(|_| async { ok() }).await;
    let silent = http_upstream(|_| std::future::pending::<Response<Full<Bytes>>>()).await;
    let h = Harness::new(target(
        catch_all(mirroring(vec![
            mirror_to("silent", None),
            mirror_to("refusing", None),
        ])),
        vec![
            ("web", backend(vec![endpoint(primary.addr)], None)),
            ("silent", backend(vec![endpoint(silent.addr)], None)),
            ("refusing", backend(vec![endpoint(unused_addr())], None)),
        ],
    ));
    bounded("every request while the mirrors hang and refuse", async {
        for _ in 0..200 {
            assert_eq!(h.get("/").await.status, 200);
        }
    })
    .await;
    assert_eq!(primary.requests(), 200);
    // The silent mirror still holds copies open: the requests did not wait for them.
    eventually(BOUND, "copies held open by the silent mirror", || {
        silent.in_flight() > 0
    })
    .await;
    assert_eq!(
        h.get("/").await.status,
        200,
        "still serving with copies held open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_rules_fault_aborts_is_not_mirrored() {
    let primary = http_upstream(|_| async { ok() }).await;
    let mirror = http_upstream(|_| async { ok() }).await;
    let with_fault = |fault: Option<proto::Fault>| {
        let rule = proto::HttpRouteRule {
            fault,
            ..mirroring(vec![mirror_to("shadow", None)])
        };
        target(
            catch_all(rule),
            vec![
                ("web", backend(vec![endpoint(primary.addr)], None)),
                ("shadow", backend(vec![endpoint(mirror.addr)], None)),
            ],
        )
    };
    let h = Harness::new(with_fault(Some(proto::Fault {
        abort_status: 503,
        abort_percent: 100.0,
        ..Default::default()
    })));
    for _ in 0..20 {
        assert_eq!(h.get("/").await.status, 503);
    }
    // Without the fault the next request is mirrored: once its copy is in,
    // copies of the aborted ones (sent earlier, on the same path) would be too.
    h.update(with_fault(None));
    assert_eq!(h.get("/").await.status, 200);
    eventually(BOUND, "the unfaulted request's copy", || {
        mirror.requests() >= 1
    })
    .await;
    assert_eq!(mirror.requests(), 1, "as Envoy: faults come before mirrors");
    assert_eq!(primary.requests(), 1);
}
