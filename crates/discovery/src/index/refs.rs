//! Whether a route's backendRefs resolve (Gateway API `ResolvedRefs`): a
//! core Service, in the route's namespace or in one whose ReferenceGrant
//! allows the route's kind from there, that exists. Decided here, against
//! what the index holds now, for the route status and the proxies alike; a
//! change to a Service's existence or to a namespace's grants decides again.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use gateway_api::referencegrants::ReferenceGrantSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::ledger::summary;
use super::routes::{BackendTarget, CONDITION_RESOLVED_REFS, ResolvedRefs, RouteInfo, RouteKey};
use super::watches::Changes;
use super::{Index, Kind, ObjectRef, Problem};

/// `ResolvedRefs=False` reasons (Gateway API).
pub const REASON_BACKEND_NOT_FOUND: &str = "BackendNotFound";
pub const REASON_REF_NOT_PERMITTED: &str = "RefNotPermitted";
pub const REASON_INVALID_KIND: &str = "InvalidKind";

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Gateway API's ReferenceGrant as `gateway.networking.k8s.io/v1beta1`, the
/// version every Gateway API release since v0.6 serves (the `gateway-api`
/// crate has only `v1`, with the same fields).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ReferenceGrant {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ReferenceGrantSpec,
}

impl kube::Resource for ReferenceGrant {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "ReferenceGrant".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        GATEWAY_GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1beta1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "referencegrants".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What a ReferenceGrant allows the mesh: routes of some kinds from some
/// namespaces may refer to Services of the grant's namespace. Entries for
/// other kinds (a Gateway's Secrets) belong to other controllers.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantInfo {
    from: BTreeSet<(Kind, String)>,
    /// Service names; `None`: every Service of the namespace.
    to: BTreeSet<Option<String>>,
}

impl GrantInfo {
    pub fn of(grant: &ReferenceGrant) -> Self {
        let from = grant
            .spec
            .from
            .iter()
            .filter(|f| f.group == GATEWAY_GROUP)
            .filter_map(|f| {
                let kind = match f.kind.as_str() {
                    "HTTPRoute" => Kind::HttpRoute,
                    "GRPCRoute" => Kind::GrpcRoute,
                    _ => return None,
                };
                Some((kind, f.namespace.clone()))
            })
            .collect();
        let to = grant
            .spec
            .to
            .iter()
            .filter(|t| t.group.is_empty() && t.kind == "Service")
            .map(|t| t.name.clone().filter(|n| !n.is_empty()))
            .collect();
        Self { from, to }
    }

    fn allows(&self, route: &RouteKey, service: &str) -> bool {
        self.from
            .contains(&(route.kind, route.route.namespace.clone()))
            && self
                .to
                .iter()
                .any(|name| name.as_deref().is_none_or(|n| n == service))
    }
}

/// Why a backendRef does not resolve.
#[derive(Clone, Debug, PartialEq)]
pub struct Unresolved {
    pub reason: &'static str,
    pub message: String,
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl Index {
    /// The Service port a backendRef of `route` reaches now, or why none.
    pub(super) fn resolve_backend<'t>(
        &self,
        route: &RouteKey,
        target: &'t BackendTarget,
    ) -> Result<(&'t ObjectRef, u16), Unresolved> {
        let (service, port) = match target {
            BackendTarget::Service { service, port } => (service, *port),
            BackendTarget::OtherKind(written) => {
                return Err(Unresolved {
                    reason: REASON_INVALID_KIND,
                    message: format!("{written} is not a Service"),
                });
            }
        };
        if service.namespace != route.route.namespace && !self.granted(route, service) {
            return Err(Unresolved {
                reason: REASON_REF_NOT_PERMITTED,
                message: format!(
                    "Service {service} is in another namespace, and no ReferenceGrant there \
                     allows {}s from namespace {}",
                    route.kind, route.route.namespace
                ),
            });
        }
        if !self.services.contains_key(service) {
            return Err(Unresolved {
                reason: REASON_BACKEND_NOT_FOUND,
                message: format!("Service {service} does not exist"),
            });
        }
        Ok((service, port))
    }

    fn granted(&self, route: &RouteKey, service: &ObjectRef) -> bool {
        let namespace = ObjectRef::new(service.namespace.clone(), "");
        self.grants
            .range(namespace..)
            .take_while(|(key, _)| key.namespace == service.namespace)
            .any(|(_, grant)| grant.allows(route, &service.name))
    }

    /// `ResolvedRefs` of a served route: each backendRef that does not
    /// resolve named in the message, the first one's reason the condition's.
    fn resolved_refs(&self, key: &RouteKey, info: &RouteInfo) -> ResolvedRefs {
        let unresolved: Vec<(&'static str, Problem)> = info
            .backend_refs
            .iter()
            .filter_map(|r| {
                let why = self.resolve_backend(key, &r.target).err()?;
                let problem = Problem::new(key.kind, &key.route, r.field.clone(), why.message);
                Some((why.reason, problem))
            })
            .collect();
        match unresolved.first() {
            None => ResolvedRefs {
                resolved: true,
                reason: CONDITION_RESOLVED_REFS.to_string(),
                message: String::new(),
            },
            Some((reason, _)) => {
                let problems: Vec<Problem> = unresolved.iter().map(|(_, p)| p.clone()).collect();
                ResolvedRefs {
                    resolved: false,
                    reason: reason.to_string(),
                    message: summary(&problems),
                }
            }
        }
    }

    /// Decides a route's `ResolvedRefs` again (its status changes only if
    /// the condition does).
    pub(super) fn refresh_resolved_refs(&mut self, key: &RouteKey) {
        let resolved = self
            .routes
            .get(key)
            .map(|route| self.resolved_refs(key, route));
        let Some(status) = self.route_status.get(key) else {
            return;
        };
        if status.resolved_refs != resolved {
            let mut status = status.clone();
            status.resolved_refs = resolved;
            self.set_route_status(key.clone(), Some(status));
        }
    }

    /// Decides again for the routes whose backendRefs name a Service that
    /// changed, or a Service of a namespace whose grants changed.
    pub(super) fn refresh_routes_referring_to(&mut self, changes: &Changes) {
        let mut routes: BTreeSet<RouteKey> = changes
            .services
            .iter()
            .filter_map(|s| self.routes_by_backend.get(s))
            .flatten()
            .cloned()
            .collect();
        if !changes.grant_namespaces.is_empty() {
            routes.extend(
                self.routes_by_backend
                    .iter()
                    .filter(|(s, _)| changes.grant_namespaces.contains(&s.namespace))
                    .flat_map(|(_, routes)| routes.iter().cloned()),
            );
        }
        for key in routes {
            self.refresh_resolved_refs(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use gateway_api::experimental::httproutes::HttpRoute;
    use k8s_openapi::api::core::v1::Service;
    use plexus_api::v1::WeightedBackend;
    use serde_json::{Value, json};

    use super::*;
    use crate::index::IndexConfig;

    fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
        serde_json::from_value(value).expect("test object")
    }

    fn service(ns: &str, name: &str, ip: &str) -> Service {
        from(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
        }))
    }

    /// The HTTPRoute `shop/split` on `web:80`, splitting over `backend_refs`.
    fn split(backend_refs: Value) -> HttpRoute {
        from(json!({
            "metadata": {"namespace": "shop", "name": "split", "generation": 1},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                "rules": [{"backendRefs": backend_refs}],
            },
        }))
    }

    /// A grant in `ns` for HTTPRoutes from `shop` to the Service `to` (all: `None`).
    fn grant(ns: &str, to: Option<&str>) -> ReferenceGrant {
        from(json!({
            "metadata": {"namespace": ns, "name": "from-shop"},
            "spec": {
                "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
                "to": [{"group": "", "kind": "Service", "name": to}],
            },
        }))
    }

    fn index_with_web() -> Index {
        let mut index = Index::new(IndexConfig::default());
        index.apply(service("shop", "web", "10.96.0.10"));
        index
    }

    fn resolved_refs(index: &Index) -> ResolvedRefs {
        let status = index.route_statuses().remove(0);
        assert!(status.parents[0].accepted, "the route applies: {status:?}");
        status
            .resolved_refs
            .expect("a served route has ResolvedRefs")
    }

    /// The first rule's weighted backends, as proxies of `web:80` get them.
    fn split_backends(index: &mut Index) -> Vec<WeightedBackend> {
        let view = index.resolve("web.shop:80", "").unwrap();
        let target = view.meshed.clone().expect("web is meshed");
        target.routes.value.http[0].rules[0].backends.clone()
    }

    #[test]
    fn every_backend_ref_resolving_is_resolved_refs_true() {
        let mut index = index_with_web();
        index.apply(split(json!([{"name": "web", "port": 80}])));
        let refs = resolved_refs(&index);
        assert_eq!(
            (refs.resolved, refs.reason.as_str()),
            (true, "ResolvedRefs")
        );
        assert_eq!(split_backends(&mut index)[0].unresolved, "");
    }

    #[test]
    fn a_missing_service_is_backend_not_found_and_its_share_marked() {
        let mut index = index_with_web();
        index.apply(split(json!([
            {"name": "web", "port": 80, "weight": 1},
            {"name": "gone", "port": 80, "weight": 1},
        ])));
        let refs = resolved_refs(&index);
        assert_eq!(
            (refs.resolved, refs.reason.as_str(), refs.message.as_str()),
            (
                false,
                "BackendNotFound",
                "spec.rules[0].backendRefs[1]: Service shop/gone does not exist"
            )
        );
        let backends = split_backends(&mut index);
        assert_eq!(backends[0].unresolved, "");
        assert_eq!(
            backends[1].unresolved,
            "BackendNotFound: Service shop/gone does not exist"
        );
        assert_eq!(backends[1].backend, "gone.shop.svc.cluster.local:80");
    }

    #[test]
    fn another_kind_is_invalid_kind() {
        let mut index = index_with_web();
        index.apply(split(json!([
            {"group": "example.com", "kind": "Bucket", "name": "assets"},
        ])));
        let refs = resolved_refs(&index);
        assert_eq!(
            (refs.resolved, refs.reason.as_str(), refs.message.as_str()),
            (
                false,
                "InvalidKind",
                "spec.rules[0].backendRefs[0]: Bucket.example.com shop/assets is not a Service"
            )
        );
        assert_eq!(
            split_backends(&mut index)[0].unresolved,
            "InvalidKind: Bucket.example.com shop/assets is not a Service"
        );
    }

    #[test]
    fn another_namespace_needs_a_reference_grant_there() {
        let mut index = index_with_web();
        index.apply(service("data", "db", "10.96.0.20"));
        index.apply(split(
            json!([{"name": "db", "namespace": "data", "port": 80}]),
        ));
        let refs = resolved_refs(&index);
        assert_eq!(
            (refs.resolved, refs.reason.as_str()),
            (false, "RefNotPermitted")
        );
        assert!(
            refs.message.starts_with(
                "spec.rules[0].backendRefs[0]: Service data/db is in another namespace"
            ),
            "{}",
            refs.message
        );
        // A grant in the route's own namespace, or for another Service, is not one.
        index.apply(grant("shop", None));
        index.apply(ReferenceGrant {
            metadata: from(json!({"namespace": "data", "name": "other"})),
            ..grant("data", Some("cache"))
        });
        assert_eq!(resolved_refs(&index).reason, "RefNotPermitted");

        index.apply(grant("data", Some("db")));
        assert!(resolved_refs(&index).resolved);
        let backends = split_backends(&mut index);
        assert_eq!(backends[0].unresolved, "");
        let view = index.resolve("web.shop:80", "").unwrap();
        let table = &view.meshed.as_ref().unwrap().backends.value.backends;
        assert!(
            table.contains_key("db.data.svc.cluster.local:80"),
            "the granted backend is served: {table:?}"
        );
    }

    #[test]
    fn services_and_grants_coming_and_going_decide_again_and_reach_watchers() {
        let mut index = index_with_web();
        index.apply(split(json!([
            {"name": "gone", "port": 80},
            {"name": "db", "namespace": "data", "port": 80},
        ])));
        let rx = index.watch_target("web.shop:80", "").unwrap();
        let mut statuses = index.watch_route_statuses();
        statuses.mark_unchanged();
        let unresolved = |rx: &tokio::sync::watch::Receiver<_>| -> Vec<String> {
            let view: &std::sync::Arc<crate::index::TargetView> = &rx.borrow();
            let target = view.meshed.as_ref().unwrap();
            target.routes.value.http[0].rules[0]
                .backends
                .iter()
                .map(|b| {
                    b.unresolved
                        .split(':')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(unresolved(&rx), ["BackendNotFound", "RefNotPermitted"]);

        index.apply(service("shop", "gone", "10.96.0.11"));
        assert!(statuses.has_changed().unwrap(), "the status writer is told");
        assert!(rx.has_changed().unwrap());
        assert_eq!(unresolved(&rx), ["", "RefNotPermitted"]);
        assert_eq!(resolved_refs(&index).reason, "RefNotPermitted");

        index.apply(grant("data", None));
        assert_eq!(
            unresolved(&rx),
            ["", "BackendNotFound"],
            "granted; db is missing"
        );
        index.apply(service("data", "db", "10.96.0.20"));
        assert!(resolved_refs(&index).resolved);
        assert_eq!(unresolved(&rx), ["", ""]);

        index.delete::<ReferenceGrant>(&ObjectRef::new("data", "from-shop"));
        assert_eq!(resolved_refs(&index).reason, "RefNotPermitted");
        index.delete::<Service>(&ObjectRef::new("shop", "gone"));
        let refs = resolved_refs(&index);
        assert!(
            refs.message
                .contains("backendRefs[0]: Service shop/gone does not exist")
                && refs
                    .message
                    .contains("backendRefs[1]: Service data/db is in another namespace"),
            "{}",
            refs.message
        );
        assert_eq!(unresolved(&rx), ["BackendNotFound", "RefNotPermitted"]);
    }

    #[test]
    fn a_grant_for_other_kinds_or_namespaces_allows_nothing() {
        let grant: ReferenceGrant = from(json!({
            "metadata": {"namespace": "data", "name": "g"},
            "spec": {
                "from": [
                    {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "shop"},
                    {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute", "namespace": "shop"},
                    {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "edge"},
                ],
                "to": [{"group": "", "kind": "Secret"}, {"group": "", "kind": "Service"}],
            },
        }));
        let info = GrantInfo::of(&grant);
        let route = |kind, ns: &str| RouteKey {
            kind,
            route: ObjectRef::new(ns, "r"),
        };
        assert!(!info.allows(&route(Kind::HttpRoute, "shop"), "db"));
        assert!(info.allows(&route(Kind::GrpcRoute, "shop"), "db"));
        assert!(info.allows(&route(Kind::HttpRoute, "edge"), "db"));
        assert!(!info.allows(&route(Kind::HttpRoute, "other"), "db"));
    }
}
