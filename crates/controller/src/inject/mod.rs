//! The injector: adds `plexus-init` and the proxy (as a native sidecar) to pods.
//!
//! [`plan`] is the pure decision and the containers to add, on `k8s-openapi` types; the
//! plan becomes a JSON Patch at any path ([`Injection::patch`]), so the admission webhook
//! ([`webhook::review`]) and the offline `plexusctl inject` (on workload pod templates)
//! mutate pods with the same code. Nothing here talks to the API server: the namespace
//! annotations the webhook needs come in through [`webhook::NamespaceAnnotations`].

mod config;
mod overrides;
mod pod;
pub mod webhook;

pub use config::{InjectConfig, InjectConfigError, ProxyResources};
pub use pod::{Injection, Skip, plan};

/// Annotation (on a namespace or pod) that turns injection on (`enabled`) or off (`disabled`).
pub const INJECT_ANNOTATION: &str = "plexus.io/inject";
/// Name of the proxy's native-sidecar container; its presence marks a pod as injected.
pub const PROXY_CONTAINER: &str = "plexus-proxy";
/// Name of the init container that installs the redirect rules.
pub const INIT_CONTAINER: &str = "plexus-init";
