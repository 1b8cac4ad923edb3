//! Obtaining and renewing the proxy's certificate: a fresh key and CSR each
//! time, Certify, check what came back, swap it in; renew at 70 % of the
//! lifetime (±10 % jitter so a fleet started together does not renew
//! together); on failure retry with exponential backoff while the old
//! certificate keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use plexus_api::v1::CertifyRequest;
use plexus_api::v1::identity_client::IdentityClient;
use plexus_identity::{CertificateRequest, SpiffeId, tls};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::current::Credential;

const RENEW_AT: f64 = 0.7;
const JITTER: f64 = 0.1;
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Why one Certify attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("PLEXUS_IDENTITY_TOKEN_FILE {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("PLEXUS_IDENTITY_TOKEN_FILE {0}: empty")]
    EmptyToken(String),
    #[error("generating a key: {0}")]
    Key(#[from] plexus_identity::RcgenError),
    #[error("Certify: {}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("the certificate returned is unusable: {0}")]
    Certificate(String),
}

/// Asks the controller for certificates for one identity.
pub(crate) struct Certifier {
    pub(crate) client: IdentityClient<Channel>,
    pub(crate) identity: SpiffeId,
    pub(crate) token_file: PathBuf,
    pub(crate) roots: Arc<RootCertStore>,
}

impl Certifier {
    pub(crate) async fn certify(&self) -> Result<Credential, CertifyError> {
        // Re-read every time: kubelet rotates projected tokens.
        let path = self.token_file.display().to_string();
        let token = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|source| CertifyError::Token {
                path: path.clone(),
                source,
            })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(CertifyError::EmptyToken(path));
        }
        let request = CertificateRequest::new(&self.identity)?;
        let response = self
            .client
            .clone()
            .certify(CertifyRequest {
                identity: self.identity.to_string(),
                token: token.to_owned(),
                csr_der: request.csr.to_vec(),
            })
            .await?
            .into_inner();
        let leaf = CertificateDer::from(response.certificate_der);
        let chain: Vec<_> = response
            .chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let unusable = |e: &dyn std::fmt::Display| CertifyError::Certificate(e.to_string());
        // A certificate we would be refused with is worse than none: check it
        // the way a peer will.
        tls::verify_issued(&self.roots, &leaf, &chain, &self.identity).map_err(|e| unusable(&e))?;
        let info = plexus_identity::leaf_info(&leaf).ok_or_else(|| unusable(&"unparsable"))?;
        let key = tls::certified_key(&request.key, leaf, chain).map_err(|e| unusable(&e))?;
        Ok(Credential {
            key,
            identity: self.identity.clone(),
            not_after: info.not_after,
            serial: info.serial,
        })
    }
}

/// Runs until the proxy stops: keeps `current` holding a valid certificate.
pub(crate) async fn renew_forever(
    certifier: Certifier,
    current: watch::Sender<Option<Arc<Credential>>>,
) {
    let mut retry = FIRST_RETRY;
    loop {
        match certifier.certify().await {
            Ok(credential) => {
                let lifetime = credential
                    .not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                let renew_in = renewal_delay(lifetime);
                tracing::info!(
                    identity = %credential.identity,
                    expires_in = ?lifetime,
                    renew_in = ?renew_in,
                    "certificate issued"
                );
                current.send_replace(Some(Arc::new(credential)));
                retry = FIRST_RETRY;
                tokio::time::sleep(renew_in).await;
            }
            Err(e) => {
                let wait = jittered(retry);
                let expires_in = current
                    .borrow()
                    .as_ref()
                    .and_then(|c| c.not_after.duration_since(SystemTime::now()).ok());
                tracing::warn!(
                    error = %e,
                    retry_in = ?wait,
                    current_expires_in = ?expires_in,
                    "certify failed; keeping the current certificate"
                );
                retry = (retry * 2).min(MAX_RETRY);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// 70 % of `lifetime`, ±10 %.
fn renewal_delay(lifetime: Duration) -> Duration {
    lifetime.mul_f64(RENEW_AT * rand::random_range(1.0 - JITTER..=1.0 + JITTER))
}

/// Half to all of `retry`, so failed proxies do not retry in lockstep.
fn jittered(retry: Duration) -> Duration {
    retry.mul_f64(rand::random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_63_and_77_percent() {
        let lifetime = Duration::from_secs(1000);
        for _ in 0..1000 {
            let delay = renewal_delay(lifetime);
            assert!(
                (Duration::from_secs(630)..=Duration::from_secs(770)).contains(&delay),
                "{delay:?}"
            );
        }
    }

    #[test]
    fn retries_are_jittered_below_the_backoff() {
        for _ in 0..1000 {
            let wait = jittered(MAX_RETRY);
            assert!(wait >= MAX_RETRY / 2 && wait <= MAX_RETRY, "{wait:?}");
        }
    }
}
