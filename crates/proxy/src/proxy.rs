//! The proxy as a library: bind the listeners and the admin server, serve,
//! drain on request. `main.rs` and in-process tests both start it here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::accept::Listener;
use crate::admin::{self, Admin};
use crate::config::Config;
use crate::connect::EndpointClient;
use crate::control::Controller;
use crate::destinations::{DestinationSource, Destinations, FixedDestinations};
use crate::drain;
use crate::http::HttpShared;
use crate::inbound::{self, Inbound};
use crate::logical::LogicalMetrics;
use crate::metrics::ProxyMetrics;
use crate::orig_dst::{self, OriginalDst};
use crate::outbound::{Outbound, Targets, release_idle_destinations};
use crate::static_config::{self, StaticConfigError};
use crate::telemetry::{Telemetry, TelemetryError};
use crate::tls::{IdentityStartError, MeshTls, TlsMetrics};
use crate::transport::HttpEndpointClient;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding the {listener} listener on {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("PLEXUS_STATIC_CONFIG: {0}")]
    StaticConfig(#[from] StaticConfigError),
    #[error("starting the admin thread: {0}")]
    Admin(std::io::Error),
    #[error("tracing: {0}")]
    Telemetry(#[from] TelemetryError),
    #[error("identity: {0}")]
    Identity(#[from] IdentityStartError),
    #[error("PLEXUS_CONTROLLER_ADDR: {0}")]
    Controller(#[from] tonic::transport::Error),
}

/// How long an exit waits for the last spans to be exported: a dead
/// collector must not hold a terminating pod for long.
const SPAN_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Proxy;

impl Proxy {
    /// Starts a proxy with the defaults: destinations from the static file
    /// (if any), original destinations from the kernel.
    pub async fn bind(config: Config) -> Result<RunningProxy, StartError> {
        Self::builder(config).bind().await
    }

    pub fn builder(config: Config) -> ProxyBuilder {
        ProxyBuilder {
            config,
            source: None,
            original_dst: orig_dst::kernel(),
            client: None,
        }
    }
}

/// Options beyond the environment: what tests and later sources replace.
pub struct ProxyBuilder {
    config: Config,
    source: Option<Arc<dyn DestinationSource>>,
    original_dst: OriginalDst,
    client: Option<Arc<dyn EndpointClient>>,
}

impl ProxyBuilder {
    /// Where targets come from instead of `PLEXUS_STATIC_CONFIG` (the controller's watch).
    pub fn destinations(mut self, source: Arc<dyn DestinationSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// How a redirected connection's original destination is found (tests fake redirection).
    pub fn original_dst(mut self, original_dst: OriginalDst) -> Self {
        self.original_dst = original_dst;
        self
    }

    /// The transport used for every request (default: pooled HTTP/1 and HTTP/2).
    pub fn endpoint_client(mut self, client: Arc<dyn EndpointClient>) -> Self {
        self.client = Some(client);
        self
    }

    pub async fn bind(self) -> Result<RunningProxy, StartError> {
        let config = self.config;
        for unknown in &config.unknown_variables {
            tracing::warn!("{unknown}");
        }
        let mesh = config.identity.as_ref().map(MeshTls::start).transpose()?;
        let controller = Controller::connect(&config, mesh.as_ref())?;
        let source = match (self.source, &controller, &config.static_config) {
            (Some(source), _, _) => source,
            (None, Some(controller), _) => controller.destinations.clone(),
            (None, None, Some(path)) => static_config::load_and_follow(path)?,
            (None, None, None) => Arc::new(FixedDestinations::new(Vec::new())),
        };
        let destinations = Destinations::new(source);
        let policy = match &controller {
            Some(controller) => controller.policy.clone(),
            None => inbound::policy::fixed(&config.inbound_policy),
        };

        let mut registry = Registry::default();
        let tls_metrics = TlsMetrics::register(&mut registry);
        if let Some(mesh) = &mesh {
            tls_metrics.follow_expiry(mesh);
        }
        let client = self.client.unwrap_or_else(|| match &mesh {
            Some(mesh) => Arc::new(HttpEndpointClient::with_mesh(
                config.connect_timeout,
                mesh.clone(),
                tls_metrics.clone(),
            )),
            None => Arc::new(HttpEndpointClient::new(config.connect_timeout)),
        });
        let metrics = ProxyMetrics::register(&mut registry);
        let logical_metrics = LogicalMetrics::register(&mut registry);
        let telemetry = Telemetry::new(&config.telemetry, &mut registry)?;

        let (outbound, outbound_addr) = bind("outbound", config.outbound_addr).await?;
        let (inbound, inbound_addr) = bind("inbound", config.inbound_addr).await?;
        // A std listener: it moves to the admin thread's own runtime.
        let (admin_listener, admin_addr) = bind_admin(config.admin_addr)?;

        let targets = Arc::new(Targets::new(
            destinations.clone(),
            client.clone(),
            logical_metrics,
            metrics.clone(),
        ));
        tokio::spawn(release_idle_destinations(
            Arc::downgrade(&targets),
            config.destination_idle_timeout,
        ));
        let http = Arc::new(HttpShared {
            server: HttpShared::server(config.max_header_bytes, config.idle_timeout),
            max_header_bytes: config.max_header_bytes,
            client,
            metrics,
            idle_timeout: config.idle_timeout,
            request_head_timeout: config.request_head_timeout,
            telemetry: telemetry.clone(),
        });
        let outbound_path = Arc::new(Outbound {
            http: http.clone(),
            targets,
            original_dst: self.original_dst.clone(),
            opaque_ports: config.opaque_ports.clone(),
            detect_timeout: config.detect_timeout,
            connect_timeout: config.connect_timeout,
            mesh: mesh.clone(),
            tls_metrics: tls_metrics.clone(),
        });
        let inbound_path = Arc::new(Inbound {
            http,
            original_dst: self.original_dst,
            opaque_ports: config.inbound_opaque_ports.clone(),
            detect_timeout: config.detect_timeout,
            connect_timeout: config.connect_timeout,
            app_addr: config.inbound_app_addr,
            policy,
            mesh: mesh.clone(),
            tls_metrics,
        });
        let (trigger, drain) = drain::channel();
        let caps = config.max_connections;
        let outbound = Listener::new(outbound, caps.outbound);
        let inbound = Listener::new(inbound, caps.inbound);
        tokio::spawn(outbound_path.run(outbound, drain.clone()));
        tokio::spawn(inbound_path.run(inbound, drain));

        let (shutdown, mut shutdown_requested) = watch::channel(false);
        let admin = Arc::new(Admin {
            ready: true.into(),
            registry,
            destinations,
            identity: mesh,
            shutdown: shutdown.clone(),
            shutdown_endpoint: config.shutdown_endpoint,
        });
        let (stopped_tx, stopped) = watch::channel(false);
        admin::spawn(
            admin_listener,
            admin.clone(),
            config.max_header_bytes,
            config.request_head_timeout,
            stopped,
        )
        .map_err(StartError::Admin)?;

        let drain_timeout = config.drain_timeout;
        let (drained_tx, drained) = watch::channel(None);
        tokio::spawn(async move {
            // The admin server keeps a sender, so only a request ends this wait.
            let _ = shutdown_requested.wait_for(|requested| *requested).await;
            admin.ready.store(false, Ordering::Release);
            tracing::info!(?drain_timeout, "draining");
            let in_time = trigger.drain(drain_timeout).await;
            tracing::info!(in_time, "drained");
            // Spans of the last requests, sent before the process may exit.
            let _ =
                tokio::task::spawn_blocking(move || telemetry.shutdown(SPAN_FLUSH_TIMEOUT)).await;
            stopped_tx.send_replace(true);
            drained_tx.send_replace(Some(in_time));
        });
        tracing::info!(%outbound_addr, %inbound_addr, %admin_addr, "proxy listening");
        Ok(RunningProxy {
            outbound_addr,
            inbound_addr,
            admin_addr,
            shutdown,
            drained,
        })
    }
}

async fn bind(
    listener: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Bind {
        listener,
        addr,
        source,
    };
    let bound = TcpListener::bind(addr).await.map_err(error)?;
    let local = bound.local_addr().map_err(error)?;
    Ok((bound, local))
}

fn bind_admin(addr: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Bind {
        listener: "admin",
        addr,
        source,
    };
    let bound = std::net::TcpListener::bind(addr).map_err(error)?;
    bound.set_nonblocking(true).map_err(error)?;
    let local = bound.local_addr().map_err(error)?;
    Ok((bound, local))
}

/// A proxy serving on its listeners.
pub struct RunningProxy {
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    drained: watch::Receiver<Option<bool>>,
}

impl RunningProxy {
    /// Starts draining (as SIGTERM or `POST /shutdown` do) and waits for it
    /// to end. Returns whether everything in flight finished in time.
    pub async fn shutdown(mut self) -> bool {
        self.shutdown.send_replace(true);
        self.drained().await
    }

    /// Waits until a drain started elsewhere (`POST /shutdown`) has ended.
    pub async fn drained(&mut self) -> bool {
        match self.drained.wait_for(Option::is_some).await {
            Ok(in_time) => in_time.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Starts draining without waiting.
    pub fn start_drain(&self) {
        self.shutdown.send_replace(true);
    }
}
