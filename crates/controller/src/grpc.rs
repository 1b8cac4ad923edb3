//! The controller's gRPC port (:8090): the Destination API, and the Identity
//! API when the caller adds it, over plaintext or TLS.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;

/// How the gRPC port is served.
pub enum GrpcTransport {
    /// No TLS: tests, and a local controller without a CA (`--grpc-plaintext`).
    Plaintext,
    /// The controller's own certificate (see `identity::controller_server_config`).
    Tls(Arc<rustls::ServerConfig>),
}

/// How often an HTTP/2 connection on which the client sent nothing is
/// pinged, and how long the ACK may take before the connection is closed.
/// Proxies' watches are long-lived and mostly quiet, their HTTP/2 stack
/// answers pings by itself; a client that does not read (a dead proxy, a
/// PING or SETTINGS flood whose ACKs are never read, which h2 otherwise
/// answers for ever or stalls on) is closed within their sum.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `routes` on `listener` until the task is dropped or the listener fails.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    transport: GrpcTransport,
) -> Result<(), tonic::transport::Error> {
    let server = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_routes(routes);
    match transport {
        GrpcTransport::Plaintext => {
            server
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
        }
        GrpcTransport::Tls(config) => {
            server
                .serve_with_incoming(crate::identity::tls_incoming(listener, config))
                .await
        }
    }
}
