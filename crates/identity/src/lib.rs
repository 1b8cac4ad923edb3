//! SPIFFE identities, the certificate authority, CSRs and rustls configurations.
//!
//! Everything both the controller (which signs) and the proxy (which asks and
//! then speaks mTLS) need to agree on lives here, once. Depends on nothing of
//! Plexus, nor on tokio, tonic or Kubernetes, so every other crate may use it.

pub mod ca;
pub mod csr;
pub mod spiffe;
pub mod tls;
pub mod verify;

pub use ca::{Ca, CaError, CaMaterial, IssuedCertificate, Validity};
pub use csr::{CertificateRequest, CsrError, check_csr};
/// Key generation and signing errors come from rcgen.
pub use rcgen::Error as RcgenError;
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use verify::{
    HandshakeFailure, IdentityMismatch, LeafInfo, NoIdentity, identity_of, leaf_info,
};
