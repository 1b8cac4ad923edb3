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
use tokio::time::Instant;
use tonic::transport::Channel;
use tower::retry::backoff::{Backoff, ExponentialBackoffMaker, MakeBackoff};
use tower::util::rng::HasherRng;

use super::current::Credential;

const RENEW_AT: f64 = 0.7;
const JITTER: f64 = 0.1;
/// The first wait after a failed Certify is 50..100 ms, doubling up to 10 s:
/// the numbers of the hand-written backoff this replaced, which waited half
/// to all of 100 ms, 200 ms, … 10 s. Tower's jitter only adds, so the base
/// is half the old step and the jitter (100 %) doubles it at most; the cap
/// includes the jitter, so no wait exceeds 10 s, well inside a
/// certificate's remaining 30 % while the old one keeps serving.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Up to 100 % of the base added: failed proxies do not retry in lockstep.
const RETRY_JITTER: f64 = 1.0;

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
    let mut retries = retry_backoff();
    let mut backoff = retries.make_backoff();
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
                backoff = retries.make_backoff();
                tokio::time::sleep(renew_in).await;
            }
            Err(e) => {
                let wait = backoff.next_backoff();
                let expires_in = current
                    .borrow()
                    .as_ref()
                    .and_then(|c| c.not_after.duration_since(SystemTime::now()).ok());
                tracing::warn!(
                    error = %e,
                    retry_in = ?wait.deadline().saturating_duration_since(Instant::now()),
                    current_expires_in = ?expires_in,
                    "certify failed; keeping the current certificate"
                );
                wait.await;
            }
        }
    }
}

/// 70 % of `lifetime`, ±10 %.
fn renewal_delay(lifetime: Duration) -> Duration {
    lifetime.mul_f64(RENEW_AT * rand::random_range(1.0 - JITTER..=1.0 + JITTER))
}

/// Exponential backoff with jitter between failed Certify attempts.
fn retry_backoff() -> ExponentialBackoffMaker {
    ExponentialBackoffMaker::new(RETRY_MIN, RETRY_MAX, RETRY_JITTER, HasherRng::default())
        .expect("the retry bounds are constants: min <= max, jitter in 0..=100")
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

    #[tokio::test(start_paused = true)]
    async fn retries_wait_half_to_all_of_a_doubling_step_up_to_the_cap() {
        let mut backoff = retry_backoff().make_backoff();
        let mut step = RETRY_MIN * 2;
        for _ in 0..20 {
            let wait = backoff.next_backoff().deadline() - Instant::now();
            assert!(
                wait >= (step / 2).min(RETRY_MAX) && wait <= step.min(RETRY_MAX),
                "{wait:?}"
            );
            step *= 2;
        }
    }
}
