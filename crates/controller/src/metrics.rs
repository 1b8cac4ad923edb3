//! The controller's Prometheus metrics: open watchers, pushes, push latency
//! (from an index change to the message leaving for a watcher) and index sizes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use plexus_discovery::index::IndexSizes;

/// Which stream a metric is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// "destination" (Watch) or "server" (WatchServer).
    pub api: &'static str,
}

pub const DESTINATION: ApiLabels = ApiLabels { api: "destination" };
pub const SERVER: ApiLabels = ApiLabels { api: "server" };

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub watchers: Family<ApiLabels, Gauge>,
    pub pushes: Family<ApiLabels, Counter>,
    pub push_latency: Histogram,
    index_objects: Family<KindLabels, Gauge>,
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        let watchers = Family::<ApiLabels, Gauge>::default();
        let pushes = Family::<ApiLabels, Counter>::default();
        // 100 µs .. ~6.5 s
        let push_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 17));
        let index_objects = Family::<KindLabels, Gauge>::default();
        let mut registry = Registry::with_prefix("plexus_controller");
        registry.register("watchers", "Open Destination API streams", watchers.clone());
        registry.register("pushes", "Updates sent to watchers", pushes.clone());
        registry.register(
            "push_latency_seconds",
            "Time from an index change to the update leaving for a watcher",
            push_latency.clone(),
        );
        registry.register(
            "index_objects",
            "Objects held by the discovery index, and its shared watches",
            index_objects.clone(),
        );
        Self {
            watchers,
            pushes,
            push_latency,
            index_objects,
            registry,
        }
    }

    /// The text exposition, with index sizes taken now.
    pub fn encode(&self, sizes: &IndexSizes) -> Result<String, std::fmt::Error> {
        let gauges = [
            ("namespaces", sizes.namespaces),
            ("services", sizes.services),
            ("endpoint_slices", sizes.endpoint_slices),
            ("endpoints", sizes.endpoints),
            ("pods", sizes.pods),
            ("routes", sizes.routes),
            ("target_watches", sizes.target_watches),
            ("server_watches", sizes.server_watches),
        ];
        for (kind, n) in gauges {
            self.index_objects
                .get_or_create(&KindLabels { kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
