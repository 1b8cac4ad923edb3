//! `plexusctl inject` as a user runs it: YAML in, injected YAML out.

use std::io::Write;
use std::process::{Command, Stdio};

const POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  containers: [{name: app, image: nginx}]
";

#[test]
fn injects_yaml_from_stdin_with_flag_overrides() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plexusctl"))
        .args([
            "inject",
            "--proxy-image=registry.local/proxy:dev",
            "--otlp-endpoint=http://collector:4317",
        ])
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
    let notes = String::from_utf8(output.stderr).expect("utf-8");
    assert!(notes.contains("shop/web"), "{notes}");
}

#[test]
fn a_missing_file_is_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_plexusctl"))
        .args(["inject", "/nonexistent/app.yaml"])
        .output()
        .expect("run plexusctl");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/app.yaml"), "{stderr}");
}

#[test]
fn a_bad_sampling_ratio_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_plexusctl"))
        .args(["inject", "--trace-sampling=2", "/dev/null"])
        .output()
        .expect("run plexusctl");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--trace-sampling"));
}
