//! The proxy's integration tests: in-process proxies on loopback (HTTP, h2c
//! applications and HTTP/2 floods, TCP, the admin server, mTLS, inbound policy changes reaching
//! open connections, inbound rate limits, traces, the Destination client), the real binary (its
//! static file and environment; its
//! `--help`/`--version`, with the other binaries' `--version`) and `Logical` (routing, retries, timeouts, balancing, circuit breaking). One
//! module per suite; the helpers are `plexus_tests`'.

mod admin;
mod command_line;
mod control;
mod h2;
mod http;
mod limits;
mod logical_balancing;
mod logical_circuit;
mod logical_faults;
mod logical_filters;
mod logical_grpc;
mod logical_retries;
mod logical_routing;
mod logical_timeouts;
mod mtls;
mod policy_changes;
mod rate_limit;
mod static_file;
mod tcp;
mod tracing;
