//! Helpers shared by the end-to-end tests: spawning binaries, waiting for readiness.
