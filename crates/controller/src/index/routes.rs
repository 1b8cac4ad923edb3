//! Gateway API HTTPRoute and GRPCRoute attached to Services (GAMMA), turned
//! into the Destination API's route model, with the status each parent gets.

use std::collections::BTreeSet;

use gateway_api::experimental::grpcroutes::{GrpcRoute as GRPCRoute, GrpcRouteRules};
use gateway_api::experimental::httproutes::{HttpRoute as HTTPRoute, HttpRouteRules};
use k8s_openapi::jiff::Timestamp;
use plexus_api::v1::{
    GrpcMatch, GrpcRouteRule, HeaderMatch, HttpMatch, HttpRouteRule, PathMatch, RetryPolicy,
    Timeouts, WeightedBackend,
};
use serde::Serialize;
use serde_json::Value;

use super::annotations::parse_duration_ms;
use super::lookup::canonical_name;
use super::{Kind, ObjectRef, Problem};

/// Retries when a route's `retry` leaves `attempts` out (Gateway API: implementation-specific).
const DEFAULT_RETRIES: u32 = 2;
/// Codes retried when a route's `retry` leaves `codes` out.
const DEFAULT_RETRY_CODES: [u32; 3] = [502, 503, 504];

/// Gateway API condition reasons used in route status.
pub const REASON_ACCEPTED: &str = "Accepted";
pub const REASON_UNSUPPORTED_VALUE: &str = "UnsupportedValue";
pub const REASON_NOT_ALLOWED: &str = "NotAllowedByParent";

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub kind: Kind,
    pub route: ObjectRef,
}

/// A Service a route attaches to, optionally to one of its ports.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceParent {
    pub service: ObjectRef,
    pub port: Option<u16>,
    /// GAMMA `sectionName`: a Service port name.
    pub section: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RouteRules {
    Http(Vec<HttpRouteRule>),
    Grpc(Vec<GrpcRouteRule>),
}

/// An accepted route, ready to be put in targets.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteInfo {
    pub created: Option<Timestamp>,
    pub parents: Vec<ServiceParent>,
    pub rules: RouteRules,
    /// Every backend the rules name: (Service, port).
    pub backends: BTreeSet<(ObjectRef, u16)>,
}

impl RouteInfo {
    pub fn attaches_to(&self, service: &ObjectRef, port: u16, port_name: &str) -> bool {
        self.parents.iter().any(|p| {
            &p.service == service
                && p.port.is_none_or(|p| p == port)
                && p.section.as_deref().is_none_or(|s| s == port_name)
        })
    }
}

/// The controller name Plexus writes in `status.parents[].controllerName`.
pub const CONTROLLER_NAME: &str = "plexus.io/mesh-controller";

/// What one parent says of a route, as in `status.parents[]` of Gateway API.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParentStatus {
    /// The parentRef as written: `Service namespace/name[:port]`.
    pub parent: String,
    /// The parentRef as in the route (JSON), to echo in the status.
    #[serde(skip)]
    pub parent_ref: Value,
    pub accepted: bool,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteStatus {
    pub kind: Kind,
    pub route: ObjectRef,
    pub parents: Vec<ParentStatus>,
    /// `metadata.generation` the status is about.
    #[serde(skip)]
    pub generation: Option<i64>,
    /// `status.parents` as the object carried it (every controller's).
    #[serde(skip)]
    pub existing: Vec<Value>,
}

/// The result of reading a route: the route if any parent accepts it, its
/// status (when it names a Service at all), and its problems.
pub struct Converted {
    pub info: Option<RouteInfo>,
    pub status: Option<RouteStatus>,
    pub problems: Vec<Problem>,
}

/// A field and what is wrong with it.
struct FieldError {
    field: String,
    message: String,
}

fn error(field: String, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// The fields of a parentRef, the same in HTTPRoute and GRPCRoute.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ParentRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    section_name: Option<&'a str>,
}

/// The fields of a backendRef, the same in HTTPRoute and GRPCRoute.
struct BackendRef<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
    weight: Option<i32>,
    has_filters: bool,
}

pub fn http_route(route: &HTTPRoute, cluster_domain: &str) -> Converted {
    let parents = route.spec.parent_refs.iter().flatten().map(|p| ParentRef {
        group: p.group.as_deref(),
        kind: p.kind.as_deref(),
        name: &p.name,
        namespace: p.namespace.as_deref(),
        port: p.port,
        section_name: p.section_name.as_deref(),
    });
    let rules = route.spec.rules.as_deref().unwrap_or_default();
    let mut backends = BTreeSet::new();
    let converted = rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            http_rule(
                i,
                rule,
                &object_ref(&route.metadata),
                cluster_domain,
                &mut backends,
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map(RouteRules::Http);
    convert(
        Kind::HttpRoute,
        &route.metadata,
        parents,
        converted,
        backends,
        serde_json::to_value(&route.status).ok(),
    )
}

pub fn grpc_route(route: &GRPCRoute, cluster_domain: &str) -> Converted {
    let parents = route.spec.parent_refs.iter().flatten().map(|p| ParentRef {
        group: p.group.as_deref(),
        kind: p.kind.as_deref(),
        name: &p.name,
        namespace: p.namespace.as_deref(),
        port: p.port,
        section_name: p.section_name.as_deref(),
    });
    let rules = route.spec.rules.as_deref().unwrap_or_default();
    let mut backends = BTreeSet::new();
    let converted = rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            grpc_rule(
                i,
                rule,
                &object_ref(&route.metadata),
                cluster_domain,
                &mut backends,
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map(RouteRules::Grpc);
    convert(
        Kind::GrpcRoute,
        &route.metadata,
        parents,
        converted,
        backends,
        serde_json::to_value(&route.status).ok(),
    )
}

pub fn object_ref(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectRef {
    ObjectRef::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn convert<'a>(
    kind: Kind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    parent_refs: impl Iterator<Item = ParentRef<'a>>,
    rules: Result<RouteRules, FieldError>,
    backends: BTreeSet<(ObjectRef, u16)>,
    status: Option<Value>,
) -> Converted {
    let existing = match status.as_ref().and_then(|s| s.get("parents")) {
        Some(Value::Array(parents)) => parents.clone(),
        _ => Vec::new(),
    };
    let key = object_ref(meta);
    let mut problems = Vec::new();
    let mut accepted = Vec::new();
    let mut statuses = Vec::new();
    for (i, p) in parent_refs.enumerate() {
        // GAMMA: a Service parent is group "" (core) and kind Service; other
        // parents (Gateways) belong to other controllers.
        let is_service = matches!(p.group, Some("" | "core")) && p.kind == Some("Service");
        if !is_service {
            continue;
        }
        let parent_ref = serde_json::to_value(&p).unwrap_or(Value::Null);
        let namespace = p.namespace.unwrap_or(&key.namespace);
        let port = p.port.and_then(|p| u16::try_from(p).ok());
        let parent = match port {
            Some(port) => format!("Service {namespace}/{}:{port}", p.name),
            None => format!("Service {namespace}/{}", p.name),
        };
        let refusal = if namespace != key.namespace {
            Some((
                REASON_NOT_ALLOWED,
                format!("spec.parentRefs[{i}]"),
                format!(
                    "Service {namespace}/{} is in another namespace; \
                     routes for a Service must live in its namespace",
                    p.name
                ),
            ))
        } else if p.port.is_some() && port.is_none_or(|p| p == 0) {
            Some((
                REASON_UNSUPPORTED_VALUE,
                format!("spec.parentRefs[{i}].port"),
                "not a port number".to_string(),
            ))
        } else if let Err(e) = &rules {
            Some((REASON_UNSUPPORTED_VALUE, e.field.clone(), e.message.clone()))
        } else {
            None
        };
        let status = match refusal {
            Some((reason, field, message)) => {
                let problem = Problem::new(kind, &key, field.clone(), message.clone());
                if !problems.contains(&problem) {
                    problems.push(problem);
                }
                ParentStatus {
                    parent,
                    parent_ref,
                    accepted: false,
                    reason: reason.to_string(),
                    message: format!("{field}: {message}"),
                }
            }
            None => {
                accepted.push(ServiceParent {
                    service: ObjectRef::new(namespace, p.name),
                    port,
                    section: p.section_name.map(str::to_string),
                });
                ParentStatus {
                    parent,
                    parent_ref,
                    accepted: true,
                    reason: REASON_ACCEPTED.to_string(),
                    message: String::new(),
                }
            }
        };
        statuses.push(status);
    }
    if statuses.is_empty() {
        return Converted {
            info: None,
            status: None,
            problems,
        };
    }
    let info = match rules {
        Ok(rules) if !accepted.is_empty() => Some(RouteInfo {
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            parents: accepted,
            rules,
            backends,
        }),
        _ => None,
    };
    Converted {
        info,
        status: Some(RouteStatus {
            kind,
            route: key,
            parents: statuses,
            generation: meta.generation,
            existing,
        }),
        problems,
    }
}

fn http_rule(
    i: usize,
    rule: &HttpRouteRules,
    route: &ObjectRef,
    cluster_domain: &str,
    backends: &mut BTreeSet<(ObjectRef, u16)>,
) -> Result<HttpRouteRule, FieldError> {
    let at = format!("spec.rules[{i}]");
    if rule.filters.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(error(format!("{at}.filters"), "filters are not supported"));
    }
    let matches = rule
        .matches
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, m)| {
            let at = format!("{at}.matches[{j}]");
            let path = match &m.path {
                Some(path) => {
                    let kind = path
                        .r#type
                        .as_ref()
                        .map(wire_name)
                        .unwrap_or_else(|| "PathPrefix".into());
                    let value = path.value.clone().unwrap_or_else(|| "/".to_string());
                    if kind == "RegularExpression" {
                        check_regex(&format!("{at}.path.value"), &value)?;
                    } else if !value.starts_with('/') {
                        return Err(error(
                            format!("{at}.path.value"),
                            format!("{value:?} does not start with /"),
                        ));
                    }
                    Some(PathMatch {
                        r#type: kind,
                        value,
                    })
                }
                None => None,
            };
            let headers = m
                .headers
                .iter()
                .flatten()
                .enumerate()
                .map(|(k, h)| {
                    header_match(
                        &format!("{at}.headers[{k}]"),
                        h.r#type.as_ref(),
                        &h.name,
                        &h.value,
                    )
                })
                .collect::<Result<_, _>>()?;
            let query_params = m
                .query_params
                .iter()
                .flatten()
                .enumerate()
                .map(|(k, q)| {
                    header_match(
                        &format!("{at}.queryParams[{k}]"),
                        q.r#type.as_ref(),
                        &q.name,
                        &q.value,
                    )
                })
                .collect::<Result<_, _>>()?;
            Ok(HttpMatch {
                path,
                headers,
                query_params,
                method: m.method.as_ref().map(wire_name).unwrap_or_default(),
            })
        })
        .collect::<Result<_, _>>()?;
    let weighted = rule
        .backend_refs
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, b)| {
            let b = BackendRef {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                name: &b.name,
                namespace: b.namespace.as_deref(),
                port: b.port,
                weight: b.weight,
                has_filters: b.filters.as_ref().is_some_and(|f| !f.is_empty()),
            };
            backend(
                &format!("{at}.backendRefs[{j}]"),
                b,
                route,
                cluster_domain,
                backends,
            )
        })
        .collect::<Result<_, _>>()?;
    let timeouts = match &rule.timeouts {
        Some(t) => Some(Timeouts {
            request_ms: duration(&format!("{at}.timeouts.request"), t.request.as_deref())?,
            backend_request_ms: duration(
                &format!("{at}.timeouts.backendRequest"),
                t.backend_request.as_deref(),
            )?,
        }),
        None => None,
    };
    let retry = match &rule.retry {
        Some(r) => {
            let retries = match r.attempts {
                None => DEFAULT_RETRIES,
                Some(n) => u32::try_from(n).map_err(|_| {
                    error(
                        format!("{at}.retry.attempts"),
                        format!("{n} is not a number of retries"),
                    )
                })?,
            };
            let codes = match &r.codes {
                None => DEFAULT_RETRY_CODES.to_vec(),
                Some(codes) => codes
                    .iter()
                    .enumerate()
                    .map(|(k, c)| match u32::try_from(*c) {
                        Ok(c) if (400..=599).contains(&c) => Ok(c),
                        _ => Err(error(
                            format!("{at}.retry.codes[{k}]"),
                            format!("{c} is not an HTTP error status"),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
            };
            Some(RetryPolicy {
                // The proto counts attempts with the first; Gateway API counts retries.
                attempts: retries.saturating_add(1),
                codes,
                grpc_codes: Vec::new(),
                backoff_base_ms: duration(&format!("{at}.retry.backoff"), r.backoff.as_deref())?,
                backoff_max_ms: 0,
            })
        }
        None => None,
    };
    Ok(HttpRouteRule {
        matches,
        backends: weighted,
        timeouts,
        retry,
    })
}

fn grpc_rule(
    i: usize,
    rule: &GrpcRouteRules,
    route: &ObjectRef,
    cluster_domain: &str,
    backends: &mut BTreeSet<(ObjectRef, u16)>,
) -> Result<GrpcRouteRule, FieldError> {
    let at = format!("spec.rules[{i}]");
    if rule.filters.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(error(format!("{at}.filters"), "filters are not supported"));
    }
    let matches = rule
        .matches
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, m)| {
            let at = format!("{at}.matches[{j}]");
            let (kind, service, method) = match &m.method {
                Some(method) => (
                    method
                        .r#type
                        .as_ref()
                        .map(wire_name)
                        .unwrap_or_else(|| "Exact".into()),
                    method.service.clone().unwrap_or_default(),
                    method.method.clone().unwrap_or_default(),
                ),
                None => ("Exact".to_string(), String::new(), String::new()),
            };
            if kind == "RegularExpression" {
                check_regex(&format!("{at}.method.service"), &service)?;
                check_regex(&format!("{at}.method.method"), &method)?;
            }
            let headers = m
                .headers
                .iter()
                .flatten()
                .enumerate()
                .map(|(k, h)| {
                    header_match(
                        &format!("{at}.headers[{k}]"),
                        h.r#type.as_ref(),
                        &h.name,
                        &h.value,
                    )
                })
                .collect::<Result<_, _>>()?;
            Ok(GrpcMatch {
                r#type: kind,
                service,
                method,
                headers,
            })
        })
        .collect::<Result<_, _>>()?;
    let weighted = rule
        .backend_refs
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, b)| {
            let b = BackendRef {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                name: &b.name,
                namespace: b.namespace.as_deref(),
                port: b.port,
                weight: b.weight,
                has_filters: b.filters.as_ref().is_some_and(|f| !f.is_empty()),
            };
            backend(
                &format!("{at}.backendRefs[{j}]"),
                b,
                route,
                cluster_domain,
                backends,
            )
        })
        .collect::<Result<_, _>>()?;
    Ok(GrpcRouteRule {
        matches,
        backends: weighted,
        timeouts: None,
        retry: None,
    })
}

fn backend(
    at: &str,
    b: BackendRef<'_>,
    route: &ObjectRef,
    cluster_domain: &str,
    backends: &mut BTreeSet<(ObjectRef, u16)>,
) -> Result<WeightedBackend, FieldError> {
    if b.has_filters {
        return Err(error(format!("{at}.filters"), "filters are not supported"));
    }
    if !matches!(b.group, None | Some("" | "core")) || !matches!(b.kind, None | Some("Service")) {
        return Err(error(
            format!("{at}.kind"),
            "only Service backends are supported",
        ));
    }
    if b.namespace.is_some_and(|ns| ns != route.namespace) {
        return Err(error(
            format!("{at}.namespace"),
            "backends in another namespace are not supported",
        ));
    }
    let port = match b.port.map(u16::try_from) {
        Some(Ok(port)) if port != 0 => port,
        _ => {
            return Err(error(
                format!("{at}.port"),
                "a Service backend needs a port",
            ));
        }
    };
    let weight = match b.weight.map(u32::try_from) {
        None => None,
        Some(Ok(w)) => Some(w),
        Some(Err(_)) => return Err(error(format!("{at}.weight"), "weights are 0 or more")),
    };
    let service = ObjectRef::new(route.namespace.clone(), b.name);
    let name = canonical_name(&service, port, cluster_domain);
    backends.insert((service, port));
    Ok(WeightedBackend {
        backend: name,
        weight,
    })
}

fn header_match<T: Serialize>(
    at: &str,
    kind: Option<&T>,
    name: &str,
    value: &str,
) -> Result<HeaderMatch, FieldError> {
    let kind = kind.map(wire_name).unwrap_or_else(|| "Exact".to_string());
    if kind == "RegularExpression" {
        check_regex(&format!("{at}.value"), value)?;
    }
    Ok(HeaderMatch {
        r#type: kind,
        name: name.to_string(),
        value: value.to_string(),
    })
}

fn check_regex(at: &str, value: &str) -> Result<(), FieldError> {
    regex::Regex::new(value)
        .map(drop)
        .map_err(|e| error(at.to_string(), format!("invalid regular expression: {e}")))
}

fn duration(at: &str, value: Option<&str>) -> Result<u64, FieldError> {
    match value {
        None => Ok(0),
        Some(v) => parse_duration_ms(v)
            .map_err(|expected| error(at.to_string(), format!("{v:?} is not {expected}"))),
    }
}

/// The Gateway API spelling of a generated enum ("PathPrefix", "GET"), from its serde name.
fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}
