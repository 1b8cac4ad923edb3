//! Running real `plexus-proxy` processes for the bench: the release build,
//! the static destinations file that points them at the upstream, free
//! loopback ports, and readiness through the admin server.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use plexus_api::v1::{Backend, BackendTable, Endpoint, RouteTable, Target};
use serde::Serialize;
use tokio::process::Command;

use super::load::BENCH_AUTHORITY;
use crate::process::Processes;
use crate::ready::Probe;
use crate::workspace::{Workspace, cargo};

/// Bounds the wait for `/ready`, which with mTLS includes getting a certificate.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const BENCH_SERVICE: &str = "bench.default.svc.cluster.local:80";
const BENCH_BACKEND: &str = "bench";

/// Builds `packages` with the release profile and returns the directory of
/// their binaries.
pub fn build_release(workspace: &Workspace, packages: &[&str]) -> Result<PathBuf> {
    let mut args = vec!["build", "--release"];
    for package in packages {
        args.extend(["-p", package]);
    }
    let command_line = format!("cargo {}", args.join(" "));
    eprintln!("bench: {command_line}");
    let status = cargo()
        .args(&args)
        .current_dir(&workspace.root)
        // Keep stdout for the report (`--json` must print nothing else there).
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running `{command_line}`"))?;
    if !status.success() {
        bail!("`{command_line}` failed ({status})");
    }
    let dir = workspace.target_dir.join("release");
    for package in packages {
        let binary = dir.join(package);
        if !binary.is_file() {
            bail!(
                "the build succeeded but {} does not exist",
                binary.display()
            );
        }
    }
    Ok(dir)
}

/// What a proxy does in a scenario.
#[derive(Clone, Debug)]
pub enum ProxyRole {
    /// Outbound: routes `bench:80` to one endpoint (the upstream, or a server
    /// proxy's inbound listener when `meshed`), expecting the endpoint's proxy
    /// to prove `identity` when set (mTLS).
    Client {
        endpoint: SocketAddr,
        meshed: bool,
        identity: Option<String>,
    },
    /// Inbound: forwards to the app (the upstream), as a server pod's proxy does.
    Server { app: SocketAddr },
}

/// A proxy's own identity and where it gets its certificate (the
/// controller's Identity API, with a bootstrap token).
#[derive(Clone, Debug)]
pub struct ProxyIdentity {
    pub spiffe_id: String,
    pub token_file: PathBuf,
    pub trust_anchors: PathBuf,
    pub controller: SocketAddr,
}

/// The listeners of one proxy, chosen before it starts so that a feed can
/// name its inbound address.
#[derive(Clone, Copy, Debug)]
pub struct ProxyPorts {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

impl ProxyPorts {
    pub fn free() -> Result<Self> {
        Ok(Self {
            outbound: free_loopback_port()?,
            inbound: free_loopback_port()?,
            admin: free_loopback_port()?,
        })
    }
}

/// Everything a proxy process is started with.
pub struct ProxySpec<'a> {
    pub binary: &'a Path,
    pub role: ProxyRole,
    pub identity: Option<ProxyIdentity>,
    pub ports: ProxyPorts,
    pub worker_threads: Option<usize>,
    /// Trace every request and export there (`PLEXUS_OTLP_ENDPOINT`).
    pub otlp_endpoint: Option<&'a str>,
}

/// A started, ready proxy; the process itself belongs to the [`Processes`]
/// it was started in, which stops it.
pub struct ProxyProcess {
    pub pid: u32,
    pub ports: ProxyPorts,
}

impl ProxyProcess {
    /// Starts a proxy as `name` in `processes` (its static destinations file
    /// goes to `workdir/<name>.yaml`) and waits until `/ready`.
    pub async fn spawn(
        spec: ProxySpec<'_>,
        name: &str,
        workdir: &Path,
        processes: &mut Processes,
    ) -> Result<Self> {
        let ports = spec.ports;
        let mut command = Command::new(spec.binary);
        command
            .env("PLEXUS_OUTBOUND_ADDR", ports.outbound.to_string())
            .env("PLEXUS_INBOUND_ADDR", ports.inbound.to_string())
            .env("PLEXUS_ADMIN_ADDR", ports.admin.to_string())
            // Nothing is in flight when a scenario stops its proxies.
            .env("PLEXUS_DRAIN_TIMEOUT_MS", "500")
            .env("PLEXUS_LOG", "warn");
        if let Some(threads) = spec.worker_threads {
            command.env("PLEXUS_WORKER_THREADS", threads.to_string());
        }
        if let Some(endpoint) = spec.otlp_endpoint {
            command
                .env("PLEXUS_OTLP_ENDPOINT", endpoint)
                .env("PLEXUS_TRACE_SAMPLING", "1.0");
        }
        if let Some(identity) = &spec.identity {
            command
                .env("PLEXUS_IDENTITY", &identity.spiffe_id)
                .env("PLEXUS_IDENTITY_TOKEN_FILE", &identity.token_file)
                .env("PLEXUS_IDENTITY_TRUST_ANCHORS", &identity.trust_anchors)
                .env("PLEXUS_IDENTITY_ADDR", identity.controller.to_string());
        }
        match spec.role {
            ProxyRole::Client {
                endpoint,
                meshed,
                identity,
            } => {
                let path = workdir.join(format!("{name}.yaml"));
                let config = static_config(endpoint, meshed, identity.unwrap_or_default());
                let yaml = serde_yaml::to_string(&config)
                    .context("writing the bench destinations as YAML")?;
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                command.env("PLEXUS_STATIC_CONFIG", &path);
            }
            ProxyRole::Server { app } => {
                command.env("PLEXUS_INBOUND_APP_ADDR", app.to_string());
            }
        }
        let pid = processes.spawn(name, command)?;
        Probe::new()
            .wait_ready(
                &format!("proxy {name}"),
                ports.admin,
                "/ready",
                READY_TIMEOUT,
                processes,
            )
            .await?;
        Ok(Self { pid, ports })
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

fn static_config(endpoint: SocketAddr, meshed: bool, identity: String) -> StaticConfig {
    let backend = Backend {
        name: BENCH_SERVICE.into(),
        endpoints: vec![Endpoint {
            address: endpoint.to_string(),
            identity,
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
pub fn free_loopback_port() -> Result<SocketAddr> {
    let listener = StdTcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    listener.local_addr().context("reading a bound port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_config_routes_the_bench_name_to_the_endpoint() {
        let endpoint: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let identity = "spiffe://cluster.local/ns/bench/sa/bench-server";
        let yaml = serde_yaml::to_string(&static_config(endpoint, true, identity.into())).unwrap();
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
        assert_eq!(endpoint["identity"].as_str(), Some(identity));
        assert_eq!(endpoint["ready"].as_bool(), Some(true));

        // The proxy reads the target in the proto's shape: it must come back whole.
        let target: Target = serde_yaml::from_value(target.clone()).unwrap();
        assert_eq!(
            target,
            static_config("127.0.0.1:4321".parse().unwrap(), true, identity.into()).destinations[0]
                .target
        );
    }

    #[test]
    fn free_ports_are_loopback_and_nonzero() {
        let addr = free_loopback_port().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0);
    }
}
