//! The source address the inbound proxy dials its application from, in a
//! cluster. plexus-init lets exactly this source through on `lo`, so the
//! proxy can reach the app on the pod's own IP without being redirected back
//! to its inbound listener; the app can tell proxied clients from its own
//! loopback callers by it.

use std::net::{Ipv4Addr, Ipv6Addr};

/// On `lo` already (all of 127.0.0.0/8 is local).
pub const V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// Not local by default: plexus-init adds it to `lo` in IPv6 pods.
pub const V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);
