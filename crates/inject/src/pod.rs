//! What injection adds to one pod (template), and that addition as a JSON Patch.

use std::collections::BTreeMap;

use json_patch::jsonptr::Pointer;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use plexus_core::PROXY_CONTAINER;
use plexus_core::annotations::INJECT;

use crate::INIT_CONTAINER;
use crate::config::InjectConfig;
use crate::overrides::{Settings, settings};

const INBOUND_PORT: i32 = 15006;
const OUTBOUND_PORT: i32 = 15001;
const ADMIN_PORT: i32 = 15020;
const TOKEN_AUDIENCE: &str = "plexus-identity";
const TOKEN_VOLUME: &str = "plexus-identity-token";
const TOKEN_DIR: &str = "/var/run/secrets/plexus.io/identity";

/// Why a pod is left as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The pod already has the proxy: injecting twice must change nothing.
    AlreadyInjected,
    /// The pod shares the node's network namespace: rules there would capture the node.
    HostNetwork,
    /// The pod says `plexus.io/inject: disabled`, which wins over its namespace.
    Disabled,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AlreadyInjected => "already injected",
            Self::HostNetwork => "hostNetwork pod",
            Self::Disabled => "plexus.io/inject: disabled on the pod",
        })
    }
}

/// What injection adds to a pod: init containers to put first, volumes to append.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// `plexus-init`, then the proxy as a native sidecar, in that order.
    pub init_containers: Vec<Container>,
    pub volumes: Vec<Volume>,
    /// Annotations whose values were ignored, for the admission response's warnings.
    pub warnings: Vec<String>,
}

/// Decides whether the pod described by `meta` and `spec` gets the proxy and builds what to
/// add. It does not look at namespace annotations: the webhook checks those before calling.
pub fn plan(meta: &ObjectMeta, spec: &PodSpec, config: &InjectConfig) -> Result<Injection, Skip> {
    let annotations = meta.annotations.clone().unwrap_or_default();
    let already = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER);
    if already {
        return Err(Skip::AlreadyInjected);
    }
    if spec.host_network == Some(true) {
        return Err(Skip::HostNetwork);
    }
    if annotations.get(INJECT).map(String::as_str) == Some("disabled") {
        return Err(Skip::Disabled);
    }
    let (settings, warnings) = settings(config, &annotations);
    Ok(Injection {
        init_containers: vec![
            init_container(config, &settings),
            proxy_container(config, &settings, workload_label(meta)),
        ],
        volumes: volumes(),
        warnings,
    })
}

impl Injection {
    /// The JSON Patch that applies this injection to the pod spec `spec`, found in the
    /// document at `pod_path` (the root for a Pod, `/spec/template` for a Deployment's
    /// template). Existing init containers and volumes are kept untouched.
    pub fn patch(&self, pod_path: &Pointer, spec: &PodSpec) -> Patch {
        let mut ops = Vec::new();
        if spec.init_containers.as_ref().is_none_or(Vec::is_empty) {
            ops.push(add(
                pod_path,
                &["spec", "initContainers"],
                &self.init_containers,
            ));
        } else {
            // Inserting at 0 in reverse order leaves ours first, in order, before the pod's own.
            for c in self.init_containers.iter().rev() {
                ops.push(add(pod_path, &["spec", "initContainers", "0"], c));
            }
        }
        if spec.volumes.as_ref().is_none_or(Vec::is_empty) {
            ops.push(add(pod_path, &["spec", "volumes"], &self.volumes));
        } else {
            for v in &self.volumes {
                ops.push(add(pod_path, &["spec", "volumes", "-"], v));
            }
        }
        Patch(ops)
    }
}

fn add(base: &Pointer, tokens: &[&str], value: &impl Serialize) -> PatchOperation {
    let mut path = base.to_buf();
    for token in tokens {
        path.push_back(*token);
    }
    PatchOperation::Add(AddOperation {
        path,
        // Serializing k8s-openapi types to a Value cannot fail (no non-string map keys).
        value: serde_json::to_value(value).unwrap_or_default(),
    })
}

fn init_container(config: &InjectConfig, s: &Settings) -> Container {
    let mut args = vec![
        format!("--proxy-uid={}", config.proxy_uid),
        format!("--inbound-port={INBOUND_PORT}"),
        format!("--outbound-port={OUTBOUND_PORT}"),
        format!("--admin-port={ADMIN_PORT}"),
    ];
    for (flag, value) in [
        ("skip-inbound-ports", &s.skip_inbound_ports),
        ("skip-outbound-ports", &s.skip_outbound_ports),
        ("skip-outbound-cidrs", &s.skip_outbound_cidrs),
    ] {
        if !value.is_empty() {
            args.push(format!("--{flag}={value}"));
        }
    }
    Container {
        name: INIT_CONTAINER.to_string(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec!["plexus-init".to_string()]),
        args: Some(args),
        resources: Some(resources("10m", "100m", "16Mi", "64Mi")),
        security_context: Some(SecurityContext {
            // Root without privilege: NET_ADMIN/NET_RAW suffice for iptables in the pod's netns.
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            // iptables-legacy takes a lock file under /run.
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]),
                drop: Some(vec!["ALL".to_string()]),
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The label that names the pod's workload, for the proxy's trace service name.
fn workload_label(meta: &ObjectMeta) -> Option<&'static str> {
    let labels = meta.labels.as_ref()?;
    ["app.kubernetes.io/name", "app"]
        .into_iter()
        .find(|key| labels.contains_key(*key))
}

fn proxy_container(config: &InjectConfig, s: &Settings, workload_label: Option<&str>) -> Container {
    let r = &s.resources;
    Container {
        name: PROXY_CONTAINER.to_string(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        // A native sidecar: started before the app, stopped after it, not awaited by Jobs.
        restart_policy: Some("Always".to_string()),
        env: Some(proxy_env(config, s, workload_label)),
        ports: Some(vec![
            port("plexus-inbound", INBOUND_PORT),
            port("plexus-admin", ADMIN_PORT),
        ]),
        // Kubelet starts the app containers only once this passes: the proxy has its
        // certificate and is routing. Up to two minutes for a slow control plane.
        startup_probe: Some(probe("/ready", 1, 120)),
        readiness_probe: Some(probe("/ready", 5, 3)),
        liveness_probe: Some(probe("/live", 10, 3)),
        resources: Some(resources(
            &r.cpu_request,
            &r.cpu_limit,
            &r.memory_request,
            &r.memory_limit,
        )),
        security_context: Some(SecurityContext {
            run_as_user: Some(config.proxy_uid),
            run_as_group: Some(config.proxy_uid),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".to_string()]),
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![mount(TOKEN_VOLUME, TOKEN_DIR)]),
        ..Container::default()
    }
}

fn proxy_env(config: &InjectConfig, s: &Settings, workload_label: Option<&str>) -> Vec<EnvVar> {
    let mut env = vec![
        field_env("PLEXUS_POD_NAME", "metadata.name"),
        field_env("PLEXUS_POD_NAMESPACE", "metadata.namespace"),
        field_env("PLEXUS_POD_IP", "status.podIP"),
        field_env("PLEXUS_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        // Kubernetes expands $(VAR) from the variables above, so the ID is right even when
        // the namespace or service account is not in the object we see (offline inject).
        value_env(
            "PLEXUS_IDENTITY",
            &format!(
                "spiffe://{}/ns/$(PLEXUS_POD_NAMESPACE)/sa/$(PLEXUS_SERVICE_ACCOUNT)",
                config.trust_domain
            ),
        ),
        value_env("PLEXUS_IDENTITY_TOKEN_FILE", &format!("{TOKEN_DIR}/token")),
        // The PEM itself: a pod cannot mount a ConfigMap of the controller's namespace, and
        // the anchors change only with the CA, which re-injection picks up.
        value_env("PLEXUS_IDENTITY_TRUST_ANCHORS", &config.trust_anchors),
        // One gRPC service serves both the Destination and the Identity API.
        value_env("PLEXUS_CONTROLLER_ADDR", &config.controller_addr),
        value_env("PLEXUS_IDENTITY_ADDR", &config.controller_addr),
        value_env("PLEXUS_CONTROLLER_IDENTITY", &config.controller_identity),
        value_env("PLEXUS_LOG", &s.log_level),
        value_env("PLEXUS_TRACE_SAMPLING", &s.trace_sampling.to_string()),
    ];
    if let Some(label) = workload_label {
        env.push(field_env(
            "PLEXUS_WORKLOAD",
            &format!("metadata.labels['{label}']"),
        ));
    }
    if !config.otlp_endpoint.is_empty() {
        env.push(value_env("PLEXUS_OTLP_ENDPOINT", &config.otlp_endpoint));
    }
    if !s.opaque_ports.is_empty() {
        env.push(value_env("PLEXUS_INBOUND_OPAQUE_PORTS", &s.opaque_ports));
    }
    if s.shutdown_endpoint {
        env.push(value_env("PLEXUS_SHUTDOWN_ENDPOINT", "enabled"));
    }
    env
}

fn volumes() -> Vec<Volume> {
    vec![Volume {
        name: TOKEN_VOLUME.to_string(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.to_string()),
                    expiration_seconds: Some(3600),
                    path: "token".to_string(),
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }]
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

fn port(name: &str, container_port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

fn probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(ADMIN_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Requests and limits from quantities; empty ones are left out.
fn resources(
    cpu_request: &str,
    cpu_limit: &str,
    memory_request: &str,
    memory_limit: &str,
) -> ResourceRequirements {
    let map = |cpu: &str, memory: &str| {
        let m: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, q)| (k.to_string(), Quantity(q.to_string())))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    ResourceRequirements {
        requests: map(cpu_request, memory_request),
        limits: map(cpu_limit, memory_limit),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy's `PLEXUS_SHUTDOWN_ENDPOINT` value in the plan for a pod with `annotations`.
    fn shutdown_env(annotations: &[(&str, &str)]) -> Option<String> {
        let meta = ObjectMeta {
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        };
        let injection = plan(&meta, &PodSpec::default(), &InjectConfig::default()).unwrap();
        let proxy = injection
            .init_containers
            .iter()
            .find(|c| c.name == PROXY_CONTAINER)
            .unwrap();
        let env = proxy.env.as_ref().unwrap();
        env.iter()
            .find(|e| e.name == "PLEXUS_SHUTDOWN_ENDPOINT")
            .map(|e| e.value.clone().unwrap_or_default())
    }

    #[test]
    fn the_shutdown_endpoint_annotation_enables_it_on_the_proxy() {
        use crate::overrides::SHUTDOWN_ENDPOINT;
        assert_eq!(
            shutdown_env(&[(SHUTDOWN_ENDPOINT, "enabled")]).as_deref(),
            Some("enabled")
        );
        assert_eq!(shutdown_env(&[]), None, "off unless the pod asks");
        assert_eq!(shutdown_env(&[(SHUTDOWN_ENDPOINT, "disabled")]), None);
        assert_eq!(shutdown_env(&[(SHUTDOWN_ENDPOINT, "yes")]), None);
    }
}
