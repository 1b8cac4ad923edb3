//! Certificate verifiers that add the SPIFFE identity check to rustls' chain
//! validation, and the classification of handshake failures for metrics.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, Error,
    OtherError, RootCertStore, SignatureScheme,
};
use x509_parser::extensions::GeneralName;

use crate::SpiffeId;

/// The server presented a valid certificate for another workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server identity mismatch: expected {expected}, presented {presented}")]
pub struct IdentityMismatch {
    pub expected: SpiffeId,
    pub presented: SpiffeId,
}

/// A certificate that chains to a trust anchor but carries no SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate has no single valid SPIFFE ID URI SAN")]
pub struct NoIdentity;

/// The SPIFFE ID in a certificate: its one URI SAN, which must parse.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, NoIdentity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|_| NoIdentity)?;
    let names = parsed
        .subject_alternative_name()
        .map_err(|_| NoIdentity)?
        .ok_or(NoIdentity)?;
    let mut uris = names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => uri.parse().map_err(|_| NoIdentity),
        _ => Err(NoIdentity),
    }
}

/// What the holder of a certificate reports about it (`/config`, logs, gauges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub not_after: std::time::SystemTime,
    /// Big-endian serial number.
    pub serial: Vec<u8>,
}

/// Reads the expiry and serial of a certificate; `None` if it does not parse.
pub fn leaf_info(cert: &CertificateDer<'_>) -> Option<LeafInfo> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let seconds = u64::try_from(parsed.validity().not_after.timestamp()).ok()?;
    Some(LeafInfo {
        not_after: std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds),
        serial: parsed.raw_serial().to_vec(),
    })
}

/// Why a handshake failed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The peer's chain does not lead to our trust anchors.
    UnknownCa,
    /// The peer is a valid workload, but not the one expected.
    IdentityMismatch,
    /// The peer's certificate is expired (or not valid yet).
    Expired,
    /// The peer's certificate carries no SPIFFE ID.
    NoIdentity,
    /// The peer sent no certificate where one is required.
    NoCertificate,
    /// Anything else: protocol errors, unsupported versions, closed connections.
    Other,
}

impl HandshakeFailure {
    /// Classifies an error from the side that verified the certificate, or
    /// the alert the other side received about it.
    pub fn of(error: &Error) -> Self {
        match error {
            Error::InvalidCertificate(e) => Self::of_certificate_error(e),
            Error::NoCertificatesPresented => Self::NoCertificate,
            Error::AlertReceived(alert) => match alert {
                AlertDescription::UnknownCA => Self::UnknownCa,
                AlertDescription::CertificateExpired => Self::Expired,
                // rustls sends `certificate_unknown` for `CertificateError::Other`,
                // which is how an identity mismatch is reported.
                AlertDescription::CertificateUnknown => Self::IdentityMismatch,
                AlertDescription::CertificateRequired => Self::NoCertificate,
                _ => Self::Other,
            },
            _ => Self::Other,
        }
    }

    /// Classifies an I/O error from tokio-rustls (which wraps the rustls error).
    pub fn of_io(error: &std::io::Error) -> Self {
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Error>())
            .map_or(Self::Other, Self::of)
    }

    fn of_certificate_error(error: &CertificateError) -> Self {
        match error {
            CertificateError::UnknownIssuer => Self::UnknownCa,
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Self::Expired,
            CertificateError::Other(OtherError(inner)) if inner.is::<IdentityMismatch>() => {
                Self::IdentityMismatch
            }
            CertificateError::Other(OtherError(inner)) if inner.is::<NoIdentity>() => {
                Self::NoIdentity
            }
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCa => "unknown_ca",
            Self::IdentityMismatch => "identity_mismatch",
            Self::Expired => "expired",
            Self::NoIdentity => "no_identity",
            Self::NoCertificate => "no_certificate",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn certificate_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Client side: the server's chain must lead to the trust anchors (rustls'
/// webpki path validation) and its URI SAN must be exactly `expected`. The TLS
/// server name is ignored: meshed endpoints are named by SPIFFE ID, not DNS.
#[derive(Debug)]
pub(crate) struct ServerIdentityVerifier {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) algorithms: WebPkiSupportedAlgorithms,
    pub(crate) expected: SpiffeId,
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // The same two steps WebPkiServerVerifier takes, with the DNS/IP name
        // check (step two there) replaced by the SPIFFE ID check.
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let presented = identity_of(end_entity).map_err(certificate_error)?;
        if presented != self.expected {
            return Err(certificate_error(IdentityMismatch {
                expected: self.expected.clone(),
                presented,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Server side: rustls' WebPkiClientVerifier for the chain, plus the rule
/// that a client certificate must carry a SPIFFE ID (read back with
/// [`crate::tls::peer_identity`]). Which identities are allowed is policy, applied
/// by the caller after the handshake so HTTP can answer 403.
#[derive(Debug)]
pub(crate) struct ClientIdentityVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        identity_of(end_entity).map_err(certificate_error)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
