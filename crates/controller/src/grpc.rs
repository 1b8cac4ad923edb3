//! The controller's gRPC port (:8090): the Destination API, and the Identity
//! API when the caller adds it, over plaintext or TLS.

use std::sync::Arc;

use plexus_core::KeepAlive;
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

/// Serves `routes` on `listener` until the task is dropped or the listener
/// fails. Every connection is pinged per `keep_alive`
/// ([`KeepAlive::CONTROL_PLANE`] outside tests): proxies' HTTP/2 stacks answer
/// by themselves, while a client that does not read (a dead proxy, a PING or
/// SETTINGS flood whose ACKs are never read, which h2 otherwise answers for
/// ever or stalls on) is closed within [`KeepAlive::bound`].
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    transport: GrpcTransport,
    keep_alive: KeepAlive,
) -> Result<(), tonic::transport::Error> {
    let server = Server::builder()
        .http2_keepalive_interval(Some(keep_alive.interval))
        .http2_keepalive_timeout(Some(keep_alive.timeout))
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
