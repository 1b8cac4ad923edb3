//! Choosing a route rule for a request, with Gateway API HTTPRoute / GRPCRoute
//! semantics. The proto's route table is compiled once per update (regexes
//! included) into candidates sorted by the spec's precedence; a request takes
//! the first candidate that matches, else the table's default backend.
//!
//! HTTP precedence, across all rules of all routes: exact path, then regex
//! path, then the longest prefix; then a method match; then most header
//! matches; then most query param matches; ties keep the controller's order of
//! routes, then rule order. gRPC: longest exact service, longest exact method,
//! most header matches, then the same tie-breaks.

use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, Method, Request};
use plexus_api::v1 as proto;
use rand::Rng;
use regex::Regex;

use super::RouteLabel;
use super::retry::RetryPolicy;

/// What a matched rule says about the request.
#[derive(Debug)]
pub struct Rule {
    pub label: RouteLabel,
    pub split: BackendSplit,
    /// Whole request, retries included.
    pub request_timeout: Option<Duration>,
    /// One attempt.
    pub try_timeout: Option<Duration>,
    pub retry: RetryPolicy,
}

/// A compiled route table.
#[derive(Debug)]
pub struct RouteTable {
    http: Vec<Candidate<HttpMatcher>>,
    grpc: Vec<Candidate<GrpcMatcher>>,
    default: Arc<Rule>,
}

#[derive(Debug)]
struct Candidate<M> {
    matcher: M,
    rule: Arc<Rule>,
}

impl RouteTable {
    /// Compiles `table`; a rule that cannot be compiled is skipped with an
    /// error naming the route and field. `default_backend` serves requests
    /// that match nothing.
    pub fn compile(table: &proto::RouteTable, default_backend: &str) -> RouteTable {
        let default = Arc::new(Rule {
            label: RouteLabel(Arc::from("default")),
            split: BackendSplit::single(default_backend),
            request_timeout: None,
            try_timeout: None,
            retry: RetryPolicy::none(),
        });

        let mut http = Vec::new();
        for route in &table.http {
            for (r, rule) in route.rules.iter().enumerate() {
                let field = format!("routes.http[{}].rules[{r}]", route.name);
                match compile_http_rule(rule, &field) {
                    Ok(matchers) => {
                        let compiled = Arc::new(Rule::new(
                            &route.name,
                            &rule.backends,
                            rule.timeouts.as_ref(),
                            rule.retry.as_ref(),
                            default_backend,
                        ));
                        http.extend(matchers.into_iter().map(|matcher| Candidate {
                            matcher,
                            rule: compiled.clone(),
                        }));
                    }
                    Err(error) => tracing::error!(%error, "route rule skipped"),
                }
            }
        }
        // Stable: equal precedence keeps route order, then rule order.
        http.sort_by_key(|c| std::cmp::Reverse(c.matcher.precedence()));

        let mut grpc = Vec::new();
        for route in &table.grpc {
            for (r, rule) in route.rules.iter().enumerate() {
                let field = format!("routes.grpc[{}].rules[{r}]", route.name);
                match compile_grpc_rule(rule, &field) {
                    Ok(matchers) => {
                        let compiled = Arc::new(Rule::new(
                            &route.name,
                            &rule.backends,
                            rule.timeouts.as_ref(),
                            rule.retry.as_ref(),
                            default_backend,
                        ));
                        grpc.extend(matchers.into_iter().map(|matcher| Candidate {
                            matcher,
                            rule: compiled.clone(),
                        }));
                    }
                    Err(error) => tracing::error!(%error, "route rule skipped"),
                }
            }
        }
        grpc.sort_by_key(|c| std::cmp::Reverse(c.matcher.precedence()));

        RouteTable {
            http,
            grpc,
            default,
        }
    }

    /// The rule for `request`: gRPC requests try GRPCRoutes first, then
    /// HTTPRoutes; nothing matching means the default backend.
    pub fn route<B>(&self, request: &Request<B>) -> &Arc<Rule> {
        if is_grpc(request.headers())
            && let Some(c) = self.grpc.iter().find(|c| c.matcher.matches(request))
        {
            return &c.rule;
        }
        self.http
            .iter()
            .find(|c| c.matcher.matches(request))
            .map_or(&self.default, |c| &c.rule)
    }
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

impl Rule {
    fn new(
        route: &str,
        backends: &[proto::WeightedBackend],
        timeouts: Option<&proto::Timeouts>,
        retry: Option<&proto::RetryPolicy>,
        default_backend: &str,
    ) -> Rule {
        let millis = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Rule {
            label: RouteLabel(Arc::from(route)),
            split: if backends.is_empty() {
                // A rule naming no backend sends to the target itself.
                BackendSplit::single(default_backend)
            } else {
                BackendSplit::new(backends)
            },
            request_timeout: timeouts.and_then(|t| millis(t.request_ms)),
            try_timeout: timeouts.and_then(|t| millis(t.backend_request_ms)),
            retry: RetryPolicy::from_proto(retry),
        }
    }
}

/// A rule's weighted backends (a traffic split).
#[derive(Debug)]
pub struct BackendSplit {
    backends: Vec<(Arc<str>, u64)>,
    total: u64,
}

impl BackendSplit {
    fn new(backends: &[proto::WeightedBackend]) -> BackendSplit {
        let backends: Vec<(Arc<str>, u64)> = backends
            .iter()
            .map(|b| {
                (
                    Arc::from(b.backend.as_str()),
                    u64::from(b.weight.unwrap_or(1)),
                )
            })
            .filter(|(_, weight)| *weight > 0)
            .collect();
        let total = backends.iter().map(|(_, w)| w).sum();
        BackendSplit { backends, total }
    }

    fn single(backend: &str) -> BackendSplit {
        if backend.is_empty() {
            return BackendSplit {
                backends: Vec::new(),
                total: 0,
            };
        }
        BackendSplit {
            backends: vec![(Arc::from(backend), 1)],
            total: 1,
        }
    }

    /// A backend drawn by weight; `None` when every weight is 0 (or none named).
    pub fn pick(&self) -> Option<&Arc<str>> {
        if let [(only, _)] = self.backends.as_slice() {
            return Some(only);
        }
        if self.total == 0 {
            return None;
        }
        let mut point = rand::rng().random_range(0..self.total);
        for (backend, weight) in &self.backends {
            if point < *weight {
                return Some(backend);
            }
            point -= weight;
        }
        None
    }
}

// ===== HTTP =====

#[derive(Debug)]
struct HttpMatcher {
    path: PathMatcher,
    headers: Vec<HeaderMatcher>,
    query: Vec<QueryMatcher>,
    method: Option<Method>,
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    Regex(Regex),
    /// Without its trailing '/'; "" matches every path.
    Prefix(String),
}

#[derive(Debug)]
struct HeaderMatcher {
    name: HeaderName,
    value: ValueMatcher,
}

#[derive(Debug)]
struct QueryMatcher {
    name: String,
    value: ValueMatcher,
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

/// Larger is more specific.
type HttpPrecedence = (u8, usize, bool, usize, usize);

impl HttpMatcher {
    fn precedence(&self) -> HttpPrecedence {
        let (kind, len) = match &self.path {
            PathMatcher::Exact(p) => (2, p.len()),
            PathMatcher::Regex(r) => (1, r.as_str().len()),
            PathMatcher::Prefix(p) => (0, p.len()),
        };
        (
            kind,
            len,
            self.method.is_some(),
            self.headers.len(),
            self.query.len(),
        )
    }

    fn matches<B>(&self, request: &Request<B>) -> bool {
        let path = request.uri().path();
        let path_matches = match &self.path {
            PathMatcher::Exact(p) => path == p,
            PathMatcher::Regex(r) => r.is_match(path),
            PathMatcher::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
        };
        path_matches
            && self.method.as_ref().is_none_or(|m| m == request.method())
            && self
                .headers
                .iter()
                .all(|h| headers_match(h, request.headers()))
            && (self.query.is_empty() || self.query_matches(request.uri().query().unwrap_or("")))
    }

    fn query_matches(&self, query: &str) -> bool {
        let pairs: Vec<(&str, &str)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        self.query.iter().all(|q| {
            // Gateway API: only the first value of a repeated parameter counts.
            pairs
                .iter()
                .find(|(name, _)| *name == q.name)
                .is_some_and(|(_, value)| q.value.matches(value))
        })
    }
}

fn headers_match(matcher: &HeaderMatcher, headers: &HeaderMap) -> bool {
    headers
        .get_all(&matcher.name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| matcher.value.matches(v)))
}

impl ValueMatcher {
    fn compile(kind: &str, value: &str, field: &str) -> Result<ValueMatcher, String> {
        match kind {
            "" | "Exact" => Ok(ValueMatcher::Exact(value.to_owned())),
            "RegularExpression" => full_match_regex(value, field).map(ValueMatcher::Regex),
            other => Err(format!("{field}.type: unknown match type {other:?}")),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(v) => v == value,
            ValueMatcher::Regex(r) => r.is_match(value),
        }
    }
}

/// Gateway API regexes match the whole value.
fn full_match_regex(pattern: &str, field: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("{field}.value: invalid regular expression {pattern:?}: {e}"))
}

fn compile_http_rule(rule: &proto::HttpRouteRule, field: &str) -> Result<Vec<HttpMatcher>, String> {
    if rule.matches.is_empty() {
        return Ok(vec![HttpMatcher {
            path: PathMatcher::Prefix(String::new()),
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        }]);
    }
    rule.matches
        .iter()
        .enumerate()
        .map(|(m, matched)| compile_http_match(matched, &format!("{field}.matches[{m}]")))
        .collect()
}

fn compile_http_match(m: &proto::HttpMatch, field: &str) -> Result<HttpMatcher, String> {
    let default_path = proto::PathMatch::default();
    let path = m.path.as_ref().unwrap_or(&default_path);
    let path_field = format!("{field}.path");
    let path = match path.r#type.as_str() {
        "Exact" => PathMatcher::Exact(path.value.clone()),
        "" | "PathPrefix" => PathMatcher::Prefix(path.value.trim_end_matches('/').to_owned()),
        "RegularExpression" => PathMatcher::Regex(full_match_regex(&path.value, &path_field)?),
        other => {
            return Err(format!(
                "{path_field}.type: unknown path match type {other:?}"
            ));
        }
    };
    let headers = compile_headers(&m.headers, &format!("{field}.headers"))?;
    let query = m
        .query_params
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let field = format!("{field}.query_params[{i}]");
            Ok(QueryMatcher {
                name: q.name.clone(),
                value: ValueMatcher::compile(&q.r#type, &q.value, &field)?,
            })
        })
        .collect::<Result<_, String>>()?;
    let method = if m.method.is_empty() {
        None
    } else {
        Some(
            Method::from_bytes(m.method.as_bytes())
                .map_err(|_| format!("{field}.method: invalid method {:?}", m.method))?,
        )
    };
    Ok(HttpMatcher {
        path,
        headers,
        query,
        method,
    })
}

fn compile_headers(
    headers: &[proto::HeaderMatch],
    field: &str,
) -> Result<Vec<HeaderMatcher>, String> {
    headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let field = format!("{field}[{i}]");
            // HeaderName parsing lowercases: header names match case-insensitively.
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("{field}.name: invalid header name {:?}", h.name))?;
            Ok(HeaderMatcher {
                name,
                value: ValueMatcher::compile(&h.r#type, &h.value, &field)?,
            })
        })
        .collect()
}

// ===== gRPC =====

#[derive(Debug)]
struct GrpcMatcher {
    service: Option<ValueMatcher>,
    method: Option<ValueMatcher>,
    headers: Vec<HeaderMatcher>,
}

impl GrpcMatcher {
    fn precedence(&self) -> (usize, usize, usize) {
        let exact_len = |m: &Option<ValueMatcher>| match m {
            Some(ValueMatcher::Exact(v)) => v.len(),
            _ => 0,
        };
        (
            exact_len(&self.service),
            exact_len(&self.method),
            self.headers.len(),
        )
    }

    fn matches<B>(&self, request: &Request<B>) -> bool {
        // gRPC paths are "/package.Service/Method".
        let Some((service, method)) = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
        else {
            return false;
        };
        self.service.as_ref().is_none_or(|m| m.matches(service))
            && self.method.as_ref().is_none_or(|m| m.matches(method))
            && self
                .headers
                .iter()
                .all(|h| headers_match(h, request.headers()))
    }
}

fn compile_grpc_rule(rule: &proto::GrpcRouteRule, field: &str) -> Result<Vec<GrpcMatcher>, String> {
    if rule.matches.is_empty() {
        return Ok(vec![GrpcMatcher {
            service: None,
            method: None,
            headers: Vec::new(),
        }]);
    }
    rule.matches
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = format!("{field}.matches[{i}]");
            let name = |value: &str, part: &str| {
                (!value.is_empty())
                    .then(|| ValueMatcher::compile(&m.r#type, value, &format!("{field}.{part}")))
                    .transpose()
            };
            Ok(GrpcMatcher {
                service: name(&m.service, "service")?,
                method: name(&m.method, "method")?,
                headers: compile_headers(&m.headers, &format!("{field}.headers"))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(kind: &str, value: &str) -> Option<proto::PathMatch> {
        Some(proto::PathMatch {
            r#type: kind.into(),
            value: value.into(),
        })
    }

    fn header(kind: &str, name: &str, value: &str) -> proto::HeaderMatch {
        proto::HeaderMatch {
            r#type: kind.into(),
            name: name.into(),
            value: value.into(),
        }
    }

    fn rule(matches: Vec<proto::HttpMatch>, backend: &str) -> proto::HttpRouteRule {
        proto::HttpRouteRule {
            matches,
            backends: vec![proto::WeightedBackend {
                backend: backend.into(),
                weight: None,
            }],
            ..Default::default()
        }
    }

    fn route(name: &str, rules: Vec<proto::HttpRouteRule>) -> proto::HttpRoute {
        proto::HttpRoute {
            name: name.into(),
            rules,
        }
    }

    fn table(http: Vec<proto::HttpRoute>) -> RouteTable {
        RouteTable::compile(
            &proto::RouteTable {
                http,
                ..Default::default()
            },
            "default-svc",
        )
    }

    /// The backend a request is routed to.
    fn backend(t: &RouteTable, request: Request<()>) -> String {
        t.route(&request)
            .split
            .pick()
            .map(|b| b.to_string())
            .unwrap_or_default()
    }

    fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    fn m(path: Option<proto::PathMatch>) -> proto::HttpMatch {
        proto::HttpMatch {
            path,
            ..Default::default()
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let t = table(vec![route(
            "r",
            vec![rule(vec![m(path("PathPrefix", "/foo/"))], "foo")],
        )]);
        assert_eq!(backend(&t, get("/foo")), "foo");
        assert_eq!(backend(&t, get("/foo/")), "foo");
        assert_eq!(backend(&t, get("/foo/bar?x=1")), "foo");
        assert_eq!(backend(&t, get("/foobar")), "default-svc");
        assert_eq!(backend(&t, get("/")), "default-svc");
    }

    #[test]
    fn exact_beats_regex_beats_the_longest_prefix_whatever_the_order() {
        let t = table(vec![
            route("a", vec![rule(vec![m(path("PathPrefix", "/"))], "root")]),
            route("b", vec![rule(vec![m(path("PathPrefix", "/api"))], "api")]),
            route(
                "c",
                vec![rule(vec![m(path("PathPrefix", "/api/v1"))], "v1")],
            ),
            route(
                "d",
                vec![rule(
                    vec![m(path("RegularExpression", "/api/v1/[a-z]+"))],
                    "regex",
                )],
            ),
            route(
                "e",
                vec![rule(vec![m(path("Exact", "/api/v1/users"))], "exact")],
            ),
        ]);
        assert_eq!(backend(&t, get("/api/v1/users")), "exact");
        assert_eq!(backend(&t, get("/api/v1/things")), "regex");
        assert_eq!(backend(&t, get("/api/v1/things/1")), "v1");
        assert_eq!(backend(&t, get("/api/v2")), "api");
        assert_eq!(backend(&t, get("/other")), "root");
        assert_eq!(t.route(&get("/other")).label.0.as_ref(), "a");
    }

    #[test]
    fn regexes_match_the_whole_path() {
        let t = table(vec![route(
            "r",
            vec![rule(vec![m(path("RegularExpression", "/b"))], "b")],
        )]);
        assert_eq!(backend(&t, get("/b")), "b");
        assert_eq!(backend(&t, get("/bc")), "default-svc");
        assert_eq!(backend(&t, get("/a/b")), "default-svc");
    }

    #[test]
    fn method_then_headers_then_query_params_break_path_ties() {
        let with =
            |method: &str, headers: Vec<proto::HeaderMatch>, query: Vec<proto::HeaderMatch>| {
                proto::HttpMatch {
                    path: path("PathPrefix", "/x"),
                    headers,
                    query_params: query,
                    method: method.into(),
                }
            };
        let t = table(vec![route(
            "r",
            vec![
                rule(
                    vec![with("", vec![], vec![header("Exact", "q", "1")])],
                    "query",
                ),
                rule(
                    vec![with(
                        "",
                        vec![header("Exact", "a", "1"), header("Exact", "b", "1")],
                        vec![],
                    )],
                    "two-headers",
                ),
                rule(
                    vec![with(
                        "",
                        vec![header("Exact", "a", "1")],
                        vec![header("Exact", "q", "1"), header("Exact", "r", "1")],
                    )],
                    "header",
                ),
                rule(vec![with("POST", vec![], vec![])], "post"),
            ],
        )]);
        let post = Request::post("/x?q=1")
            .header("a", "1")
            .header("b", "1")
            .body(())
            .unwrap();
        assert_eq!(backend(&t, post), "post");
        let two = Request::get("/x?q=1&r=1")
            .header("a", "1")
            .header("b", "1")
            .body(())
            .unwrap();
        assert_eq!(backend(&t, two), "two-headers");
        let one = Request::get("/x?q=1&r=1")
            .header("a", "1")
            .body(())
            .unwrap();
        assert_eq!(backend(&t, one), "header");
        assert_eq!(backend(&t, get("/x?q=1")), "query");
        assert_eq!(backend(&t, get("/x?q=2")), "default-svc");
    }

    #[test]
    fn equal_precedence_keeps_route_then_rule_order() {
        let t = table(vec![
            route(
                "older",
                vec![
                    rule(vec![m(path("PathPrefix", "/"))], "first"),
                    rule(vec![], "second"),
                ],
            ),
            route(
                "newer",
                vec![rule(vec![m(path("PathPrefix", "/"))], "third")],
            ),
        ]);
        assert_eq!(backend(&t, get("/anything")), "first");
    }

    #[test]
    fn header_names_are_case_insensitive_and_values_can_be_regexes() {
        let t = table(vec![route(
            "r",
            vec![rule(
                vec![proto::HttpMatch {
                    headers: vec![
                        header("Exact", "X-User", "alice"),
                        header("RegularExpression", "x-Version", "v[0-9]+"),
                    ],
                    ..Default::default()
                }],
                "matched",
            )],
        )]);
        let req = |v: &str| {
            Request::get("/")
                .header("x-user", "alice")
                .header("X-VERSION", v)
                .body(())
                .unwrap()
        };
        assert_eq!(backend(&t, req("v12")), "matched");
        assert_eq!(backend(&t, req("v12-beta")), "default-svc");
    }

    #[test]
    fn a_rule_with_an_invalid_regex_is_skipped_and_the_others_still_route() {
        let t = table(vec![route(
            "r",
            vec![
                rule(vec![m(path("RegularExpression", "/(unclosed"))], "broken"),
                rule(vec![m(path("PathPrefix", "/"))], "fine"),
            ],
        )]);
        assert_eq!(backend(&t, get("/(unclosed")), "fine");
        assert_eq!(t.http.len(), 1);
    }

    #[test]
    fn rules_without_backends_use_the_default_and_zero_weights_get_nothing() {
        let mut empty = rule(vec![m(path("Exact", "/empty"))], "unused");
        empty.backends.clear();
        let mut zero = rule(vec![m(path("Exact", "/zero"))], "unused");
        zero.backends[0].weight = Some(0);
        let t = table(vec![route("r", vec![empty, zero])]);
        assert_eq!(backend(&t, get("/empty")), "default-svc");
        assert!(t.route(&get("/zero")).split.pick().is_none());
    }

    #[test]
    fn weighted_split_follows_weights_and_skips_zero() {
        let split = BackendSplit::new(&[
            proto::WeightedBackend {
                backend: "a".into(),
                weight: Some(3),
            },
            proto::WeightedBackend {
                backend: "b".into(),
                weight: None,
            },
            proto::WeightedBackend {
                backend: "z".into(),
                weight: Some(0),
            },
        ]);
        let mut a = 0;
        for _ in 0..4000 {
            match split.pick().map(|b| b.to_string()).as_deref() {
                Some("a") => a += 1,
                Some("b") => {}
                other => panic!("unexpected pick {other:?}"),
            }
        }
        // 3:1 -> 3000 expected; binomial sd ~27.
        assert!((2850..=3150).contains(&a), "a picked {a} times");
    }

    #[test]
    fn grpc_requests_match_service_and_method_by_precedence() {
        let grpc_rule = |service: &str, method: &str, backend: &str| proto::GrpcRouteRule {
            matches: vec![proto::GrpcMatch {
                r#type: String::new(),
                service: service.into(),
                method: method.into(),
                headers: vec![],
            }],
            backends: vec![proto::WeightedBackend {
                backend: backend.into(),
                weight: None,
            }],
            ..Default::default()
        };
        let t = RouteTable::compile(
            &proto::RouteTable {
                grpc: vec![proto::GrpcRoute {
                    name: "g".into(),
                    rules: vec![
                        grpc_rule("", "Get", "any-get"),
                        grpc_rule("shop.Cart", "", "cart"),
                        grpc_rule("shop.Cart", "Get", "cart-get"),
                    ],
                }],
                http: vec![route("h", vec![rule(vec![], "http")])],
                default_backend: "default-svc".into(),
            },
            "default-svc",
        );
        let call = |path: &str| {
            Request::post(path)
                .header("content-type", "application/grpc+proto")
                .body(())
                .unwrap()
        };
        assert_eq!(backend(&t, call("/shop.Cart/Get")), "cart-get");
        assert_eq!(backend(&t, call("/shop.Cart/Put")), "cart");
        assert_eq!(backend(&t, call("/shop.Other/Get")), "any-get");
        assert_eq!(backend(&t, call("/shop.Other/Put")), "http");
        // Not gRPC: GRPCRoutes do not apply.
        assert_eq!(
            backend(&t, Request::post("/shop.Cart/Get").body(()).unwrap()),
            "http"
        );
    }
}
