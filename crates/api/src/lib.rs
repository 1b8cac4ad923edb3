//! The control plane <-> proxy API, generated from `proto/plexus/v1` by `build.rs`.
//!
//! Nothing but generated code lives here, so every other crate can depend on it
//! without pulling in anything else.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("plexus.v1");
}
