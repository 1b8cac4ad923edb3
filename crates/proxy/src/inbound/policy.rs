//! The policy step: who may call this workload, whether plaintext is
//! accepted, and how often (the local rate limit, [`super::rate_limit`]). One model, the Destination API's `ServerPolicy`,
//! whether it comes from the controller (`WatchServer`) or from the
//! environment (static mode); compiled once per update, checked per HTTP request and, for opaque TCP,
//! on every update.

use std::collections::HashSet;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use plexus_api::v1::ServerPolicy;
use plexus_identity::SpiffeId;
use tokio::sync::watch;

use super::rate_limit::RateLimiter;
use crate::error::ProxyError;
use crate::ports::PortSet;

/// The header that tells the application who called it: the client's
/// SPIFFE ID as mTLS proved it. The inbound side always removes the one the
/// client sent, and sets it only from a verified certificate.
pub const CLIENT_ID_HEADER: &str = "plexus-client-id";

/// The client of one inbound connection, as the connection proved it: judged
/// against the current policy on each HTTP request and, for opaque TCP, on
/// each policy change, so a change reaches connections already open.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its mTLS identity; `None`: plaintext.
    identity: Option<SpiffeId>,
    /// `identity` as the `plexus-client-id` value, rendered once per connection.
    id_header: Option<HeaderValue>,
}

impl Client {
    pub fn new(identity: Option<SpiffeId>) -> Self {
        let id_header = identity
            .as_ref()
            .and_then(|id| HeaderValue::from_str(id.as_str()).ok());
        Self {
            identity,
            id_header,
        }
    }

    /// Whether the current policy lets this client in; `Err` says why not.
    pub fn admitted(&self, policy: &PolicyWatch) -> Result<(), String> {
        policy.borrow().admit(self.identity.as_ref())
    }

    /// One request: refused (403 `forbidden`) unless the current policy
    /// admits the client, then (429 `rate-limited`) when its rate limit
    /// has no token for it; then `plexus-client-id` replaces any the client sent.
    pub fn admit_request(
        &self,
        policy: &PolicyWatch,
        headers: &mut HeaderMap,
    ) -> Result<(), ProxyError> {
        {
            let policy = policy.borrow();
            let identity = self.identity.as_ref();
            policy.admit(identity).map_err(ProxyError::Forbidden)?;
            // Without a limit, this branch is all a request pays.
            if let Some(limiter) = &policy.rate_limit {
                limiter
                    .admit(identity.map(SpiffeId::as_str))
                    .map_err(|limited| ProxyError::RateLimited {
                        retry_after_secs: limited.retry_after_secs(),
                    })?;
            }
        }
        headers.remove(CLIENT_ID_HEADER);
        if let Some(id) = &self.id_header {
            headers.insert(CLIENT_ID_HEADER, id.clone());
        }
        Ok(())
    }

    /// Resolves with the reason once a policy change no longer admits this
    /// client; never, while every policy does (or the policy cannot change).
    pub async fn refused(&self, mut policy: PolicyWatch) -> String {
        while policy.changed().await.is_ok() {
            if let Err(why) = self.admitted(&policy) {
                return why;
            }
        }
        std::future::pending().await
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
    /// `None`: no limit.
    rate_limit: Option<Arc<RateLimiter>>,
}

impl Policy {
    /// An unknown mode reads as STRICT: a typo must not open the workload.
    pub fn compile(policy: &ServerPolicy) -> Self {
        Self::compile_after(policy, None)
    }

    /// Compiles an update of `previous`: an unchanged rate limit keeps its
    /// buckets (a resent or unrelated update must not grant a new burst); a
    /// changed one starts with full buckets, from the next request on.
    pub fn compile_after(policy: &ServerPolicy, previous: Option<&Policy>) -> Self {
        let mode = policy.mtls_mode.trim().to_ascii_lowercase();
        let rate_limit = policy.rate_limit.as_ref().and_then(|limit| {
            match previous.and_then(|p| p.rate_limit.as_ref()) {
                Some(kept) if kept.enforces(limit) => Some(kept.clone()),
                _ => RateLimiter::new(limit).map(Arc::new),
            }
        });
        Self {
            rate_limit,
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

/// A policy that never changes (static mode): without a sender, connections
/// only `borrow()` it and [`Client::refused`] waits forever.
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

    #[test]
    fn an_update_keeps_an_unchanged_limits_buckets_and_a_changed_limit_starts_anew() {
        let limited = |burst| ServerPolicy {
            rate_limit: Some(plexus_api::v1::RateLimit {
                requests: 1,
                period_seconds: 3600,
                burst,
                per_identity: false,
            }),
            ..Default::default()
        };
        let admits = |p: &Policy| p.rate_limit.as_ref().is_none_or(|l| l.admit(None).is_ok());
        let first = Policy::compile(&limited(1));
        assert!(admits(&first));
        assert!(!admits(&first), "the burst of 1 is spent");

        let resent = Policy::compile_after(&limited(1), Some(&first));
        assert!(!admits(&resent), "the same limit keeps its bucket");
        let unrelated = ServerPolicy {
            mtls_mode: STRICT.into(),
            ..limited(1)
        };
        assert!(!admits(&Policy::compile_after(&unrelated, Some(&resent))));

        let altered = Policy::compile_after(&limited(2), Some(&resent));
        assert!(admits(&altered) && admits(&altered) && !admits(&altered));
        let removed = Policy::compile_after(&ServerPolicy::default(), Some(&altered));
        assert!(removed.rate_limit.is_none() && admits(&removed));
    }
}
