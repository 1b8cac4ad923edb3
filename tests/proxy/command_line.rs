//! The binaries' command lines: `--version` prints and exits 0 for every binary an
//! image carries (the image check runs them inside the images); `plexus-proxy`,
//! configured by environment only, also answers `--help` and refuses anything else
//! instead of starting a proxy.

use std::process::Output;

use plexus_tests::bins::bin;
use plexus_tests::wait::bounded;

/// Runs `binary args` with an empty environment (so no proxy configuration is found),
/// bounded: a binary that started serving instead would fail the test here.
async fn run(binary: &str, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(bin(binary));
    command.args(args).env_clear().kill_on_drop(true);
    let what = format!("`{binary} {}` exits", args.join(" "));
    bounded(&what, command.output())
        .await
        .unwrap_or_else(|e| panic!("running {binary}: {e}"))
}

#[tokio::test]
async fn every_binary_prints_its_version_and_exits_0() {
    for binary in [
        "plexus-proxy",
        "plexus-controller",
        "plexus-init",
        "plexusctl",
    ] {
        let output = run(binary, &["--version"]).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{binary} --version: {output:?}");
        assert_eq!(
            stdout.trim(),
            format!("{binary} {}", env!("CARGO_PKG_VERSION")),
            "{binary} --version"
        );
    }
}

#[tokio::test]
async fn proxy_help_names_its_environment_and_exits_0() {
    let output = run("plexus-proxy", &["--help"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    for variable in [
        "PLEXUS_INBOUND_ADDR",
        "PLEXUS_CONTROLLER_ADDR",
        "PLEXUS_LOG",
    ] {
        assert!(
            stdout.contains(variable),
            "--help lacks {variable}:\n{stdout}"
        );
    }
    assert!(output.stderr.is_empty(), "{output:?}");
}

#[tokio::test]
async fn proxy_refuses_any_other_argument_in_one_line() {
    for args in [&["--port=80"][..], &["serve"], &["--version", "--help"]] {
        let output = run("plexus-proxy", args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains("--help or --version"), "{stderr}");
        assert!(output.stdout.is_empty(), "{args:?}: {output:?}");
    }
}
