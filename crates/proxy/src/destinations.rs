//! The registry of known targets: what the proxy knows about an authority
//! (`host:port`) or an original destination address.
//!
//! The model is the Destination API's own `Target`, delivered through a
//! `watch` channel so a target can change under a running `Logical`. Where
//! targets come from is a [`DestinationSource`]: the static file now, the
//! controller's Destination API watch later, without changing callers.
//!
//! State per destination is bounded in time: a destination with no
//! connection and no request for `PLEXUS_DESTINATION_IDLE_TIMEOUT_MS`
//! (default 30 s) loses its `Logical` and metric series
//! (`crate::outbound::Targets`), its connection pools
//! (`EndpointClient::release_idle`) and its controller watch
//! (`crate::control`); each is swept every [`sweep_period`], and what a
//! sweep frees is handed back to the system (`plexus_core::memory`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use plexus_api::v1::Target;
use tokio::sync::watch;

/// How often idle destination state is looked for: twice per idle timeout,
/// so a destination goes at most 1.5 timeouts after its last use; never
/// more often than every 100 ms (a timeout of 0 must not spin), never less
/// often than every 30 s.
pub fn sweep_period(idle_timeout: Duration) -> Duration {
    (idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(30))
}

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

/// A set of targets, each known under several aliases (the static file),
/// replaced whole when the file changes.
pub struct FixedDestinations {
    table: RwLock<Table>,
}

#[derive(Default)]
struct Table {
    by_key: HashMap<String, watch::Receiver<Arc<Target>>>,
    /// The current targets' names, in the file's order (for `/config`).
    current: Vec<String>,
    /// One channel per target name ever loaded, kept when a new version
    /// drops the name: a `Logical` built for a name keeps its receiver, so a
    /// name that comes back must reach it on the same channel. Bounded by the
    /// names an operator wrote in the file.
    channels: HashMap<String, watch::Sender<Arc<Target>>>,
}

impl FixedDestinations {
    /// `entries`: the aliases of each target and the target itself. Aliases
    /// must already be normalised (see [`authority_key`]), target names unique.
    pub fn new(entries: Vec<(Vec<String>, Target)>) -> Self {
        let destinations = Self {
            table: RwLock::default(),
        };
        destinations.replace(entries);
        destinations
    }

    /// Makes `entries` the targets: a target whose name was known before
    /// changes under the `Logical`s that use it (and is not touched at all
    /// when equal); an alias no longer listed resolves as not meshed.
    pub fn replace(&self, entries: Vec<(Vec<String>, Target)>) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let mut by_key = HashMap::new();
        let mut current = Vec::with_capacity(entries.len());
        for (aliases, target) in entries {
            let name = target.name.clone();
            let rx = match table.channels.get(&name) {
                Some(tx) => {
                    tx.send_if_modified(|known| {
                        let changed = **known != target;
                        if changed {
                            *known = Arc::new(target);
                        }
                        changed
                    });
                    tx.subscribe()
                }
                None => {
                    let (tx, rx) = watch::channel(Arc::new(target));
                    table.channels.insert(name.clone(), tx);
                    rx
                }
            };
            for alias in aliases {
                by_key.insert(alias, rx.clone());
            }
            current.push(name);
        }
        table.by_key = by_key;
        table.current = current;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl DestinationSource for FixedDestinations {
    fn resolve<'a>(&'a self, key: &'a str) -> ResolveFuture<'a> {
        let resolution = match self.read().by_key.get(key) {
            Some(rx) => Resolution::Meshed(rx.clone()),
            None => Resolution::NotMeshed,
        };
        Box::pin(std::future::ready(resolution))
    }

    fn known(&self) -> Vec<Arc<Target>> {
        let table = self.read();
        table
            .current
            .iter()
            .filter_map(|name| table.channels.get(name))
            .map(|tx| tx.borrow().clone())
            .collect()
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

    fn named(name: &str, backend: &str) -> Target {
        Target {
            name: name.into(),
            routes: Some(plexus_api::v1::RouteTable {
                default_backend: backend.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_replaced_table_changes_targets_under_their_watchers() {
        let source = FixedDestinations::new(vec![
            (vec!["web:80".into()], named("web", "v1")),
            (vec!["old:80".into()], named("old", "old")),
        ]);
        let Resolution::Meshed(mut web) = source.resolve("web:80").await else {
            panic!("web:80 is known");
        };
        let Resolution::Meshed(mut old) = source.resolve("old:80").await else {
            panic!("old:80 is known");
        };
        web.mark_unchanged();
        old.mark_unchanged();

        source.replace(vec![
            (vec!["web:80".into(), "www:80".into()], named("web", "v2")),
            (vec!["new:80".into()], named("new", "new")),
        ]);
        // The same channel: a `Logical` holding `web` sees the new version.
        assert!(web.has_changed().unwrap());
        assert_eq!(
            web.borrow_and_update()
                .routes
                .as_ref()
                .unwrap()
                .default_backend,
            "v2"
        );
        assert!(matches!(
            source.resolve("www:80").await,
            Resolution::Meshed(_)
        ));
        assert!(matches!(
            source.resolve("old:80").await,
            Resolution::NotMeshed
        ));
        assert!(matches!(
            source.resolve("new:80").await,
            Resolution::Meshed(_)
        ));
        let names: Vec<String> = source.known().iter().map(|t| t.name.clone()).collect();
        assert_eq!(names, ["web", "new"]);

        // An equal version is no change; a name that comes back reuses its channel.
        source.replace(vec![
            (vec!["web:80".into()], named("web", "v2")),
            (vec!["old:80".into()], named("old", "back")),
        ]);
        assert!(!web.has_changed().unwrap());
        assert!(old.has_changed().unwrap());
        assert_eq!(
            old.borrow().routes.as_ref().unwrap().default_backend,
            "back"
        );
    }
}

/// Properties of the parsers of network input (bounded, reproducible cases).
#[cfg(test)]
mod properties {
    use super::authority_key;
    use crate::detect::classify;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(plexus_core::property::config())]

        #[test]
        fn an_authority_key_is_its_own_key(authority in "\\PC{0,40}") {
            if let Some(key) = authority_key(&authority) {
                prop_assert_eq!(authority_key(&key), Some(key.clone()));
            }
        }

        #[test]
        fn detection_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = classify(&bytes);
        }

    }
}
