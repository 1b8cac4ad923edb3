//! The controller's file feed: the namespace `shop`, the Service `web` with a
//! ClusterIP, and per pod a Pod and an EndpointSlice. Every pod listens on
//! its own loopback address and ephemeral port, and a slice's ports apply to
//! all its endpoints, so each pod gets its own slice (Kubernetes, too,
//! spreads a Service's endpoints over several slices).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const NAMESPACE: &str = "shop";
pub const SERVICE: &str = "web";

/// A pod as the EndpointSlice lists it.
pub struct Member<'a> {
    pub name: &'a str,
    pub addr: SocketAddr,
    /// `false`: terminating (`ready: false, serving: true, terminating: true`),
    /// the pod carries a `deletionTimestamp`, as while it shuts down.
    pub ready: bool,
}

pub fn ready(upstream: &super::upstream::Upstream) -> Member<'_> {
    Member {
        name: &upstream.name,
        addr: upstream.addr,
        ready: true,
    }
}

pub fn terminating(upstream: &super::upstream::Upstream) -> Member<'_> {
    Member {
        ready: false,
        ..ready(upstream)
    }
}

pub struct Feed {
    path: PathBuf,
    last_modified: Option<SystemTime>,
}

impl Feed {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("objects.yaml"),
            last_modified: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file at once (written aside, then renamed: the
    /// controller never reads half a file). The controller polls the
    /// modification time, so each version gets a later one than the last,
    /// even on a filesystem that keeps whole seconds.
    pub fn write(&mut self, members: &[Member<'_>]) {
        let aside = self.path.with_extension("yaml.new");
        std::fs::write(&aside, render(members)).expect("write the feed");
        let now = SystemTime::now();
        let modified = match self.last_modified {
            Some(last) if now <= last + Duration::from_secs(1) => last + Duration::from_secs(1),
            _ => now,
        };
        std::fs::File::options()
            .write(true)
            .open(&aside)
            .and_then(|file| file.set_modified(modified))
            .expect("set the feed's modification time");
        std::fs::rename(&aside, &self.path).expect("replace the feed");
        self.last_modified = Some(modified);
    }
}

fn render(members: &[Member<'_>]) -> String {
    // Round robin: a new endpoint gets its share at once, so the time to
    // pick it up measures discovery, not the warm-up of peak-EWMA (which
    // assumes 30 ms for an endpoint that has not answered yet).
    let mut yaml = format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: Service
metadata:
  name: {SERVICE}
  namespace: {NAMESPACE}
  annotations: {{plexus.io/load-balancer: round-robin}}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{{name: http, port: 80, protocol: TCP}}]
"
    );
    for member in members {
        let (name, ip, port) = (member.name, member.addr.ip(), member.addr.port());
        let (ready, terminating) = (member.ready, !member.ready);
        let deletion = if member.ready {
            String::new()
        } else {
            "\n  deletionTimestamp: \"2026-01-01T00:00:00Z\"".to_string()
        };
        let _ = write!(
            yaml,
            "---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {NAMESPACE}
  labels: {{app: {SERVICE}}}{deletion}
spec: {{serviceAccountName: {SERVICE}, containers: [{{name: app}}]}}
status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: {NAMESPACE}
  labels: {{kubernetes.io/service-name: {SERVICE}}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
  - addresses: [\"{ip}\"]
    conditions: {{ready: {ready}, serving: true, terminating: {terminating}}}
    targetRef: {{kind: Pod, name: {name}, namespace: {NAMESPACE}}}
"
        );
    }
    yaml
}
