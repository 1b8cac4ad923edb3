//! The Identity API (`plexus.v1.Identity/Certify`): a proxy trades a CSR and
//! a token for a certificate naming exactly the identity the token proves.
//!
//! Parts: [`token`] (what a token proves: bootstrap tokens outside a
//! cluster), [`token_review`] (TokenReview in a cluster), [`ca_store`] (the
//! CA from the Secret `plexus-ca` or a directory), [`serving`] (the
//! controller's own TLS on :8090).

pub mod ca_store;
pub mod serving;
pub mod token;
pub mod token_review;

#[cfg(test)]
mod test_api;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use plexus_api::v1::identity_server::{Identity, IdentityServer};
use plexus_api::v1::{CertifyRequest, CertifyResponse};
use plexus_identity::ca::DEFAULT_LEAF_LIFETIME;
use plexus_identity::{Ca, CaError, CsrError, SpiffeId, Validity};
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub use ca_store::{CaSettings, CaStoreError, ca_from_dir, ca_from_secret};
pub use serving::{
    ServingError, TlsConnectInfo, TlsConnection, controller_server_config, tls_incoming,
    webhook_server_config,
};
pub use token::{BootstrapTokens, TokenAuthority, TokenError};
pub use token_review::TokenReviewer;

/// The Certify service.
pub struct IdentityService {
    ca: Arc<Ca>,
    tokens: Arc<dyn TokenAuthority>,
    lifetime: Duration,
}

impl IdentityService {
    /// Signs with `ca` for the identities `tokens` proves, for 24 h.
    pub fn new(ca: Arc<Ca>, tokens: Arc<dyn TokenAuthority>) -> Self {
        Self {
            ca,
            tokens,
            lifetime: DEFAULT_LEAF_LIFETIME,
        }
    }

    /// Certificate lifetime (tests use seconds to watch rotation).
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    pub fn into_server(self) -> IdentityServer<Self> {
        IdentityServer::new(self)
    }
}

/// Requested identities are recorded on spans up to this length: the field
/// comes from the network and may be anything.
const MAX_TRACED_IDENTITY: usize = 256;

/// Why a Certify call ended as it did: the span's `plexus.identity.outcome`.
struct Refusal {
    outcome: &'static str,
    status: Status,
}

impl Refusal {
    fn new(outcome: &'static str, status: Status) -> Self {
        Self { outcome, status }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let request = request.into_inner();
        // The token is never recorded: it is a credential.
        let span = tracing::info_span!(
            "plexus.identity.certify",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = "plexus.v1.Identity",
            rpc.method = "Certify",
            plexus.identity.requested = %truncated(&request.identity, MAX_TRACED_IDENTITY),
            plexus.identity.outcome = tracing::field::Empty,
            plexus.certificate.not_after_unix = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let result = self.sign(request).instrument(span.clone()).await;
        match result {
            Ok(answer) => {
                span.record("plexus.identity.outcome", "issued");
                span.record("plexus.certificate.not_after_unix", answer.not_after_unix);
                span.record("rpc.grpc.status_code", tonic::Code::Ok as i64);
                Ok(Response::new(answer))
            }
            Err(refusal) => {
                span.record("plexus.identity.outcome", refusal.outcome);
                span.record("rpc.grpc.status_code", refusal.status.code() as i64);
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", refusal.status.message());
                Err(refusal.status)
            }
        }
    }
}

impl IdentityService {
    async fn sign(&self, request: CertifyRequest) -> Result<CertifyResponse, Refusal> {
        let asked: SpiffeId = request.identity.parse().map_err(|e| {
            Refusal::new(
                "invalid_identity",
                Status::invalid_argument(format!("identity: {e}")),
            )
        })?;
        if request.token.is_empty() {
            return Err(Refusal::new(
                "token_missing",
                Status::unauthenticated("token: empty"),
            ));
        }
        let proven = self
            .tokens
            .authenticate(&request.token)
            .await
            .map_err(|e| {
                tracing::warn!(identity = %asked, error = %e, "certify: token not accepted");
                match e {
                    TokenError::Refused(why) => Refusal::new(
                        "token_refused",
                        Status::unauthenticated(format!("token: {why}")),
                    ),
                    TokenError::Unavailable(why) => Refusal::new(
                        "token_unavailable",
                        Status::unavailable(format!("token: {why}")),
                    ),
                }
            })?;
        if asked != proven {
            tracing::warn!(asked = %asked, proven = %proven, "certify: identity not proven by token");
            return Err(Refusal::new(
                "identity_not_proven",
                Status::permission_denied(format!(
                    "identity: the token proves {proven}, not {asked}"
                )),
            ));
        }
        let issued = self
            .ca
            .certify(
                &request.csr_der.into(),
                &proven,
                Validity::starting_now(self.lifetime),
            )
            .map_err(|e| {
                tracing::warn!(identity = %proven, error = %e, "certify: CSR refused");
                match e {
                    CaError::Csr(CsrError::Identity { .. }) => {
                        Refusal::new("csr_refused", Status::permission_denied(e.to_string()))
                    }
                    CaError::Csr(_) => {
                        Refusal::new("csr_refused", Status::invalid_argument(e.to_string()))
                    }
                    _ => Refusal::new("signing_failed", Status::internal(e.to_string())),
                }
            })?;
        let not_after_unix = issued
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        tracing::info!(identity = %proven, not_after_unix, "certify: issued");
        Ok(CertifyResponse {
            certificate_der: issued.leaf.to_vec(),
            chain_der: issued.chain.iter().map(|c| c.to_vec()).collect(),
            not_after_unix,
        })
    }
}

/// At most `max` bytes of `text`, cut on a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;
    use plexus_api::v1::identity_client::IdentityClient;
    use plexus_identity::CertificateRequest;
    use plexus_identity::tls::{self, ClientAuth};
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::sign::SingleCertAndKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A token authority that knows two tokens.
    struct Fixed;

    impl TokenAuthority for Fixed {
        fn authenticate<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<SpiffeId, TokenError>> {
            let result = match token {
                "web-token" => Ok(web()),
                "down" => Err(TokenError::Unavailable("api server down".into())),
                _ => Err(TokenError::Refused("unknown".into())),
            };
            Box::pin(std::future::ready(result))
        }
    }

    fn web() -> SpiffeId {
        "spiffe://td/ns/shop/sa/web".parse().unwrap()
    }

    fn admin() -> SpiffeId {
        "spiffe://td/ns/shop/sa/admin".parse().unwrap()
    }

    /// A real gRPC server on loopback; returns a client and the CA.
    async fn serve(
        tokens: Arc<dyn TokenAuthority>,
    ) -> (IdentityClient<tonic::transport::Channel>, Arc<Ca>) {
        let ca = Arc::new(Ca::new_root("td", Duration::from_secs(3600)).unwrap());
        let service = IdentityService::new(ca.clone(), tokens);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let client = IdentityClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        (client, ca)
    }

    fn request(
        identity: &SpiffeId,
        token: &str,
        csr_for: &SpiffeId,
    ) -> (CertifyRequest, CertificateRequest) {
        let csr = CertificateRequest::new(csr_for).unwrap();
        let request = CertifyRequest {
            identity: identity.to_string(),
            token: token.to_owned(),
            csr_der: csr.csr.to_vec(),
        };
        (request, csr)
    }

    #[tokio::test]
    async fn a_good_request_is_signed_and_the_certificate_serves_mtls() {
        let (mut client, ca) = serve(Arc::new(Fixed)).await;
        let (req, csr) = request(&web(), "web-token", &web());
        let answer = client.certify(req).await.unwrap().into_inner();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let lifetime = answer.not_after_unix - now;
        assert!(
            (86_300..=86_400).contains(&lifetime),
            "24 h, got {lifetime}s"
        );

        // The certificate works as the server side of a real mTLS handshake
        // verified by plexus-identity's client configuration.
        let roots = tls::trust_anchors_from_pem(ca.trust_anchor_pem().as_bytes()).unwrap();
        let server_cert = tls::certified_key(
            &csr.key,
            CertificateDer::from(answer.certificate_der),
            answer.chain_der.into_iter().map(CertificateDer::from),
        )
        .unwrap();
        let server = tls::server_config(
            roots.clone(),
            ClientAuth::Optional,
            Arc::new(SingleCertAndKey::from(server_cert)),
        )
        .unwrap();
        let client = tls::client_config(roots, web(), None).unwrap();
        let (a, b) = tokio::io::duplex(16 * 1024);
        let accept = tokio::spawn(async move {
            let mut stream = tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(b)
                .await?;
            stream.write_all(b"ok").await?;
            stream.flush().await?;
            Ok::<_, std::io::Error>(())
        });
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("web").unwrap(), a)
            .await
            .unwrap();
        assert_eq!(tls::peer_identity(stream.get_ref().1), Some(web()));
        let mut buf = [0u8; 2];
        stream.read_exact(&mut buf).await.unwrap();
        accept.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_csr_for_another_identity_is_denied() {
        let (mut client, _) = serve(Arc::new(Fixed)).await;
        // The token proves web; asking for admin outright...
        let (req, _) = request(&admin(), "web-token", &admin());
        let status = client.certify(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        // ...or naming web but slipping admin into the CSR.
        let (req, _) = request(&web(), "web-token", &admin());
        let status = client.certify(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    }

    #[tokio::test]
    async fn bad_tokens_csrs_and_identities_get_distinct_codes() {
        let (mut client, _) = serve(Arc::new(Fixed)).await;
        let (req, _) = request(&web(), "stolen", &web());
        assert_eq!(
            client.certify(req).await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let (req, _) = request(&web(), "", &web());
        assert_eq!(
            client.certify(req).await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let (req, _) = request(&web(), "down", &web());
        assert_eq!(
            client.certify(req).await.unwrap_err().code(),
            tonic::Code::Unavailable
        );

        let (mut req, _) = request(&web(), "web-token", &web());
        req.csr_der = b"garbage".to_vec();
        assert_eq!(
            client.certify(req).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let (mut req, _) = request(&web(), "web-token", &web());
        req.identity = "spiffe://td/ns/shop/sa/web?admin".into();
        assert_eq!(
            client.certify(req).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[tokio::test]
    async fn a_wrong_audience_token_is_denied_end_to_end() {
        use test_api::{ApiStandIn, Reply};
        // An API server for which every token is valid only for another audience.
        let server = ApiStandIn::start(|_, _, body| {
            let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let wanted = review["spec"]["audiences"][0].as_str() == Some("plexus-identity");
            Reply::json(
                201,
                serde_json::json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "metadata": {}, "spec": review["spec"],
                    "status": if wanted {
                        serde_json::json!({"authenticated": false, "error": "token audiences [\"api\"] is invalid for the target audiences [\"plexus-identity\"]"})
                    } else {
                        serde_json::json!({"authenticated": true, "audiences": ["api"], "user": {"username": "system:serviceaccount:shop:web"}})
                    }
                }),
            )
        })
        .await;
        let (mut client, _) = serve(Arc::new(TokenReviewer::new(server.client(), "td"))).await;
        let (req, _) = request(&web(), "an-api-token", &web());
        let status = client.certify(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
}
