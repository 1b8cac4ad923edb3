//! Plexus traces: an OTLP trace receiver (OTLP/gRPC and OTLP/HTTP protobuf
//! listeners) that assembles spans into finished traces, and the waterfall
//! rendering of a trace.
//!
//! It is what `plexusctl traces` prints from, what `cargo xtask demo` shows, and
//! what tests of other crates use as their collector:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use plexus_traces::Receiver;
//! let mut receiver = Receiver::bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()).await?;
//! let endpoint = receiver.grpc_endpoint(); // give this to an OTLP exporter
//! # let _ = endpoint;
//! while let Some(trace) = receiver.next_trace().await {
//!     println!("{}", plexus_traces::render_waterfall(&trace, 100));
//! }
//! # Ok(()) }
//! ```
//!
//! It knows OTLP and nothing of Plexus's own crates: it must not depend on the
//! proxy, the controller or plexusctl, so all of them (and their tests) can use it.

mod assembly;
mod grpc;
mod http;
mod model;
mod waterfall;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use assembly::{AssemblyConfig, Evictions};
pub use model::{AttributeValue, Span, SpanKind, Status, StatusCode, Trace};
pub use waterfall::render_waterfall;

/// A running receiver. Dropping it stops the listeners.
#[derive(Debug)]
pub struct Receiver {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    finished: mpsc::Receiver<Trace>,
    ingest: Arc<Ingest>,
    _tasks: JoinSet<()>,
}

/// Counts since the receiver started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub spans_received: u64,
    /// Spans refused as malformed (reported to the sender as partial success).
    pub spans_rejected: u64,
    /// Pending traces dropped because of the memory caps.
    pub evicted: Evictions,
}

/// Finished traces waiting for the consumer; the assembly caps bound the rest.
const FINISHED_QUEUE: usize = 1024;

impl Receiver {
    /// Binds both listeners (port 0 picks a free port) with the default
    /// [`AssemblyConfig`].
    pub async fn bind(grpc_addr: SocketAddr, http_addr: SocketAddr) -> io::Result<Receiver> {
        Self::bind_with(grpc_addr, http_addr, AssemblyConfig::default()).await
    }

    pub async fn bind_with(
        grpc_addr: SocketAddr,
        http_addr: SocketAddr,
        config: AssemblyConfig,
    ) -> io::Result<Receiver> {
        let grpc_listener = bind(grpc_addr, "OTLP/gRPC").await?;
        let http_listener = bind(http_addr, "OTLP/HTTP").await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;

        let tick = (config.quiet_period.min(config.root_settle) / 4)
            .clamp(Duration::from_millis(5), Duration::from_millis(100));
        let ingest = Arc::new(Ingest {
            assembly: Mutex::new(assembly::Assembly::new(config)),
            spans_received: AtomicU64::new(0),
            spans_rejected: AtomicU64::new(0),
        });
        let (tx, finished) = mpsc::channel(FINISHED_QUEUE);
        let mut tasks = JoinSet::new();
        tasks.spawn(grpc::serve(grpc_listener, ingest.clone()));
        tasks.spawn(http::serve(http_listener, ingest.clone()));
        tasks.spawn(emit_finished(ingest.clone(), tx, tick));
        Ok(Receiver {
            grpc_addr,
            http_addr,
            finished,
            ingest,
            _tasks: tasks,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The URL an OTLP/gRPC exporter is given, e.g. `http://127.0.0.1:4317`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub fn http_traces_url(&self) -> String {
        format!("http://{}{}", self.http_addr, http::TRACES_PATH)
    }

    /// The next finished trace, in the order traces finish.
    pub async fn next_trace(&mut self) -> Option<Trace> {
        self.finished.recv().await
    }

    /// Every trace not yet returned, finished or not (for an orderly exit).
    pub fn take_pending(&mut self) -> Vec<Trace> {
        let mut traces = Vec::new();
        while let Ok(trace) = self.finished.try_recv() {
            traces.push(trace);
        }
        traces.extend(self.ingest.lock().take_all());
        traces
    }

    pub fn stats(&self) -> ReceiverStats {
        ReceiverStats {
            spans_received: self.ingest.spans_received.load(Ordering::Relaxed),
            spans_rejected: self.ingest.spans_rejected.load(Ordering::Relaxed),
            evicted: self.ingest.lock().evictions(),
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("binding the {what} listener on {addr}: {e}"),
        )
    })
}

/// What both listeners feed.
#[derive(Debug)]
struct Ingest {
    assembly: Mutex<assembly::Assembly>,
    spans_received: AtomicU64,
    spans_rejected: AtomicU64,
}

impl Ingest {
    fn lock(&self) -> std::sync::MutexGuard<'_, assembly::Assembly> {
        // The assembly holds no invariant a panicking holder could break halfway
        // that matters more than keeping the receiver up.
        self.assembly.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn export(&self, request: ExportTraceServiceRequest) -> ExportTraceServiceResponse {
        let (spans, rejected) = model::spans_from_otlp(request.resource_spans);
        self.spans_received
            .fetch_add((spans.len() + rejected.len()) as u64, Ordering::Relaxed);
        self.spans_rejected
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        self.lock().add(spans, Instant::now());
        ExportTraceServiceResponse {
            partial_success: rejected.first().map(|first| ExportTracePartialSuccess {
                rejected_spans: rejected.len() as i64,
                error_message: first.reason.clone(),
            }),
        }
    }
}

/// Moves finished traces to the consumer; waits (holding no lock) when the
/// consumer is slow, while the assembly's caps keep memory bounded.
async fn emit_finished(ingest: Arc<Ingest>, tx: mpsc::Sender<Trace>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let finished = ingest.lock().take_finished(Instant::now());
        for trace in finished {
            if tx.send(trace).await.is_err() {
                return;
            }
        }
    }
}
