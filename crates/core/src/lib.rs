//! What several Plexus crates must agree on and nothing more: the direction a
//! request crosses a proxy, port sets, and the `plexus.io/` annotation names.
//!
//! This crate is the floor of the crate map: it depends on no other Plexus crate,
//! on no Kubernetes, gRPC or async library, so the init container, the injector,
//! the discovery index and the proxy can all use it without pulling each other in.

mod direction;

pub use direction::Direction;
