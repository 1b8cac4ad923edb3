//! Applies rendered rules with `iptables-save` / `iptables-restore --noflush`.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::rules::{Family, Redirect};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "could not run `{command}` (are iptables and iproute2 installed in the image?): {source}"
    )]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// The commands for one address family.
#[derive(Debug, Clone, Copy)]
struct Tools {
    save: &'static str,
    restore: &'static str,
}

impl From<Family> for Tools {
    fn from(family: Family) -> Self {
        match family {
            Family::V4 => Self {
                save: "iptables-save",
                restore: "iptables-restore",
            },
            Family::V6 => Self {
                save: "ip6tables-save",
                restore: "ip6tables-restore",
            },
        }
    }
}

/// Installs the rules for `family` in the current network namespace in one atomic restore,
/// and returns the text it applied. Safe to run again: see [`Redirect::render`].
pub fn apply(redirect: &Redirect, family: Family) -> Result<String, ApplyError> {
    let tools = Tools::from(family);
    let current = run(tools.save, &["-t", "nat"], None)?;
    let input = redirect.render(family, &current);
    run(tools.restore, &["--noflush"], Some(&input))?;
    Ok(input)
}

/// Puts the inbound proxy's IPv6 source address ([`plexus_core::app_source::V6`]) on `lo`:
/// unlike 127.0.0.0/8 it is not local by default, and the app's replies to it must stay in
/// the pod. `replace` makes a second run a no-op; `nodad`: `lo` has no neighbours to ask.
pub fn add_app_source_v6() -> Result<(), ApplyError> {
    let address = format!("{}/128", plexus_core::app_source::V6);
    let args = ["-6", "addr", "replace", &address, "dev", "lo", "nodad"];
    run("ip", &args, None).map(drop)
}

/// Runs `program args`, feeding `stdin` if given, and returns its standard output.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
    let command = format!("{program} {}", args.join(" "));
    let spawn_error = |source| ApplyError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_error)?;
        // Dropping the pipe closes it, so the restore sees end of input.
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if !output.status.success() {
        return Err(ApplyError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
