//! Choosing a route rule for a request, with Gateway API HTTPRoute / GRPCRoute
//! semantics. The proto's route table is compiled once per update (regexes
//! included) into candidates sorted by the spec's precedence; a request takes
//! the first candidate that matches, else the table's default backend.
//!
//! HTTP precedence, across all rules of all routes: exact path, then regex
//! path, then the longest prefix; then a method match; then most header
//! matches; then most query param matches (`http_match`). gRPC: longest exact
//! service, longest exact method, most header matches (`grpc_match`). Ties keep
//! the controller's order of routes, then rule order.

mod filters;
mod grpc_match;
mod http_match;

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, Request};
use plexus_api::v1 as proto;
use regex::Regex;

pub use self::filters::{BackendFilters, Filters, Mirror};
use super::RouteLabel;
use super::fault::Fault;
use super::retry::RetryPolicy;
use super::split::BackendSplit;

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
    /// Boxed: a rule without filters pays one pointer and one branch.
    pub filters: Option<Box<Filters>>,
    /// Faults injected for resilience testing; boxed like `filters`.
    pub fault: Option<Box<Fault>>,
}

/// A compiled route table.
#[derive(Debug)]
pub struct RouteTable {
    http: Vec<Candidate<http_match::HttpMatcher>>,
    grpc: Vec<Candidate<grpc_match::GrpcMatcher>>,
    default: Arc<Rule>,
}

#[derive(Debug)]
struct Candidate<M> {
    matcher: M,
    rule: Arc<Rule>,
}

/// What HTTP and gRPC rules of the proto have in common.
trait ProtoRule {
    type Matcher: Matcher;
    /// One matcher per match of the rule; an error names the field.
    fn matchers(&self, field: &str) -> Result<Vec<Self::Matcher>, String>;
    fn backends(&self) -> &[proto::WeightedBackend];
    fn timeouts(&self) -> Option<&proto::Timeouts>;
    fn retry(&self) -> Option<&proto::RetryPolicy>;
    fn fault(&self) -> Option<&proto::Fault>;
    /// The rule's filters, `None` when it has none; an error names the field.
    fn filters(&self, field: &str) -> Result<Option<Filters>, String>;
}

trait Matcher {
    /// Larger is more specific.
    type Precedence: Ord;
    fn precedence(&self) -> Self::Precedence;
    fn matches<B>(&self, request: &Request<B>) -> bool;
}

impl RouteTable {
    /// Compiles `table`; a rule that cannot be compiled is skipped with an
    /// error naming the route and field (a controller's update is never
    /// refused whole for one bad rule). `default_backend` serves requests
    /// that match nothing.
    pub fn compile(table: &proto::RouteTable, default_backend: &str) -> RouteTable {
        let (compiled, problems) = Self::compile_checked(table, default_backend);
        for problem in problems {
            tracing::error!(route = %problem.route, error = %problem.message, "route rule skipped");
        }
        compiled
    }

    /// Every rule of `table` that cannot be compiled, each naming its field
    /// (`routes.http[0].rules[1].matches[0].path.type: …`): what a static
    /// file is checked against before the proxy starts.
    pub fn check(table: &proto::RouteTable) -> Vec<String> {
        let (_, problems) = Self::compile_checked(table, "");
        problems.into_iter().map(|p| p.message).collect()
    }

    fn compile_checked(
        table: &proto::RouteTable,
        default_backend: &str,
    ) -> (RouteTable, Vec<Problem>) {
        let default = Arc::new(Rule {
            label: RouteLabel(Arc::from("default")),
            split: BackendSplit::single(default_backend),
            request_timeout: None,
            try_timeout: None,
            retry: RetryPolicy::none(),
            filters: None,
            fault: None,
        });
        let http = table
            .http
            .iter()
            .map(|r| (r.name.as_str(), r.rules.as_slice()));
        let grpc = table
            .grpc
            .iter()
            .map(|r| (r.name.as_str(), r.rules.as_slice()));
        let mut problems = Vec::new();
        let compiled = RouteTable {
            http: candidates("http", http, default_backend, &mut problems),
            grpc: candidates("grpc", grpc, default_backend, &mut problems),
            default,
        };
        (compiled, problems)
    }

    /// The rule for `request`: gRPC requests try GRPCRoutes first, then
    /// HTTPRoutes; nothing matching means the default backend.
    pub fn route<B>(&self, request: &Request<B>) -> &Arc<Rule> {
        if is_grpc(request.headers())
            && let Some(rule) = first_match(&self.grpc, request)
        {
            return rule;
        }
        first_match(&self.http, request).unwrap_or(&self.default)
    }
}

/// A rule that cannot be compiled: its route's name and what is wrong, the
/// field named by its place in the table.
struct Problem {
    route: String,
    message: String,
}

/// The compiled rules of `routes`, most specific first; equal precedence
/// keeps route order, then rule order (the sort is stable). Rules that
/// cannot be compiled go to `problems`.
fn candidates<'a, R: ProtoRule + 'a>(
    kind: &str,
    routes: impl Iterator<Item = (&'a str, &'a [R])>,
    default_backend: &str,
    problems: &mut Vec<Problem>,
) -> Vec<Candidate<R::Matcher>> {
    let mut candidates = Vec::new();
    for (i, (name, rules)) in routes.enumerate() {
        for (r, rule) in rules.iter().enumerate() {
            let field = format!("routes.{kind}[{i}].rules[{r}]");
            let compiled = rule.matchers(&field).and_then(|m| {
                let split = if rule.backends().is_empty() {
                    // A rule naming no backend sends to the target itself.
                    BackendSplit::single(default_backend)
                } else {
                    BackendSplit::compile(rule.backends(), &format!("{field}.backends"))?
                };
                let filters = rule.filters(&format!("{field}.filters"))?;
                let filters = Filters {
                    per_backend: split.has_filters(),
                    ..filters.unwrap_or_default()
                };
                let fault = Fault::compile(rule.fault(), &format!("{field}.fault"))?;
                Ok((m, split, filters.active(), fault))
            });
            match compiled {
                Ok((matchers, split, filters, fault)) => {
                    let compiled = Arc::new(Rule::new(name, rule, split, filters, fault));
                    candidates.extend(matchers.into_iter().map(|matcher| Candidate {
                        matcher,
                        rule: compiled.clone(),
                    }));
                }
                Err(message) => problems.push(Problem {
                    route: name.to_owned(),
                    message,
                }),
            }
        }
    }
    candidates.sort_by_key(|c| Reverse(c.matcher.precedence()));
    candidates
}

fn first_match<'a, M: Matcher, B>(
    candidates: &'a [Candidate<M>],
    request: &Request<B>,
) -> Option<&'a Arc<Rule>> {
    candidates
        .iter()
        .find(|c| c.matcher.matches(request))
        .map(|c| &c.rule)
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
        rule: &impl ProtoRule,
        split: BackendSplit,
        filters: Option<Filters>,
        fault: Option<Fault>,
    ) -> Rule {
        let millis = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        let timeouts = rule.timeouts();
        Rule {
            label: RouteLabel(Arc::from(route)),
            split,
            request_timeout: timeouts.and_then(|t| millis(t.request_ms)),
            try_timeout: timeouts.and_then(|t| millis(t.backend_request_ms)),
            retry: RetryPolicy::from_proto(rule.retry()),
            filters: filters.map(Box::new),
            fault: fault.map(Box::new),
        }
    }
}

// ===== matchers shared by HTTP and gRPC =====

#[derive(Debug)]
struct HeaderMatcher {
    name: HeaderName,
    value: ValueMatcher,
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

impl HeaderMatcher {
    /// Any value of a repeated header may match.
    fn matches(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(&self.name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| self.value.matches(v)))
    }
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

impl ValueMatcher {
    fn compile(kind: &str, value: &str, field: &str) -> Result<ValueMatcher, String> {
        match kind {
            "" | "Exact" => Ok(ValueMatcher::Exact(value.to_owned())),
            "RegularExpression" => full_match_regex(value, field).map(ValueMatcher::Regex),
            other => Err(format!(
                "{field}.type: unknown match type {other:?} (expected Exact or RegularExpression)"
            )),
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

/// Helpers shared by the route tests.
#[cfg(test)]
mod test_support {
    use super::*;

    pub fn path(kind: &str, value: &str) -> Option<proto::PathMatch> {
        Some(proto::PathMatch {
            r#type: kind.into(),
            value: value.into(),
        })
    }

    pub fn header(kind: &str, name: &str, value: &str) -> proto::HeaderMatch {
        proto::HeaderMatch {
            r#type: kind.into(),
            name: name.into(),
            value: value.into(),
        }
    }

    pub fn weighted(backend: &str) -> Vec<proto::WeightedBackend> {
        vec![proto::WeightedBackend {
            backend: backend.into(),
            ..Default::default()
        }]
    }

    pub fn rule(matches: Vec<proto::HttpMatch>, backend: &str) -> proto::HttpRouteRule {
        proto::HttpRouteRule {
            matches,
            backends: weighted(backend),
            ..Default::default()
        }
    }

    pub fn route(name: &str, rules: Vec<proto::HttpRouteRule>) -> proto::HttpRoute {
        proto::HttpRoute {
            name: name.into(),
            rules,
        }
    }

    pub fn table(http: Vec<proto::HttpRoute>) -> RouteTable {
        RouteTable::compile(
            &proto::RouteTable {
                http,
                ..Default::default()
            },
            "default-svc",
        )
    }

    /// The backend a request is routed to.
    pub fn backend(t: &RouteTable, request: Request<()>) -> String {
        t.route(&request)
            .split
            .pick()
            .map(|b| b.name.to_string())
            .unwrap_or_default()
    }

    pub fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    pub fn m(path: Option<proto::PathMatch>) -> proto::HttpMatch {
        proto::HttpMatch {
            path,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

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
    fn unknown_match_types_and_bad_header_names_skip_the_rule() {
        let mut bad_header = rule(vec![m(None)], "bad-header");
        bad_header.matches[0].headers = vec![header("Exact", "bad header", "x")];
        let t = table(vec![route(
            "r",
            vec![
                rule(vec![m(path("Glob", "/*"))], "glob"),
                bad_header,
                rule(vec![], "fine"),
            ],
        )]);
        assert_eq!(t.http.len(), 1);
        assert_eq!(backend(&t, get("/x")), "fine");
    }

    #[test]
    fn check_names_every_bad_rule_by_its_place_in_the_table() {
        let mut bad_header = rule(vec![m(None)], "bad-header");
        bad_header.matches[0].headers = vec![header("Exact", "bad header", "x")];
        let table = proto::RouteTable {
            http: vec![
                route("shop/fine", vec![rule(vec![], "fine")]),
                route(
                    "shop/broken",
                    vec![
                        rule(vec![m(path("PathPrefix", "/"))], "fine"),
                        rule(vec![m(path("Prefix", "/api"))], "prefix"),
                        rule(vec![m(path("RegularExpression", "/(unclosed"))], "regex"),
                        bad_header,
                    ],
                ),
            ],
            ..Default::default()
        };
        let problems = RouteTable::check(&table);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0].starts_with("routes.http[1].rules[1].matches[0].path.type: ")
                && problems[0].contains("\"Prefix\"")
                && problems[0].contains("PathPrefix"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].starts_with("routes.http[1].rules[2].matches[0].path.value: "),
            "{}",
            problems[1]
        );
        assert!(
            problems[2].starts_with("routes.http[1].rules[3].matches[0].headers[0].name: "),
            "{}",
            problems[2]
        );
        assert!(RouteTable::check(&proto::RouteTable::default()).is_empty());
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
        assert_eq!(t.route(&get("/other")).label.0.as_ref(), "default");
    }

    #[test]
    fn timeouts_and_retries_come_from_the_rule() {
        let mut timed = rule(vec![], "b");
        timed.timeouts = Some(proto::Timeouts {
            request_ms: 1_500,
            backend_request_ms: 0,
        });
        timed.retry = Some(proto::RetryPolicy {
            attempts: 3,
            ..Default::default()
        });
        let t = table(vec![route("r", vec![timed])]);
        let rule = t.route(&get("/"));
        assert_eq!(rule.request_timeout, Some(Duration::from_millis(1_500)));
        assert_eq!(rule.try_timeout, None);
        assert_eq!(rule.retry.attempts(), 3);
    }
}

/// Properties of route compilation: any match values compile or are
/// refused with a named field, never a panic, and what compiles routes any
/// request; an Exact path matches that path alone.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::test_support::*;
    use super::*;

    fn kind() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec!["", "Exact", "PathPrefix", "RegularExpression"])
                .prop_map(str::to_owned),
            "[A-Za-z]{0,8}",
        ]
    }

    /// Paths, regexes (valid or not), header names and values alike.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "(/[a-z0-9.~-]{0,6}){0,4}/?",
            "[\\[\\](){}|*+?.^$\\\\a-z0-9/-]{0,16}",
            "\\PC{0,16}",
        ]
    }

    fn weight() -> impl Strategy<Value = Option<u32>> {
        prop_oneof![
            Just(None),
            Just(Some(0)),
            Just(Some(u32::MAX)),
            any::<u32>().prop_map(Some)
        ]
    }

    fn header_match() -> impl Strategy<Value = proto::HeaderMatch> {
        (kind(), text(), text()).prop_map(|(kind, name, value)| header(&kind, &name, &value))
    }

    fn http_match() -> impl Strategy<Value = proto::HttpMatch> {
        (
            prop::option::of((kind(), text())),
            prop::collection::vec(header_match(), 0..3),
            prop::collection::vec(header_match(), 0..3),
            prop_oneof![Just(String::new()), "[A-Z]{1,7}", "\\PC{0,8}"],
        )
            .prop_map(|(path, headers, query_params, method)| proto::HttpMatch {
                path: path.and_then(|(kind, value)| super::test_support::path(&kind, &value)),
                headers,
                query_params,
                method,
            })
    }

    fn backends() -> impl Strategy<Value = Vec<proto::WeightedBackend>> {
        let filters = (
            prop::option::of(header_modifier()),
            prop::option::of(header_modifier()),
        )
            .prop_map(|(request, response)| proto::BackendFilters {
                request_header_modifier: request,
                response_header_modifier: response,
            });
        let backend = ("[a-c]{0,1}", weight(), prop::option::of(filters)).prop_map(
            |(backend, weight, filters)| proto::WeightedBackend {
                backend,
                weight,
                filters,
                ..Default::default()
            },
        );
        prop::collection::vec(backend, 0..4)
    }

    fn timeouts() -> impl Strategy<Value = Option<proto::Timeouts>> {
        prop::option::of((any::<u64>(), any::<u64>()).prop_map(
            |(request_ms, backend_request_ms)| proto::Timeouts {
                request_ms,
                backend_request_ms,
            },
        ))
    }

    fn header_modifier() -> impl Strategy<Value = proto::HeaderModifier> {
        let value =
            || (text(), text()).prop_map(|(name, value)| proto::HeaderValue { name, value });
        (
            prop::collection::vec(value(), 0..2),
            prop::collection::vec(value(), 0..2),
            prop::collection::vec(text(), 0..2),
        )
            .prop_map(|(set, add, remove)| proto::HeaderModifier { set, add, remove })
    }

    fn path_modifier() -> impl Strategy<Value = proto::PathModifier> {
        (
            prop::sample::select(vec!["ReplaceFullPath", "ReplacePrefixMatch", "Other"]),
            text(),
        )
            .prop_map(|(kind, value)| proto::PathModifier {
                r#type: kind.into(),
                value,
            })
    }

    fn http_filters() -> impl Strategy<Value = proto::HttpFilters> {
        let path = path_modifier();
        let rewrite = (text(), prop::option::of(path_modifier()))
            .prop_map(|(hostname, path)| proto::UrlRewrite { hostname, path });
        let mirror = (
            "[a-c]{0,1}",
            prop::option::of((
                any::<u32>(),
                prop_oneof![Just(0u32), Just(100), any::<u32>()],
            )),
            prop_oneof![
                Just(String::new()),
                Just("BackendNotFound: gone".to_owned())
            ],
        )
            .prop_map(|(backend, fraction, unresolved)| proto::RequestMirror {
                backend,
                unresolved,
                fraction: fraction.map(|(numerator, denominator)| proto::Fraction {
                    numerator,
                    denominator,
                }),
            });
        let redirect = (
            prop::sample::select(vec!["", "http", "https", "ftp"]),
            text(),
            prop::option::of(path),
            prop::option::of(any::<u32>()),
            prop::sample::select(vec![0u32, 301, 302, 307]),
        )
            .prop_map(|(scheme, hostname, path, port, status_code)| {
                proto::RequestRedirect {
                    scheme: scheme.into(),
                    hostname,
                    path,
                    port,
                    status_code,
                }
            });
        (
            prop::option::of(header_modifier()),
            prop::option::of(header_modifier()),
            prop::option::of(redirect),
            prop::option::of(rewrite),
            prop::collection::vec(mirror, 0..2),
        )
            .prop_map(|(request, response, redirect, rewrite, mirrors)| {
                proto::HttpFilters {
                    request_header_modifier: request,
                    response_header_modifier: response,
                    request_redirect: redirect,
                    url_rewrite: rewrite,
                    request_mirrors: mirrors,
                }
            })
    }

    fn retry() -> impl Strategy<Value = Option<proto::RetryPolicy>> {
        let policy = (
            any::<u32>(),
            prop::collection::vec(any::<u32>(), 0..3),
            prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
            prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        )
            .prop_map(|(attempts, codes, backoff_base_ms, backoff_max_ms)| {
                proto::RetryPolicy {
                    attempts,
                    grpc_codes: codes.clone(),
                    codes,
                    backoff_base_ms,
                    backoff_max_ms,
                }
            });
        prop::option::of(policy)
    }

    /// Any numbers, NaN and out-of-range shares included.
    fn fault() -> impl Strategy<Value = proto::Fault> {
        let share = prop_oneof![Just(0.0), Just(100.0), Just(f64::NAN), any::<f64>()];
        (
            any::<u64>(),
            share.clone(),
            prop_oneof![Just(503u32), any::<u32>()],
            0u32..20,
            share,
        )
            .prop_map(
                |(delay_ms, delay_percent, abort_status, abort_grpc_status, abort_percent)| {
                    proto::Fault {
                        delay_ms,
                        delay_percent,
                        abort_status,
                        abort_grpc_status,
                        abort_percent,
                    }
                },
            )
    }

    fn proto_table() -> impl Strategy<Value = proto::RouteTable> {
        let http_rule = (
            prop::collection::vec(http_match(), 0..3),
            backends(),
            timeouts(),
            retry(),
            prop::option::of(http_filters()),
            prop::option::of(fault()),
        )
            .prop_map(|(matches, backends, timeouts, retry, filters, fault)| {
                proto::HttpRouteRule {
                    matches,
                    backends,
                    timeouts,
                    retry,
                    filters,
                    fault,
                }
            });
        let grpc_match = (
            kind(),
            text(),
            text(),
            prop::collection::vec(header_match(), 0..2),
        )
            .prop_map(|(r#type, service, method, headers)| proto::GrpcMatch {
                r#type,
                service,
                method,
                headers,
            });
        let grpc_rule = (
            prop::collection::vec(grpc_match, 0..3),
            backends(),
            timeouts(),
            retry(),
        )
            .prop_map(
                |(matches, backends, timeouts, retry)| proto::GrpcRouteRule {
                    matches,
                    backends,
                    timeouts,
                    retry,
                    filters: None,
                    fault: None,
                },
            );
        (
            prop::collection::vec(prop::collection::vec(http_rule, 0..3), 0..3),
            prop::collection::vec(prop::collection::vec(grpc_rule, 0..3), 0..2),
        )
            .prop_map(|(http, grpc)| proto::RouteTable {
                http: http.into_iter().map(|rules| route("r", rules)).collect(),
                grpc: grpc
                    .into_iter()
                    .map(|rules| proto::GrpcRoute {
                        name: "g".into(),
                        rules,
                    })
                    .collect(),
                default_backend: String::new(),
            })
    }

    /// A request with a generated path, method and one header.
    fn request() -> impl Strategy<Value = Request<()>> {
        (
            "(/[a-zA-Z0-9.~_-]{0,6}){0,4}(\\?[a-z=&]{0,8})?",
            prop::sample::select(vec!["GET", "POST", "PUT"]),
            prop::sample::select(vec!["application/grpc", "text/plain"]),
            "[a-z-]{1,8}",
            "[ -~]{0,8}",
        )
            .prop_map(|(path, method, content_type, name, value)| {
                let path = if path.is_empty() || path.starts_with('?') {
                    format!("/{path}")
                } else {
                    path
                };
                let mut request = Request::builder()
                    .method(method)
                    .uri(path)
                    .body(())
                    .expect("a generated request");
                request
                    .headers_mut()
                    .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
                if let (Ok(name), Ok(value)) = (
                    HeaderName::try_from(name),
                    http::HeaderValue::try_from(value),
                ) {
                    request.headers_mut().insert(name, value);
                }
                request
            })
    }

    proptest! {
        #![proptest_config(plexus_core::property::config())]

        /// Compiling skips each bad rule with a problem that names its field;
        /// what compiles routes any request to a rule and picks a backend or none.
        #[test]
        fn any_table_compiles_or_names_its_problems(table in proto_table(), request in request()) {
            for problem in RouteTable::check(&table) {
                prop_assert!(
                    problem.starts_with("routes.http[") || problem.starts_with("routes.grpc["),
                    "{:?} names no field", problem
                );
            }
            let compiled = RouteTable::compile(&table, "default-svc");
            let rule = compiled.route(&request);
            let _ = rule.split.pick();
            if let Some(filters) = &rule.filters {
                let mut headers = request.headers().clone();
                filters.request_headers.apply(&mut headers);
                if let Some(rewrite) = &filters.rewrite {
                    let mut rewritten = Request::builder()
                        .uri(request.uri().clone())
                        .body(())
                        .expect("a copy of a request");
                    rewrite.apply(&mut rewritten);
                    prop_assert!(rewritten.uri().path().starts_with('/'));
                }
                // A compiled fraction never draws from an empty range.
                for mirror in &filters.mirrors {
                    let _ = mirror.fires();
                }
                if let Some(redirect) = &filters.redirect {
                    let response = redirect.respond(&request);
                    prop_assert!(response.status().is_redirection());
                }
            }
        }

        #[test]
        fn an_exact_path_matches_exactly_that_path(
            path in "(/[a-zA-Z0-9.~_-]{1,6}){1,4}",
            suffix in prop::sample::select(vec!["/", "x", "/x"]),
        ) {
            let t = table(vec![route("exact", vec![rule(vec![m(super::test_support::path("Exact", &path))], "exact")])]);
            prop_assert_eq!(backend(&t, get(&path)), "exact");
            prop_assert_eq!(backend(&t, get(&format!("{path}{suffix}"))), "default-svc");
            prop_assert_eq!(backend(&t, get(&format!("{path}?q=1"))), "exact");
        }
    }
}
