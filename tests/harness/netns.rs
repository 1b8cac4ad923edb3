//! Network namespaces the tests create (with `ip netns`) and delete when they
//! end, pass or fail: the "pods" and "nodes" of the root-only tests, which
//! live in `netns` modules and are `#[ignore = "root-only: …"]`.
//!
//! A socket belongs to the namespace of the thread that created it, so
//! [`Netns::socket`] creates it from a short-lived thread that joined the
//! namespace; the socket is then used from the test's runtime like any other.

use std::ffi::OsStr;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Why this machine cannot run a network-namespace test, if it cannot: not
/// root, or one of `tools` missing.
pub fn missing_prerequisite(tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    tools
        .iter()
        .find(|tool| Command::new(tool).arg("--version").output().is_err())
        .map(|tool| format!("`{tool}` is not installed (apt-get install iproute2 iptables)"))
}

/// Fails `test` (a root-only test, `#[ignore]`d so that only a run that asks
/// for it gets here) with what is missing when this machine cannot run it:
/// a test that was asked to run never passes without having run.
pub fn require_root_and(test: &str, tools: &[&str]) {
    if let Some(why) = missing_prerequisite(tools) {
        panic!(
            "{test} cannot run here: {why}. It needs root, network namespaces and {tools:?}; \
             run it as root, or leave it ignored (`cargo xtask test` runs it only when it can)"
        );
    }
}

/// Runs `program` to completion; its stdout, or an error with its stderr.
pub fn run(program: impl AsRef<OsStr>, args: &[&str]) -> Result<String, String> {
    let program = program.as_ref();
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", program.to_string_lossy()))?;
    if !status.success() {
        return Err(format!(
            "{} {args:?}: {status}: {}",
            program.to_string_lossy(),
            String::from_utf8_lossy(&stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Removes what a killed test run left behind: namespaces named
/// `<prefix>-<pid>-…` whose test process `<pid>` is gone, and the processes
/// still running inside them. (A run that ends normally cleans up on drop.)
pub fn remove_stale(prefix: &str) {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.is_empty() || std::path::Path::new("/proc").join(pid).exists() {
            continue;
        }
        for inside in run("ip", &["netns", "pids", name])
            .unwrap_or_default()
            .lines()
        {
            if let Ok(inside) = inside.trim().parse::<libc::pid_t>() {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(inside, libc::SIGKILL) };
            }
        }
        let _ = run("ip", &["netns", "del", name]);
    }
}

/// A network namespace, deleted on drop. Processes still running inside keep
/// it alive: stop them first.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` (unique per test run: put the pid in it)
    /// with its loopback up.
    pub fn create(name: String) -> Result<Self, String> {
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` to be run inside the namespace (`ip netns exec`, which execs
    /// it: the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `program` inside the namespace to completion.
    pub fn exec(&self, program: impl AsRef<OsStr>, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        let program = program.as_ref().to_string_lossy().into_owned();
        all.push(&program);
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A TCP/IPv4 socket that lives in this namespace.
    pub fn socket(&self) -> std::io::Result<Socket> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path)?;
            // SAFETY: a valid namespace fd; setns moves only this thread, which ends here.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .join()
        .map_err(|_| std::io::Error::other("the setns thread panicked"))?
    }

    /// Connects from this namespace to `addr`, giving up after `bound`.
    pub async fn connect(&self, addr: SocketAddr, bound: Duration) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::from_std_stream(self.socket()?.into());
        match tokio::time::timeout(bound, socket.connect(addr)).await {
            Ok(connected) => connected,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "connecting to {addr} from {} took over {bound:?}",
                    self.name
                ),
            )),
        }
    }

    /// A listener on `addr` inside this namespace. Needs a tokio runtime.
    pub fn listen(&self, addr: SocketAddr) -> std::io::Result<TcpListener> {
        let socket = self.socket()?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(128)?;
        TcpListener::from_std(socket.into())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("leaving network namespace {}: {e}", self.name);
        }
    }
}
