//! The gRPC channel to the controller (Identity and Destination APIs): TLS
//! 1.3 whose server must be the controller's SPIFFE ID.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use plexus_core::KeepAlive;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A lazily connecting channel to `addr` (`host:port`) over `config`'s TLS.
/// The TLS server name is the host; the certificate check ignores it and
/// compares the SPIFFE ID instead (see `plexus_identity::tls::client_config`).
pub(crate) fn channel(
    addr: &str,
    config: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    let endpoint = crate::control::pinged(endpoint, KeepAlive::CONTROL_PLANE);
    let connector = tower::service_fn(move |uri: http::Uri| {
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        async move {
            let invalid =
                |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name =
                ServerName::try_from(host).map_err(|_| invalid("host is not a DNS name or IP"))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
