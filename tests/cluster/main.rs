//! Cross-crate end-to-end tests: the Helm chart and the example manifests,
//! the real binaries on loopback (`controller_loopback`), and, root-only, the
//! binaries in network-namespace pods (`netns`). Those need the workspace's
//! binaries built (`cargo build --workspace --bins`, or `PLEXUS_BIN_DIR`).
//!
//! Every test under `netns::` needs root, `ip` and `iptables`: each is
//! `#[ignore]`d with the reason, so a plain run reports it skipped; `cargo
//! xtask test` runs them (`--run-ignored all`) when it can, and they fail, not
//! pass, when run where they cannot.

mod chart;
mod controller_loopback;
/// Issue 10's 10,000-destination memory test, on the same binaries.
mod destination_memory;
mod manifests;
/// Typed round trips of Kubernetes objects (chart and manifests).
mod typed;

/// Root-only: network namespaces, iptables.
mod netns {
    /// `plexus-init`'s rules applied in namespaces.
    mod init_rules;
    /// Pods and a node as namespaces, with the real binaries.
    mod pods;
}
