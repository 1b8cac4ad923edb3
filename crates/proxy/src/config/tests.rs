//! The environment as the proxy reads it: defaults, values, and every bad
//! variable reported together.

use std::collections::HashMap;

use super::*;
use crate::tls::TrustAnchors;

fn read(vars: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
    Config::from_env(&HashMap::from_iter(vars.iter().copied()))
}

/// The names of the bad variables, in the order they were read.
fn bad_names(vars: &[(&'static str, &'static str)]) -> Vec<&'static str> {
    let err = read(vars).expect_err("a bad environment");
    err.bad.iter().map(|bad| bad.name).collect()
}

#[test]
fn defaults_match_the_design() {
    let config = read(&[]).unwrap();
    assert_eq!(config.outbound_addr, "127.0.0.1:15001".parse().unwrap());
    assert_eq!(config.inbound_addr, "0.0.0.0:15006".parse().unwrap());
    assert_eq!(config.admin_addr, "0.0.0.0:15020".parse().unwrap());
    assert!(
        !config.shutdown_endpoint,
        "POST /shutdown is off by default"
    );
    for port in [25, 587, 3306, 4444, 5432, 6379, 9300, 11211] {
        assert!(config.opaque_ports.contains(port), "{port}");
        assert!(config.inbound_opaque_ports.contains(port), "{port}");
    }
    assert!(!config.opaque_ports.contains(80));
    assert_eq!(config.static_config, None);
    assert_eq!(config.inbound_app_addr, None);
    assert_eq!(config.detect_timeout, Duration::from_secs(5));
    assert_eq!(config.drain_timeout, Duration::from_secs(30));
    assert_eq!(config.idle_timeout, Duration::from_secs(3600));
    assert_eq!(config.destination_idle_timeout, Duration::from_secs(30));
    assert_eq!(config.connect_timeout, Duration::from_secs(1));
    assert_eq!(config.max_header_bytes, 65_536);
    assert_eq!(config.log, "info");
    assert_eq!(config.worker_threads, 1);
    assert_eq!(config.controller_addr, None);
    assert_eq!(config.identity, None);
    assert_eq!(config.inbound_policy.mtls_mode, "permissive");
    assert!(config.inbound_policy.allowed_identities.is_empty());
    assert_eq!(config.telemetry, TelemetryConfig::default());
    assert_eq!(config.telemetry.endpoint, None, "tracing is off by default");
    assert!(config.unknown_variables.is_empty());
}

#[test]
fn values_are_read() {
    let config = read(&[
        ("PLEXUS_OUTBOUND_ADDR", "127.0.0.1:0"),
        ("PLEXUS_INBOUND_APP_ADDR", "127.0.0.1:8080"),
        ("PLEXUS_OPAQUE_PORTS", " 9000 , 22,"),
        ("PLEXUS_DETECT_TIMEOUT_MS", "250"),
        ("PLEXUS_LOG", " debug "),
        ("PLEXUS_WORKER_THREADS", "0"),
        ("PLEXUS_SHUTDOWN_ENDPOINT", " enabled "),
    ])
    .unwrap();
    assert!(config.shutdown_endpoint);
    assert!(
        !read(&[("PLEXUS_SHUTDOWN_ENDPOINT", "disabled")])
            .unwrap()
            .shutdown_endpoint
    );
    assert_eq!(config.outbound_addr.port(), 0);
    assert_eq!(
        config.inbound_app_addr,
        Some("127.0.0.1:8080".parse().unwrap())
    );
    assert!(config.opaque_ports.contains(22) && config.opaque_ports.contains(9000));
    assert!(!config.opaque_ports.contains(3306));
    assert_eq!(config.detect_timeout, Duration::from_millis(250));
    assert_eq!(config.log, "debug");
    assert_eq!(config.worker_threads, 0);
}

#[test]
fn a_bad_value_names_the_variable_and_what_was_expected() {
    let err = read(&[("PLEXUS_DRAIN_TIMEOUT_MS", "5s")]).unwrap_err();
    assert_eq!(err.bad.len(), 1);
    assert_eq!(err.bad[0].name, "PLEXUS_DRAIN_TIMEOUT_MS");
    assert_eq!(err.bad[0].value, "5s");
    let message = err.to_string();
    assert!(message.contains("PLEXUS_DRAIN_TIMEOUT_MS"), "{message}");
    assert!(message.contains("milliseconds"), "{message}");

    for (name, value) in [
        ("PLEXUS_OPAQUE_PORTS", "3306,70000"),
        ("PLEXUS_INBOUND_APP_ADDR", "localhost"),
        ("PLEXUS_LOG", "info,[unclosed"),
        ("PLEXUS_INBOUND_MTLS_MODE", "sometimes"),
        ("PLEXUS_INBOUND_ALLOWED_IDENTITIES", "web"),
        ("PLEXUS_TRACE_SAMPLING", "10%"),
        ("PLEXUS_TRACE_SAMPLING", "1.5"),
        ("PLEXUS_TRACE_SAMPLING", "-0.1"),
        ("PLEXUS_OTLP_ENDPOINT", "https://collector:4317"),
        ("PLEXUS_OTLP_ENDPOINT", "ftp://collector:4317"),
        ("PLEXUS_OTLP_ENDPOINT", "http://"),
        ("PLEXUS_SHUTDOWN_ENDPOINT", "true"),
        ("PLEXUS_MAX_INBOUND_CONNECTIONS", "0"),
        ("PLEXUS_MAX_OUTBOUND_CONNECTIONS", "-1"),
    ] {
        assert_eq!(bad_names(&[(name, value)]), [name], "{name}={value}");
    }
}

#[test]
fn durations_beyond_a_year_are_refused_by_name_not_overflowed() {
    let huge = "18446744073709551615";
    let err = read(&[
        ("PLEXUS_IDLE_TIMEOUT_MS", huge),
        ("PLEXUS_REQUEST_HEAD_TIMEOUT_MS", "31536000001"),
    ])
    .unwrap_err();
    let names: Vec<_> = err.bad.iter().map(|bad| bad.name).collect();
    assert_eq!(
        names,
        ["PLEXUS_IDLE_TIMEOUT_MS", "PLEXUS_REQUEST_HEAD_TIMEOUT_MS"]
    );
    assert!(err.to_string().contains("at most 31536000000"), "{err}");
    let year = read(&[("PLEXUS_REQUEST_HEAD_TIMEOUT_MS", "31536000000")]).unwrap();
    assert_eq!(
        year.request_head_timeout,
        Duration::from_secs(365 * 24 * 3600)
    );
}

#[test]
fn timeouts_and_connection_caps_default_and_read() {
    let config = read(&[]).unwrap();
    assert_eq!(config.request_head_timeout, Duration::from_secs(10));
    let caps = ConnectionCaps {
        inbound: 10_000,
        outbound: 10_000,
    };
    assert_eq!(config.max_connections, caps);
    let config = read(&[
        ("PLEXUS_REQUEST_HEAD_TIMEOUT_MS", "1000"),
        ("PLEXUS_MAX_INBOUND_CONNECTIONS", "5"),
        ("PLEXUS_MAX_OUTBOUND_CONNECTIONS", "7"),
    ])
    .unwrap();
    assert_eq!(config.request_head_timeout, Duration::from_secs(1));
    let caps = ConnectionCaps {
        inbound: 5,
        outbound: 7,
    };
    assert_eq!(config.max_connections, caps);
}

#[test]
fn several_bad_variables_are_reported_together() {
    let err = read(&[
        ("PLEXUS_OUTBOUND_ADDR", "15001"),
        ("PLEXUS_DRAIN_TIMEOUT_MS", "5s"),
        ("PLEXUS_INBOUND_MTLS_MODE", "sometimes"),
        ("PLEXUS_TRACE_SAMPLING", "lots"),
        ("PLEXUS_IDENTITY", "web"),
    ])
    .unwrap_err();
    let names: Vec<_> = err.bad.iter().map(|bad| bad.name).collect();
    assert_eq!(
        names,
        [
            "PLEXUS_OUTBOUND_ADDR",
            "PLEXUS_DRAIN_TIMEOUT_MS",
            "PLEXUS_IDENTITY",
            // An identity needs these too: reported in the same pass.
            "PLEXUS_IDENTITY_TOKEN_FILE",
            "PLEXUS_IDENTITY_TRUST_ANCHORS",
            "PLEXUS_IDENTITY_ADDR",
            "PLEXUS_INBOUND_MTLS_MODE",
            "PLEXUS_TRACE_SAMPLING",
        ]
    );
    let message = err.to_string();
    assert!(message.starts_with("8 variables are invalid:"), "{message}");
    for line in [
        r#"PLEXUS_OUTBOUND_ADDR="15001" is invalid: expected ip:port"#,
        r#"PLEXUS_DRAIN_TIMEOUT_MS="5s" is invalid: expected milliseconds"#,
        r#"PLEXUS_INBOUND_MTLS_MODE="sometimes" is invalid: expected permissive or strict"#,
        r#"PLEXUS_TRACE_SAMPLING="lots" is invalid: expected a ratio"#,
    ] {
        assert!(message.contains(line), "{line} in {message}");
    }
}

#[test]
fn unknown_plexus_variables_are_listed_not_refused() {
    let config = read(&[
        ("PLEXUS_INBOUND_MTLS_MOD", "strict"),
        ("PLEXUS_LOG", "info"),
        ("PLEXUS_POD_IP", "10.0.0.7"),
        ("PLEXUS_DETECT_TIMEOUT", "100"),
        ("HOME", "/root"),
    ])
    .unwrap();
    let unknown: Vec<(&str, Option<&str>)> = config
        .unknown_variables
        .iter()
        .map(|u| (u.name.as_str(), u.nearest))
        .collect();
    assert_eq!(
        unknown,
        [
            ("PLEXUS_DETECT_TIMEOUT", Some("PLEXUS_DETECT_TIMEOUT_MS")),
            ("PLEXUS_INBOUND_MTLS_MOD", Some("PLEXUS_INBOUND_MTLS_MODE")),
        ]
    );
    assert_eq!(
        config.inbound_policy.mtls_mode, "permissive",
        "a misspelt variable changes nothing"
    );
}

#[test]
fn the_controller_and_the_static_file_exclude_each_other() {
    let config = read(&[("PLEXUS_CONTROLLER_ADDR", "controller.plexus:8090")]).unwrap();
    assert_eq!(
        config.controller_addr.as_deref(),
        Some("controller.plexus:8090")
    );
    let message = read(&[
        ("PLEXUS_CONTROLLER_ADDR", "controller.plexus:8090"),
        ("PLEXUS_STATIC_CONFIG", "/etc/plexus/destinations.yaml"),
    ])
    .unwrap_err()
    .to_string();
    assert!(message.contains("PLEXUS_CONTROLLER_ADDR"), "{message}");
    assert!(message.contains("PLEXUS_STATIC_CONFIG"), "{message}");
    assert_eq!(
        bad_names(&[("PLEXUS_CONTROLLER_ADDR", "controller")]),
        ["PLEXUS_CONTROLLER_ADDR"]
    );
}

#[test]
fn the_inbound_policy_is_read() {
    let config = read(&[
        ("PLEXUS_INBOUND_MTLS_MODE", "STRICT"),
        (
            "PLEXUS_INBOUND_ALLOWED_IDENTITIES",
            "spiffe://td/ns/a/sa/b, spiffe://td/ns/c/sa/d",
        ),
    ])
    .unwrap();
    assert_eq!(config.inbound_policy.mtls_mode, "strict");
    assert_eq!(config.inbound_policy.allowed_identities.len(), 2);
}

#[test]
fn tracing_values_are_read() {
    let config = read(&[
        ("PLEXUS_OTLP_ENDPOINT", "collector.obs:4317"),
        ("PLEXUS_TRACE_SAMPLING", "0.25"),
        ("PLEXUS_POD_NAME", "web-5d8f7-abcde"),
        ("PLEXUS_POD_NAMESPACE", "shop"),
    ])
    .unwrap();
    let telemetry = config.telemetry;
    assert_eq!(
        telemetry.endpoint.as_deref(),
        Some("http://collector.obs:4317")
    );
    assert_eq!(telemetry.sampling, 0.25);
    assert_eq!(
        telemetry.service_name, "web-5d8f7-abcde",
        "pod name when no workload"
    );
    assert_eq!(telemetry.namespace.as_deref(), Some("shop"));

    let config = read(&[("PLEXUS_WORKLOAD", "web"), ("PLEXUS_POD_NAME", "web-1")]).unwrap();
    assert_eq!(config.telemetry.service_name, "web");
    assert_eq!(config.telemetry.pod_name.as_deref(), Some("web-1"));
}

const IDENTITY: [(&str, &str); 4] = [
    ("PLEXUS_IDENTITY", "spiffe://td/ns/shop/sa/web"),
    ("PLEXUS_IDENTITY_TOKEN_FILE", "/var/run/token"),
    ("PLEXUS_IDENTITY_TRUST_ANCHORS", "/etc/plexus/ca.crt"),
    ("PLEXUS_IDENTITY_ADDR", "plexus-controller.plexus.svc:8090"),
];

#[test]
fn the_identity_is_read_and_the_controller_identity_defaulted() {
    let settings = read(&IDENTITY).unwrap().identity.unwrap();
    assert_eq!(settings.identity.as_str(), "spiffe://td/ns/shop/sa/web");
    assert_eq!(
        settings.controller_identity.as_str(),
        "spiffe://td/ns/plexus/sa/plexus-controller"
    );
    assert_eq!(settings.token_file, PathBuf::from("/var/run/token"));
    assert_eq!(
        settings.trust_anchors,
        TrustAnchors::File("/etc/plexus/ca.crt".into())
    );
    let mut inline = IDENTITY.to_vec();
    inline[2].1 = "-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n";
    let settings = read(&inline).unwrap().identity.unwrap();
    assert!(matches!(settings.trust_anchors, TrustAnchors::Pem(_)));
}

#[test]
fn bad_identity_variables_name_themselves() {
    for (name, value) in [
        ("PLEXUS_IDENTITY", "spiffe://td/ns/shop/sa/web?x"),
        ("PLEXUS_IDENTITY_ADDR", "controller"),
        ("PLEXUS_IDENTITY_ADDR", "controller:99999"),
        ("PLEXUS_IDENTITY_TOKEN_FILE", " "),
        ("PLEXUS_CONTROLLER_IDENTITY", "controller"),
    ] {
        let mut env = HashMap::from(IDENTITY);
        env.insert(name, value);
        let err = Config::from_env(&env).unwrap_err();
        let names: Vec<_> = err.bad.iter().map(|bad| bad.name).collect();
        assert_eq!(names, [name], "{err}");
    }
}
