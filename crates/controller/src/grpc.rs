//! The controller's gRPC port (:8090): the Destination API, and the Identity
//! API when the caller adds it, over plaintext or TLS.

use std::sync::Arc;

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

/// Serves `routes` on `listener` until the task is dropped or the listener fails.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    transport: GrpcTransport,
) -> Result<(), tonic::transport::Error> {
    let server = Server::builder().add_routes(routes);
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
