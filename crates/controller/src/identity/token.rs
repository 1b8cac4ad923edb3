//! What a Certify caller proves: a token, checked by a [`TokenAuthority`].
//!
//! Outside a cluster the controller issues bootstrap tokens itself
//! ([`BootstrapTokens`]); in a cluster the API server checks projected
//! ServiceAccount tokens ([`super::token_review::TokenReviewer`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use futures_util::future::BoxFuture;
use plexus_identity::SpiffeId;
use subtle::ConstantTimeEq;

/// Turns a token into the identity it proves.
pub trait TokenAuthority: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<SpiffeId, TokenError>>;
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token proves nothing: unknown, expired, wrong audience, not a
    /// ServiceAccount. Answered UNAUTHENTICATED.
    #[error("token refused: {0}")]
    Refused(String),
    /// The authority could not be asked (API server down). Answered UNAVAILABLE.
    #[error("token could not be checked: {0}")]
    Unavailable(String),
}

/// Random 256-bit tokens the controller issues for the workloads of its file
/// feed, one file per identity: `<dir>/<namespace>.<service-account>.token`
/// (0600, in a 0700 directory). A local proxy is started with
/// `PLEXUS_IDENTITY_TOKEN_FILE` pointing at its file.
///
/// Chosen over an HMAC of the identity under one `--bootstrap-secret`: random
/// tokens need no secret to configure, each can be revoked alone (delete the
/// file, restart the controller), and reading a private file is the same
/// trust model as the projected ServiceAccount token file in a cluster.
/// Tokens do not expire; they are for demos and tests on one machine.
pub struct BootstrapTokens {
    dir: PathBuf,
    trust_domain: String,
    tokens: RwLock<Vec<(SpiffeId, String)>>,
}

const TOKEN_SUFFIX: &str = ".token";

impl BootstrapTokens {
    /// Opens (creating if needed) the token directory and loads the tokens
    /// already in it, so proxies keep theirs across controller restarts.
    pub fn open(dir: &Path, trust_domain: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        set_mode(dir, 0o700)?;
        let mut tokens = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(identity) = identity_of_file(&path, trust_domain) else {
                continue;
            };
            let token = std::fs::read_to_string(&path)?.trim().to_owned();
            if token.is_empty() {
                continue;
            }
            tokens.push((identity, token));
        }
        Ok(Self {
            dir: dir.to_owned(),
            trust_domain: trust_domain.to_owned(),
            tokens: RwLock::new(tokens),
        })
    }

    /// The file holding `identity`'s token.
    pub fn path_of(&self, identity: &SpiffeId) -> PathBuf {
        self.dir.join(format!(
            "{}.{}{TOKEN_SUFFIX}",
            identity.namespace(),
            identity.service_account()
        ))
    }

    /// Makes sure `identity` has a token, creating its file if absent;
    /// returns the file's path.
    pub fn ensure(&self, identity: &SpiffeId) -> std::io::Result<PathBuf> {
        let path = self.path_of(identity);
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        if tokens.iter().any(|(known, _)| known == identity) {
            return Ok(path);
        }
        if identity.trust_domain() != self.trust_domain {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{identity} is not in trust domain {}", self.trust_domain),
            ));
        }
        let bytes: [u8; 32] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&path, token.as_bytes())?;
        tokens.push((identity.clone(), token));
        Ok(path)
    }
}

impl TokenAuthority for BootstrapTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<SpiffeId, TokenError>> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        // Compare against every token in constant time, so timing tells an
        // attacker nothing about how close a guess was.
        let mut found = None;
        for (identity, known) in tokens.iter() {
            if bool::from(known.as_bytes().ct_eq(token.as_bytes())) {
                found = Some(identity.clone());
            }
        }
        let result = found.ok_or_else(|| TokenError::Refused("unknown bootstrap token".into()));
        Box::pin(std::future::ready(result))
    }
}

fn identity_of_file(path: &Path, trust_domain: &str) -> Option<SpiffeId> {
    let name = path.file_name()?.to_str()?.strip_suffix(TOKEN_SUFFIX)?;
    // A namespace has no dots; a service account may.
    let (namespace, service_account) = name.split_once('.')?;
    SpiffeId::new(trust_domain, namespace, service_account).ok()
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> SpiffeId {
        "spiffe://td/ns/shop/sa/web.v2".parse().unwrap()
    }

    #[tokio::test]
    async fn issued_tokens_authenticate_and_survive_a_restart() {
        let dir = test_dir("bootstrap-restart");
        let tokens = BootstrapTokens::open(&dir, "td").unwrap();
        let path = tokens.ensure(&web()).unwrap();
        assert_eq!(path, dir.join("shop.web.v2.token"));
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(token.len(), 64, "256 bits, hex");
        assert_eq!(tokens.authenticate(&token).await.unwrap(), web());
        assert_eq!(tokens.ensure(&web()).unwrap(), path, "idempotent");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            token,
            "not rotated"
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let reopened = BootstrapTokens::open(&dir, "td").unwrap();
        assert_eq!(reopened.authenticate(&token).await.unwrap(), web());
    }

    #[tokio::test]
    async fn unknown_and_near_miss_tokens_are_refused() {
        let dir = test_dir("bootstrap-refused");
        let tokens = BootstrapTokens::open(&dir, "td").unwrap();
        let token = std::fs::read_to_string(tokens.ensure(&web()).unwrap()).unwrap();
        let mut near = token.clone().into_bytes();
        near[63] = if near[63] == b'0' { b'1' } else { b'0' };
        for bad in [
            String::new(),
            String::from_utf8(near).unwrap(),
            token[..63].to_owned(),
        ] {
            assert!(matches!(
                tokens.authenticate(&bad).await,
                Err(TokenError::Refused(_))
            ));
        }
        let elsewhere: SpiffeId = "spiffe://other/ns/shop/sa/web".parse().unwrap();
        assert!(tokens.ensure(&elsewhere).is_err());
    }

    pub(crate) fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "plexus-identity-{name}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
