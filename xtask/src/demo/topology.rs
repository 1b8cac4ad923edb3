//! The demo application: which pods exist, what each one does, and where it listens.
//!
//! Every "pod" gets its own loopback address (127.0.10.N; the whole 127/8 is local on
//! Linux), so the app, its sidecar and their ports look like a pod's: the same ports on
//! distinct addresses. Everything else (the feed, the sidecars' environment, the summary)
//! is derived from this one description.

use std::net::{Ipv4Addr, SocketAddr};

/// Kubernetes namespace of the demo application.
pub const NAMESPACE: &str = "demo";
/// The port every app listens on, and the port of every demo Service.
pub const APP_PORT: u16 = 8080;
/// Sidecar ports, as in a real pod (docs/architecture.md, "Ports and names").
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
pub const ADMIN_PORT: u16 = 15020;

/// Where the infrastructure listens: the controller and the trace receiver.
pub const INFRA_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 10, 1);
pub const CONTROLLER_GRPC_PORT: u16 = 8090;
pub const CONTROLLER_ADMIN_PORT: u16 = 9990;
pub const OTLP_GRPC_PORT: u16 = 4317;
pub const OTLP_HTTP_PORT: u16 = 4318;

/// The Service the frontend calls, and the parent of the 80/20 HTTPRoute.
pub const BACKEND_SERVICE: &str = "backend";
/// The HTTPRoute's split, in percent of requests.
pub const SPLIT: [(&str, u32); 2] = [("backend-v1", 80), ("backend-v2", 20)];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Frontend,
    Backend,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Frontend => "frontend",
            Role::Backend => "backend",
        }
    }
}

/// How a backend replica misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    /// Fraction of requests answered with 500 or 503.
    pub fail_rate: f64,
    /// Added to every answer.
    pub delay_ms: u64,
}

impl Behaviour {
    pub const HEALTHY: Behaviour = Behaviour {
        fail_rate: 0.0,
        delay_ms: 0,
    };
}

/// One pod of the demo application: an app and its sidecar on one loopback address.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub name: &'static str,
    /// The workload (Deployment) name: `service.name` in traces.
    pub workload: &'static str,
    pub role: Role,
    /// Label `version`; the versioned Services select on it.
    pub version: &'static str,
    pub ip: Ipv4Addr,
    pub behaviour: Behaviour,
}

impl Pod {
    /// Also the ServiceAccount: one identity per application, shared by its versions.
    pub fn app_label(&self) -> &'static str {
        self.role.as_str()
    }

    pub fn service_account(&self) -> &'static str {
        self.role.as_str()
    }

    pub fn app_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, APP_PORT))
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, INBOUND_PORT))
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, OUTBOUND_PORT))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, ADMIN_PORT))
    }

    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{NAMESPACE}/sa/{}",
            self.service_account()
        )
    }
}

/// A Service of the demo namespace and the pods it selects.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: &'static str,
    pub app: &'static str,
    /// `None`: every version of `app`.
    pub version: Option<&'static str>,
}

impl Service {
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.app_label() == self.app && self.version.is_none_or(|v| v == pod.version)
    }

    pub fn host(&self) -> String {
        format!("{}.{NAMESPACE}.svc.cluster.local", self.name)
    }

    pub fn authority(&self) -> String {
        format!("{}:{APP_PORT}", self.host())
    }
}

/// The whole demo application. Built only by [`Topology::demo`], which keeps the
/// frontend first.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pods: Vec<Pod>,
    services: Vec<Service>,
}

impl Topology {
    /// A frontend, and a backend whose v1 has a healthy, a flaky and a slow replica.
    pub fn demo() -> Topology {
        let pod = |n: u8, name, workload, role, version, behaviour| Pod {
            name,
            workload,
            role,
            version,
            ip: Ipv4Addr::new(127, 0, 10, n),
            behaviour,
        };
        let pods = vec![
            pod(
                10,
                "frontend-0",
                "frontend",
                Role::Frontend,
                "v1",
                Behaviour::HEALTHY,
            ),
            pod(
                20,
                "backend-v1-healthy",
                "backend-v1",
                Role::Backend,
                "v1",
                Behaviour::HEALTHY,
            ),
            pod(
                21,
                "backend-v1-flaky",
                "backend-v1",
                Role::Backend,
                "v1",
                Behaviour {
                    fail_rate: 0.2,
                    delay_ms: 0,
                },
            ),
            pod(
                22,
                "backend-v1-slow",
                "backend-v1",
                Role::Backend,
                "v1",
                Behaviour {
                    fail_rate: 0.0,
                    delay_ms: 150,
                },
            ),
            pod(
                30,
                "backend-v2-0",
                "backend-v2",
                Role::Backend,
                "v2",
                Behaviour::HEALTHY,
            ),
        ];
        let service = |name, app, version| Service { name, app, version };
        let services = vec![
            service("frontend", "frontend", None),
            service(BACKEND_SERVICE, "backend", None),
            service("backend-v1", "backend", Some("v1")),
            service("backend-v2", "backend", Some("v2")),
        ];
        Topology { pods, services }
    }

    /// The pod the demo's traffic enters by: `demo()` puts it first.
    pub fn frontend(&self) -> &Pod {
        &self.pods[0]
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn backends(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(|p| p.role == Role::Backend)
    }

    /// The replica that fails a share of its requests, if any.
    pub fn flaky(&self) -> Option<&Pod> {
        self.backends().find(|p| p.behaviour.fail_rate > 0.0)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn pods_of<'a>(&'a self, service: &'a Service) -> impl Iterator<Item = &'a Pod> {
        self.pods.iter().filter(move |p| service.selects(p))
    }

    pub fn controller_grpc_addr(&self) -> SocketAddr {
        SocketAddr::from((INFRA_IP, CONTROLLER_GRPC_PORT))
    }

    pub fn controller_admin_addr(&self) -> SocketAddr {
        SocketAddr::from((INFRA_IP, CONTROLLER_ADMIN_PORT))
    }

    pub fn otlp_grpc_addr(&self) -> SocketAddr {
        SocketAddr::from((INFRA_IP, OTLP_GRPC_PORT))
    }

    pub fn otlp_http_addr(&self) -> SocketAddr {
        SocketAddr::from((INFRA_IP, OTLP_HTTP_PORT))
    }

    /// Every address the demo binds, to check up front that none is taken.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs = vec![
            self.controller_grpc_addr(),
            self.controller_admin_addr(),
            self.otlp_grpc_addr(),
            self.otlp_http_addr(),
        ];
        for pod in &self.pods {
            addrs.extend([
                pod.app_addr(),
                pod.inbound_addr(),
                pod.outbound_addr(),
                pod.admin_addr(),
            ]);
        }
        addrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_address_is_distinct() {
        let addrs = Topology::demo().listen_addrs();
        let unique: HashSet<_> = addrs.iter().collect();
        assert_eq!(unique.len(), addrs.len(), "{addrs:?}");
    }

    #[test]
    fn services_select_the_right_replicas() {
        let t = Topology::demo();
        let names = |svc: &str| {
            let svc = t.service(svc).expect("service exists");
            t.pods_of(svc).map(|p| p.name).collect::<Vec<_>>()
        };
        assert_eq!(names("frontend"), ["frontend-0"]);
        assert_eq!(
            names("backend-v1"),
            ["backend-v1-healthy", "backend-v1-flaky", "backend-v1-slow"]
        );
        assert_eq!(names("backend-v2"), ["backend-v2-0"]);
        assert_eq!(names("backend").len(), 4);
    }

    #[test]
    fn the_demo_has_one_frontend_one_flaky_and_one_slow_replica() {
        let t = Topology::demo();
        assert_eq!(t.frontend().role, Role::Frontend);
        assert_eq!(t.flaky().map(|p| p.name), Some("backend-v1-flaky"));
        assert_eq!(t.backends().filter(|p| p.behaviour.delay_ms > 0).count(), 1);
        for (service, _) in SPLIT {
            assert!(t.service(service).is_some(), "split names {service}");
        }
    }
}
