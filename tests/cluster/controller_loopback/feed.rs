//! The controller's file feed: the namespace `shop`, the Services `web` and
//! `web-canary` with a ClusterIP each, per pod a Pod and an EndpointSlice,
//! and maybe an HTTPRoute. Every pod listens on its own loopback address and
//! ephemeral port, and a slice's ports apply to all its endpoints, so each
//! pod gets its own slice (Kubernetes, too, spreads a Service's endpoints
//! over several slices).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const NAMESPACE: &str = "shop";
pub const SERVICE: &str = "web";
/// The canary of `web`, which routes split traffic to.
pub const CANARY: &str = "web-canary";

/// A pod as the EndpointSlice lists it.
pub struct Member<'a> {
    pub name: &'a str,
    /// The Service whose endpoint it is.
    pub service: &'a str,
    pub addr: SocketAddr,
    /// `false`: terminating (`ready: false, serving: true, terminating: true`),
    /// the pod carries a `deletionTimestamp`, as while it shuts down.
    pub ready: bool,
}

pub fn ready<'a>(upstream: &'a super::upstream::Upstream, service: &'a str) -> Member<'a> {
    Member {
        name: &upstream.name,
        service,
        addr: upstream.addr,
        ready: true,
    }
}

pub fn terminating<'a>(upstream: &'a super::upstream::Upstream, service: &'a str) -> Member<'a> {
    Member {
        ready: false,
        ..ready(upstream, service)
    }
}

/// The HTTPRoute `shop/split`: `web` and `web-canary`, half each.
pub const SPLIT: &str = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop}
spec:
  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]
  rules:
    - backendRefs: [{name: web, port: 80, weight: 50}, {name: web-canary, port: 80, weight: 50}]
";

/// A new version of [`SPLIT`] with two bad fields: a path without `/`, and
/// a canary backend without a port.
pub const BROKEN_SPLIT: &str = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop}
spec:
  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: api}}]
      backendRefs: [{name: web, port: 80, weight: 10}, {name: web-canary, weight: 90}]
";

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
    /// controller never reads half a file), listing `members` and then
    /// `extra` (more documents). The controller polls the modification
    /// time, so each version gets a later one than the last, even on a
    /// filesystem that keeps whole seconds.
    pub fn write(&mut self, members: &[Member<'_>], extra: &str) {
        let aside = self.path.with_extension("yaml.new");
        std::fs::write(&aside, render(members) + extra).expect("write the feed");
        self.set_later_modified(&aside);
        std::fs::rename(&aside, &self.path).expect("replace the feed");
    }

    /// Truncates the file in place, as an editor does before it writes.
    pub fn truncate(&mut self) {
        std::fs::File::create(&self.path).expect("truncate the feed");
        self.set_later_modified(&self.path.clone());
    }

    /// Writes the file in place (into the same inode), as an editor does
    /// after truncating it.
    pub fn write_in_place(&mut self, members: &[Member<'_>], extra: &str) {
        use std::io::Write as _;
        let mut file = std::fs::File::options()
            .write(true)
            .truncate(true)
            .open(&self.path)
            .expect("open the feed");
        file.write_all((render(members) + extra).as_bytes())
            .expect("write the feed");
        drop(file);
        self.set_later_modified(&self.path.clone());
    }

    fn set_later_modified(&mut self, path: &Path) {
        let now = SystemTime::now();
        let modified = match self.last_modified {
            Some(last) if now <= last + Duration::from_secs(1) => last + Duration::from_secs(1),
            _ => now,
        };
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|file| file.set_modified(modified))
            .expect("set the feed's modification time");
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
---
apiVersion: v1
kind: Service
metadata:
  name: {CANARY}
  namespace: {NAMESPACE}
  annotations: {{plexus.io/load-balancer: round-robin}}
spec:
  clusterIP: 10.96.0.11
  clusterIPs: [10.96.0.11]
  ports: [{{name: http, port: 80, protocol: TCP}}]
"
    );
    for member in members {
        let (name, ip, port) = (member.name, member.addr.ip(), member.addr.port());
        let service = member.service;
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
  labels: {{app: {service}}}{deletion}
spec: {{serviceAccountName: {service}, containers: [{{name: app}}]}}
status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: {NAMESPACE}
  labels: {{kubernetes.io/service-name: {service}}}
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
