//! A rule's Gateway API filters, compiled once per update: header
//! modifications of the request (before it is forwarded) and of the backend's
//! response, a redirect the proxy answers itself, a rewrite of the host and
//! path, mirrors, and the header modifications of single backends. A rule
//! without any carries none (`Rule::filters` is `None`), so it pays one
//! branch per request.

use std::str::FromStr;
use std::sync::Arc;

use http::header::{HOST, LOCATION};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use plexus_api::v1 as proto;
use rand::Rng;

use crate::body::{self, Body};

/// What a rule does to its requests and responses besides routing them.
#[derive(Debug, Default)]
pub struct Filters {
    pub request_headers: HeaderModifier,
    pub response_headers: HeaderModifier,
    /// Set: the request is answered with a redirect and goes nowhere.
    pub redirect: Option<Redirect>,
    /// Set: the request is forwarded with its host and/or path rewritten.
    pub rewrite: Option<Rewrite>,
    /// Backends that get a copy of a share of the requests.
    pub mirrors: Vec<Mirror>,
    /// Some backend of the rule's split has filters of its own.
    pub per_backend: bool,
}

impl Filters {
    /// The header modifiers compiled, nothing else set.
    pub fn headers(
        request_headers: Option<&proto::HeaderModifier>,
        response_headers: Option<&proto::HeaderModifier>,
        field: &str,
    ) -> Result<Filters, String> {
        Ok(Filters {
            request_headers: HeaderModifier::compile(
                request_headers,
                &format!("{field}.request_header_modifier"),
            )?,
            response_headers: HeaderModifier::compile(
                response_headers,
                &format!("{field}.response_header_modifier"),
            )?,
            ..Filters::default()
        })
    }

    /// `None` when nothing would change a request or response.
    pub fn active(self) -> Option<Filters> {
        let idle = self.request_headers.is_empty()
            && self.response_headers.is_empty()
            && self.redirect.is_none()
            && self.rewrite.is_none()
            && self.mirrors.is_empty()
            && !self.per_backend;
        (!idle).then_some(self)
    }
}

/// A backendRef's own filters, applied after the rule's to the requests sent
/// to that backend and to their responses.
#[derive(Debug)]
pub struct BackendFilters {
    pub request_headers: HeaderModifier,
    pub response_headers: HeaderModifier,
}

impl BackendFilters {
    /// `None` when nothing would change a request or response.
    pub fn compile(
        proto: Option<&proto::BackendFilters>,
        field: &str,
    ) -> Result<Option<Box<BackendFilters>>, String> {
        let Some(proto) = proto else {
            return Ok(None);
        };
        let filters = BackendFilters {
            request_headers: HeaderModifier::compile(
                proto.request_header_modifier.as_ref(),
                &format!("{field}.request_header_modifier"),
            )?,
            response_headers: HeaderModifier::compile(
                proto.response_header_modifier.as_ref(),
                &format!("{field}.response_header_modifier"),
            )?,
        };
        let idle = filters.request_headers.is_empty() && filters.response_headers.is_empty();
        Ok((!idle).then(|| Box::new(filters)))
    }
}

/// Gateway API's URL rewrite: the request goes on with its host and/or path
/// replaced.
#[derive(Debug)]
pub struct Rewrite {
    /// The new `Host`, and the same as the URI's authority when it has one.
    hostname: Option<(HeaderValue, Authority)>,
    path: Option<PathRewrite>,
}

impl Rewrite {
    /// `matched_prefix` as for [`Redirect::compile`].
    pub fn compile(
        proto: &proto::UrlRewrite,
        matched_prefix: Option<&str>,
        field: &str,
    ) -> Result<Rewrite, String> {
        let hostname = match proto.hostname.as_str() {
            "" => None,
            host => {
                let invalid = || format!("{field}.hostname: invalid host name {host:?}");
                let authority = host_alone(host).ok_or_else(invalid)?;
                Some((
                    HeaderValue::from_str(host).map_err(|_| invalid())?,
                    authority,
                ))
            }
        };
        let path = proto
            .path
            .as_ref()
            .map(|p| PathRewrite::compile(p, matched_prefix, &format!("{field}.path")))
            .transpose()?;
        Ok(Rewrite { hostname, path })
    }

    pub fn apply<B>(&self, request: &mut Request<B>) {
        if let Some((host, authority)) = &self.hostname {
            let in_uri = request.uri().authority().is_some();
            // An HTTP/2 request names its host in the URI alone (`:authority`).
            if !in_uri || request.headers().contains_key(HOST) {
                request.headers_mut().insert(HOST, host.clone());
            }
            if in_uri {
                let mut parts = request.uri().clone().into_parts();
                parts.authority = Some(authority.clone());
                if let Ok(uri) = Uri::from_parts(parts) {
                    *request.uri_mut() = uri;
                }
            }
        }
        if let Some(rewrite) = &self.path {
            let uri = request.uri();
            let path = rewrite.apply(uri.path());
            let path_and_query = match uri.query() {
                Some(query) => PathAndQuery::from_str(&format!("{path}?{query}")),
                None => PathAndQuery::from_str(&path),
            };
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = path_and_query.ok();
            // Compiled paths are valid, so the URI is; otherwise it stays.
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
}

/// Gateway API's request mirror: a share of the requests is copied to
/// `backend` (the copy is sent by `logical::mirror`).
#[derive(Debug)]
pub struct Mirror {
    /// A key of the target's backends.
    pub backend: Arc<str>,
    numerator: u32,
    denominator: u32,
}

impl Mirror {
    /// `None` for a mirror whose backend does not resolve: it mirrors nothing.
    pub fn compile(proto: &proto::RequestMirror, field: &str) -> Result<Option<Mirror>, String> {
        let (numerator, denominator) = match &proto.fraction {
            None => (1, 1),
            Some(f) if f.denominator > 0 && f.numerator <= f.denominator => {
                (f.numerator, f.denominator)
            }
            Some(f) => {
                return Err(format!(
                    "{field}.fraction: {}/{} is not a fraction (0 <= numerator <= denominator, denominator > 0)",
                    f.numerator, f.denominator
                ));
            }
        };
        if !proto.unresolved.is_empty() {
            return Ok(None);
        }
        Ok(Some(Mirror {
            backend: Arc::from(proto.backend.as_str()),
            numerator,
            denominator,
        }))
    }

    /// Whether this request is copied: drawn at random within the fraction.
    pub fn fires(&self) -> bool {
        self.numerator == self.denominator
            || (self.numerator > 0
                && rand::rng().random_range(0..self.denominator) < self.numerator)
    }
}

/// Gateway API's header filter, applied as set, add, remove.
#[derive(Debug, Default)]
pub struct HeaderModifier {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderModifier {
    fn compile(proto: Option<&proto::HeaderModifier>, field: &str) -> Result<Self, String> {
        let Some(proto) = proto else {
            return Ok(HeaderModifier::default());
        };
        let values = |list: &[proto::HeaderValue], kind: &str| {
            list.iter()
                .enumerate()
                .map(|(i, h)| {
                    let field = format!("{field}.{kind}[{i}]");
                    let value = HeaderValue::from_str(&h.value).map_err(|_| {
                        format!("{field}.value: invalid header value {:?}", h.value)
                    })?;
                    Ok((header_name(&h.name, &format!("{field}.name"))?, value))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok(HeaderModifier {
            set: values(&proto.set, "set")?,
            add: values(&proto.add, "add")?,
            remove: proto
                .remove
                .iter()
                .enumerate()
                .map(|(i, name)| header_name(name, &format!("{field}.remove[{i}]")))
                .collect::<Result<_, _>>()?,
        })
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name, value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name, value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// Parsing lowercases: header names are case-insensitive.
fn header_name(name: &str, field: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{field}: invalid header name {name:?}"))
}

/// `host` as an authority when it is a host alone: no port, no user info.
fn host_alone(host: &str) -> Option<Authority> {
    host.parse::<Authority>()
        .ok()
        .filter(|a| a.port().is_none() && a.host() == host)
}

/// Gateway API's request redirect: the `Location` is the request's URL with
/// the filter's parts replaced.
#[derive(Debug)]
pub struct Redirect {
    scheme: Option<&'static str>,
    hostname: Option<String>,
    path: Option<PathRewrite>,
    port: Option<u16>,
    status: StatusCode,
}

#[derive(Debug)]
enum PathRewrite {
    Full(String),
    /// The rule's matched prefix and what replaces it, both without a
    /// trailing '/'.
    Prefix {
        prefix: String,
        replacement: String,
    },
}

impl Redirect {
    /// `matched_prefix`: the rule's one PathPrefix match (`None` when the rule
    /// has another kind or several matches), which ReplacePrefixMatch needs.
    pub fn compile(
        proto: &proto::RequestRedirect,
        matched_prefix: Option<&str>,
        field: &str,
    ) -> Result<Redirect, String> {
        let scheme = match proto.scheme.as_str() {
            "" => None,
            "http" => Some("http"),
            "https" => Some("https"),
            other => {
                return Err(format!(
                    "{field}.scheme: unknown scheme {other:?} (expected http or https)"
                ));
            }
        };
        let hostname = match proto.hostname.as_str() {
            "" => None,
            host => {
                if host_alone(host).is_none() {
                    return Err(format!("{field}.hostname: invalid host name {host:?}"));
                }
                Some(host.to_owned())
            }
        };
        let port = proto
            .port
            .map(|p| {
                u16::try_from(p)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{field}.port: {p} is not a port number"))
            })
            .transpose()?;
        let status = match proto.status_code {
            0 | 302 => StatusCode::FOUND,
            301 => StatusCode::MOVED_PERMANENTLY,
            other => {
                return Err(format!(
                    "{field}.status_code: {other} is not supported (301 or 302)"
                ));
            }
        };
        let path = proto
            .path
            .as_ref()
            .map(|p| PathRewrite::compile(p, matched_prefix, &format!("{field}.path")))
            .transpose()?;
        Ok(Redirect {
            scheme,
            hostname,
            path,
            port,
            status,
        })
    }

    /// The redirect for `request`, with an empty body.
    pub fn respond<B>(&self, request: &Request<B>) -> Response<Body> {
        let mut response = Response::new(body::empty());
        *response.status_mut() = self.status;
        if let Ok(location) = HeaderValue::try_from(self.location(request)) {
            response.headers_mut().insert(LOCATION, location);
        }
        response
    }

    fn location<B>(&self, request: &Request<B>) -> String {
        let uri = request.uri();
        let request_scheme = uri.scheme_str().unwrap_or("http");
        let authority = uri.authority().cloned().or_else(|| {
            let host = request.headers().get(HOST)?.to_str().ok()?;
            host.parse::<Authority>().ok()
        });
        let scheme = self.scheme.unwrap_or(request_scheme);
        let host = match (&self.hostname, &authority) {
            (Some(host), _) => host.as_str(),
            (None, Some(authority)) => authority.host(),
            (None, None) => "",
        };
        // Gateway API: a set scheme brings its well-known port; otherwise the
        // port the request was addressed to stays.
        let port = self.port.or_else(|| match self.scheme {
            Some(_) => None,
            None => authority.as_ref().and_then(Authority::port_u16),
        });
        let port = match (scheme, port) {
            ("http", Some(80)) | ("https", Some(443)) | (_, None) => String::new(),
            (_, Some(port)) => format!(":{port}"),
        };
        let path = match &self.path {
            None => uri.path().to_owned(),
            Some(rewrite) => rewrite.apply(uri.path()),
        };
        match uri.query() {
            Some(query) => format!("{scheme}://{host}{port}{path}?{query}"),
            None => format!("{scheme}://{host}{port}{path}"),
        }
    }
}

impl PathRewrite {
    fn compile(
        proto: &proto::PathModifier,
        matched_prefix: Option<&str>,
        field: &str,
    ) -> Result<PathRewrite, String> {
        // Empty replaces a prefix by nothing; otherwise an absolute path alone.
        let valid = proto.value.is_empty()
            || (proto.value.starts_with('/')
                && PathAndQuery::from_str(&proto.value).is_ok_and(|p| p.query().is_none()));
        if !valid {
            return Err(format!(
                "{field}.value: {:?} is not an absolute path without a query",
                proto.value
            ));
        }
        match proto.r#type.as_str() {
            "ReplaceFullPath" if proto.value.is_empty() => Ok(PathRewrite::Full("/".to_owned())),
            "ReplaceFullPath" => Ok(PathRewrite::Full(proto.value.clone())),
            "ReplacePrefixMatch" => {
                let prefix = matched_prefix.ok_or_else(|| {
                    format!("{field}.type: ReplacePrefixMatch needs the rule to have exactly one match, a PathPrefix")
                })?;
                Ok(PathRewrite::Prefix {
                    prefix: prefix.trim_end_matches('/').to_owned(),
                    replacement: proto.value.trim_end_matches('/').to_owned(),
                })
            }
            other => Err(format!(
                "{field}.type: unknown path modifier {other:?} (expected ReplaceFullPath or ReplacePrefixMatch)"
            )),
        }
    }

    fn apply(&self, path: &str) -> String {
        match self {
            PathRewrite::Full(full) => full.clone(),
            PathRewrite::Prefix {
                prefix,
                replacement,
            } => {
                // The rule matched, so `path` starts with the prefix, element-wise.
                let rest = path.get(prefix.len()..).unwrap_or_default();
                let path = format!("{replacement}{rest}");
                if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(prefix: &str, replacement: &str) -> PathRewrite {
        let proto = proto::PathModifier {
            r#type: "ReplacePrefixMatch".into(),
            value: replacement.into(),
        };
        PathRewrite::compile(&proto, Some(prefix), "path").unwrap()
    }

    #[test]
    fn replace_prefix_match_follows_the_gateway_api_table() {
        // (request path, prefix, replacement, redirected path), from the spec.
        let table = [
            ("/foo/bar", "/foo", "/xfoo", "/xfoo/bar"),
            ("/foo/bar", "/foo", "/xfoo/", "/xfoo/bar"),
            ("/foo/bar", "/foo/", "/xfoo", "/xfoo/bar"),
            ("/foo/bar", "/foo/", "/xfoo/", "/xfoo/bar"),
            ("/foo", "/foo", "/xfoo", "/xfoo"),
            ("/foo/", "/foo", "/xfoo", "/xfoo/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/foo", "/", "/bar", "/bar/foo"),
        ];
        for (path, p, replacement, expected) in table {
            assert_eq!(
                prefix(p, replacement).apply(path),
                expected,
                "{path} {p} {replacement}"
            );
        }
    }

    #[test]
    fn a_rewrite_replaces_host_and_path_and_keeps_the_query() {
        let proto = proto::UrlRewrite {
            hostname: "new.example".into(),
            path: Some(proto::PathModifier {
                r#type: "ReplacePrefixMatch".into(),
                value: "/bar".into(),
            }),
        };
        let rewrite = Rewrite::compile(&proto, Some("/foo"), "r").unwrap();
        let rewritten = |uri: &str| {
            let mut request = Request::builder()
                .uri(uri)
                .header(HOST, "web:8080")
                .body(())
                .unwrap();
            rewrite.apply(&mut request);
            (request.uri().to_string(), request.headers()[HOST].clone())
        };
        assert_eq!(
            rewritten("/foo/baz?q=1"),
            (
                "/bar/baz?q=1".to_owned(),
                HeaderValue::from_static("new.example")
            )
        );
        assert_eq!(rewritten("/foo").0, "/bar");
        // HTTP/2 requests carry the authority in the URI: it changes too.
        assert_eq!(
            rewritten("http://web:8080/foo/").0,
            "http://new.example/bar/"
        );
        let mut http2 = Request::get("http://web:8080/foo").body(()).unwrap();
        rewrite.apply(&mut http2);
        assert_eq!(http2.uri(), "http://new.example/bar");
        assert!(
            http2.headers().get(HOST).is_none(),
            "no Host added beside :authority"
        );
        let full = proto::UrlRewrite {
            path: Some(proto::PathModifier {
                r#type: "ReplaceFullPath".into(),
                value: "/only".into(),
            }),
            ..Default::default()
        };
        let full = Rewrite::compile(&full, None, "r").unwrap();
        let mut request = Request::get("/a/b?x=y").body(()).unwrap();
        full.apply(&mut request);
        assert_eq!(request.uri(), "/only?x=y");
        assert!(
            request.headers().get(HOST).is_none(),
            "no hostname: Host untouched"
        );
    }

    #[test]
    fn bad_rewrites_and_mirror_fractions_name_their_field() {
        let prefix = proto::UrlRewrite {
            path: Some(proto::PathModifier {
                r#type: "ReplacePrefixMatch".into(),
                value: "/x".into(),
            }),
            ..Default::default()
        };
        let error = Rewrite::compile(&prefix, None, "f.url_rewrite").unwrap_err();
        assert!(
            error.starts_with("f.url_rewrite.path.type: ReplacePrefixMatch needs"),
            "{error}"
        );
        let host = proto::UrlRewrite {
            hostname: "web:80".into(),
            ..Default::default()
        };
        let error = Rewrite::compile(&host, None, "f.url_rewrite").unwrap_err();
        assert_eq!(
            error,
            "f.url_rewrite.hostname: invalid host name \"web:80\""
        );
        let query = proto::UrlRewrite {
            path: Some(proto::PathModifier {
                r#type: "ReplaceFullPath".into(),
                value: "/a?b".into(),
            }),
            ..Default::default()
        };
        let error = Rewrite::compile(&query, None, "f.url_rewrite").unwrap_err();
        assert!(error.starts_with("f.url_rewrite.path.value: "), "{error}");
        let mirror = |numerator, denominator| proto::RequestMirror {
            backend: "m".into(),
            fraction: Some(proto::Fraction {
                numerator,
                denominator,
            }),
            ..Default::default()
        };
        for (n, d) in [(1, 0), (3, 2)] {
            let error = Mirror::compile(&mirror(n, d), "f.request_mirrors[0]").unwrap_err();
            assert!(
                error.starts_with(&format!("f.request_mirrors[0].fraction: {n}/{d} is not")),
                "{error}"
            );
        }
        let never = Mirror::compile(&mirror(0, 5), "m").unwrap().unwrap();
        let always = Mirror::compile(&mirror(5, 5), "m").unwrap().unwrap();
        assert!((0..100).all(|_| !never.fires() && always.fires()));
        let unresolved = proto::RequestMirror {
            unresolved: "BackendNotFound: gone".into(),
            ..mirror(1, 1)
        };
        assert!(Mirror::compile(&unresolved, "m").unwrap().is_none());
    }

    #[test]
    fn header_modifier_sets_adds_and_removes_case_insensitively() {
        let proto = proto::HeaderModifier {
            set: vec![proto::HeaderValue {
                name: "X-Env".into(),
                value: "prod".into(),
            }],
            add: vec![proto::HeaderValue {
                name: "X-Tag".into(),
                value: "b".into(),
            }],
            remove: vec!["X-SECRET".into()],
        };
        let modifier = HeaderModifier::compile(Some(&proto), "m").unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-env", HeaderValue::from_static("dev"));
        headers.append("x-env", HeaderValue::from_static("test"));
        headers.append("x-tag", HeaderValue::from_static("a"));
        headers.append("x-secret", HeaderValue::from_static("s"));
        modifier.apply(&mut headers);
        let all = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        assert_eq!(all("x-env"), ["prod"]);
        assert_eq!(all("x-tag"), ["a", "b"]);
        assert!(headers.get("x-secret").is_none());
    }

    #[test]
    fn bad_names_values_schemes_and_codes_name_their_field() {
        let bad_name = proto::HeaderModifier {
            remove: vec!["bad name".into()],
            ..Default::default()
        };
        let error =
            HeaderModifier::compile(Some(&bad_name), "f.request_header_modifier").unwrap_err();
        assert_eq!(
            error,
            "f.request_header_modifier.remove[0]: invalid header name \"bad name\""
        );
        let redirect = |r: proto::RequestRedirect| Redirect::compile(&r, None, "r").unwrap_err();
        let scheme = redirect(proto::RequestRedirect {
            scheme: "ftp".into(),
            ..Default::default()
        });
        assert!(
            scheme.starts_with("r.scheme: unknown scheme \"ftp\""),
            "{scheme}"
        );
        let code = redirect(proto::RequestRedirect {
            status_code: 307,
            ..Default::default()
        });
        assert_eq!(code, "r.status_code: 307 is not supported (301 or 302)");
        let prefix = redirect(proto::RequestRedirect {
            path: Some(proto::PathModifier {
                r#type: "ReplacePrefixMatch".into(),
                value: "/x".into(),
            }),
            ..Default::default()
        });
        assert!(
            prefix.starts_with("r.path.type: ReplacePrefixMatch needs"),
            "{prefix}"
        );
    }
}
