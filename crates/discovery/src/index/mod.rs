//! The discovery index: one in-memory view of the cluster, fed by `apply` /
//! `delete` / `reset` / `refuse` calls from a feed (Kubernetes watches or a
//! YAML file), and read by the Destination API through a `tokio::sync::watch`
//! per target. It keeps the last good version of each object: a new version
//! with a bad field is refused while an earlier one is served (`ledger`).
//!
//! It holds no Kubernetes client: tests call it directly with objects they
//! build. Objects are reduced to small models on the way in (a Pod keeps its
//! IPs, service account and mesh annotations, not its spec), so 100,000
//! endpoints fit in little memory. A change recomputes only the watched
//! targets that depend on what changed, and a part of a target (protocol,
//! routes, backends) keeps its version when its content did not change, so
//! gRPC watchers send exactly the parts that did.

mod annotations;
mod fault;
mod filters;
mod grpc_retry;
mod ledger;
mod lookup;
mod model;
mod refs;
mod resources;
mod routes;
mod success_rate;
#[cfg(test)]
mod tests;
mod views;
mod watches;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;

pub use self::annotations::READ as ANNOTATIONS_READ;
pub use self::ledger::{FileRefusal, FileStatus, Refusal, Revision, Unreadable, Version};
pub use self::lookup::{Lookup, TargetError};
pub use self::refs::ReferenceGrant;
pub use self::resources::IndexedResource;
pub use self::routes::{
    CONDITION_PARTIALLY_INVALID, CONDITION_RESOLVED_REFS, CONTROLLER_NAME, ParentStatus,
    REASON_UNSUPPORTED_VALUE, ResolvedRefs, RouteStatus,
};
pub use self::views::{MeshedTarget, TargetView, Versioned};

use self::ledger::Ledger;
use self::model::{PodInfo, ServiceInfo, SliceInfo, Stored, WorkloadAnnotations};
use self::refs::GrantInfo;
use self::routes::{RouteInfo, RouteKey};
use self::watches::{Changes, Watches};

/// The default SPIFFE trust domain and Kubernetes cluster domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Names the index needs to turn objects into mesh answers.
#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// SPIFFE trust domain of endpoint identities.
    pub trust_domain: String,
    /// DNS suffix of Services, `name.namespace.svc.<cluster_domain>`.
    pub cluster_domain: String,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_string(),
        }
    }
}

/// `namespace/name` of a namespaced object; a Namespace has an empty namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The object `meta` describes.
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// The kinds of objects the index reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Service,
    EndpointSlice,
    Pod,
    HttpRoute,
    GrpcRoute,
    ReferenceGrant,
}

impl Kind {
    /// The Kubernetes spelling, as in `kind:` of a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Something wrong with an object, named by kind, object and field; logged
/// and listed on the admin endpoint. The version that has it is refused while
/// an earlier one is served ([`Refusal`]); else its valid parts apply.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    pub kind: String,
    pub object: String,
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(
        kind: Kind,
        object: &ObjectRef,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind: kind.to_string(),
            object: object.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}: {}",
            self.kind, self.object, self.field, self.message
        )
    }
}

/// How many objects of each kind the index holds, and how many watches are open.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IndexSizes {
    pub namespaces: usize,
    pub services: usize,
    pub endpoint_slices: usize,
    pub endpoints: usize,
    pub pods: usize,
    pub routes: usize,
    pub target_watches: usize,
    pub server_watches: usize,
}

/// The index, see the module documentation.
#[derive(Debug)]
pub struct Index {
    config: IndexConfig,
    namespaces: HashMap<String, Stored<WorkloadAnnotations>>,
    services: HashMap<ObjectRef, Stored<ServiceInfo>>,
    cluster_ips: HashMap<IpAddr, ObjectRef>,
    /// Keyed by the slice's own `namespace/name`.
    slices: HashMap<ObjectRef, Stored<SliceInfo>>,
    slices_by_service: HashMap<ObjectRef, BTreeSet<ObjectRef>>,
    /// A Pod's version is that of its served annotations (its IPs and
    /// readiness always follow the newest version).
    pods: HashMap<ObjectRef, Stored<PodInfo>>,
    pod_ips: HashMap<IpAddr, ObjectRef>,
    /// Pod -> Services whose slices list it (with a count of listings), so a
    /// Pod change recomputes only the targets it is an endpoint of.
    pod_services: HashMap<ObjectRef, HashMap<ObjectRef, u32>>,
    routes: HashMap<RouteKey, Stored<RouteInfo>>,
    routes_by_service: HashMap<ObjectRef, BTreeSet<RouteKey>>,
    /// Service -> served routes with a backendRef to it, whose ResolvedRefs
    /// follows it into existence and out.
    routes_by_backend: HashMap<ObjectRef, BTreeSet<RouteKey>>,
    /// Ordered by namespace: a cross-namespace backendRef reads the grants
    /// of its Service's namespace.
    grants: BTreeMap<ObjectRef, Stored<GrantInfo>>,
    /// Status of every route with a Service parent, accepted or not.
    route_status: BTreeMap<RouteKey, RouteStatus>,
    /// Bumped whenever a route status changes, for the status writer.
    route_status_version: tokio::sync::watch::Sender<u64>,
    ledger: Ledger,
    /// Documents of the feed that name no object (a file's document without `kind`).
    feed_problems: Vec<Problem>,
    /// While the file feed applies a version of its file: that version, which
    /// then is every object's version.
    file_version: Option<u64>,
    file_status: Option<FileStatus>,
    watches: Watches,
}

impl Index {
    pub fn new(config: IndexConfig) -> Self {
        Self {
            config,
            namespaces: HashMap::new(),
            services: HashMap::new(),
            cluster_ips: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            pods: HashMap::new(),
            pod_ips: HashMap::new(),
            pod_services: HashMap::new(),
            routes: HashMap::new(),
            routes_by_service: HashMap::new(),
            routes_by_backend: HashMap::new(),
            grants: BTreeMap::new(),
            route_status: BTreeMap::new(),
            route_status_version: tokio::sync::watch::Sender::new(0),
            ledger: Ledger::default(),
            feed_problems: Vec::new(),
            file_version: None,
            file_status: None,
            watches: Watches::default(),
        }
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// A namespace's `plexus.io/inject`, as read from its annotation: `None` when
    /// the namespace is unknown, or the annotation absent or invalid.
    pub fn namespace_inject(&self, namespace: &str) -> Option<bool> {
        self.namespaces.get(namespace)?.inject
    }

    /// Adds or replaces one object.
    pub fn apply<R: IndexedResource>(&mut self, object: R) {
        let mut changes = Changes::default();
        object.apply_to(self, &mut changes);
        self.publish(changes);
    }

    /// Removes one object; unknown objects are ignored.
    pub fn delete<R: IndexedResource>(&mut self, key: &ObjectRef) {
        let mut changes = Changes::default();
        R::delete_from(self, key, &mut changes);
        self.publish(changes);
    }

    /// Replaces every object of this kind by `objects` (a relist): objects not
    /// listed are deleted. Watchers see one update for the whole relist.
    pub fn reset<R: IndexedResource>(&mut self, objects: Vec<R>) {
        self.relist(objects, Vec::new());
    }

    /// As [`Index::reset`], with objects the feed listed but could not read:
    /// those are refused ([`Index::refuse`]), not deleted.
    pub fn relist<R: IndexedResource>(&mut self, objects: Vec<R>, unreadable: Vec<Unreadable>) {
        let mut changes = Changes::default();
        let listed: HashSet<ObjectRef> = objects
            .iter()
            .map(R::key)
            .chain(unreadable.iter().map(Unreadable::key))
            .collect();
        self.delete_unlisted::<R>(&listed, &mut changes);
        for object in unreadable {
            R::refuse_in(self, object);
        }
        for object in objects {
            object.apply_to(self, &mut changes);
        }
        self.publish(changes);
    }

    /// Records that the feed could not read a new version of an object: the
    /// served version (if any) stays in force.
    pub fn refuse<R: IndexedResource>(&mut self, object: Unreadable) {
        R::refuse_in(self, object);
    }

    /// Deletes the objects of this kind not in `listed`: the end of a relist
    /// whose objects were applied one by one as they arrived (so a relist of
    /// 100,000 Pods never holds them all in memory at once).
    pub fn retain<R: IndexedResource>(&mut self, listed: &HashSet<ObjectRef>) {
        let mut changes = Changes::default();
        self.delete_unlisted::<R>(listed, &mut changes);
        self.publish(changes);
    }

    fn delete_unlisted<R: IndexedResource>(
        &mut self,
        listed: &HashSet<ObjectRef>,
        changes: &mut Changes,
    ) {
        for key in R::keys(self) {
            if !listed.contains(&key) {
                R::delete_from(self, &key, changes);
            }
        }
        // Objects known only by a refusal (nothing of them served).
        self.ledger.forget_unlisted(R::KIND, listed);
    }

    /// Resolves a target once, without watching it.
    pub fn resolve(
        &mut self,
        target: &str,
        context_namespace: &str,
    ) -> Result<Arc<TargetView>, TargetError> {
        let lookup = Lookup::parse(target, context_namespace, &self.config.cluster_domain)?;
        Ok(self.compute_target(&lookup, None).0)
    }

    /// Watches a target: the receiver holds the current view and is told of
    /// every change. Watchers of the same target share one view.
    pub fn watch_target(
        &mut self,
        target: &str,
        context_namespace: &str,
    ) -> Result<tokio::sync::watch::Receiver<Arc<TargetView>>, TargetError> {
        let lookup = Lookup::parse(target, context_namespace, &self.config.cluster_domain)?;
        if let Some(rx) = self.watches.subscribe_target(&lookup) {
            return Ok(rx);
        }
        let (view, deps) = self.compute_target(&lookup, None);
        Ok(self.watches.insert_target(lookup, view, deps))
    }

    /// Watches the inbound policy of a workload (a pod).
    pub fn watch_server(
        &mut self,
        namespace: &str,
        pod: &str,
    ) -> tokio::sync::watch::Receiver<Arc<plexus_api::v1::ServerPolicy>> {
        let key = ObjectRef::new(namespace, pod);
        if let Some(rx) = self.watches.subscribe_server(&key) {
            return rx;
        }
        let policy = Arc::new(self.server_policy(&key));
        self.watches.insert_server(key, policy)
    }

    /// The problems of every served object, plus those the feed reported.
    pub fn problems(&self) -> Vec<Problem> {
        self.ledger
            .problems()
            .chain(&self.feed_problems)
            .cloned()
            .collect()
    }

    /// Every refused version, with the version served instead.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.ledger.refusals().cloned().collect()
    }

    /// Problems found by the feed in documents that name no object;
    /// replaces the previous list.
    pub fn set_feed_problems(&mut self, problems: Vec<Problem>) {
        self.feed_problems = problems;
    }

    /// The file feed, while it applies version `version` of its file
    /// (`None` after): that version is every object's version.
    pub fn set_file_version(&mut self, version: Option<u64>) {
        self.file_version = version;
    }

    /// What the file feed says of its file, for `/status`.
    pub fn set_file_status(&mut self, status: FileStatus) {
        self.file_status = Some(status);
    }

    pub fn file_status(&self) -> Option<&FileStatus> {
        self.file_status.as_ref()
    }

    fn version_of(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Version {
        Version::of(meta, self.file_version)
    }

    /// The status of every route that names a Service parent.
    pub fn route_statuses(&self) -> Vec<RouteStatus> {
        self.route_status.values().cloned().collect()
    }

    /// Changes whenever a route's status does.
    pub fn watch_route_statuses(&self) -> tokio::sync::watch::Receiver<u64> {
        self.route_status_version.subscribe()
    }

    fn set_route_status(&mut self, key: RouteKey, status: Option<RouteStatus>) {
        let changed = match status {
            Some(status) => self.route_status.insert(key, status.clone()).as_ref() != Some(&status),
            None => self.route_status.remove(&key).is_some(),
        };
        if changed {
            self.route_status_version.send_modify(|v| *v += 1);
        }
    }

    pub fn sizes(&self) -> IndexSizes {
        IndexSizes {
            namespaces: self.namespaces.len(),
            services: self.services.len(),
            endpoint_slices: self.slices.len(),
            endpoints: self.slices.values().map(|s| s.endpoints.len()).sum(),
            pods: self.pods.len(),
            routes: self.routes.len(),
            target_watches: self.watches.target_count(),
            server_watches: self.watches.server_count(),
        }
    }
}

/// The index shared by the feeds and the gRPC server. Critical sections are
/// short and never await, so a plain mutex is right.
#[derive(Clone, Debug)]
pub struct SharedIndex(Arc<Mutex<Index>>);

impl SharedIndex {
    pub fn new(config: IndexConfig) -> Self {
        Self(Arc::new(Mutex::new(Index::new(config))))
    }

    pub fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the maps half-updated in
        // a way later reads could not handle, so keep serving.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
