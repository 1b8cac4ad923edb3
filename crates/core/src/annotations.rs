//! The `plexus.io/` annotation names that more than one crate reads: the injector
//! and the discovery index must spell them the same. Names only one crate reads
//! live beside their parser in that crate.

/// On a namespace or pod: turns injection on (`enabled`) or off (`disabled`).
pub const INJECT: &str = "plexus.io/inject";
/// Ports never sniffed (server-speaks-first protocols), a list of ports and ranges
/// ([`crate::ports::parse_list`]): the injector hands a pod's to its proxy, the
/// discovery index reads it on Services, namespaces and pods.
pub const OPAQUE_PORTS: &str = "plexus.io/opaque-ports";
