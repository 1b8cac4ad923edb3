//! The accept step of both directions: take connections until draining
//! starts, count each as open while it is served, turn Nagle off.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use plexus_core::Direction;
use tokio::net::{TcpListener, TcpStream};

use crate::drain;
use crate::metrics::ProxyMetrics;

/// Accepts on `listener` until the drain starts, serving each connection in
/// its own task.
pub async fn accept_until_drained<Serve, Serving>(
    listener: TcpListener,
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
            accepted = listener.accept() => match accepted {
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
        let open = metrics.open_connection(direction);
        // Nagle would delay small writes (response heads) for no gain.
        let _ = stream.set_nodelay(true);
        let serving = serve(stream, peer, drain.clone());
        tokio::spawn(async move {
            let _open = open;
            serving.await;
        });
    }
}
