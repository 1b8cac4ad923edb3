//! The Plexus sidecar data plane: it intercepts a pod's traffic, routes it,
//! balances, retries and times it out, and forwards it to endpoints.
//!
//! Depends on `plexus-api` (its model of destinations is the Destination API's
//! message) and `plexus-identity`; never on the controller.

pub mod body;
pub mod connect;
pub mod error;
