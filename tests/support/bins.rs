//! The workspace's binaries, as the end-to-end tests run them.

use std::path::{Path, PathBuf};

/// `name` in `PLEXUS_BIN_DIR` (set by `cargo xtask test`), else in
/// `<workspace>/target/debug`. Panics with what to do when it is not built.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("PLEXUS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} does not exist: run `cargo build --workspace --bins` first \
         (or point PLEXUS_BIN_DIR at the directory holding `{name}`)",
        path.display()
    );
    path
}
