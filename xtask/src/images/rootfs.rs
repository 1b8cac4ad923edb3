//! What goes into an image's root filesystem besides its binaries: the shared
//! libraries they load (by `ldd`), Debian packages unpacked with `dpkg-deb -x`, CA
//! certificates, and `/etc/passwd` + `/etc/group`. The layout is Debian's merged
//! `/usr` (`/lib` → `usr/lib` …), so the dynamic loader finds libraries where glibc
//! looks by default.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::tree::FileTree;

/// The top-level links of a merged-/usr system.
const MERGED_USR: [(&str, &str); 4] = [
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];
/// Where the host's CA bundle is (Debian's ca-certificates).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A fresh tree with the merged-/usr links, `/tmp`, CA certificates and the accounts
/// `users` (name, uid; each with a group of the same id) besides root.
pub fn base(users: &[(&str, u32)]) -> Result<FileTree> {
    let mut tree = FileTree::default();
    for (link, target) in MERGED_USR {
        tree.symlink(link, target)?;
    }
    tree.dir("tmp", 0o1777)?;
    let certs = std::fs::read(CA_BUNDLE).with_context(|| {
        format!(
            "reading {CA_BUNDLE} for the images' CA certificates (apt-get install ca-certificates)"
        )
    })?;
    tree.file(CA_BUNDLE, certs, 0o644)?;
    let mut passwd = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
    let mut group = String::from("root:x:0:\n");
    for (name, id) in users {
        passwd.push_str(&format!(
            "{name}:x:{id}:{id}::/nonexistent:/usr/sbin/nologin\n"
        ));
        group.push_str(&format!("{name}:x:{id}:\n"));
    }
    tree.file("etc/passwd", passwd.into_bytes(), 0o644)?;
    tree.file("etc/group", group.into_bytes(), 0o644)?;
    Ok(tree)
}

/// Adds the host file `source` at `path`, executable.
pub fn add_executable(tree: &mut FileTree, source: &Path, path: &str) -> Result<()> {
    let data = std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
    tree.file(path, data, 0o755)
}

/// Unpacks each `.deb` into `staging` (`dpkg-deb -x`) and adds its files, less
/// `usr/share` (documentation, manual pages), at their merged-/usr paths. Returns the
/// ELF files added, for [`add_shared_libraries`].
pub fn add_debs(tree: &mut FileTree, debs: &[PathBuf], staging: &Path) -> Result<Vec<PathBuf>> {
    if staging.exists() {
        std::fs::remove_dir_all(staging)
            .with_context(|| format!("clearing {}", staging.display()))?;
    }
    for deb in debs {
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(staging)
            .status()
            .context("running `dpkg-deb` (install dpkg)")?;
        if !status.success() {
            bail!("`dpkg-deb -x {}` failed ({status})", deb.display());
        }
    }
    let mut elves = Vec::new();
    add_unpacked(tree, staging, staging, &mut elves)?;
    Ok(elves)
}

fn add_unpacked(
    tree: &mut FileTree,
    root: &Path,
    dir: &Path,
    elves: &mut Vec<PathBuf>,
) -> Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let source = child.path();
        let relative = source.strip_prefix(root)?.to_string_lossy().into_owned();
        if relative == "usr/share" {
            continue;
        }
        let path = merged_usr(&relative);
        let kind = child.file_type()?;
        if kind.is_symlink() {
            let target = std::fs::read_link(&source)?;
            tree.symlink(&path, &target.to_string_lossy())?;
        } else if kind.is_dir() {
            tree.dir(&path, 0o755)?;
            add_unpacked(tree, root, &source, elves)?;
        } else {
            let data = std::fs::read(&source)?;
            let executable =
                std::os::unix::fs::PermissionsExt::mode(&child.metadata()?.permissions()) & 0o111
                    != 0;
            if data.starts_with(b"\x7fELF") {
                elves.push(source.clone());
            }
            tree.file(&path, data, if executable { 0o755 } else { 0o644 })?;
        }
    }
    Ok(())
}

/// `lib/x` → `usr/lib/x` (and bin, sbin, lib64): the tree's top-level names are links.
fn merged_usr(path: &str) -> String {
    for (link, target) in MERGED_USR {
        if path == link {
            return target.to_string();
        }
        if let Some(rest) = path.strip_prefix(link).and_then(|r| r.strip_prefix('/')) {
            return format!("{target}/{rest}");
        }
    }
    path.to_string()
}

/// Adds every shared library that `elves` load (the dynamic loader included), as
/// `ldd` resolves them with `unpacked_libs` searched first; a library found there is
/// already in the tree. A library `ldd` cannot find is an error naming it.
pub fn add_shared_libraries(
    tree: &mut FileTree,
    elves: &[PathBuf],
    unpacked: Option<&Path>,
) -> Result<()> {
    let mut needed = BTreeSet::new();
    let library_path = unpacked
        .map(|root| {
            ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"]
                .map(|dir| root.join(dir).display().to_string())
                .join(":")
        })
        .unwrap_or_default();
    for elf in elves {
        let output = Command::new("ldd")
            .arg(elf)
            .env("LD_LIBRARY_PATH", &library_path)
            .stdin(Stdio::null())
            .output()
            .context("running `ldd` (Debian's libc-bin)")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            // A static file (or a plain data file misnamed .so) loads nothing.
            continue;
        }
        for library in ldd_paths(&stdout).with_context(|| format!("ldd {}", elf.display()))? {
            needed.insert(library);
        }
    }
    for library in needed {
        if unpacked.is_some_and(|root| library.starts_with(root)) {
            continue;
        }
        let path = merged_usr(library.to_string_lossy().trim_start_matches('/'));
        if !tree.contains(&path) {
            // Read through links: the soname link's target is the file to ship.
            let data = std::fs::read(&library)
                .with_context(|| format!("reading {}", library.display()))?;
            tree.file(&path, data, 0o755)?;
        }
    }
    Ok(())
}

/// The absolute paths in `ldd` output: `libc.so.6 => /lib/…/libc.so.6 (0x…)` and the
/// loader's `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
fn ldd_paths(output: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            bail!("a shared library is missing on this machine: {line}");
        }
        let resolved = line
            .split_once("=>")
            .map_or(line, |(_, right)| right.trim());
        if let Some(path) = resolved
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// Downloads `packages` (`apt-get download`, this machine's Debian suite) into `cache`
/// unless a `<package>_*.deb` is there already, and returns the files.
pub fn fetch_debs(cache: &Path, packages: &[&str]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let cached = |package: &str| -> Result<Option<PathBuf>> {
        let prefix = format!("{package}_");
        let mut found: Vec<PathBuf> = std::fs::read_dir(cache)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with(&prefix) && name.ends_with(".deb")
            })
            .collect();
        found.sort();
        Ok(found.pop())
    };
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| cached(p).map(|c| c.is_none()).unwrap_or(true))
        .collect();
    if !missing.is_empty() {
        let output = Command::new("apt-get")
            .arg("download")
            .args(&missing)
            .current_dir(cache)
            .stdin(Stdio::null())
            .output()
            .context("running `apt-get download` (a Debian machine is needed for the proxy image's iptables)")?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            bail!(
                "`apt-get download {}` failed: {} (run `apt-get update` first?)",
                missing.join(" "),
                stderr.lines().last().unwrap_or("").trim()
            );
        }
    }
    packages
        .iter()
        .map(|p| cached(p)?.with_context(|| format!("apt-get download left no {p}_*.deb")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_files_to_ship() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                      \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                      \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            ldd_paths(output).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let error = ldd_paths("\tlibxtables.so.12 => not found\n").unwrap_err();
        assert!(error.to_string().contains("libxtables.so.12"), "{error}");
    }

    #[test]
    fn top_level_directories_map_into_usr() {
        assert_eq!(
            merged_usr("lib/x86_64-linux-gnu/libc.so.6"),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            merged_usr("lib64/ld-linux-x86-64.so.2"),
            "usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(merged_usr("sbin"), "usr/sbin");
        assert_eq!(merged_usr("library/x"), "library/x");
        assert_eq!(merged_usr("etc/protocols"), "etc/protocols");
    }
}
