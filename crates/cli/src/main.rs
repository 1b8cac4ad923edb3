//! plexusctl: the Plexus command line.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use plexus_inject::InjectConfig;

#[derive(Debug, Parser)]
#[command(
    name = "plexusctl",
    version,
    about = "The Plexus service mesh command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Inject(InjectCommand),
    Check(plexusctl::check::CheckCommand),
    Traces(plexusctl::traces::TracesCommand),
}

/// Add the Plexus proxy to the pod templates of Kubernetes YAML (offline, the
/// same mutation the admission webhook makes). Reads a file or stdin, writes stdout.
#[derive(Debug, clap::Args)]
struct InjectCommand {
    /// YAML file of Kubernetes objects; `-` or nothing reads stdin.
    file: Option<PathBuf>,
    /// Proxy image (it also carries plexus-init).
    #[arg(long)]
    proxy_image: Option<String>,
    /// `host:port` of the controller's Destination + Identity gRPC service.
    #[arg(long)]
    controller_addr: Option<String>,
    /// OTLP/gRPC endpoint the proxies export spans to.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Share of new traces the proxies record, 0.0 to 1.0.
    #[arg(long)]
    trace_sampling: Option<f64>,
    /// SPIFFE trust domain.
    #[arg(long)]
    trust_domain: Option<String>,
    /// PEM file of the mesh's trust anchors (the `ca.crt` of Secret `plexus-ca`),
    /// given to each proxy inline. Required.
    #[arg(long, value_name = "FILE")]
    trust_anchors: Option<PathBuf>,
}

/// How to get the trust anchors, for the error when `--trust-anchors` is missing.
const TRUST_ANCHORS_HINT: &str = "--trust-anchors FILE is required: the proxies need the mesh's \
trust anchors. In a cluster with Plexus installed: kubectl -n plexus get secret plexus-ca \
-o jsonpath='{.data.ca\\.crt}' | base64 -d > ca.crt";

impl InjectCommand {
    fn run(self) -> anyhow::Result<()> {
        let mut config = InjectConfig::default();
        if let Some(image) = self.proxy_image {
            config.proxy_image = image;
        }
        if let Some(addr) = self.controller_addr {
            config.controller_addr = addr;
        }
        if let Some(endpoint) = self.otlp_endpoint {
            config.otlp_endpoint = endpoint;
        }
        if let Some(ratio) = self.trace_sampling {
            anyhow::ensure!(
                (0.0..=1.0).contains(&ratio),
                "--trace-sampling must be between 0.0 and 1.0, got {ratio}"
            );
            config.trace_sampling = ratio;
        }
        if let Some(domain) = self.trust_domain {
            config.trust_domain = domain;
        }
        let anchors = self.trust_anchors.context(TRUST_ANCHORS_HINT)?;
        config.trust_anchors = std::fs::read_to_string(&anchors)
            .with_context(|| format!("--trust-anchors {}", anchors.display()))?;
        anyhow::ensure!(
            config.trust_anchors.trim_start().starts_with("-----BEGIN"),
            "--trust-anchors {}: not a PEM file (expected -----BEGIN CERTIFICATE-----)",
            anchors.display()
        );
        let input = match self.file.as_deref() {
            None => read_stdin()?,
            Some(path) if path.as_os_str() == "-" => read_stdin()?,
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        };
        let injected = plexusctl::inject::inject_with_notes(&input, &config)?;
        for note in &injected.notes {
            eprintln!("{note}");
        }
        std::io::stdout()
            .lock()
            .write_all(injected.yaml.as_bytes())
            .context("writing to stdout")
    }
}

fn read_stdin() -> anyhow::Result<String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading YAML from stdin")?;
    Ok(input)
}

// An error is one line with its causes (`{:#}`), exit 1: returning it from `main` would
// print anyhow's Debug form, with a backtrace under RUST_BACKTRACE=1.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = match Cli::parse().command {
        Command::Inject(inject) => inject.run(),
        Command::Check(check) => check.run().await,
        Command::Traces(traces) => traces.run().await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("plexusctl: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
