//! `plexus.v1.Destination`: streams of the index's views to proxies.
//!
//! Each stream holds a receiver of its target's shared `watch`; it sends a
//! snapshot first, then, whenever the view changes, only the parts whose
//! version moved since what this stream last sent. A slow stream simply
//! skips intermediate views (latest wins) and never holds up the others.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use plexus_api::v1::destination_server::{Destination, DestinationServer};
use plexus_api::v1::{DestinationUpdate, ServerPolicy, ServerRequest, WatchRequest};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::metrics::{self, ApiLabels, Metrics};
use plexus_discovery::index::{SharedIndex, TargetView};

type UpdateStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Destination service over a shared index.
#[derive(Clone, Debug)]
pub struct DestinationService {
    index: SharedIndex,
    metrics: Arc<Metrics>,
}

impl DestinationService {
    pub fn new(index: SharedIndex, metrics: Arc<Metrics>) -> Self {
        Self { index, metrics }
    }

    pub fn into_server(self) -> DestinationServer<Self> {
        DestinationServer::new(self)
    }
}

/// Counts an open stream while it lives.
struct OpenStream {
    metrics: Arc<Metrics>,
    api: ApiLabels,
}

impl OpenStream {
    fn new(metrics: Arc<Metrics>, api: ApiLabels) -> Self {
        metrics.watchers.get_or_create(&api).inc();
        Self { metrics, api }
    }

    fn pushed(&self) {
        self.metrics.pushes.get_or_create(&self.api).inc();
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.metrics.watchers.get_or_create(&self.api).dec();
    }
}

struct TargetStream {
    rx: watch::Receiver<Arc<TargetView>>,
    last: Option<Arc<TargetView>>,
    open: OpenStream,
    /// As the proxy named it, and the proxy: for the push spans.
    target: String,
    proxy: String,
}

/// A span per push: to whom, whether a snapshot or a delta, which parts.
fn traced_push(target: &str, proxy: &str, update: &DestinationUpdate) {
    let (kind, parts, endpoints) = match &update.target {
        _ if update.not_meshed => ("not_meshed", String::new(), 0),
        None => ("empty", String::new(), 0),
        Some(t) => {
            let parts: Vec<&str> = [
                t.protocol.as_ref().map(|_| "protocol"),
                t.routes.as_ref().map(|_| "routes"),
                t.backends.as_ref().map(|_| "backends"),
            ]
            .into_iter()
            .flatten()
            .collect();
            let endpoints: usize = t
                .backends
                .iter()
                .flat_map(|table| table.backends.values())
                .map(|backend| backend.endpoints.len())
                .sum();
            let kind = if update.snapshot { "snapshot" } else { "delta" };
            (kind, parts.join(","), endpoints)
        }
    };
    let _span = tracing::info_span!(
        "plexus.destination.push",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "plexus.v1.Destination",
        rpc.method = "Watch",
        plexus.target = %target,
        plexus.proxy_id = %proxy,
        plexus.push.snapshot = update.snapshot,
        plexus.push.kind = kind,
        plexus.push.parts = %parts,
        plexus.push.endpoints = endpoints as i64,
    )
    .entered();
}

struct ServerStream {
    rx: watch::Receiver<Arc<ServerPolicy>>,
    started: bool,
    open: OpenStream,
}

#[tonic::async_trait]
impl Destination for DestinationService {
    type WatchStream = UpdateStream<DestinationUpdate>;
    type WatchServerStream = UpdateStream<ServerPolicy>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        let rx = self
            .index
            .lock()
            .watch_target(&request.target, &request.context_namespace)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::debug!(target = %request.target, proxy = %request.proxy_id, "watch");
        let state = TargetStream {
            rx,
            last: None,
            open: OpenStream::new(self.metrics.clone(), metrics::DESTINATION),
            target: request.target,
            proxy: request.proxy_id,
        };
        let stream = futures_util::stream::unfold(state, |mut s| async move {
            loop {
                if s.last.is_some() && s.rx.changed().await.is_err() {
                    return None;
                }
                let view = s.rx.borrow_and_update().clone();
                if let Some(update) = view.update_since(s.last.as_deref()) {
                    traced_push(&s.target, &s.proxy, &update);
                    if s.last.is_some() {
                        s.open
                            .metrics
                            .push_latency
                            .observe(view.changed_at.elapsed().as_secs_f64());
                    }
                    s.open.pushed();
                    s.last = Some(view);
                    return Some((Ok(update), s));
                }
                s.last = Some(view);
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn watch_server(
        &self,
        request: Request<ServerRequest>,
    ) -> Result<Response<Self::WatchServerStream>, Status> {
        let request = request.into_inner();
        if request.namespace.is_empty() || request.pod.is_empty() {
            return Err(Status::invalid_argument("namespace and pod are required"));
        }
        let rx = self
            .index
            .lock()
            .watch_server(&request.namespace, &request.pod);
        let state = ServerStream {
            rx,
            started: false,
            open: OpenStream::new(self.metrics.clone(), metrics::SERVER),
        };
        let stream = futures_util::stream::unfold(state, |mut s| async move {
            if s.started && s.rx.changed().await.is_err() {
                return None;
            }
            s.started = true;
            let policy = (**s.rx.borrow_and_update()).clone();
            s.open.pushed();
            Some((Ok(policy), s))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
