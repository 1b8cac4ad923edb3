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
    let filter = match tracing_subscriber::EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!(
                "plexus-proxy: PLEXUS_LOG={:?} is invalid: expected a tracing filter ({e})",
                config.log
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
