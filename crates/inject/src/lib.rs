//! The injector's mutation: adds `plexus-init` and the proxy (as a native sidecar) to pods.
//!
//! [`plan`] is the pure decision and the containers to add, on `k8s-openapi` types; the
//! plan becomes a JSON Patch at any path ([`Injection::patch`]), so the controller's
//! admission webhook (on pods) and the offline `plexusctl inject` (on workload pod
//! templates) mutate pods with the same code.
//!
//! This crate must not depend on the controller, on a Kubernetes client or on gRPC: it
//! talks to nothing, and the webhook serving that feeds it AdmissionReviews stays in the
//! controller. Names other crates read too (annotations, the proxy's container) come from
//! `plexus-core`.

mod config;
mod overrides;
mod pod;

pub use config::{ControlPlane, InjectConfig, InjectConfigError, ProxyResources};
pub use overrides::READ as ANNOTATIONS_READ;
pub use pod::{Injection, Skip, plan};

/// Name of the init container that installs the redirect rules.
pub const INIT_CONTAINER: &str = "plexus-init";
