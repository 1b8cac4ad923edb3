//! Mesh-wide injection defaults: the `inject.yaml` key of the chart's `plexus-config` ConfigMap.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What every injected pod gets unless its `plexus.io/*` annotations say otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct InjectConfig {
    /// The proxy image; it also carries `plexus-init` and iptables.
    pub proxy_image: String,
    pub image_pull_policy: String,
    /// `host:port` of the controller's Destination + Identity gRPC (TLS) service.
    pub controller_addr: String,
    /// The controller's SPIFFE ID, which proxies require of the server at `controller_addr`.
    pub controller_identity: String,
    /// OTLP/gRPC endpoint the proxies export spans to; empty disables export.
    pub otlp_endpoint: String,
    pub trust_domain: String,
    /// PEM of the roots proxies trust, given to each proxy inline in
    /// `PLEXUS_IDENTITY_TRUST_ANCHORS`. The webhook fills it from the controller's CA at
    /// run time; `plexusctl inject` from `--trust-anchors`. Empty in the chart's file.
    pub trust_anchors: String,
    pub proxy_uid: i64,
    pub log_level: String,
    /// Fraction of new traces the proxies sample, 0.0 to 1.0.
    pub trace_sampling: f64,
    pub proxy_resources: ProxyResources,
    /// Comma-separated ports/CIDRs that bypass the proxy in every pod (`22,8000-8100`).
    pub skip_inbound_ports: String,
    pub skip_outbound_ports: String,
    pub skip_outbound_cidrs: String,
}

/// Kubernetes quantities (`100m`, `64Mi`); an empty string leaves the field unset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyResources {
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InjectConfigError {
    #[error("injector config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("injector config {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
}

impl InjectConfig {
    /// Reads the YAML file (the chart mounts `inject.yaml` of ConfigMap `plexus-config`);
    /// absent keys keep their defaults, unknown keys are an error naming the key.
    pub fn load(path: &Path) -> Result<Self, InjectConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| InjectConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|source| InjectConfigError::Parse {
            path: shown,
            source,
        })
    }
}

/// Where the chart puts the controller: its gRPC Service and ServiceAccount.
pub struct ControlPlane<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub trust_domain: &'a str,
    pub cluster_domain: &'a str,
}

impl ControlPlane<'_> {
    /// The chart's defaults: release namespace `plexus`, `cluster.local`.
    pub const DEFAULT: ControlPlane<'static> = ControlPlane {
        namespace: "plexus",
        service_account: "plexus-controller",
        trust_domain: "cluster.local",
        cluster_domain: "cluster.local",
    };
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self::for_control_plane(&ControlPlane::DEFAULT)
    }
}

impl InjectConfig {
    /// The defaults for a controller in `plane`: proxies dial
    /// `plexus-controller.<namespace>.svc.<cluster domain>:8090` and require
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>` of it.
    pub fn for_control_plane(plane: &ControlPlane) -> Self {
        let ControlPlane {
            namespace,
            service_account,
            trust_domain,
            cluster_domain,
        } = plane;
        Self {
            proxy_image: concat!("plexus/proxy:", env!("CARGO_PKG_VERSION")).to_string(),
            image_pull_policy: "IfNotPresent".to_string(),
            controller_addr: format!("plexus-controller.{namespace}.svc.{cluster_domain}:8090"),
            controller_identity: format!(
                "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
            ),
            otlp_endpoint: String::new(),
            trust_domain: trust_domain.to_string(),
            trust_anchors: String::new(),
            proxy_uid: 2102,
            log_level: "info".to_string(),
            trace_sampling: 1.0,
            proxy_resources: ProxyResources::default(),
            skip_inbound_ports: String::new(),
            skip_outbound_ports: String::new(),
            skip_outbound_cidrs: String::new(),
        }
    }
}

impl Default for ProxyResources {
    fn default() -> Self {
        Self {
            cpu_request: "50m".to_string(),
            cpu_limit: String::new(),
            memory_request: "32Mi".to_string(),
            memory_limit: "128Mi".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_control_planes_namespace_and_domains() {
        let config = InjectConfig::for_control_plane(&ControlPlane {
            namespace: "mesh",
            service_account: "ctl",
            trust_domain: "prod.example.com",
            cluster_domain: "corp.internal",
        });
        assert_eq!(
            config.controller_addr,
            "plexus-controller.mesh.svc.corp.internal:8090"
        );
        assert_eq!(
            config.controller_identity,
            "spiffe://prod.example.com/ns/mesh/sa/ctl"
        );
        assert_eq!(config.trust_domain, "prod.example.com");
    }

    #[test]
    fn a_file_overrides_some_keys_and_unknown_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("plexus-inject-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.yaml");
        std::fs::write(
            &good,
            "trustDomain: example.org\nproxyResources:\n  cpuLimit: 500m\n",
        )
        .unwrap();
        let config = InjectConfig::load(&good).unwrap();
        assert_eq!(config.trust_domain, "example.org");
        assert_eq!(config.proxy_resources.cpu_limit, "500m");
        assert_eq!(config.proxy_resources.memory_request, "32Mi");
        assert_eq!(config.proxy_image, InjectConfig::default().proxy_image);

        let typo = dir.join("typo.yaml");
        std::fs::write(&typo, "trustDomian: example.org\n").unwrap();
        let error = InjectConfig::load(&typo).unwrap_err().to_string();
        assert!(
            error.contains("typo.yaml") && error.contains("trustDomian"),
            "{error}"
        );
        let missing = InjectConfig::load(&dir.join("absent.yaml"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("absent.yaml"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
