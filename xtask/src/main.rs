//! Developer tasks for the Plexus workspace, run as `cargo xtask <task>`:
//! the test command that the README and CI use, the proxy benchmark, the
//! container images and the demo.
//!
//! Tools only: no workspace crate depends on this one. The bench and the test
//! command depend only on `plexus-api` (the proxy's destinations file is in the
//! proto's shape) and `plexus-identity` (the bench's mesh client certificate for
//! timing new mTLS connections), never on the proxy or controller code they run;
//! the demo also uses `plexus-traces`.
//!
//! `cargo xtask` builds this crate alone, with its own feature resolution, before
//! anything else. Built with every task, that first build would compile tokio,
//! hyper, rustls, tonic and more with other features than the workspace build of
//! `cargo xtask test` then needs, so half the graph twice. The default build
//! therefore holds `test` only; any other task is handed to `cargo xtask` built
//! with feature `demo` (every task), compiled on first use.

#[cfg(feature = "tools")]
mod bench;
#[cfg(feature = "demo")]
mod demo;
#[cfg(feature = "tools")]
mod images;
#[cfg(feature = "tools")]
mod process;
#[cfg(feature = "tools")]
mod ready;
mod test_suite;
mod workspace;

#[cfg(not(feature = "demo"))]
use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Plexus developer tasks",
    version,
    propagate_version = true
)]
#[cfg_attr(
    not(feature = "demo"),
    command(
        after_help = "Other tasks (bench, images, demo) are compiled on first use: \
                          `cargo xtask demo --help`."
    )
)]
enum Task {
    /// Build the workspace and its tests once, prepare the chart-test Python venv, run every test.
    Test(test_suite::TestArgs),
    /// Measure direct traffic vs one proxy vs a proxy pair, side by side in one run.
    #[cfg(feature = "tools")]
    Bench(Box<bench::BenchArgs>),
    /// Write the container images as OCI archives in target/images (no engine; `--check`, `--push REGISTRY`).
    #[cfg(feature = "tools")]
    Images(images::ImagesArgs),
    /// The bench's upstream server (started by `bench` as its own process).
    #[cfg(feature = "tools")]
    #[command(hide = true)]
    BenchUpstream(bench::upstream::UpstreamArgs),
    /// The mesh on one machine: controller, sidecars, a demo app, traffic, traces.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// One service of the demo application (started by `demo` as its own process).
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    DemoApp(demo::AppArgs),
    /// A task this build does not hold: run by the build that holds every task.
    #[cfg(not(feature = "demo"))]
    #[command(external_subcommand)]
    Other(Vec<OsString>),
}

fn main() -> ExitCode {
    let outcome = match Task::parse() {
        Task::Test(args) => test_suite::run(args),
        #[cfg(feature = "tools")]
        Task::Bench(args) => bench::main(*args).map(|all_measured| {
            if all_measured {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
        #[cfg(feature = "tools")]
        Task::Images(args) => images::run(args).map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "tools")]
        Task::BenchUpstream(args) => bench::upstream::main(args).map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "demo")]
        Task::Demo(args) => demo::main(args).map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "demo")]
        Task::DemoApp(args) => demo::app_main(args).map(|()| ExitCode::SUCCESS),
        #[cfg(not(feature = "demo"))]
        Task::Other(task) => Err(with_every_task(task)),
    };
    outcome.unwrap_or_else(|error| {
        eprintln!("xtask: {error:#}");
        ExitCode::FAILURE
    })
}

/// Becomes `cargo xtask` built with every task (feature `demo`), with the same
/// task and arguments; returns only if that could not be started.
#[cfg(not(feature = "demo"))]
fn with_every_task(task: Vec<OsString>) -> anyhow::Error {
    use std::os::unix::process::CommandExt;

    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let error = workspace::cargo()
        .args(["run", "--quiet", "--manifest-path", manifest])
        .args(["--package", "xtask", "--features", "demo", "--"])
        .args(task)
        .exec();
    anyhow::Error::new(error).context("running `cargo run --package xtask --features demo`")
}
