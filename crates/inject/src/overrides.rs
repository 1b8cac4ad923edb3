//! Per-pod `plexus.io/*` annotations over the mesh-wide defaults.
//!
//! A value that cannot be right (a port list with a typo, a malformed quantity) would make the
//! pod fail to start or be rejected by the API server; the injector must never block a pod, so
//! such a value is ignored with a warning naming the annotation and the default stays.

use std::collections::BTreeMap;

use plexus_core::annotations::OPAQUE_PORTS;
use plexus_core::ports::{Cidr, PortRange, parse_list};

use crate::config::{InjectConfig, ProxyResources};

pub const SKIP_INBOUND_PORTS: &str = "plexus.io/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "plexus.io/skip-outbound-ports";
pub const SKIP_OUTBOUND_CIDRS: &str = "plexus.io/skip-outbound-cidrs";
pub const PROXY_CPU_REQUEST: &str = "plexus.io/proxy-cpu-request";
pub const PROXY_CPU_LIMIT: &str = "plexus.io/proxy-cpu-limit";
pub const PROXY_MEMORY_REQUEST: &str = "plexus.io/proxy-memory-request";
pub const PROXY_MEMORY_LIMIT: &str = "plexus.io/proxy-memory-limit";
pub const LOG_LEVEL: &str = "plexus.io/log-level";
pub const TRACE_SAMPLING: &str = "plexus.io/trace-sampling";
/// `enabled`: the proxy's `POST /shutdown` drains it (from loopback), for a Job's last step.
pub const SHUTDOWN_ENDPOINT: &str = "plexus.io/shutdown-endpoint";

/// Every annotation the injector reads; docs/annotations.md lists the same.
pub const READ: &[&str] = &[
    plexus_core::annotations::INJECT,
    OPAQUE_PORTS,
    SKIP_INBOUND_PORTS,
    SKIP_OUTBOUND_PORTS,
    SKIP_OUTBOUND_CIDRS,
    PROXY_CPU_REQUEST,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_REQUEST,
    PROXY_MEMORY_LIMIT,
    LOG_LEVEL,
    TRACE_SAMPLING,
    SHUTDOWN_ENDPOINT,
];

/// The settings one pod's proxy and init container get.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub skip_inbound_ports: String,
    pub skip_outbound_ports: String,
    pub skip_outbound_cidrs: String,
    pub opaque_ports: String,
    pub resources: ProxyResources,
    pub log_level: String,
    pub trace_sampling: f64,
    /// `PLEXUS_SHUTDOWN_ENDPOINT=enabled` on the proxy; off unless the pod asks.
    pub shutdown_endpoint: bool,
}

/// The defaults with the pod's valid annotations applied, and a warning per ignored value.
pub fn settings(
    config: &InjectConfig,
    annotations: &BTreeMap<String, String>,
) -> (Settings, Vec<String>) {
    let mut warnings = Vec::new();
    let mut pick = |key: &str, default: &str, valid: fn(&str) -> Result<(), String>| {
        let chosen = annotations.get(key).map(|v| v.trim()).unwrap_or(default);
        match valid(chosen) {
            Ok(()) => chosen.to_string(),
            Err(why) => {
                warnings.push(format!("plexus: ignoring {key}={chosen:?}: {why}"));
                // The default went through the same check when it was chosen; re-check so a
                // bad mesh-wide value is reported, not passed on.
                if valid(default).is_ok() {
                    default.to_string()
                } else {
                    String::new()
                }
            }
        }
    };
    let r = &config.proxy_resources;
    let trace_default = config.trace_sampling.to_string();
    let settings = Settings {
        skip_inbound_ports: pick(SKIP_INBOUND_PORTS, &config.skip_inbound_ports, port_list),
        skip_outbound_ports: pick(SKIP_OUTBOUND_PORTS, &config.skip_outbound_ports, port_list),
        skip_outbound_cidrs: pick(SKIP_OUTBOUND_CIDRS, &config.skip_outbound_cidrs, cidr_list),
        opaque_ports: pick(OPAQUE_PORTS, "", single_ports),
        resources: ProxyResources {
            cpu_request: pick(PROXY_CPU_REQUEST, &r.cpu_request, quantity),
            cpu_limit: pick(PROXY_CPU_LIMIT, &r.cpu_limit, quantity),
            memory_request: pick(PROXY_MEMORY_REQUEST, &r.memory_request, quantity),
            memory_limit: pick(PROXY_MEMORY_LIMIT, &r.memory_limit, quantity),
        },
        log_level: pick(LOG_LEVEL, &config.log_level, log_level),
        trace_sampling: pick(TRACE_SAMPLING, &trace_default, fraction)
            .parse()
            .unwrap_or(0.0),
        shutdown_endpoint: pick(SHUTDOWN_ENDPOINT, "disabled", switch) == "enabled",
    };
    (settings, warnings)
}

fn port_list(s: &str) -> Result<(), String> {
    parse_list::<PortRange>(s)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Ports without ranges: the proxy's opaque-port list takes single ports.
fn single_ports(s: &str) -> Result<(), String> {
    let ports = parse_list::<PortRange>(s).map_err(|e| e.to_string())?;
    match ports.iter().find(|p| p.first != p.last) {
        Some(range) => Err(format!("{range} is a range; list single ports")),
        None => Ok(()),
    }
}

fn cidr_list(s: &str) -> Result<(), String> {
    parse_list::<Cidr>(s).map(drop).map_err(|e| e.to_string())
}

/// A Kubernetes quantity as the API server accepts it for resources (`250m`, `1.5`, `64Mi`,
/// `1e3`), or empty for "unset".
fn quantity(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|exp| {
        // One optional sign, then digits: `1e+` and `1e+-3` are not quantities.
        let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
    });
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err("not a quantity (like 100m, 0.5 or 64Mi)".to_string())
    }
}

/// An env-filter directive list (`info`, `plexus_proxy=debug,warn`): no spaces, not empty.
fn log_level(s: &str) -> Result<(), String> {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_=,:-.".contains(c))
    {
        Ok(())
    } else {
        Err("not a log level (like info or plexus_proxy=debug,warn)".to_string())
    }
}

fn switch(s: &str) -> Result<(), String> {
    match s {
        "enabled" | "disabled" => Ok(()),
        _ => Err("not enabled or disabled".to_string()),
    }
}

fn fraction(s: &str) -> Result<(), String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(()),
        _ => Err("not a fraction between 0.0 and 1.0".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn valid_annotations_override_the_defaults() {
        let (s, warnings) = settings(
            &InjectConfig::default(),
            &annotations(&[
                (SKIP_INBOUND_PORTS, "22, 9000-9100"),
                (OPAQUE_PORTS, "3306"),
                (PROXY_CPU_LIMIT, "500m"),
                (PROXY_MEMORY_REQUEST, "1.5Gi"),
                (LOG_LEVEL, "plexus_proxy=debug,info"),
                (TRACE_SAMPLING, "0.25"),
                (SHUTDOWN_ENDPOINT, "enabled"),
            ]),
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(s.skip_inbound_ports, "22, 9000-9100");
        assert_eq!(s.opaque_ports, "3306");
        assert_eq!(s.resources.cpu_limit, "500m");
        assert_eq!(s.resources.cpu_request, "50m");
        assert_eq!(s.resources.memory_request, "1.5Gi");
        assert_eq!(s.log_level, "plexus_proxy=debug,info");
        assert_eq!(s.trace_sampling, 0.25);
        assert!(s.shutdown_endpoint);
    }

    #[test]
    fn invalid_annotations_keep_the_default_and_warn_by_name() {
        let (s, warnings) = settings(
            &InjectConfig::default(),
            &annotations(&[
                (SKIP_OUTBOUND_PORTS, "53,dns"),
                (OPAQUE_PORTS, "3306,8000-8100"),
                (PROXY_MEMORY_LIMIT, "lots"),
                (TRACE_SAMPLING, "2"),
                (LOG_LEVEL, "debug please"),
                (SHUTDOWN_ENDPOINT, "yes"),
            ]),
        );
        assert_eq!(s.skip_outbound_ports, "");
        assert_eq!(s.opaque_ports, "");
        assert_eq!(s.resources.memory_limit, "128Mi");
        assert_eq!(s.trace_sampling, 1.0);
        assert_eq!(s.log_level, "info");
        assert!(!s.shutdown_endpoint);
        assert_eq!(warnings.len(), 6, "{warnings:?}");
        assert!(warnings[0].contains(SKIP_OUTBOUND_PORTS) && warnings[0].contains("dns"));
    }

    #[test]
    fn quantities_in_the_forms_kubernetes_accepts() {
        for ok in ["", "1", "100m", "0.5", "64Mi", "1e3", "2E+2", "1.5Gi"] {
            assert_eq!(quantity(ok), Ok(()), "{ok}");
        }
        for bad in [
            "m", "1.2.3", "64MB", "-1", "1e", ".", "10 m", "1e+", "1e+-3",
        ] {
            assert!(quantity(bad).is_err(), "{bad}");
        }
    }
}

/// Properties of the injector's annotation values: no value panics or
/// blocks a pod; a bad one is ignored with a warning naming it, a valid one
/// is what the pod gets.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Any value, or one near the syntax of some annotation.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,24}",
            "[0-9,:\\- ]{0,16}",
            "[0-9.]{0,5}[a-zA-Z+-]{0,3}[0-9]{0,2}",
            "[0-9a-f.:/, ]{0,24}",
            "[a-z_=,:.-]{0,16}",
        ]
    }

    /// The Kubernetes quantity grammar, unsigned (a proxy's resources are
    /// never negative): `<number><suffix>`, the suffix binary SI, decimal SI
    /// or an exponent.
    fn kubernetes_quantity(s: &str) -> bool {
        static GRAMMAR: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            let pattern =
                r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[mkMGTPE]|[KMGTPE]i|[eE][+-]?[0-9]+)?$";
            regex::Regex::new(pattern).expect("a constant pattern")
        });
        GRAMMAR.is_match(s)
    }

    proptest! {
        #![proptest_config(plexus_core::property::config())]

        #[test]
        fn any_values_are_applied_or_ignored_by_name(values in prop::collection::vec(value(), READ.len())) {
            let annotations: BTreeMap<String, String> =
                READ.iter().map(|a| a.to_string()).zip(values).collect();
            let (settings, warnings) = settings(&InjectConfig::default(), &annotations);
            for warning in &warnings {
                prop_assert!(READ.iter().any(|a| warning.contains(&format!("ignoring {a}="))), "{}", warning);
            }
            prop_assert!((0.0..=1.0).contains(&settings.trace_sampling));
            for quantity in [
                &settings.resources.cpu_request,
                &settings.resources.cpu_limit,
                &settings.resources.memory_request,
                &settings.resources.memory_limit,
            ] {
                prop_assert!(quantity.is_empty() || kubernetes_quantity(quantity), "{:?}", quantity);
            }
        }

        /// A quantity is accepted exactly when the API server would accept it.
        #[test]
        fn quantities_are_the_api_servers(s in "[0-9.]{0,4}[eEmkKMGTPi]{0,2}[+-]{0,2}[0-9.]{0,2}") {
            prop_assert_eq!(quantity(&s).is_ok(), s.is_empty() || kubernetes_quantity(&s), "{:?}", s);
        }

        #[test]
        fn valid_values_are_what_the_pod_gets(
            ports in prop::collection::vec(1u16.., 1..5),
            range in (1u16..60_000, 0u16..1000),
            cidr in (any::<[u8; 4]>(), 0u8..=32),
            quantity in "([0-9]{1,4}(\\.[0-9]{1,3})?)(m|k|Mi|Gi|e[0-9])?",
            sampling in 0.0f64..=1.0,
            shutdown in any::<bool>(),
        ) {
            let singles = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
            let ranges = format!("{singles},{}-{}", range.0, range.0 + range.1);
            let cidr = format!("{}/{}", std::net::Ipv4Addr::from(cidr.0), cidr.1);
            let annotations: BTreeMap<String, String> = [
                (OPAQUE_PORTS, singles.clone()),
                (SKIP_INBOUND_PORTS, ranges.clone()),
                (SKIP_OUTBOUND_CIDRS, cidr.clone()),
                (PROXY_MEMORY_LIMIT, quantity.clone()),
                (TRACE_SAMPLING, sampling.to_string()),
                (SHUTDOWN_ENDPOINT, if shutdown { "enabled" } else { "disabled" }.to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            let (settings, warnings) = settings(&InjectConfig::default(), &annotations);
            prop_assert!(warnings.is_empty(), "{:?}", warnings);
            prop_assert_eq!(settings.opaque_ports, singles);
            prop_assert_eq!(settings.skip_inbound_ports, ranges);
            prop_assert_eq!(settings.skip_outbound_cidrs, cidr);
            prop_assert_eq!(settings.resources.memory_limit, quantity);
            prop_assert_eq!(settings.trace_sampling, sampling);
            prop_assert_eq!(settings.shutdown_endpoint, shutdown);
        }
    }
}
