//! `cargo xtask bench --peers`: a release plexus-proxy beside nginx and
//! HAProxy (Debian packages) in one run, by `bench/peers/plexus.sh` — wrk for
//! HTTP/1.1 at 16 and 1 connections, h2load for h2c, RSS after the load, each
//! target's throughput as a ratio of the upstream's own. The scripts live in
//! the project so the comparison can be repeated from any checkout.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{BenchArgs, proxy};
use crate::workspace::Workspace;

/// What the scripts need on the machine (Debian package names in the hint).
const TOOLS: &[(&str, &str)] = &[
    ("nginx", "nginx-light"),
    ("haproxy", "haproxy"),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("curl", "curl"),
    ("ss", "iproute2"),
];

/// Runs `--rounds` side-by-side rounds; with more than one, prints the
/// medians over all of them last.
pub fn main(args: &BenchArgs) -> Result<bool> {
    missing_tools()?;
    let workspace = Workspace::locate()?;
    let proxy = match &args.proxy_bin {
        Some(path) => path.clone(),
        None => proxy::build_release(&workspace, &["plexus-proxy"])?.join("plexus-proxy"),
    };
    let scripts = workspace.root.join("bench").join("peers");
    let workdir = workspace.target_dir.join("xtask-bench");
    std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let mut results = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        let tsv = workdir.join(format!("peers-{round}.tsv"));
        eprintln!("bench: peers round {round} of {}", args.rounds);
        let mut command = Command::new(scripts.join("plexus.sh"));
        command.arg("-o").arg(&tsv).env("PLEXUS_PROXY", &proxy);
        if let Some(threads) = args.proxy_threads {
            command.env("PLEXUS_WORKERS", threads.to_string());
        }
        run(&mut command)?;
        results.push(tsv);
    }
    if results.len() > 1 {
        println!("\nMedians over {} rounds:\n", results.len());
        run(Command::new(scripts.join("summarize.sh")).args(&results))?;
    }
    eprintln!("bench: raw results in {}", display_all(&results));
    Ok(true)
}

fn missing_tools() -> Result<()> {
    let missing: Vec<_> = TOOLS
        .iter()
        .filter(|(tool, _)| super::on_path(tool).is_none())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        bail!(
            "--peers needs nginx, HAProxy and the load tools: apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
    }
    Ok(())
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", command.get_program());
    }
    Ok(())
}

fn display_all(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
