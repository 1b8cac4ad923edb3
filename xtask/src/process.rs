//! The processes a task starts (the demo's controller, apps and sidecars; the bench's
//! proxies and controller), each logging to its own file, and the guarantee that the
//! task leaves none behind.
//!
//! Every child is killed when [`Processes`] is dropped: on success, on error (`?`), on
//! Ctrl-C (the caller returns early) and on panic (unwinding drops it). Children also ask
//! the kernel to kill them if the task itself dies without unwinding (`SIGKILL`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// How long stopped children get to exit after SIGTERM before they are killed.
const GRACE: Duration = Duration::from_secs(3);

pub struct Processes {
    log_dir: PathBuf,
    children: Vec<Running>,
}

struct Running {
    name: String,
    child: Child,
}

impl Processes {
    /// Children's output goes to `<log_dir>/<name>.log`.
    pub fn new(log_dir: &Path) -> anyhow::Result<Processes> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Processes {
            log_dir: log_dir.to_owned(),
            children: Vec::new(),
        })
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Starts `command` as `name`, logging to [`Processes::log_path`]; returns its pid.
    pub fn spawn(&mut self, name: &str, mut command: Command) -> anyhow::Result<u32> {
        let log = File::create(self.log_path(name))
            .with_context(|| format!("creating the log of {name}"))?;
        let log_err = log.try_clone().context("duplicating a log handle")?;
        // A child gets only the PLEXUS_* settings the task gives it, never the user's.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PLEXUS_") {
                command.env_remove(name);
            }
        }
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let child = command.spawn().with_context(|| {
            format!(
                "starting {name} ({})",
                command.as_std().get_program().to_string_lossy()
            )
        })?;
        let pid = child
            .id()
            .with_context(|| format!("{name} exited at once"))?;
        self.children.push(Running {
            name: name.to_owned(),
            child,
        });
        Ok(pid)
    }

    /// An error naming the first child that has exited, with the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for running in &mut self.children {
            if let Some(status) = running.child.try_wait().context("polling a child")? {
                let log = self.log_dir.join(format!("{}.log", running.name));
                anyhow::bail!(
                    "{} exited ({status}); the end of its log ({}):\n{}",
                    running.name,
                    log.display(),
                    log_tail(&log, 15)
                );
            }
        }
        Ok(())
    }

    /// SIGTERM to all, so the proxies flush their spans, then SIGKILL to the late.
    pub async fn stop_all(&mut self) {
        for running in &self.children {
            if let Some(pid) = running.child.id().and_then(|id| i32::try_from(id).ok()) {
                // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        let deadline = tokio::time::Instant::now() + GRACE;
        for running in &mut self.children {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if tokio::time::timeout(remaining, running.child.wait())
                .await
                .is_err()
            {
                let _ = running.child.kill().await;
            }
        }
        self.children.clear();
    }
}

/// The last `lines` lines of a log before any backtrace, for error messages: the
/// message that says why is what the user needs, the frames are in the file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().eq_ignore_ascii_case("stack backtrace:"))
                .collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            if tail.is_empty() {
                "    (empty)".to_owned()
            } else {
                tail.iter().map(|l| format!("    {l}\n")).collect()
            }
        }
        Err(e) => format!("    (unreadable: {e})"),
    }
}

/// Linux: the child gets SIGKILL when the thread that spawned it dies, so even a
/// `kill -9` of the task leaves nothing running. (The runtime's worker threads live as
/// long as the task.)
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    #[tokio::test]
    async fn a_child_that_exits_is_reported_with_its_log() {
        let dir = temp_dir("exit");
        let mut processes = Processes::new(&dir).expect("log dir");
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "echo 'Error: bind: address in use' >&2; echo; echo 'Stack backtrace:'; \
             echo '   0: anyhow::frame'; exit 3",
        ]);
        processes.spawn("broken", command).expect("spawns");
        let error = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Err(e) = processes.check_alive() {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the child exits");
        let message = format!("{error:#}");
        assert!(message.contains("broken exited"), "{message}");
        assert!(message.contains("bind: address in use"), "{message}");
        assert!(!message.contains("anyhow::frame"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn dropping_the_guard_kills_the_children() {
        let dir = temp_dir("drop");
        let mut processes = Processes::new(&dir).expect("log dir");
        let mut command = Command::new("sleep");
        command.arg("600");
        let pid = processes.spawn("sleeper", command).expect("spawns") as i32;
        assert!(alive(pid));
        drop(processes);
        // Killed at once; the zombie is reaped by tokio in the background.
        tokio::time::timeout(Duration::from_secs(10), async {
            while alive(pid) && !is_zombie(pid) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the child dies");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn stop_all_stops_children_that_ignore_nothing() {
        let dir = temp_dir("stop");
        let mut processes = Processes::new(&dir).expect("log dir");
        let mut command = Command::new("sleep");
        command.arg("600");
        processes.spawn("sleeper", command).expect("spawns");
        tokio::time::timeout(Duration::from_secs(10), processes.stop_all())
            .await
            .expect("stops within the grace period");
        assert!(processes.children.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.contains(") Z "))
            .unwrap_or(true)
    }
}
