//! `cargo xtask demo`: the whole mesh on one machine, with no cluster and no root.
//!
//! It builds the proxy and the controller, starts the controller on a file feed
//! describing a small application (a frontend calling a backend split 80/20 between v1
//! and v2; one v1 replica fails 20 % of its requests, another is slow), the apps, a
//! sidecar per pod and an OTLP receiver, drives traffic, prints what the application saw
//! against what the mesh absorbed, with a few trace waterfalls, and stops everything.
//!
//! Every pod is a loopback address (127.0.10.N) with the app on :8080 and its sidecar on
//! :15001 (outbound), :15006 (inbound) and :15020 (admin). Without iptables nothing
//! redirects traffic, so the endpoints announced are the sidecars' inbound ports and
//! each sidecar forwards to its app (`PLEXUS_INBOUND_APP_ADDR`); the frontend sends to
//! its sidecar's outbound port, which routes by `Host`.

mod app;
mod feed;
mod keep_running;
mod metrics_text;
mod sidecar;
mod summary;
mod topology;
mod traffic;
mod waterfalls;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;

pub use app::AppArgs;
use sidecar::{IdentityPlan, SidecarPlan, sidecar_env};
use topology::{Pod, Role, Topology};
use waterfalls::{TraceStore, WATERFALL_WIDTH};

use crate::process::Processes;
use crate::ready::Probe;
use crate::workspace::{Workspace, cargo};

/// How long a component may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long spans may take to reach the receiver after the traffic (batch export).
const TRACES_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How long to drive traffic, in seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// Requests per second sent to the frontend.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: u32,
    /// Leave everything running after the summary, until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// Send spans to this OTLP/gRPC endpoint (Jaeger, an OpenTelemetry Collector)
    /// instead of the built-in receiver; no waterfalls are printed then.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Use the binaries already built instead of running `cargo build`.
    #[arg(long)]
    pub no_build: bool,
}

/// `cargo xtask demo`.
pub fn main(args: DemoArgs) -> anyhow::Result<()> {
    runtime()?.block_on(run(args))
}

/// `cargo xtask demo-app`: one of the demo application's services (started by the demo).
pub fn app_main(args: AppArgs) -> anyhow::Result<()> {
    runtime()?.block_on(app::run(args))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let topology = Topology::demo();
    check_addresses_free(topology.listen_addrs())?;
    let workspace = Workspace::locate()?;
    if !args.no_build {
        build(&workspace)?;
    }
    let bin = workspace.target_dir.join("debug");
    let work_dir = std::env::temp_dir().join(format!("plexus-demo-{}", std::process::id()));
    let mut processes = Processes::new(&work_dir.join("logs"))?;

    // Everything started below is stopped when `processes` is dropped: on success, on
    // error and on Ctrl-C alike. After the summary, Ctrl-C is how `--keep-running` ends.
    let summarised = Cell::new(false);
    let outcome = tokio::select! {
        result = demo(&args, &topology, &bin, &work_dir, &mut processes, &summarised) => result,
        _ = tokio::signal::ctrl_c() => if summarised.get() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("interrupted"))
        },
    };
    processes.stop_all().await;
    match outcome {
        Ok(()) => {
            // The logs are only worth keeping when something went wrong.
            let _ = std::fs::remove_dir_all(&work_dir);
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "the demo failed; logs of every process are in {}",
            work_dir.join("logs").display()
        ))),
    }
}

async fn demo(
    args: &DemoArgs,
    topology: &Topology,
    bin: &Path,
    work_dir: &Path,
    processes: &mut Processes,
    summarised: &Cell<bool>,
) -> anyhow::Result<()> {
    let probe = Probe::new();

    // The trace receiver first, so no span is lost.
    let store = TraceStore::default();
    let mut collector = None;
    let otlp_endpoint = match &args.otlp_endpoint {
        Some(endpoint) => endpoint.clone(),
        None => {
            let receiver =
                plexus_traces::Receiver::bind(topology.otlp_grpc_addr(), topology.otlp_http_addr())
                    .await
                    .context("starting the trace receiver")?;
            let endpoint = receiver.grpc_endpoint();
            collector = Some(store.collect_from(receiver));
            endpoint
        }
    };
    let _stop_collector = AbortOnDrop(collector);

    let identity =
        start_controller(topology, bin, work_dir, &otlp_endpoint, processes, &probe).await?;
    let plan = sidecar_plan(topology, identity, otlp_endpoint.clone());
    start_pods(topology, bin, &plan, processes, &probe).await?;

    let frontend = topology.frontend();
    let load = traffic::Plan {
        target: frontend.inbound_addr(),
        authority: topology
            .service("frontend")
            .map_or_else(|| frontend.app_addr().to_string(), |s| s.authority()),
        rate_per_second: args.rate,
        duration: Duration::from_secs(args.duration),
    };
    eprintln!(
        "sending {} requests to the frontend ({} per second for {} s) through its sidecar at {}",
        load.count(),
        load.rate_per_second,
        args.duration,
        load.target
    );
    let outcomes = traffic::drive(&load).await;
    // A component that died under load makes the numbers meaningless: say so.
    processes.check_alive()?;

    let stats = collect_stats(&probe, topology).await;
    let metrics = match probe.get(frontend.admin_addr(), "/metrics").await {
        Ok((status, body)) if status.is_success() => {
            Some(metrics_text::parse(&String::from_utf8_lossy(&body)))
        }
        _ => None,
    };
    let mut inputs = summary::Inputs {
        topology,
        outcomes: &outcomes,
        duration: load.duration,
        stats: &stats,
        frontend_metrics: metrics.as_deref(),
        verified_servers: &BTreeMap::new(),
    };
    // The summary reads identities from the traces too: let them arrive first.
    let verified_servers;
    if args.otlp_endpoint.is_none() {
        eprintln!("waiting for the last spans (at most {TRACES_WITHIN:?})");
        let retried = summary::Retries::of(&inputs).spent.is_some_and(|n| n > 0);
        store.wait_for(&outcomes, retried, TRACES_WITHIN).await;
        verified_servers = store.verified_servers().await;
        inputs.verified_servers = &verified_servers;
    }
    println!();
    print!("{}", summary::render(&inputs));
    if args.otlp_endpoint.is_none() {
        print_waterfalls(&store, &outcomes).await;
    }

    summarised.set(true);

    if args.keep_running {
        keep_running::print_help(topology, &otlp_endpoint);
        if args.otlp_endpoint.is_none() {
            println!("\nEach new trace is printed below as it arrives.");
            store.print_live();
        }
        // Runs until Ctrl-C (the caller's select) or until a component dies.
        loop {
            processes.check_alive()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

/// The controller on a feed of the demo's objects, with its CA and a bootstrap token
/// per workload identity: the Identity API outside a cluster.
async fn start_controller(
    topology: &Topology,
    bin: &Path,
    work_dir: &Path,
    otlp_endpoint: &str,
    processes: &mut Processes,
    probe: &Probe,
) -> anyhow::Result<IdentityPlan> {
    let feed_path = work_dir.join("demo-cluster.yaml");
    std::fs::write(&feed_path, feed::feed_yaml(topology)?)
        .with_context(|| format!("writing {}", feed_path.display()))?;
    eprintln!("starting the controller on {}", feed_path.display());
    let identity = IdentityPlan {
        controller: topology.controller_grpc_addr(),
        token_dir: work_dir.join("tokens"),
        ca_dir: work_dir.join("ca"),
    };
    let mut controller = Command::new(bin.join("plexus-controller"));
    controller
        .arg("--feed")
        .arg(format!("file:{}", feed_path.display()))
        .arg("--grpc-addr")
        .arg(topology.controller_grpc_addr().to_string())
        .arg("--admin-addr")
        .arg(topology.controller_admin_addr().to_string())
        // Created on first start, in the demo's own directory.
        .arg("--ca-dir")
        .arg(&identity.ca_dir)
        .arg("--bootstrap-token-dir")
        .arg(&identity.token_dir)
        .env("PLEXUS_OTLP_ENDPOINT", otlp_endpoint);
    processes.spawn("controller", controller)?;
    let admin = topology.controller_admin_addr();
    probe
        .wait_ready("the controller", admin, "/ready", READY_WITHIN, processes)
        .await?;
    check_feed_accepted(probe, admin, &feed_path).await?;
    check_identity_issued(&identity, topology)?;
    Ok(identity)
}

/// Every pod's app and sidecar, ready to serve.
async fn start_pods(
    topology: &Topology,
    bin: &Path,
    plan: &SidecarPlan,
    processes: &mut Processes,
    probe: &Probe,
) -> anyhow::Result<()> {
    eprintln!(
        "starting {} pods (an app and a sidecar each)",
        topology.pods().len()
    );
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    for pod in topology.pods() {
        processes.spawn(
            &format!("{}-app", pod.name),
            app_command(&xtask, topology, pod),
        )?;
        let mut sidecar = Command::new(bin.join("plexus-proxy"));
        sidecar.envs(sidecar_env(pod, plan));
        processes.spawn(&format!("{}-proxy", pod.name), sidecar)?;
    }
    for pod in topology.pods() {
        let what = format!("the sidecar of {}", pod.name);
        probe
            .wait_ready(&what, pod.admin_addr(), "/ready", READY_WITHIN, processes)
            .await?;
        let what = format!("the app of {}", pod.name);
        probe
            .wait_ready(&what, pod.app_addr(), "/stats", READY_WITHIN, processes)
            .await?;
    }
    Ok(())
}

fn build(workspace: &Workspace) -> anyhow::Result<()> {
    eprintln!("building plexus-proxy and plexus-controller (debug profile)");
    let status = cargo()
        .args([
            "build",
            "--bins",
            "-p",
            "plexus-proxy",
            "-p",
            "plexus-controller",
        ])
        .current_dir(&workspace.root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        anyhow::bail!("cargo build of plexus-proxy and plexus-controller failed ({status})");
    }
    Ok(())
}

/// The demo's objects are all meant to be valid: a problem the controller reports is a
/// bug of the demo (or of the controller), not something to run past.
async fn check_feed_accepted(
    probe: &Probe,
    admin: SocketAddr,
    feed_path: &Path,
) -> anyhow::Result<()> {
    let (_, body) = probe.get(admin, "/status").await?;
    let status: serde_json::Value =
        serde_json::from_slice(&body).context("reading the controller's /status as JSON")?;
    let verdict = feed::controller_verdict(&status);
    if !verdict.problems.is_empty() {
        anyhow::bail!(
            "the controller refused parts of {}:\n  {}",
            feed_path.display(),
            verdict.problems.join("\n  ")
        );
    }
    if verdict.accepted.is_empty() {
        anyhow::bail!(
            "the controller accepted no route of {}",
            feed_path.display()
        );
    }
    for line in verdict.accepted {
        eprintln!("  controller: {line}");
    }
    Ok(())
}

/// The controller writes its CA and the workloads' bootstrap tokens when it loads the
/// feed, before it reports ready: a missing file means the sidecars could not get
/// certificates.
fn check_identity_issued(identity: &IdentityPlan, topology: &Topology) -> anyhow::Result<()> {
    let mut expected = vec![identity.trust_anchors()];
    expected.extend(topology.pods().iter().map(|pod| identity.token_file(pod)));
    for path in expected {
        if !path.is_file() {
            anyhow::bail!(
                "the controller is ready but did not write {} (CA and bootstrap tokens)",
                path.display()
            );
        }
    }
    Ok(())
}

/// Fails with a clear message when another demo (or anything else) holds an address.
fn check_addresses_free(addrs: impl IntoIterator<Item = SocketAddr>) -> anyhow::Result<()> {
    for addr in addrs {
        std::net::TcpListener::bind(addr).with_context(|| {
            format!(
                "the demo needs {addr}, which is not free (is another demo running?); \
                 127.0.10.0/24 must be usable on loopback (it is on Linux)"
            )
        })?;
    }
    Ok(())
}

fn sidecar_plan(topology: &Topology, identity: IdentityPlan, otlp_endpoint: String) -> SidecarPlan {
    eprintln!(
        "the sidecars get their certificates and destinations from the controller at {}",
        topology.controller_grpc_addr()
    );
    SidecarPlan {
        identity: Some(identity),
        controller: Some(topology.controller_grpc_addr()),
        otlp_endpoint,
    }
}

fn app_command(xtask: &Path, topology: &Topology, pod: &Pod) -> Command {
    let mut command = Command::new(xtask);
    command
        .arg("demo-app")
        .args(["--role", pod.role.as_str()])
        .args(["--listen", &pod.app_addr().to_string()])
        .args(["--pod", pod.name])
        .args(["--version", pod.version])
        .args(["--fail-rate", &pod.behaviour.fail_rate.to_string()])
        .args(["--delay-ms", &pod.behaviour.delay_ms.to_string()]);
    if pod.role == Role::Frontend {
        command.args(["--upstream-proxy", &pod.outbound_addr().to_string()]);
        if let Some(backend) = topology.service(topology::BACKEND_SERVICE) {
            command.args(["--upstream-host", &backend.authority()]);
        }
    }
    command
}

async fn collect_stats(probe: &Probe, topology: &Topology) -> Vec<(Pod, app::AppStats)> {
    let mut stats = Vec::new();
    for pod in topology.pods() {
        let answer = probe.get(pod.app_addr(), "/stats").await;
        if let Ok((status, body)) = answer
            && status.is_success()
            && let Ok(s) = serde_json::from_slice(&body)
        {
            stats.push((pod.clone(), s));
        }
    }
    stats
}

async fn print_waterfalls(store: &TraceStore, outcomes: &[traffic::Outcome]) {
    let picked = store.pick(outcomes, 3).await;
    println!(
        "\nTraces ({} complete so far, by plexusctl's receiver)",
        store.len().await
    );
    if picked.is_empty() {
        println!("  no trace of the demo's requests arrived (does this proxy build export spans?)");
    }
    for (caption, trace) in picked {
        println!("\n{caption}: trace {}", trace.trace_id);
        print!(
            "{}",
            plexus_traces::render_waterfall(&trace, WATERFALL_WIDTH)
        );
    }
}

/// Stops the trace collector when the demo returns, whichever way.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontend_app_calls_the_backend_service_through_its_outbound_listener() {
        let topology = Topology::demo();
        let command = app_command(Path::new("xtask"), &topology, topology.frontend());
        let args: Vec<String> = command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.starts_with("demo-app --role frontend --listen 127.0.10.10:8080"),
            "{joined}"
        );
        assert!(
            joined.contains("--upstream-proxy 127.0.10.10:15001"),
            "{joined}"
        );
        assert!(
            joined.contains("--upstream-host backend.demo.svc.cluster.local:8080"),
            "{joined}"
        );
    }

    #[test]
    fn a_busy_address_is_reported_by_name() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("ephemeral port");
        let addr = held.local_addr().expect("bound");
        let message = format!("{:#}", check_addresses_free([addr]).expect_err("busy"));
        assert!(message.contains(&addr.to_string()), "{message}");
    }
}
