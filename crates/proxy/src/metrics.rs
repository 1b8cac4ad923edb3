//! The transport side's metrics: requests and their latency by direction,
//! target, route and status; open connections by direction.
//!
//! All in one `prometheus_client` registry, which the logical side also
//! registers into; `/metrics` encodes it.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    direction: Direction,
    /// The target's name, or the address for passthrough.
    target: Arc<str>,
    /// The route that matched (from the logical side); empty for passthrough.
    route: Arc<str>,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

type LatencyFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct ProxyMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    open_outbound: Gauge,
    open_inbound: Gauge,
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
        let gauge = |direction| open.get_or_create(&DirectionLabels { direction }).clone();
        Self {
            open_outbound: gauge(Direction::Outbound),
            open_inbound: gauge(Direction::Inbound),
            requests,
            latency,
        }
    }

    pub fn record_request(
        &self,
        direction: Direction,
        target: &Arc<str>,
        route: &Arc<str>,
        status: u16,
        started: Instant,
    ) {
        let labels = RequestLabels {
            direction,
            target: target.clone(),
            route: route.clone(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
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
}

pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
