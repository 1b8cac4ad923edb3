//! The certificate lifecycle against a real Certify server over TLS on
//! loopback, with certificates lasting seconds.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use plexus_api::v1::identity_server::{Identity, IdentityServer};
use plexus_api::v1::{CertifyRequest, CertifyResponse};
use plexus_identity::{Ca, CertificateRequest, SpiffeId, Validity};
use rustls::pki_types::ServerName;
use rustls::sign::SingleCertAndKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use super::*;

const TOKEN: &str = "the-token";

fn web() -> SpiffeId {
    "spiffe://td/ns/shop/sa/web".parse().unwrap()
}

fn controller_id() -> SpiffeId {
    "spiffe://td/ns/plexus/sa/plexus-controller"
        .parse()
        .unwrap()
}

/// A stand-in for the controller's Certify: signs any identity for a
/// holder of `TOKEN`, unless told to refuse.
struct Certify {
    ca: Arc<Ca>,
    lifetime: Duration,
    refuse: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl Identity for Certify {
    async fn certify(
        &self,
        request: tonic::Request<CertifyRequest>,
    ) -> Result<tonic::Response<CertifyResponse>, tonic::Status> {
        let request = request.into_inner();
        if self.refuse.load(Ordering::SeqCst) || request.token != TOKEN {
            return Err(tonic::Status::unauthenticated("refused"));
        }
        let identity: SpiffeId = request
            .identity
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("identity"))?;
        let issued = self
            .ca
            .certify(
                &request.csr_der.into(),
                &identity,
                Validity::starting_now(self.lifetime),
            )
            .map_err(|e| tonic::Status::permission_denied(e.to_string()))?;
        Ok(tonic::Response::new(CertifyResponse {
            certificate_der: issued.leaf.to_vec(),
            chain_der: issued.chain.iter().map(|c| c.to_vec()).collect(),
            not_after_unix: 0,
        }))
    }
}

struct Harness {
    mesh: MeshTls,
    refuse: Arc<AtomicBool>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a Certify server over TLS (as the controller serves it) and a
/// `MeshTls` pointed at it through the real settings.
async fn harness(lifetime: Duration, token: &str) -> Harness {
    let ca = Arc::new(Ca::new_root("td", Duration::from_secs(3600)).unwrap());
    let roots =
        plexus_identity::tls::trust_anchors_from_pem(ca.trust_anchor_pem().as_bytes()).unwrap();

    let controller_cert = {
        let request = CertificateRequest::new(&controller_id()).unwrap();
        let issued = ca
            .certify(
                &request.csr,
                &controller_id(),
                Validity::starting_now(Duration::from_secs(3600)),
            )
            .unwrap();
        plexus_identity::tls::certified_key(&request.key, issued.leaf, issued.chain).unwrap()
    };
    let server_config = plexus_identity::tls::server_config(
        roots,
        ClientAuth::Optional,
        Arc::new(SingleCertAndKey::from(controller_cert)),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let refuse = Arc::new(AtomicBool::new(false));
    let routes = tonic::service::Routes::new(IdentityServer::new(Certify {
        ca: ca.clone(),
        lifetime,
        refuse: refuse.clone(),
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let routes = routes.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |request| routes.clone().oneshot(request));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    let dir = std::env::temp_dir().join(format!(
        "plexus-proxy-tls-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.trust_anchor_pem()).unwrap();
    let env = HashMap::from([
        ("PLEXUS_IDENTITY".to_owned(), web().to_string()),
        (
            "PLEXUS_IDENTITY_TOKEN_FILE".to_owned(),
            dir.join("token").display().to_string(),
        ),
        (
            "PLEXUS_IDENTITY_TRUST_ANCHORS".to_owned(),
            dir.join("ca.pem").display().to_string(),
        ),
        ("PLEXUS_IDENTITY_ADDR".to_owned(), addr.to_string()),
    ]);
    let settings = crate::config::Config::from_env(&env)
        .unwrap()
        .identity
        .unwrap();
    let mesh = MeshTls::start(&settings).unwrap();
    Harness {
        mesh,
        refuse,
        _dir: TempDir(dir),
    }
}

/// An inbound mTLS server (STRICT) on loopback that echoes one byte per
/// connection and checks the client's identity. Returns its address.
async fn echo_server(mesh: &MeshTls) -> std::net::SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(mesh.server_config(ClientAuth::Required));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                assert_eq!(peer_identity(tls.get_ref().1), Some(web()));
                let mut byte = [0u8; 1];
                if tls.read_exact(&mut byte).await.is_ok() {
                    let _ = tls.write_all(&byte).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// One full handshake and round trip; returns the serial of the server's
/// certificate. Resumption is off: a resumed session presents no
/// certificate at all, and these tests watch which certificate is presented.
async fn round_trip(mesh: &MeshTls, addr: std::net::SocketAddr) -> Result<Vec<u8>, String> {
    let mut config = (*mesh.client_config(&web())).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = mesh_server_name(&web()).ok_or("no mesh server name")?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{e} ({})", HandshakeFailure::of_io(&e)))?;
    tls.write_all(b"x").await.map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no peer cert")?;
    Ok(plexus_identity::leaf_info(leaf).ok_or("unparsable")?.serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotates_several_times_while_handshakes_never_fail() {
    let h = harness(Duration::from_secs(6), TOKEN).await;
    assert!(!h.mesh.ready() || h.mesh.expiry().is_some());
    tokio::time::timeout(Duration::from_secs(30), h.mesh.wait_ready())
        .await
        .expect("a first certificate within 30 s");
    assert!(h.mesh.ready());
    let addr = echo_server(&h.mesh).await;

    // Watch rotations: 4 distinct serials means 3 renewals.
    let mut watch = h.mesh.watch();
    let rotations = tokio::spawn(async move {
        let mut serials = HashSet::new();
        loop {
            if let Some(credential) = watch.borrow_and_update().as_ref() {
                serials.insert(credential.serial.clone());
            }
            if serials.len() >= 4 {
                return serials;
            }
            if watch.changed().await.is_err() {
                return serials;
            }
        }
    });

    // Meanwhile, handshake continuously: every one must succeed, and new
    // handshakes must pick up the new certificates.
    let mut handshakes = 0u32;
    let mut seen_by_clients = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !rotations.is_finished() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "3 rotations within 60 s"
        );
        assert!(handshakes < 100_000, "bounded loop");
        match round_trip(&h.mesh, addr).await {
            Ok(serial) => {
                seen_by_clients.insert(serial);
            }
            Err(e) => panic!("handshake {handshakes} failed across rotations: {e}"),
        }
        handshakes += 1;
    }
    let serials = rotations.await.unwrap();
    eprintln!(
        "{handshakes} handshakes across {} certificates, {} seen by clients",
        serials.len(),
        seen_by_clients.len()
    );
    assert!(serials.len() >= 4, "rotations observed: {}", serials.len());
    assert!(
        seen_by_clients.len() >= 3,
        "new handshakes present new certificates: {} distinct of {handshakes}",
        seen_by_clients.len()
    );
    assert!(h.mesh.ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_old_certificate_while_certify_fails_but_never_presents_it_expired() {
    let h = harness(Duration::from_secs(5), TOKEN).await;
    tokio::time::timeout(Duration::from_secs(30), h.mesh.wait_ready())
        .await
        .expect("a first certificate within 30 s");
    let first = h.mesh.credential().unwrap();
    h.refuse.store(true, Ordering::SeqCst);
    let addr = echo_server(&h.mesh).await;

    // Until it expires, the old certificate keeps serving.
    assert_eq!(round_trip(&h.mesh, addr).await.unwrap(), first.serial);

    // Once expired, the proxy is no longer ready and presents nothing.
    tokio::time::timeout(Duration::from_secs(30), async {
        while h.mesh.ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the certificate expires within 30 s");
    assert_eq!(
        h.mesh.credential().unwrap().serial,
        first.serial,
        "no new certificate arrived"
    );
    assert!(round_trip(&h.mesh, addr).await.is_err());

    // When Certify answers again, retries pick it up.
    h.refuse.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), async {
        while !h.mesh.ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a new certificate after Certify recovers");
    let second = round_trip(&h.mesh, addr).await.unwrap();
    assert_ne!(second, first.serial);
}

#[tokio::test]
async fn a_refused_token_leaves_the_proxy_unready_until_the_file_is_fixed() {
    let h = harness(Duration::from_secs(3600), "not-the-token").await;
    // A bounded look for something that must not happen: several retries
    // (100 ms, 200 ms, 400 ms...) fit in this window.
    let early = tokio::time::timeout(Duration::from_millis(1500), h.mesh.wait_ready()).await;
    assert!(
        early.is_err(),
        "a refused token must not yield a certificate"
    );
    assert!(!h.mesh.ready());
    assert_eq!(h.mesh.expiry(), None);

    // The token file is re-read on every attempt (kubelet rotates it).
    std::fs::write(h._dir.0.join("token"), TOKEN).unwrap();
    tokio::time::timeout(Duration::from_secs(30), h.mesh.wait_ready())
        .await
        .expect("ready once the token is good");
    assert!(h.mesh.ready());
    let status = serde_json::to_value(h.mesh.status()).unwrap();
    assert_eq!(status["identity"], "spiffe://td/ns/shop/sa/web");
    assert_eq!(status["ready"], true);
    assert_eq!(
        status["serial"].as_str().unwrap().len(),
        32,
        "128-bit serial, hex"
    );
    let expiry = h.mesh.expiry().unwrap();
    let lifetime = expiry.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(lifetime > Duration::from_secs(3500), "{lifetime:?}");
}

#[tokio::test]
async fn a_session_verified_for_one_identity_never_resumes_for_another() {
    let h = harness(Duration::from_secs(3600), TOKEN).await;
    tokio::time::timeout(Duration::from_secs(30), h.mesh.wait_ready())
        .await
        .expect("a first certificate within 30 s");
    let addr = echo_server(&h.mesh).await;
    let connect = |expected: SpiffeId| {
        let connector = tokio_rustls::TlsConnector::from(h.mesh.client_config(&expected));
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let mut tls = connector
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await?;
            tls.write_all(b"x").await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            Ok::<_, std::io::Error>(tls.get_ref().1.handshake_kind())
        }
    };
    // The cached configuration resumes: the second connection is cheap.
    assert_eq!(
        connect(web()).await.unwrap(),
        Some(rustls::HandshakeKind::Full)
    );
    assert_eq!(
        connect(web()).await.unwrap(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert!(Arc::ptr_eq(
        &h.mesh.client_config(&web()),
        &h.mesh.client_config(&web())
    ));
    // Expecting someone else at the same address: full verification, refused.
    let other: SpiffeId = "spiffe://td/ns/shop/sa/admin".parse().unwrap();
    let err = connect(other).await.unwrap_err();
    assert_eq!(
        HandshakeFailure::of_io(&err),
        HandshakeFailure::IdentityMismatch
    );
}
