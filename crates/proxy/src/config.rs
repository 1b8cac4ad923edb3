//! Every `PLEXUS_*` environment variable the proxy reads, parsed in one place.
//!
//! Variables are read through [`Env`], so tests pass a map instead of
//! mutating the process environment. A bad value is an error that names the
//! variable and what was expected; the proxy refuses to start with it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use plexus_api::v1::ServerPolicy;

use crate::inbound_policy;
use crate::telemetry::TelemetryConfig;
use crate::tls::IdentitySettings;

/// Where variables come from: the process environment or a test's map.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        // A non-UTF-8 value is kept (lossily) so parsing reports it instead of ignoring it.
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).map(|v| (*v).to_owned())
    }
}

/// A variable with a value the proxy cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is invalid: expected {expected}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// The proxy's settings, read once at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Outbound listener (the app's redirected or direct outbound traffic).
    pub outbound_addr: SocketAddr,
    /// Inbound listener (traffic to the app, redirected by iptables).
    pub inbound_addr: SocketAddr,
    /// Admin HTTP server: /live, /ready, /metrics, /config, /shutdown.
    pub admin_addr: SocketAddr,
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
    /// Connecting to an endpoint or an original destination gives up after this.
    pub connect_timeout: Duration,
    /// Largest request head (HTTP/1) or header list (HTTP/2) accepted; larger gets 431.
    pub max_header_bytes: usize,
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
}

/// Ports of server-speaks-first protocols (SMTP, MySQL, PostgreSQL, Redis,
/// Elasticsearch transport, memcached, …), as Linkerd ships them.
const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

impl Config {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let v = Vars(env);
        let static_config: Option<PathBuf> = v.optional("PLEXUS_STATIC_CONFIG", "a file path")?;
        let controller_addr: Option<String> =
            v.optional("PLEXUS_CONTROLLER_ADDR", "host:port of the controller")?;
        if let Some(addr) = &controller_addr {
            if static_config.is_some() {
                return Err(ConfigError {
                    name: "PLEXUS_CONTROLLER_ADDR",
                    value: addr.clone(),
                    expected: "unset while PLEXUS_STATIC_CONFIG is set: \
                               destinations come from one of the two",
                });
            }
            if !is_host_port(addr) {
                return Err(ConfigError {
                    name: "PLEXUS_CONTROLLER_ADDR",
                    value: addr.clone(),
                    expected: "host:port of the controller",
                });
            }
        }
        Ok(Self {
            outbound_addr: v.parse("PLEXUS_OUTBOUND_ADDR", "127.0.0.1:15001", "ip:port")?,
            inbound_addr: v.parse("PLEXUS_INBOUND_ADDR", "0.0.0.0:15006", "ip:port")?,
            admin_addr: v.parse("PLEXUS_ADMIN_ADDR", "0.0.0.0:15020", "ip:port")?,
            static_config,
            inbound_app_addr: v.optional("PLEXUS_INBOUND_APP_ADDR", "ip:port")?,
            detect_timeout: v.millis("PLEXUS_DETECT_TIMEOUT_MS", 5_000)?,
            opaque_ports: v.parse("PLEXUS_OPAQUE_PORTS", DEFAULT_OPAQUE_PORTS, PORTS)?,
            inbound_opaque_ports: v.parse(
                "PLEXUS_INBOUND_OPAQUE_PORTS",
                DEFAULT_OPAQUE_PORTS,
                PORTS,
            )?,
            drain_timeout: v.millis("PLEXUS_DRAIN_TIMEOUT_MS", 30_000)?,
            idle_timeout: v.millis("PLEXUS_IDLE_TIMEOUT_MS", 3_600_000)?,
            connect_timeout: v.millis("PLEXUS_CONNECT_TIMEOUT_MS", 1_000)?,
            max_header_bytes: v.parse("PLEXUS_MAX_HEADER_BYTES", "65536", "a byte count")?,
            log: v.parse("PLEXUS_LOG", "info", "a tracing filter")?,
            worker_threads: v.parse(
                "PLEXUS_WORKER_THREADS",
                "1",
                "a thread count (0: one per CPU)",
            )?,
            controller_addr,
            identity: IdentitySettings::from_env(env)?,
            inbound_policy: inbound_policy::from_env(env)?,
            pod_namespace: v.optional("PLEXUS_POD_NAMESPACE", "a namespace")?,
            pod_name: v.optional("PLEXUS_POD_NAME", "a pod name")?,
            service_account: v.optional("PLEXUS_SERVICE_ACCOUNT", "a service account")?,
            telemetry: TelemetryConfig::from_env(env)?,
        })
    }

    /// The environment of this process.
    pub fn from_process_env() -> Result<Self, ConfigError> {
        Self::from_env(&ProcessEnv)
    }
}

const PORTS: &str = "comma-separated ports, e.g. 3306,5432";

/// `host:port` with a non-empty host and a valid port.
pub(crate) fn is_host_port(value: &str) -> bool {
    value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// Typed access to variables; one call per variable keeps `from_env` a list.
struct Vars<'a>(&'a dyn Env);

impl Vars<'_> {
    fn parse<T: FromStr>(
        &self,
        name: &'static str,
        default: &str,
        expected: &'static str,
    ) -> Result<T, ConfigError> {
        let value = self.0.get(name).unwrap_or_else(|| default.to_owned());
        value.trim().parse().map_err(|_| ConfigError {
            name,
            value,
            expected,
        })
    }

    fn optional<T: FromStr>(
        &self,
        name: &'static str,
        expected: &'static str,
    ) -> Result<Option<T>, ConfigError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(value) if value.trim().is_empty() => Ok(None),
            Some(value) => value.trim().parse().map(Some).map_err(|_| ConfigError {
                name,
                value,
                expected,
            }),
        }
    }

    fn millis(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        let ms: u64 = self.parse(name, &default.to_string(), "milliseconds (an integer)")?;
        Ok(Duration::from_millis(ms))
    }
}

/// A set of TCP ports, e.g. the opaque ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet(Vec<u16>);

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.0.binary_search(&port).is_ok()
    }
}

impl FromStr for PortSet {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut ports = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<u16>, _>>()?;
        ports.sort_unstable();
        ports.dedup();
        Ok(Self(ports))
    }
}

impl<const N: usize> From<[u16; N]> for PortSet {
    fn from(ports: [u16; N]) -> Self {
        ports.into_iter().collect()
    }
}

impl FromIterator<u16> for PortSet {
    fn from_iter<T: IntoIterator<Item = u16>>(iter: T) -> Self {
        let mut ports: Vec<u16> = iter.into_iter().collect();
        ports.sort_unstable();
        ports.dedup();
        Self(ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let config = Config::from_env(&HashMap::<&str, &str>::new()).unwrap();
        assert_eq!(config.outbound_addr, "127.0.0.1:15001".parse().unwrap());
        assert_eq!(config.inbound_addr, "0.0.0.0:15006".parse().unwrap());
        assert_eq!(config.admin_addr, "0.0.0.0:15020".parse().unwrap());
        assert!(config.opaque_ports.contains(3306));
        assert!(!config.opaque_ports.contains(80));
        assert_eq!(config.static_config, None);
        assert_eq!(config.inbound_app_addr, None);
    }

    #[test]
    fn values_are_read() {
        let env = HashMap::from([
            ("PLEXUS_OUTBOUND_ADDR", "127.0.0.1:0"),
            ("PLEXUS_INBOUND_APP_ADDR", "127.0.0.1:8080"),
            ("PLEXUS_OPAQUE_PORTS", " 9000 , 22,"),
            ("PLEXUS_DETECT_TIMEOUT_MS", "250"),
        ]);
        let config = Config::from_env(&env).unwrap();
        assert_eq!(config.outbound_addr.port(), 0);
        assert_eq!(
            config.inbound_app_addr,
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert!(config.opaque_ports.contains(22) && config.opaque_ports.contains(9000));
        assert!(!config.opaque_ports.contains(3306));
        assert_eq!(config.detect_timeout, Duration::from_millis(250));
    }

    #[test]
    fn a_bad_value_names_the_variable_and_what_was_expected() {
        let env = HashMap::from([("PLEXUS_DRAIN_TIMEOUT_MS", "5s")]);
        let err = Config::from_env(&env).unwrap_err();
        assert_eq!(err.name, "PLEXUS_DRAIN_TIMEOUT_MS");
        let message = err.to_string();
        assert!(message.contains("PLEXUS_DRAIN_TIMEOUT_MS"), "{message}");
        assert!(message.contains("milliseconds"), "{message}");

        let env = HashMap::from([("PLEXUS_OPAQUE_PORTS", "3306,70000")]);
        assert_eq!(
            Config::from_env(&env).unwrap_err().name,
            "PLEXUS_OPAQUE_PORTS"
        );
        let env = HashMap::from([("PLEXUS_INBOUND_APP_ADDR", "localhost")]);
        assert_eq!(
            Config::from_env(&env).unwrap_err().name,
            "PLEXUS_INBOUND_APP_ADDR"
        );
    }

    #[test]
    fn the_controller_and_the_static_file_exclude_each_other() {
        let env = HashMap::from([("PLEXUS_CONTROLLER_ADDR", "controller.plexus:8090")]);
        let config = Config::from_env(&env).unwrap();
        assert_eq!(
            config.controller_addr.as_deref(),
            Some("controller.plexus:8090")
        );
        let env = HashMap::from([
            ("PLEXUS_CONTROLLER_ADDR", "controller.plexus:8090"),
            ("PLEXUS_STATIC_CONFIG", "/etc/plexus/destinations.yaml"),
        ]);
        let message = Config::from_env(&env).unwrap_err().to_string();
        assert!(message.contains("PLEXUS_CONTROLLER_ADDR"), "{message}");
        assert!(message.contains("PLEXUS_STATIC_CONFIG"), "{message}");
        let env = HashMap::from([("PLEXUS_CONTROLLER_ADDR", "controller")]);
        assert_eq!(
            Config::from_env(&env).unwrap_err().name,
            "PLEXUS_CONTROLLER_ADDR"
        );
    }
}
