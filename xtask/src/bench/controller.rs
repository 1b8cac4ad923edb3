//! `cargo xtask bench controller`: the control plane's benchmark (10,000
//! Services, 100,000 endpoints, 1,000 watch streams), which lives beside the
//! controller as an example so it measures the controller's own index and
//! gRPC server in one process.

use anyhow::{Context, Result, bail};

use crate::workspace::cargo;

/// Builds and runs the controller benchmark in release; its report goes to stdout.
pub fn main() -> Result<bool> {
    let status = cargo()
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "plexus-controller",
            "--example",
            "bench_controller",
        ])
        .status()
        .context("starting cargo for the controller benchmark")?;
    if !status.success() {
        bail!("the controller benchmark failed ({status})");
    }
    Ok(true)
}
