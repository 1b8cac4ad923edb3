//! `cargo xtask bench`: what the proxy costs, measured side by side in one run.
//!
//! One upstream process, the load generator in this process, and for each
//! scenario fresh proxy processes between them: none, one (outbound), or a
//! pair (client outbound -> server inbound), plaintext or mTLS (with a fresh
//! controller issuing the certificates). Every figure is also given as a
//! ratio to the direct scenario of the same group, measured minutes apart on
//! the same cores.

pub mod collector;
pub mod compare;
pub mod controller;
pub mod handshake;
pub mod latency;
pub mod load;
pub mod mesh;
pub mod nginx;
pub mod peers;
pub mod procfs;
pub mod proxy;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod targets;
pub mod upstream;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::time::{Instant, sleep_until, timeout};

use self::collector::{BrokenCollector, Collector, OtlpSetting};
use self::handshake::{mesh_client, time_handshakes};
use self::load::{Load, REQUEST_TIMEOUT, Window};
use self::mesh::{CLIENT_ACCOUNT, MeshControl, SERVER_ACCOUNT, spiffe_id};
use self::proxy::{ProxyPorts, ProxyProcess, ProxyRole, ProxySpec};
use self::report::{HandshakeCosts, Measurement, ProcessCost, Report, RssAfterRequests, Settings};
use self::scenario::{Pacing, Protocol, Scenario, Selection, Topology};
use self::upstream::UpstreamProcess;
use crate::process::Processes;
use crate::ready::Probe;
use crate::workspace::Workspace;

/// Hard caps, whatever the flags say: a bench must always end.
const MAX_DURATION_SECS: f64 = 60.0;
const MAX_WARMUP_SECS: f64 = 10.0;
const MAX_CONNECTIONS: usize = 256;
const MAX_ROUNDS: usize = 20;
const MAX_HANDSHAKES: usize = 10_000;
/// How long the count-bounded memory run may take before it gives up.
const RSS_RUN_TIME_CAP: Duration = Duration::from_secs(120);

/// What a bench run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The proxy: direct traffic vs one proxy vs a proxy pair (the default).
    Proxy,
    /// The controller: index size, watch fan-out, snapshot time, memory.
    Controller,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// `proxy` (default) or `controller`.
    #[arg(value_enum, default_value = "proxy")]
    pub part: Part,
    /// Topologies to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,proxy,pair,pair-mtls"
    )]
    pub scenarios: Vec<Topology>,
    /// Protocols the load generator speaks.
    #[arg(long, value_delimiter = ',', default_value = "h1,h2")]
    pub protocols: Vec<Protocol>,
    /// Connection counts for the closed-loop scenarios.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub connections: Vec<usize>,
    /// Measured seconds per scenario [default: 5, --quick: 1; at most 60].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Rounds per scenario, interleaved with the other scenarios of its group
    /// and merged (evens out a shared machine's noise).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Warm-up seconds before each measurement [default: 1, --quick: 0.25; at most 10].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Fixed-rate (open-loop) scenarios at this many requests per second; 0 skips them.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Connections sharing the fixed rate.
    #[arg(long, default_value_t = 4)]
    pub rate_connections: usize,
    /// Proxy memory after this many requests through a fresh proxy; 0 skips it
    /// [default: 100000, --quick: 10000].
    #[arg(long)]
    pub rss_requests: Option<u64>,
    /// New mTLS connections timed against the server proxy, and TLS 1.3
    /// connections against nginx (with pair-mtls; 0 skips them).
    #[arg(long, default_value_t = 500)]
    pub handshakes: usize,
    /// Requests per scenario, all connections together, warm-up included (a hard cap).
    #[arg(long, default_value_t = 50_000_000)]
    pub max_requests: u64,
    /// A short smoke run: 1 s per scenario, 10,000 requests for the memory figure.
    #[arg(long)]
    pub quick: bool,
    /// Print a JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Tokio worker threads of the load generator (1: current-thread runtime).
    #[arg(long, default_value_t = 1)]
    pub loadgen_threads: usize,
    /// Tokio worker threads of the upstream server.
    #[arg(long, default_value_t = 1)]
    pub upstream_threads: usize,
    /// Proxy data-plane threads (`PLEXUS_WORKER_THREADS`); unset: the proxy's default.
    #[arg(long)]
    pub proxy_threads: Option<usize>,
    /// Use this proxy binary instead of building `plexus-proxy` in release mode.
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// Use this controller binary (pair-mtls) instead of building `plexus-controller`
    /// in release mode.
    #[arg(long)]
    pub controller_bin: Option<PathBuf>,
    /// Trace every request (sampling 1.0) and export to this OTLP/gRPC
    /// collector (`host:port` or URL); unset: the proxies trace nothing.
    #[arg(long, value_name = "ADDR", conflicts_with = "otlp")]
    pub otlp_endpoint: Option<String>,
    /// Instead of the scenarios: plexus-proxy beside nginx and HAProxy in one
    /// run (`bench/peers/plexus.sh`; `--rounds`, `--proxy-bin`,
    /// `--proxy-threads` apply), as docs/benchmarks.md reports it.
    #[arg(long, conflicts_with = "part")]
    pub peers: bool,
    /// Trace every request into a broken collector the bench stands in for:
    /// `dead` (nothing listens) or `stalled` (accepts, never answers).
    #[arg(long, value_enum)]
    pub otlp: Option<BrokenCollector>,
}

/// The `bench` command.
pub fn main(args: BenchArgs) -> Result<bool> {
    if args.part == Part::Controller {
        return controller::main();
    }
    if args.peers {
        check_rounds(args.rounds)?;
        return peers::main(&args);
    }
    let settings = Settings::resolve(&args)?;
    if cfg!(debug_assertions) {
        return Err(relaunch_optimized());
    }
    runtime(settings.loadgen_threads)?.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("watching SIGTERM")?;
        // Dropping `run` drops the child handles, which kills the upstream and proxies.
        tokio::select! {
            result = run(args, settings) => result,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; the upstream and proxies were stopped"),
            _ = terminate.recv() => bail!("terminated; the upstream and proxies were stopped"),
        }
    })
}

/// Where `tool` is on PATH, as a shell would find it.
pub fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

fn check_rounds(rounds: usize) -> Result<()> {
    ensure!(
        (1..=MAX_ROUNDS).contains(&rounds),
        "--rounds {rounds}: expected 1 to {MAX_ROUNDS}"
    );
    Ok(())
}

/// `cargo xtask` runs a debug build, whose load generator and upstream would be
/// slower than the proxy they measure: build xtask optimized and become it.
fn relaunch_optimized() -> anyhow::Error {
    use std::os::unix::process::CommandExt;

    let result = (|| -> Result<std::process::Command> {
        let workspace = Workspace::locate()?;
        eprintln!("bench: building xtask (release) for an optimized load generator and upstream");
        let status = crate::workspace::cargo()
            .args(["build", "--release", "-p", "xtask", "--features", "tools"])
            .current_dir(&workspace.root)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running `cargo build --release -p xtask --features tools`")?;
        ensure!(
            status.success(),
            "`cargo build --release -p xtask --features tools` failed ({status})"
        );
        let mut command =
            std::process::Command::new(workspace.target_dir.join("release").join("xtask"));
        command.args(std::env::args_os().skip(1));
        Ok(command)
    })();
    match result {
        // `exec` only returns when it failed.
        Ok(mut command) => {
            anyhow::Error::new(command.exec()).context("starting the release build of xtask")
        }
        Err(error) => error,
    }
}

/// A small runtime: the bench's processes share two cores, so each gets few threads.
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

impl Settings {
    fn resolve(args: &BenchArgs) -> Result<Self> {
        let duration = args.duration.unwrap_or(if args.quick { 1.0 } else { 5.0 });
        let warmup = args.warmup.unwrap_or(if args.quick { 0.25 } else { 1.0 });
        let rss_requests = args
            .rss_requests
            .unwrap_or(if args.quick { 10_000 } else { 100_000 });
        ensure!(
            duration > 0.0 && duration <= MAX_DURATION_SECS,
            "--duration {duration}: expected more than 0 and at most {MAX_DURATION_SECS} seconds"
        );
        ensure!(
            (0.0..=MAX_WARMUP_SECS).contains(&warmup),
            "--warmup {warmup}: expected 0 to {MAX_WARMUP_SECS} seconds"
        );
        ensure!(
            args.rate == 0.0 || (1.0..=1_000_000.0).contains(&args.rate),
            "--rate {}: expected 0 (off) or 1 to 1000000 requests per second",
            args.rate
        );
        for &count in args.connections.iter().chain([&args.rate_connections]) {
            ensure!(
                (1..=MAX_CONNECTIONS).contains(&count),
                "connection count {count}: expected 1 to {MAX_CONNECTIONS}"
            );
        }
        ensure!(
            !args.scenarios.is_empty(),
            "--scenarios: name at least one of direct, proxy, pair, pair-mtls"
        );
        ensure!(
            !args.protocols.is_empty(),
            "--protocols: name at least one of h1, h2"
        );
        ensure!(
            !args.connections.is_empty(),
            "--connections: give at least one count"
        );
        ensure!(
            args.handshakes <= MAX_HANDSHAKES,
            "--handshakes {}: expected 0 to {MAX_HANDSHAKES}",
            args.handshakes
        );
        check_rounds(args.rounds)?;
        Ok(Self {
            duration_s: duration,
            warmup_s: warmup,
            rounds: args.rounds,
            rate: (args.rate > 0.0).then_some(args.rate),
            rate_connections: args.rate_connections,
            rss_requests,
            max_requests: args.max_requests,
            loadgen_threads: args.loadgen_threads.max(1),
            upstream_threads: args.upstream_threads.max(1),
            proxy_threads: args.proxy_threads,
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            // Known once the collector runs (see `run`).
            otlp: OtlpSetting::Off,
        })
    }
}

/// Runs every scenario; `Ok(false)` when some could not be measured (the
/// report says which and why).
async fn run(args: BenchArgs, mut settings: Settings) -> Result<bool> {
    let scenarios = scenario::plan(&Selection {
        topologies: args.scenarios.clone(),
        protocols: args.protocols.clone(),
        connections: args.connections.clone(),
        rate: settings.rate,
        rate_connections: settings.rate_connections,
    });
    let needs_proxy = args.scenarios.iter().any(|t| t.proxies() > 0);
    let workspace = Workspace::locate()?;
    let workdir = workspace.target_dir.join("xtask-bench");
    std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let needs_controller = args.scenarios.contains(&Topology::PairMtls);
    let mut to_build = Vec::new();
    if needs_proxy && args.proxy_bin.is_none() {
        to_build.push("plexus-proxy");
    }
    if needs_controller && args.controller_bin.is_none() {
        to_build.push("plexus-controller");
    }
    let release_dir = if to_build.is_empty() {
        None
    } else {
        Some(proxy::build_release(&workspace, &to_build)?)
    };
    let built = |given: &Option<PathBuf>, needed: bool, package: &str| match (given, needed) {
        (_, false) => None,
        (Some(path), true) => Some(path.clone()),
        (None, true) => release_dir.as_ref().map(|dir| dir.join(package)),
    };
    let proxy_binary = built(&args.proxy_bin, needs_proxy, "plexus-proxy");
    let controller_binary = built(&args.controller_bin, needs_controller, "plexus-controller");

    let collector = Collector::start(args.otlp_endpoint.as_deref(), args.otlp).await?;
    settings.otlp = collector.setting.clone();
    eprintln!("bench: tracing {}", settings.otlp);
    let upstream = UpstreamProcess::spawn(settings.upstream_threads).await?;
    eprintln!(
        "bench: upstream at {} (pid {})",
        upstream.addr, upstream.pid
    );
    let bench = Bench {
        settings: &settings,
        upstream: &upstream,
        proxy_binary: proxy_binary.as_deref(),
        controller_binary: controller_binary.as_deref(),
        workdir: &workdir,
        otlp_endpoint: collector.endpoint(),
    };

    let mut measurements = Vec::with_capacity(scenarios.len());
    // A group (direct, proxy, pair of one protocol, connection count and pacing)
    // runs round after round, its scenarios interleaved, so a neighbour's burst
    // of CPU hits all of them alike rather than one.
    for group in scenarios.chunk_by(|a, b| a.direct() == b.direct()) {
        let mut results: Vec<Option<Result<Measurement>>> = group.iter().map(|_| None).collect();
        for round in 1..=settings.rounds {
            for (scenario, result) in group.iter().zip(results.iter_mut()) {
                if matches!(result, Some(Err(_))) {
                    continue;
                }
                eprintln!(
                    "bench: {} (round {round}/{})",
                    scenario.name(),
                    settings.rounds
                );
                let measured = bench.measure(scenario).await;
                if let Err(error) = &measured {
                    eprintln!("bench: {} failed: {error:#}", scenario.name());
                }
                *result = Some(match (result.take(), measured) {
                    (Some(Ok(mut sum)), Ok(more)) => sum.merge(more).map(|()| sum),
                    (_, measured) => measured,
                });
            }
        }
        for (scenario, result) in group.iter().zip(results) {
            if let Some(result) = result {
                measurements.push((*scenario, result));
            }
        }
    }

    let rss = match (
        proxy_binary.is_some() && settings.rss_requests > 0,
        args.scenarios.contains(&Topology::Proxy),
    ) {
        (true, true) => {
            let connections = args.connections.iter().copied().max().unwrap_or(1);
            eprintln!(
                "bench: proxy memory after {} requests",
                settings.rss_requests
            );
            Some(
                bench
                    .rss_after_requests(connections)
                    .await
                    .map_err(|e| format!("{e:#}")),
            )
        }
        _ => None,
    };
    let handshakes = if needs_controller && args.handshakes > 0 {
        eprintln!(
            "bench: {} new mTLS connections to the server proxy, then to nginx",
            args.handshakes
        );
        Some(
            bench
                .handshake_costs(args.handshakes)
                .await
                .map_err(|e| format!("{e:#}")),
        )
    } else {
        None
    };
    upstream.stop().await?;

    let mut report = Report::new(settings, measurements, rss);
    report.set_handshakes(handshakes);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("writing the JSON report")?
        );
    } else {
        print!("{}", report.render_text());
    }
    Ok(report.all_measured())
}

struct Bench<'a> {
    settings: &'a Settings,
    upstream: &'a UpstreamProcess,
    proxy_binary: Option<&'a std::path::Path>,
    controller_binary: Option<&'a std::path::Path>,
    workdir: &'a std::path::Path,
    /// The proxies' `PLEXUS_OTLP_ENDPOINT`.
    otlp_endpoint: Option<&'a str>,
}

/// The proxies (and controller) of one scenario and where the load generator sends.
struct Deployment {
    target: std::net::SocketAddr,
    proxies: Vec<(&'static str, ProxyProcess)>,
    /// The controller of an mTLS pair.
    mesh: Option<MeshControl>,
    /// Owns the processes: dropping it kills them.
    processes: Processes,
}

impl Deployment {
    async fn stop(mut self) {
        self.processes.stop_all().await;
    }
}

impl Bench<'_> {
    async fn deploy(&self, topology: Topology, name: &str) -> Result<Deployment> {
        let upstream = self.upstream.addr;
        let mut processes = Processes::new(self.workdir)?;
        let mut proxies = Vec::new();
        let mut mesh = None;
        match topology {
            Topology::Direct => {}
            Topology::Proxy => {
                let role = ProxyRole::Client {
                    endpoint: upstream,
                    meshed: false,
                    identity: None,
                };
                let proxy = self
                    .spawn_proxy(role, None, ProxyPorts::free()?, name, &mut processes)
                    .await?;
                proxies.push(("proxy", proxy));
            }
            Topology::Pair | Topology::PairMtls => {
                let server_ports = ProxyPorts::free()?;
                if topology == Topology::PairMtls {
                    let binary = self
                        .controller_binary
                        .context("no controller binary for an mTLS scenario")?;
                    let dir = self.workdir.join(format!("{name}-controller"));
                    mesh = Some(
                        MeshControl::start(binary, &dir, &server_ports, &mut processes).await?,
                    );
                }
                let identity = |account| mesh.as_ref().map(|mesh| mesh.identity(account));
                let server = self
                    .spawn_proxy(
                        ProxyRole::Server { app: upstream },
                        identity(SERVER_ACCOUNT),
                        server_ports,
                        &format!("{name}-server"),
                        &mut processes,
                    )
                    .await?;
                let role = ProxyRole::Client {
                    endpoint: server.ports.inbound,
                    meshed: true,
                    identity: identity(SERVER_ACCOUNT).map(|id| id.spiffe_id),
                };
                let client = self
                    .spawn_proxy(
                        role,
                        identity(CLIENT_ACCOUNT),
                        ProxyPorts::free()?,
                        &format!("{name}-client"),
                        &mut processes,
                    )
                    .await?;
                proxies.push(("client", client));
                proxies.push(("server", server));
            }
        }
        let target = match proxies.first() {
            Some((_, entry)) => entry.ports.outbound,
            None => upstream,
        };
        Ok(Deployment {
            target,
            proxies,
            mesh,
            processes,
        })
    }

    async fn spawn_proxy(
        &self,
        role: ProxyRole,
        identity: Option<proxy::ProxyIdentity>,
        ports: ProxyPorts,
        name: &str,
        processes: &mut Processes,
    ) -> Result<ProxyProcess> {
        let spec = ProxySpec {
            binary: self
                .proxy_binary
                .context("no proxy binary for a proxied scenario")?,
            role,
            identity,
            ports,
            worker_threads: self.settings.proxy_threads,
            otlp_endpoint: self.otlp_endpoint,
        };
        ProxyProcess::spawn(spec, name, self.workdir, processes).await
    }

    async fn measure(&self, scenario: &Scenario) -> Result<Measurement> {
        let file_name = scenario.name().replace([' ', '@', '/'], "-");
        let deployment = self.deploy(scenario.topology, &file_name).await?;
        let mut result = self.measure_on(scenario, &deployment).await;
        if result.is_ok() && scenario.topology == Topology::PairMtls {
            result = check_mtls_used(&deployment).await.and(result);
        }
        deployment.stop().await;
        result
    }

    async fn measure_on(
        &self,
        scenario: &Scenario,
        deployment: &Deployment,
    ) -> Result<Measurement> {
        let settings = self.settings;
        let load =
            Load::connect(deployment.target, scenario.protocol, scenario.connections).await?;
        let start = Instant::now() + Duration::from_secs_f64(settings.warmup_s);
        let window = Window {
            start,
            end: start + Duration::from_secs_f64(settings.duration_s),
        };
        let running = tokio::spawn(load.run(scenario.pacing, window, settings.max_requests));

        let pids = self.watched_pids(deployment);
        sleep_until(window.start).await;
        let cpu_before = cpu_seconds(&pids)?;
        sleep_until(window.end).await;
        let cpu_after = cpu_seconds(&pids)?;
        // Requests in flight at the end finish within their own timeout.
        let outcome = timeout(REQUEST_TIMEOUT + Duration::from_secs(5), running)
            .await
            .context("the load generator did not stop after the window")?
            .context("the load generator failed")??;
        // Requests per second over the whole window would be wrong if sending stopped early.
        ensure!(
            !outcome.capped,
            "--max-requests {} was reached before the window ended: raise it or shorten --duration",
            settings.max_requests
        );

        let cpu = |index: usize| cpu_after[index] - cpu_before[index];
        let mut proxies = Vec::with_capacity(deployment.proxies.len());
        for (index, (role, proxy)) in deployment.proxies.iter().enumerate() {
            proxies.push(ProcessCost {
                role,
                cpu_s: cpu(index + 2),
                memory: procfs::memory(proxy.pid)?,
            });
        }
        Ok(Measurement::new(
            window.seconds(),
            outcome.latency,
            outcome.errors,
            outcome.first_error,
            cpu(0),
            cpu(1),
            proxies,
        ))
    }

    /// This process (the load generator), the upstream, then each proxy.
    fn watched_pids(&self, deployment: &Deployment) -> Vec<u32> {
        [std::process::id(), self.upstream.pid]
            .into_iter()
            .chain(deployment.proxies.iter().map(|(_, proxy)| proxy.pid))
            .collect()
    }

    /// A fresh proxy, `rss_requests` HTTP/1.1 requests through it, then its memory.
    async fn rss_after_requests(&self, connections: usize) -> Result<RssAfterRequests> {
        let deployment = self.deploy(Topology::Proxy, "rss").await?;
        let result = async {
            let load = Load::connect(deployment.target, Protocol::H1, connections).await?;
            let start = Instant::now();
            let window = Window {
                start,
                end: start + RSS_RUN_TIME_CAP,
            };
            let outcome = load
                .run(Pacing::ClosedLoop, window, self.settings.rss_requests)
                .await?;
            let (_, proxy) = deployment
                .proxies
                .first()
                .context("the proxy scenario has no proxy")?;
            if outcome.completed() + outcome.errors < self.settings.rss_requests {
                bail!(
                    "only {} of {} requests within {RSS_RUN_TIME_CAP:?}",
                    outcome.completed() + outcome.errors,
                    self.settings.rss_requests
                );
            }
            Ok(RssAfterRequests {
                requests: outcome.completed(),
                errors: outcome.errors,
                connections,
                memory: procfs::memory(proxy.pid)?,
            })
        }
        .await;
        deployment.stop().await;
        result
    }
}

impl Bench<'_> {
    /// New mTLS connections to a fresh server proxy, then TLS 1.3 connections
    /// to nginx, `count` each, one after the other.
    async fn handshake_costs(&self, count: usize) -> Result<HandshakeCosts> {
        let deployment = self.deploy(Topology::PairMtls, "handshakes").await?;
        let proxy = async {
            let mesh = deployment
                .mesh
                .as_ref()
                .context("the mTLS pair has no controller")?;
            let (config, name) = mesh_client(
                &mesh.ca_dir,
                &spiffe_id(CLIENT_ACCOUNT),
                &spiffe_id(SERVER_ACCOUNT),
            )?;
            let (_, server) = deployment
                .proxies
                .get(1)
                .context("the mTLS pair has no server proxy")?;
            time_handshakes(config, name, server.ports.inbound, count).await
        }
        .await;
        deployment.stop().await;
        let proxy = proxy.context("timing new connections to the server proxy")?;

        let mut processes = Processes::new(self.workdir)?;
        let nginx = async {
            let nginx = nginx::start(&self.workdir.join("nginx"), &mut processes).await?;
            time_handshakes(nginx.client, nginx.name, nginx.addr, count).await
        }
        .await;
        processes.stop_all().await;
        Ok(HandshakeCosts::new(
            proxy,
            nginx.map_err(|e| format!("{e:#}")),
        ))
    }
}

/// The client proxy counted outbound mTLS handshakes: the figures of
/// `pair-mtls` are of encrypted traffic, not of a silent plaintext fallback.
async fn check_mtls_used(deployment: &Deployment) -> Result<()> {
    let (_, client) = deployment
        .proxies
        .first()
        .context("the mTLS pair has no client proxy")?;
    let (_, body) = Probe::new().get(client.ports.admin, "/metrics").await?;
    let text = String::from_utf8_lossy(&body);
    let handshakes: f64 = text
        .lines()
        .filter(|line| {
            line.starts_with("plexus_proxy_tls_handshakes_total") && line.contains("outbound")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    ensure!(
        handshakes > 0.0,
        "the client proxy's /metrics counts no outbound mTLS handshake \
         (plexus_proxy_tls_handshakes_total): the pair did not talk mTLS"
    );
    Ok(())
}

fn cpu_seconds(pids: &[u32]) -> Result<Vec<f64>> {
    pids.iter().map(|&pid| procfs::cpu_seconds(pid)).collect()
}
