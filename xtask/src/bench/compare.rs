//! Each figure as a ratio to direct traffic in the same run: the only numbers
//! worth comparing across machines, since the load generator, the proxies and
//! the upstream all share the same cores.

use serde::Serialize;

use super::latency::LatencySummary;

/// How a scenario compares with the direct scenario of the same protocol,
/// connection count and pacing.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct VersusDirect {
    /// Requests per second as a fraction of direct's (1.0 = no loss).
    pub throughput_ratio: Option<f64>,
    pub p50: AddedLatency,
    pub p99: AddedLatency,
    pub p999: AddedLatency,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AddedLatency {
    /// Microseconds added to direct's figure (negative: faster than direct, noise).
    pub added_us: f64,
    /// This figure divided by direct's.
    pub ratio: Option<f64>,
}

impl VersusDirect {
    pub fn of(
        requests_per_sec: f64,
        latency: &LatencySummary,
        direct_requests_per_sec: f64,
        direct_latency: &LatencySummary,
    ) -> Self {
        let added = |value: f64, direct: f64| AddedLatency {
            added_us: value - direct,
            ratio: ratio(value, direct),
        };
        Self {
            throughput_ratio: ratio(requests_per_sec, direct_requests_per_sec),
            p50: added(latency.p50_us, direct_latency.p50_us),
            p99: added(latency.p99_us, direct_latency.p99_us),
            p999: added(latency.p999_us, direct_latency.p999_us),
        }
    }
}

/// `value / base`, or nothing when the base is no measurement (zero requests).
pub fn ratio(value: f64, base: f64) -> Option<f64> {
    (base > 0.0 && value.is_finite()).then(|| value / base)
}

/// CPU milliseconds per 1,000 requests. At a fixed 1,000 req/s this is the
/// CPU milliseconds spent per second: "CPU per 1,000 req/s" (10 ms = 1 % of a core).
pub fn cpu_ms_per_1k_requests(cpu_seconds: f64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| cpu_seconds * 1_000.0 * 1_000.0 / requests as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(p50_us: f64, p99_us: f64, p999_us: f64) -> LatencySummary {
        LatencySummary {
            p50_us,
            p99_us,
            p999_us,
            ..LatencySummary::default()
        }
    }

    #[test]
    fn ratios_and_added_latency_against_direct() {
        let direct = latency(50.0, 100.0, 200.0);
        let proxied = latency(80.0, 250.0, 300.0);
        let versus = VersusDirect::of(6_000.0, &proxied, 10_000.0, &direct);
        assert_eq!(versus.throughput_ratio, Some(0.6));
        assert_eq!(versus.p50.added_us, 30.0);
        assert_eq!(versus.p50.ratio, Some(1.6));
        assert_eq!(versus.p99.added_us, 150.0);
        assert_eq!(versus.p99.ratio, Some(2.5));
        assert_eq!(versus.p999.added_us, 100.0);
        assert_eq!(versus.p999.ratio, Some(1.5));
    }

    #[test]
    fn direct_against_itself_is_one() {
        let direct = latency(50.0, 100.0, 200.0);
        let versus = VersusDirect::of(10_000.0, &direct, 10_000.0, &direct);
        assert_eq!(versus.throughput_ratio, Some(1.0));
        assert_eq!(versus.p99.added_us, 0.0);
        assert_eq!(versus.p999.ratio, Some(1.0));
    }

    #[test]
    fn no_ratio_to_an_empty_direct_run() {
        let versus = VersusDirect::of(
            5_000.0,
            &latency(1.0, 2.0, 3.0),
            0.0,
            &LatencySummary::default(),
        );
        assert_eq!(versus.throughput_ratio, None);
        assert_eq!(versus.p50.ratio, None);
        assert_eq!(versus.p50.added_us, 1.0);
    }

    #[test]
    fn cpu_per_thousand_requests() {
        // 0.5 CPU seconds over 5,000 requests (5 s at 1,000 req/s): 100 ms per 1,000, 10 % of a core.
        assert_eq!(cpu_ms_per_1k_requests(0.5, 5_000), Some(100.0));
        assert_eq!(cpu_ms_per_1k_requests(0.5, 0), None);
    }
}
