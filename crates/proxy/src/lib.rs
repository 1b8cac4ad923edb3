//! The Plexus sidecar data plane: it intercepts a pod's traffic, routes it,
//! balances, retries and times it out, and forwards it to endpoints.
//!
//! Depends on `plexus-api` (its model of destinations is the Destination API's
//! message) and `plexus-identity`; never on the controller.

pub mod body;
pub mod connect;
pub mod error;
pub mod logical;

pub mod config;
pub mod control;
pub mod destinations;
pub mod inbound;
pub mod static_config;
pub mod tls;

pub mod orig_dst;
pub mod ports;
pub mod proxy;
pub mod transport;

mod accept;
mod admin;
mod auto_reply;
mod detect;
mod drain;
mod h2_flood;
mod head_timeout;
mod hop_by_hop;
mod http;
mod metrics;
mod opaque;
mod outbound;
mod upstream;

pub use proxy::{Proxy, ProxyBuilder, RunningProxy, StartError};
pub mod telemetry;
