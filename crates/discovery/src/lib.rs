//! Plexus discovery: the [`index`] of Services, endpoints, Pods and routes that
//! the Destination API answers from, and the [`feed`]s that fill it (Kubernetes
//! watches in a cluster, a YAML file outside one, and the route status writer).
//!
//! The index produces `plexus-api` messages but serves nothing: this crate must
//! not depend on gRPC (tonic), on the controller or on the proxy. The controller
//! wraps it in its servers and reads it for its metrics ([`index::IndexSizes`]).

pub mod feed;
pub mod index;
