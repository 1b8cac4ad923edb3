//! plexusctl, the Plexus command line, as a library: each subcommand lives in
//! its own module so that tests of other crates can use the same code in-process
//! (e.g. [`traces::Receiver`] as their OTLP collector).
//!
//! It talks to Plexus over its public interfaces (OTLP, the proxy's admin
//! HTTP, Kubernetes YAML, the Kubernetes API for `check`) and reuses the controller's injector so offline and
//! webhook injection cannot drift. It must not depend on the proxy crate: the
//! proxy's tests use this crate's trace receiver.

pub mod check;
pub mod inject;
pub mod traces;
