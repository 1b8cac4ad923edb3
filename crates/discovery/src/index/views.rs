//! Computing what a watcher sees: a target's view (protocol, routes, backends,
//! each with a version) and a workload's server policy.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use plexus_api::v1::{
    Backend, BackendTable, DestinationUpdate, Endpoint, ProtocolHint, Resilience, RouteTable,
    ServerPolicy, Target,
};
use tokio::time::Instant;

use super::annotations::{MtlsMode, spiffe_id};
use super::lookup::canonical_name;
use super::model::{PodInfo, SliceEndpoint};
use super::routes::{BackendTarget, RouteRules};
use super::watches::{Changes, Deps};
use super::{Index, Lookup, ObjectRef};

/// Versions are unique across the process, so "same version" means "same content".
static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// One part of a target with the version it got when its content last changed.
#[derive(Debug)]
pub struct Versioned<T> {
    pub version: u64,
    pub value: Arc<T>,
}

impl<T> Clone for Versioned<T> {
    fn clone(&self) -> Self {
        Self {
            version: self.version,
            value: self.value.clone(),
        }
    }
}

impl<T: PartialEq> Versioned<T> {
    /// Keeps the previous version when the content is unchanged.
    fn next(value: T, previous: Option<&Versioned<T>>) -> Self {
        match previous {
            Some(p) if *p.value == value => p.clone(),
            _ => Versioned {
                version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
                value: Arc::new(value),
            },
        }
    }
}

#[derive(Clone, Debug)]
pub struct MeshedTarget {
    /// Canonical name, `name.namespace.svc.<cluster-domain>:port` (or `ip:port` for a pod).
    pub name: String,
    pub protocol: Versioned<ProtocolHint>,
    pub routes: Versioned<RouteTable>,
    pub backends: Versioned<BackendTable>,
}

/// What the watchers of one target see.
#[derive(Clone, Debug)]
pub struct TargetView {
    /// `None`: the target is not known to the mesh.
    pub meshed: Option<MeshedTarget>,
    /// When this view was computed, to measure push latency.
    pub changed_at: Instant,
}

impl TargetView {
    pub fn same_content(&self, other: &TargetView) -> bool {
        match (&self.meshed, &other.meshed) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.name == b.name
                    && a.protocol.version == b.protocol.version
                    && a.routes.version == b.routes.version
                    && a.backends.version == b.backends.version
            }
            _ => false,
        }
    }

    /// The message that brings a watcher from `previous` (what it was last
    /// sent; `None` at the start of a stream) to this view; `None` when it
    /// already has it.
    pub fn update_since(&self, previous: Option<&TargetView>) -> Option<DestinationUpdate> {
        let Some(current) = &self.meshed else {
            return match previous {
                Some(TargetView { meshed: None, .. }) => None,
                _ => Some(DestinationUpdate {
                    not_meshed: true,
                    snapshot: true,
                    target: None,
                }),
            };
        };
        let before = previous
            .and_then(|p| p.meshed.as_ref())
            .filter(|p| p.name == current.name);
        let Some(before) = before else {
            return Some(DestinationUpdate {
                not_meshed: false,
                snapshot: true,
                target: Some(Target {
                    name: current.name.clone(),
                    protocol: Some((*current.protocol.value).clone()),
                    routes: Some((*current.routes.value).clone()),
                    backends: Some((*current.backends.value).clone()),
                }),
            });
        };
        let changed = |a: u64, b: u64| a != b;
        let target = Target {
            name: current.name.clone(),
            protocol: changed(before.protocol.version, current.protocol.version)
                .then(|| (*current.protocol.value).clone()),
            routes: changed(before.routes.version, current.routes.version)
                .then(|| (*current.routes.value).clone()),
            backends: changed(before.backends.version, current.backends.version)
                .then(|| (*current.backends.value).clone()),
        };
        if target.protocol.is_none() && target.routes.is_none() && target.backends.is_none() {
            return None;
        }
        Some(DestinationUpdate {
            not_meshed: false,
            snapshot: false,
            target: Some(target),
        })
    }
}

/// A target's parts before versioning.
struct Parts {
    name: String,
    protocol: ProtocolHint,
    routes: RouteTable,
    backends: BackendTable,
}

const HTTP2_APP_PROTOCOLS: [&str; 2] = ["kubernetes.io/h2c", "h2c"];

impl Index {
    /// Applies the outcome of one apply/delete/reset to the watches.
    pub(super) fn publish(&mut self, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        self.refresh_routes_referring_to(&changes);
        for lookup in self.watches.affected(&changes) {
            let Some(previous) = self.watches.current(&lookup) else {
                continue;
            };
            let (view, deps) = self.compute_target(&lookup, Some(&previous));
            self.watches.update_target(&lookup, view, deps);
        }
        for pod in self.watches.affected_servers(&changes) {
            let policy = self.server_policy(&pod);
            self.watches.update_server(&pod, policy);
        }
    }

    /// Drops the watches no stream holds any more; whether there were any.
    pub fn sweep_watches(&mut self) -> bool {
        self.watches.sweep()
    }

    pub(super) fn compute_target(
        &self,
        lookup: &Lookup,
        previous: Option<&TargetView>,
    ) -> (Arc<TargetView>, Deps) {
        let mut deps = Deps::default();
        let parts = match lookup {
            Lookup::Service { service, port } => self.service_target(service, *port, &mut deps),
            Lookup::Address(addr) => {
                deps.ips.push(addr.ip());
                if let Some(service) = self.cluster_ips.get(&addr.ip()) {
                    self.service_target(service, addr.port(), &mut deps)
                } else {
                    self.pod_target(*addr, &mut deps)
                }
            }
            Lookup::External => None,
        };
        let before = previous.and_then(|p| p.meshed.as_ref());
        let meshed = parts.map(|parts| {
            let before = before.filter(|b| b.name == parts.name);
            MeshedTarget {
                protocol: Versioned::next(parts.protocol, before.map(|b| &b.protocol)),
                routes: Versioned::next(parts.routes, before.map(|b| &b.routes)),
                backends: Versioned::next(parts.backends, before.map(|b| &b.backends)),
                name: parts.name,
            }
        });
        deps.services.sort();
        deps.services.dedup();
        deps.namespaces.sort();
        deps.namespaces.dedup();
        let view = TargetView {
            meshed,
            changed_at: Instant::now(),
        };
        (Arc::new(view), deps)
    }

    fn service_target(&self, service: &ObjectRef, port: u16, deps: &mut Deps) -> Option<Parts> {
        deps.services.push(service.clone());
        deps.namespaces.push(service.namespace.clone());
        let info = self.services.get(service)?;
        let service_port = info.ports.iter().find(|p| p.port == port)?;
        let name = canonical_name(service, port, &self.config.cluster_domain);

        let mut attached: Vec<_> = self
            .routes_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|key| Some((key, self.routes.get(key)?)))
            .filter(|(_, route)| route.attaches_to(service, port, &service_port.name))
            .collect();
        // Gateway API tie-break: oldest first, then by namespace/name.
        attached.sort_by(|(ka, a), (kb, b)| (a.created, &ka.route).cmp(&(b.created, &kb.route)));

        let mut routes = RouteTable {
            default_backend: name.clone(),
            ..RouteTable::default()
        };
        let mut backends = HashMap::new();
        backends.insert(name.clone(), self.backend(service, port, deps));
        for (key, route) in &attached {
            // backendRef -> why it does not resolve; its share gets 500 at the proxy.
            let mut unresolved = HashMap::new();
            for backend_ref in &route.backend_refs {
                if let BackendTarget::Service { service, .. } = &backend_ref.target {
                    // Watched whether it resolves or not: it may come to, or stop.
                    deps.services.push(service.clone());
                    deps.namespaces.push(service.namespace.clone());
                }
                match self.resolve_backend(key, &backend_ref.target) {
                    Ok((service, port)) => {
                        if let Entry::Vacant(slot) = backends.entry(backend_ref.key.clone()) {
                            slot.insert(self.backend(service, port, deps));
                        }
                    }
                    Err(why) => {
                        unresolved.insert(backend_ref.key.as_str(), why.to_string());
                    }
                }
            }
            let route_name = key.route.to_string();
            match route.rules.with_unresolved(&unresolved) {
                RouteRules::Http(rules) => routes.http.push(plexus_api::v1::HttpRoute {
                    name: route_name,
                    rules,
                }),
                RouteRules::Grpc(rules) => routes.grpc.push(plexus_api::v1::GrpcRoute {
                    name: route_name,
                    rules,
                }),
            }
        }

        let opaque = info.opaque_ports.as_ref().or_else(|| {
            self.namespaces
                .get(&service.namespace)
                .and_then(|ns| ns.opaque_ports.as_ref())
        });
        let protocol = if opaque.is_some_and(|ports| ports.contains(port)) {
            "opaque"
        } else if service_port
            .app_protocol
            .as_deref()
            .is_some_and(|p| HTTP2_APP_PROTOCOLS.contains(&p))
        {
            "http2"
        } else {
            "detect"
        };
        Some(Parts {
            name,
            protocol: ProtocolHint {
                protocol: protocol.to_string(),
            },
            routes,
            backends: BackendTable { backends },
        })
    }

    /// One backend: a Service port's endpoints, merged over all its slices.
    fn backend(&self, service: &ObjectRef, port: u16, deps: &mut Deps) -> Backend {
        deps.services.push(service.clone());
        deps.namespaces.push(service.namespace.clone());
        let name = canonical_name(service, port, &self.config.cluster_domain);
        let Some(info) = self.services.get(service) else {
            return Backend {
                name,
                ..Backend::default()
            };
        };
        let mut endpoints: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
        if let Some(service_port) = info.ports.iter().find(|p| p.port == port) {
            let slices = self.slices_by_service.get(service).into_iter().flatten();
            for slice in slices.filter_map(|key| self.slices.get(key)) {
                // Slice ports are matched to Service ports by name.
                let Some(target_port) = slice.ports.get(&service_port.name) else {
                    continue;
                };
                for endpoint in &slice.endpoints {
                    let address = SocketAddr::new(endpoint.ip, *target_port);
                    let endpoint = self.slice_endpoint(&service.namespace, endpoint, address);
                    // The same address in two slices (during a move): keep the ready one.
                    endpoints
                        .entry(address)
                        .and_modify(|e| {
                            if endpoint.ready && !e.ready {
                                *e = endpoint.clone();
                            }
                        })
                        .or_insert(endpoint);
                }
            }
        }
        Backend {
            name,
            endpoints: endpoints.into_values().collect(),
            resilience: Some(info.resilience.clone()),
        }
    }

    fn slice_endpoint(
        &self,
        namespace: &str,
        endpoint: &SliceEndpoint,
        address: SocketAddr,
    ) -> Endpoint {
        let pod = endpoint
            .pod
            .as_ref()
            .and_then(|name| self.pods.get(&ObjectRef::new(namespace, name.as_str())));
        let identity = match pod {
            Some(pod) if self.is_meshed(namespace, pod) => {
                spiffe_id(&self.config.trust_domain, namespace, &pod.service_account)
            }
            _ => String::new(),
        };
        Endpoint {
            address: address.to_string(),
            weight: 1,
            zone: endpoint.zone.clone(),
            ready: endpoint.ready,
            meshed: !identity.is_empty(),
            identity,
            pod: endpoint.pod.clone().unwrap_or_default(),
        }
    }

    /// A pod addressed directly (headless Services, StatefulSet members).
    fn pod_target(&self, addr: SocketAddr, deps: &mut Deps) -> Option<Parts> {
        let key = self.pod_ips.get(&addr.ip())?;
        let pod = self.pods.get(key)?;
        deps.namespaces.push(key.namespace.clone());
        let name = addr.to_string();
        let identity = if self.is_meshed(&key.namespace, pod) {
            spiffe_id(
                &self.config.trust_domain,
                &key.namespace,
                &pod.service_account,
            )
        } else {
            String::new()
        };
        let endpoint = Endpoint {
            address: name.clone(),
            weight: 1,
            zone: String::new(),
            ready: pod.ready,
            meshed: !identity.is_empty(),
            identity,
            pod: key.name.clone(),
        };
        let opaque = self
            .opaque_ports(&key.namespace, pod)
            .is_some_and(|p| p.contains(addr.port()));
        let backend = Backend {
            name: name.clone(),
            endpoints: vec![endpoint],
            resilience: Some(Resilience::default()),
        };
        Some(Parts {
            protocol: ProtocolHint {
                protocol: if opaque { "opaque" } else { "detect" }.to_string(),
            },
            routes: RouteTable {
                default_backend: name.clone(),
                ..RouteTable::default()
            },
            backends: BackendTable {
                backends: HashMap::from([(name.clone(), backend)]),
            },
            name,
        })
    }

    /// A pod is meshed when it carries the proxy or is marked for injection
    /// (on itself, or on its namespace unless the pod opts out).
    fn is_meshed(&self, namespace: &str, pod: &PodInfo) -> bool {
        let namespace_inject = self.namespaces.get(namespace).and_then(|ns| ns.inject);
        pod.has_proxy || pod.annotations.inject.or(namespace_inject) == Some(true)
    }

    fn opaque_ports<'a>(
        &'a self,
        namespace: &str,
        pod: &'a PodInfo,
    ) -> Option<&'a super::annotations::PortSet> {
        pod.annotations
            .opaque_ports
            .as_ref()
            .or_else(|| self.namespaces.get(namespace)?.opaque_ports.as_ref())
    }

    /// The SPIFFE IDs of every meshed pod (outside a cluster the controller
    /// issues each a bootstrap token).
    pub fn meshed_identities(&self) -> std::collections::BTreeSet<String> {
        self.pods
            .iter()
            .filter(|(key, pod)| self.is_meshed(&key.namespace, pod))
            .map(|(key, pod)| {
                spiffe_id(
                    &self.config.trust_domain,
                    &key.namespace,
                    &pod.service_account,
                )
            })
            .filter(|id| !id.is_empty())
            .collect()
    }

    /// A workload's inbound policy: the pod's annotations win over its namespace's.
    pub(super) fn server_policy(&self, key: &ObjectRef) -> ServerPolicy {
        let namespace = self.namespaces.get(&key.namespace);
        let pod = self.pods.get(key);
        let mtls_mode = pod
            .and_then(|p| p.annotations.mtls_mode)
            .or_else(|| namespace?.mtls_mode)
            .unwrap_or(MtlsMode::Permissive);
        let allowed_identities = pod
            .and_then(|p| p.annotations.allowed_clients.clone())
            .or_else(|| namespace?.allowed_clients.clone())
            .unwrap_or_default();
        let rate_limit = pod
            .and_then(|p| p.annotations.rate_limit)
            .or_else(|| namespace?.rate_limit);
        let opaque_ports = match pod {
            Some(pod) => self.opaque_ports(&key.namespace, pod),
            None => namespace.and_then(|ns| ns.opaque_ports.as_ref()),
        };
        ServerPolicy {
            mtls_mode: mtls_mode.as_str().to_string(),
            allowed_identities,
            opaque_ports: opaque_ports
                .into_iter()
                .flat_map(|p| p.ports())
                .map(u32::from)
                .collect(),
            rate_limit,
        }
    }
}
