//! nginx terminating TLS 1.3 with client certificates, as the yardstick for
//! the cost of a new mTLS connection: the system's nginx, a certificate
//! authority made here with rcgen (ECDSA P-256, like the mesh's), session
//! tickets and cache off so every handshake is a full one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use plexus_identity::tls::certified_key;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::ClientConfig;
use rustls::pki_types::{PrivatePkcs8KeyDer, ServerName};
use tokio::process::Command;
use tokio::time::{Instant, sleep};
use tokio_rustls::TlsConnector;

use super::handshake::{one_connection, web_client};
use super::proxy::free_loopback_port;
use crate::process::Processes;

const SERVER_NAME: &str = "localhost";
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const READY_POLL: Duration = Duration::from_millis(50);

/// A running nginx and a client configuration it accepts.
pub struct Nginx {
    pub addr: SocketAddr,
    pub client: ClientConfig,
    pub name: ServerName<'static>,
}

/// Where the nginx binary is: on PATH or in /usr/sbin (Debian's place, not
/// always on a user's PATH).
fn binary() -> Option<PathBuf> {
    super::on_path("nginx").or_else(|| {
        let debian = PathBuf::from("/usr/sbin/nginx");
        debian.is_file().then_some(debian)
    })
}

/// Starts nginx in `dir` (its config, certificates and logs) and waits until
/// it completes a handshake.
pub async fn start(dir: &Path, processes: &mut Processes) -> Result<Nginx> {
    let Some(binary) = binary() else {
        bail!("nginx is not installed (e.g. `apt-get install nginx-light`)");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let addr = free_loopback_port()?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };

    let ca_key = KeyPair::generate().context("making the nginx CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("making the nginx CA")?;
    let server_key = KeyPair::generate().context("making the nginx key")?;
    let server = CertificateParams::new(vec![SERVER_NAME.to_owned()])?
        .signed_by(&server_key, &ca)
        .context("certifying nginx")?;
    let client_key = KeyPair::generate().context("making the nginx client's key")?;
    let mut client_params = CertificateParams::new(vec!["bench-client".to_owned()])?;
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params
        .signed_by(&client_key, &ca)
        .context("certifying the nginx client")?;

    write("ca.crt", &ca.pem())?;
    write("server.crt", &server.pem())?;
    write("server.key", &server_key.serialize_pem())?;
    write("nginx.conf", &config(dir, addr))?;

    let key = PrivatePkcs8KeyDer::from(client_key.serialize_der());
    let client_key = certified_key(&key, client.der().clone(), [])?;
    let nginx = Nginx {
        addr,
        client: web_client(&ca.pem(), client_key)?,
        name: ServerName::try_from(SERVER_NAME).context("a TLS name")?,
    };

    let mut command = Command::new(&binary);
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"));
    processes.spawn("nginx", command)?;
    wait_handshake(&nginx, processes).await?;
    Ok(nginx)
}

/// One process (no master), in the foreground, so the process guard that
/// started it is what stops it.
fn config(dir: &Path, addr: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    server {{
        listen {addr} ssl http2;
        ssl_protocols TLSv1.3;
        ssl_certificate {dir}/server.crt;
        ssl_certificate_key {dir}/server.key;
        ssl_client_certificate {dir}/ca.crt;
        ssl_verify_client on;
        ssl_session_tickets off;
        ssl_session_cache off;
        location / {{ return 200 \"ok\\n\"; }}
    }}
}}
"
    )
}

async fn wait_handshake(nginx: &Nginx, processes: &mut Processes) -> Result<()> {
    let connector = TlsConnector::from(Arc::new(nginx.client.clone()));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        processes.check_alive()?;
        match one_connection(&connector, &nginx.name, nginx.addr).await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(error.context(format!("nginx not ready within {READY_TIMEOUT:?}")));
            }
            Err(_) => sleep(READY_POLL).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_forces_full_tls13_handshakes_with_client_certificates() {
        let text = config(Path::new("/tmp/n"), "127.0.0.1:4443".parse().unwrap());
        for line in [
            "listen 127.0.0.1:4443 ssl http2;",
            "ssl_protocols TLSv1.3;",
            "ssl_verify_client on;",
            "ssl_session_tickets off;",
            "ssl_session_cache off;",
            "master_process off;",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
