//! Gateway API HTTPRoute and GRPCRoute attached to Services (GAMMA), turned
//! into the Destination API's route model, with the status each parent gets.

use std::collections::HashMap;

use gateway_api::experimental::grpcroutes::{
    GrpcRoute as GRPCRoute, GrpcRouteParentRefs, GrpcRouteRules, GrpcRouteRulesBackendRefs,
    GrpcRouteRulesMatchesHeaders,
};
use gateway_api::experimental::httproutes::{
    HttpRoute as HTTPRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs,
    HttpRouteRulesFiltersRequestMirrorBackendRef, HttpRouteRulesMatchesHeaders,
    HttpRouteRulesMatchesQueryParams,
};
use k8s_openapi::jiff::Timestamp;
use plexus_api::v1::{
    BackendFilters, Fault, GrpcMatch, GrpcRouteRule, HeaderMatch, HttpMatch, HttpRouteRule,
    PathMatch, RetryPolicy, Timeouts, WeightedBackend,
};
use serde::Serialize;
use serde_json::Value;

use super::annotations::{Annotations, parse_duration_ms};
use super::filters;
use super::ledger::summary;
use super::lookup::canonical_name;
use super::{Kind, ObjectRef, Problem, Unreadable};
use super::{fault, grpc_retry};

/// Retries when a route's `retry` leaves `attempts` out (Gateway API: implementation-specific).
const DEFAULT_RETRIES: u32 = 2;
/// Codes retried when a route's `retry` leaves `codes` out.
const DEFAULT_RETRY_CODES: [u32; 3] = [502, 503, 504];

/// Gateway API condition reasons used in route status.
pub const REASON_ACCEPTED: &str = "Accepted";
pub const REASON_UNSUPPORTED_VALUE: &str = "UnsupportedValue";
pub const REASON_NOT_ALLOWED: &str = "NotAllowedByParent";
/// The Gateway API condition type of a route whose newest generation is
/// refused while an earlier one is served ("Fall Back").
pub const CONDITION_PARTIALLY_INVALID: &str = "PartiallyInvalid";
/// The Gateway API condition type saying whether every backendRef resolves;
/// also its reason when they do.
pub const CONDITION_RESOLVED_REFS: &str = "ResolvedRefs";

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

impl RouteRules {
    /// The rules with each weighted backend in `unresolved` (by its
    /// `backend`) marked with why, so the proxy answers its share with 500;
    /// a mirror to one is marked alike, and mirrors nothing.
    pub fn with_unresolved(&self, unresolved: &HashMap<&str, String>) -> RouteRules {
        let mark = |backends: &mut Vec<WeightedBackend>| {
            for b in backends {
                if let Some(why) = unresolved.get(b.backend.as_str()) {
                    b.unresolved.clone_from(why);
                }
            }
        };
        let mut rules = self.clone();
        match &mut rules {
            RouteRules::Http(rules) => rules.iter_mut().for_each(|r| {
                mark(&mut r.backends);
                let mirrors = r.filters.iter_mut().flat_map(|f| &mut f.request_mirrors);
                for m in mirrors {
                    if let Some(why) = unresolved.get(m.backend.as_str()) {
                        m.unresolved.clone_from(why);
                    }
                }
            }),
            RouteRules::Grpc(rules) => rules.iter_mut().for_each(|r| mark(&mut r.backends)),
        }
        rules
    }
}

/// What a backendRef names. Whether it resolves depends on what the index
/// holds at the time (`Index::resolve_backend`), so it is decided there,
/// for the route status and for the proxies alike.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendTarget {
    /// A Service port, in the route's namespace or another.
    Service { service: ObjectRef, port: u16 },
    /// Anything but a core Service, as written: `Kind.group namespace/name`.
    OtherKind(String),
}

/// One backendRef of a route's rules.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendRefInfo {
    /// Where it is written, `spec.rules[0].backendRefs[1]`.
    pub field: String,
    /// The `backend` of its weighted backend: the Service port's canonical
    /// name, or the reference as written for other kinds.
    pub key: String,
    pub target: BackendTarget,
}

/// An accepted route, ready to be put in targets.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteInfo {
    pub created: Option<Timestamp>,
    pub parents: Vec<ServiceParent>,
    pub rules: RouteRules,
    /// Every backendRef of the rules, in order.
    pub backend_refs: Vec<BackendRefInfo>,
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

/// Gateway API's `ResolvedRefs` condition of a served route: the same for
/// each parent that accepts it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResolvedRefs {
    pub resolved: bool,
    /// `ResolvedRefs`, else the reason of the first backendRef that does not
    /// resolve (`BackendNotFound`, `RefNotPermitted`, `InvalidKind`).
    pub reason: String,
    /// Each backendRef that does not resolve, by field, and why.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteStatus {
    pub kind: Kind,
    pub route: ObjectRef,
    /// Per Service parent of the newest version.
    pub parents: Vec<ParentStatus>,
    /// `metadata.generation` of the newest version.
    #[serde(skip)]
    pub generation: Option<i64>,
    /// `metadata.generation` of the version served; older than `generation`
    /// while the newest is refused.
    #[serde(skip)]
    pub served_generation: Option<i64>,
    /// Every bad field of the newest version, when it is refused while an
    /// earlier version is served (Gateway API's "Fall Back").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Whether the served version's backendRefs resolve; `None` while
    /// nothing of the route is served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_refs: Option<ResolvedRefs>,
    /// `status.parents` as the object carried it (every controller's).
    #[serde(skip)]
    pub existing: Vec<Value>,
}

/// The result of reading a route: the route if any parent accepts it, its
/// status (when it names a Service at all), and its problems (every bad field).
pub struct Converted {
    pub info: Option<RouteInfo>,
    pub status: Option<RouteStatus>,
    pub problems: Vec<Problem>,
}

/// A field and what is wrong with it.
pub(super) struct FieldError {
    field: String,
    message: String,
}

pub(super) fn error(field: String, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// Every bad field found reading a route: reading goes on past the first, so
/// one status message and one log line name them all.
#[derive(Default)]
pub(super) struct FieldErrors(pub(super) Vec<FieldError>);

impl FieldErrors {
    /// The value, or `None` with its error kept.
    pub(super) fn check<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        result.map_err(|e| self.0.push(e)).ok()
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

/// The fields of a backendRef, the same in HTTPRoute and GRPCRoute (and in
/// a mirror's, without a weight).
pub(super) struct BackendRef<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
    weight: Option<i32>,
}

/// The fields of a header or query-param match, the same in HTTPRoute and GRPCRoute.
struct ValueMatch<'a> {
    /// The Gateway API spelling of the match type, if given.
    kind: Option<String>,
    name: &'a str,
    value: &'a str,
}

// The generated Gateway API types repeat these shapes under a name per route kind
// (and per field): one conversion each, stamped out for every generated type.
macro_rules! from_generated {
    (|$v:ident| $target:ident $fields:tt, $($generated:ty),+) => {$(
        impl<'a> From<&'a $generated> for $target<'a> {
            fn from($v: &'a $generated) -> Self {
                $target $fields
            }
        }
    )+};
}

from_generated!(
    |p| ParentRef {
        group: p.group.as_deref(),
        kind: p.kind.as_deref(),
        name: &p.name,
        namespace: p.namespace.as_deref(),
        port: p.port,
        section_name: p.section_name.as_deref(),
    },
    HttpRouteParentRefs,
    GrpcRouteParentRefs
);
from_generated!(
    |b| BackendRef {
        group: b.group.as_deref(),
        kind: b.kind.as_deref(),
        name: &b.name,
        namespace: b.namespace.as_deref(),
        port: b.port,
        weight: b.weight,
    },
    HttpRouteRulesBackendRefs,
    GrpcRouteRulesBackendRefs
);
from_generated!(
    |b| BackendRef {
        group: b.group.as_deref(),
        kind: b.kind.as_deref(),
        name: &b.name,
        namespace: b.namespace.as_deref(),
        port: b.port,
        weight: None,
    },
    HttpRouteRulesFiltersRequestMirrorBackendRef
);
from_generated!(
    |m| ValueMatch {
        kind: m.r#type.as_ref().map(wire_name),
        name: &m.name,
        value: &m.value,
    },
    HttpRouteRulesMatchesHeaders,
    HttpRouteRulesMatchesQueryParams,
    GrpcRouteRulesMatchesHeaders
);

pub fn http_route(route: &HTTPRoute, cluster_domain: &str) -> Converted {
    let mut reader = RuleReader::new(&route.metadata, cluster_domain);
    let mut annotations = Annotations::new(route.metadata.annotations.as_ref());
    let fault = fault::fault(&mut annotations);
    reader.annotation_errors(annotations);
    let rules = each("spec.rules", &route.spec.rules, |at, rule| {
        Some(http_rule(&mut reader, at, rule, fault.as_ref()))
    });
    convert(
        Kind::HttpRoute,
        &route.metadata,
        &route.spec.parent_refs,
        RouteRules::Http(rules),
        reader,
        serde_json::to_value(&route.status).ok(),
    )
}

pub fn grpc_route(route: &GRPCRoute, cluster_domain: &str) -> Converted {
    let mut reader = RuleReader::new(&route.metadata, cluster_domain);
    let mut annotations = Annotations::new(route.metadata.annotations.as_ref());
    let retry = grpc_retry::grpc_retry(&mut annotations, DEFAULT_RETRIES);
    let fault = fault::fault(&mut annotations);
    reader.annotation_errors(annotations);
    let rules = each("spec.rules", &route.spec.rules, |at, rule| {
        Some(grpc_rule(
            &mut reader,
            at,
            rule,
            retry.as_ref(),
            fault.as_ref(),
        ))
    });
    convert(
        Kind::GrpcRoute,
        &route.metadata,
        &route.spec.parent_refs,
        RouteRules::Grpc(rules),
        reader,
        serde_json::to_value(&route.status).ok(),
    )
}

/// A parentRef that names a Service (GAMMA), as the status echoes it.
struct ServiceParentRef<'a> {
    /// `Service namespace/name[:port]`.
    parent: String,
    parent_ref: Value,
    namespace: &'a str,
    /// `Some(None)`: a port was given that is not a port number.
    port: Option<Option<u16>>,
}

/// `None` for parents that are not Services (Gateways belong to other controllers).
fn service_parent<'a>(p: &ParentRef<'a>, route_namespace: &'a str) -> Option<ServiceParentRef<'a>> {
    // GAMMA: a Service parent is group "" (core) and kind Service.
    let is_service = matches!(p.group, Some("" | "core")) && p.kind == Some("Service");
    if !is_service {
        return None;
    }
    let namespace = p.namespace.unwrap_or(route_namespace);
    let port = p
        .port
        .map(|port| u16::try_from(port).ok().filter(|port| *port != 0));
    let parent = match port.flatten() {
        Some(port) => format!("Service {namespace}/{}:{port}", p.name),
        None => format!("Service {namespace}/{}", p.name),
    };
    Some(ServiceParentRef {
        parent,
        parent_ref: serde_json::to_value(p).unwrap_or(Value::Null),
        namespace,
        port,
    })
}

fn convert<'a, P: 'a>(
    kind: Kind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    parent_refs: &'a Option<Vec<P>>,
    rules: RouteRules,
    reader: RuleReader<'_>,
    status: Option<Value>,
) -> Converted
where
    ParentRef<'a>: From<&'a P>,
{
    let existing = match status.as_ref().and_then(|s| s.get("parents")) {
        Some(Value::Array(parents)) => parents.clone(),
        _ => Vec::new(),
    };
    let key = ObjectRef::of(meta);
    let rule_problems: Vec<Problem> = reader
        .errors
        .0
        .into_iter()
        .map(|e| Problem::new(kind, &key, e.field, e.message))
        .collect();
    let mut problems = Vec::new();
    let mut accepted = Vec::new();
    let mut statuses = Vec::new();
    let parent_refs: Vec<ParentRef<'a>> =
        parent_refs.iter().flatten().map(ParentRef::from).collect();
    for (i, p) in parent_refs.iter().enumerate() {
        let Some(sp) = service_parent(p, &key.namespace) else {
            continue;
        };
        let refusal = if sp.namespace != key.namespace {
            Some((
                REASON_NOT_ALLOWED,
                format!("spec.parentRefs[{i}]"),
                format!(
                    "Service {}/{} is in another namespace; \
                     routes for a Service must live in its namespace",
                    sp.namespace, p.name
                ),
            ))
        } else if sp.port == Some(None) {
            Some((
                REASON_UNSUPPORTED_VALUE,
                format!("spec.parentRefs[{i}].port"),
                "not a port number".to_string(),
            ))
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
                    parent: sp.parent,
                    parent_ref: sp.parent_ref,
                    accepted: false,
                    reason: reason.to_string(),
                    message: format!("{field}: {message}"),
                }
            }
            None if !rule_problems.is_empty() => ParentStatus {
                parent: sp.parent,
                parent_ref: sp.parent_ref,
                accepted: false,
                reason: REASON_UNSUPPORTED_VALUE.to_string(),
                message: summary(&rule_problems),
            },
            None => {
                accepted.push(ServiceParent {
                    service: ObjectRef::new(sp.namespace, p.name),
                    port: sp.port.flatten(),
                    section: p.section_name.map(str::to_string),
                });
                ParentStatus {
                    parent: sp.parent,
                    parent_ref: sp.parent_ref,
                    accepted: true,
                    reason: REASON_ACCEPTED.to_string(),
                    message: String::new(),
                }
            }
        };
        statuses.push(status);
    }
    if statuses.is_empty() {
        // Not a mesh route: its fields are for its Gateways' controllers to judge.
        return Converted {
            info: None,
            status: None,
            problems,
        };
    }
    problems.extend(rule_problems);
    let info = (!accepted.is_empty()).then(|| RouteInfo {
        created: meta.creation_timestamp.as_ref().map(|t| t.0),
        parents: accepted,
        rules,
        backend_refs: reader.backend_refs,
    });
    Converted {
        info,
        status: Some(RouteStatus {
            kind,
            route: key,
            parents: statuses,
            generation: meta.generation,
            served_generation: meta.generation,
            refused: None,
            resolved_refs: None,
            existing,
        }),
        problems,
    }
}

/// The status of a route that could not be read: refused by each Service
/// parent that can be made out of its `spec.parentRefs` (maybe none).
pub fn unreadable_status(object: &Unreadable) -> RouteStatus {
    let key = object.key();
    let refused = summary(&object.problems);
    let parents = object
        .parent_refs
        .iter()
        .filter_map(|raw| {
            // HTTPRoute and GRPCRoute parentRefs have the same fields.
            let typed: HttpRouteParentRefs = serde_json::from_value(raw.clone()).ok()?;
            let p = ParentRef::from(&typed);
            let sp = service_parent(&p, &key.namespace)?;
            Some(ParentStatus {
                parent: sp.parent,
                parent_ref: sp.parent_ref,
                accepted: false,
                reason: REASON_UNSUPPORTED_VALUE.to_string(),
                message: refused.clone(),
            })
        })
        .collect();
    RouteStatus {
        kind: object.kind,
        route: key,
        parents,
        generation: object.meta.generation,
        served_generation: None,
        refused: None,
        resolved_refs: None,
        existing: object.status_parents.clone(),
    }
}

/// The status while the newest version (`latest`, refused for `problems`)
/// waits and `served` (the status of the version in force) stays: Gateway
/// API's "Fall Back". Each parent the served version attaches to stays
/// accepted (for the served generation) with the refusal in its message; the
/// others are refused. `latest` without parents (unreadable ones): the served
/// version's parents.
pub fn fall_back(
    served: Option<&RouteStatus>,
    latest: RouteStatus,
    problems: &[Problem],
) -> Option<RouteStatus> {
    let Some(served) = served else {
        return (!latest.parents.is_empty()).then_some(latest);
    };
    let refused = summary(problems);
    let generation = |g: Option<i64>, otherwise: &str| match g {
        Some(g) if g != 0 => format!("generation {g}"),
        _ => otherwise.to_string(),
    };
    let message = format!(
        "Fall Back: {} refused ({refused}); {} stays in force",
        generation(latest.generation, "the newest version"),
        generation(served.served_generation, "the last accepted version"),
    );
    let serving = |p: &ParentStatus| {
        served
            .parents
            .iter()
            .any(|s| s.accepted && s.parent_ref == p.parent_ref)
    };
    let parents = match latest.parents.is_empty() {
        true => served.parents.clone(),
        false => latest.parents,
    };
    let parents = parents
        .into_iter()
        .map(|p| {
            if serving(&p) {
                ParentStatus {
                    accepted: true,
                    reason: REASON_ACCEPTED.to_string(),
                    message: message.clone(),
                    ..p
                }
            } else if p.accepted {
                // Accepted by the refused version alone, which is not served.
                ParentStatus {
                    accepted: false,
                    reason: REASON_UNSUPPORTED_VALUE.to_string(),
                    message: refused.clone(),
                    ..p
                }
            } else {
                p
            }
        })
        .collect();
    Some(RouteStatus {
        parents,
        served_generation: served.served_generation,
        refused: Some(refused),
        ..latest
    })
}

/// What a route's rules are read against, every backendRef they hold, and
/// every bad field found.
pub(super) struct RuleReader<'a> {
    route: ObjectRef,
    cluster_domain: &'a str,
    backend_refs: Vec<BackendRefInfo>,
    pub(super) errors: FieldErrors,
}

impl<'a> RuleReader<'a> {
    /// The route's bad annotations, each named like a bad field of its spec.
    fn annotation_errors(&mut self, annotations: Annotations<'_>) {
        for bad in annotations.errors {
            self.errors.0.push(error(bad.field(), bad.message));
        }
    }

    fn new(
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        cluster_domain: &'a str,
    ) -> Self {
        Self {
            route: ObjectRef::of(meta),
            cluster_domain,
            backend_refs: Vec::new(),
            errors: FieldErrors::default(),
        }
    }

    /// A rule's backendRefs as weighted backends, noting each one read;
    /// `filters` reads a backendRef's filters.
    fn backend_refs<'b, B: 'b>(
        &mut self,
        at: &str,
        refs: &'b Option<Vec<B>>,
        mut filters: impl FnMut(&mut FieldErrors, &str, &'b B) -> Option<BackendFilters>,
    ) -> Vec<WeightedBackend>
    where
        BackendRef<'b>: From<&'b B>,
    {
        each(&format!("{at}.backendRefs"), refs, |at, b| {
            let backend = self.backend(at, BackendRef::from(b));
            let filters = filters(&mut self.errors, at, b);
            let backend = self.errors.check(backend)?;
            Some(WeightedBackend { filters, ..backend })
        })
    }

    /// A backendRef as a weighted backend, noted in `backend_refs`. One that
    /// names another kind or namespace reads: whether it resolves is the
    /// route status's `ResolvedRefs`, not a bad field.
    pub(super) fn backend(
        &mut self,
        at: &str,
        b: BackendRef<'_>,
    ) -> Result<WeightedBackend, FieldError> {
        let weight = match b.weight.map(u32::try_from) {
            None => None,
            Some(Ok(w)) => Some(w),
            Some(Err(_)) => return Err(error(format!("{at}.weight"), "weights are 0 or more")),
        };
        let namespace = b.namespace.unwrap_or(&self.route.namespace);
        let group = b.group.unwrap_or("");
        let kind = b.kind.unwrap_or("Service");
        let target = if matches!(group, "" | "core") && kind == "Service" {
            let port = match b.port.map(u16::try_from) {
                Some(Ok(port)) if port != 0 => port,
                _ => {
                    return Err(error(
                        format!("{at}.port"),
                        "a Service backend needs a port",
                    ));
                }
            };
            BackendTarget::Service {
                service: ObjectRef::new(namespace, b.name),
                port,
            }
        } else {
            let kind = match group {
                "" | "core" => kind.to_string(),
                group => format!("{kind}.{group}"),
            };
            BackendTarget::OtherKind(format!("{kind} {namespace}/{}", b.name))
        };
        let key = match &target {
            BackendTarget::Service { service, port } => {
                canonical_name(service, *port, self.cluster_domain)
            }
            BackendTarget::OtherKind(written) => written.clone(),
        };
        self.backend_refs.push(BackendRefInfo {
            field: at.to_string(),
            key: key.clone(),
            target,
        });
        Ok(WeightedBackend {
            backend: key,
            weight,
            unresolved: String::new(),
            filters: None,
        })
    }
}

/// A rule as far as it reads; its bad fields are in `reader.errors` (and
/// refuse the whole route).
/// `fault`: the route's, from its annotations ([`fault::fault`]).
fn http_rule(
    reader: &mut RuleReader<'_>,
    at: &str,
    rule: &HttpRouteRules,
    fault: Option<&Fault>,
) -> HttpRouteRule {
    let matches = each(&format!("{at}.matches"), &rule.matches, |at, m| {
        let path = m.path.as_ref().and_then(|path| {
            let kind = path
                .r#type
                .as_ref()
                .map(wire_name)
                .unwrap_or_else(|| "PathPrefix".into());
            let value = path.value.clone().unwrap_or_else(|| "/".to_string());
            let checked = if kind == "RegularExpression" {
                check_regex(&format!("{at}.path.value"), &value)
            } else if !value.starts_with('/') {
                Err(error(
                    format!("{at}.path.value"),
                    format!("{value:?} does not start with /"),
                ))
            } else {
                Ok(())
            };
            reader.errors.check(checked).map(|()| PathMatch {
                r#type: kind,
                value,
            })
        });
        let headers = value_matches(&mut reader.errors, &format!("{at}.headers"), &m.headers);
        let query_params = value_matches(
            &mut reader.errors,
            &format!("{at}.queryParams"),
            &m.query_params,
        );
        Some(HttpMatch {
            path,
            headers,
            query_params,
            method: m.method.as_ref().map(wire_name).unwrap_or_default(),
        })
    });
    let weighted = reader.backend_refs(at, &rule.backend_refs, |errors, at, b| {
        filters::backend_filters(errors, at, &b.filters)
    });
    let has_backends = rule.backend_refs.as_ref().is_some_and(|b| !b.is_empty());
    let filters = filters::http_filters(reader, at, &rule.filters, &matches, has_backends);
    let errors = &mut reader.errors;
    let timeouts = rule.timeouts.as_ref().map(|t| Timeouts {
        request_ms: duration(
            errors,
            &format!("{at}.timeouts.request"),
            t.request.as_deref(),
        ),
        backend_request_ms: duration(
            errors,
            &format!("{at}.timeouts.backendRequest"),
            t.backend_request.as_deref(),
        ),
    });
    let retry = rule.retry.as_ref().map(|r| {
        let retries = match r.attempts {
            None => DEFAULT_RETRIES,
            Some(n) => errors
                .check(u32::try_from(n).map_err(|_| {
                    error(
                        format!("{at}.retry.attempts"),
                        format!("{n} is not a number of retries"),
                    )
                }))
                .unwrap_or(DEFAULT_RETRIES),
        };
        let codes = match &r.codes {
            None => DEFAULT_RETRY_CODES.to_vec(),
            Some(codes) => codes
                .iter()
                .enumerate()
                .filter_map(|(k, c)| {
                    let code = match u32::try_from(*c) {
                        Ok(c) if (400..=599).contains(&c) => Ok(c),
                        _ => Err(error(
                            format!("{at}.retry.codes[{k}]"),
                            format!("{c} is not an HTTP error status"),
                        )),
                    };
                    errors.check(code)
                })
                .collect(),
        };
        RetryPolicy {
            // The proto counts attempts with the first; Gateway API counts retries.
            attempts: retries.saturating_add(1),
            codes,
            grpc_codes: Vec::new(),
            backoff_base_ms: duration(errors, &format!("{at}.retry.backoff"), r.backoff.as_deref()),
            backoff_max_ms: 0,
        }
    });
    HttpRouteRule {
        matches,
        backends: weighted,
        timeouts,
        retry,
        filters,
        fault: fault.cloned(),
    }
}

fn grpc_rule(
    reader: &mut RuleReader<'_>,
    at: &str,
    rule: &GrpcRouteRules,
    retry: Option<&RetryPolicy>,
    fault: Option<&Fault>,
) -> GrpcRouteRule {
    let filters = filters::grpc_filters(&mut reader.errors, at, &rule.filters);
    let matches = each(&format!("{at}.matches"), &rule.matches, |at, m| {
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
            reader
                .errors
                .check(check_regex(&format!("{at}.method.service"), &service));
            reader
                .errors
                .check(check_regex(&format!("{at}.method.method"), &method));
        }
        Some(GrpcMatch {
            r#type: kind,
            service,
            method,
            headers: value_matches(&mut reader.errors, &format!("{at}.headers"), &m.headers),
        })
    });
    let weighted = reader.backend_refs(at, &rule.backend_refs, |errors, at, b| {
        if b.filters.as_ref().is_some_and(|f| !f.is_empty()) {
            errors.check::<()>(Err(error(
                format!("{at}.filters"),
                "backendRef filters are not supported on a GRPCRoute",
            )));
        }
        None
    });
    GrpcRouteRule {
        matches,
        backends: weighted,
        timeouts: None,
        retry: retry.cloned(),
        filters,
        fault: fault.cloned(),
    }
}

/// Reads each item of an optional list, naming it `{at}[i]`; every item is
/// read (errors are collected by `read`), those that read are returned.
fn each<'a, T, U>(
    at: &str,
    list: &'a Option<Vec<T>>,
    mut read: impl FnMut(&str, &'a T) -> Option<U>,
) -> Vec<U> {
    list.iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, item)| read(&format!("{at}[{i}]"), item))
        .collect()
}

/// The header (or query-param) matches listed at `at`.
fn value_matches<'a, M: 'a>(
    errors: &mut FieldErrors,
    at: &str,
    list: &'a Option<Vec<M>>,
) -> Vec<HeaderMatch>
where
    ValueMatch<'a>: From<&'a M>,
{
    each(at, list, |at, m| {
        errors.check(header_match(at, ValueMatch::from(m)))
    })
}

fn header_match(at: &str, m: ValueMatch<'_>) -> Result<HeaderMatch, FieldError> {
    let kind = m.kind.unwrap_or_else(|| "Exact".to_string());
    if kind == "RegularExpression" {
        check_regex(&format!("{at}.value"), m.value)?;
    }
    Ok(HeaderMatch {
        r#type: kind,
        name: m.name.to_string(),
        value: m.value.to_string(),
    })
}

fn check_regex(at: &str, value: &str) -> Result<(), FieldError> {
    regex::Regex::new(value)
        .map(drop)
        .map_err(|e| error(at.to_string(), format!("invalid regular expression: {e}")))
}

/// Milliseconds of a Gateway API duration; 0 when unset or bad (kept in `errors`).
fn duration(errors: &mut FieldErrors, at: &str, value: Option<&str>) -> u64 {
    let parsed = match value {
        None => Ok(0),
        Some(v) => parse_duration_ms(v)
            .map_err(|expected| error(at.to_string(), format!("{v:?} is not {expected}"))),
    };
    errors.check(parsed).unwrap_or(0)
}

/// The Gateway API spelling of a generated enum ("PathPrefix", "GET"), from its serde name.
pub(super) fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}
