//! The policy step: who may call this workload, and whether plaintext is
//! accepted. One model, the Destination API's `ServerPolicy`,
//! whether it comes from the controller (`WatchServer`) or from the
//! environment (static mode); compiled once per update, checked per connection.

use std::collections::HashSet;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use plexus_api::v1::ServerPolicy;
use plexus_identity::SpiffeId;
use tokio::sync::watch;

use crate::error::ProxyError;
use crate::ports::PortSet;

/// The header that tells the application who called it: the client's
/// SPIFFE ID as mTLS proved it. The inbound side always removes the one the
/// client sent, and sets it only from a verified certificate.
pub const CLIENT_ID_HEADER: &str = "plexus-client-id";

/// What the policy decided about one connection, applied to each of its requests.
#[derive(Debug, Clone)]
pub enum Admission {
    /// A client let in; `client_id` is its verified identity.
    Admitted { client_id: Option<HeaderValue> },
    /// A client refused: every request gets 403 `forbidden`.
    Refused(String),
}

impl Admission {
    /// The decision for a client (`None`: plaintext).
    pub fn of(policy: &Policy, client: Option<&SpiffeId>) -> Self {
        match policy.admit(client) {
            Ok(()) => Self::Admitted {
                client_id: client.and_then(|id| HeaderValue::from_str(id.as_str()).ok()),
            },
            Err(why) => Self::Refused(why),
        }
    }

    /// Sets `plexus-client-id` (replacing any the client sent) or refuses.
    pub fn apply(&self, headers: &mut HeaderMap) -> Result<(), ProxyError> {
        match self {
            Self::Admitted { client_id } => {
                headers.remove(CLIENT_ID_HEADER);
                if let Some(id) = client_id {
                    headers.insert(CLIENT_ID_HEADER, id.clone());
                }
                Ok(())
            }
            Self::Refused(why) => Err(ProxyError::Forbidden(why.clone())),
        }
    }
}

/// The mTLS modes of a `ServerPolicy`.
pub(crate) const PERMISSIVE: &str = "permissive";
pub(crate) const STRICT: &str = "strict";

/// A `ServerPolicy` ready to check connections against.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub strict: bool,
    /// Empty: any client the mode accepts.
    allowed: HashSet<String>,
    pub opaque_ports: PortSet,
}

impl Policy {
    /// An unknown mode reads as STRICT: a typo must not open the workload.
    pub fn compile(policy: &ServerPolicy) -> Self {
        let mode = policy.mtls_mode.trim().to_ascii_lowercase();
        Self {
            strict: !(mode.is_empty() || mode == PERMISSIVE),
            allowed: policy.allowed_identities.iter().cloned().collect(),
            opaque_ports: policy
                .opaque_ports
                .iter()
                .filter_map(|p| u16::try_from(*p).ok())
                .collect(),
        }
    }

    /// Whether a client is let in: `client` is its mTLS identity, `None`
    /// for plaintext (or TLS without a client certificate). `Err` says why not.
    pub fn admit(&self, client: Option<&SpiffeId>) -> Result<(), String> {
        match client {
            None if self.strict => {
                Err("plaintext client: this workload accepts mTLS only (STRICT)".into())
            }
            None if !self.allowed.is_empty() => {
                Err("plaintext client: this workload allows named identities only".into())
            }
            Some(id) if !self.allowed.is_empty() && !self.allowed.contains(id.as_str()) => {
                Err(id.to_string())
            }
            _ => Ok(()),
        }
    }
}

/// The current policy, shared by every inbound connection.
pub type PolicyWatch = watch::Receiver<Arc<Policy>>;

/// A policy that never changes (static mode). Connections only `borrow()`
/// it, so the sender is not needed.
pub fn fixed(policy: &ServerPolicy) -> PolicyWatch {
    watch::channel(Arc::new(Policy::compile(policy))).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn strict_refuses_plaintext_and_allow_lists_refuse_others() {
        let web = id("spiffe://td/ns/shop/sa/web");
        let admin = id("spiffe://td/ns/shop/sa/admin");
        let permissive = Policy::compile(&ServerPolicy::default());
        assert!(permissive.admit(None).is_ok());
        assert!(permissive.admit(Some(&web)).is_ok());

        let strict = Policy::compile(&ServerPolicy {
            mtls_mode: "strict".into(),
            ..Default::default()
        });
        assert!(strict.admit(None).is_err());
        assert!(strict.admit(Some(&web)).is_ok());

        let only_web = Policy::compile(&ServerPolicy {
            allowed_identities: vec![web.to_string()],
            ..Default::default()
        });
        assert!(only_web.admit(Some(&web)).is_ok());
        assert_eq!(only_web.admit(Some(&admin)), Err(admin.to_string()));
        assert!(only_web.admit(None).is_err());

        let typo = Policy::compile(&ServerPolicy {
            mtls_mode: "stirct".into(),
            ..Default::default()
        });
        assert!(typo.strict, "an unknown mode fails closed");
    }
}
