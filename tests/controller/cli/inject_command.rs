//! `plexusctl inject` as a user runs it: YAML in, injected YAML out.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use plexus_tests::bins::bin;

const POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  containers: [{name: app, image: nginx}]
";

const TRUST_ANCHORS: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// A trust-anchors file of its own for each test (they run in parallel).
fn anchors_file(test: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "plexusctl-anchors-{}-{test}.pem",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("write trust anchors");
    path
}

#[test]
fn injects_yaml_from_stdin_with_flag_overrides() {
    let anchors = anchors_file("stdin", TRUST_ANCHORS);
    let mut child = Command::new(bin("plexusctl"))
        .args([
            "inject",
            "--proxy-image=registry.local/proxy:dev",
            "--otlp-endpoint=http://collector:4317",
        ])
        .arg("--trust-anchors")
        .arg(&anchors)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plexusctl");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(POD.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("plexusctl output");
    assert!(output.status.success(), "{output:?}");
    let yaml = String::from_utf8(output.stdout).expect("utf-8");
    assert!(yaml.contains("image: registry.local/proxy:dev"), "{yaml}");
    assert!(yaml.contains("http://collector:4317"), "{yaml}");
    assert!(
        yaml.contains("name: app"),
        "the app container is kept: {yaml}"
    );
    // The PEM reaches the proxy inline.
    let docs: serde_json::Value = serde_yaml::from_str(&yaml).expect("YAML out");
    let proxy = &docs["spec"]["initContainers"][1];
    assert_eq!(proxy["name"], "plexus-proxy");
    let anchors_env = proxy["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "PLEXUS_IDENTITY_TRUST_ANCHORS")
        .expect("trust anchors variable");
    assert_eq!(anchors_env["value"], TRUST_ANCHORS);
    let notes = String::from_utf8(output.stderr).expect("utf-8");
    assert!(notes.contains("shop/web"), "{notes}");
    std::fs::remove_file(anchors).expect("remove trust anchors");
}

#[test]
fn trust_anchors_are_required_and_must_be_pem() {
    let output = Command::new(bin("plexusctl"))
        .args(["inject", "/dev/null"])
        .output()
        .expect("run plexusctl");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--trust-anchors FILE is required") && stderr.contains("plexus-ca"),
        "{stderr}"
    );

    let not_pem = anchors_file("not-pem", "hello");
    let output = Command::new(bin("plexusctl"))
        .arg("inject")
        .arg("--trust-anchors")
        .arg(&not_pem)
        .arg("/dev/null")
        .output()
        .expect("run plexusctl");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a PEM file"), "{stderr}");
    std::fs::remove_file(not_pem).expect("remove file");
}

#[test]
fn a_missing_file_is_named() {
    let anchors = anchors_file("missing-input", TRUST_ANCHORS);
    let output = Command::new(bin("plexusctl"))
        .arg("inject")
        .arg("--trust-anchors")
        .arg(&anchors)
        .arg("/nonexistent/app.yaml")
        .output()
        .expect("run plexusctl");
    std::fs::remove_file(anchors).expect("remove trust anchors");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/app.yaml"), "{stderr}");
}

#[test]
fn a_bad_sampling_ratio_is_refused() {
    let output = Command::new(bin("plexusctl"))
        .args(["inject", "--trace-sampling=2", "/dev/null"])
        .output()
        .expect("run plexusctl");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--trace-sampling"));
}
