//! Certificate signing requests: built by a proxy around a key that never
//! leaves its memory, checked by the CA before it signs anything.

use rcgen::{CertificateParams, CertificateSigningRequestParams, IsCa, KeyPair, SanType};
use rustls_pki_types::{CertificateSigningRequestDer, PrivatePkcs8KeyDer};

use crate::SpiffeId;

/// The only key algorithm Plexus issues for.
pub(crate) static KEY_ALGORITHM: &rcgen::SignatureAlgorithm = &rcgen::PKCS_ECDSA_P256_SHA256;

/// A fresh P-256 key and a CSR whose only SAN is the workload's SPIFFE ID.
pub struct CertificateRequest {
    /// The private key, PKCS#8. Kept in memory; pair it with the certificate
    /// the CA returns (see [`crate::tls::certified_key`]).
    pub key: PrivatePkcs8KeyDer<'static>,
    pub csr: CertificateSigningRequestDer<'static>,
}

impl CertificateRequest {
    pub fn new(identity: &SpiffeId) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate_for(KEY_ALGORITHM)?;
        let mut params = CertificateParams::default();
        // An X509-SVID carries its identity in the URI SAN only.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
        let csr = params.serialize_request(&key)?;
        Ok(Self {
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            csr: csr.der().clone(),
        })
    }
}

/// Why a CSR is refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("csr_der is not a well-formed CSR with a valid signature: {0}")]
    Invalid(rcgen::Error),
    #[error("csr_der: the key must be ECDSA P-256")]
    KeyAlgorithm,
    #[error("csr_der asks for a CA certificate")]
    RequestsCa,
    #[error("csr_der must name exactly {expected} as its only SAN, it names [{requested}]")]
    Identity {
        expected: SpiffeId,
        requested: String,
    },
}

/// Checks that `csr` is signed by its own key (proof of possession), uses a
/// P-256 key, and asks for exactly `expected` and nothing else.
pub fn check_csr(
    csr: &CertificateSigningRequestDer<'_>,
    expected: &SpiffeId,
) -> Result<CertificateSigningRequestParams, CsrError> {
    // rcgen verifies the signature and refuses extensions it does not know.
    let request = CertificateSigningRequestParams::from_der(csr).map_err(CsrError::Invalid)?;
    if request.public_key.algorithm() != KEY_ALGORITHM {
        return Err(CsrError::KeyAlgorithm);
    }
    if !matches!(request.params.is_ca, IsCa::NoCa) {
        return Err(CsrError::RequestsCa);
    }
    let names = &request.params.subject_alt_names;
    let exact =
        matches!(names.as_slice(), [SanType::URI(uri)] if uri.as_str() == expected.as_str());
    if !exact {
        let requested = names
            .iter()
            .map(|name| format!("{name:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(CsrError::Identity {
            expected: expected.clone(),
            requested,
        });
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    fn csr_with_sans(sans: Vec<SanType>) -> CertificateSigningRequestDer<'static> {
        let key = KeyPair::generate_for(KEY_ALGORITHM).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().der().clone()
    }

    #[test]
    fn accepts_its_own_request() {
        let web = id("spiffe://td/ns/shop/sa/web");
        let request = CertificateRequest::new(&web).unwrap();
        check_csr(&request.csr, &web).unwrap();
    }

    #[test]
    fn refuses_another_identity() {
        let request = CertificateRequest::new(&id("spiffe://td/ns/shop/sa/admin")).unwrap();
        let err = check_csr(&request.csr, &id("spiffe://td/ns/shop/sa/web")).unwrap_err();
        assert!(matches!(err, CsrError::Identity { .. }), "{err}");
    }

    #[test]
    fn refuses_extra_or_missing_sans() {
        let web = id("spiffe://td/ns/shop/sa/web");
        let uri = || SanType::URI(web.as_str().try_into().unwrap());
        let cases = [
            vec![],
            vec![uri(), SanType::DnsName("evil.example".try_into().unwrap())],
            vec![uri(), uri()],
            vec![SanType::DnsName("web".try_into().unwrap())],
            vec![SanType::URI(
                "spiffe://td/ns/shop/sa/web/".try_into().unwrap(),
            )],
        ];
        for sans in cases {
            let err = check_csr(&csr_with_sans(sans.clone()), &web).unwrap_err();
            assert!(matches!(err, CsrError::Identity { .. }), "{sans:?}: {err}");
        }
    }

    #[test]
    fn refuses_tampered_and_garbage_requests() {
        let web = id("spiffe://td/ns/shop/sa/web");
        let mut tampered = CertificateRequest::new(&web).unwrap().csr.to_vec();
        // Flip a bit inside the signed part (the public key sits well inside).
        let middle = tampered.len() / 2;
        tampered[middle] ^= 0x01;
        let err = check_csr(&tampered.into(), &web).unwrap_err();
        assert!(matches!(err, CsrError::Invalid(_)), "{err}");

        let err = check_csr(&vec![0x30, 0x03, 0x02, 0x01, 0x00].into(), &web).unwrap_err();
        assert!(matches!(err, CsrError::Invalid(_)), "{err}");
    }

    #[test]
    fn refuses_other_key_algorithms_and_ca_requests() {
        let web = id("spiffe://td/ns/shop/sa/web");
        let uri = SanType::URI(web.as_str().try_into().unwrap());

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![uri.clone()];
        let csr = params.serialize_request(&key).unwrap().der().clone();
        assert!(matches!(check_csr(&csr, &web), Err(CsrError::KeyAlgorithm)));

        let key = KeyPair::generate_for(KEY_ALGORITHM).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![uri];
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap().der().clone();
        assert!(matches!(check_csr(&csr, &web), Err(CsrError::RequestsCa)));
    }
}
