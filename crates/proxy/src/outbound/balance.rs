//! The balance step: each meshed target's [`Logical`] service (route rules,
//! traffic splits, load balancing, retries, circuit breaking: `crate::logical`),
//! one per target, shared by every connection; and the target of a
//! redirected connection or of an authority, which picks it. A target no
//! connection holds and no lookup named for the destination idle timeout
//! goes with its metric series ([`release_idle_destinations`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use plexus_api::v1::Target;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connect::EndpointClient;
use crate::destinations::{Destinations, Resolution, sweep_period};
use crate::error::ProxyError;
use crate::logical::{Logical, LogicalMetrics};
use crate::metrics::ProxyMetrics;
use crate::upstream::{LogicalTarget, Upstream};
use plexus_core::memory::{self, TrimAfterSweeps};

/// The outbound side's view of destinations, with one `Logical` per target.
pub struct Targets {
    destinations: Destinations,
    client: Arc<dyn EndpointClient>,
    metrics: LogicalMetrics,
    request_metrics: ProxyMetrics,
    /// By target name, with when a lookup last named it. Bounded by the
    /// destination source's own bound (the controller's watches).
    logicals: Mutex<HashMap<String, (Arc<LogicalTarget>, Instant)>>,
}

/// What is known about a redirected outbound connection's original destination.
pub struct Redirected {
    pub upstream: Upstream,
    /// The target says it carries an opaque protocol: do not sniff.
    pub opaque: bool,
    /// The meshed target, for opaque TCP to one of its endpoints over mTLS.
    pub target: Option<watch::Receiver<Arc<Target>>>,
}

/// Releases, every [`sweep_period`], what idle destinations hold: their
/// `Logical`s and metric series, and the client's pools of endpoints no
/// request used (passthrough destinations among them), and hands the freed
/// memory back to the system. Dropping a `Logical` lets the destination
/// source drop its watch. Ends with the `Targets`.
pub async fn release_idle_destinations(targets: Weak<Targets>, idle: Duration) {
    let mut trim = TrimAfterSweeps::default();
    loop {
        tokio::time::sleep(sweep_period(idle)).await;
        let Some(targets) = targets.upgrade() else {
            return;
        };
        trim.swept(targets.release_idle(idle));
    }
}

impl Targets {
    pub fn new(
        destinations: Destinations,
        client: Arc<dyn EndpointClient>,
        metrics: LogicalMetrics,
        request_metrics: ProxyMetrics,
    ) -> Self {
        Self {
            destinations,
            client,
            metrics,
            request_metrics,
            logicals: Mutex::default(),
        }
    }

    /// One sweep of [`release_idle_destinations`]: whether it released anything.
    pub fn release_idle(&self, idle: Duration) -> bool {
        let now = Instant::now();
        let mut released = Vec::new();
        let mut logicals = self.logicals();
        logicals.retain(|name, (logical, last_used)| {
            // Another holder is a connection (or its cache of the last authority).
            let keep = Arc::strong_count(logical) > 1 || now < *last_used + idle;
            if !keep {
                released.push(name.clone());
            }
            keep
        });
        memory::shrink_swept(&mut logicals);
        drop(logicals);
        let logicals_released = !released.is_empty();
        for name in released {
            self.request_metrics.forget_target(&name);
            self.metrics.forget_target(&name);
        }
        let pools_released = self.client.release_idle(idle);
        logicals_released || pools_released
    }

    fn logicals(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<LogicalTarget>, Instant)>> {
        self.logicals.lock().unwrap_or_else(|e| e.into_inner())
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
        let now = Instant::now();
        let mut logicals = self.logicals();
        let (logical, last_used) = logicals.entry(name).or_insert_with_key(|name| {
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

    const IDLE: Duration = Duration::from_secs(30);
    const WEB: &str = "web.default.svc.cluster.local:80";

    fn targets() -> (Targets, prometheus_client::registry::Registry) {
        let target = Target {
            name: WEB.into(),
            ..Default::default()
        };
        let source = FixedDestinations::new(vec![(vec!["web:80".into()], target)]);
        let mut registry = prometheus_client::registry::Registry::default();
        let targets = Targets::new(
            Destinations::new(Arc::new(source)),
            Arc::new(HttpEndpointClient::new(Duration::from_secs(1))),
            LogicalMetrics::register(&mut registry),
            ProxyMetrics::register(&mut registry),
        );
        (targets, registry)
    }

    fn logical(upstream: Upstream) -> Arc<LogicalTarget> {
        match upstream {
            Upstream::Logical(target) => target,
            Upstream::Passthrough { .. } => panic!("web:80 is meshed"),
        }
    }

    fn exposition(registry: &prometheus_client::registry::Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[tokio::test(start_paused = true)]
    async fn one_logical_per_target_until_idle_and_unheld() {
        let (targets, registry) = targets();
        let first = logical(targets.by_authority("web").await.unwrap());
        let again = logical(targets.by_authority("web:80").await.unwrap());
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(&*first.name, WEB);
        drop(again);
        let now = Instant::now();
        let (direction, route) = (plexus_core::Direction::Outbound, Arc::from(""));
        let metrics = &targets.request_metrics;
        metrics.record_request(&mut None, direction, &first.name, &route, 200, now);

        // Held by a connection: kept however long it idles.
        tokio::time::advance(IDLE * 2).await;
        assert!(!targets.release_idle(IDLE), "nothing to release");
        let held = logical(targets.by_authority("web").await.unwrap());
        assert!(Arc::ptr_eq(&first, &held));
        drop((first, held));
        assert!(exposition(&registry).contains(WEB));

        // Unheld but used within the timeout: kept.
        let before = Arc::downgrade(&logical(targets.by_authority("web").await.unwrap()));
        tokio::time::advance(IDLE / 2).await;
        assert!(!targets.release_idle(IDLE));
        assert!(before.upgrade().is_some(), "used {:?} ago", IDLE / 2);

        // Unheld and idle: dropped with its series; the next lookup builds a new one.
        tokio::time::advance(IDLE).await;
        assert!(
            targets.release_idle(IDLE),
            "a release to give back to the system"
        );
        assert!(before.upgrade().is_none(), "the idle Logical was dropped");
        assert!(!exposition(&registry).contains(WEB), "its series went too");
        let _after = logical(targets.by_authority("web").await.unwrap());
    }
}
