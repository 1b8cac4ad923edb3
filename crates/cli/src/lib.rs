//! plexusctl, the Plexus command line, as a library: each subcommand lives in
//! its own module, so the binary and tests run the same code.
//!
//! It talks to Plexus over its public interfaces (OTLP, the proxy's admin
//! HTTP, Kubernetes YAML, the Kubernetes API for `check`) and reuses the
//! injector's mutation (`plexus-inject`) so offline and webhook injection cannot
//! drift, and the OTLP receiver of `plexus-traces`. It must not depend on the
//! controller or the proxy crate.

pub mod check;
pub mod inject;
pub mod traces;
