//! Feeds of Kubernetes objects into the index: the API server's watches in a
//! cluster, a YAML file outside one. Same types, same index code.

mod decode;
pub mod file;
pub mod kubernetes;
pub mod leading;
pub mod route_status;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where the index's objects come from (`--feed`).
#[derive(Clone, Debug, PartialEq)]
pub enum FeedSource {
    /// `file:PATH`: a multi-document YAML file, re-read when it changes.
    File(PathBuf),
    /// `kubernetes`: watches through the in-cluster (or kubeconfig) client.
    Kubernetes,
}

impl FromStr for FeedSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kubernetes" => Ok(FeedSource::Kubernetes),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(FeedSource::File(PathBuf::from(path))),
                _ => Err(format!("{s:?}: expected file:PATH or kubernetes")),
            },
        }
    }
}

/// Set once the feed has loaded its initial objects (`/ready`).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
