//! SPIFFE identities, the certificate authority, CSRs and rustls configurations.
//!
//! Depends on nothing of Plexus but may be used by every other crate.
