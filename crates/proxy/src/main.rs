//! `plexus-proxy`: reads its `PLEXUS_*` environment, serves until SIGTERM
//! (or `POST /shutdown`), drains, exits 0.

use std::process::ExitCode;

use plexus_proxy::Proxy;
use plexus_proxy::config::Config;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
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
