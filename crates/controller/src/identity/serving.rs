//! The controller's own TLS: on :8090 a certificate its CA issues to the
//! controller's SPIFFE ID (proxies check it against
//! `PLEXUS_CONTROLLER_IDENTITY`); on the webhook port :8443 one for the
//! injector Service's DNS names (the API server checks it against the
//! `caBundle`). Both renew themselves; [`tls_incoming`] is the stream of TLS
//! connections either server takes.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use plexus_identity::ca::DEFAULT_LEAF_LIFETIME;
use plexus_identity::tls::{self, ClientAuth, TlsError};
use plexus_identity::{Ca, CaError, CertificateRequest, SpiffeId, Validity};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

/// A TLS handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes finished but not yet taken by the server.
const ACCEPTED_BACKLOG: usize = 128;

/// The server configuration for the controller's gRPC port: the controller's
/// certificate (renewed by itself at 70 % of its lifetime), client
/// certificates optional (a proxy asking for its first certificate has none).
pub fn controller_server_config(
    ca: Arc<Ca>,
    identity: SpiffeId,
) -> Result<Arc<ServerConfig>, ServingError> {
    let resolver = SelfIssued::new(ca.clone(), Subject::Spiffe(identity))?;
    let roots = tls::trust_anchors_from_pem(ca.trust_anchor_pem().as_bytes())?;
    let config = tls::server_config(roots, ClientAuth::Optional, Arc::new(resolver))?;
    Ok(Arc::new(config))
}

/// The server configuration for the admission webhook: a certificate for
/// `dns_names` (the injector Service's names) issued by the controller's CA
/// and renewed at 70 % of its lifetime, no client certificates, HTTP/2 or
/// HTTP/1.1 as the API server prefers.
pub fn webhook_server_config(
    ca: Arc<Ca>,
    dns_names: Vec<String>,
) -> Result<Arc<ServerConfig>, ServingError> {
    let resolver = SelfIssued::new(ca, Subject::Dns(dns_names))?;
    let mut config = ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServingError::Tls(TlsError::Config(e)))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Why the controller could not make its own TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("controller certificate: {0}")]
    Ca(#[from] CaError),
    #[error("controller certificate: {0}")]
    Tls(#[from] TlsError),
    #[error("controller certificate: {0}")]
    Key(#[from] plexus_identity::RcgenError),
}

/// A certificate of the controller's, issued by its own CA in memory and
/// renewed on the first handshake after 70 % of its lifetime.
#[derive(Debug)]
struct SelfIssued {
    ca: Arc<Ca>,
    subject: Subject,
    current: RwLock<Current>,
}

/// Whom the certificate names.
#[derive(Debug)]
enum Subject {
    /// The controller's workload identity (gRPC).
    Spiffe(SpiffeId),
    /// Service DNS names (the webhook).
    Dns(Vec<String>),
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
    not_after: SystemTime,
}

impl SelfIssued {
    fn new(ca: Arc<Ca>, subject: Subject) -> Result<Self, ServingError> {
        let current = issue(&ca, &subject)?;
        Ok(Self {
            ca,
            subject,
            current: RwLock::new(current),
        })
    }
}

fn issue(ca: &Ca, subject: &Subject) -> Result<Current, ServingError> {
    let validity = Validity::starting_now(DEFAULT_LEAF_LIFETIME);
    let (issued, key) = match subject {
        Subject::Spiffe(identity) => {
            let request = CertificateRequest::new(identity)?;
            (ca.certify(&request.csr, identity, validity)?, request.key)
        }
        Subject::Dns(names) => ca.issue_dns(names, validity)?,
    };
    let key = tls::certified_key(&key, issued.leaf, issued.chain)?;
    Ok(Current {
        key,
        renew_at: SystemTime::now() + DEFAULT_LEAF_LIFETIME.mul_f64(0.7),
        not_after: issued.not_after,
    })
}

impl ResolvesServerCert for SelfIssued {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = SystemTime::now();
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if now < current.renew_at {
                return Some(current.key.clone());
            }
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if now >= current.renew_at {
            match issue(&self.ca, &self.subject) {
                Ok(fresh) => *current = fresh,
                Err(e) => {
                    tracing::error!(error = %e, subject = ?self.subject, "renewing a controller certificate")
                }
            }
        }
        (now < current.not_after).then(|| current.key.clone())
    }
}

/// A TLS connection accepted by [`tls_incoming`], for
/// `tonic::transport::Server::serve_with_incoming`.
pub struct TlsConnection(tokio_rustls::server::TlsStream<TcpStream>);

/// What a service can learn about the connection (`Request::extensions`).
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    pub remote_addr: Option<std::net::SocketAddr>,
    /// The client's SPIFFE ID, if it presented a certificate.
    pub peer_identity: Option<SpiffeId>,
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let (tcp, conn) = self.0.get_ref();
        TlsConnectInfo {
            remote_addr: tcp.peer_addr().ok(),
            peer_identity: tls::peer_identity(conn),
        }
    }
}

/// Accepts TCP connections on `listener` and hands over the ones whose TLS
/// handshake succeeds. Each handshake runs in its own task with a timeout, so
/// a slow or silent client never holds up the others; failures are logged
/// with their reason and skipped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(error = %e, "accepting a TLS connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsConnection(tls))).await;
                    }
                    Ok(Err(e)) => {
                        let reason = plexus_identity::HandshakeFailure::of_io(&e);
                        tracing::debug!(%peer, %reason, error = %e, "TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use rustls::pki_types::ServerName;

    #[tokio::test]
    async fn proxies_see_the_controller_identity_and_bad_handshakes_are_skipped() {
        let ca = Arc::new(Ca::new_root("td", Duration::from_secs(3600)).unwrap());
        let controller: SpiffeId = "spiffe://td/ns/plexus/sa/plexus-controller"
            .parse()
            .unwrap();
        let config = controller_server_config(ca.clone(), controller.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = tls_incoming(listener, config);

        // A client speaking no TLS at all must not block or end the stream.
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut garbage, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();

        let roots = tls::trust_anchors_from_pem(ca.trust_anchor_pem().as_bytes()).unwrap();
        let client = tls::client_config(roots, controller.clone(), None).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connecting = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("plexus-controller").unwrap(), tcp);
        let (client, accepted) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(connecting, incoming.next())
        })
        .await
        .expect("handshake within bound");
        let client = client.unwrap();
        assert_eq!(tls::peer_identity(client.get_ref().1), Some(controller));
        let accepted = accepted.unwrap().unwrap();
        let info = tonic::transport::server::Connected::connect_info(&accepted);
        assert_eq!(info.peer_identity, None, "the proxy had no certificate yet");
    }
}
