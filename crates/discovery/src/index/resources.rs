//! How each Kubernetes kind enters and leaves the index, keeping the reverse
//! maps (ClusterIP, pod IP, pod -> Services, Service -> routes) in step and
//! recording what changed for the watches.

use gateway_api::experimental::grpcroutes::GrpcRoute as GRPCRoute;
use gateway_api::experimental::httproutes::HttpRoute as HTTPRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::routes::{self, Converted, RouteKey};
use super::watches::Changes;
use super::{Index, Kind, ObjectRef, model};

/// A Kubernetes kind the index reads. Feeds call [`Index::apply`],
/// [`Index::delete`] and [`Index::reset`] with it.
pub trait IndexedResource: Sized {
    const KIND: Kind;

    fn metadata(&self) -> &ObjectMeta;

    fn key(&self) -> ObjectRef {
        routes::object_ref(self.metadata())
    }

    #[doc(hidden)]
    fn apply_to(self, index: &mut Index, changes: &mut Changes);
    #[doc(hidden)]
    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes);
    #[doc(hidden)]
    fn keys(index: &Index) -> Vec<ObjectRef>;
}

impl IndexedResource for Namespace {
    const KIND: Kind = Kind::Namespace;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn apply_to(self, index: &mut Index, changes: &mut Changes) {
        let key = IndexedResource::key(&self);
        let (annotations, problems) = model::namespace(&self, &index.config.trust_domain);
        index.set_problems(Kind::Namespace, &key, problems);
        if index.namespaces.get(&key.name) != Some(&annotations) {
            index.namespaces.insert(key.name.clone(), annotations);
            changes.namespaces.insert(key.name);
        }
    }

    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
        index.set_problems(Kind::Namespace, key, Vec::new());
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
}

impl IndexedResource for Service {
    const KIND: Kind = Kind::Service;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn apply_to(self, index: &mut Index, changes: &mut Changes) {
        let key = IndexedResource::key(&self);
        let (info, problems) = model::service(&self, &key);
        index.set_problems(Kind::Service, &key, problems);
        if index.services.get(&key) == Some(&info) {
            return;
        }
        remove_cluster_ips(index, &key, changes);
        for ip in &info.cluster_ips {
            index.cluster_ips.insert(*ip, key.clone());
            changes.ips.insert(*ip);
        }
        index.services.insert(key.clone(), info);
        changes.services.insert(key);
    }

    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
        index.set_problems(Kind::Service, key, Vec::new());
        remove_cluster_ips(index, key, changes);
        if index.services.remove(key).is_some() {
            changes.services.insert(key.clone());
        }
    }

    fn keys(index: &Index) -> Vec<ObjectRef> {
        index.services.keys().cloned().collect()
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
        let (info, problems) = model::endpoint_slice(&self, &key);
        index.set_problems(Kind::EndpointSlice, &key, problems);
        if index.slices.get(&key) == info.as_ref() {
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
        index.slices.insert(key, info);
    }

    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
        index.set_problems(Kind::EndpointSlice, key, Vec::new());
        remove_slice(index, key, changes);
    }

    fn keys(index: &Index) -> Vec<ObjectRef> {
        index.slices.keys().cloned().collect()
    }
}

fn remove_slice(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
    let Some(old) = index.slices.remove(key) else {
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
        let (info, problems) = model::pod(&self, &key, &index.config.trust_domain);
        index.set_problems(Kind::Pod, &key, problems);
        if index.pods.get(&key) == Some(&info) {
            return;
        }
        remove_pod_ips(index, &key, changes);
        for ip in &info.ips {
            index.pod_ips.insert(*ip, key.clone());
            changes.ips.insert(*ip);
        }
        index.pods.insert(key.clone(), info);
        pod_changed(index, key, changes);
    }

    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
        index.set_problems(Kind::Pod, key, Vec::new());
        remove_pod_ips(index, key, changes);
        if index.pods.remove(key).is_some() {
            pod_changed(index, key.clone(), changes);
        }
    }

    fn keys(index: &Index) -> Vec<ObjectRef> {
        index.pods.keys().cloned().collect()
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
        apply_route(
            index,
            Kind::HttpRoute,
            IndexedResource::key(&self),
            converted,
            changes,
        );
    }

    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
        delete_route(index, Kind::HttpRoute, key, changes);
    }

    fn keys(index: &Index) -> Vec<ObjectRef> {
        route_keys(index, Kind::HttpRoute)
    }
}

impl IndexedResource for GRPCRoute {
    const KIND: Kind = Kind::GrpcRoute;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn apply_to(self, index: &mut Index, changes: &mut Changes) {
        let converted = routes::grpc_route(&self, &index.config.cluster_domain);
        apply_route(
            index,
            Kind::GrpcRoute,
            IndexedResource::key(&self),
            converted,
            changes,
        );
    }

    fn delete_from(index: &mut Index, key: &ObjectRef, changes: &mut Changes) {
        delete_route(index, Kind::GrpcRoute, key, changes);
    }

    fn keys(index: &Index) -> Vec<ObjectRef> {
        route_keys(index, Kind::GrpcRoute)
    }
}

fn apply_route(
    index: &mut Index,
    kind: Kind,
    route: ObjectRef,
    converted: Converted,
    changes: &mut Changes,
) {
    let key = RouteKey { kind, route };
    index.set_problems(kind, &key.route, converted.problems);
    index.set_route_status(key.clone(), converted.status);
    if index.routes.get(&key) == converted.info.as_ref() {
        return;
    }
    remove_route(index, &key, changes);
    if let Some(info) = converted.info {
        for parent in &info.parents {
            index
                .routes_by_service
                .entry(parent.service.clone())
                .or_default()
                .insert(key.clone());
            changes.services.insert(parent.service.clone());
        }
        index.routes.insert(key, info);
    }
}

fn delete_route(index: &mut Index, kind: Kind, route: &ObjectRef, changes: &mut Changes) {
    let key = RouteKey {
        kind,
        route: route.clone(),
    };
    index.set_problems(kind, route, Vec::new());
    index.set_route_status(key.clone(), None);
    remove_route(index, &key, changes);
}

fn remove_route(index: &mut Index, key: &RouteKey, changes: &mut Changes) {
    let Some(old) = index.routes.remove(key) else {
        return;
    };
    for parent in old.parents {
        if let Some(routes) = index.routes_by_service.get_mut(&parent.service) {
            routes.remove(key);
            if routes.is_empty() {
                index.routes_by_service.remove(&parent.service);
            }
        }
        changes.services.insert(parent.service);
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
