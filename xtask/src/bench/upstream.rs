//! The upstream: a tiny HTTP/1.1 + h2c server answering every request with a
//! short body. It runs as its own process (`xtask bench-upstream`, on a small
//! runtime) so its CPU is not charged to the load generator or a proxy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::time::timeout;

const BODY: &[u8] = b"plexus bench upstream\n";
const READY_LINE_PREFIX: &str = "listening ";
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct UpstreamArgs {
    /// Address to listen on; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
    /// Tokio worker threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// The `bench-upstream` subcommand: serves until its stdin closes, which
/// happens when the bench that spawned it exits, however it exits.
pub fn main(args: UpstreamArgs) -> Result<()> {
    super::runtime(args.threads)?.block_on(async {
        let listener = TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("binding {}", args.addr))?;
        println!("{READY_LINE_PREFIX}{}", listener.local_addr()?);
        tokio::select! {
            result = serve(listener) => result,
            () = parent_gone() => Ok(()),
        }
    })
}

pub async fn serve(listener: TcpListener) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("accepting a connection")?;
        // Latency figures are in µs: Nagle's algorithm must not add its delays.
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        tokio::spawn(async move {
            let answer = service_fn(|_request| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
            });
            // A peer closing mid-request is normal at the end of a scenario.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), answer)
                .await;
        });
    }
}

async fn parent_gone() {
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    while matches!(stdin.read(&mut buffer).await, Ok(n) if n > 0) {}
}

/// A running upstream process.
pub struct UpstreamProcess {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
}

impl UpstreamProcess {
    /// Starts this same executable as `bench-upstream` and waits for its address.
    pub async fn spawn(threads: usize) -> Result<Self> {
        let exe = std::env::current_exe().context("finding the xtask executable")?;
        let mut child = Command::new(exe)
            .args([
                "bench-upstream",
                "--addr",
                "127.0.0.1:0",
                "--threads",
                &threads.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the bench upstream")?;
        let pid = child.id().context("the bench upstream exited at once")?;
        let stdout = child
            .stdout
            .take()
            .context("the bench upstream has no stdout")?;
        let mut line = String::new();
        timeout(START_TIMEOUT, BufReader::new(stdout).read_line(&mut line))
            .await
            .with_context(|| format!("the bench upstream did not start within {START_TIMEOUT:?}"))?
            .context("reading the bench upstream's address")?;
        let Some(addr) = line.trim().strip_prefix(READY_LINE_PREFIX) else {
            bail!("the bench upstream printed {line:?}, expected `{READY_LINE_PREFIX}<addr>`");
        };
        let addr = addr
            .parse()
            .with_context(|| format!("the bench upstream printed the address {addr:?}"))?;
        Ok(Self { child, addr, pid })
    }

    pub async fn stop(mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .context("stopping the bench upstream")
    }
}
