//! `plexus-proxy`: reads its `PLEXUS_*` environment, serves until SIGTERM
//! (or `POST /shutdown`), drains, exits 0. The only arguments are `--help` and
//! `--version`: the configuration is the environment.

use std::process::ExitCode;

use plexus_proxy::Proxy;
use plexus_proxy::config::Config;
use tokio::signal::unix::{SignalKind, signal};

const HELP: &str = "\
plexus-proxy: the Plexus sidecar proxy. Configured by environment only; main variables:
  PLEXUS_OUTBOUND_ADDR, PLEXUS_INBOUND_ADDR, PLEXUS_ADMIN_ADDR   listeners
  PLEXUS_CONTROLLER_ADDR or PLEXUS_STATIC_CONFIG                 where destinations come from
  PLEXUS_IDENTITY, PLEXUS_IDENTITY_ADDR, PLEXUS_IDENTITY_TOKEN_FILE,
  PLEXUS_IDENTITY_TRUST_ANCHORS                                  mTLS identity
  PLEXUS_INBOUND_MTLS_MODE                                       permissive (default) or strict
  PLEXUS_OTLP_ENDPOINT, PLEXUS_TRACE_SAMPLING                    tracing
  PLEXUS_LOG                                                     log filter (e.g. info)
All of them: docs/architecture.md, \"Proxy environment\".
Usage: plexus-proxy [--help | --version]
";

/// `Some(exit code)` when the arguments ask for help or the version (or are wrong)
/// instead of a proxy.
fn command_line(args: &[String]) -> Option<ExitCode> {
    match args {
        [] => None,
        [flag] if flag == "--help" || flag == "-h" => {
            print!("{HELP}");
            Some(ExitCode::SUCCESS)
        }
        [flag] if flag == "--version" || flag == "-V" => {
            println!("plexus-proxy {}", env!("CARGO_PKG_VERSION"));
            Some(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!(
                "plexus-proxy: unexpected argument {:?}: the proxy takes only --help or --version (configure it with PLEXUS_* variables)",
                args.join(" ")
            );
            Some(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(code) = command_line(&args) {
        return code;
    }
    let config = match Config::from_process_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("plexus-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    // `config` refused a bad filter with the other variables: building it cannot fail now.
    let filter = tracing_subscriber::EnvFilter::new(&config.log);
    // Logs go to stderr in tracing's default format, as the controller's do
    // (docs/architecture.md, "Logs"); stdout carries nothing.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut runtime = match config.worker_threads {
        // One thread: no cross-thread wake-ups on the request path.
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("plexus-proxy: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plexus-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut proxy = Proxy::bind(config).await?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        // POST /shutdown started the drain; wait for it below.
        _ = proxy.drained() => return Ok(()),
    }
    proxy.shutdown().await;
    Ok(())
}
