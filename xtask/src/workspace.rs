//! Where the workspace and its build outputs are, and how to call the cargo
//! that runs us, so every task builds into the same target directory.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The workspace this xtask belongs to, as `cargo metadata` reports it (so a
/// `CARGO_TARGET_DIR` or a `build.target-dir` setting is honoured).
pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
}

#[derive(Deserialize)]
struct Metadata {
    workspace_root: PathBuf,
    target_directory: PathBuf,
}

impl Workspace {
    pub fn locate() -> Result<Self> {
        let output = cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .context("running `cargo metadata`")?;
        if !output.status.success() {
            bail!(
                "`cargo metadata` failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let metadata: Metadata = serde_json::from_slice(&output.stdout)
            .context("reading `cargo metadata` output (fields workspace_root, target_directory)")?;
        Ok(Self {
            root: metadata.workspace_root,
            target_dir: metadata.target_directory,
        })
    }
}

/// The cargo that started us (`CARGO` is set by `cargo run`), else the one on PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
