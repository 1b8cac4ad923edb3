//! The control plane of the `pair-mtls` scenario: a real `plexus-controller` on a
//! file feed describing the bench's two workloads, issuing their certificates.
//!
//! Only identity comes from the controller: the client proxy keeps the static
//! destinations file (with the server's expected identity), so the scenario
//! measures the data path, not the Destination API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::process::Command;

use super::proxy::{ProxyIdentity, ProxyPorts, free_loopback_port};
use crate::process::Processes;
use crate::ready::Probe;

const NAMESPACE: &str = "bench";
pub const CLIENT_ACCOUNT: &str = "bench-client";
pub const SERVER_ACCOUNT: &str = "bench-server";
const TRUST_DOMAIN: &str = "cluster.local";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running controller (a child in the scenario's [`Processes`]) and where
/// its CA and bootstrap tokens are.
pub struct MeshControl {
    grpc: SocketAddr,
    pub ca_dir: PathBuf,
    token_dir: PathBuf,
}

impl MeshControl {
    /// Starts the controller in `dir` (recreated: a fresh CA per scenario) on a
    /// feed whose server pod is reached at `server`, and waits for `/ready`.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        server: &ProxyPorts,
        processes: &mut Processes,
    ) -> Result<Self> {
        // A leftover of an earlier run would hold a stale CA.
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let feed = dir.join("feed.yaml");
        std::fs::write(&feed, feed_yaml(server.inbound)?)
            .with_context(|| format!("writing {}", feed.display()))?;
        let control = Self {
            grpc: free_loopback_port()?,
            ca_dir: dir.join("ca"),
            token_dir: dir.join("tokens"),
        };
        let admin = free_loopback_port()?;
        let mut command = Command::new(binary);
        command
            .arg("--feed")
            .arg(format!("file:{}", feed.display()))
            .arg("--grpc-addr")
            .arg(control.grpc.to_string())
            .arg("--admin-addr")
            .arg(admin.to_string())
            .arg("--ca-dir")
            .arg(&control.ca_dir)
            .arg("--bootstrap-token-dir")
            .arg(&control.token_dir);
        let name = dir
            .file_name()
            .map_or_else(|| "controller".into(), |n| n.to_string_lossy().into_owned());
        processes.spawn(&name, command)?;
        Probe::new()
            .wait_ready("the controller", admin, "/ready", READY_TIMEOUT, processes)
            .await?;
        for account in [CLIENT_ACCOUNT, SERVER_ACCOUNT] {
            let token = control.identity(account).token_file;
            anyhow::ensure!(
                token.is_file(),
                "the controller is ready but did not write {}",
                token.display()
            );
        }
        Ok(control)
    }

    /// What the proxy of the workload running as `account` is started with.
    pub fn identity(&self, account: &str) -> ProxyIdentity {
        ProxyIdentity {
            spiffe_id: spiffe_id(account),
            token_file: self.token_dir.join(format!("{NAMESPACE}.{account}.token")),
            trust_anchors: self.ca_dir.join("ca.crt"),
            controller: self.grpc,
        }
    }
}

pub fn spiffe_id(account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{account}")
}

/// The Kubernetes objects of the bench: a client pod, and a server pod behind
/// the `bench-server` Service whose slice announces the server proxy's inbound
/// listener (nothing redirects to it outside a cluster, as in the demo).
fn feed_yaml(server_inbound: SocketAddr) -> Result<String> {
    let ip = server_inbound.ip().to_string();
    let objects = [
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": NAMESPACE, "annotations": { "plexus.io/inject": "enabled" } },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": SERVER_ACCOUNT, "namespace": NAMESPACE },
            "spec": {
                "selector": { "app": SERVER_ACCOUNT },
                "ports": [{
                    "name": "http", "port": 80, "targetPort": server_inbound.port(),
                    "protocol": "TCP", "appProtocol": "http",
                }],
            },
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{SERVER_ACCOUNT}-local"),
                "namespace": NAMESPACE,
                "labels": { "kubernetes.io/service-name": SERVER_ACCOUNT },
            },
            "addressType": "IPv4",
            "ports": [{
                "name": "http", "port": server_inbound.port(),
                "protocol": "TCP", "appProtocol": "http",
            }],
            "endpoints": [{
                "addresses": [ip],
                "conditions": { "ready": true, "serving": true, "terminating": false },
                "targetRef": { "kind": "Pod", "name": SERVER_ACCOUNT, "namespace": NAMESPACE },
            }],
        }),
        pod(CLIENT_ACCOUNT, &ip),
        pod(SERVER_ACCOUNT, &ip),
    ];
    let mut out = String::from("# Generated by `cargo xtask bench` for the pair-mtls scenario.\n");
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&object).context("writing the bench feed")?);
    }
    Ok(out)
}

fn pod(account: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": account, "namespace": NAMESPACE, "labels": { "app": account } },
        "spec": {
            "serviceAccountName": account,
            "containers": [{ "name": "app", "image": "plexus-bench:dev" }],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "conditions": [{ "type": "Ready", "status": "True" }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn the_feed_announces_the_server_proxy_and_both_accounts() {
        let yaml = feed_yaml("127.0.0.1:40123".parse().unwrap()).unwrap();
        let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|document| Value::deserialize(document).unwrap())
            .collect();
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            ["Namespace", "Service", "EndpointSlice", "Pod", "Pod"]
        );
        assert_eq!(objects[2]["ports"][0]["port"], 40123);
        assert_eq!(objects[2]["endpoints"][0]["addresses"][0], "127.0.0.1");
        assert_eq!(objects[3]["spec"]["serviceAccountName"], CLIENT_ACCOUNT);
        assert_eq!(objects[4]["spec"]["serviceAccountName"], SERVER_ACCOUNT);
    }

    #[test]
    fn identities_name_the_namespace_and_account() {
        let control = MeshControl {
            grpc: "127.0.0.1:8090".parse().unwrap(),
            ca_dir: "/tmp/ca".into(),
            token_dir: "/tmp/tokens".into(),
        };
        let identity = control.identity(SERVER_ACCOUNT);
        assert_eq!(
            identity.spiffe_id,
            "spiffe://cluster.local/ns/bench/sa/bench-server"
        );
        assert_eq!(
            identity.token_file,
            PathBuf::from("/tmp/tokens/bench.bench-server.token")
        );
        assert_eq!(identity.trust_anchors, PathBuf::from("/tmp/ca/ca.crt"));
    }
}
