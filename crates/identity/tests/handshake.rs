//! Real TLS 1.3 handshakes over an in-memory duplex between configurations
//! built by `plexus_identity::tls`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use plexus_identity::tls::{self, ClientAuth};
use plexus_identity::{Ca, CertificateRequest, HandshakeFailure, SpiffeId, Validity};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn web() -> SpiffeId {
    id("spiffe://td/ns/shop/sa/web")
}

fn api() -> SpiffeId {
    id("spiffe://td/ns/shop/sa/api")
}

fn ca() -> Ca {
    Ca::new_root("td", Duration::from_secs(3600)).unwrap()
}

fn roots(ca: &Ca) -> Arc<RootCertStore> {
    tls::trust_anchors_from_pem(ca.trust_anchor_pem().as_bytes()).unwrap()
}

fn cert_for(ca: &Ca, identity: &SpiffeId, validity: Validity) -> Arc<CertifiedKey> {
    let request = CertificateRequest::new(identity).unwrap();
    let issued = ca.certify(&request.csr, identity, validity).unwrap();
    tls::certified_key(&request.key, issued.leaf, issued.chain).unwrap()
}

fn fresh() -> Validity {
    Validity::starting_now(Duration::from_secs(3600))
}

struct Side {
    roots: Arc<RootCertStore>,
    cert: Option<Arc<CertifiedKey>>,
}

struct Outcome {
    client: Result<Option<SpiffeId>, std::io::Error>,
    server: Result<Option<SpiffeId>, std::io::Error>,
}

/// Runs one handshake and, if it succeeds, one echoed message; returns the
/// identity each side saw of the other.
async fn handshake(
    client: Side,
    server: Side,
    expected: SpiffeId,
    client_auth: ClientAuth,
) -> Outcome {
    let client_config = tls::client_config(
        client.roots,
        expected,
        client
            .cert
            .map(|c| Arc::new(SingleCertAndKey::from(c)) as Arc<_>),
    )
    .unwrap();
    let server_config = tls::server_config(
        server.roots,
        client_auth,
        Arc::new(SingleCertAndKey::from(server.cert.unwrap())),
    )
    .unwrap();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));

    let server_task = tokio::spawn(async move {
        let mut stream = acceptor.accept(server_io).await?;
        let (_, conn) = stream.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(tls::ALPN_H2));
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let peer = tls::peer_identity(conn);
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        stream.write_all(&buf).await?;
        stream.flush().await?;
        Ok::<_, std::io::Error>(peer)
    });
    let client_result = async {
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut stream = connector.connect(name, client_io).await?;
        let peer = tls::peer_identity(stream.get_ref().1);
        stream.write_all(b"ping").await?;
        stream.flush().await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok::<_, std::io::Error>(peer)
    }
    .await;
    let server_result = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .expect("server side finishes")
        .expect("server task does not panic");
    Outcome {
        client: client_result,
        server: server_result,
    }
}

fn failure(result: &Result<Option<SpiffeId>, std::io::Error>) -> HandshakeFailure {
    match result {
        Ok(peer) => panic!("handshake unexpectedly succeeded (peer {peer:?})"),
        Err(e) => HandshakeFailure::of_io(e),
    }
}

#[tokio::test]
async fn a_good_pair_authenticates_both_ways() {
    let ca = ca();
    let outcome = handshake(
        Side {
            roots: roots(&ca),
            cert: Some(cert_for(&ca, &web(), fresh())),
        },
        Side {
            roots: roots(&ca),
            cert: Some(cert_for(&ca, &api(), fresh())),
        },
        api(),
        ClientAuth::Required,
    )
    .await;
    assert_eq!(outcome.client.unwrap(), Some(api()));
    assert_eq!(outcome.server.unwrap(), Some(web()));
}

#[tokio::test]
async fn an_intermediate_ca_chain_is_accepted() {
    let root = ca();
    let intermediate = Ca::new_intermediate(
        "td",
        &root.material().certificate_pem,
        &root.material().key_pem,
        Duration::from_secs(3600),
    )
    .unwrap();
    let outcome = handshake(
        Side {
            roots: roots(&root),
            cert: Some(cert_for(&intermediate, &web(), fresh())),
        },
        Side {
            roots: roots(&root),
            cert: Some(cert_for(&intermediate, &api(), fresh())),
        },
        api(),
        ClientAuth::Required,
    )
    .await;
    assert_eq!(outcome.client.unwrap(), Some(api()));
    assert_eq!(outcome.server.unwrap(), Some(web()));
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused() {
    let ca = ca();
    let admin = id("spiffe://td/ns/shop/sa/admin");
    let outcome = handshake(
        Side {
            roots: roots(&ca),
            cert: Some(cert_for(&ca, &web(), fresh())),
        },
        Side {
            roots: roots(&ca),
            cert: Some(cert_for(&ca, &admin, fresh())),
        },
        api(),
        ClientAuth::Required,
    )
    .await;
    let err = outcome.client.as_ref().unwrap_err();
    assert_eq!(failure(&outcome.client), HandshakeFailure::IdentityMismatch);
    // The error names both identities, for logs.
    let message = err.to_string();
    assert!(
        message.contains(api().as_str()) && message.contains(admin.as_str()),
        "{message}"
    );
    assert_eq!(failure(&outcome.server), HandshakeFailure::IdentityMismatch);
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let ours = ca();
    let theirs = ca();
    let outcome = handshake(
        Side {
            roots: roots(&ours),
            cert: Some(cert_for(&ours, &web(), fresh())),
        },
        Side {
            roots: roots(&ours),
            cert: Some(cert_for(&theirs, &api(), fresh())),
        },
        api(),
        ClientAuth::Required,
    )
    .await;
    assert_eq!(failure(&outcome.client), HandshakeFailure::UnknownCa);
    assert_eq!(failure(&outcome.server), HandshakeFailure::UnknownCa);
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let ca = ca();
    let now = SystemTime::now();
    let expired = Validity {
        not_before: now - Duration::from_secs(7200),
        not_after: now - Duration::from_secs(3600),
    };
    let outcome = handshake(
        Side {
            roots: roots(&ca),
            cert: Some(cert_for(&ca, &web(), fresh())),
        },
        Side {
            roots: roots(&ca),
            cert: Some(cert_for(&ca, &api(), expired)),
        },
        api(),
        ClientAuth::Required,
    )
    .await;
    assert_eq!(failure(&outcome.client), HandshakeFailure::Expired);
    assert_eq!(failure(&outcome.server), HandshakeFailure::Expired);
}

#[tokio::test]
async fn a_client_from_another_ca_is_refused_by_the_server() {
    let ours = ca();
    let theirs = ca();
    let outcome = handshake(
        Side {
            roots: roots(&ours),
            cert: Some(cert_for(&theirs, &web(), fresh())),
        },
        Side {
            roots: roots(&ours),
            cert: Some(cert_for(&ours, &api(), fresh())),
        },
        api(),
        ClientAuth::Optional,
    )
    .await;
    assert_eq!(failure(&outcome.server), HandshakeFailure::UnknownCa);
}

#[tokio::test]
async fn strict_requires_a_client_certificate_and_permissive_does_not() {
    let ca = ca();
    let strict = handshake(
        Side {
            roots: roots(&ca),
            cert: None,
        },
        Side {
            roots: roots(&ca),
            cert: Some(cert_for(&ca, &api(), fresh())),
        },
        api(),
        ClientAuth::Required,
    )
    .await;
    assert_eq!(failure(&strict.server), HandshakeFailure::NoCertificate);

    let permissive = handshake(
        Side {
            roots: roots(&ca),
            cert: None,
        },
        Side {
            roots: roots(&ca),
            cert: Some(cert_for(&ca, &api(), fresh())),
        },
        api(),
        ClientAuth::Optional,
    )
    .await;
    assert_eq!(permissive.client.unwrap(), Some(api()));
    assert_eq!(permissive.server.unwrap(), None, "no client identity");
}

#[test]
fn trust_anchor_pem_must_hold_a_certificate() {
    assert!(tls::trust_anchors_from_pem(b"").is_err());
    assert!(
        tls::trust_anchors_from_pem(
            b"-----BEGIN CERTIFICATE-----\nzz\n-----END CERTIFICATE-----\n"
        )
        .is_err()
    );
}

#[test]
fn an_issued_certificate_is_checked_before_use() {
    let ca = ca();
    let request = CertificateRequest::new(&web()).unwrap();
    let issued = ca.certify(&request.csr, &web(), fresh()).unwrap();
    let roots = roots(&ca);
    tls::verify_issued(&roots, &issued.leaf, &issued.chain, &web()).unwrap();
    let err = tls::verify_issued(&roots, &issued.leaf, &issued.chain, &api()).unwrap_err();
    assert_eq!(
        HandshakeFailure::of(&err),
        HandshakeFailure::IdentityMismatch
    );
    let err = tls::verify_issued(
        &self::roots(&self::ca()),
        &issued.leaf,
        &issued.chain,
        &web(),
    )
    .unwrap_err();
    assert_eq!(HandshakeFailure::of(&err), HandshakeFailure::UnknownCa);

    let info = plexus_identity::leaf_info(&issued.leaf).unwrap();
    assert_eq!(info.serial, issued.serial);
    assert_eq!(info.not_after, issued.not_after);
    assert_eq!(plexus_identity::identity_of(&issued.leaf).unwrap(), web());
    // The CA certificate itself is no workload.
    assert!(plexus_identity::identity_of(ca.trust_anchor()).is_err());
}
