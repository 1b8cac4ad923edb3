//! Route filters with real loopback traffic: header modifiers seen by the
//! upstream and by the client, and redirects answered by the proxy itself.

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use plexus_api::v1 as proto;
use plexus_proxy::body;
use plexus_tests::logical::*;
use plexus_tests::upstream::*;

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
        request_redirect: None,
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
