//! `plexus-controller`: discovery feed, Destination API on :8090, admin on :9990.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use plexus_controller::feed::{self, FeedSource, Readiness};
use plexus_controller::grpc::{self, GrpcTransport};
use plexus_controller::index::{
    DEFAULT_CLUSTER_DOMAIN, DEFAULT_TRUST_DOMAIN, IndexConfig, SharedIndex,
};
use plexus_controller::{admin::Admin, destination::DestinationService, metrics::Metrics};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "plexus-controller",
    version,
    about = "The Plexus control plane"
)]
struct Args {
    /// Where objects come from: `kubernetes` (API server watches) or `file:PATH`
    /// (a multi-document YAML file, re-read when it changes).
    #[arg(long, env = "PLEXUS_FEED", default_value = "kubernetes")]
    feed: FeedSource,
    /// Destination (and Identity) gRPC API.
    #[arg(long, env = "PLEXUS_GRPC_ADDR", default_value = "0.0.0.0:8090")]
    grpc_addr: SocketAddr,
    /// `/live`, `/ready`, `/metrics`, `/status`.
    #[arg(long, env = "PLEXUS_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    admin_addr: SocketAddr,
    /// SPIFFE trust domain of workload identities.
    #[arg(long, env = "PLEXUS_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// DNS domain of the cluster's Services (`name.namespace.svc.<domain>`).
    #[arg(long, env = "PLEXUS_CLUSTER_DOMAIN", default_value = DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// Serve the gRPC API without TLS. Until the Identity API is wired into this
    /// binary this is the only transport, and the flag must be given.
    #[arg(long, env = "PLEXUS_GRPC_PLAINTEXT")]
    grpc_plaintext: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PLEXUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.grpc_plaintext,
        "--grpc-plaintext (PLEXUS_GRPC_PLAINTEXT) is required: TLS serving is not wired into this binary yet"
    );
    let index = SharedIndex::new(IndexConfig {
        trust_domain: args.trust_domain.clone(),
        cluster_domain: args.cluster_domain.clone(),
    });
    let metrics = Arc::new(Metrics::new());
    let ready = Readiness::default();

    let grpc_listener = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("--grpc-addr {}", args.grpc_addr))?;
    let admin_listener = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("--admin-addr {}", args.admin_addr))?;
    tracing::info!(grpc = %args.grpc_addr, admin = %args.admin_addr, feed = ?args.feed, "plexus-controller starting");

    let feed_task = match args.feed {
        FeedSource::File(path) => tokio::spawn(feed::file::run(path, index.clone(), ready.clone())),
        FeedSource::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (--feed kubernetes)")?;
            tokio::spawn(feed::kubernetes::run(client, index.clone(), ready.clone()))
        }
    };
    tokio::spawn(sweep_idle_watches(index.clone()));
    let admin = Admin {
        index: index.clone(),
        metrics: metrics.clone(),
        ready,
    };
    tokio::spawn(admin.serve(admin_listener));

    let mut routes = tonic::service::Routes::default();
    routes = routes.add_service(DestinationService::new(index, metrics).into_server());
    let grpc = grpc::serve(grpc_listener, routes, GrpcTransport::Plaintext);

    tokio::select! {
        result = grpc => result.context("gRPC server")?,
        _ = feed_task => anyhow::bail!("the feed stopped"),
        signal = tokio::signal::ctrl_c() => signal.context("waiting for a signal")?,
    }
    tracing::info!("plexus-controller stopping");
    Ok(())
}

/// Watches are dropped lazily when a change reaches them; this reclaims the
/// ones no change reaches.
async fn sweep_idle_watches(index: SharedIndex) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        every.tick().await;
        index.lock().sweep_watches();
    }
}
