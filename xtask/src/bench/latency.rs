//! Latency distributions: one HDR histogram per connection (no sharing on the
//! hot path), merged into one per scenario before percentiles are read.

use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Recorded in nanoseconds: the figures we compare differ by tens of µs.
const LOWEST_NS: u64 = 1;
/// Anything slower than this is recorded as this; a request times out well before.
const HIGHEST_NS: u64 = 60_000_000_000;
/// Three significant digits: ±0.1 % of the value.
const SIGNIFICANT_DIGITS: u8 = 3;

#[derive(Clone, Debug)]
pub struct LatencyHistogram(Histogram<u64>);

impl LatencyHistogram {
    pub fn new() -> Self {
        Self(
            Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
        )
    }

    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(ns.clamp(LOWEST_NS, HIGHEST_NS));
    }

    pub fn merge(&mut self, other: &LatencyHistogram) -> Result<()> {
        self.0
            .add(&other.0)
            .context("merging latency histograms with different bounds")
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1_000.0;
        if self.0.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            p50_us: us(self.0.value_at_quantile(0.50)),
            p99_us: us(self.0.value_at_quantile(0.99)),
            p999_us: us(self.0.value_at_quantile(0.999)),
            max_us: us(self.0.max()),
            mean_us: self.0.mean() / 1_000.0,
        }
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of one scenario, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(from_us: u64, to_us: u64) -> LatencyHistogram {
        let mut histogram = LatencyHistogram::new();
        for us in from_us..=to_us {
            histogram.record(Duration::from_micros(us));
        }
        histogram
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let summary = filled(1, 1_000).summary();
        // Three significant digits: within 0.1 % of the exact rank.
        assert!((summary.p50_us - 500.0).abs() <= 1.0, "{summary:?}");
        assert!((summary.p99_us - 990.0).abs() <= 1.0, "{summary:?}");
        assert!((summary.p999_us - 999.0).abs() <= 1.0, "{summary:?}");
        assert!((summary.max_us - 1_000.0).abs() <= 1.0, "{summary:?}");
    }

    #[test]
    fn merging_connections_weighs_every_request() {
        // One fast connection with many requests, one slow with few: the merged
        // median is the fast one's, which an average of medians would miss.
        let mut merged = LatencyHistogram::new();
        let mut fast = LatencyHistogram::new();
        for _ in 0..900 {
            fast.record(Duration::from_micros(100));
        }
        let mut slow = LatencyHistogram::new();
        for _ in 0..100 {
            slow.record(Duration::from_millis(10));
        }
        merged.merge(&fast).unwrap();
        merged.merge(&slow).unwrap();
        assert_eq!(merged.count(), 1_000);
        let summary = merged.summary();
        assert!((summary.p50_us - 100.0).abs() <= 0.1, "{summary:?}");
        assert!((summary.p99_us - 10_000.0).abs() <= 10.0, "{summary:?}");
    }

    #[test]
    fn extreme_values_are_clamped_not_lost() {
        let mut histogram = LatencyHistogram::new();
        histogram.record(Duration::ZERO);
        histogram.record(Duration::from_secs(3_600));
        assert_eq!(histogram.count(), 2);
        assert!(histogram.summary().max_us >= 59_000_000.0);
    }

    #[test]
    fn empty_histogram_reads_as_zeros() {
        assert_eq!(LatencyHistogram::new().summary(), LatencySummary::default());
    }
}
