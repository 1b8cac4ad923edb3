//! The certificate authority: a self-made root, or an intermediate under a
//! user's root, that signs short-lived workload certificates.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};

use crate::SpiffeId;
use crate::csr::{CsrError, KEY_ALGORITHM, check_csr};

/// Default lifetime of a workload certificate.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// Certificates start this much in the past so a peer whose clock runs a
/// little behind does not refuse a certificate issued a moment ago.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The CA as stored (Secret `plexus-ca` or files): PEM text.
#[derive(Clone, PartialEq, Eq)]
pub struct CaMaterial {
    /// The signing certificate: the root itself, or the intermediate.
    pub certificate_pem: String,
    /// The signing key, PKCS#8.
    pub key_pem: String,
    /// The root that proxies trust. Equal to `certificate_pem` for a self-made root.
    pub trust_anchor_pem: String,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CaMaterial").finish_non_exhaustive()
    }
}

/// Why the CA could not be built or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{field}: {source}")]
    Material {
        field: &'static str,
        source: rcgen::Error,
    },
    #[error("{field}: not a PEM certificate")]
    NotPem { field: &'static str },
    #[error("the CA key does not match the CA certificate")]
    KeyMismatch,
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("signing failed: {0}")]
    Sign(rcgen::Error),
}

/// The validity window of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From [`CLOCK_SKEW`] ago until `lifetime` from now.
    pub fn starting_now(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now.checked_sub(CLOCK_SKEW).unwrap_or(now),
            not_after: now + lifetime,
        }
    }
}

/// A certificate the CA signed.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub leaf: CertificateDer<'static>,
    /// Intermediates up to, not including, the trust anchor.
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
    pub serial: Vec<u8>,
}

/// A signing CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    material: CaMaterial,
    signing_cert: CertificateDer<'static>,
    trust_anchor: CertificateDer<'static>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed root, valid for `lifetime`.
    pub fn new_root(trust_domain: &str, lifetime: Duration) -> Result<Self, CaError> {
        let key = new_key()?;
        let params = ca_params(trust_domain, "root", lifetime);
        let cert = params.self_signed(&key).map_err(CaError::Sign)?;
        let pem = cert.pem();
        Self::from_material(&CaMaterial {
            certificate_pem: pem.clone(),
            key_pem: key.serialize_pem(),
            trust_anchor_pem: pem,
        })
    }

    /// A new intermediate signed by the user's root (`root_cert_pem`,
    /// `root_key_pem` in PKCS#8), valid for `lifetime`. Proxies trust the root.
    pub fn new_intermediate(
        trust_domain: &str,
        root_cert_pem: &str,
        root_key_pem: &str,
        lifetime: Duration,
    ) -> Result<Self, CaError> {
        let root_key = KeyPair::from_pem(root_key_pem).map_err(|source| CaError::Material {
            field: "root key",
            source,
        })?;
        let root = Issuer::from_ca_cert_pem(root_cert_pem, root_key).map_err(|source| {
            CaError::Material {
                field: "root certificate",
                source,
            }
        })?;
        let key = new_key()?;
        let params = ca_params(trust_domain, "intermediate", lifetime);
        let cert = params.signed_by(&key, &root).map_err(CaError::Sign)?;
        Self::from_material(&CaMaterial {
            certificate_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            trust_anchor_pem: root_cert_pem.to_owned(),
        })
    }

    /// Loads a stored CA, checking that its key matches its certificate.
    pub fn from_material(material: &CaMaterial) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(&material.key_pem).map_err(|source| CaError::Material {
            field: "CA key",
            source,
        })?;
        let signing_cert = parse_pem_cert(&material.certificate_pem, "CA certificate")?;
        let trust_anchor = parse_pem_cert(&material.trust_anchor_pem, "trust anchor")?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&signing_cert).map_err(|_| CaError::Material {
                field: "CA certificate",
                source: rcgen::Error::CouldNotParseCertificate,
            })?;
        if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key) {
            return Err(CaError::KeyMismatch);
        }
        let issuer =
            Issuer::from_ca_cert_der(&signing_cert, key).map_err(|source| CaError::Material {
                field: "CA certificate",
                source,
            })?;
        Ok(Self {
            issuer,
            material: material.clone(),
            signing_cert,
            trust_anchor,
        })
    }

    /// The PEM text to store so the same CA can be loaded again.
    pub fn material(&self) -> &CaMaterial {
        &self.material
    }

    /// The root proxies must trust, DER.
    pub fn trust_anchor(&self) -> &CertificateDer<'static> {
        &self.trust_anchor
    }

    /// The root proxies must trust, PEM (for `PLEXUS_IDENTITY_TRUST_ANCHORS`).
    pub fn trust_anchor_pem(&self) -> &str {
        &self.material.trust_anchor_pem
    }

    /// Intermediates a leaf must be sent with: none for a self-made root.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        if self.signing_cert == self.trust_anchor {
            Vec::new()
        } else {
            vec![self.signing_cert.clone()]
        }
    }

    /// Checks `csr` (see [`check_csr`]) and signs it for exactly `identity`.
    pub fn certify(
        &self,
        csr: &CertificateSigningRequestDer<'_>,
        identity: &SpiffeId,
        validity: Validity,
    ) -> Result<IssuedCertificate, CaError> {
        let request = check_csr(csr, identity)?;
        let serial = random_serial();
        let mut params = CertificateParams::default();
        // Built from scratch rather than from the request: nothing the
        // requester asked for beyond its key and its checked SAN is honoured.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            identity.as_str().try_into().map_err(CaError::Sign)?,
        )];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(CaError::Sign)?;
        Ok(IssuedCertificate {
            leaf: leaf.der().clone(),
            chain: self.chain(),
            // X.509 keeps whole seconds; report what the certificate says.
            not_after: truncate_to_second(validity.not_after),
            serial,
        })
    }

    /// A TLS server certificate for DNS names (and IP addresses, written as
    /// such), with a fresh key made here (the
    /// controller's own HTTPS endpoints, e.g. the admission webhook, which the
    /// API server reaches by Service DNS name and checks against this CA).
    /// Server use only: it carries no SPIFFE ID, so no mesh peer accepts it.
    pub fn issue_dns(
        &self,
        dns_names: &[String],
        validity: Validity,
    ) -> Result<(IssuedCertificate, PrivatePkcs8KeyDer<'static>), CaError> {
        let key = new_key()?;
        let serial = random_serial();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        if let Some(first) = dns_names.first() {
            name.push(DnType::CommonName, first.as_str());
        }
        params.distinguished_name = name;
        params.subject_alt_names = dns_names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                // A webhook registered by `url:` to an address is checked against an IP SAN.
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|source| CaError::Material {
                        field: "DNS name",
                        source,
                    }),
            })
            .collect::<Result<_, _>>()?;
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(CaError::Sign)?;
        let issued = IssuedCertificate {
            leaf: leaf.der().clone(),
            chain: self.chain(),
            not_after: truncate_to_second(validity.not_after),
            serial,
        };
        Ok((issued, PrivatePkcs8KeyDer::from(key.serialize_der())))
    }
}

fn new_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(KEY_ALGORITHM).map_err(CaError::Sign)
}

fn ca_params(trust_domain: &str, role: &str, lifetime: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let serial = random_serial();
    // Verifiers find an issuer by name: two CAs (two clusters, or a CA made
    // again) must never share one, or a foreign chain reads as a bad signature
    // instead of an unknown CA.
    let tag: String = serial[..4].iter().map(|b| format!("{b:02x}")).collect();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Plexus");
    name.push(
        DnType::CommonName,
        format!("Plexus {role} CA {trust_domain} {tag}"),
    );
    params.distinguished_name = name;
    let validity = Validity::starting_now(lifetime);
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    // This CA signs leaves only; it never makes further CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn parse_pem_cert(pem: &str, field: &'static str) -> Result<CertificateDer<'static>, CaError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| CaError::NotPem { field })
}

/// 128 random bits, positive (RFC 5280 wants a positive serial of at most 20 bytes).
fn random_serial() -> Vec<u8> {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    // A leading zero byte would be stripped by the DER encoder; keep it non-zero
    // so the serial we report is the one in the certificate.
    serial[0] |= 0x01;
    serial.to_vec()
}

fn truncate_to_second(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs()),
        Err(_) => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csr::CertificateRequest;
    use x509_parser::extensions::GeneralName;
    use x509_parser::parse_x509_certificate;

    fn web() -> SpiffeId {
        "spiffe://td/ns/shop/sa/web".parse().unwrap()
    }

    #[test]
    fn issues_a_leaf_with_exactly_the_identity_and_usages() {
        let ca = Ca::new_root("td", Duration::from_secs(3600)).unwrap();
        let request = CertificateRequest::new(&web()).unwrap();
        let issued = ca
            .certify(
                &request.csr,
                &web(),
                Validity::starting_now(DEFAULT_LEAF_LIFETIME),
            )
            .unwrap();
        assert!(issued.chain.is_empty());

        let (_, cert) = parse_x509_certificate(&issued.leaf).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        assert!(sans.critical, "empty subject makes the SAN critical");
        assert_eq!(
            sans.value.general_names,
            vec![GeneralName::URI("spiffe://td/ns/shop/sa/web")]
        );
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.digital_signature() && !usage.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!cert.is_ca());
        assert_eq!(cert.raw_serial(), issued.serial.as_slice());

        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let lifetime = not_after - not_before;
        assert_eq!(
            lifetime,
            (DEFAULT_LEAF_LIFETIME + CLOCK_SKEW).as_secs() as i64
        );
        let reported = issued
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert_eq!(reported, not_after);
    }

    #[test]
    fn refuses_to_sign_for_another_identity() {
        let ca = Ca::new_root("td", Duration::from_secs(3600)).unwrap();
        let admin: SpiffeId = "spiffe://td/ns/shop/sa/admin".parse().unwrap();
        let request = CertificateRequest::new(&admin).unwrap();
        let err = ca
            .certify(
                &request.csr,
                &web(),
                Validity::starting_now(DEFAULT_LEAF_LIFETIME),
            )
            .unwrap_err();
        assert!(
            matches!(err, CaError::Csr(CsrError::Identity { .. })),
            "{err}"
        );
    }

    #[test]
    fn round_trips_through_material_and_rejects_a_foreign_key() {
        let ca = Ca::new_root("td", Duration::from_secs(3600)).unwrap();
        let again = Ca::from_material(ca.material()).unwrap();
        assert_eq!(again.trust_anchor(), ca.trust_anchor());

        let other = Ca::new_root("td", Duration::from_secs(3600)).unwrap();
        let mixed = CaMaterial {
            key_pem: other.material().key_pem.clone(),
            ..ca.material().clone()
        };
        assert!(matches!(
            Ca::from_material(&mixed),
            Err(CaError::KeyMismatch)
        ));
        let garbage = CaMaterial {
            certificate_pem: "not pem".into(),
            ..ca.material().clone()
        };
        assert!(matches!(
            Ca::from_material(&garbage),
            Err(CaError::NotPem {
                field: "CA certificate"
            })
        ));
    }

    #[test]
    fn an_intermediate_chains_to_the_users_root() {
        let root = Ca::new_root("td", Duration::from_secs(3600)).unwrap();
        let ca = Ca::new_intermediate(
            "td",
            &root.material().certificate_pem,
            &root.material().key_pem,
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(ca.trust_anchor(), root.trust_anchor());
        let request = CertificateRequest::new(&web()).unwrap();
        let issued = ca
            .certify(
                &request.csr,
                &web(),
                Validity::starting_now(DEFAULT_LEAF_LIFETIME),
            )
            .unwrap();
        assert_eq!(issued.chain.len(), 1);

        let (_, leaf) = parse_x509_certificate(&issued.leaf).unwrap();
        let (_, intermediate) = parse_x509_certificate(&issued.chain[0]).unwrap();
        let (_, anchor) = parse_x509_certificate(root.trust_anchor()).unwrap();
        assert_eq!(leaf.issuer(), intermediate.subject());
        assert_eq!(intermediate.issuer(), anchor.subject());
        leaf.verify_signature(Some(intermediate.public_key()))
            .unwrap();
        intermediate
            .verify_signature(Some(anchor.public_key()))
            .unwrap();
    }
}
