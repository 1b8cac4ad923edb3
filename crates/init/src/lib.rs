//! Builds and applies the iptables rules that send a pod's traffic through its proxy.
//!
//! `plexus-init` runs once as an init container with NET_ADMIN/NET_RAW in the pod's network
//! namespace: it adds chains of its own to the `nat` table that redirect inbound TCP to the
//! proxy's inbound listener and outbound TCP to its outbound listener, with exclusions for the
//! proxy's own UID, loopback, the admin port and configured skip ports/CIDRs. Rules are
//! rendered as `iptables-restore` input (pure, tested as golden text) and applied atomically;
//! running twice changes nothing. Port sets come from `plexus-core`, the only Plexus crate this
//! one may depend on; it must not depend on Kubernetes: it only knows ports, addresses and the
//! iptables text format.

pub mod apply;
pub mod ipv6;
pub mod rules;
