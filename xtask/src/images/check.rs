//! `cargo xtask images --check`: each archive read by tools that did not write it.
//! `skopeo inspect` parses the archive and its config; `skopeo copy` turns it into an
//! OCI directory that `umoci unpack` extracts as a runtime bundle; then the image's
//! own commands run inside that root filesystem (`chroot`, as the image's user).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Built, VERSION, last_line, require_tool};

/// How long one command inside an image may take (`--version` is instant; a proxy that
/// started serving instead would not return).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub fn require_tools() -> Result<()> {
    for tool in ["skopeo", "umoci"] {
        require_tool(tool, "--check")?;
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("--check runs each image's commands under chroot, which needs root");
    }
    Ok(())
}

pub fn image(built: &Built, out: &Path) -> Result<()> {
    let name = built.image.name;
    let archive = format!("oci-archive:{}:{VERSION}", built.path.display());
    let inspect = tool("skopeo", &["inspect", "--config", &archive])?;
    let config: serde_json::Value =
        serde_json::from_slice(&inspect.stdout).context("skopeo inspect --config: not JSON")?;
    let user = &config["config"]["User"];
    let expected = format!("{0}:{0}", built.image.user.1);
    if user.as_str() != Some(expected.as_str()) {
        bail!("{name}: skopeo reads user {user}, expected {expected:?}");
    }

    let work = out.join("check").join(name);
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let layout = work.join("oci");
    let bundle = work.join("bundle");
    tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &archive,
            &format!("oci:{}:{VERSION}", layout.display()),
        ],
    )?;
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{VERSION}", layout.display()),
            &bundle.display().to_string(),
        ],
    )?;
    let rootfs = bundle.join("rootfs");
    for (argv, uid) in built.image.checks {
        let output = in_image(&rootfs, argv, *uid)
            .with_context(|| format!("{name}: `{}` inside the image", argv.join(" ")))?;
        let first = String::from_utf8_lossy(&output.stdout);
        let first = first.lines().next().unwrap_or("").trim();
        if first.is_empty() {
            bail!(
                "{name}: `{}` inside the image printed nothing",
                argv.join(" ")
            );
        }
        eprintln!("images: {name}: {} (uid {uid}) -> {first}", argv.join(" "));
    }
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(())
}

/// `argv` run in `rootfs` as `uid`, with only the image's PATH; an error unless it exits 0
/// within [`COMMAND_TIMEOUT`].
fn in_image(rootfs: &Path, argv: &[&str], uid: u32) -> Result<Output> {
    let mut child = Command::new("chroot")
        .arg(format!("--userspec={uid}:{uid}"))
        .arg(rootfs)
        .args(argv)
        .env_clear()
        .env("PATH", super::PATH.trim_start_matches("PATH="))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running chroot")?;
    let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            bail!("did not exit within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("exited {}: {}", output.status, last_line(&output.stderr));
    }
    Ok(output)
}

fn tool(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            last_line(&output.stderr)
        );
    }
    Ok(output)
}
