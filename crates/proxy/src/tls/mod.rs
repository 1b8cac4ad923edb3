//! The proxy's identity and mTLS: it obtains its certificate from the
//! controller (Certify), keeps it renewed, and hands out rustls
//! configurations that always present the latest certificate.
//!
//! Use: [`MeshTls::start`] once at start (inside the tokio runtime), gate
//! `/ready` on [`MeshTls::ready`], then
//! - outbound to a meshed endpoint: `TlsConnector::from(mesh.client_config(&endpoint_identity))`
//!   connecting with the server name [`mesh_server_name`]`(&endpoint_identity)`;
//! - inbound: [`peek_client_hello`] on the buffered first bytes; for
//!   [`PeekedHello::Mesh`], `TlsAcceptor::from(mesh.server_config(ClientAuth::Required))`,
//!   then [`peer_identity`] on the accepted connection;
//! - metrics: [`MeshTls::expiry`], and [`HandshakeFailure::of_io`] on a failed
//!   handshake for the `reason` label.

mod controller;
mod current;
mod metrics;
mod renew;
mod settings;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use plexus_api::v1::identity_client::IdentityClient;
use plexus_identity::SpiffeId;
use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::sync::watch;
use tonic::transport::Channel;

pub use current::{Credential, CurrentCredential};
pub use metrics::TlsMetrics;
pub use plexus_identity::HandshakeFailure;
pub use plexus_identity::tls::{
    ALPN_H2, ClientAuth, PeekedHello, mesh_server_name, peek_client_hello, peer_identity,
};
pub use renew::CertifyError;
pub use settings::{IdentitySettings, TrustAnchors};

use current::CurrentCertificate;
use renew::Certifier;

/// Why identity could not start.
#[derive(Debug, thiserror::Error)]
pub enum IdentityStartError {
    #[error("PLEXUS_IDENTITY_TRUST_ANCHORS {path}: {source}")]
    TrustAnchorsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("PLEXUS_IDENTITY_TRUST_ANCHORS: {0}")]
    TrustAnchors(plexus_identity::tls::TlsError),
    #[error("PLEXUS_IDENTITY_ADDR: {0}")]
    ControllerAddr(#[from] tonic::transport::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] plexus_identity::tls::TlsError),
}

/// The identity part of `/config`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IdentityStatus {
    pub identity: String,
    /// A valid certificate is in hand.
    pub ready: bool,
    /// Expiry of the current certificate, seconds since the Unix epoch.
    pub not_after_unix: Option<u64>,
    /// Serial of the current certificate, hex.
    pub serial: Option<String>,
}

/// The proxy's identity: its current certificate and the TLS configurations
/// built on it. Cheap to clone; renewal stops when the last clone is dropped.
#[derive(Clone)]
pub struct MeshTls {
    inner: Arc<Inner>,
}

struct Inner {
    identity: SpiffeId,
    roots: Arc<RootCertStore>,
    current: CurrentCredential,
    /// The validated mesh client configuration each per-identity one copies.
    client_base: ClientConfig,
    clients: Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
    strict: Arc<ServerConfig>,
    permissive: Arc<ServerConfig>,
    controller: Channel,
    controller_addr: String,
    to_controller: Arc<ClientConfig>,
    renewal: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl MeshTls {
    /// Reads the trust anchors, and starts obtaining and renewing the
    /// certificate in the background. Must run inside a tokio runtime.
    pub fn start(settings: &IdentitySettings) -> Result<Self, IdentityStartError> {
        let pem = settings
            .trust_anchors
            .load()
            .map_err(|(path, source)| IdentityStartError::TrustAnchorsFile { path, source })?;
        let roots = plexus_identity::tls::trust_anchors_from_pem(&pem)
            .map_err(IdentityStartError::TrustAnchors)?;

        let to_controller = plexus_identity::tls::client_config(
            roots.clone(),
            settings.controller_identity.clone(),
            None,
        )?;
        let to_controller = Arc::new(to_controller);
        let controller = controller::channel(&settings.controller_addr, to_controller.clone())?;

        let (sender, current) = watch::channel(None);
        let resolver = Arc::new(CurrentCertificate(current.clone()));
        let client_base = plexus_identity::tls::client_config(
            roots.clone(),
            settings.identity.clone(),
            Some(resolver.clone()),
        )?;
        let server = |auth| {
            plexus_identity::tls::server_config(roots.clone(), auth, resolver.clone()).map(Arc::new)
        };
        let strict = server(ClientAuth::Required)?;
        let permissive = server(ClientAuth::Optional)?;

        let certifier = Certifier {
            client: IdentityClient::new(controller.clone()),
            identity: settings.identity.clone(),
            token_file: settings.token_file.clone(),
            roots: roots.clone(),
        };
        let renewal = tokio::spawn(renew::renew_forever(certifier, sender)).abort_handle();
        Ok(Self {
            inner: Arc::new(Inner {
                identity: settings.identity.clone(),
                roots,
                current,
                client_base,
                clients: Mutex::new(HashMap::new()),
                strict,
                permissive,
                controller,
                controller_addr: settings.controller_addr.clone(),
                to_controller,
                renewal,
            }),
        })
    }

    /// This proxy's SPIFFE ID.
    pub fn identity(&self) -> &SpiffeId {
        &self.inner.identity
    }

    /// Whether a valid (unexpired) certificate is in hand: gate `/ready` on it.
    pub fn ready(&self) -> bool {
        self.expiry().is_some_and(|t| SystemTime::now() < t)
    }

    /// Waits until the first certificate has arrived.
    pub async fn wait_ready(&self) {
        let mut current = self.inner.current.clone();
        // Err only if the renewal task is gone, which happens only after
        // `self` (which owns it) is dropped.
        let _ = current.wait_for(Option::is_some).await;
    }

    /// Expiry of the current certificate: the gauge, and `/config`.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.inner.current.borrow().as_ref().map(|c| c.not_after)
    }

    /// The current certificate, if any (for `/config` and diagnostics).
    pub fn credential(&self) -> Option<Arc<Credential>> {
        self.inner.current.borrow().clone()
    }

    /// What `/config` shows about this proxy's identity.
    pub fn status(&self) -> IdentityStatus {
        let credential = self.credential();
        IdentityStatus {
            identity: self.inner.identity.to_string(),
            ready: self.ready(),
            not_after_unix: credential.as_ref().and_then(|c| {
                c.not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs())
            }),
            serial: credential
                .as_ref()
                .map(|c| c.serial.iter().map(|b| format!("{b:02x}")).collect()),
        }
    }

    /// A receiver that sees every new certificate (rotation metrics, tests).
    pub fn watch(&self) -> CurrentCredential {
        self.inner.current.clone()
    }

    /// The roots peers' certificates must chain to.
    pub fn trust_anchors(&self) -> Arc<RootCertStore> {
        self.inner.roots.clone()
    }

    /// The client configuration for a meshed endpoint that must be
    /// `expected` (the identity the Destination API announced). One per
    /// identity, cached, so TLS sessions resume across connections.
    pub fn client_config(&self, expected: &SpiffeId) -> Arc<ClientConfig> {
        let mut clients = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(config) = clients.get(expected) {
            return config.clone();
        }
        let mut config = self.inner.client_base.clone();
        config
            .dangerous()
            .set_certificate_verifier(plexus_identity::tls::server_verifier(
                self.inner.roots.clone(),
                expected.clone(),
            ));
        // A resumed session skips certificate verification, so sessions
        // verified for one identity must never serve another.
        config.resumption = Resumption::default();
        let config = Arc::new(config);
        clients.insert(expected.clone(), config.clone());
        config
    }

    /// The inbound server configuration: `Required` for STRICT workloads,
    /// `Optional` to also accept TLS clients without a certificate. Either
    /// way, read the client's identity with [`peer_identity`] after the
    /// handshake and apply the allow-list there (so HTTP can answer 403).
    pub fn server_config(&self, client_auth: ClientAuth) -> Arc<ServerConfig> {
        match client_auth {
            ClientAuth::Required => self.inner.strict.clone(),
            ClientAuth::Optional => self.inner.permissive.clone(),
        }
    }

    /// The TLS channel to the controller (verified as
    /// `PLEXUS_CONTROLLER_IDENTITY`); the Destination client can share it.
    pub fn controller_channel(&self) -> Channel {
        self.inner.controller.clone()
    }

    /// A TLS channel to the controller at `addr` (`host:port`), verified as
    /// `PLEXUS_CONTROLLER_IDENTITY`: the Identity API's channel when `addr`
    /// is the same (one connection for both APIs), else a new one.
    pub fn controller_channel_to(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        if addr == self.inner.controller_addr {
            return Ok(self.inner.controller.clone());
        }
        controller::channel(addr, self.inner.to_controller.clone())
    }
}
