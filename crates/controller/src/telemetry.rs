//! The controller's logs and traces: one `tracing` subscriber that writes
//! logs to stderr and, when an OTLP endpoint is given, also exports the
//! controller's own spans (Destination pushes, certificate signing, feed
//! loads) over OTLP/gRPC through `tracing-opentelemetry`.
//!
//! Export never holds up the work it traces: ended spans go to the SDK's
//! batch processor (a bounded queue drained by its own thread; a full queue
//! drops), and a dead or stalled collector only costs that thread its export
//! timeout. Only the controller's own spans are exported (this crate's, and
//! those of the discovery feeds it runs, `plexus_discovery`), not those of the
//! libraries under it (hyper, h2, kube), whose volume would say nothing about the mesh.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// `service.name` of the controller's spans.
pub const SERVICE_NAME: &str = "plexus-controller";
/// Spans waiting for export at most; more are dropped, never waited for.
const QUEUE_SIZE: usize = 2048;
const MAX_BATCH: usize = 512;
/// The controller's spans are few: export them soon after they end.
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// One export attempt to a slow or silent collector gives up after this.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long shutdown waits for the last spans to be exported.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and as whom spans are exported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceSettings {
    /// OTLP/gRPC collector (`--otlp-endpoint`); `None`: logs only.
    pub endpoint: Option<String>,
    /// `k8s.namespace.name` (`PLEXUS_NAMESPACE` when set).
    pub namespace: Option<String>,
    /// `k8s.pod.name` (`PLEXUS_POD_NAME`, else `HOSTNAME`).
    pub pod_name: Option<String>,
}

impl TraceSettings {
    /// `endpoint` with the pod's namespace and name from the environment
    /// (the chart sets them through the downward API).
    pub fn from_env(endpoint: Option<String>) -> Self {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        TraceSettings {
            endpoint: endpoint.filter(|e| !e.is_empty()),
            namespace: var("PLEXUS_NAMESPACE"),
            pod_name: var("PLEXUS_POD_NAME").or_else(|| var("HOSTNAME")),
        }
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("tracing must start inside the tokio runtime (the OTLP client runs on it)")]
    NoRuntime,
    #[error("--otlp-endpoint {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("installing the tracing subscriber: {0}")]
    Subscriber(String),
}

/// The installed pipeline; [`Tracing::shutdown`] flushes what is queued.
#[derive(Debug)]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// Installs the global subscriber: logs filtered by `PLEXUS_LOG` (default
    /// `info`) to stderr, plus the controller's own spans to `settings.endpoint`.
    /// Must run inside the tokio runtime when an endpoint is set.
    pub fn install(settings: &TraceSettings) -> Result<Tracing, TelemetryError> {
        // stderr, tracing's default format: the proxy's logs are the same
        // (docs/architecture.md, "Logs").
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(
                EnvFilter::try_from_env("PLEXUS_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
            );
        let provider = match &settings.endpoint {
            Some(endpoint) => Some(tracer_provider(endpoint, settings)?),
            None => None,
        };
        let spans = provider.as_ref().map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(SERVICE_NAME))
                .with_filter(
                    Targets::new()
                        .with_target("plexus_controller", Level::INFO)
                        // the feed spans (`plexus.feed.file.load`, `plexus.feed.kubernetes.events`)
                        .with_target("plexus_discovery", Level::INFO),
                )
        });
        tracing_subscriber::registry()
            .with(logs)
            .with(spans)
            .try_init()
            .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
        Ok(Tracing { provider })
    }

    /// Exports the spans still queued, waiting at most [`FLUSH_TIMEOUT`].
    /// Blocks: call it outside the runtime's tasks, with the runtime alive.
    pub fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        if let Err(error) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            // The subscriber may be gone with the spans; stderr is certain.
            eprintln!("plexus-controller: flushing traces: {error}");
        }
    }
}

fn tracer_provider(
    endpoint: &str,
    settings: &TraceSettings,
) -> Result<SdkTracerProvider, TelemetryError> {
    // tonic's channel spawns its connection task on the current runtime.
    tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?;
    let batches = BatchSpanProcessor::new(
        exporter,
        BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE_SIZE)
            .with_max_export_batch_size(MAX_BATCH)
            .with_scheduled_delay(EXPORT_INTERVAL)
            .build(),
    );
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_resource(resource(settings))
        .build())
}

fn resource(settings: &TraceSettings) -> Resource {
    let mut resource = Resource::builder_empty().with_service_name(SERVICE_NAME);
    if let Some(namespace) = &settings.namespace {
        resource = resource.with_attribute(KeyValue::new("k8s.namespace.name", namespace.clone()));
    }
    if let Some(pod) = &settings.pod_name {
        resource = resource.with_attribute(KeyValue::new("k8s.pod.name", pod.clone()));
    }
    resource.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::Key;

    #[test]
    fn the_resource_names_the_controller_and_its_pod() {
        let settings = TraceSettings {
            endpoint: Some("http://127.0.0.1:4317".into()),
            namespace: Some("mesh".into()),
            pod_name: Some("plexus-controller-7d9f".into()),
        };
        let resource = resource(&settings);
        let get = |key: &'static str| {
            resource
                .get(&Key::from_static_str(key))
                .map(|v| v.to_string())
        };
        assert_eq!(get("service.name").as_deref(), Some(SERVICE_NAME));
        assert_eq!(get("k8s.namespace.name").as_deref(), Some("mesh"));
        assert_eq!(
            get("k8s.pod.name").as_deref(),
            Some("plexus-controller-7d9f")
        );

        let bare = super::resource(&TraceSettings::default());
        assert!(bare.get(&Key::from_static_str("k8s.pod.name")).is_none());
    }

    #[test]
    fn an_exporter_needs_the_runtime() {
        let settings = TraceSettings {
            endpoint: Some("http://127.0.0.1:4317".into()),
            ..TraceSettings::default()
        };
        assert!(matches!(
            tracer_provider("http://127.0.0.1:4317", &settings),
            Err(TelemetryError::NoRuntime)
        ));
    }
}
