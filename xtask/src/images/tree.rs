//! A file tree that becomes a tar whose bytes depend only on its entries: paths in
//! sorted order, one fixed mtime, explicit modes and uid/gid 0 in every header. Image
//! layers and the `oci-archive` around them are both written from one, so building an
//! image twice gives the same digests.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use flate2::{Compression, write::GzEncoder};
use sha2::{Digest, Sha256};

/// What sits at one path of a [`FileTree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
}

/// Paths (relative, `/`-separated, no `.` or `..`) to entries; parents are added as
/// directories when a child is.
#[derive(Debug, Default)]
pub struct FileTree {
    entries: BTreeMap<String, Entry>,
}

/// A layer as an image references it: the gzip blob, its digest, and the digest of
/// the uncompressed tar (the config's `diff_id`).
pub struct CompressedLayer {
    pub gzip: Vec<u8>,
    pub digest: String,
    pub diff_id: String,
    pub uncompressed_size: u64,
}

impl FileTree {
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.insert(path, Entry::Dir { mode })
    }

    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<()> {
        self.insert(path, Entry::File { data, mode })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        )
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    /// Adds `entry` at `path`, and any missing parent as a 0755 directory. The same
    /// entry twice is fine (two packages may ship one directory); a different one is not.
    fn insert(&mut self, path: &str, entry: Entry) -> Result<()> {
        let path = path.trim_start_matches('/').trim_end_matches('/');
        if path.is_empty()
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("image path {path:?}: expected a relative path without `.`/`..` components");
        }
        let mut parent = String::new();
        for component in path.split('/').take(path.split('/').count() - 1) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            match self.entries.get(&parent) {
                None => {
                    self.entries
                        .insert(parent.clone(), Entry::Dir { mode: 0o755 });
                }
                Some(Entry::Dir { .. }) => {}
                Some(_) => bail!("image path {path:?}: its parent {parent:?} is not a directory"),
            }
        }
        match self.entries.get(path) {
            Some(existing)
                if *existing != entry
                    && !matches!((existing, &entry), (Entry::Dir { .. }, Entry::Dir { .. })) =>
            {
                bail!("image path {path:?} is added twice with different contents")
            }
            _ => {
                self.entries.insert(path.to_string(), entry);
            }
        }
        Ok(())
    }

    /// The tar, every header stamped with `mtime` (seconds since the epoch) and uid/gid 0.
    pub fn tar(&self, mtime: u64) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(mtime);
            header.set_uid(0);
            header.set_gid(0);
            header.set_username("root")?;
            header.set_groupname("root")?;
            match entry {
                Entry::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
                }
                Entry::File { data, mode } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, data.as_slice())?;
                }
                Entry::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target)?;
                }
            }
        }
        Ok(builder.into_inner()?)
    }

    /// The tar, gzip-compressed, with the digests an image manifest and config need.
    pub fn layer(&self, mtime: u64) -> Result<CompressedLayer> {
        let tar = self.tar(mtime)?;
        let diff_id = sha256(&tar);
        // flate2 writes a zero mtime and no file name in the gzip header.
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        std::io::Write::write_all(&mut encoder, &tar)?;
        let gzip = encoder.finish()?;
        Ok(CompressedLayer {
            digest: sha256(&gzip),
            gzip,
            diff_id,
            uncompressed_size: tar.len() as u64,
        })
    }
}

/// `sha256:<hex>`, as OCI descriptors write a digest.
pub fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in hash {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn sample(order: &[usize]) -> FileTree {
        let items: [(&str, &[u8]); 3] = [
            ("usr/local/bin/tool", b"#!/bin/true\n"),
            ("etc/passwd", b"root:x:0:0:root:/root:/usr/sbin/nologin\n"),
            ("etc/group", b"root:x:0:\n"),
        ];
        let mut tree = FileTree::default();
        for &i in order {
            tree.file(items[i].0, items[i].1.to_vec(), 0o644).unwrap();
        }
        tree.symlink("bin", "usr/bin").unwrap();
        tree
    }

    #[test]
    fn the_digest_of_a_known_blob_is_its_sha256() {
        assert_eq!(
            sha256(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_same_entries_in_any_order_give_the_same_layer() {
        let a = sample(&[0, 1, 2]).layer(0).unwrap();
        let b = sample(&[2, 0, 1]).layer(0).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.diff_id, b.diff_id);
        assert_eq!(a.gzip, b.gzip);
        // The stamp is part of the bytes: a different SOURCE_DATE_EPOCH is a different layer.
        assert_ne!(sample(&[0, 1, 2]).layer(1).unwrap().diff_id, a.diff_id);
    }

    #[test]
    fn the_layer_lists_parents_first_with_fixed_owner_and_mtime() {
        let layer = sample(&[0, 1, 2]).layer(1_700_000_000).unwrap();
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(layer.gzip.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(sha256(&tar), layer.diff_id);
        assert_eq!(tar.len() as u64, layer.uncompressed_size);
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.mtime().unwrap(), 1_700_000_000);
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
            seen.push(entry.path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(
            seen,
            [
                "bin",
                "etc/",
                "etc/group",
                "etc/passwd",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/tool",
            ]
        );
    }

    #[test]
    fn conflicting_or_escaping_paths_are_refused() {
        let mut tree = sample(&[0]);
        assert!(
            tree.file("usr/local/bin/tool", b"other".to_vec(), 0o755)
                .is_err()
        );
        // The same file again is fine (a directory shipped by two packages, say).
        assert!(
            tree.file("usr/local/bin/tool", b"#!/bin/true\n".to_vec(), 0o644)
                .is_ok()
        );
        assert!(tree.file("bin/sh", Vec::new(), 0o755).is_err());
        assert!(tree.file("../etc/shadow", Vec::new(), 0o600).is_err());
        assert!(tree.file("", Vec::new(), 0o600).is_err());
    }
}
