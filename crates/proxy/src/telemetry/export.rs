//! The span pipeline: SDK tracer provider → a gate that counts what the bounded
//! queue cannot take → the SDK's batch span processor (its own thread) → the
//! OTLP/gRPC exporter, wrapped to count what was exported or lost.
//!
//! The SDK's batch processor already never blocks the caller (a full queue
//! drops), but it keeps its drop count to itself. The gate admits a span only
//! while fewer than `queue_size` are between "ended" and "export finished",
//! so the processor's queue is never full and every drop is counted here.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::TelemetryConfig;

/// Span counters exposed on `/metrics`.
#[derive(Debug, Clone, Default)]
pub(super) struct SpanCounters {
    exported: Counter,
    dropped: Family<DropLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DropLabels {
    reason: DropReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DropReason {
    /// The export queue was full (the collector is slow, dead, or far).
    QueueFull,
    /// The collector refused the batch or could not be reached in time.
    ExportFailed,
}

impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let value = match self {
            DropReason::QueueFull => "queue_full",
            DropReason::ExportFailed => "export_failed",
        };
        EncodeLabelValue::encode(&value, encoder)
    }
}

impl SpanCounters {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let counters = SpanCounters::default();
        registry.register(
            "plexus_trace_spans_exported",
            "Spans delivered to the OTLP collector",
            counters.exported.clone(),
        );
        registry.register(
            "plexus_trace_spans_dropped",
            "Spans lost instead of slowing requests down, by reason (queue_full, export_failed)",
            counters.dropped.clone(),
        );
        // Both series exist from the start, so dashboards see zeros, not gaps.
        counters.dropped(DropReason::QueueFull);
        counters.dropped(DropReason::ExportFailed);
        counters
    }

    fn dropped(&self, reason: DropReason) -> Counter {
        self.dropped.get_or_create(&DropLabels { reason }).clone()
    }
}

/// Why the span pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("tracing must be started inside the tokio runtime (the OTLP client runs on it)")]
    NoRuntime,
    #[error("building the OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

pub(super) fn tracer_provider(
    endpoint: &str,
    config: &TelemetryConfig,
    counters: &SpanCounters,
) -> Result<SdkTracerProvider, TelemetryError> {
    // tonic's channel spawns its connection task on the current runtime.
    tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(config.export_timeout)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?;
    let queue_size = config.queue_size.max(1);
    let gate = Arc::new(QueueGate {
        in_flight: AtomicUsize::new(0),
        capacity: queue_size,
    });
    let batches = BatchSpanProcessor::new(
        CountingExporter {
            inner: exporter,
            gate: gate.clone(),
            exported: counters.exported.clone(),
            failed: counters.dropped(DropReason::ExportFailed),
        },
        BatchConfigBuilder::default()
            .with_max_queue_size(queue_size)
            .with_max_export_batch_size(config.max_batch_size.clamp(1, queue_size))
            .with_scheduled_delay(config.export_interval)
            .build(),
    );
    let mut resource = Resource::builder_empty().with_service_name(config.service_name.clone());
    if let Some(namespace) = &config.namespace {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            "k8s.namespace.name",
            namespace.clone(),
        ));
    }
    if let Some(pod) = &config.pod_name {
        resource =
            resource.with_attribute(opentelemetry::KeyValue::new("k8s.pod.name", pod.clone()));
    }
    Ok(SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling,
        ))))
        .with_span_processor(GatedProcessor {
            inner: batches,
            gate,
            queue_full: counters.dropped(DropReason::QueueFull),
        })
        .with_resource(resource.build())
        .build())
}

/// Spans between "ended" and "export finished".
#[derive(Debug)]
struct QueueGate {
    in_flight: AtomicUsize,
    capacity: usize,
}

impl QueueGate {
    fn try_admit(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        // Saturating: a batch the processor exported twice must not wrap the count.
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                Some(m.saturating_sub(n))
            });
    }
}

#[derive(Debug)]
struct GatedProcessor {
    inner: BatchSpanProcessor,
    gate: Arc<QueueGate>,
    queue_full: Counter,
}

impl SpanProcessor for GatedProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.gate.try_admit() {
            self.inner.on_end(span);
        } else {
            self.queue_full.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    gate: Arc<QueueGate>,
    exported: Counter,
    failed: Counter,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.gate.release(n);
        match &result {
            Ok(()) => self.exported.inc_by(n as u64),
            Err(_) => self.failed.inc_by(n as u64),
        };
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_admits_up_to_capacity_and_reopens_on_release() {
        let gate = QueueGate {
            in_flight: AtomicUsize::new(0),
            capacity: 2,
        };
        assert!(gate.try_admit());
        assert!(gate.try_admit());
        assert!(!gate.try_admit());
        gate.release(1);
        assert!(gate.try_admit());
        gate.release(10);
        assert_eq!(gate.in_flight.load(Ordering::Acquire), 0);
    }
}
