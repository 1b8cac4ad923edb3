//! Gateway API filters of HTTPRoute and GRPCRoute rules and of HTTPRoute
//! backendRefs, checked as the spec validates them and turned into the
//! Destination API's filters: RequestHeaderModifier, ResponseHeaderModifier
//! and (HTTPRoute rules only) RequestRedirect, URLRewrite and RequestMirror.
//! Every other filter type is refused by name.

use gateway_api::experimental::grpcroutes::{
    GrpcRouteRulesFilters, GrpcRouteRulesFiltersRequestHeaderModifier,
    GrpcRouteRulesFiltersResponseHeaderModifier, GrpcRouteRulesFiltersType,
};
use gateway_api::experimental::httproutes::{
    HttpRouteRulesBackendRefsFilters, HttpRouteRulesBackendRefsFiltersRequestHeaderModifier,
    HttpRouteRulesBackendRefsFiltersResponseHeaderModifier, HttpRouteRulesBackendRefsFiltersType,
    HttpRouteRulesFilters, HttpRouteRulesFiltersRequestHeaderModifier,
    HttpRouteRulesFiltersRequestMirror, HttpRouteRulesFiltersRequestMirrorFraction,
    HttpRouteRulesFiltersRequestRedirect, HttpRouteRulesFiltersRequestRedirectPath,
    HttpRouteRulesFiltersResponseHeaderModifier, HttpRouteRulesFiltersType,
    HttpRouteRulesFiltersUrlRewrite, HttpRouteRulesFiltersUrlRewritePath,
};
use plexus_api::v1::{
    BackendFilters, Fraction, GrpcFilters, HeaderModifier, HeaderValue, HttpFilters, HttpMatch,
    PathModifier, RequestMirror, RequestRedirect, UrlRewrite,
};

use super::routes::{BackendRef, FieldError, FieldErrors, RuleReader, error, wire_name};

/// Gateway API's `maxItems` for each of `set`, `add` and `remove`.
const MAX_HEADER_ENTRIES: usize = 16;
/// Gateway API's `maxLength` of a header name and of a header value.
const MAX_HEADER_NAME: usize = 256;
const MAX_HEADER_VALUE: usize = 4096;
/// Gateway API's `maxLength` of a redirect's or rewrite's path.
const MAX_PATH: usize = 1024;
/// The denominator of a mirror's `percent`, and of a `fraction` without one.
const PERCENT: u32 = 100;

/// The filters of an HTTPRoute rule at `at`; `None` when it has none (or
/// none that read). `matches` and `has_backends` are the rule's, which a
/// redirect or rewrite is checked against; mirror backendRefs are noted in
/// `reader` like the rule's own, so they resolve (and are named in status) alike.
pub(super) fn http_filters(
    reader: &mut RuleReader<'_>,
    at: &str,
    filters: &Option<Vec<HttpRouteRulesFilters>>,
    matches: &[HttpMatch],
    has_backends: bool,
) -> Option<HttpFilters> {
    let mut read = HttpFilters::default();
    let mut seen = Seen::default();
    for (i, f) in filters.iter().flatten().enumerate() {
        let at = format!("{at}.filters[{i}]");
        let kind = wire_name(&f.r#type);
        let errors = &mut reader.errors;
        // Gateway API allows RequestMirror more than once per rule.
        let repeatable = f.r#type == HttpRouteRulesFiltersType::RequestMirror;
        if !repeatable && !seen.first(errors, &at, &kind) {
            continue;
        }
        match f.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                read.request_header_modifier = header_modifier(
                    errors,
                    &format!("{at}.requestHeaderModifier"),
                    f.request_header_modifier.as_ref().map(Modifier::from),
                );
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                read.response_header_modifier = header_modifier(
                    errors,
                    &format!("{at}.responseHeaderModifier"),
                    f.response_header_modifier.as_ref().map(Modifier::from),
                );
            }
            HttpRouteRulesFiltersType::RequestRedirect => {
                seen.exclusive(errors, &at, "URLRewrite", &kind);
                let at = format!("{at}.requestRedirect");
                let redirect = match &f.request_redirect {
                    Some(r) => request_redirect(errors, &at, r, matches),
                    None => errors.check(Err(missing(&at, &kind))),
                };
                if has_backends {
                    errors.check::<()>(Err(error(
                        at.clone(),
                        "a rule that redirects must have no backendRefs",
                    )));
                }
                read.request_redirect = redirect;
            }
            HttpRouteRulesFiltersType::UrlRewrite => {
                seen.exclusive(errors, &at, "RequestRedirect", &kind);
                let at = format!("{at}.urlRewrite");
                read.url_rewrite = match &f.url_rewrite {
                    Some(r) => url_rewrite(errors, &at, r, matches),
                    None => errors.check(Err(missing(&at, &kind))),
                };
            }
            HttpRouteRulesFiltersType::RequestMirror => {
                let at = format!("{at}.requestMirror");
                let mirror = match &f.request_mirror {
                    Some(m) => request_mirror(reader, &at, m),
                    None => reader.errors.check(Err(missing(&at, &kind))),
                };
                read.request_mirrors.extend(mirror);
            }
            _ => unsupported(errors, &at, &kind),
        }
    }
    (read != HttpFilters::default()).then_some(read)
}

/// A reader of filters that can only be header modifiers (GRPCRoute rules,
/// HTTPRoute backendRefs): the generated types differ per place, the reading
/// does not. Each modifier once; any other type goes to `$refuse`.
macro_rules! header_filters {
    ($(#[$doc:meta])* $name:ident($filters:ty, $kind:ident) -> $read:ty, $refuse:ident) => {
        $(#[$doc])*
        pub(super) fn $name(
            errors: &mut FieldErrors,
            at: &str,
            filters: &Option<Vec<$filters>>,
        ) -> Option<$read> {
            let mut read = <$read>::default();
            let mut seen = Seen::default();
            for (i, f) in filters.iter().flatten().enumerate() {
                let at = format!("{at}.filters[{i}]");
                let kind = wire_name(&f.r#type);
                if !seen.first(errors, &at, &kind) {
                    continue;
                }
                match f.r#type {
                    $kind::RequestHeaderModifier => {
                        read.request_header_modifier = header_modifier(
                            errors,
                            &format!("{at}.requestHeaderModifier"),
                            f.request_header_modifier.as_ref().map(Modifier::from),
                        );
                    }
                    $kind::ResponseHeaderModifier => {
                        read.response_header_modifier = header_modifier(
                            errors,
                            &format!("{at}.responseHeaderModifier"),
                            f.response_header_modifier.as_ref().map(Modifier::from),
                        );
                    }
                    _ => $refuse(errors, &at, &kind),
                }
            }
            (read != <$read>::default()).then_some(read)
        }
    };
}

header_filters!(
    /// The filters of an HTTPRoute backendRef at `at` (its `filters`): header
    /// modifiers, each once; `None` when it has none.
    backend_filters(HttpRouteRulesBackendRefsFilters, HttpRouteRulesBackendRefsFiltersType)
        -> BackendFilters,
    unsupported_on_backend
);
header_filters!(
    /// The filters of a GRPCRoute rule at `at`; `None` when it has none.
    grpc_filters(GrpcRouteRulesFilters, GrpcRouteRulesFiltersType) -> GrpcFilters,
    unsupported
);

/// The filter types a rule already has: Gateway API allows each of the
/// supported ones once per rule.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    /// False (with the error kept) when `kind` was already seen.
    fn first(&mut self, errors: &mut FieldErrors, at: &str, kind: &str) -> bool {
        if self.0.iter().any(|k| k == kind) {
            errors.check::<()>(Err(error(
                format!("{at}.type"),
                format!("{kind} may appear once per rule"),
            )));
            return false;
        }
        self.0.push(kind.to_string());
        true
    }

    /// Keeps an error when `other`, which `kind` excludes, was already seen.
    fn exclusive(&self, errors: &mut FieldErrors, at: &str, other: &str, kind: &str) {
        if self.0.iter().any(|k| k == other) {
            errors.check::<()>(Err(error(
                format!("{at}.type"),
                format!("{kind} and {other} may not be combined in a rule"),
            )));
        }
    }
}

fn unsupported(errors: &mut FieldErrors, at: &str, kind: &str) {
    errors.check::<()>(Err(error(
        format!("{at}.type"),
        format!("{kind} is not supported"),
    )));
}

fn unsupported_on_backend(errors: &mut FieldErrors, at: &str, kind: &str) {
    errors.check::<()>(Err(error(
        format!("{at}.type"),
        format!("{kind} is not supported on a backendRef"),
    )));
}

fn missing(at: &str, kind: &str) -> FieldError {
    error(at.to_string(), format!("required by type {kind}"))
}

/// The fields of a header modifier, the same in every generated type.
struct Modifier<'a> {
    set: Vec<(&'a str, &'a str)>,
    add: Vec<(&'a str, &'a str)>,
    remove: &'a [String],
}

macro_rules! modifier_from {
    ($($generated:ty),+) => {$(
        impl<'a> From<&'a $generated> for Modifier<'a> {
            fn from(m: &'a $generated) -> Self {
                Modifier {
                    set: m.set.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())).collect(),
                    add: m.add.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())).collect(),
                    remove: m.remove.as_deref().unwrap_or_default(),
                }
            }
        }
    )+};
}

modifier_from!(
    HttpRouteRulesFiltersRequestHeaderModifier,
    HttpRouteRulesFiltersResponseHeaderModifier,
    HttpRouteRulesBackendRefsFiltersRequestHeaderModifier,
    HttpRouteRulesBackendRefsFiltersResponseHeaderModifier,
    GrpcRouteRulesFiltersRequestHeaderModifier,
    GrpcRouteRulesFiltersResponseHeaderModifier
);

/// A header modifier checked: at most 16 entries in each list, valid names
/// and values, no name twice in a list (names are case-insensitive).
fn header_modifier(
    errors: &mut FieldErrors,
    at: &str,
    modifier: Option<Modifier<'_>>,
) -> Option<HeaderModifier> {
    let Some(m) = modifier else {
        let kind = if at.ends_with("requestHeaderModifier") {
            "RequestHeaderModifier"
        } else {
            "ResponseHeaderModifier"
        };
        errors.check::<()>(Err(missing(at, kind)));
        return None;
    };
    let before = errors.0.len();
    let mut values = |list: &str, entries: &[(&str, &str)]| {
        let at = format!("{at}.{list}");
        errors.check(at_most_16(&at, entries.len()));
        let mut names: Vec<String> = Vec::new();
        let mut read = Vec::new();
        for (k, (name, value)) in entries.iter().enumerate() {
            let at = format!("{at}[{k}]");
            let name = errors.check(header_name(&format!("{at}.name"), name, &mut names));
            let value = errors.check(header_value(&format!("{at}.value"), value));
            if let (Some(name), Some(value)) = (name, value) {
                read.push(HeaderValue { name, value });
            }
        }
        read
    };
    let set = values("set", &m.set);
    let add = values("add", &m.add);
    let at_remove = format!("{at}.remove");
    errors.check(at_most_16(&at_remove, m.remove.len()));
    let mut names = Vec::new();
    let remove = m
        .remove
        .iter()
        .enumerate()
        .filter_map(|(k, name)| {
            errors.check(header_name(&format!("{at_remove}[{k}]"), name, &mut names))
        })
        .collect();
    (errors.0.len() == before).then_some(HeaderModifier { set, add, remove })
}

fn at_most_16(at: &str, len: usize) -> Result<(), FieldError> {
    if len > MAX_HEADER_ENTRIES {
        return Err(error(
            at.to_string(),
            format!("{len} entries; at most {MAX_HEADER_ENTRIES}"),
        ));
    }
    Ok(())
}

/// A header name as Gateway API's pattern allows (RFC 7230 token), not in
/// `seen` (lowercased); added to it.
fn header_name(at: &str, name: &str, seen: &mut Vec<String>) -> Result<String, FieldError> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > MAX_HEADER_NAME || !name.bytes().all(token) {
        return Err(error(
            at.to_string(),
            format!("{name:?} is not a valid header name"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if seen.contains(&lower) {
        return Err(error(
            at.to_string(),
            format!("{name:?} is listed twice (header names are case-insensitive)"),
        ));
    }
    seen.push(lower);
    Ok(name.to_string())
}

/// A header value: 1 to 4096 bytes, no control characters but tab.
fn header_value(at: &str, value: &str) -> Result<String, FieldError> {
    let allowed = |b: u8| b == b'\t' || (b >= 0x20 && b != 0x7f);
    if value.is_empty() || value.len() > MAX_HEADER_VALUE || !value.bytes().all(allowed) {
        return Err(error(
            at.to_string(),
            format!(
                "{value:?} is not a valid header value (1 to {MAX_HEADER_VALUE} bytes, no control characters)"
            ),
        ));
    }
    Ok(value.to_string())
}

/// A redirect checked: a precise hostname, a port, status 301 or 302, and a
/// path modifier whose type's field is the one set; ReplacePrefixMatch needs
/// the rule to match by one path prefix. `None` when a field is bad (every
/// one kept in `errors`).
fn request_redirect(
    errors: &mut FieldErrors,
    at: &str,
    r: &HttpRouteRulesFiltersRequestRedirect,
    matches: &[HttpMatch],
) -> Option<RequestRedirect> {
    let hostname = errors.check(hostname(&format!("{at}.hostname"), r.hostname.as_deref()));
    let port = errors.check(match r.port {
        None => Ok(None),
        Some(p) => match u16::try_from(p) {
            Ok(p) if p != 0 => Ok(Some(u32::from(p))),
            _ => Err(error(
                format!("{at}.port"),
                format!("{p} is not a port number"),
            )),
        },
    });
    let status_code = errors.check(match r.status_code {
        None => Ok(302),
        Some(code @ (301 | 302)) => Ok(code as u32),
        Some(code) => Err(error(
            format!("{at}.statusCode"),
            format!("{code} is not supported (301 or 302)"),
        )),
    });
    let path = match &r.path {
        None => Some(None),
        Some(p) => errors
            .check(path_modifier(&format!("{at}.path"), p.into(), matches))
            .map(Some),
    };
    Some(RequestRedirect {
        scheme: r.scheme.as_ref().map(wire_name).unwrap_or_default(),
        hostname: hostname?,
        path: path?,
        port: port?,
        status_code: status_code?,
    })
}

/// The fields of a redirect's or a rewrite's path, the same in both generated types.
struct PathSpec<'a> {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    kind: String,
    replace_full_path: Option<&'a str>,
    replace_prefix_match: Option<&'a str>,
}

macro_rules! path_spec_from {
    ($($generated:ty),+) => {$(
        impl<'a> From<&'a $generated> for PathSpec<'a> {
            fn from(p: &'a $generated) -> Self {
                PathSpec {
                    kind: wire_name(&p.r#type),
                    replace_full_path: p.replace_full_path.as_deref(),
                    replace_prefix_match: p.replace_prefix_match.as_deref(),
                }
            }
        }
    )+};
}

path_spec_from!(
    HttpRouteRulesFiltersRequestRedirectPath,
    HttpRouteRulesFiltersUrlRewritePath
);

/// A path modifier whose type's field is the one set, an absolute path;
/// ReplacePrefixMatch needs the rule to match by one path prefix.
fn path_modifier(
    at: &str,
    p: PathSpec<'_>,
    matches: &[HttpMatch],
) -> Result<PathModifier, FieldError> {
    let (value, other, field) = if p.kind == "ReplacePrefixMatch" {
        (
            p.replace_prefix_match,
            p.replace_full_path,
            "replacePrefixMatch",
        )
    } else {
        (
            p.replace_full_path,
            p.replace_prefix_match,
            "replaceFullPath",
        )
    };
    let kind = p.kind;
    if other.is_some() {
        return Err(error(
            at.to_string(),
            format!("type {kind} takes {field} and nothing else"),
        ));
    }
    let Some(value) = value else {
        return Err(error(
            format!("{at}.{field}"),
            format!("required by type {kind}"),
        ));
    };
    check_path(&format!("{at}.{field}"), value)?;
    if field == "replacePrefixMatch" && !one_path_prefix(matches) {
        return Err(error(
            format!("{at}.{field}"),
            "needs the rule to have exactly one match, a PathPrefix",
        ));
    }
    Ok(PathModifier {
        r#type: kind,
        value: value.to_string(),
    })
}

/// A rewrite checked: a precise hostname and a path modifier (as a
/// redirect's). `None` when a field is bad (every one kept in `errors`).
fn url_rewrite(
    errors: &mut FieldErrors,
    at: &str,
    r: &HttpRouteRulesFiltersUrlRewrite,
    matches: &[HttpMatch],
) -> Option<UrlRewrite> {
    let hostname = errors.check(hostname(&format!("{at}.hostname"), r.hostname.as_deref()));
    let path = match &r.path {
        None => Some(None),
        Some(p) => errors
            .check(path_modifier(&format!("{at}.path"), p.into(), matches))
            .map(Some),
    };
    Some(UrlRewrite {
        hostname: hostname?,
        path: path?,
    })
}

/// A mirror checked: its backendRef read like the rule's (noted in `reader`,
/// so it resolves alike), and at most one of `percent` and `fraction`.
fn request_mirror(
    reader: &mut RuleReader<'_>,
    at: &str,
    m: &HttpRouteRulesFiltersRequestMirror,
) -> Option<RequestMirror> {
    let backend = reader.backend(
        &format!("{at}.backendRef"),
        BackendRef::from(&m.backend_ref),
    );
    let backend = reader.errors.check(backend);
    let fraction = reader
        .errors
        .check(mirror_fraction(at, m.percent, m.fraction.as_ref()));
    Some(RequestMirror {
        backend: backend?.backend,
        unresolved: String::new(),
        fraction: fraction?,
    })
}

/// `percent` (0 to 100) or `fraction` (numerator <= denominator, the
/// denominator 100 unless given and at least 1); neither: every request.
fn mirror_fraction(
    at: &str,
    percent: Option<i32>,
    fraction: Option<&HttpRouteRulesFiltersRequestMirrorFraction>,
) -> Result<Option<Fraction>, FieldError> {
    match (percent, fraction) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(error(
            at.to_string(),
            "percent and fraction may not both be set",
        )),
        (Some(p), None) => match u32::try_from(p) {
            Ok(p) if p <= PERCENT => Ok(Some(Fraction {
                numerator: p,
                denominator: PERCENT,
            })),
            _ => Err(error(
                format!("{at}.percent"),
                format!("{p} is not a percentage (0 to 100)"),
            )),
        },
        (None, Some(f)) => {
            let denominator = match f.denominator.map(u32::try_from) {
                None => PERCENT,
                Some(Ok(d)) if d > 0 => d,
                Some(_) => {
                    return Err(error(
                        format!("{at}.fraction.denominator"),
                        "must be at least 1",
                    ));
                }
            };
            match u32::try_from(f.numerator) {
                Ok(numerator) if numerator <= denominator => Ok(Some(Fraction {
                    numerator,
                    denominator,
                })),
                _ => Err(error(
                    format!("{at}.fraction.numerator"),
                    format!(
                        "{} is not between 0 and the denominator {denominator}",
                        f.numerator
                    ),
                )),
            }
        }
    }
}

/// A rule without matches matches every path, a PathPrefix "/".
fn one_path_prefix(matches: &[HttpMatch]) -> bool {
    match matches {
        [] => true,
        [m] => m.path.as_ref().is_none_or(|p| p.r#type == "PathPrefix"),
        _ => false,
    }
}

/// An absolute path (or empty, for a prefix replaced by nothing), at most
/// 1024 bytes, without a query, a fragment, spaces or control characters.
fn check_path(at: &str, value: &str) -> Result<(), FieldError> {
    // Also left out: what a URI path cannot carry unencoded, which the proxy refuses.
    let allowed = |b: u8| b > 0x20 && b != 0x7f && !b"?#<>\\^`".contains(&b);
    let absolute = value.is_empty() || value.starts_with('/');
    if !absolute || value.len() > MAX_PATH || !value.bytes().all(allowed) {
        return Err(error(
            at.to_string(),
            format!(
                "{value:?} is not an absolute path (no query, fragment, spaces or any of < > \\ ^ `)"
            ),
        ));
    }
    Ok(())
}

/// A hostname to put in place of the request's; empty when unset.
fn hostname(at: &str, hostname: Option<&str>) -> Result<String, FieldError> {
    match hostname {
        None => Ok(String::new()),
        Some(h) if precise_hostname(h) => Ok(h.to_string()),
        Some(h) => Err(error(
            at.to_string(),
            format!("{h:?} is not a precise hostname (RFC 1123, lower case)"),
        )),
    }
}

/// Gateway API's PreciseHostname: RFC 1123 labels, lower case, no wildcard.
fn precise_hostname(host: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    host.len() <= 253 && host.split('.').all(label)
}

#[cfg(test)]
mod tests {
    use gateway_api::experimental::grpcroutes::GrpcRoute;
    use gateway_api::experimental::httproutes::HttpRoute;
    use serde_json::{Value, json};

    use super::super::routes::{Converted, RouteRules, grpc_route, http_route};
    use super::*;

    fn http(rules: Value) -> Converted {
        let route: HttpRoute = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "r"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                "rules": rules,
            },
        }))
        .expect("test route");
        http_route(&route, "cluster.local")
    }

    fn header(name: &str, value: &str) -> HeaderValue {
        HeaderValue {
            name: name.into(),
            value: value.into(),
        }
    }

    /// Every bad field, as `field: message`.
    fn problems(converted: &Converted) -> Vec<String> {
        converted
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect()
    }

    fn http_filters_of(converted: &Converted) -> Option<HttpFilters> {
        match &converted.info.as_ref().expect("accepted").rules {
            RouteRules::Http(rules) => rules[0].filters.clone(),
            RouteRules::Grpc(_) => None,
        }
    }

    #[test]
    fn header_modifiers_and_a_redirect_compile_into_the_rule() {
        let converted = http(json!([
            {"backendRefs": [{"name": "web", "port": 80}], "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "X-Env", "value": "prod"}],
                    "add": [{"name": "X-Tag", "value": "a"}],
                    "remove": ["X-Secret"]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                    "add": [{"name": "X-Served-By", "value": "plexus"}]}},
            ]},
        ]));
        assert_eq!(problems(&converted), Vec::<String>::new());
        let filters = http_filters_of(&converted).expect("filters");
        assert_eq!(
            filters.request_header_modifier,
            Some(HeaderModifier {
                set: vec![header("X-Env", "prod")],
                add: vec![header("X-Tag", "a")],
                remove: vec!["X-Secret".into()],
            })
        );
        assert_eq!(
            filters.response_header_modifier.map(|m| m.add),
            Some(vec![header("X-Served-By", "plexus")])
        );

        let redirect = http(json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}], "filters": [
                {"type": "RequestRedirect", "requestRedirect": {
                    "scheme": "https", "hostname": "new.example", "port": 8443, "statusCode": 301,
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}},
            ]},
        ]));
        assert_eq!(problems(&redirect), Vec::<String>::new());
        assert_eq!(
            http_filters_of(&redirect).and_then(|f| f.request_redirect),
            Some(RequestRedirect {
                scheme: "https".into(),
                hostname: "new.example".into(),
                path: Some(PathModifier {
                    r#type: "ReplacePrefixMatch".into(),
                    value: "/new".into(),
                }),
                port: Some(8443),
                status_code: 301,
            })
        );
    }

    #[test]
    fn a_rule_without_filters_carries_none() {
        let converted = http(json!([{"backendRefs": [{"name": "web", "port": 80}]}]));
        assert_eq!(http_filters_of(&converted), None);
    }

    #[test]
    fn every_bad_filter_field_is_named_at_once() {
        let seventeen: Vec<Value> = (0..17)
            .map(|i| json!({"name": format!("x-{i}"), "value": "v"}))
            .collect();
        let converted = http(json!([
            {"filters": [
                {"type": "ExtensionRef", "extensionRef": {"group": "x.io", "kind": "Fault", "name": "f"}},
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}],
                    "add": seventeen,
                    "remove": ["bad name"]}},
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {}},
                {"type": "ResponseHeaderModifier"},
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m", "port": 80}, "percent": 150}},
            ]},
            {"backendRefs": [{"name": "web", "port": 80}], "matches": [
                {"path": {"type": "Exact", "value": "/a"}}], "filters": [
                {"type": "RequestRedirect", "requestRedirect": {
                    "hostname": "Bad_Host", "statusCode": 308,
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}},
            ]},
            {"backendRefs": [{"name": "web", "port": 80}], "filters": [
                {"type": "RequestRedirect", "requestRedirect": {
                    "path": {"type": "ReplaceFullPath", "replaceFullPath": "no-slash"}}},
            ]},
            {"backendRefs": [{"name": "web", "port": 80}], "filters": [
                {"type": "RequestRedirect", "requestRedirect": {"port": 80}},
            ]},
        ]));
        assert_eq!(
            problems(&converted),
            [
                "spec.rules[0].filters[0].type: ExtensionRef is not supported",
                "spec.rules[0].filters[1].requestHeaderModifier.set[1].name: \"x-a\" is listed twice (header names are case-insensitive)",
                "spec.rules[0].filters[1].requestHeaderModifier.add: 17 entries; at most 16",
                "spec.rules[0].filters[1].requestHeaderModifier.remove[0]: \"bad name\" is not a valid header name",
                "spec.rules[0].filters[2].type: RequestHeaderModifier may appear once per rule",
                "spec.rules[0].filters[3].responseHeaderModifier: required by type ResponseHeaderModifier",
                "spec.rules[0].filters[4].requestMirror.percent: 150 is not a percentage (0 to 100)",
                "spec.rules[1].filters[0].requestRedirect.hostname: \"Bad_Host\" is not a precise hostname (RFC 1123, lower case)",
                "spec.rules[1].filters[0].requestRedirect.statusCode: 308 is not supported (301 or 302)",
                "spec.rules[1].filters[0].requestRedirect.path.replacePrefixMatch: needs the rule to have exactly one match, a PathPrefix",
                "spec.rules[1].filters[0].requestRedirect: a rule that redirects must have no backendRefs",
                "spec.rules[2].filters[0].requestRedirect.path.replaceFullPath: \"no-slash\" is not an absolute path (no query, fragment, spaces or any of < > \\ ^ `)",
                "spec.rules[2].filters[0].requestRedirect: a rule that redirects must have no backendRefs",
                "spec.rules[3].filters[0].requestRedirect: a rule that redirects must have no backendRefs",
            ]
        );
        let parent = &converted.status.as_ref().expect("status").parents[0];
        assert!(!parent.accepted);
        assert!(
            parent.message.contains("ExtensionRef is not supported"),
            "{}",
            parent.message
        );
    }

    #[test]
    fn rewrites_mirrors_and_backend_filters_compile_into_the_rule() {
        let converted = http(json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "backendRefs": [
                {"name": "web", "port": 80, "filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                        "set": [{"name": "x-canary", "value": "no"}]}},
                    {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                        "remove": ["x-internal"]}}]},
                {"name": "web-v2", "port": 80}],
             "filters": [
                {"type": "URLRewrite", "urlRewrite": {"hostname": "new.example",
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}},
                {"type": "RequestMirror", "requestMirror": {
                    "backendRef": {"name": "shadow", "port": 8080}, "percent": 50}},
                {"type": "RequestMirror", "requestMirror": {
                    "backendRef": {"name": "audit", "namespace": "ops", "port": 80},
                    "fraction": {"numerator": 1, "denominator": 3}}},
            ]},
        ]));
        assert_eq!(problems(&converted), Vec::<String>::new());
        let filters = http_filters_of(&converted).expect("filters");
        assert_eq!(
            filters.url_rewrite,
            Some(UrlRewrite {
                hostname: "new.example".into(),
                path: Some(PathModifier {
                    r#type: "ReplacePrefixMatch".into(),
                    value: "/new".into(),
                }),
            })
        );
        assert_eq!(
            filters.request_mirrors,
            [
                RequestMirror {
                    backend: "shadow.shop.svc.cluster.local:8080".into(),
                    unresolved: String::new(),
                    fraction: Some(Fraction {
                        numerator: 50,
                        denominator: 100
                    }),
                },
                RequestMirror {
                    backend: "audit.ops.svc.cluster.local:80".into(),
                    unresolved: String::new(),
                    fraction: Some(Fraction {
                        numerator: 1,
                        denominator: 3
                    }),
                },
            ]
        );
        let info = converted.info.as_ref().expect("accepted");
        let RouteRules::Http(rules) = &info.rules else {
            panic!("an HTTP route");
        };
        assert_eq!(
            rules[0].backends[0].filters,
            Some(BackendFilters {
                request_header_modifier: Some(HeaderModifier {
                    set: vec![header("x-canary", "no")],
                    ..Default::default()
                }),
                response_header_modifier: Some(HeaderModifier {
                    remove: vec!["x-internal".into()],
                    ..Default::default()
                }),
            })
        );
        assert_eq!(rules[0].backends[1].filters, None);
        // Mirror backendRefs resolve like the rule's: named by their field.
        let fields: Vec<&str> = info.backend_refs.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.rules[0].backendRefs[0]",
                "spec.rules[0].backendRefs[1]",
                "spec.rules[0].filters[1].requestMirror.backendRef",
                "spec.rules[0].filters[2].requestMirror.backendRef",
            ]
        );
    }

    #[test]
    fn bad_rewrites_mirrors_and_backend_filters_are_named() {
        let converted = http(json!([
            {"matches": [{"path": {"type": "Exact", "value": "/a"}}], "filters": [
                {"type": "URLRewrite", "urlRewrite": {"hostname": "Bad_Host",
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]},
            {"filters": [{"type": "URLRewrite", "urlRewrite": {
                "path": {"type": "ReplaceFullPath", "replaceFullPath": "/a^b"}}}]},
            {"filters": [
                {"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}},
                {"type": "URLRewrite", "urlRewrite": {"hostname": "x.example"}}]},
            {"filters": [
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m"},
                    "percent": 10, "fraction": {"numerator": 1}}},
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m", "port": 80},
                    "fraction": {"numerator": 3, "denominator": 2}}},
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m", "port": 80},
                    "fraction": {"numerator": 0, "denominator": 0}}},
                {"type": "RequestMirror"}]},
            {"backendRefs": [{"name": "web", "port": 80, "filters": [
                {"type": "URLRewrite", "urlRewrite": {"hostname": "x.example"}},
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "remove": ["bad name"]}}]}]},
        ]));
        assert_eq!(
            problems(&converted),
            [
                "spec.rules[0].filters[0].urlRewrite.hostname: \"Bad_Host\" is not a precise hostname (RFC 1123, lower case)",
                "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch: needs the rule to have exactly one match, a PathPrefix",
                "spec.rules[1].filters[0].urlRewrite.path.replaceFullPath: \"/a^b\" is not an absolute path (no query, fragment, spaces or any of < > \\ ^ `)",
                "spec.rules[2].filters[1].type: URLRewrite and RequestRedirect may not be combined in a rule",
                "spec.rules[3].filters[0].requestMirror.backendRef.port: a Service backend needs a port",
                "spec.rules[3].filters[0].requestMirror: percent and fraction may not both be set",
                "spec.rules[3].filters[1].requestMirror.fraction.numerator: 3 is not between 0 and the denominator 2",
                "spec.rules[3].filters[2].requestMirror.fraction.denominator: must be at least 1",
                "spec.rules[3].filters[3].requestMirror: required by type RequestMirror",
                "spec.rules[4].backendRefs[0].filters[0].type: URLRewrite is not supported on a backendRef",
                "spec.rules[4].backendRefs[0].filters[1].requestHeaderModifier.remove[0]: \"bad name\" is not a valid header name",
            ]
        );
    }

    #[test]
    fn redirect_status_codes_and_prefix_replacement_are_checked() {
        let converted = http(json!([
            {"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 307}}]},
            {"matches": [{"path": {"type": "Exact", "value": "/a"}}], "filters": [
                {"type": "RequestRedirect", "requestRedirect": {
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]},
            {"filters": [{"type": "RequestRedirect", "requestRedirect": {
                "path": {"type": "ReplaceFullPath", "replaceFullPath": "/a", "replacePrefixMatch": "/b"}}}]},
        ]));
        assert_eq!(
            problems(&converted),
            [
                "spec.rules[0].filters[0].requestRedirect.statusCode: 307 is not supported (301 or 302)",
                "spec.rules[1].filters[0].requestRedirect.path.replacePrefixMatch: needs the rule to have exactly one match, a PathPrefix",
                "spec.rules[2].filters[0].requestRedirect.path: type ReplaceFullPath takes replaceFullPath and nothing else",
            ]
        );
    }

    #[test]
    fn grpc_rules_take_header_modifiers_and_refuse_the_rest() {
        let route = |filters: Value| -> GrpcRoute {
            serde_json::from_value(json!({
                "metadata": {"namespace": "shop", "name": "g"},
                "spec": {
                    "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                    "rules": [{"filters": filters}],
                },
            }))
            .expect("test route")
        };
        let accepted = grpc_route(
            &route(
                json!([{"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                "set": [{"name": "x-env", "value": "prod"}]}}]),
            ),
            "cluster.local",
        );
        assert!(accepted.problems.is_empty());
        let Some(RouteRules::Grpc(rules)) = accepted.info.map(|i| i.rules) else {
            panic!("a gRPC route");
        };
        assert_eq!(
            rules[0]
                .filters
                .as_ref()
                .and_then(|f| f.response_header_modifier.clone()),
            Some(HeaderModifier {
                set: vec![header("x-env", "prod")],
                ..Default::default()
            })
        );
        let refused = grpc_route(
            &route(json!([{"type": "ExtensionRef", "extensionRef": {
                "group": "x.io", "kind": "Fault", "name": "f"}}])),
            "cluster.local",
        );
        assert_eq!(
            problems(&refused),
            ["spec.rules[0].filters[0].type: ExtensionRef is not supported"]
        );
        let backend_filtered: GrpcRoute = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "g"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                "rules": [{"backendRefs": [{"name": "web", "port": 80, "filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                        "set": [{"name": "x-a", "value": "1"}]}}]}]}],
            },
        }))
        .expect("test route");
        assert_eq!(
            problems(&grpc_route(&backend_filtered, "cluster.local")),
            [
                "spec.rules[0].backendRefs[0].filters: backendRef filters are not supported on a GRPCRoute"
            ]
        );
    }
}
