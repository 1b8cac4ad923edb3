//! The Plexus control plane: discovery of Services, endpoints and routes (from
//! Kubernetes watches or a YAML file), the Destination API that streams them to
//! proxies, and the controller's admin endpoint.
//!
//! The discovery [`index`] holds no Kubernetes client and no gRPC types beyond
//! the `plexus-api` messages it produces; feeds and servers wrap it. This crate
//! must not depend on the proxy.

pub mod admin;
pub mod admission;
pub mod destination;
pub mod feed;
pub mod grpc;
pub mod identity;
pub mod index;
pub mod inject;
pub mod metrics;
pub mod rbac;
pub mod telemetry;
