//! Helpers shared by the end-to-end tests: finding the workspace's binaries,
//! network-namespace "pods", and a small HTTP/1 client for raw streams.

pub mod bins;
pub mod http;
pub mod netns;
