//! The environment of each pod's sidecar (`PLEXUS_*`, read once by the proxy at start).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::topology::{NAMESPACE, Pod};

/// Where a sidecar learns destinations, gets its certificate and sends spans.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarPlan {
    /// The controller's Identity API and what a sidecar needs to use it.
    pub identity: Option<IdentityPlan>,
    /// The controller's Destination API.
    pub controller: Option<SocketAddr>,
    /// OTLP/gRPC endpoint, e.g. `http://127.0.10.1:4317`.
    pub otlp_endpoint: String,
}

/// Outside a cluster the controller issues a bootstrap token per workload identity
/// (`<dir>/<namespace>.<service-account>.token`) in place of a ServiceAccount token.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityPlan {
    pub controller: SocketAddr,
    pub token_dir: PathBuf,
    /// The controller's CA directory (`--ca-dir`).
    pub ca_dir: PathBuf,
}

impl IdentityPlan {
    /// The roots the sidecars trust: the controller CA's certificate.
    pub fn trust_anchors(&self) -> PathBuf {
        self.ca_dir.join("ca.crt")
    }

    pub fn token_file(&self, pod: &Pod) -> PathBuf {
        self.token_dir
            .join(format!("{NAMESPACE}.{}.token", pod.service_account()))
    }
}

/// The variables for `pod`'s sidecar.
pub fn sidecar_env(pod: &Pod, plan: &SidecarPlan) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PLEXUS_OUTBOUND_ADDR", pod.outbound_addr().to_string()),
        ("PLEXUS_INBOUND_ADDR", pod.inbound_addr().to_string()),
        ("PLEXUS_ADMIN_ADDR", pod.admin_addr().to_string()),
        // Nothing redirects to the inbound port here: it forwards to the app itself.
        ("PLEXUS_INBOUND_APP_ADDR", pod.app_addr().to_string()),
        ("PLEXUS_OTLP_ENDPOINT", plan.otlp_endpoint.clone()),
        // Every request of the demo is traced, so a retried one is certain to be shown.
        ("PLEXUS_TRACE_SAMPLING", "1.0".to_owned()),
        ("PLEXUS_WORKLOAD", pod.workload.to_owned()),
        ("PLEXUS_POD_NAME", pod.name.to_owned()),
        ("PLEXUS_POD_NAMESPACE", NAMESPACE.to_owned()),
        ("PLEXUS_SERVICE_ACCOUNT", pod.service_account().to_owned()),
        // The demo stops its sidecars after the traffic: nothing is left to drain.
        ("PLEXUS_DRAIN_TIMEOUT_MS", "1000".to_owned()),
        ("PLEXUS_LOG", "info".to_owned()),
    ];
    if let Some(identity) = &plan.identity {
        env.extend([
            ("PLEXUS_IDENTITY", pod.spiffe_id()),
            (
                "PLEXUS_IDENTITY_TOKEN_FILE",
                identity.token_file(pod).display().to_string(),
            ),
            (
                "PLEXUS_IDENTITY_TRUST_ANCHORS",
                identity.trust_anchors().display().to_string(),
            ),
            ("PLEXUS_IDENTITY_ADDR", identity.controller.to_string()),
        ]);
    }
    if let Some(controller) = plan.controller {
        env.push(("PLEXUS_CONTROLLER_ADDR", controller.to_string()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::topology::Topology;

    #[test]
    fn each_sidecar_listens_on_its_pods_address_and_forwards_to_its_app() {
        let topology = Topology::demo();
        let flaky = topology.flaky().expect("a flaky pod");
        let controller: SocketAddr = "127.0.10.1:8090".parse().expect("addr");
        let plan = SidecarPlan {
            identity: Some(IdentityPlan {
                controller,
                token_dir: "/tmp/demo/tokens".into(),
                ca_dir: "/tmp/demo/ca".into(),
            }),
            controller: Some(controller),
            otlp_endpoint: "http://127.0.10.1:4317".into(),
        };
        let env: std::collections::HashMap<_, _> = sidecar_env(flaky, &plan).into_iter().collect();
        assert_eq!(env["PLEXUS_INBOUND_ADDR"], "127.0.10.21:15006");
        assert_eq!(env["PLEXUS_OUTBOUND_ADDR"], "127.0.10.21:15001");
        assert_eq!(env["PLEXUS_ADMIN_ADDR"], "127.0.10.21:15020");
        assert_eq!(env["PLEXUS_INBOUND_APP_ADDR"], "127.0.10.21:8080");
        assert_eq!(env["PLEXUS_CONTROLLER_ADDR"], "127.0.10.1:8090");
        assert_eq!(env["PLEXUS_WORKLOAD"], "backend-v1");
        assert_eq!(env["PLEXUS_POD_NAME"], "backend-v1-flaky");
        assert_eq!(
            env["PLEXUS_IDENTITY"],
            "spiffe://cluster.local/ns/demo/sa/backend"
        );
        assert_eq!(
            env["PLEXUS_IDENTITY_TOKEN_FILE"],
            "/tmp/demo/tokens/demo.backend.token"
        );
        assert_eq!(env["PLEXUS_IDENTITY_TRUST_ANCHORS"], "/tmp/demo/ca/ca.crt");
        assert_eq!(env["PLEXUS_IDENTITY_ADDR"], "127.0.10.1:8090");
    }
}
