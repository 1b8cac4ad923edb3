//! The workspace's binaries as the tests run them: found in `PLEXUS_BIN_DIR`,
//! spawned with their output kept (and drained, so they never block on a
//! full pipe), found listening from their "listening" log line (on stderr,
//! where both Plexus binaries log).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// How long a binary may take to report that it listens.
pub const START_BOUND: Duration = Duration::from_secs(30);

/// Lines of a process's log kept to explain a failure.
const KEPT_LOG_LINES: usize = 200;

/// `name` in `PLEXUS_BIN_DIR` (set by `cargo xtask test`), else beside the
/// test binary's own directory (`<target>/debug`, where `cargo build
/// --workspace --all-targets` puts them). Panics with what to do when it is not built.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("PLEXUS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(default_bin_dir);
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} does not exist: run `cargo build --workspace --all-targets` first \
         (or point PLEXUS_BIN_DIR at the directory holding `{name}`)",
        path.display()
    );
    path
}

/// `<target>/debug` for a test binary at `<target>/debug/deps/<test>-<hash>`.
fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"))
}

/// A spawned binary; `kill_on_drop` makes sure no test leaves one behind.
pub struct Process {
    pub child: Child,
    /// Its log: stderr, where both Plexus binaries write it.
    log: Arc<Mutex<VecDeque<String>>>,
    stdout: Arc<Mutex<VecDeque<String>>>,
}

impl Process {
    /// Starts `command` and reads its log (stderr) until a line containing
    /// `marker`, which it returns; panics with the log when the process
    /// exits first or takes over [`START_BOUND`]. Its stdout is kept apart.
    pub async fn spawn(mut command: Command, what: &str, marker: &str) -> (Self, String) {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let stdout = Arc::new(Mutex::new(VecDeque::new()));
        let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(keep_lines(out, stdout.clone(), None));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(keep_lines(err, log.clone(), Some(line_tx)));
        }
        let found = tokio::time::timeout(START_BOUND, async {
            while let Some(line) = lines.recv().await {
                if line.contains(marker) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        let process = Self { child, log, stdout };
        match found {
            Ok(Some(line)) => (process, line),
            Ok(None) => panic!("{what} exited before listening:\n{}", process.log()),
            Err(_) => panic!(
                "{what} did not report listening within {START_BOUND:?}:\n{}",
                process.log()
            ),
        }
    }

    /// The last lines the process logged, then anything it wrote to stdout,
    /// for failure messages.
    pub fn log(&self) -> String {
        let stdout = self.stdout();
        let log = lines(&self.log);
        match stdout.is_empty() {
            true => log,
            false => format!("{log}\nstdout:\n{stdout}"),
        }
    }

    /// What the process wrote to stdout (its last lines).
    pub fn stdout(&self) -> String {
        lines(&self.stdout)
    }

    /// What the process used so far (Linux's /proc): CPU time, all threads,
    /// user and system; and its resident memory, now and at its peak.
    pub fn usage(&self) -> Usage {
        let pid = self.child.id().expect("the process runs");
        let read = |file: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .unwrap_or_else(|e| panic!("/proc/{pid}/{file}: {e}"))
        };
        let stat = read("stat");
        // Fields after the command name's `)`, from field 3: utime is 14, stime 15.
        let after_name = &stat[stat.rfind(')').expect("a command name") + 1..];
        let fields: Vec<u64> = after_name
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // SAFETY: sysconf reads a system constant; no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let ticks = fields[14 - 3] + fields[15 - 3];
        let status = read("status");
        let kib = |field: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
        };
        Usage {
            cpu: Duration::from_millis(ticks * 1000 / per_second),
            rss_kib: kib("VmRSS:"),
            peak_rss_kib: kib("VmHWM:"),
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self) {
        let killed = tokio::time::timeout(START_BOUND, self.child.kill()).await;
        assert!(matches!(killed, Ok(Ok(()))), "SIGKILL and reap: {killed:?}");
    }
}

/// See [`Process::usage`].
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub cpu: Duration,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

fn lines(kept: &Mutex<VecDeque<String>>) -> String {
    let kept = kept.lock().unwrap_or_else(|e| e.into_inner());
    kept.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// Keeps the last lines of `output` (so the pipe never fills up and blocks
/// the binary) and passes each on while someone listens.
async fn keep_lines(
    output: impl AsyncRead + Unpin,
    kept: Arc<Mutex<VecDeque<String>>>,
    lines_tx: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(tx) = &lines_tx {
            let _ = tx.send(line.clone());
        }
        let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() == KEPT_LOG_LINES {
            kept.pop_front();
        }
        kept.push_back(line);
    }
}

/// The value of `name=` in a tracing log line (`webhook=off`, say).
pub fn field(line: &str, name: &str) -> String {
    line.split(&format!(" {name}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        .to_string()
}

/// The value of `name=` in a tracing log line, as an address.
pub fn addr_field(line: &str, name: &str) -> std::net::SocketAddr {
    let value = field(line, name);
    value
        .parse()
        .unwrap_or_else(|e| panic!("{name}={value:?} in {line:?}: {e}"))
}

/// The controller's `/status` (JSON), read from its admin address.
pub async fn controller_status(admin: &str) -> serde_json::Value {
    let admin = admin.parse().expect("an admin address");
    let (status, body) =
        crate::wait::bounded("GET /status", crate::http::admin_get(admin, "/status")).await;
    assert_eq!(status, 200, "/status: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is JSON ({e}): {body}"))
}

/// A running `plexus-controller` and the addresses from its "listening" log
/// line (`webhook` is `off` when not served).
pub struct ControllerProcess {
    pub process: Process,
    pub grpc: String,
    pub admin: String,
    pub webhook: String,
}

/// Writes `objects` as the feed file in `dir`, starts `plexus-controller` on
/// it with ephemeral gRPC and admin ports plus `args` and `env`, and waits
/// (bounded) for it to report where it listens.
pub async fn start_controller(
    dir: &Path,
    objects: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> ControllerProcess {
    let feed = dir.join("objects.yaml");
    std::fs::write(&feed, objects).expect("write the feed file");
    let mut command = Command::new(bin("plexus-controller"));
    command.arg(format!("--feed=file:{}", feed.display()));
    spawn_controller(command, args, env).await
}

/// Starts `plexus-controller --feed kubernetes` against `api` (a kubeconfig
/// in `dir` names it) with ephemeral gRPC, admin and webhook ports plus
/// `args` and `env`, and waits (bounded) for it to report where it listens.
pub async fn start_controller_on(
    api: &crate::apiserver::ApiServer,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> ControllerProcess {
    let kubeconfig = dir.join("kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: stand-in\n\
         clusters: [{{name: stand-in, cluster: {{server: \"{}\"}}}}]\n\
         users: [{{name: stand-in, user: {{}}}}]\n\
         contexts: [{{name: stand-in, context: {{cluster: stand-in, user: stand-in}}}}]\n",
        api.url()
    );
    std::fs::write(&kubeconfig, config).expect("write the kubeconfig");
    let mut command = Command::new(bin("plexus-controller"));
    command
        .args(["--feed=kubernetes", "--webhook-addr=127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig);
    spawn_controller(command, args, env).await
}

async fn spawn_controller(
    mut command: Command,
    args: &[&str],
    env: &[(&str, &str)],
) -> ControllerProcess {
    command
        .args(["--grpc-addr=127.0.0.1:0", "--admin-addr=127.0.0.1:0"])
        .args(args)
        .env("PLEXUS_LOG", "info")
        .envs(env.iter().copied());
    let (process, line) =
        Process::spawn(command, "plexus-controller", "plexus-controller listening").await;
    ControllerProcess {
        grpc: field(&line, "grpc"),
        admin: field(&line, "admin"),
        webhook: field(&line, "webhook"),
        process,
    }
}
