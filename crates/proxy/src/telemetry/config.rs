//! Tracing settings: where spans go, how many new traces are sampled, and who
//! this proxy is (the span resource).

use std::time::Duration;

use crate::config::{ConfigError, Env};

/// What the proxy's tracing needs to know, read once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, e.g. `http://otel-collector.observability:4317`.
    /// `None` disables tracing (and all of its per-request cost).
    pub endpoint: Option<String>,
    /// Share of *new* traces recorded, 0.0..=1.0. A trace continued from an
    /// incoming context follows the caller's sampled flag instead.
    pub sampling: f64,
    /// `service.name` of the spans: the workload.
    pub service_name: String,
    /// `k8s.namespace.name`, when known.
    pub namespace: Option<String>,
    /// `k8s.pod.name`, when known.
    pub pod_name: Option<String>,
    /// Finished spans waiting for export at most; more are dropped and counted.
    pub queue_size: usize,
    /// Spans per OTLP export request at most.
    pub max_batch_size: usize,
    /// How often queued spans are exported.
    pub export_interval: Duration,
    /// One export attempt gives up after this.
    pub export_timeout: Duration,
}

/// The default ratio for new traces. Tracing is opt-in (it is off until
/// `PLEXUS_OTLP_ENDPOINT` is set), so whoever turns it on expects to see
/// traces at once: Istio's 1 % default is the most asked "where are my
/// traces?" question, and Linkerd records every request its caller sampled.
/// Callers that sample upstream are followed whatever this says.
pub const DEFAULT_SAMPLING: f64 = 1.0;

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            endpoint: None,
            sampling: DEFAULT_SAMPLING,
            service_name: "plexus-proxy".to_owned(),
            namespace: None,
            pod_name: None,
            queue_size: 2048,
            max_batch_size: 512,
            export_interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(5),
        }
    }
}

impl TelemetryConfig {
    /// Reads `PLEXUS_OTLP_ENDPOINT`, `PLEXUS_TRACE_SAMPLING`, `PLEXUS_WORKLOAD`,
    /// `PLEXUS_POD_NAME` and `PLEXUS_POD_NAMESPACE`. The service name is the
    /// workload, else the pod name, else `plexus-proxy`.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let non_empty = |name: &str| {
            env.get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let defaults = TelemetryConfig::default();
        let endpoint = non_empty("PLEXUS_OTLP_ENDPOINT")
            .map(|value| parse_endpoint(&value))
            .transpose()?;
        let sampling = match non_empty("PLEXUS_TRACE_SAMPLING") {
            None => DEFAULT_SAMPLING,
            Some(value) => match value.parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => ratio,
                _ => {
                    return Err(ConfigError {
                        name: "PLEXUS_TRACE_SAMPLING",
                        value,
                        expected: "a ratio between 0.0 and 1.0, e.g. 0.1",
                    });
                }
            },
        };
        let pod_name = non_empty("PLEXUS_POD_NAME");
        Ok(TelemetryConfig {
            endpoint,
            sampling,
            service_name: non_empty("PLEXUS_WORKLOAD")
                .or_else(|| pod_name.clone())
                .unwrap_or(defaults.service_name.clone()),
            namespace: non_empty("PLEXUS_POD_NAMESPACE"),
            pod_name,
            ..defaults
        })
    }
}

/// `http://host:port`, or `host:port` meaning plain HTTP/2.
fn parse_endpoint(value: &str) -> Result<String, ConfigError> {
    let error = |expected| ConfigError {
        name: "PLEXUS_OTLP_ENDPOINT",
        value: value.to_owned(),
        expected,
    };
    let url = if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|_| error("an OTLP/gRPC URL like http://otel-collector:4317"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(error(
                "an http:// URL: TLS to the collector is not built in; run a collector agent next to the proxy",
            ));
        }
        _ => return Err(error("an OTLP/gRPC URL like http://otel-collector:4317")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(error("a URL with a host, like http://otel-collector:4317"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn tracing_is_off_without_an_endpoint() {
        let config = TelemetryConfig::from_env(&HashMap::<&str, &str>::new()).expect("defaults");
        assert_eq!(config, TelemetryConfig::default());
        assert_eq!(config.endpoint, None);
        assert_eq!(config.sampling, 1.0);
    }

    #[test]
    fn values_are_read() {
        let env = HashMap::from([
            ("PLEXUS_OTLP_ENDPOINT", "collector.obs:4317"),
            ("PLEXUS_TRACE_SAMPLING", "0.25"),
            ("PLEXUS_POD_NAME", "web-5d8f7-abcde"),
            ("PLEXUS_POD_NAMESPACE", "shop"),
        ]);
        let config = TelemetryConfig::from_env(&env).expect("valid");
        assert_eq!(
            config.endpoint.as_deref(),
            Some("http://collector.obs:4317")
        );
        assert_eq!(config.sampling, 0.25);
        assert_eq!(
            config.service_name, "web-5d8f7-abcde",
            "pod name when no workload"
        );
        assert_eq!(config.namespace.as_deref(), Some("shop"));

        let env = HashMap::from([("PLEXUS_WORKLOAD", "web"), ("PLEXUS_POD_NAME", "web-1")]);
        let config = TelemetryConfig::from_env(&env).expect("valid");
        assert_eq!(config.service_name, "web");
        assert_eq!(config.pod_name.as_deref(), Some("web-1"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("PLEXUS_TRACE_SAMPLING", "10%"),
            ("PLEXUS_TRACE_SAMPLING", "1.5"),
            ("PLEXUS_TRACE_SAMPLING", "-0.1"),
            ("PLEXUS_OTLP_ENDPOINT", "https://collector:4317"),
            ("PLEXUS_OTLP_ENDPOINT", "ftp://collector:4317"),
            ("PLEXUS_OTLP_ENDPOINT", "http://"),
        ] {
            let err = TelemetryConfig::from_env(&HashMap::from([(name, value)])).expect_err(value);
            assert_eq!(err.name, name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
