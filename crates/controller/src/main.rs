//! `plexus-controller`: discovery feed, Destination and Identity APIs on
//! :8090, the injector webhook on :8443, admin on :9990.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use plexus_controller::admission::{Injector, ca_bundle, service_dns_names};
use plexus_controller::grpc::{self, GrpcTransport};
use plexus_controller::identity::ca_store::DEFAULT_CA_LIFETIME;
use plexus_controller::identity::{
    BootstrapTokens, CaSettings, IdentityService, TokenAuthority, TokenReviewer, ca_from_dir,
    ca_from_secret, controller_server_config, webhook_server_config,
};
use plexus_controller::leader::{Election, Leadership, holder_identity};
use plexus_controller::telemetry::{TraceSettings, Tracing};
use plexus_controller::{admin::Admin, destination::DestinationService, metrics::Metrics};
use plexus_core::KeepAlive;
use plexus_discovery::feed::{self, FeedSource, Readiness};
use plexus_discovery::index::{
    DEFAULT_CLUSTER_DOMAIN, DEFAULT_TRUST_DOMAIN, Index, IndexConfig, SharedIndex,
};
use plexus_identity::{Ca, SpiffeId};
use plexus_inject::{ControlPlane, InjectConfig};
use tokio::net::TcpListener;
use tonic::service::Routes;

const DEFAULT_WEBHOOK_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8443);

#[derive(Debug, Parser)]
#[command(
    name = "plexus-controller",
    version,
    about = "The Plexus control plane"
)]
struct Args {
    /// Where objects come from: `kubernetes` (API server watches) or `file:PATH`
    /// (a multi-document YAML file, re-read when it changes; a version that is
    /// empty or not YAML is refused and the last objects stay: to remove them
    /// all, write `apiVersion: v1`, `kind: List`, `items: []`).
    #[arg(long, env = "PLEXUS_FEED", default_value = "kubernetes")]
    feed: FeedSource,
    /// Destination and Identity gRPC APIs.
    #[arg(long, env = "PLEXUS_GRPC_ADDR", default_value = "0.0.0.0:8090")]
    grpc_addr: SocketAddr,
    /// The injector webhook (HTTPS). Default 0.0.0.0:8443 with `--feed kubernetes`;
    /// with `--feed file:` it is served only when given.
    #[arg(long, env = "PLEXUS_WEBHOOK_ADDR")]
    webhook_addr: Option<SocketAddr>,
    /// Run without the injector webhook (then `--grpc-plaintext` may be
    /// combined with `--feed kubernetes`).
    #[arg(long, env = "PLEXUS_NO_WEBHOOK", conflicts_with = "webhook_addr")]
    no_webhook: bool,
    /// More names for the webhook's serving certificate, besides the
    /// `--webhook-service` names (comma-separated).
    #[arg(long, env = "PLEXUS_WEBHOOK_DNS_NAMES", value_delimiter = ',')]
    webhook_dns_names: Vec<String>,
    /// IP addresses for the webhook's serving certificate, for a webhook
    /// registered by `url:` to an address (comma-separated).
    #[arg(long, env = "PLEXUS_WEBHOOK_IPS", value_delimiter = ',')]
    webhook_ips: Vec<IpAddr>,
    /// Injection defaults (the chart's `inject.yaml`); built-in defaults when absent.
    #[arg(long, env = "PLEXUS_INJECT_CONFIG")]
    inject_config: Option<PathBuf>,
    /// The MutatingWebhookConfiguration whose `caBundle` the controller keeps
    /// current; no other is read or patched (the chart names it per release).
    #[arg(
        long,
        env = "PLEXUS_WEBHOOK_CONFIGURATION",
        default_value = "plexus-injector"
    )]
    webhook_configuration: String,
    /// The Service in front of the webhook: its DNS names go in the serving certificate.
    #[arg(
        long,
        env = "PLEXUS_WEBHOOK_SERVICE",
        default_value = "plexus-injector"
    )]
    webhook_service: String,
    /// `/live`, `/ready`, `/metrics`, `/status`.
    #[arg(long, env = "PLEXUS_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    admin_addr: SocketAddr,
    /// SPIFFE trust domain of workload identities.
    #[arg(long, env = "PLEXUS_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// DNS domain of the cluster's Services (`name.namespace.svc.<domain>`).
    #[arg(long, env = "PLEXUS_CLUSTER_DOMAIN", default_value = DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// Serve only the Destination API, without TLS (tests, local runs without
    /// a CA). The Identity API is then not served: tokens and CSRs never cross
    /// the network in clear.
    #[arg(long, env = "PLEXUS_GRPC_PLAINTEXT")]
    grpc_plaintext: bool,
    /// The controller's namespace: the CA Secret `plexus-ca` lives there, and
    /// it names the controller's own identity.
    #[arg(long, env = "PLEXUS_NAMESPACE", default_value = "plexus")]
    namespace: String,
    /// The controller's service account, for its own SPIFFE ID.
    #[arg(
        long,
        env = "PLEXUS_SERVICE_ACCOUNT",
        default_value = "plexus-controller"
    )]
    service_account: String,
    /// With `--feed file:`: the CA's directory (`tls.crt`, `tls.key`, `ca.crt`),
    /// created with a new CA if empty.
    #[arg(long, env = "PLEXUS_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// With `--feed file:`: where bootstrap tokens are written, one per meshed
    /// pod identity of the file (`<namespace>.<service-account>.token`).
    #[arg(long, env = "PLEXUS_BOOTSTRAP_TOKEN_DIR")]
    bootstrap_token_dir: Option<PathBuf>,
    /// The coordination.k8s.io Lease (in `--namespace`) whose holder writes to
    /// the API server: route status, the webhook's caBundle, the CA Secret.
    #[arg(long, env = "PLEXUS_LEASE_NAME", default_value = "plexus-controller")]
    lease_name: String,
    /// Seconds a Lease holder that stopped renewing keeps it (at least 2).
    #[arg(long, env = "PLEXUS_LEASE_DURATION", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(2..))]
    lease_duration: u64,
    /// This replica's holder identity in the Lease (the chart sets the pod's
    /// name); the host name when unset.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// OTLP/gRPC collector for the controller's own spans (pushes, certificate
    /// signing, feed loads), e.g. `http://otel-collector:4317`; unset: no spans.
    #[arg(long, env = "PLEXUS_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // The OTLP client lives on the runtime, so tracing starts inside it.
    let settings = TraceSettings::from_env(args.otlp_endpoint.clone());
    let tracing = {
        let _inside = runtime.enter();
        Tracing::install(&settings)?
    };
    let result = runtime.block_on(run(args));
    // After the servers stopped, with the runtime still alive for the exporter.
    tracing.shutdown();
    result
}

/// The Identity API and the TLS it is served with.
struct Identity {
    /// Also signs the webhook's certificate; its trust anchor goes to proxies.
    ca: Arc<Ca>,
    service: IdentityService,
    transport: GrpcTransport,
    /// Outside a cluster: tokens to issue for the file's workloads.
    bootstrap: Option<Arc<BootstrapTokens>>,
}

async fn run(args: Args) -> anyhow::Result<()> {
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
    let webhook_addr = match (&args.feed, args.webhook_addr) {
        _ if args.no_webhook => None,
        (_, Some(addr)) => Some(addr),
        (FeedSource::Kubernetes, None) => Some(DEFAULT_WEBHOOK_ADDR),
        (FeedSource::File(_), None) => None,
    };
    let webhook_listener = match webhook_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("--webhook-addr {addr}"))?,
        ),
        None => None,
    };
    // The bound addresses, not the flags: port 0 picks a free port (tests).
    tracing::info!(
        grpc = %grpc_listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        webhook = %match &webhook_listener {
            Some(listener) => listener.local_addr()?.to_string(),
            None => "off".to_string(),
        },
        feed = ?args.feed,
        "plexus-controller listening"
    );

    let client = match args.feed {
        FeedSource::Kubernetes => Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (--feed kubernetes)")?,
        ),
        FeedSource::File(_) => None,
    };
    let leadership = match &client {
        Some(client) => {
            let election = Election {
                namespace: args.namespace.clone(),
                lease: args.lease_name.clone(),
                holder: holder_identity(args.pod_name.clone()),
                duration: std::time::Duration::from_secs(args.lease_duration),
            };
            tracing::info!(lease = %election.lease, holder = %election.holder, "joining the leader election");
            Leadership::elect(client.clone(), &election)
                .await
                .with_context(|| format!("the leader election on Lease {}", election.lease))?
        }
        None => Leadership::sole(),
    };
    let identity = if args.grpc_plaintext {
        tracing::warn!(
            "--grpc-plaintext: serving the Destination API without TLS and no Identity API"
        );
        None
    } else {
        Some(identity(&args, client.clone(), &leadership).await?)
    };

    match (webhook_listener, &identity) {
        (Some(listener), Some(identity)) => start_injector(
            &args,
            listener,
            identity.ca.clone(),
            index.clone(),
            client.clone(),
            &leadership,
        )?,
        (Some(_), None) => anyhow::bail!(
            "the injector webhook needs the CA: drop --grpc-plaintext, or add --no-webhook"
        ),
        (None, _) => {}
    }

    let feed_task = match (&args.feed, client) {
        (FeedSource::File(path), _) => {
            let bootstrap = identity.as_ref().and_then(|i| i.bootstrap.clone());
            let on_load = move |index: &Index| issue_bootstrap_tokens(bootstrap.as_deref(), index);
            tokio::spawn(feed::file::run(
                path.clone(),
                index.clone(),
                ready.clone(),
                on_load,
            ))
        }
        (FeedSource::Kubernetes, Some(client)) => tokio::spawn(feed::kubernetes::run(
            client,
            index.clone(),
            ready.clone(),
            leadership.receiver(),
        )),
        (FeedSource::Kubernetes, None) => anyhow::bail!("no Kubernetes client"),
    };
    tokio::spawn(sweep_idle_watches(index.clone()));
    let admin = Admin {
        index: index.clone(),
        metrics: metrics.clone(),
        ready,
        leadership,
    };
    tokio::spawn(admin.serve(admin_listener));

    let mut routes = Routes::new(DestinationService::new(index, metrics).into_server());
    let transport = match identity {
        Some(identity) => {
            routes = routes.add_service(identity.service.into_server());
            identity.transport
        }
        None => GrpcTransport::Plaintext,
    };
    let grpc = grpc::serve(grpc_listener, routes, transport, KeepAlive::CONTROL_PLANE);

    // Kubernetes stops a pod with SIGTERM; a terminal with SIGINT.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("watching SIGTERM")?;
    tokio::select! {
        result = grpc => result.context("gRPC server")?,
        _ = feed_task => anyhow::bail!("the feed stopped"),
        signal = tokio::signal::ctrl_c() => signal.context("waiting for a signal")?,
        _ = terminate.recv() => {}
    }
    tracing::info!("plexus-controller stopping");
    Ok(())
}

/// The CA (Secret `plexus-ca` in a cluster, `--ca-dir` outside), how tokens
/// are checked (TokenReview in a cluster, bootstrap tokens outside), and the
/// controller's own certificate for TLS on the gRPC port.
async fn identity(
    args: &Args,
    client: Option<kube::Client>,
    leadership: &Leadership,
) -> anyhow::Result<Identity> {
    let settings = CaSettings {
        trust_domain: args.trust_domain.clone(),
        lifetime: DEFAULT_CA_LIFETIME,
        user_root: None,
    };
    let (ca, tokens, bootstrap): (_, Arc<dyn TokenAuthority>, _) = match client {
        Some(client) => {
            let ca = ca_from_secret(
                client.clone(),
                &args.namespace,
                &settings,
                leadership.receiver(),
            )
            .await
            .context("loading the CA")?;
            (
                ca,
                Arc::new(TokenReviewer::new(client, &args.trust_domain)),
                None,
            )
        }
        None => {
            let (Some(ca_dir), Some(token_dir)) = (&args.ca_dir, &args.bootstrap_token_dir) else {
                anyhow::bail!(
                    "--feed file: needs --ca-dir and --bootstrap-token-dir for the Identity API \
                     (or --grpc-plaintext to serve the Destination API alone)"
                );
            };
            let ca = ca_from_dir(ca_dir, &settings).context("--ca-dir")?;
            let tokens = Arc::new(
                BootstrapTokens::open(token_dir, &args.trust_domain)
                    .with_context(|| format!("--bootstrap-token-dir {}", token_dir.display()))?,
            );
            (ca, tokens.clone() as Arc<dyn TokenAuthority>, Some(tokens))
        }
    };
    let ca = Arc::new(ca);
    let own = SpiffeId::new(&args.trust_domain, &args.namespace, &args.service_account)
        .context("--trust-domain, --namespace and --service-account must form a SPIFFE ID")?;
    let tls =
        controller_server_config(ca.clone(), own).context("the controller's TLS certificate")?;
    Ok(Identity {
        ca: ca.clone(),
        service: IdentityService::new(ca, tokens),
        transport: GrpcTransport::Tls(tls),
        bootstrap,
    })
}

/// The webhook on `listener` with a certificate from `ca` for the injector
/// Service's names (and `--webhook-dns-names`, `--webhook-ips`) and, in a
/// cluster and while leading, the watch that keeps the webhook
/// configuration's `caBundle` equal to `ca`'s trust anchor.
fn start_injector(
    args: &Args,
    listener: TcpListener,
    ca: Arc<Ca>,
    index: SharedIndex,
    client: Option<kube::Client>,
    leadership: &Leadership,
) -> anyhow::Result<()> {
    let mut config = match &args.inject_config {
        Some(path) => InjectConfig::load(path)?,
        None => InjectConfig::for_control_plane(&ControlPlane {
            namespace: &args.namespace,
            service_account: &args.service_account,
            trust_domain: &args.trust_domain,
            cluster_domain: &args.cluster_domain,
        }),
    };
    config.trust_anchors = ca.trust_anchor_pem().to_owned();
    let mut names = service_dns_names(&args.webhook_service, &args.namespace, &args.cluster_domain);
    names.extend(args.webhook_dns_names.iter().cloned());
    names.extend(args.webhook_ips.iter().map(IpAddr::to_string));
    let tls = webhook_server_config(ca.clone(), names).context("the webhook's certificate")?;
    tokio::spawn(Injector { index, config }.serve(listener, tls));
    if let Some(client) = client {
        let (name, bundle) = (
            args.webhook_configuration.clone(),
            ca.trust_anchor_pem().to_owned(),
        );
        tokio::spawn(feed::leading::while_leading(
            leadership.receiver(),
            "webhook caBundle",
            move || ca_bundle::keep_current(client.clone(), name.clone(), bundle.clone()),
        ));
    }
    Ok(())
}

/// Outside a cluster, every meshed pod of the file gets a bootstrap token.
fn issue_bootstrap_tokens(tokens: Option<&BootstrapTokens>, index: &Index) {
    let Some(tokens) = tokens else { return };
    for id in index.meshed_identities() {
        let issued = id
            .parse::<SpiffeId>()
            .map_err(|e| e.to_string())
            .and_then(|spiffe| tokens.ensure(&spiffe).map_err(|e| e.to_string()));
        if let Err(error) = issued {
            tracing::warn!(identity = %id, %error, "bootstrap token not issued");
        }
    }
}

/// Watches are dropped lazily when a change reaches them; this reclaims the
/// ones no change reaches, and hands what they held back to the system (a
/// burst of 10,000 watches otherwise kept the controller ~90 MiB above its
/// baseline for good: glibc's free memory, `plexus_core::memory`).
async fn sweep_idle_watches(index: SharedIndex) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
    let mut trim = plexus_core::memory::TrimAfterSweeps::default();
    loop {
        every.tick().await;
        let released = index.lock().sweep_watches();
        trim.swept(released);
    }
}
