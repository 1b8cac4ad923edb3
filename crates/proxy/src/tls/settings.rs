//! What the proxy needs to obtain and use its certificate (read from the
//! environment by `config`).

use std::path::PathBuf;

use plexus_identity::SpiffeId;

/// What the proxy needs to obtain and use its certificate. Absent (`None` in
/// `Config::identity`) when `PLEXUS_IDENTITY` is unset: the
/// proxy then runs without mTLS (local mode with no controller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySettings {
    /// `PLEXUS_IDENTITY`: this workload's SPIFFE ID.
    pub identity: SpiffeId,
    /// `PLEXUS_IDENTITY_TOKEN_FILE`: the projected ServiceAccount token (or a
    /// bootstrap token file). Re-read before every Certify: kubelet rotates it.
    pub token_file: PathBuf,
    /// `PLEXUS_IDENTITY_TRUST_ANCHORS`: the roots to trust.
    pub trust_anchors: TrustAnchors,
    /// `PLEXUS_IDENTITY_ADDR`: the controller's Identity API, `host:port`.
    pub controller_addr: String,
    /// `PLEXUS_CONTROLLER_IDENTITY`: the controller's SPIFFE ID, checked on
    /// every connection to it. Default `spiffe://<our trust domain>/ns/plexus/sa/plexus-controller`.
    pub controller_identity: SpiffeId,
}

/// Where the trust anchors come from. The variable holds either a path or,
/// if it starts with `-----BEGIN`, the PEM itself: the injector inlines it,
/// since a pod cannot mount a ConfigMap from the controller's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustAnchors {
    File(PathBuf),
    Pem(String),
}

impl TrustAnchors {
    /// The PEM text; reads the file if it is one.
    pub fn load(&self) -> Result<Vec<u8>, (String, std::io::Error)> {
        match self {
            Self::Pem(pem) => Ok(pem.clone().into_bytes()),
            Self::File(path) => std::fs::read(path).map_err(|e| (path.display().to_string(), e)),
        }
    }
}
