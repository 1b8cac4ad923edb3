//! What several Plexus crates must agree on and nothing more: the direction a
//! request crosses a proxy, port sets, the inbound proxy's source address, the `plexus.io/` annotation names,
//! the syntax of a consistent-hash key ([`hash_key`]), the
//! proxy's container name, the CA Secret's name, the control plane's HTTP/2 keep-alive, what makes a watched file a new version, and
//! how swept state is given back to the system ([`memory`]).
//!
//! This crate is the floor of the crate map: it depends on no other Plexus crate,
//! on no Kubernetes, gRPC or async library (only std, `thiserror`, and `libc` for
//! glibc's `malloc_trim`), so the init
//! container, the injector, the discovery index and the proxy can all use it
//! without pulling each other in. The one exception is test-only: feature
//! `proptest` adds [`property`], the shared configuration of property tests.

pub mod annotations;
pub mod app_source;
mod direction;
mod file_version;
pub mod hash_key;
mod keep_alive;
pub mod memory;
pub mod ports;
#[cfg(feature = "proptest")]
pub mod property;

pub use direction::Direction;
pub use file_version::FileVersion;
pub use keep_alive::KeepAlive;

/// Name of the proxy's native-sidecar container: the injector adds it, and its
/// presence is what marks a pod as meshed to discovery and to `plexusctl check`.
pub const PROXY_CONTAINER: &str = "plexus-proxy";

/// The Secret that holds the mesh's CA in the controller's namespace, and its key
/// for the trust anchors (PEM): the controller writes both, and `plexusctl check`
/// compares the webhook's `caBundle` with them.
pub const CA_SECRET: &str = "plexus-ca";
pub const CA_TRUST_ANCHOR_KEY: &str = "ca.crt";
