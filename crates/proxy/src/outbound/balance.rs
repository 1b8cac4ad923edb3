//! The balance step: each meshed target's [`Logical`] service (route rules,
//! traffic splits, load balancing, retries, circuit breaking: `crate::logical`),
//! one per target, shared by every connection; and the target of a
//! redirected connection or of an authority, which picks it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_api::v1::Target;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connect::EndpointClient;
use crate::destinations::{Destinations, Resolution};
use crate::error::ProxyError;
use crate::logical::{Logical, LogicalMetrics};
use crate::upstream::{LogicalTarget, Upstream};

/// A `Logical` nobody used for this long, and no connection holds, is
/// dropped, releasing its destination watch.
const LOGICAL_IDLE: Duration = Duration::from_secs(600);

/// The outbound side's view of destinations, with one `Logical` per target.
pub struct Targets {
    destinations: Destinations,
    client: Arc<dyn EndpointClient>,
    metrics: LogicalMetrics,
    logicals: Mutex<Logicals>,
}

#[derive(Default)]
struct Logicals {
    by_name: HashMap<String, (Arc<LogicalTarget>, Instant)>,
    last_sweep: Option<Instant>,
}

/// What is known about a redirected outbound connection's original destination.
pub struct Redirected {
    pub upstream: Upstream,
    /// The target says it carries an opaque protocol: do not sniff.
    pub opaque: bool,
    /// The meshed target, for opaque TCP to one of its endpoints over mTLS.
    pub target: Option<watch::Receiver<Arc<Target>>>,
}

impl Logicals {
    /// Drops idle, unheld entries; at most once per idle period.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|last| now < last + LOGICAL_IDLE)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.by_name.retain(|_, (logical, last_used)| {
            Arc::strong_count(logical) > 1 || now < *last_used + LOGICAL_IDLE
        });
    }
}

impl Targets {
    pub fn new(
        destinations: Destinations,
        client: Arc<dyn EndpointClient>,
        metrics: LogicalMetrics,
    ) -> Self {
        Self {
            destinations,
            client,
            metrics,
            logicals: Mutex::default(),
        }
    }

    /// The upstream of a redirected connection: its target if meshed, else the address itself.
    pub async fn by_original_dst(&self, addr: SocketAddr) -> Redirected {
        match self.destinations.by_addr(addr).await {
            Resolution::Meshed(target) => {
                let opaque = target
                    .borrow()
                    .protocol
                    .as_ref()
                    .is_some_and(|p| p.protocol == "opaque");
                Redirected {
                    upstream: self.logical(target.clone()),
                    opaque,
                    target: Some(target),
                }
            }
            Resolution::NotMeshed => Redirected {
                upstream: Upstream::passthrough(addr),
                opaque: false,
                target: None,
            },
        }
    }

    /// The upstream for a `Host` / `:authority` on a connection that was not
    /// redirected: only known targets, as there is no address to pass through to.
    pub async fn by_authority(&self, authority: &str) -> Result<Upstream, ProxyError> {
        match self.destinations.by_authority(authority).await {
            Some(Resolution::Meshed(target)) => Ok(self.logical(target)),
            Some(Resolution::NotMeshed) => Err(ProxyError::UnknownTarget(authority.to_owned())),
            None => Err(ProxyError::BadRequest(format!(
                "invalid authority {authority:?}"
            ))),
        }
    }

    fn logical(&self, target: watch::Receiver<Arc<Target>>) -> Upstream {
        let name = target.borrow().name.clone();
        let mut logicals = match self.logicals.lock() {
            Ok(logicals) => logicals,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        logicals.sweep(now);
        let (logical, last_used) = logicals.by_name.entry(name).or_insert_with_key(|name| {
            let logical = LogicalTarget {
                name: Arc::from(name.as_str()),
                logical: Logical::new(target, self.client.clone(), self.metrics.clone()),
            };
            (Arc::new(logical), now)
        });
        *last_used = now;
        Upstream::Logical(logical.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::FixedDestinations;
    use crate::transport::HttpEndpointClient;

    fn targets() -> Targets {
        let target = Target {
            name: "web.default.svc.cluster.local:80".into(),
            ..Default::default()
        };
        let source = FixedDestinations::new(vec![(vec!["web:80".into()], target)]);
        let mut registry = prometheus_client::registry::Registry::default();
        Targets::new(
            Destinations::new(Arc::new(source)),
            Arc::new(HttpEndpointClient::new(Duration::from_secs(1))),
            LogicalMetrics::register(&mut registry),
        )
    }

    fn logical(upstream: Upstream) -> Arc<LogicalTarget> {
        match upstream {
            Upstream::Logical(target) => target,
            Upstream::Passthrough { .. } => panic!("web:80 is meshed"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_logical_per_target_until_idle_and_unheld() {
        let targets = targets();
        let first = logical(targets.by_authority("web").await.unwrap());
        let again = logical(targets.by_authority("web:80").await.unwrap());
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(&*first.name, "web.default.svc.cluster.local:80");
        drop(again);

        // Held by a connection: kept however long it idles.
        tokio::time::advance(LOGICAL_IDLE * 2).await;
        let held = logical(targets.by_authority("web").await.unwrap());
        assert!(Arc::ptr_eq(&first, &held));
        drop((first, held));

        // Unheld and idle: dropped, the next lookup builds a new one.
        let before = Arc::downgrade(&logical(targets.by_authority("web").await.unwrap()));
        tokio::time::advance(LOGICAL_IDLE * 2).await;
        let _after = logical(targets.by_authority("web").await.unwrap());
        assert!(before.upgrade().is_none(), "the idle Logical was dropped");
    }
}
