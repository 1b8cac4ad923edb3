//! rustls configurations for mesh traffic: TLS 1.3 only, ring only, ALPN
//! `h2`, both sides authenticated by SPIFFE certificates.

use std::sync::{Arc, LazyLock};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig};

use crate::SpiffeId;
use crate::verify::{ClientIdentityVerifier, ServerIdentityVerifier, identity_of};

/// The one application protocol spoken between proxies.
pub const ALPN_H2: &[u8] = b"h2";

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// The ring crypto provider every Plexus TLS configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    PROVIDER.clone()
}

/// Why TLS material could not be turned into a configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust anchors: no PEM certificate found")]
    NoTrustAnchors,
    #[error("trust anchors: {0}")]
    TrustAnchorPem(rustls::pki_types::pem::Error),
    #[error("trust anchors: {0}")]
    TrustAnchor(rustls::Error),
    #[error("certificate and key: {0}")]
    Key(rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    #[error("TLS configuration: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Parses a PEM bundle of trust anchors (one or more roots).
pub fn trust_anchors_from_pem(pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(TlsError::TrustAnchorPem)?;
        roots.add(cert).map_err(TlsError::TrustAnchor)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    Ok(Arc::new(roots))
}

/// Pairs the in-memory key with the certificate the CA returned, refusing a
/// certificate issued for another key.
pub fn certified_key(
    key: &PrivatePkcs8KeyDer<'_>,
    leaf: CertificateDer<'static>,
    chain: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let signing_key = PROVIDER
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.clone_key()))
        .map_err(TlsError::Key)?;
    let certs = std::iter::once(leaf).chain(chain).collect();
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(TlsError::Key)?;
    Ok(Arc::new(certified))
}

/// Whether the server insists on a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// STRICT: a client without a valid SPIFFE certificate fails the handshake.
    Required,
    /// PERMISSIVE, and the controller's API: a client may present no
    /// certificate (then [`peer_identity`] is `None`); one it does present is
    /// still verified in full, and a bad one fails the handshake.
    Optional,
}

/// A mesh server configuration. The certificate comes from `cert` on every
/// handshake, so rotating it there affects new handshakes only.
pub fn server_config(
    roots: Arc<RootCertStore>,
    client_auth: ClientAuth,
    cert: Arc<dyn ResolvesServerCert>,
) -> Result<ServerConfig, TlsError> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let webpki = match client_auth {
        ClientAuth::Required => builder.build()?,
        ClientAuth::Optional => builder.allow_unauthenticated().build()?,
    };
    let verifier = Arc::new(ClientIdentityVerifier { inner: webpki });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A mesh client configuration that accepts only a server whose certificate
/// chains to `roots` and names exactly `expected`. `cert` is this side's
/// certificate; `None` for a client with no identity yet (calling Certify).
///
/// Build one per expected identity and reuse it: its session cache makes
/// reconnections resumptions.
pub fn client_config(
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    cert: Option<Arc<dyn ResolvesClientCert>>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier(roots, expected));
    let mut config = match cert {
        Some(cert) => builder.with_client_cert_resolver(cert),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The verifier [`client_config`] installs: chain to `roots`, URI SAN
/// exactly `expected`. For deriving per-identity configurations from one
/// validated base (`config.dangerous().set_certificate_verifier(..)`); give
/// each its own `resumption` store, since a resumed session skips verification.
pub fn server_verifier(
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
) -> Arc<dyn ServerCertVerifier> {
    Arc::new(ServerIdentityVerifier {
        roots,
        algorithms: PROVIDER.signature_verification_algorithms,
        expected,
    })
}

/// Checks a certificate the CA just returned before using it: it chains to
/// `roots`, names exactly `expected`, and is valid now.
pub fn verify_issued(
    roots: &Arc<RootCertStore>,
    leaf: &CertificateDer<'_>,
    chain: &[CertificateDer<'_>],
    expected: &SpiffeId,
) -> Result<(), rustls::Error> {
    let verifier = server_verifier(roots.clone(), expected.clone());
    let any_name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    verifier.verify_server_cert(leaf, chain, &any_name, &[], UnixTime::now())?;
    Ok(())
}

/// The peer's SPIFFE ID after a completed handshake; `None` if it sent no
/// certificate (possible only with [`ClientAuth::Optional`]). Works on both
/// `ServerConnection` and `ClientConnection` (they deref to `CommonState`).
pub fn peer_identity(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    identity_of(leaf).ok()
}

/// The TLS server name (SNI) a mesh client sends to a server it expects to
/// be `id`: `<service-account>.<namespace>.serviceaccount.identity.<trust-domain>`.
/// The inbound side compares a ClientHello's SNI with its own
/// ([`peek_client_hello`]) to tell mesh TLS, which it terminates, from an
/// application's own TLS, which it must pass through untouched. `None` if the
/// name is not a valid DNS name (over 253 bytes); connect by IP then, and the
/// server will not take the connection for a mesh one.
pub fn mesh_server_name(id: &SpiffeId) -> Option<ServerName<'static>> {
    let name = format!(
        "{}.{}.serviceaccount.identity.{}",
        id.service_account(),
        id.namespace(),
        id.trust_domain()
    );
    ServerName::try_from(name).ok()
}

/// What the first bytes of an inbound connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeekedHello {
    /// Not enough bytes yet to tell: read more and ask again.
    Incomplete,
    /// Not a TLS ClientHello (plaintext, or garbage).
    NotTls,
    /// A ClientHello for this workload's mesh name: terminate it.
    Mesh,
    /// TLS meant for the application (another or no SNI): pass it through.
    OtherTls,
}

/// Classifies the bytes buffered so far on an inbound connection, without
/// consuming them (they are parsed from a copy), against this workload's own
/// identity.
pub fn peek_client_hello(prefix: &[u8], own: &SpiffeId) -> PeekedHello {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = prefix;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return PeekedHello::NotTls,
        }
    }
    match acceptor.accept() {
        Ok(None) => PeekedHello::Incomplete,
        Ok(Some(accepted)) => {
            let own_name = mesh_server_name(own);
            let sni = accepted.client_hello().server_name().map(str::to_owned);
            match (sni, own_name) {
                (Some(sni), Some(ServerName::DnsName(own))) if sni == own.as_ref() => {
                    PeekedHello::Mesh
                }
                _ => PeekedHello::OtherTls,
            }
        }
        Err(_) => PeekedHello::NotTls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn client_hello(server_name: ServerName<'static>) -> Vec<u8> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
        let mut bytes = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut bytes).unwrap();
        }
        bytes
    }

    #[test]
    fn tells_mesh_tls_from_application_tls_and_plaintext() {
        let web: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        let admin: SpiffeId = "spiffe://cluster.local/ns/shop/sa/admin".parse().unwrap();
        let name = mesh_server_name(&web).unwrap();
        assert_eq!(
            name.to_str(),
            "web.shop.serviceaccount.identity.cluster.local"
        );

        let hello = client_hello(name);
        assert_eq!(peek_client_hello(&hello, &web), PeekedHello::Mesh);
        assert_eq!(peek_client_hello(&hello, &admin), PeekedHello::OtherTls);
        assert_eq!(
            peek_client_hello(&hello[..hello.len() / 2], &web),
            PeekedHello::Incomplete
        );
        assert_eq!(peek_client_hello(&[], &web), PeekedHello::Incomplete);

        let app = client_hello(ServerName::try_from("shop.example.com").unwrap());
        assert_eq!(peek_client_hello(&app, &web), PeekedHello::OtherTls);
        let by_ip = client_hello(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        assert_eq!(peek_client_hello(&by_ip, &web), PeekedHello::OtherTls);

        assert_eq!(
            peek_client_hello(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n", &web),
            PeekedHello::NotTls
        );
        assert_eq!(
            peek_client_hello(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &web),
            PeekedHello::NotTls
        );
    }

    #[test]
    fn over_long_names_have_no_server_name() {
        let sa = format!("{}.{}", "a".repeat(63), "b".repeat(63));
        let id = SpiffeId::new(&"t".repeat(200), "ns", &sa).unwrap();
        assert_eq!(mesh_server_name(&id), None);
    }
}

/// Properties of ClientHello peeking, which reads what any client sends
/// first: never a panic; a hello for this workload's mesh name is mesh TLS,
/// any other name is the application's, and any part of a hello asks for more.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::tests::client_hello;
    use super::*;

    /// A DNS label that starts with a letter (an all-numeric last label
    /// would make the name no DNS name).
    const LABEL: &str = "[a-z]([a-z0-9-]{0,8}[a-z0-9])?";

    /// `label(.label)*`.
    fn dns_name(labels: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        prop::collection::vec(LABEL, labels).prop_map(|labels| labels.join("."))
    }

    fn identity() -> impl Strategy<Value = SpiffeId> {
        (dns_name(1..4), LABEL, dns_name(1..3)).prop_map(
            |(trust_domain, namespace, service_account)| {
                SpiffeId::new(&trust_domain, &namespace, &service_account)
                    .expect("generated from the identity grammar")
            },
        )
    }

    proptest! {
        #![proptest_config(plexus_core::property::config())]

        #[test]
        fn any_bytes_are_classified(
            record in prop::sample::select(vec![&b""[..], b"\x16", b"\x16\x03\x01", b"\x16\x03\x03\x00\x40\x01"]),
            bytes in prop::collection::vec(any::<u8>(), 0..256),
            own in identity(),
        ) {
            let _ = peek_client_hello(&[record, &bytes].concat(), &own);
        }

        #[test]
        fn a_hello_is_mesh_tls_only_for_this_workloads_name(
            own in identity(),
            other in dns_name(1..5),
            cut in any::<prop::sample::Index>(),
            flip in any::<(prop::sample::Index, u8)>(),
        ) {
            let name = mesh_server_name(&own).expect("short generated names are DNS names");
            let hello = client_hello(name.clone());
            prop_assert_eq!(peek_client_hello(&hello, &own), PeekedHello::Mesh);

            // Every proper prefix (a hello split over segments) needs more.
            let prefix = &hello[..cut.index(hello.len())];
            prop_assert_eq!(peek_client_hello(prefix, &own), PeekedHello::Incomplete);

            // A damaged hello is anything but a panic.
            let mut damaged = hello.clone();
            damaged[flip.0.index(hello.len())] ^= flip.1 | 1;
            let _ = peek_client_hello(&damaged, &own);

            prop_assume!(other != name.to_str());
            let app = client_hello(ServerName::try_from(other).expect("a generated DNS name"));
            prop_assert_eq!(peek_client_hello(&app, &own), PeekedHello::OtherTls);
        }
    }
}
