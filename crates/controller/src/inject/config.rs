//! Mesh-wide injection defaults: the `inject.yaml` key of the chart's `plexus-config` ConfigMap.

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
    /// OTLP/gRPC endpoint the proxies export spans to; empty disables export.
    pub otlp_endpoint: String,
    pub trust_domain: String,
    /// ConfigMap (in every meshed namespace) holding the trust anchors under `ca.crt`.
    pub trust_anchors_config_map: String,
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

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            proxy_image: concat!("plexus/proxy:", env!("CARGO_PKG_VERSION")).to_string(),
            image_pull_policy: "IfNotPresent".to_string(),
            controller_addr: "plexus-controller.plexus.svc.cluster.local:8090".to_string(),
            otlp_endpoint: String::new(),
            trust_domain: "cluster.local".to_string(),
            trust_anchors_config_map: "plexus-trust-anchors".to_string(),
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
