//! `cargo xtask images`: the controller, proxy and demo-app images as OCI archives
//! (`target/images/<name>.oci.tar`), written directly from release binaries with no
//! container engine, tagged `plexus/<name>:<version>` (the workspace version, which
//! the chart and the injector name). `--check` has real tools that did not write them
//! (skopeo, umoci) read and unpack each one and runs its entrypoint inside it;
//! `--push REGISTRY` copies them to a registry with skopeo.

mod check;
mod oci;
mod rootfs;
mod tree;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::workspace::{Workspace, cargo};
use oci::RunConfig;
use tree::FileTree;

pub const REPOSITORY: &str = "plexus";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where the binaries go in every image; on the images' PATH.
const BIN_DIR: &str = "usr/local/bin";
const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The UID the proxy runs as (plexus-init's rules exempt it from redirection) and the
/// one the controller and the demo run as (the chart's `runAsUser`).
const PROXY_UID: u32 = 2102;
const NONROOT_UID: u32 = 65532;
/// iptables (Debian's default nf_tables backend), iproute2's `ip` (plexus-init puts the
/// inbound proxy's IPv6 source address on `lo`) and the libraries and files they need.
const PROXY_DEBS: [&str; 16] = [
    "iptables",
    "iproute2",
    "libbpf1",
    "libelf1",
    "libbsd0",
    "libmd0",
    "libcap2",
    "zlib1g",
    "libip4tc2",
    "libip6tc2",
    "libxtables12",
    "libnftnl11",
    "libmnl0",
    "libnetfilter-conntrack3",
    "libnfnetlink0",
    "netbase",
];
/// The names plexus-init runs, as Debian's `update-alternatives` would link them.
const IPTABLES_COMMANDS: [&str; 6] = [
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
];

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Also copy each image to `<REGISTRY>/plexus/<name>:<version>` with skopeo
    /// (e.g. `ghcr.io/acme`, `registry.example:5000`).
    #[arg(long, value_name = "REGISTRY")]
    pub push: Option<String>,
    /// After building, check every image with skopeo and umoci and run its
    /// entrypoint's `--version` inside it (chroot; needs root).
    #[arg(long)]
    pub check: bool,
}

/// One image: its binaries (workspace packages built with the release profile) and
/// how it runs.
pub struct Image {
    pub name: &'static str,
    packages: &'static [&'static str],
    binaries: &'static [&'static str],
    user: (&'static str, u32),
    entrypoint: &'static [&'static str],
    ports: &'static [u16],
    with_iptables: bool,
    /// Commands (argv, as uid) that `--check` runs inside the unpacked image.
    pub checks: &'static [(&'static [&'static str], u32)],
}

pub const IMAGES: [Image; 3] = [
    Image {
        name: "controller",
        packages: &["plexus-controller"],
        binaries: &["plexus-controller"],
        user: ("plexus", NONROOT_UID),
        entrypoint: &["/usr/local/bin/plexus-controller"],
        ports: &[8090, 8443, 9990],
        with_iptables: false,
        checks: &[(
            &["/usr/local/bin/plexus-controller", "--version"],
            NONROOT_UID,
        )],
    },
    Image {
        name: "proxy",
        packages: &["plexus-proxy", "plexus-init"],
        binaries: &["plexus-proxy", "plexus-init"],
        user: ("plexus-proxy", PROXY_UID),
        entrypoint: &["/usr/local/bin/plexus-proxy"],
        ports: &[15001, 15006, 15020],
        with_iptables: true,
        checks: &[
            (&["/usr/local/bin/plexus-proxy", "--version"], PROXY_UID),
            (&["/usr/local/bin/plexus-proxy", "--help"], PROXY_UID),
            // The injector's init container: `plexus-init` by PATH, as root.
            (&["plexus-init", "--version"], 0),
            (&["iptables-restore", "--version"], 0),
            (&["ip6tables-save", "--version"], 0),
            (&["ip", "-V"], 0),
        ],
    },
    Image {
        name: "demo-app",
        packages: &["xtask"],
        binaries: &["xtask"],
        user: ("plexus", NONROOT_UID),
        entrypoint: &["/usr/local/bin/xtask", "demo-app"],
        ports: &[8080],
        with_iptables: false,
        // `--help`: the app's own `--version <VERSION>` (the version it
        // reports, v1 or v2 of the demo's canary) shadows clap's flag.
        checks: &[(&["/usr/local/bin/xtask", "demo-app", "--help"], NONROOT_UID)],
    },
];

/// The proxy image is pulled onto every node and started in every pod.
const PROXY_IMAGE_LIMIT: u64 = 30 * 1024 * 1024;

impl Image {
    pub fn reference(&self) -> String {
        format!("{REPOSITORY}/{}:{VERSION}", self.name)
    }

    fn run_config(&self) -> RunConfig {
        RunConfig {
            user: format!("{0}:{0}", self.user.1),
            entrypoint: self.entrypoint.iter().map(ToString::to_string).collect(),
            env: vec![PATH.to_string()],
            exposed_ports: self.ports.iter().map(|p| format!("{p}/tcp")).collect(),
        }
    }

    /// The image's root filesystem from the release binaries in `release_dir`.
    fn root_filesystem(&self, release_dir: &Path, scratch: &Path) -> Result<FileTree> {
        let mut tree = rootfs::base(&[self.user])?;
        let mut elves = Vec::new();
        for binary in self.binaries {
            let source = release_dir.join(binary);
            rootfs::add_executable(&mut tree, &source, &format!("{BIN_DIR}/{binary}"))?;
            elves.push(source);
        }
        let unpacked = scratch.join(format!("{}-rootfs", self.name));
        if self.with_iptables {
            let debs = rootfs::fetch_debs(&scratch.join("debs"), &PROXY_DEBS)?;
            elves.extend(rootfs::add_debs(&mut tree, &debs, &unpacked)?);
            for command in IPTABLES_COMMANDS {
                tree.symlink(&format!("usr/sbin/{command}"), "xtables-nft-multi")?;
            }
        }
        rootfs::add_shared_libraries(
            &mut tree,
            &elves,
            self.with_iptables.then_some(unpacked.as_path()),
        )?;
        Ok(tree)
    }
}

/// An archive on disk and what was printed about it.
pub struct Built {
    pub image: &'static Image,
    pub path: PathBuf,
    pub manifest_digest: String,
    pub uncompressed_size: u64,
}

pub fn run(args: ImagesArgs) -> Result<()> {
    let registry = args.push.as_deref().map(registry).transpose()?;
    if registry.is_some() {
        require_tool("skopeo", "--push")?;
    }
    if args.check {
        check::require_tools()?;
    }
    let workspace = Workspace::locate()?;
    let out = workspace.target_dir.join("images");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let started = Instant::now();
    build_binaries(&workspace)?;
    eprintln!(
        "images: release binaries ready in {:.0?}",
        started.elapsed()
    );
    let mtime = source_date_epoch()?;
    let release_dir = workspace.target_dir.join("release");
    let mut built = Vec::new();
    for image in &IMAGES {
        built.push(write_image(image, &release_dir, &out, mtime)?);
    }
    if args.check {
        let started = Instant::now();
        for image in &built {
            check_reproducible(image, &release_dir, &out, mtime)?;
            check::image(image, &out)?;
        }
        let proxy = built
            .iter()
            .find(|b| b.image.name == "proxy")
            .context("no proxy image")?;
        if proxy.uncompressed_size >= PROXY_IMAGE_LIMIT {
            bail!(
                "the proxy image is {} uncompressed, over its {} budget",
                mib(proxy.uncompressed_size),
                mib(PROXY_IMAGE_LIMIT)
            );
        }
        eprintln!(
            "images: all {} images checked in {:.0?}",
            built.len(),
            started.elapsed()
        );
    }
    if let Some(registry) = registry {
        for image in &built {
            push(image, registry)?;
        }
    }
    Ok(())
}

fn write_image(image: &'static Image, release_dir: &Path, out: &Path, mtime: u64) -> Result<Built> {
    let (archive, path) = assemble(image, release_dir, out, mtime)?;
    std::fs::write(&path, &archive.bytes).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{:<28} {:>9} compressed {:>9} uncompressed  {}  {}",
        image.reference(),
        mib(archive.compressed_size),
        mib(archive.uncompressed_size),
        archive.manifest_digest,
        path.display()
    );
    Ok(Built {
        image,
        path,
        manifest_digest: archive.manifest_digest,
        uncompressed_size: archive.uncompressed_size,
    })
}

fn assemble(
    image: &Image,
    release_dir: &Path,
    out: &Path,
    mtime: u64,
) -> Result<(oci::Archive, PathBuf)> {
    let tree = image
        .root_filesystem(release_dir, &out.join("work"))
        .with_context(|| format!("image {}", image.name))?;
    let layer = tree.layer(mtime)?;
    let archive = oci::archive(&image.run_config(), &layer, VERSION, mtime)?;
    Ok((archive, out.join(format!("{}.oci.tar", image.name))))
}

/// The same inputs twice give the same manifest digest (fixed mtimes, sorted entries).
fn check_reproducible(built: &Built, release_dir: &Path, out: &Path, mtime: u64) -> Result<()> {
    let (again, _) = assemble(built.image, release_dir, out, mtime)?;
    if again.manifest_digest != built.manifest_digest {
        bail!(
            "{}: a second build gave {} instead of {}: the image is not reproducible",
            built.image.name,
            again.manifest_digest,
            built.manifest_digest
        );
    }
    Ok(())
}

/// The images' binaries with the release profile, only the packages they need.
fn build_binaries(workspace: &Workspace) -> Result<()> {
    let mut build = cargo();
    build
        .args(["build", "--release", "--locked"])
        // the demo app is xtask's `demo-app` task
        .args(["--features", "xtask/demo"])
        .current_dir(&workspace.root);
    for image in &IMAGES {
        for package in image.packages {
            build.args(["-p", package]);
        }
    }
    let status = build.status().context("running `cargo build --release`")?;
    if !status.success() {
        bail!("`cargo build --release` for the images failed ({status})");
    }
    Ok(())
}

/// SOURCE_DATE_EPOCH (the reproducible-builds convention) or 0.
fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(0),
        Ok(value) => value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?}: expected seconds since 1970")),
    }
}

/// `--push REGISTRY` without a trailing slash; a registry host, optionally with a path.
fn registry(push: &str) -> Result<&str> {
    let registry = push.trim_end_matches('/');
    if registry.is_empty() || registry.contains(char::is_whitespace) || registry.contains("://") {
        bail!("--push {push:?}: expected a registry such as ghcr.io/acme or registry.example:5000");
    }
    Ok(registry)
}

fn push(built: &Built, registry: &str) -> Result<()> {
    let destination = format!("docker://{registry}/{}", built.image.reference());
    let source = format!("oci-archive:{}:{VERSION}", built.path.display());
    let output = Command::new("skopeo")
        .args(["copy", "--quiet", &source, &destination])
        .stdin(Stdio::null())
        .output()
        .context("running skopeo")?;
    if !output.status.success() {
        bail!(
            "pushing {} to {registry} failed: {}",
            built.image.reference(),
            last_line(&output.stderr)
        );
    }
    println!("pushed {}", destination.trim_start_matches("docker://"));
    Ok(())
}

/// `tool` runs (`tool --version`), else one line saying what is missing and for what.
pub fn require_tool(tool: &str, needed_for: &str) -> Result<()> {
    match Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => Ok(()),
        _ => bail!("{needed_for} needs {tool}, which is not installed (apt-get install {tool})"),
    }
}

/// The last non-empty line a failed tool wrote: its error, without the noise above it.
pub fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .trim()
        .to_string()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_is_a_host_with_an_optional_path() {
        assert_eq!(registry("localhost:5000/").unwrap(), "localhost:5000");
        assert_eq!(registry("ghcr.io/acme").unwrap(), "ghcr.io/acme");
        for bad in ["", "/", "bad registry", "https://ghcr.io"] {
            assert!(registry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_missing_tool_is_named_with_what_needs_it() {
        let error = require_tool("/nonexistent/skopeo", "--push")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "--push needs /nonexistent/skopeo, which is not installed (apt-get install /nonexistent/skopeo)"
        );
    }

    #[test]
    fn every_image_is_tagged_with_the_workspace_version_the_chart_uses() {
        let chart = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/plexus/Chart.yaml"
        ))
        .unwrap();
        assert!(
            chart.contains(&format!("appVersion: \"{VERSION}\"")),
            "{chart}"
        );
        let values = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/plexus/values.yaml"
        ))
        .unwrap();
        for name in ["controller", "proxy"] {
            assert!(
                values.contains(&format!("repository: {REPOSITORY}/{name}\n")),
                "{name}"
            );
        }
        let references: Vec<String> = IMAGES.iter().map(Image::reference).collect();
        assert_eq!(
            references,
            [
                format!("plexus/controller:{VERSION}"),
                format!("plexus/proxy:{VERSION}"),
                format!("plexus/demo-app:{VERSION}"),
            ]
        );
    }
}
