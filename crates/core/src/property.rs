//! The one configuration of every Plexus property test (feature `proptest`,
//! enabled only by the crates' dev-dependencies): a bounded number of cases
//! from a fixed seed, nothing written to disk, so CI is fast and repeatable.

use proptest::test_runner::{Config, RngSeed};

/// Cases per property: enough to reach the corners of a parser, few enough
/// that every property of a crate runs in about a second in a debug build.
pub const CASES: u32 = 256;

pub fn config() -> Config {
    Config {
        cases: CASES,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(10),
        ..Config::default()
    }
}
