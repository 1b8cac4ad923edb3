//! Tracing settings: where spans go, how many new traces are sampled, and who
//! this proxy is (the span resource). Read from the environment by `config`.

use std::time::Duration;

/// What the proxy's tracing needs to know, read once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, e.g. `http://otel-collector.observability:4317`.
    /// `None` disables tracing (and all of its per-request cost).
    pub endpoint: Option<String>,
    /// Share of *new* traces recorded, 0.0..=1.0. A trace continued from an
    /// incoming context follows the caller's sampled flag instead.
    pub sampling: f64,
    /// `service.name` of the spans: the workload.
    pub service_name: String,
    /// `k8s.namespace.name`, when known.
    pub namespace: Option<String>,
    /// `k8s.pod.name`, when known.
    pub pod_name: Option<String>,
    /// Finished spans waiting for export at most; more are dropped and counted.
    pub queue_size: usize,
    /// Spans per OTLP export request at most.
    pub max_batch_size: usize,
    /// How often queued spans are exported.
    pub export_interval: Duration,
    /// One export attempt gives up after this.
    pub export_timeout: Duration,
}

/// The default ratio for new traces. Tracing is opt-in (it is off until
/// `PLEXUS_OTLP_ENDPOINT` is set), so whoever turns it on expects to see
/// traces at once: Istio's 1 % default is the most asked "where are my
/// traces?" question, and Linkerd records every request its caller sampled.
/// Callers that sample upstream are followed whatever this says.
pub const DEFAULT_SAMPLING: f64 = 1.0;

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            endpoint: None,
            sampling: DEFAULT_SAMPLING,
            service_name: "plexus-proxy".to_owned(),
            namespace: None,
            pod_name: None,
            queue_size: 2048,
            max_batch_size: 512,
            export_interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(5),
        }
    }
}
