//! The accept step of both directions: take connections until draining
//! starts, count each as open while it is served, turn Nagle off, and shed
//! what is beyond the listener's cap.
//!
//! At the cap a new connection is accepted and closed at once, counted in
//! `plexus_proxy_connections_shed_total` (Envoy's global connection limit
//! does the same). Not accepting instead would leave clients waiting in
//! the kernel's backlog, past their timeouts, and then on connections the
//! proxy serves late; a close tells them at once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plexus_core::Direction;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::drain;
use crate::metrics::ProxyMetrics;

/// A listener and the connections it may serve at once (a permit each).
pub struct Listener {
    tcp: TcpListener,
    capacity: Arc<Semaphore>,
}

impl Listener {
    pub fn new(tcp: TcpListener, max_connections: usize) -> Self {
        let permits = max_connections.min(Semaphore::MAX_PERMITS);
        Self {
            tcp,
            capacity: Arc::new(Semaphore::new(permits)),
        }
    }
}

/// Accepts on `listener` until the drain starts, serving each connection in
/// its own task.
pub async fn accept_until_drained<Serve, Serving>(
    listener: Listener,
    direction: Direction,
    metrics: ProxyMetrics,
    mut drain: drain::Watch,
    serve: Serve,
) where
    Serve: Fn(TcpStream, SocketAddr, drain::Watch) -> Serving,
    Serving: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!(error = %e, direction = direction.as_str(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = drain.draining() => return,
        };
        let Ok(permit) = listener.capacity.clone().try_acquire_owned() else {
            metrics.shed_connection(direction);
            tracing::debug!(%peer, direction = direction.as_str(), "at the connection cap: shed");
            continue;
        };
        let open = metrics.open_connection(direction);
        // Nagle would delay small writes (response heads) for no gain.
        let _ = stream.set_nodelay(true);
        let serving = serve(stream, peer, drain.clone());
        tokio::spawn(async move {
            let _held = (open, permit);
            serving.await;
        });
    }
}
