//! The small models the index keeps of Kubernetes objects: only what a mesh
//! answer needs, so the index stays small at 100,000 endpoints.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Deref;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use plexus_api::v1::{RateLimit, Resilience};

use super::annotations::{Annotations, MtlsMode, PortSet};
use super::{Kind, ObjectRef, Problem, Version};
use plexus_core::PROXY_CONTAINER;

/// The label of an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A model as the index keeps it: with the version of the object it was read
/// from, which `/status` names when a newer version is refused. Reads as the
/// model itself.
#[derive(Clone, Debug)]
pub struct Stored<T> {
    pub model: T,
    pub version: Version,
}

impl<T> Deref for Stored<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.model
    }
}

/// Mesh annotations shared by Namespaces and Pods (a Pod's win).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadAnnotations {
    pub inject: Option<bool>,
    pub mtls_mode: Option<MtlsMode>,
    pub allowed_clients: Option<Vec<String>>,
    pub opaque_ports: Option<PortSet>,
    /// `plexus.io/rate-limit` and its companions, as one: a Pod's replaces its namespace's.
    pub rate_limit: Option<RateLimit>,
}

impl WorkloadAnnotations {
    fn read(a: &mut Annotations<'_>, trust_domain: &str) -> Self {
        Self {
            inject: a.inject(),
            mtls_mode: a.mtls_mode(),
            allowed_clients: a.allowed_clients(trust_domain),
            opaque_ports: a.opaque_ports(),
            rate_limit: a.rate_limit(),
        }
    }
}

fn annotation_problems(kind: Kind, key: &ObjectRef, a: Annotations<'_>) -> Vec<Problem> {
    a.errors
        .into_iter()
        .map(|e| Problem::new(kind, key, e.field(), e.message))
        .collect()
}

pub fn namespace(ns: &Namespace, trust_domain: &str) -> (WorkloadAnnotations, Vec<Problem>) {
    let key = ObjectRef::new("", ns.metadata.name.clone().unwrap_or_default());
    let mut a = Annotations::new(ns.metadata.annotations.as_ref());
    let annotations = WorkloadAnnotations::read(&mut a, trust_domain);
    (annotations, annotation_problems(Kind::Namespace, &key, a))
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    pub port: u16,
    /// Empty for the single unnamed port; matched against EndpointSlice port names.
    pub name: String,
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInfo {
    pub cluster_ips: Vec<IpAddr>,
    /// Empty for ExternalName Services, which the mesh does not handle.
    pub ports: Vec<ServicePort>,
    pub resilience: Resilience,
    pub opaque_ports: Option<PortSet>,
}

pub fn service(svc: &Service, key: &ObjectRef) -> (ServiceInfo, Vec<Problem>) {
    let mut problems = Vec::new();
    let spec = svc.spec.clone().unwrap_or_default();
    let external = spec.type_.as_deref() == Some("ExternalName");
    let mut ips: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.as_ref());
    }
    let cluster_ips = ips
        .into_iter()
        .filter(|ip| ip.as_str() != "None" && !ip.is_empty())
        .filter_map(|ip| match ip.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                problems.push(Problem::new(
                    Kind::Service,
                    key,
                    "spec.clusterIPs",
                    format!("{ip:?} is not an IP address"),
                ));
                None
            }
        })
        .collect();
    let ports = if external {
        Vec::new()
    } else {
        spec.ports
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, p)| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
            .filter_map(|(i, p)| match u16::try_from(p.port) {
                Ok(port) if port != 0 => Some(ServicePort {
                    port,
                    name: p.name.clone().unwrap_or_default(),
                    app_protocol: p.app_protocol.clone(),
                }),
                _ => {
                    problems.push(Problem::new(
                        Kind::Service,
                        key,
                        format!("spec.ports[{i}].port"),
                        format!("{} is not a port number", p.port),
                    ));
                    None
                }
            })
            .collect()
    };
    let mut a = Annotations::new(svc.metadata.annotations.as_ref());
    let resilience = a.resilience();
    let opaque_ports = a.opaque_ports();
    problems.extend(annotation_problems(Kind::Service, key, a));
    let info = ServiceInfo {
        cluster_ips,
        ports,
        resilience,
        opaque_ports,
    };
    (info, problems)
}

#[derive(Clone, Debug, PartialEq)]
pub struct SliceEndpoint {
    pub ip: IpAddr,
    pub ready: bool,
    pub zone: String,
    /// Name of the Pod behind the endpoint, in the slice's namespace.
    pub pod: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SliceInfo {
    pub service: ObjectRef,
    /// Port name (empty when unnamed) -> port number on the endpoints.
    pub ports: BTreeMap<String, u16>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// `None` when the slice belongs to no Service or lists FQDNs.
pub fn endpoint_slice(slice: &EndpointSlice, key: &ObjectRef) -> (Option<SliceInfo>, Vec<Problem>) {
    let mut problems = Vec::new();
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL));
    let Some(service) = service else {
        return (None, problems);
    };
    if slice.address_type == "FQDN" {
        return (None, problems);
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, p)| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|(i, p)| match p.port.map(u16::try_from) {
            Some(Ok(port)) if port != 0 => Some((p.name.clone().unwrap_or_default(), port)),
            _ => {
                problems.push(Problem::new(
                    Kind::EndpointSlice,
                    key,
                    format!("ports[{i}].port"),
                    "missing or not a port number",
                ));
                None
            }
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, ep)| {
            // Addresses of one endpoint are fungible; consumers may use the first.
            let raw = ep.addresses.first()?;
            let Ok(ip) = raw.parse::<IpAddr>() else {
                problems.push(Problem::new(
                    Kind::EndpointSlice,
                    key,
                    format!("endpoints[{i}].addresses[0]"),
                    format!("{raw:?} is not an IP address"),
                ));
                return None;
            };
            let conditions = ep.conditions.clone().unwrap_or_default();
            // Kubernetes: an unset `ready` means ready; terminating endpoints are not ready.
            let ready =
                conditions.ready.unwrap_or(true) && !conditions.terminating.unwrap_or(false);
            let pod = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            Some(SliceEndpoint {
                ip,
                ready,
                zone: ep.zone.clone().unwrap_or_default(),
                pod,
            })
        })
        .collect();
    let info = SliceInfo {
        service: ObjectRef::new(key.namespace.clone(), service.clone()),
        ports,
        endpoints,
    };
    (Some(info), problems)
}

#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    /// Empty for host-network pods and pods that finished: their IPs are not theirs.
    pub ips: Vec<IpAddr>,
    pub service_account: String,
    pub has_proxy: bool,
    pub ready: bool,
    pub annotations: WorkloadAnnotations,
}

pub fn pod(pod: &Pod, key: &ObjectRef, trust_domain: &str) -> (PodInfo, Vec<Problem>) {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let owns_ip = !spec.host_network.unwrap_or(false) && !finished;
    let mut raw_ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .collect();
    if raw_ips.is_empty() {
        raw_ips.extend(status.pod_ip.clone());
    }
    let ips = if owns_ip {
        raw_ips.iter().filter_map(|ip| ip.parse().ok()).collect()
    } else {
        Vec::new()
    };
    // The injector adds the proxy as a native sidecar (an init container), but
    // a hand-written pod may carry it as a regular container.
    let has_proxy = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER);
    // No Ready condition at all (a hand-written pod in a file) counts as ready;
    // an explicit Ready=False does not.
    let ready_condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready");
    let ready = pod.metadata.deletion_timestamp.is_none()
        && ready_condition.is_none_or(|c| c.status == "True");
    let mut a = Annotations::new(pod.metadata.annotations.as_ref());
    let annotations = WorkloadAnnotations::read(&mut a, trust_domain);
    let info = PodInfo {
        ips,
        service_account: spec
            .service_account_name
            .unwrap_or_else(|| "default".to_string()),
        has_proxy,
        ready,
        annotations,
    };
    (info, annotation_problems(Kind::Pod, key, a))
}
