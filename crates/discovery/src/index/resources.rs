//! How each Kubernetes kind enters and leaves the index, keeping the reverse
//! maps (ClusterIP, pod IP, pod -> Services, Service -> routes attached to
//! it and routes referring to it) in step and
//! recording what changed for the watches.
//!
//! A version with problems is refused while an earlier one is served (see
//! `ledger`), per kind: a Namespace, a Service and a route are configuration,
//! kept whole; a Pod keeps its served mesh annotations while its IPs and
//! readiness follow the new version (they are what exists now); an
//! EndpointSlice is only state: its valid endpoints always apply.

use gateway_api::experimental::grpcroutes::GrpcRoute as GRPCRoute;
use gateway_api::experimental::httproutes::HttpRoute as HTTPRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::ledger::Admission;
use super::model::Stored;
use super::refs::{GrantInfo, ReferenceGrant};
use super::routes::{self, BackendTarget, Converted, RouteKey};
use super::watches::Changes;
use super::{Index, Kind, ObjectRef, Unreadable, Version, model};

/// A Kubernetes kind the index reads. Feeds call [`Index::apply`],
/// [`Index::delete`], [`Index::reset`] and [`Index::refuse`] with it.
pub trait IndexedResource: Sized {
    const KIND: Kind;

    fn metadata(&self) -> &ObjectMeta;

    fn key(&self) -> ObjectRef {
        ObjectRef::of(self.metadata())
    }

    #[doc(hidden)]
    fn apply_to(self, index: &mut Index, changes: &mut Changes);
    #[doc(hidden)]
    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes);
    #[doc(hidden)]
    fn keys(index: &Index) -> Vec<ObjectRef>;
    /// The version of the object the index serves.
    #[doc(hidden)]
    fn served_version<'a>(index: &'a Index, key: &ObjectRef) -> Option<&'a Version>;

    /// Records an unreadable version; the served one stays.
    #[doc(hidden)]
    fn refuse_in(index: &mut Index, object: Unreadable) {
        let key = object.key();
        let version = index.version_of(&object.meta);
        let served = Self::served_version(index, &key).cloned();
        index
            .ledger
            .refuse(Self::KIND, &key, served, version, object.problems);
    }
}

impl IndexedResource for Namespace {
    const KIND: Kind = Kind::Namespace;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn apply_to(self, index: &mut Index, changes: &mut Changes) {
        let key = IndexedResource::key(&self);
        let version = index.version_of(&self.metadata);
        let (annotations, problems) = model::namespace(&self, &index.config.trust_domain);
        let served = index.namespaces.get(&key.name);
        let admission = index.ledger.admit(
            Kind::Namespace,
            &key,
            served.map(|s| &s.version),
            served.is_some_and(|s| s.model == annotations),
            &version,
            problems,
        );
        if admission == Admission::Keep {
            return;
        }
        if served.map(|s| &s.model) != Some(&annotations) {
            changes.namespaces.insert(key.name.clone());
        }
        index.namespaces.insert(
            key.name,
            Stored {
                model: annotations,
                version,
            },
        );
    }

    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
        index.ledger.forget(Kind::Namespace, key);
        if index.namespaces.remove(&key.name).is_some() {
            changes.namespaces.insert(key.name.clone());
        }
    }

    fn keys(index: &Index) -> Vec<ObjectRef> {
        index
            .namespaces
            .keys()
            .map(|n| ObjectRef::new("", n.clone()))
            .collect()
    }

    fn served_version<'a>(index: &'a Index, key: &ObjectRef) -> Option<&'a Version> {
        index.namespaces.get(&key.name).map(|s| &s.version)
    }
}

impl IndexedResource for Service {
    const KIND: Kind = Kind::Service;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn apply_to(self, index: &mut Index, changes: &mut Changes) {
        let key = IndexedResource::key(&self);
        let version = index.version_of(&self.metadata);
        let (info, problems) = model::service(&self, &key);
        let served = index.services.get_mut(&key);
        let admission = index.ledger.admit(
            Kind::Service,
            &key,
            served.as_ref().map(|s| &s.version),
            served.as_ref().is_some_and(|s| s.model == info),
            &version,
            problems,
        );
        if admission == Admission::Keep {
            return;
        }
        if let Some(served) = served.filter(|s| s.model == info) {
            served.version = version;
            return;
        }
        remove_cluster_ips(index, &key, changes);
        for ip in &info.cluster_ips {
            index.cluster_ips.insert(*ip, key.clone());
            changes.ips.insert(*ip);
        }
        index.services.insert(
            key.clone(),
            Stored {
                model: info,
                version,
            },
        );
        changes.services.insert(key);
    }

    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
        index.ledger.forget(Kind::Service, key);
        remove_cluster_ips(index, key, changes);
        if index.services.remove(key).is_some() {
            changes.services.insert(key.clone());
        }
    }

    fn keys(index: &Index) -> Vec<ObjectRef> {
        index.services.keys().cloned().collect()
    }

    fn served_version<'a>(index: &'a Index, key: &ObjectRef) -> Option<&'a Version> {
        index.services.get(key).map(|s| &s.version)
    }
}

fn remove_cluster_ips(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
    let Some(old) = index.services.get(key) else {
        return;
    };
    for ip in &old.cluster_ips {
        if index.cluster_ips.get(ip) == Some(key) {
            index.cluster_ips.remove(ip);
        }
        changes.ips.insert(*ip);
    }
}

impl IndexedResource for EndpointSlice {
    const KIND: Kind = Kind::EndpointSlice;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn apply_to(self, index: &mut Index, changes: &mut Changes) {
        let key = IndexedResource::key(&self);
        let version = index.version_of(&self.metadata);
        let (info, problems) = model::endpoint_slice(&self, &key);
        // State, not configuration: the newest endpoints always apply.
        index.ledger.accept(Kind::EndpointSlice, &key, problems);
        let served = index.slices.get_mut(&key);
        if let (Some(served), Some(info)) = (served, &info)
            && served.model == *info
        {
            served.version = version;
            return;
        }
        remove_slice(index, &key, changes);
        let Some(info) = info else { return };
        for pod in info.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
            let pod = ObjectRef::new(key.namespace.clone(), pod.clone());
            *index
                .pod_services
                .entry(pod)
                .or_default()
                .entry(info.service.clone())
                .or_default() += 1;
        }
        index
            .slices_by_service
            .entry(info.service.clone())
            .or_default()
            .insert(key.clone());
        changes.services.insert(info.service.clone());
        index.slices.insert(
            key,
            Stored {
                model: info,
                version,
            },
        );
    }

    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
        index.ledger.forget(Kind::EndpointSlice, key);
        remove_slice(index, key, changes);
    }

    fn keys(index: &Index) -> Vec<ObjectRef> {
        index.slices.keys().cloned().collect()
    }

    fn served_version<'a>(index: &'a Index, key: &ObjectRef) -> Option<&'a Version> {
        index.slices.get(key).map(|s| &s.version)
    }
}

fn remove_slice(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
    let Some(Stored { model: old, .. }) = index.slices.remove(key) else {
        return;
    };
    for pod in old.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
        let pod = ObjectRef::new(key.namespace.clone(), pod.clone());
        if let Some(services) = index.pod_services.get_mut(&pod) {
            if let Some(count) = services.get_mut(&old.service) {
                *count -= 1;
                if *count == 0 {
                    services.remove(&old.service);
                }
            }
            if services.is_empty() {
                index.pod_services.remove(&pod);
            }
        }
    }
    if let Some(slices) = index.slices_by_service.get_mut(&old.service) {
        slices.remove(key);
        if slices.is_empty() {
            index.slices_by_service.remove(&old.service);
        }
    }
    changes.services.insert(old.service);
}

impl IndexedResource for Pod {
    const KIND: Kind = Kind::Pod;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn apply_to(self, index: &mut Index, changes: &mut Changes) {
        let key = IndexedResource::key(&self);
        let mut version = index.version_of(&self.metadata);
        let (mut info, problems) = model::pod(&self, &key, &index.config.trust_domain);
        let served = index.pods.get_mut(&key);
        // Only the annotations are judged: the rest of a Pod is state.
        let admission = index.ledger.admit(
            Kind::Pod,
            &key,
            served.as_ref().map(|s| &s.version),
            served
                .as_ref()
                .is_some_and(|s| s.model.annotations == info.annotations),
            &version,
            problems,
        );
        if let (Admission::Keep, Some(served)) = (admission, &served) {
            // The served annotations stay; the Pod's IPs and readiness are news.
            info.annotations = served.model.annotations.clone();
            version = served.version.clone();
        }
        if let Some(served) = served.filter(|s| s.model == info) {
            served.version = version;
            return;
        }
        remove_pod_ips(index, &key, changes);
        for ip in &info.ips {
            index.pod_ips.insert(*ip, key.clone());
            changes.ips.insert(*ip);
        }
        index.pods.insert(
            key.clone(),
            Stored {
                model: info,
                version,
            },
        );
        pod_changed(index, key, changes);
    }

    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
        index.ledger.forget(Kind::Pod, key);
        remove_pod_ips(index, key, changes);
        if index.pods.remove(key).is_some() {
            pod_changed(index, key.clone(), changes);
        }
    }

    fn keys(index: &Index) -> Vec<ObjectRef> {
        index.pods.keys().cloned().collect()
    }

    fn served_version<'a>(index: &'a Index, key: &ObjectRef) -> Option<&'a Version> {
        index.pods.get(key).map(|s| &s.version)
    }
}

fn remove_pod_ips(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
    let Some(old) = index.pods.get(key) else {
        return;
    };
    for ip in &old.ips {
        if index.pod_ips.get(ip) == Some(key) {
            index.pod_ips.remove(ip);
        }
        changes.ips.insert(*ip);
    }
}

fn pod_changed(index: &Index, pod: ObjectRef, changes: &mut Changes) {
    if let Some(services) = index.pod_services.get(&pod) {
        changes.services.extend(services.keys().cloned());
    }
    changes.pods.insert(pod);
}

impl IndexedResource for HTTPRoute {
    const KIND: Kind = Kind::HttpRoute;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn apply_to(self, index: &mut Index, changes: &mut Changes) {
        let converted = routes::http_route(&self, &index.config.cluster_domain);
        let version = index.version_of(&self.metadata);
        let key = IndexedResource::key(&self);
        apply_route(index, Kind::HttpRoute, key, version, converted, changes);
    }

    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
        delete_route(index, Kind::HttpRoute, key, changes);
    }

    fn keys(index: &Index) -> Vec<ObjectRef> {
        route_keys(index, Kind::HttpRoute)
    }

    fn served_version<'a>(index: &'a Index, key: &ObjectRef) -> Option<&'a Version> {
        served_route_version(index, Kind::HttpRoute, key)
    }

    fn refuse_in(index: &mut Index, object: Unreadable) {
        refuse_route(index, object);
    }
}

impl IndexedResource for GRPCRoute {
    const KIND: Kind = Kind::GrpcRoute;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn apply_to(self, index: &mut Index, changes: &mut Changes) {
        let converted = routes::grpc_route(&self, &index.config.cluster_domain);
        let version = index.version_of(&self.metadata);
        let key = IndexedResource::key(&self);
        apply_route(index, Kind::GrpcRoute, key, version, converted, changes);
    }

    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
        delete_route(index, Kind::GrpcRoute, key, changes);
    }

    fn keys(index: &Index) -> Vec<ObjectRef> {
        route_keys(index, Kind::GrpcRoute)
    }

    fn served_version<'a>(index: &'a Index, key: &ObjectRef) -> Option<&'a Version> {
        served_route_version(index, Kind::GrpcRoute, key)
    }

    fn refuse_in(index: &mut Index, object: Unreadable) {
        refuse_route(index, object);
    }
}

fn served_route_version<'a>(
    index: &'a Index,
    kind: Kind,
    route: &ObjectRef,
) -> Option<&'a Version> {
    let key = RouteKey {
        kind,
        route: route.clone(),
    };
    index.routes.get(&key).map(|s| &s.version)
}

fn apply_route(
    index: &mut Index,
    kind: Kind,
    route: ObjectRef,
    version: Version,
    converted: Converted,
    changes: &mut Changes,
) {
    let key = RouteKey { kind, route };
    admit_route(index, &key, version, converted, changes);
    index.refresh_resolved_refs(&key);
}

/// Serves the new version of a route, or keeps the served one ("Fall
/// Back"); either way sets its status, but for `ResolvedRefs`.
fn admit_route(
    index: &mut Index,
    key: &RouteKey,
    version: Version,
    converted: Converted,
    changes: &mut Changes,
) {
    // Served: accepted by at least one parent.
    let served = index.routes.get(key);
    let served_version = served.map(|s| s.version.clone());
    let unchanged = served.is_some_and(|s| Some(&s.model) == converted.info.as_ref());
    let problems = converted.problems;
    let admission = index.ledger.admit(
        key.kind,
        &key.route,
        served_version.as_ref(),
        unchanged,
        &version,
        problems.clone(),
    );
    if admission == Admission::Keep {
        // Keep implies a Service parent, so a status.
        if let Some(latest) = converted.status {
            let status = routes::fall_back(index.route_status.get(key), latest, &problems);
            index.set_route_status(key.clone(), status);
        }
        return;
    }
    index.set_route_status(key.clone(), converted.status);
    let Some(info) = converted.info else {
        remove_route(index, key, changes);
        return;
    };
    if let Some(served) = index.routes.get_mut(key).filter(|s| s.model == info) {
        served.version = version;
        return;
    }
    remove_route(index, key, changes);
    for parent in &info.parents {
        index
            .routes_by_service
            .entry(parent.service.clone())
            .or_default()
            .insert(key.clone());
        changes.services.insert(parent.service.clone());
    }
    for service in referred_services(&info) {
        index
            .routes_by_backend
            .entry(service.clone())
            .or_default()
            .insert(key.clone());
    }
    index.routes.insert(
        key.clone(),
        Stored {
            model: info,
            version,
        },
    );
}

/// The Services a route's backendRefs name.
fn referred_services(info: &routes::RouteInfo) -> impl Iterator<Item = &ObjectRef> {
    info.backend_refs.iter().filter_map(|r| match &r.target {
        BackendTarget::Service { service, .. } => Some(service),
        BackendTarget::OtherKind(_) => None,
    })
}

/// An unreadable route: refused; its status says so, and what is served.
fn refuse_route(index: &mut Index, object: Unreadable) {
    let key = RouteKey {
        kind: object.kind,
        route: object.key(),
    };
    let version = index.version_of(&object.meta);
    let served = index.routes.get(&key).map(|s| s.version.clone());
    let latest = routes::unreadable_status(&object);
    let served_status = served.as_ref().and(index.route_status.get(&key));
    let status = routes::fall_back(served_status, latest, &object.problems);
    index.set_route_status(key.clone(), status);
    index.refresh_resolved_refs(&key);
    index
        .ledger
        .refuse(key.kind, &key.route, served, version, object.problems);
}

fn delete_route(index: &mut Index, kind: Kind, route: &ObjectRef, changes: &mut Changes) {
    let key = RouteKey {
        kind,
        route: route.clone(),
    };
    index.ledger.forget(kind, route);
    index.set_route_status(key.clone(), None);
    remove_route(index, &key, changes);
}

fn remove_route(index: &mut Index, key: &RouteKey, changes: &mut Changes) {
    let Some(old) = index.routes.remove(key) else {
        return;
    };
    for parent in &old.parents {
        if let Some(routes) = index.routes_by_service.get_mut(&parent.service) {
            routes.remove(key);
            if routes.is_empty() {
                index.routes_by_service.remove(&parent.service);
            }
        }
        changes.services.insert(parent.service.clone());
    }
    for service in referred_services(&old) {
        if let Some(routes) = index.routes_by_backend.get_mut(service) {
            routes.remove(key);
            if routes.is_empty() {
                index.routes_by_backend.remove(service);
            }
        }
    }
}

fn route_keys(index: &Index, kind: Kind) -> Vec<ObjectRef> {
    // Routes refused by every parent are known only by their status.
    index
        .route_status
        .keys()
        .chain(index.routes.keys())
        .filter(|k| k.kind == kind)
        .map(|k| k.route.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

impl IndexedResource for ReferenceGrant {
    const KIND: Kind = Kind::ReferenceGrant;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn apply_to(self, index: &mut Index, changes: &mut Changes) {
        let key = IndexedResource::key(&self);
        let version = index.version_of(&self.metadata);
        let info = GrantInfo::of(&self);
        // Nothing in a grant is judged: the API server validates it, and what
        // it says of kinds other than routes and Services is not ours.
        index.ledger.accept(Kind::ReferenceGrant, &key, Vec::new());
        let namespace = key.namespace.clone();
        let served = index.grants.insert(
            key,
            Stored {
                model: info.clone(),
                version,
            },
        );
        if served.is_none_or(|s| s.model != info) {
            changes.grant_namespaces.insert(namespace);
        }
    }

    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
        index.ledger.forget(Kind::ReferenceGrant, key);
        if index.grants.remove(key).is_some() {
            changes.grant_namespaces.insert(key.namespace.clone());
        }
    }

    fn keys(index: &Index) -> Vec<ObjectRef> {
        index.grants.keys().cloned().collect()
    }

    fn served_version<'a>(index: &'a Index, key: &ObjectRef) -> Option<&'a Version> {
        index.grants.get(key).map(|s| &s.version)
    }
}
