//! The registry of known targets: what the proxy knows about an authority
//! (`host:port`) or an original destination address.
//!
//! The model is the Destination API's own `Target`, delivered through a
//! `watch` channel so a target can change under a running `Logical`. Where
//! targets come from is a [`DestinationSource`]: the static file now, the
//! controller's Destination API watch later, without changing callers.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use plexus_api::v1::Target;
use tokio::sync::watch;

/// What a lookup learned about a target.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// A meshed target; the receiver always holds its current state.
    Meshed(watch::Receiver<Arc<Target>>),
    /// Not known to the mesh: forward as plain passthrough.
    NotMeshed,
}

pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = Resolution> + Send + 'a>>;

/// Where targets come from (the static file, the controller's watch).
pub trait DestinationSource: Send + Sync + 'static {
    /// Resolves a normalised key: `host:port` (lower-case host) or `ip:port`.
    fn resolve<'a>(&'a self, key: &'a str) -> ResolveFuture<'a>;

    /// Every target this source currently knows, for `/config`.
    fn known(&self) -> Vec<Arc<Target>>;
}

/// Lookups by authority or address, normalised once here for every source.
#[derive(Clone)]
pub struct Destinations {
    source: Arc<dyn DestinationSource>,
}

impl Destinations {
    pub fn new(source: Arc<dyn DestinationSource>) -> Self {
        Self { source }
    }

    /// Looks up an authority from `Host` / `:authority` (a missing port means 80).
    /// `None`: the authority is not a valid `host[:port]`.
    pub async fn by_authority(&self, authority: &str) -> Option<Resolution> {
        let key = authority_key(authority)?;
        Some(self.source.resolve(&key).await)
    }

    /// Looks up an original destination address (`SO_ORIGINAL_DST`).
    pub async fn by_addr(&self, addr: SocketAddr) -> Resolution {
        self.source.resolve(&addr.to_string()).await
    }

    /// Every known target, in the Destination API's model.
    pub fn known(&self) -> Vec<Arc<Target>> {
        self.source.known()
    }
}

/// The key an authority is known by: lower-case host, explicit port, no
/// trailing dot on a fully qualified name. `None` when it is not `host[:port]`.
pub fn authority_key(authority: &str) -> Option<String> {
    let parsed: http::uri::Authority = authority.parse().ok()?;
    if parsed.as_str().contains('@') {
        return None;
    }
    let raw_host = parsed.host();
    // What follows the host is empty or ":port"; `Authority::port` hides a bad port.
    let port = match parsed.as_str().get(raw_host.len()..)? {
        "" => 80,
        rest => rest.strip_prefix(':')?.parse::<u16>().ok()?,
    };
    let host = raw_host.trim_end_matches('.');
    if host.is_empty() {
        return None;
    }
    let mut key = String::with_capacity(host.len() + 6);
    key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    // Writing into a String cannot fail.
    let _ = write!(key, ":{port}");
    Some(key)
}

/// A fixed set of targets, each known under several aliases (the static file).
pub struct FixedDestinations {
    by_key: HashMap<String, watch::Receiver<Arc<Target>>>,
    targets: Vec<watch::Sender<Arc<Target>>>,
}

impl FixedDestinations {
    /// `entries`: the aliases of each target and the target itself. Aliases
    /// must already be normalised (see [`authority_key`]).
    pub fn new(entries: Vec<(Vec<String>, Target)>) -> Self {
        let mut by_key = HashMap::new();
        let mut targets = Vec::with_capacity(entries.len());
        for (aliases, target) in entries {
            let (tx, rx) = watch::channel(Arc::new(target));
            for alias in aliases {
                by_key.insert(alias, rx.clone());
            }
            targets.push(tx);
        }
        Self { by_key, targets }
    }
}

impl DestinationSource for FixedDestinations {
    fn resolve<'a>(&'a self, key: &'a str) -> ResolveFuture<'a> {
        let resolution = match self.by_key.get(key) {
            Some(rx) => Resolution::Meshed(rx.clone()),
            None => Resolution::NotMeshed,
        };
        Box::pin(std::future::ready(resolution))
    }

    fn known(&self) -> Vec<Arc<Target>> {
        self.targets.iter().map(|tx| tx.borrow().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_normalised() {
        assert_eq!(
            authority_key("Web.Default:8080").as_deref(),
            Some("web.default:8080")
        );
        assert_eq!(authority_key("web").as_deref(), Some("web:80"));
        assert_eq!(
            authority_key("web.default.svc.cluster.local.:80").as_deref(),
            Some("web.default.svc.cluster.local:80")
        );
        assert_eq!(authority_key("10.0.0.1:80").as_deref(), Some("10.0.0.1:80"));
        assert_eq!(authority_key("[::1]:80").as_deref(), Some("[::1]:80"));
        assert_eq!(authority_key(""), None);
        assert_eq!(authority_key("user@web:80"), None);
        assert_eq!(authority_key("web:"), None);
        assert_eq!(authority_key("web:99999"), None);
    }

    #[tokio::test]
    async fn aliases_share_one_target_and_unknown_is_not_meshed() {
        let target = Target {
            name: "web.default.svc.cluster.local:80".into(),
            ..Default::default()
        };
        let source = FixedDestinations::new(vec![(
            vec!["web:80".into(), "10.96.0.10:80".into()],
            target,
        )]);
        let destinations = Destinations::new(Arc::new(source));
        let Some(Resolution::Meshed(a)) = destinations.by_authority("WEB").await else {
            panic!("web is known");
        };
        let Resolution::Meshed(b) = destinations.by_addr("10.96.0.10:80".parse().unwrap()).await
        else {
            panic!("10.96.0.10:80 is known");
        };
        assert!(Arc::ptr_eq(&a.borrow(), &b.borrow()));
        assert!(matches!(
            destinations.by_authority("other:80").await,
            Some(Resolution::NotMeshed)
        ));
        assert_eq!(destinations.known().len(), 1);
    }
}
