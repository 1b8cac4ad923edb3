//! HTTPRoute matches: path (Exact, PathPrefix by whole segments, full-match
//! RegularExpression), headers, query params and method.

use http::{Method, Request};
use plexus_api::v1 as proto;
use regex::Regex;

use super::filters::{Filters, Mirror, Redirect, Rewrite};
use super::{HeaderMatcher, Matcher, ProtoRule, ValueMatcher, compile_headers, full_match_regex};

#[derive(Debug)]
pub struct HttpMatcher {
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
struct QueryMatcher {
    name: String,
    value: ValueMatcher,
}

impl Matcher for HttpMatcher {
    /// Path kind (exact > regex > prefix), path length, method, headers, query params.
    type Precedence = (u8, usize, bool, usize, usize);

    fn precedence(&self) -> Self::Precedence {
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
            && self.headers.iter().all(|h| h.matches(request.headers()))
            && (self.query.is_empty() || self.query_matches(request.uri().query().unwrap_or("")))
    }
}

impl HttpMatcher {
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

impl ProtoRule for proto::HttpRouteRule {
    type Matcher = HttpMatcher;

    fn matchers(&self, field: &str) -> Result<Vec<HttpMatcher>, String> {
        if self.matches.is_empty() {
            // No match: every request (a PathPrefix "/").
            return Ok(vec![HttpMatcher {
                path: PathMatcher::Prefix(String::new()),
                headers: Vec::new(),
                query: Vec::new(),
                method: None,
            }]);
        }
        self.matches
            .iter()
            .enumerate()
            .map(|(i, m)| compile_match(m, &format!("{field}.matches[{i}]")))
            .collect()
    }

    fn backends(&self) -> &[proto::WeightedBackend] {
        &self.backends
    }

    fn timeouts(&self) -> Option<&proto::Timeouts> {
        self.timeouts.as_ref()
    }

    fn retry(&self) -> Option<&proto::RetryPolicy> {
        self.retry.as_ref()
    }

    fn fault(&self) -> Option<&proto::Fault> {
        self.fault.as_ref()
    }

    fn filters(&self, field: &str) -> Result<Option<Filters>, String> {
        let Some(filters) = &self.filters else {
            return Ok(None);
        };
        let redirect = filters
            .request_redirect
            .as_ref()
            .map(|r| {
                Redirect::compile(
                    r,
                    one_path_prefix(self),
                    &format!("{field}.request_redirect"),
                )
            })
            .transpose()?;
        let rewrite = filters
            .url_rewrite
            .as_ref()
            .map(|r| Rewrite::compile(r, one_path_prefix(self), &format!("{field}.url_rewrite")))
            .transpose()?;
        if redirect.is_some() && rewrite.is_some() {
            return Err(format!(
                "{field}.url_rewrite: a rule that redirects cannot also rewrite"
            ));
        }
        let mut mirrors = Vec::new();
        for (i, m) in filters.request_mirrors.iter().enumerate() {
            mirrors.extend(Mirror::compile(
                m,
                &format!("{field}.request_mirrors[{i}]"),
            )?);
        }
        Ok(Some(Filters {
            redirect,
            rewrite,
            mirrors,
            ..Filters::headers(
                filters.request_header_modifier.as_ref(),
                filters.response_header_modifier.as_ref(),
                field,
            )?
        }))
    }
}

/// The prefix of the rule's one PathPrefix match ("/" without matches),
/// which a ReplacePrefixMatch redirect replaces; `None` otherwise.
fn one_path_prefix(rule: &proto::HttpRouteRule) -> Option<&str> {
    match rule.matches.as_slice() {
        [] => Some("/"),
        [m] => match &m.path {
            None => Some("/"),
            Some(p) if matches!(p.r#type.as_str(), "" | "PathPrefix") => Some(&p.value),
            Some(_) => None,
        },
        _ => None,
    }
}

fn compile_match(m: &proto::HttpMatch, field: &str) -> Result<HttpMatcher, String> {
    let default_path = proto::PathMatch::default();
    let path = m.path.as_ref().unwrap_or(&default_path);
    let path_field = format!("{field}.path");
    let path = match path.r#type.as_str() {
        "Exact" => PathMatcher::Exact(path.value.clone()),
        "" | "PathPrefix" => PathMatcher::Prefix(path.value.trim_end_matches('/').to_owned()),
        "RegularExpression" => PathMatcher::Regex(full_match_regex(&path.value, &path_field)?),
        other => {
            return Err(format!(
                "{path_field}.type: unknown path match type {other:?} \
                 (expected Exact, PathPrefix or RegularExpression)"
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

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
}
