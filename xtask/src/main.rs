//! Developer tasks for the Plexus workspace, run as `cargo xtask <task>`:
//! the test command that the README and CI use, the proxy benchmark, and the
//! container images.
//!
//! Tools only: no workspace crate depends on this one. The bench and the test
//! command depend only on `plexus-api` (the proxy's destinations file is in the
//! proto's shape) and `plexus-identity` (the bench's mesh client certificate for
//! timing new mTLS connections), never on the proxy or controller code they run;
//! the demo (feature `demo`, on by default) also uses `plexus-traces`.

mod bench;
#[cfg(feature = "demo")]
mod demo;
mod images;
mod process;
mod ready;
mod test_suite;
mod workspace;

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Plexus developer tasks",
    version,
    propagate_version = true
)]
enum Task {
    /// Build the workspace and its tests once, prepare the chart-test Python venv, run every test.
    Test(test_suite::TestArgs),
    /// Measure direct traffic vs one proxy vs a proxy pair, side by side in one run.
    Bench(Box<bench::BenchArgs>),
    /// Write the container images as OCI archives in target/images (no engine; `--check`, `--push REGISTRY`).
    Images(images::ImagesArgs),
    /// The bench's upstream server (started by `bench` as its own process).
    #[command(hide = true)]
    BenchUpstream(bench::upstream::UpstreamArgs),
    /// The mesh on one machine: controller, sidecars, a demo app, traffic, traces.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// One service of the demo application (started by `demo` as its own process).
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    DemoApp(demo::AppArgs),
}

fn main() -> ExitCode {
    let outcome = match Task::parse() {
        Task::Test(args) => test_suite::run(args),
        Task::Bench(args) => bench::main(*args).map(|all_measured| {
            if all_measured {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
        Task::Images(args) => images::run(args).map(|()| ExitCode::SUCCESS),
        Task::BenchUpstream(args) => bench::upstream::main(args).map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "demo")]
        Task::Demo(args) => demo::main(args).map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "demo")]
        Task::DemoApp(args) => demo::app_main(args).map(|()| ExitCode::SUCCESS),
    };
    outcome.unwrap_or_else(|error| {
        eprintln!("xtask: {error:#}");
        ExitCode::FAILURE
    })
}
