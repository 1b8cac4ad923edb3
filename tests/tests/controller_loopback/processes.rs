//! The controller and the proxies as the real binaries: spawned with their
//! listeners on ephemeral loopback ports, found from their "listening" log
//! line, killed (SIGKILL) when dropped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use plexus_tests::bins::bin;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use super::{BOUND, eventually, http_get};

/// Lines of a process's log kept to explain a failure.
const KEPT_LOG_LINES: usize = 200;

/// A spawned binary; `kill_on_drop` makes sure no test leaves one behind.
pub struct Process {
    child: Child,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Process {
    /// Starts `command` and reads its output (stdout and stderr: the
    /// controller logs to one, the proxy to the other) until a line
    /// containing `marker`, which it returns.
    async fn spawn(mut command: Command, what: &str, marker: &str) -> (Self, String) {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(keep_log(out, log.clone(), line_tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(keep_log(err, log.clone(), line_tx));
        }
        let found = tokio::time::timeout(BOUND, async {
            while let Some(line) = lines.recv().await {
                if line.contains(marker) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        let process = Self { child, log };
        match found {
            Ok(Some(line)) => (process, line),
            Ok(None) => panic!("{what} exited before listening:\n{}", process.log()),
            Err(_) => panic!(
                "{what} did not report listening within {BOUND:?}:\n{}",
                process.log()
            ),
        }
    }

    /// The last lines the process wrote, for failure messages.
    pub fn log(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// SIGKILL, and wait for the process to be gone.
    async fn kill(&mut self) {
        let killed = tokio::time::timeout(BOUND, self.child.kill()).await;
        assert!(matches!(killed, Ok(Ok(()))), "SIGKILL and reap: {killed:?}");
    }
}

/// Keeps the last lines of `output` (so the pipe never fills up and blocks
/// the binary) and passes each on while someone listens.
async fn keep_log(
    output: impl AsyncRead + Unpin,
    log: Arc<Mutex<VecDeque<String>>>,
    lines_tx: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let _ = lines_tx.send(line.clone());
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == KEPT_LOG_LINES {
            log.pop_front();
        }
        log.push_back(line);
    }
}

/// The value of `name=` in a tracing log line.
fn field(line: &str, name: &str) -> SocketAddr {
    let value = line
        .split(&format!(" {name}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"));
    value
        .parse()
        .unwrap_or_else(|e| panic!("{name}={value:?} in {line:?}: {e}"))
}

/// `plexus-controller --feed file:… --grpc-plaintext`.
pub struct Controller {
    process: Process,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl Controller {
    /// On ephemeral ports.
    pub async fn start(feed: &Path) -> Self {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
        Self::start_on(feed, any, any).await
    }

    /// On given ports (a restart keeps them: proxies know only the address).
    pub async fn start_on(feed: &Path, grpc: SocketAddr, admin: SocketAddr) -> Self {
        let mut command = Command::new(bin("plexus-controller"));
        command
            .env_clear()
            .arg(format!("--feed=file:{}", feed.display()))
            .arg(format!("--grpc-addr={grpc}"))
            .arg(format!("--admin-addr={admin}"))
            // Plaintext keeps the test about discovery; mTLS has its own tests.
            .arg("--grpc-plaintext")
            .env("PLEXUS_LOG", "info");
        let (process, line) =
            Process::spawn(command, "plexus-controller", "plexus-controller listening").await;
        let controller = Self {
            grpc: field(&line, "grpc"),
            admin: field(&line, "admin"),
            process,
        };
        let admin = controller.admin;
        eventually("the controller's /ready", || async move {
            let reply = http_get(admin, "admin", "/ready", &[]).await?;
            (reply.status == 200)
                .then_some(())
                .ok_or(reply.status.to_string())
        })
        .await;
        controller
    }

    /// `plexus_controller_watchers{api="destination"}`: open Watch streams.
    pub async fn watchers(&self) -> Result<u64, String> {
        let reply = http_get(self.admin, "admin", "/metrics", &[]).await?;
        reply
            .body
            .lines()
            .find_map(|line| line.strip_prefix("plexus_controller_watchers{api=\"destination\"} "))
            .and_then(|value| value.trim().parse().ok())
            .ok_or_else(|| "no plexus_controller_watchers in /metrics".to_string())
    }

    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// `plexus-proxy` with the controller as its source of destinations.
pub struct Proxy {
    process: Process,
    /// Where clients send traffic addressed by `Host` (local mode).
    pub outbound: SocketAddr,
}

impl Proxy {
    pub async fn start(name: &str, controller: SocketAddr, namespace: &str) -> Self {
        let mut command = Command::new(bin("plexus-proxy"));
        command
            .env_clear()
            .env("PLEXUS_CONTROLLER_ADDR", controller.to_string())
            .env("PLEXUS_OUTBOUND_ADDR", "127.0.0.1:0")
            .env("PLEXUS_INBOUND_ADDR", "127.0.0.1:0")
            .env("PLEXUS_ADMIN_ADDR", "127.0.0.1:0")
            .env("PLEXUS_POD_NAMESPACE", namespace)
            // One worker: the machine has two cores for everything in the test.
            .env("PLEXUS_WORKER_THREADS", "1")
            .env("PLEXUS_LOG", "info");
        let what = format!("plexus-proxy {name}");
        let (process, line) = Process::spawn(command, &what, "proxy listening").await;
        let proxy = Self {
            outbound: field(&line, "outbound_addr"),
            process,
        };
        let admin = field(&line, "admin_addr");
        eventually(&format!("{what}'s /ready"), || async move {
            let reply = http_get(admin, "admin", "/ready", &[]).await?;
            (reply.status == 200)
                .then_some(())
                .ok_or(reply.status.to_string())
        })
        .await;
        proxy
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}
