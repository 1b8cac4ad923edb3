//! The transport side's metrics: requests and their latency by direction,
//! target, route and status; open and shed connections by direction;
//! inbound requests refused by the rate limit.
//!
//! All in one `prometheus_client` registry, which the logical side also
//! registers into; `/metrics` encodes it. The `target` label is a meshed
//! target's name, whose series go when the target idles out
//! ([`ProxyMetrics::forget_target`]), or one word (`passthrough`,
//! `unknown`): never an address an application chose.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use plexus_core::Direction;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// The `direction` label: `plexus_core::Direction` encoded as its `as_str()`.
/// A local type because the label traits cannot be implemented on a foreign one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DirectionLabel(pub Direction);

impl EncodeLabelValue for DirectionLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0.as_str(), encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    direction: DirectionLabel,
    /// The target's name, or `passthrough`.
    target: Arc<str>,
    /// The route that matched (from the logical side); empty for passthrough.
    route: Arc<str>,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: DirectionLabel,
}

type LatencyFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct ProxyMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    /// Each target's label sets, so its series can go with it.
    by_target: Arc<Mutex<HashMap<Arc<str>, HashSet<RequestLabels>>>>,
    open_outbound: Gauge,
    open_inbound: Gauge,
    shed: Family<DirectionLabels, Counter>,
    /// Inbound requests answered 429 `rate-limited`.
    pub(crate) rate_limited: Counter,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl ProxyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        let open = Family::<DirectionLabels, Gauge>::default();
        registry.register(
            "plexus_proxy_requests",
            "HTTP requests served, by direction, target, route and status",
            requests.clone(),
        );
        registry.register(
            "plexus_proxy_request_duration_seconds",
            "Time from request received to response headers sent",
            latency.clone(),
        );
        registry.register(
            "plexus_proxy_open_connections",
            "Client connections currently open, by direction",
            open.clone(),
        );
        let shed = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "plexus_proxy_connections_shed",
            "Client connections closed on accept because the listener was at its cap, by direction",
            shed.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "plexus_proxy_inbound_rate_limited",
            "Inbound HTTP requests refused (429) by the workload's local rate limit",
            rate_limited.clone(),
        );
        let gauge = |direction| {
            open.get_or_create(&DirectionLabels {
                direction: DirectionLabel(direction),
            })
            .clone()
        };
        Self {
            open_outbound: gauge(Direction::Outbound),
            open_inbound: gauge(Direction::Inbound),
            requests,
            latency,
            shed,
            rate_limited,
            by_target: Arc::default(),
        }
    }

    /// Counts a request and its latency. `last` is the caller's cache of the
    /// series it recorded last: a connection's requests mostly share target,
    /// route and status, and finding a series in a family (hashing its labels
    /// under a lock) costs more than the recording itself.
    pub fn record_request(
        &self,
        last: &mut Option<RequestSeries>,
        direction: Direction,
        target: &Arc<str>,
        route: &Arc<str>,
        status: u16,
        started: Instant,
    ) {
        let series = match last {
            Some(series) if series.is(direction, target, route, status) => series,
            _ => last.insert(self.series(RequestLabels {
                direction: DirectionLabel(direction),
                target: target.clone(),
                route: route.clone(),
                status,
            })),
        };
        series.requests.inc();
        series.latency.observe(started.elapsed().as_secs_f64());
    }

    /// Found anew only when a connection's cached series does not fit, so
    /// the index costs one more lock on that path, never per request.
    fn series(&self, labels: RequestLabels) -> RequestSeries {
        self.by_target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(labels.target.clone())
            .or_default()
            .insert(labels.clone());
        RequestSeries {
            requests: self.requests.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
            labels,
        }
    }

    /// Removes every request series of `target` (it idled out): a proxy
    /// that talked to many targets over its life keeps only the live ones'.
    pub fn forget_target(&self, target: &str) {
        let labels = self
            .by_target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(target);
        for labels in labels.iter().flatten() {
            self.requests.remove(labels);
            self.latency.remove(labels);
        }
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn open_connection(&self, direction: Direction) -> OpenConnection {
        let gauge = match direction {
            Direction::Outbound => self.open_outbound.clone(),
            Direction::Inbound => self.open_inbound.clone(),
        };
        gauge.inc();
        OpenConnection(gauge)
    }

    /// Counts a connection closed at the listener's cap.
    pub fn shed_connection(&self, direction: Direction) {
        let labels = DirectionLabels {
            direction: DirectionLabel(direction),
        };
        self.shed.get_or_create(&labels).inc();
    }
}

/// The handles of one request series (see [`ProxyMetrics::record_request`]).
pub struct RequestSeries {
    labels: RequestLabels,
    requests: Counter,
    latency: Histogram,
}

impl RequestSeries {
    fn is(&self, direction: Direction, target: &str, route: &str, status: u16) -> bool {
        self.labels.direction.0 == direction
            && self.labels.status == status
            && *self.labels.target == *target
            && *self.labels.route == *route
    }
}

pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(metrics: &ProxyMetrics, target: &str, route: &str, status: u16) -> u64 {
        let labels = RequestLabels {
            direction: DirectionLabel(Direction::Outbound),
            target: Arc::from(target),
            route: Arc::from(route),
            status,
        };
        metrics.requests.get_or_create(&labels).get()
    }

    #[test]
    fn a_forgotten_target_loses_every_series_and_only_its_own() {
        let mut registry = Registry::default();
        let metrics = ProxyMetrics::register(&mut registry);
        let (web, api): (Arc<str>, Arc<str>) = (Arc::from("web"), Arc::from("api"));
        let route: Arc<str> = Arc::from("");
        for (target, status) in [(&web, 200), (&web, 503), (&api, 200)] {
            let now = Instant::now();
            metrics.record_request(&mut None, Direction::Outbound, target, &route, status, now);
        }
        metrics.forget_target("web");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains(r#"target="web""#), "{text}");
        assert!(text.contains(r#"target="api""#), "{text}");
        assert!(metrics.by_target.lock().unwrap().get("web").is_none());
    }

    #[test]
    fn a_cached_series_is_only_reused_for_the_same_labels() {
        let mut registry = Registry::default();
        let metrics = ProxyMetrics::register(&mut registry);
        let (web, api): (Arc<str>, Arc<str>) = (Arc::from("web"), Arc::from("api"));
        let route: Arc<str> = Arc::from("ns/r");
        let mut last = None;
        for (target, status) in [(&web, 200), (&web, 200), (&web, 503), (&api, 200)] {
            let now = Instant::now();
            metrics.record_request(&mut last, Direction::Outbound, target, &route, status, now);
        }
        // Equal labels in another allocation hit the cached series too.
        let web_again: Arc<str> = Arc::from("web");
        let now = Instant::now();
        metrics.record_request(&mut last, Direction::Outbound, &web_again, &route, 200, now);
        metrics.record_request(&mut last, Direction::Outbound, &web, &route, 200, now);
        assert_eq!(count(&metrics, "web", "ns/r", 200), 4);
        assert_eq!(count(&metrics, "web", "ns/r", 503), 1);
        assert_eq!(count(&metrics, "api", "ns/r", 200), 1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let web_ok = r#"{direction="outbound",target="web",route="ns/r",status="200"}"#;
        assert!(
            text.contains(&format!(
                "plexus_proxy_request_duration_seconds_count{web_ok} 4"
            )),
            "{text}"
        );
    }
}
