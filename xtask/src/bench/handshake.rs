//! What a NEW mTLS connection costs: N sequential full TLS 1.3 handshakes (no
//! resumption, a client certificate on both sides) against the server proxy's
//! inbound listener, and the same against nginx terminating TLS 1.3, timed from
//! the TCP connect to the server's first HTTP/2 bytes.
//!
//! The proxies pool their connections to each other, so load through the pair
//! never shows this cost; the bench opens the connections itself. Its client
//! certificate is issued by the controller's CA (read from `--ca-dir`) for the
//! bench client's SPIFFE ID, exactly as Certify would issue it, so the server
//! proxy verifies a real mesh client.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use plexus_identity::tls::{
    ALPN_H2, certified_key, client_config, provider, trust_anchors_from_pem,
};
use plexus_identity::{Ca, CaMaterial, CertificateRequest, SpiffeId, Validity};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;

/// One connection (connect, handshake, first bytes) gives up after this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole series gives up after this, whatever its count.
const SERIES_TIMEOUT: Duration = Duration::from_secs(60);
/// The HTTP/2 client preface and an empty SETTINGS frame: what makes either
/// server answer with its own SETTINGS once its side of the handshake is done
/// (the client certificate verified).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
const CERT_LIFETIME: Duration = Duration::from_secs(3600);

/// How long new connections took, in µs.
#[derive(Clone, Debug, Serialize)]
pub struct HandshakeTimes {
    pub count: usize,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl HandshakeTimes {
    fn of(mut samples: Vec<Duration>) -> Result<Self> {
        ensure!(!samples.is_empty(), "no handshake was timed");
        samples.sort();
        let us = |d: &Duration| d.as_secs_f64() * 1e6;
        let at = |q: f64| us(&samples[((samples.len() - 1) as f64 * q).round() as usize]);
        Ok(Self {
            count: samples.len(),
            mean_us: samples.iter().map(us).sum::<f64>() / samples.len() as f64,
            p50_us: at(0.50),
            p99_us: at(0.99),
        })
    }
}

/// A mesh client of the bench: its certificate from the controller's CA in
/// `ca_dir` for `client`, expecting the server proxy to prove `server`.
pub fn mesh_client(
    ca_dir: &Path,
    client: &str,
    server: &str,
) -> Result<(ClientConfig, ServerName<'static>)> {
    let read = |name: &str| {
        let path = ca_dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let ca = Ca::from_material(&CaMaterial {
        certificate_pem: read("tls.crt")?,
        key_pem: read("tls.key")?,
        trust_anchor_pem: read("ca.crt")?,
    })
    .context("loading the controller's CA")?;
    let client: SpiffeId = client.parse().context("the bench client's SPIFFE ID")?;
    let server: SpiffeId = server.parse().context("the bench server's SPIFFE ID")?;
    let request = CertificateRequest::new(&client).context("making the bench client's key")?;
    let issued = ca
        .certify(&request.csr, &client, Validity::starting_now(CERT_LIFETIME))
        .context("certifying the bench client")?;
    let key = certified_key(&request.key, issued.leaf, issued.chain)?;
    let roots = trust_anchors_from_pem(ca.trust_anchor_pem().as_bytes())?;
    let name = plexus_identity::tls::mesh_server_name(&server)
        .context("the server identity does not fit a TLS name")?;
    let mut config = client_config(roots, server, Some(Arc::new(OneCertificate(key))))?;
    config.resumption = Resumption::disabled();
    Ok((config, name))
}

/// A client of nginx: trusts the CA `ca_pem`, presents a certificate from it.
pub fn web_client(ca_pem: &str, client_key: Arc<CertifiedKey>) -> Result<ClientConfig> {
    let roots = trust_anchors_from_pem(ca_pem.as_bytes())?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("a TLS 1.3 client configuration")?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(OneCertificate(client_key)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// `count` new connections to `addr`, one after the other.
pub async fn time_handshakes(
    config: ClientConfig,
    name: ServerName<'static>,
    addr: SocketAddr,
    count: usize,
) -> Result<HandshakeTimes> {
    let connector = TlsConnector::from(Arc::new(config));
    let deadline = Instant::now() + SERIES_TIMEOUT;
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        if Instant::now() >= deadline {
            bail!(
                "only {} of {count} handshakes with {addr} within {SERIES_TIMEOUT:?}",
                samples.len()
            );
        }
        samples.push(one_connection(&connector, &name, addr).await?);
    }
    HandshakeTimes::of(samples)
}

/// Connect, handshake, send the HTTP/2 preface, read the server's first bytes.
pub async fn one_connection(
    connector: &TlsConnector,
    name: &ServerName<'static>,
    addr: SocketAddr,
) -> Result<Duration> {
    let started = Instant::now();
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.context("connecting")?;
        tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
        let mut tls = connector
            .connect(name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        tls.write_all(H2_PREFACE)
            .await
            .context("sending the HTTP/2 preface")?;
        let mut first = [0u8; 9];
        let read = tls
            .read(&mut first)
            .await
            .context("reading the server's SETTINGS")?;
        ensure!(
            read > 0,
            "the server closed the connection after the handshake"
        );
        anyhow::Ok(())
    };
    timeout(CONNECTION_TIMEOUT, exchange)
        .await
        .with_context(|| {
            format!("a new connection to {addr}: no answer in {CONNECTION_TIMEOUT:?}")
        })?
        .with_context(|| format!("a new connection to {addr}"))?;
    Ok(started.elapsed())
}

/// A client with one certificate, offered whatever the server asks.
#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for OneCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_summarised_in_microseconds() {
        let samples = (1..=100).map(Duration::from_micros).collect();
        let times = HandshakeTimes::of(samples).unwrap();
        assert_eq!(times.count, 100);
        assert!((times.mean_us - 50.5).abs() < 1e-6, "{times:?}");
        assert!((times.p50_us - 51.0).abs() < 1e-6, "{times:?}");
        assert!((times.p99_us - 99.0).abs() < 1e-6, "{times:?}");
        assert!(HandshakeTimes::of(Vec::new()).is_err());
    }
}
