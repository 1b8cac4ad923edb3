//! The Plexus control plane.
