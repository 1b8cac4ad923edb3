//! Running real `plexus-proxy` processes for the bench: the release build,
//! the static destinations file that points them at the upstream, free
//! loopback ports, and readiness through the admin server.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use plexus_api::v1::{Backend, BackendTable, Endpoint, RouteTable, Target};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use super::load::BENCH_AUTHORITY;
use crate::workspace::{Workspace, cargo};

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const READY_POLL: Duration = Duration::from_millis(25);
const BENCH_SERVICE: &str = "bench.default.svc.cluster.local:80";
const BENCH_BACKEND: &str = "bench";

/// Builds the proxy with the release profile and returns its path.
pub fn build_release(workspace: &Workspace) -> Result<PathBuf> {
    eprintln!("bench: building plexus-proxy (release)");
    let status = cargo()
        .args(["build", "--release", "-p", "plexus-proxy"])
        .current_dir(&workspace.root)
        // Keep stdout for the report (`--json` must print nothing else there).
        .stdout(Stdio::null())
        .status()
        .context("running `cargo build --release -p plexus-proxy`")?;
    if !status.success() {
        bail!("`cargo build --release -p plexus-proxy` failed ({status})");
    }
    let binary = workspace.target_dir.join("release").join("plexus-proxy");
    if !binary.is_file() {
        bail!(
            "the build succeeded but {} does not exist",
            binary.display()
        );
    }
    Ok(binary)
}

/// What a proxy does in a scenario.
#[derive(Clone, Copy, Debug)]
pub enum ProxyRole {
    /// Outbound: routes `bench:80` to one endpoint (the upstream, or a server
    /// proxy's inbound listener when `meshed`).
    Client { endpoint: SocketAddr, meshed: bool },
    /// Inbound: forwards to the app (the upstream), as a server pod's proxy does.
    Server { app: SocketAddr },
}

pub struct ProxyProcess {
    child: Child,
    pub pid: u32,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    log: PathBuf,
}

impl ProxyProcess {
    /// Starts a proxy (logs into `workdir/<name>.log`) and waits until `/ready`.
    pub async fn spawn(
        binary: &Path,
        role: ProxyRole,
        worker_threads: Option<usize>,
        workdir: &Path,
        name: &str,
    ) -> Result<Self> {
        let outbound = free_loopback_port()?;
        let inbound = free_loopback_port()?;
        let admin = free_loopback_port()?;
        let log = workdir.join(format!("{name}.log"));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;

        let mut command = Command::new(binary);
        // Only what this scenario sets: a PLEXUS_* of the caller's shell must not leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PLEXUS_") {
                command.env_remove(key);
            }
        }
        command
            .env("PLEXUS_OUTBOUND_ADDR", outbound.to_string())
            .env("PLEXUS_INBOUND_ADDR", inbound.to_string())
            .env("PLEXUS_ADMIN_ADDR", admin.to_string())
            .env("PLEXUS_LOG", "warn");
        if let Some(threads) = worker_threads {
            command.env("PLEXUS_WORKER_THREADS", threads.to_string());
        }
        match role {
            ProxyRole::Client { endpoint, meshed } => {
                let path = workdir.join(format!("{name}.yaml"));
                let yaml = serde_yaml::to_string(&static_config(endpoint, meshed))
                    .context("writing the bench destinations as YAML")?;
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                command.env("PLEXUS_STATIC_CONFIG", &path);
            }
            ProxyRole::Server { app } => {
                command.env("PLEXUS_INBOUND_APP_ADDR", app.to_string());
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("sharing the proxy log file")?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the proxy exited at once")?;
        let mut proxy = Self {
            child,
            pid,
            outbound,
            inbound,
            log,
        };
        proxy.wait_ready(admin, name).await?;
        Ok(proxy)
    }

    async fn wait_ready(&mut self, admin: SocketAddr, name: &str) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .try_wait()
                .context("checking the proxy process")?
            {
                bail!(
                    "proxy {name} exited ({status}) before it was ready; its log:\n{}",
                    self.log_tail()
                );
            }
            match timeout(READY_POLL * 4, get_status(admin, "/ready")).await {
                Ok(Ok(StatusCode::OK)) => return Ok(()),
                Ok(Ok(status)) => last = format!("GET /ready answered {status}"),
                Ok(Err(error)) => last = format!("GET /ready: {error:#}"),
                Err(_) => last = "GET /ready: no answer".into(),
            }
            sleep(READY_POLL).await;
        }
        bail!(
            "proxy {name} not ready within {READY_TIMEOUT:?} ({last}); its log:\n{}",
            self.log_tail()
        )
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await.context("stopping a proxy")
    }
}

/// The static destinations file (`PLEXUS_STATIC_CONFIG`, as the proxy's
/// `static_config` module reads it): `bench:80` goes to one endpoint.
#[derive(Serialize)]
struct StaticConfig {
    destinations: Vec<StaticDestination>,
}

#[derive(Serialize)]
struct StaticDestination {
    aliases: Vec<String>,
    target: Target,
}

fn static_config(endpoint: SocketAddr, meshed: bool) -> StaticConfig {
    let backend = Backend {
        name: BENCH_SERVICE.into(),
        endpoints: vec![Endpoint {
            address: endpoint.to_string(),
            ready: true,
            meshed,
            ..Endpoint::default()
        }],
        ..Backend::default()
    };
    StaticConfig {
        destinations: vec![StaticDestination {
            aliases: vec![BENCH_SERVICE.into(), BENCH_AUTHORITY.into()],
            target: Target {
                name: BENCH_SERVICE.into(),
                routes: Some(RouteTable {
                    default_backend: BENCH_BACKEND.into(),
                    ..RouteTable::default()
                }),
                backends: Some(BackendTable {
                    backends: HashMap::from([(BENCH_BACKEND.into(), backend)]),
                }),
                ..Target::default()
            },
        }],
    }
}

/// A loopback port free right now (bound, read, released).
fn free_loopback_port() -> Result<SocketAddr> {
    let listener = StdTcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    listener.local_addr().context("reading a bound port")
}

/// `GET path` on the admin server, over a fresh HTTP/1.1 connection.
async fn get_status(addr: SocketAddr, path: &str) -> Result<StatusCode> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    Ok(sender.send_request(request).await?.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_config_routes_the_bench_name_to_the_endpoint() {
        let endpoint: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let yaml = serde_yaml::to_string(&static_config(endpoint, true)).unwrap();
        let file: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let entry = &file["destinations"][0];
        assert_eq!(entry["aliases"][1].as_str(), Some(BENCH_AUTHORITY));
        let target = &entry["target"];
        assert_eq!(
            target["routes"]["default_backend"].as_str(),
            Some(BENCH_BACKEND)
        );
        let endpoint = &target["backends"]["backends"][BENCH_BACKEND]["endpoints"][0];
        assert_eq!(endpoint["address"].as_str(), Some("127.0.0.1:4321"));
        assert_eq!(endpoint["meshed"].as_bool(), Some(true));
        assert_eq!(endpoint["ready"].as_bool(), Some(true));

        // The proxy reads the target in the proto's shape: it must come back whole.
        let target: Target = serde_yaml::from_value(target.clone()).unwrap();
        assert_eq!(
            target,
            static_config("127.0.0.1:4321".parse().unwrap(), true).destinations[0].target
        );
    }

    #[test]
    fn free_ports_are_loopback_and_nonzero() {
        let addr = free_loopback_port().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0);
    }
}
