//! The proxy's current certificate, swapped in one place and read by every
//! handshake.
//!
//! A `tokio::sync::watch` channel holds it: reading is a short read-lock and
//! an `Arc` clone per handshake, and the same channel wakes whoever waits for
//! readiness or a rotation. Connections already established keep the
//! certificate they were made with; new handshakes get the latest.

use std::sync::Arc;
use std::time::SystemTime;

use plexus_identity::SpiffeId;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

/// One issued certificate with its in-memory key.
#[derive(Debug)]
pub struct Credential {
    pub key: Arc<CertifiedKey>,
    pub identity: SpiffeId,
    pub not_after: SystemTime,
    /// The certificate's serial number, big-endian.
    pub serial: Vec<u8>,
}

impl Credential {
    fn valid_at(&self, now: SystemTime) -> bool {
        now < self.not_after
    }
}

/// The latest credential, `None` until the first arrives.
pub type CurrentCredential = watch::Receiver<Option<Arc<Credential>>>;

/// Presents the current certificate on both sides of a handshake, and
/// nothing once it has expired: a handshake without a certificate fails
/// loudly, where an expired one would fail at the peer with a vaguer reason.
#[derive(Debug)]
pub(crate) struct CurrentCertificate(pub(crate) CurrentCredential);

impl CurrentCertificate {
    fn valid(&self) -> Option<Arc<CertifiedKey>> {
        let current = self.0.borrow();
        let credential = current.as_ref()?;
        credential
            .valid_at(SystemTime::now())
            .then(|| credential.key.clone())
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.valid()
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.valid()
    }

    fn has_certs(&self) -> bool {
        self.valid().is_some()
    }
}
