//! Telling one version of a watched file from the next without reading it:
//! the proxy's static destinations file and the controller's file feed poll
//! their file and must agree on what counts as a change.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt as _;
use std::time::SystemTime;

/// A write in place changes the modification time (and the status change
/// time, even within one tick of a coarse clock), a rename over the file
/// (editors, a Kubernetes ConfigMap's symlink swap) the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileVersion {
    modified: Option<SystemTime>,
    changed: (i64, i64),
    len: u64,
    inode: u64,
}

impl FileVersion {
    pub fn of(metadata: &Metadata) -> FileVersion {
        FileVersion {
            modified: metadata.modified().ok(),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
            len: metadata.len(),
            inode: metadata.ino(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_and_a_rename_are_new_versions() {
        let dir = std::env::temp_dir().join(format!("plexus-core-fv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("file");
        std::fs::write(&path, "one").expect("write");
        let first = FileVersion::of(&std::fs::metadata(&path).expect("stat"));
        assert_eq!(
            first,
            FileVersion::of(&std::fs::metadata(&path).expect("stat"))
        );

        std::fs::write(&path, "two").expect("rewrite");
        let rewritten = FileVersion::of(&std::fs::metadata(&path).expect("stat"));
        assert_ne!(first, rewritten, "same length, rewritten in place");

        let other = dir.join("other");
        std::fs::write(&other, "two").expect("write");
        std::fs::rename(&other, &path).expect("rename");
        let renamed = FileVersion::of(&std::fs::metadata(&path).expect("stat"));
        assert_ne!(rewritten, renamed, "renamed over");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
