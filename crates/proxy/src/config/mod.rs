//! Every `PLEXUS_*` environment variable the proxy reads, parsed in one
//! place: no other module reads the environment.
//!
//! Variables are read through [`Env`], so tests pass a map instead of
//! mutating the process environment. Every bad value is reported at once
//! (each naming the variable, its value and what was expected), and the
//! proxy refuses to start; a set `PLEXUS_*` variable the proxy does not know
//! is only warned about, with the known name it is nearest to.

mod env;
mod identity;
mod inbound_policy;
mod reader;
mod telemetry;
mod unknown;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use plexus_api::v1::ServerPolicy;

pub use env::{Env, ProcessEnv};
pub use unknown::UnknownVariable;

use crate::ports::PortSet;
use crate::telemetry::TelemetryConfig;
use crate::tls::IdentitySettings;
use reader::Reader;

/// One variable with a value the proxy cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is invalid: expected {expected}")]
pub struct BadVariable {
    pub name: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Every bad variable of an environment, in the order they are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub bad: Vec<BadVariable>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.bad.as_slice() {
            [one] => write!(f, "{one}"),
            all => {
                write!(f, "{} variables are invalid:", all.len())?;
                all.iter().try_for_each(|bad| write!(f, "\n  {bad}"))
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every variable the proxy knows. A set `PLEXUS_*` variable missing here is
/// reported as unknown.
const VARIABLES: &[&str] = &[
    "PLEXUS_OUTBOUND_ADDR",
    "PLEXUS_INBOUND_ADDR",
    "PLEXUS_ADMIN_ADDR",
    "PLEXUS_STATIC_CONFIG",
    "PLEXUS_CONTROLLER_ADDR",
    "PLEXUS_INBOUND_APP_ADDR",
    "PLEXUS_DETECT_TIMEOUT_MS",
    "PLEXUS_OPAQUE_PORTS",
    "PLEXUS_INBOUND_OPAQUE_PORTS",
    "PLEXUS_DRAIN_TIMEOUT_MS",
    "PLEXUS_IDLE_TIMEOUT_MS",
    "PLEXUS_DESTINATION_IDLE_TIMEOUT_MS",
    "PLEXUS_CONNECT_TIMEOUT_MS",
    "PLEXUS_MAX_HEADER_BYTES",
    "PLEXUS_REQUEST_HEAD_TIMEOUT_MS",
    "PLEXUS_MAX_INBOUND_CONNECTIONS",
    "PLEXUS_MAX_OUTBOUND_CONNECTIONS",
    "PLEXUS_SHUTDOWN_ENDPOINT",
    "PLEXUS_LOG",
    "PLEXUS_WORKER_THREADS",
    "PLEXUS_INBOUND_MTLS_MODE",
    "PLEXUS_INBOUND_ALLOWED_IDENTITIES",
    "PLEXUS_IDENTITY",
    "PLEXUS_IDENTITY_TOKEN_FILE",
    "PLEXUS_IDENTITY_TRUST_ANCHORS",
    "PLEXUS_IDENTITY_ADDR",
    "PLEXUS_CONTROLLER_IDENTITY",
    "PLEXUS_OTLP_ENDPOINT",
    "PLEXUS_TRACE_SAMPLING",
    "PLEXUS_WORKLOAD",
    "PLEXUS_POD_NAME",
    "PLEXUS_POD_NAMESPACE",
    "PLEXUS_SERVICE_ACCOUNT",
    // Set on the proxy container by the injector (the pod's IP, for the
    // user's own use); the proxy reads nothing from it, but it is no typo.
    "PLEXUS_POD_IP",
];

/// The proxy's settings, read once at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Outbound listener (the app's redirected or direct outbound traffic).
    pub outbound_addr: SocketAddr,
    /// Inbound listener (traffic to the app, redirected by iptables).
    pub inbound_addr: SocketAddr,
    /// Admin HTTP server: /live, /ready, /metrics, /config, /shutdown.
    pub admin_addr: SocketAddr,
    /// `PLEXUS_SHUTDOWN_ENDPOINT=enabled`: `POST /shutdown` from loopback
    /// drains the proxy (a Job's last step); off by default, refused then.
    pub shutdown_endpoint: bool,
    /// YAML file of destinations used until a controller feeds them.
    pub static_config: Option<PathBuf>,
    /// Local mode: where inbound forwards a connection that was not redirected.
    pub inbound_app_addr: Option<SocketAddr>,
    /// How long protocol detection waits for the client's first bytes.
    pub detect_timeout: Duration,
    /// Outbound destination ports never sniffed (server-speaks-first protocols).
    pub opaque_ports: PortSet,
    /// Inbound (application) ports never sniffed.
    pub inbound_opaque_ports: PortSet,
    /// How long a drain lets in-flight requests and connections finish.
    pub drain_timeout: Duration,
    /// An opaque TCP (or upgraded) connection with no traffic either way, or
    /// an HTTP/1 connection with no request, for this long is closed.
    pub idle_timeout: Duration,
    /// A destination with no connection and no request for this long loses
    /// its controller watch, its `Logical`, its connection pools and its
    /// metric series (see `crate::destinations`).
    pub destination_idle_timeout: Duration,
    /// Connecting to an endpoint or an original destination gives up after this.
    pub connect_timeout: Duration,
    /// Largest request head (HTTP/1) or header list (HTTP/2) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// A request head started (HTTP/1), or a first request (HTTP/2), not
    /// received within this closes the connection: slow-loris clients.
    pub request_head_timeout: Duration,
    /// Connections served at once by each listener; beyond, new ones are
    /// accepted and closed at once (shed).
    pub max_connections: ConnectionCaps,
    /// `tracing` filter, e.g. `info,plexus_proxy=debug`.
    pub log: String,
    /// Data-plane threads: 1 (default, like Linkerd's one core) runs a
    /// single-threaded runtime; 0 means one per CPU.
    pub worker_threads: usize,
    /// `PLEXUS_CONTROLLER_ADDR` (`host:port`): the Destination API, the
    /// source of destinations and of the inbound policy. Exclusive with
    /// `PLEXUS_STATIC_CONFIG`.
    pub controller_addr: Option<String>,
    /// This workload's identity; `None` (no `PLEXUS_IDENTITY`): no mTLS.
    pub identity: Option<IdentitySettings>,
    /// The inbound policy until (or without) the controller's:
    /// `PLEXUS_INBOUND_MTLS_MODE`, `PLEXUS_INBOUND_ALLOWED_IDENTITIES`.
    pub inbound_policy: ServerPolicy,
    /// Who the proxy serves (`PLEXUS_POD_NAMESPACE`, `PLEXUS_POD_NAME`,
    /// `PLEXUS_SERVICE_ACCOUNT`): the controller's watches name them.
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub service_account: Option<String>,
    /// Tracing: `PLEXUS_OTLP_ENDPOINT`, `PLEXUS_TRACE_SAMPLING` and the span resource.
    pub telemetry: TelemetryConfig,
    /// Set `PLEXUS_*` variables the proxy does not read (typos, most
    /// likely): warned about at start, not refused.
    pub unknown_variables: Vec<UnknownVariable>,
}

/// The listeners' connection caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub inbound: usize,
    pub outbound: usize,
}

/// The default cap of each listener: far above one pod's real load (an app
/// pool is tens of connections, a mesh peer one HTTP/2 connection), and
/// well within a container's file limit (each proxied connection holds two
/// descriptors) and memory (tens of KiB of buffers a connection).
const MAX_CONNECTIONS: usize = 10_000;

/// Ports of server-speaks-first protocols (SMTP, MySQL, PostgreSQL, Redis,
/// Elasticsearch transport, memcached, …), as Linkerd ships them.
const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

const ADDR: &str = "ip:port";
const PORTS: &str = "comma-separated ports, e.g. 3306,5432";
const CONTROLLER_ADDR: &str = "host:port of the controller";

impl Config {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let mut reader = Reader::new(env);
        let r = &mut reader;
        let static_config: Option<PathBuf> = r.optional("PLEXUS_STATIC_CONFIG", "a file path");
        let controller_addr = controller_addr(r, static_config.is_some());
        let any = Ipv4Addr::UNSPECIFIED;
        let config = Self {
            outbound_addr: r.parse_or(
                "PLEXUS_OUTBOUND_ADDR",
                SocketAddr::from((Ipv4Addr::LOCALHOST, 15001)),
                ADDR,
            ),
            inbound_addr: r.parse_or("PLEXUS_INBOUND_ADDR", SocketAddr::from((any, 15006)), ADDR),
            admin_addr: r.parse_or("PLEXUS_ADMIN_ADDR", SocketAddr::from((any, 15020)), ADDR),
            shutdown_endpoint: shutdown_endpoint(r),
            static_config,
            inbound_app_addr: r.optional("PLEXUS_INBOUND_APP_ADDR", ADDR),
            detect_timeout: r.millis_or("PLEXUS_DETECT_TIMEOUT_MS", 5_000),
            opaque_ports: r.parse_or("PLEXUS_OPAQUE_PORTS", DEFAULT_OPAQUE_PORTS.into(), PORTS),
            inbound_opaque_ports: r.parse_or(
                "PLEXUS_INBOUND_OPAQUE_PORTS",
                DEFAULT_OPAQUE_PORTS.into(),
                PORTS,
            ),
            drain_timeout: r.millis_or("PLEXUS_DRAIN_TIMEOUT_MS", 30_000),
            idle_timeout: r.millis_or("PLEXUS_IDLE_TIMEOUT_MS", 3_600_000),
            destination_idle_timeout: r.millis_or("PLEXUS_DESTINATION_IDLE_TIMEOUT_MS", 30_000),
            connect_timeout: r.millis_or("PLEXUS_CONNECT_TIMEOUT_MS", 1_000),
            max_header_bytes: r.parse_or("PLEXUS_MAX_HEADER_BYTES", 65_536, "a byte count"),
            request_head_timeout: r.millis_or("PLEXUS_REQUEST_HEAD_TIMEOUT_MS", 10_000),
            max_connections: ConnectionCaps {
                inbound: r.count_or("PLEXUS_MAX_INBOUND_CONNECTIONS", MAX_CONNECTIONS),
                outbound: r.count_or("PLEXUS_MAX_OUTBOUND_CONNECTIONS", MAX_CONNECTIONS),
            },
            log: log_filter(r),
            worker_threads: r.parse_or(
                "PLEXUS_WORKER_THREADS",
                1,
                "a thread count (0: one per CPU)",
            ),
            controller_addr,
            identity: identity::read(r),
            inbound_policy: inbound_policy::read(r),
            pod_namespace: r.optional("PLEXUS_POD_NAMESPACE", "a namespace"),
            pod_name: r.optional("PLEXUS_POD_NAME", "a pod name"),
            service_account: r.optional("PLEXUS_SERVICE_ACCOUNT", "a service account"),
            telemetry: telemetry::read(r),
            unknown_variables: unknown::unknown_variables(env),
        };
        reader.finish()?;
        Ok(config)
    }

    /// The environment of this process.
    pub fn from_process_env() -> Result<Self, ConfigError> {
        Self::from_env(&ProcessEnv)
    }
}

/// `PLEXUS_CONTROLLER_ADDR`: `host:port`, and only without a static file.
fn controller_addr(r: &mut Reader, static_config: bool) -> Option<String> {
    let addr: String = r.optional("PLEXUS_CONTROLLER_ADDR", CONTROLLER_ADDR)?;
    if static_config {
        r.bad(
            "PLEXUS_CONTROLLER_ADDR",
            addr,
            "unset while PLEXUS_STATIC_CONFIG is set: destinations come from one of the two",
        );
        return None;
    }
    controller_host_port(r, "PLEXUS_CONTROLLER_ADDR", addr)
}

/// `addr` (the value of `name`) when it is the controller's `host:port`;
/// else recorded as bad.
fn controller_host_port(r: &mut Reader, name: &'static str, addr: String) -> Option<String> {
    if is_host_port(&addr) {
        Some(addr)
    } else {
        r.bad(name, addr, CONTROLLER_ADDR);
        None
    }
}

/// `PLEXUS_SHUTDOWN_ENDPOINT`: `enabled` or `disabled` (the default), the
/// words of the `plexus.io/shutdown-endpoint` annotation that sets it.
fn shutdown_endpoint(r: &mut Reader) -> bool {
    const NAME: &str = "PLEXUS_SHUTDOWN_ENDPOINT";
    match r.present(NAME).as_deref() {
        None | Some("disabled") => false,
        Some("enabled") => true,
        Some(other) => {
            r.bad(NAME, other.to_owned(), "enabled or disabled");
            false
        }
    }
}

/// `PLEXUS_LOG`, checked here so a bad filter is reported with the rest.
fn log_filter(r: &mut Reader) -> String {
    let filter: String = r.parse_or("PLEXUS_LOG", "info".to_owned(), "a tracing filter");
    if tracing_subscriber::EnvFilter::try_new(&filter).is_err() {
        r.bad("PLEXUS_LOG", filter.clone(), "a tracing filter");
    }
    filter
}

/// `host:port` with a non-empty host and a valid port.
fn is_host_port(value: &str) -> bool {
    value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests;
