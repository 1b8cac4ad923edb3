//! The Plexus test harness: everything the integration tests share.
//!
//! Nothing depends on this crate, so it may depend on every Plexus crate
//! without a dependency cycle. The test binaries (`proxy`, `controller`,
//! `cluster`; see `Cargo.toml`) each hold one module per suite.
//!
//! - [`wait`]: bounded waits and polling.
//! - [`temp`]: per-test temporary directories.
//! - [`http`]: HTTP clients (one connection, raw exchanges, admin GETs).
//! - [`h2_frames`]: raw HTTP/2 frames (floods no client library would send).
//! - [`upstream`]: small servers on loopback (HTTP/1 + h2 + gRPC + upgrades, TCP).
//! - [`proxy`]: an in-process `plexus-proxy` with a static config.
//! - [`logical`]: a `Logical` (routes, backends, resilience) over a static target.
//! - [`controller`]: the controller's Identity and Destination APIs and its injector in-process.
//! - [`apiserver`]: an in-process stand-in for the Kubernetes API server.
//! - [`admission`]: its mutating admission (webhooks called over verified HTTPS).
//! - [`bins`]: the workspace's real binaries as processes.
//! - [`otlp`]: `plexusctl traces`' OTLP receiver as the tests use it.
//! - [`netns`]: network-namespace "pods" for the root-only tests.

pub mod admission;
pub mod apiserver;
pub mod bins;
pub mod controller;
pub mod h2_frames;
pub mod http;
pub mod logical;
pub mod netns;
pub mod otlp;
pub mod proxy;
pub mod temp;
pub mod upstream;
pub mod wait;
