//! The Plexus control plane's servers: the Destination API that streams the
//! discovery index (`plexus-discovery`) to proxies, the Identity API and its CA,
//! the injector webhook's HTTPS serving and `caBundle` watch (the mutation itself
//! is `plexus-inject`), the leader election that picks the one replica that
//! writes, and the controller's admin, metrics and telemetry.
//!
//! This crate must not depend on the proxy or on plexusctl: it is the top of the
//! control-plane side, and nothing below it may import from it.

pub mod admin;
pub mod admission;
#[cfg(test)]
mod annotations_doc;
pub mod destination;
pub mod grpc;
pub mod identity;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod telemetry;
