//! `cargo xtask images`: builds the container images of `images/` with
//! `docker build` from the workspace root, tagged `plexus/<name>:<version>`
//! (the workspace version, which the chart and the injector name), and
//! optionally pushes them to a registry.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::workspace::Workspace;

/// The images, by name: `images/<name>.Dockerfile` makes `plexus/<name>`.
const IMAGES: [&str; 3] = ["controller", "proxy", "demo-app"];
const REPOSITORY: &str = "plexus";
const DOCKER: &str = "docker";

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Also tag each image `<REGISTRY>/plexus/<name>:<version>` and push it
    /// there (e.g. `ghcr.io/acme`, `localhost:5000`).
    #[arg(long, value_name = "REGISTRY")]
    pub push: Option<String>,
    /// Print the docker commands instead of running them (no engine needed).
    #[arg(long)]
    pub dry_run: bool,
}

/// One docker invocation, run from the workspace root.
#[derive(Debug, PartialEq, Eq)]
struct Step {
    args: Vec<String>,
}

impl Step {
    fn docker(args: impl IntoIterator<Item = String>) -> Self {
        Step {
            args: args.into_iter().collect(),
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "docker {}", self.args.join(" "))
    }
}

/// The docker commands that build (and push) every image, in order.
fn plan(version: &str, push: Option<&str>) -> Result<Vec<Step>> {
    let registry = push.map(|r| r.trim_end_matches('/'));
    if registry.is_some_and(|r| r.is_empty() || r.contains(char::is_whitespace)) {
        bail!(
            "--push {:?}: expected a registry such as ghcr.io/acme",
            push.unwrap_or_default()
        );
    }
    let mut steps = Vec::new();
    for name in IMAGES {
        let local = format!("{REPOSITORY}/{name}:{version}");
        let mut build = vec![
            "build".to_string(),
            "--file".to_string(),
            format!("images/{name}.Dockerfile"),
            "--tag".to_string(),
            local,
        ];
        let remote = registry.map(|r| format!("{r}/{REPOSITORY}/{name}:{version}"));
        if let Some(remote) = &remote {
            build.extend(["--tag".to_string(), remote.clone()]);
        }
        // The context is the workspace root: the builds compile the whole workspace.
        build.push(".".to_string());
        steps.push(Step::docker(build));
        if let Some(remote) = remote {
            steps.push(Step::docker(["push".to_string(), remote]));
        }
    }
    Ok(steps)
}

pub fn run(args: ImagesArgs) -> Result<()> {
    let workspace = Workspace::locate()?;
    let steps = plan(env!("CARGO_PKG_VERSION"), args.push.as_deref())?;
    if args.dry_run {
        for step in &steps {
            println!("{step}");
        }
        return Ok(());
    }
    require_engine(DOCKER)?;
    for step in &steps {
        eprintln!("images: {step}");
        run_step(step, &workspace.root)?;
    }
    for name in IMAGES {
        eprintln!(
            "images: built {REPOSITORY}/{name}:{}",
            env!("CARGO_PKG_VERSION")
        );
    }
    Ok(())
}

/// `docker info` answers only when an engine does; the client alone is not enough.
fn require_engine(docker: &str) -> Result<()> {
    let output = Command::new(docker)
        .arg("info")
        .stdin(Stdio::null())
        .output();
    let why = match output {
        Ok(output) if output.status.success() => return Ok(()),
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            format!("`docker info` failed ({}): {}", output.status, first.trim())
        }
        Err(error) => format!("`docker` could not be run: {error}"),
    };
    bail!(
        "cargo xtask images needs a Docker engine (a running dockerd, or DOCKER_HOST pointing \
         at one), not only the docker client.\n  {why}\n  `cargo xtask images --dry-run` \
         prints the commands it would run."
    )
}

fn run_step(step: &Step, root: &Path) -> Result<()> {
    let status = Command::new(DOCKER)
        .args(step.args.iter().map(OsString::from))
        .current_dir(root)
        // The per-Dockerfile `.dockerignore` files are a BuildKit feature.
        .env("DOCKER_BUILDKIT", "1")
        .status()
        .with_context(|| format!("running `{step}`"))?;
    if !status.success() {
        bail!("`{step}` failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_image_is_built_from_the_root_with_its_dockerfile_and_version_tag() {
        let steps = plan("1.2.3", None).unwrap();
        let lines: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "docker build --file images/controller.Dockerfile --tag plexus/controller:1.2.3 .",
                "docker build --file images/proxy.Dockerfile --tag plexus/proxy:1.2.3 .",
                "docker build --file images/demo-app.Dockerfile --tag plexus/demo-app:1.2.3 .",
            ]
        );
    }

    #[test]
    fn push_tags_for_the_registry_and_pushes_after_each_build() {
        let steps = plan("0.1.0", Some("localhost:5000/")).unwrap();
        assert_eq!(steps.len(), 6);
        assert_eq!(
            steps[0].to_string(),
            "docker build --file images/controller.Dockerfile --tag plexus/controller:0.1.0 \
             --tag localhost:5000/plexus/controller:0.1.0 ."
        );
        assert_eq!(
            steps[1].to_string(),
            "docker push localhost:5000/plexus/controller:0.1.0"
        );
        assert_eq!(
            steps[5].to_string(),
            "docker push localhost:5000/plexus/demo-app:0.1.0"
        );
        assert!(plan("0.1.0", Some("")).is_err());
        assert!(plan("0.1.0", Some("bad registry")).is_err());
    }

    #[test]
    fn without_an_engine_the_error_says_one_is_needed() {
        let error = require_engine("/nonexistent/docker")
            .unwrap_err()
            .to_string();
        assert!(error.contains("needs a Docker engine"), "{error}");
        // A client whose `info` fails (as with no daemon) is refused the same way.
        let error = require_engine("false").unwrap_err().to_string();
        assert!(
            error.contains("needs a Docker engine") && error.contains("`docker info` failed"),
            "{error}"
        );
    }

    #[test]
    fn every_planned_dockerfile_exists() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for name in IMAGES {
            let dockerfile = root.join(format!("images/{name}.Dockerfile"));
            assert!(dockerfile.is_file(), "{}", dockerfile.display());
        }
    }
}
