//! The tracing variables: where spans go, how many new traces are sampled,
//! and the workload the spans are about.

use super::reader::Reader;
use crate::telemetry::{DEFAULT_SAMPLING, TelemetryConfig};

const OTLP_URL: &str = "an OTLP/gRPC URL like http://otel-collector:4317";

/// `PLEXUS_OTLP_ENDPOINT`, `PLEXUS_TRACE_SAMPLING`, `PLEXUS_WORKLOAD`,
/// `PLEXUS_POD_NAME` and `PLEXUS_POD_NAMESPACE`. The service name is the
/// workload, else the pod name, else `plexus-proxy`.
pub(super) fn read(r: &mut Reader) -> TelemetryConfig {
    let defaults = TelemetryConfig::default();
    let endpoint = r
        .present("PLEXUS_OTLP_ENDPOINT")
        .and_then(|value| match endpoint(&value) {
            Ok(url) => Some(url),
            Err(expected) => {
                r.bad("PLEXUS_OTLP_ENDPOINT", value, expected);
                None
            }
        });
    let sampling = match r.present("PLEXUS_TRACE_SAMPLING") {
        None => DEFAULT_SAMPLING,
        Some(value) => match value.parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => ratio,
            _ => {
                r.bad(
                    "PLEXUS_TRACE_SAMPLING",
                    value,
                    "a ratio between 0.0 and 1.0, e.g. 0.1",
                );
                DEFAULT_SAMPLING
            }
        },
    };
    let pod_name = r.present("PLEXUS_POD_NAME");
    TelemetryConfig {
        endpoint,
        sampling,
        service_name: r
            .present("PLEXUS_WORKLOAD")
            .or_else(|| pod_name.clone())
            .unwrap_or(defaults.service_name.clone()),
        namespace: r.present("PLEXUS_POD_NAMESPACE"),
        pod_name,
        ..defaults
    }
}

/// `http://host:port`, or `host:port` meaning plain HTTP/2; `Err` says what was expected.
fn endpoint(value: &str) -> Result<String, &'static str> {
    let url = if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    };
    let uri: http::Uri = url.parse().map_err(|_| OTLP_URL)?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "an http:// URL: TLS to the collector is not built in; run a collector agent next to the proxy",
            );
        }
        _ => return Err(OTLP_URL),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("a URL with a host, like http://otel-collector:4317");
    }
    Ok(url)
}
