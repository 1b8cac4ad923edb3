//! The proxy's distributed tracing: a span per proxied HTTP/gRPC request and
//! per retry attempt, W3C trace context carried to the next hop, spans
//! exported over OTLP/gRPC without ever slowing a request down.
//!
//! Used from the request path:
//!
//! ```ignore
//! let mut span = telemetry.start_request(Direction::Outbound, &mut parts);
//! span.set_route("web-route"); span.set_backend("web-v2");
//! for n in 1.. {
//!     let attempt = span.attempt(n, reason, &endpoint, &mut attempt_parts.headers);
//!     // … send; attempt.record_response(&response_parts) or attempt.record_error(&e)
//! }
//! span.record_response(&response_parts);
//! span.finish(); // or let the response body carry it (it is a `BodyGuard`)
//! ```
//!
//! With `PLEXUS_OTLP_ENDPOINT` unset, [`Telemetry`] is disabled: requests
//! pass with their headers untouched and nothing is allocated per request.

mod body;
mod config;
mod export;
mod propagation;
mod span;

use std::sync::Arc;
use std::time::Duration;

use http::request;
use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, TraceContextExt, TraceFlags, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, SdkTracer, SdkTracerProvider,
    ShouldSample,
};
use plexus_core::Direction;
use prometheus_client::registry::Registry;

pub use config::{DEFAULT_SAMPLING, TelemetryConfig};
pub use export::TelemetryError;
pub use span::{AttemptSpan, RequestSpan};

use propagation::{Format, Incoming};

/// The proxy's tracer: cheap to clone, disabled when no endpoint is set.
#[derive(Debug, Clone, Default)]
pub struct Telemetry(Option<Arc<Active>>);

#[derive(Debug)]
struct Active {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Decides B3 contexts that came without a sampling decision.
    ratio: Sampler,
}

impl Telemetry {
    /// Builds the span pipeline when `config.endpoint` is set and registers
    /// `plexus_trace_spans_exported_total` and
    /// `plexus_trace_spans_dropped_total{reason}` into `registry` (always, so
    /// dashboards see zeros rather than gaps). Must run inside the tokio runtime.
    pub fn new(config: &TelemetryConfig, registry: &mut Registry) -> Result<Self, TelemetryError> {
        let counters = export::SpanCounters::register(registry);
        let Some(endpoint) = &config.endpoint else {
            return Ok(Telemetry(None));
        };
        let provider = export::tracer_provider(endpoint, config, &counters)?;
        let tracer = provider.tracer("plexus-proxy");
        Ok(Telemetry(Some(Arc::new(Active {
            provider,
            tracer,
            ratio: Sampler::TraceIdRatioBased(config.sampling),
        }))))
    }

    /// Tracing off: every span is a no-op.
    pub fn disabled() -> Self {
        Telemetry(None)
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Starts the span of a request entering the proxy (a server span inbound,
    /// a client span outbound), continuing the trace in its headers (W3C, else
    /// B3) or starting one, and rewrites those headers so the next hop is this
    /// span's child. Disabled, it returns at once and leaves `parts` alone.
    pub fn start_request(&self, direction: Direction, parts: &mut request::Parts) -> RequestSpan {
        let Some(active) = &self.0 else {
            return RequestSpan::default();
        };
        let incoming = propagation::extract(&parts.headers);
        let (parent, b3) = active.parent_context(incoming, direction);
        RequestSpan::start(&active.tracer, direction, parent, b3, parts)
    }

    /// Exports what is queued and stops the exporter, waiting at most
    /// `timeout`. Blocking: call it from `spawn_blocking` or after the
    /// runtime's work is done.
    pub fn shutdown(&self, timeout: Duration) {
        if let Some(active) = &self.0 {
            // A dead collector at exit costs the spans in flight, nothing more.
            let _ = active.provider.shutdown_with_timeout(timeout);
        }
    }
}

impl Active {
    /// The parent to start from, and the B3 form to write back (if the
    /// context came as B3).
    fn parent_context(
        &self,
        incoming: Incoming,
        direction: Direction,
    ) -> (Context, Option<Format>) {
        let remote = |trace_id, span_id, sampled: bool| {
            let flags = if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            let context = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
            Context::new().with_remote_span_context(context)
        };
        let b3 = |format| (format != Format::W3c).then_some(format);
        match incoming {
            Incoming::None => (Context::new(), None),
            Incoming::Parent { context, format } => {
                (Context::new().with_remote_span_context(context), b3(format))
            }
            Incoming::Deferred {
                trace_id,
                span_id,
                format,
            } => {
                let kind = span::span_kind(direction);
                let decision = self
                    .ratio
                    .should_sample(None, trace_id, "", &kind, &[], &[])
                    .decision;
                let sampled = decision == SamplingDecision::RecordAndSample;
                (remote(trace_id, span_id, sampled), b3(format))
            }
            // The caller said "do not sample" without ids: an unsampled parent
            // with fresh ids carries that decision to the next hops.
            Incoming::DenyWithoutIds { format } => {
                let ids = RandomIdGenerator::default();
                (
                    remote(ids.new_trace_id(), ids.new_span_id(), false),
                    b3(format),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests;
