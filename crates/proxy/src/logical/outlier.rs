//! Outlier detection by success rate (Envoy's `success_rate`), beside the
//! consecutive failures of `accrual`. Each endpoint counts its outcomes in
//! two atomics; once an interval, lazily, the first outcome recorded after it
//! ended claims the evaluation (one compare-and-swap; the others go on), which
//! compares the endpoints that had enough outcomes: one below
//! mean − k·stddev of their rates, or below a fixed threshold, is ejected,
//! the worst first, through the backend's never-more-than-half rule. No lock
//! is taken on a request's path unless it runs the evaluation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A backend's success-rate settings, from `plexus_api::v1::SuccessRate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRatePolicy {
    pub interval: Duration,
    /// Outcomes an endpoint needs in an interval to be judged.
    pub min_requests: u64,
    /// Endpoints judged needed to compare any.
    pub min_endpoints: usize,
    pub stdev_factor: f64,
    /// Ejected below this rate whatever the peers do.
    pub threshold: Option<f64>,
}

/// Evaluations closer together than this would judge a handful of requests.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

impl SuccessRatePolicy {
    /// `None`: off. Values out of range take the defaults (the controller
    /// refuses them; a static file could still hold them).
    pub fn from_proto(proto: Option<&plexus_api::v1::SuccessRate>) -> Option<SuccessRatePolicy> {
        let proto = proto?;
        let stdev_factor = proto
            .stdev_factor
            .filter(|k| k.is_finite() && *k >= 0.0)
            .unwrap_or(1.9);
        Some(SuccessRatePolicy {
            interval: Duration::from_millis(proto.interval_ms.unwrap_or(10_000)).max(MIN_INTERVAL),
            min_requests: u64::from(proto.min_requests.unwrap_or(100).max(1)),
            min_endpoints: proto.min_endpoints.unwrap_or(5).max(1) as usize,
            stdev_factor,
            threshold: proto.threshold.filter(|t| (0.0..=1.0).contains(t)),
        })
    }
}

/// What is wrong with `proto`'s values, each as `field: problem` (a static
/// file is refused for them; from the controller, which refuses them too,
/// `from_proto` would take the defaults).
pub fn check(proto: &plexus_api::v1::SuccessRate) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(ms) = proto
        .interval_ms
        .filter(|ms| u128::from(*ms) < MIN_INTERVAL.as_millis())
    {
        problems.push(format!(
            "interval_ms: {ms} is less than {}",
            MIN_INTERVAL.as_millis()
        ));
    }
    for (field, value) in [
        ("min_requests", proto.min_requests),
        ("min_endpoints", proto.min_endpoints),
    ] {
        if value == Some(0) {
            problems.push(format!("{field}: 0 is not at least 1"));
        }
    }
    if let Some(k) = proto.stdev_factor.filter(|k| !(k.is_finite() && *k >= 0.0)) {
        problems.push(format!("stdev_factor: {k} is not a number 0 or more"));
    }
    if let Some(t) = proto.threshold.filter(|t| !(0.0..=1.0).contains(t)) {
        problems.push(format!("threshold: {t} is not a success rate from 0 to 1"));
    }
    problems
}

/// One endpoint's outcomes since the last evaluation.
#[derive(Debug, Default)]
pub struct Window {
    successes: AtomicU64,
    total: AtomicU64,
}

impl Window {
    pub fn count(&self, success: bool) {
        if success {
            self.successes.fetch_add(1, Ordering::Relaxed);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// The outcomes so far, `(successes, total)`, and a fresh window.
    /// Successes are read first, so they never exceed the total read after.
    pub fn take(&self) -> (u64, u64) {
        let successes = self.successes.swap(0, Ordering::Relaxed);
        let total = self.total.swap(0, Ordering::Relaxed);
        (successes.min(total), total)
    }
}

/// When a backend's next evaluation is due.
#[derive(Debug)]
pub struct Schedule {
    start: Instant,
    /// Milliseconds after `start`.
    next: AtomicU64,
}

impl Schedule {
    /// The first evaluation one `interval` from now.
    pub fn new(now: Instant, interval: Duration) -> Schedule {
        Schedule {
            start: now,
            next: AtomicU64::new(millis(interval)),
        }
    }

    /// True for exactly one caller once an evaluation is due.
    pub fn claim(&self, now: Instant, interval: Duration) -> bool {
        let at = millis(now.saturating_duration_since(self.start));
        let due = self.next.load(Ordering::Relaxed);
        at >= due
            && self
                .next
                .compare_exchange(
                    due,
                    at + millis(interval),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

/// An endpoint's outcomes in the interval, `(successes, total)`, by its
/// position in the backend's endpoint list.
pub type Sample = (usize, u64, u64);

/// The positions of the endpoints whose success rate is an outlier, with
/// their rates, worst first. Only samples with `min_requests` count, and only
/// when `min_endpoints` of them do. The backend decides which of these it may
/// eject (never more than half).
pub fn outliers(policy: &SuccessRatePolicy, samples: &[Sample]) -> Vec<(usize, f64)> {
    let judged: Vec<(usize, f64)> = samples
        .iter()
        .filter(|(_, _, total)| *total >= policy.min_requests)
        .map(|&(at, successes, total)| (at, successes as f64 / total as f64))
        .collect();
    if judged.is_empty() || judged.len() < policy.min_endpoints {
        return Vec::new();
    }
    let n = judged.len() as f64;
    let mean = judged.iter().map(|(_, rate)| rate).sum::<f64>() / n;
    let variance = judged
        .iter()
        .map(|(_, rate)| (rate - mean).powi(2))
        .sum::<f64>()
        / n;
    let floor = mean - policy.stdev_factor * variance.sqrt();
    let mut out: Vec<(usize, f64)> = judged
        .into_iter()
        .filter(|(_, rate)| *rate < floor || policy.threshold.is_some_and(|t| *rate < t))
        .collect();
    out.sort_by(|a, b| a.1.total_cmp(&b.1));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: SuccessRatePolicy = SuccessRatePolicy {
        interval: Duration::from_secs(10),
        min_requests: 100,
        min_endpoints: 3,
        stdev_factor: 1.9,
        threshold: None,
    };

    fn rates(per_thousand: &[u64]) -> Vec<Sample> {
        per_thousand
            .iter()
            .enumerate()
            .map(|(at, ok)| (at, *ok, 1000))
            .collect()
    }

    #[test]
    fn an_endpoint_far_below_its_peers_is_an_outlier() {
        // mean 0.9, stddev 0.2: the floor is 0.52.
        let found = outliers(&POLICY, &rates(&[1000, 1000, 1000, 1000, 500]));
        assert_eq!(found.iter().map(|o| o.0).collect::<Vec<_>>(), [4]);
        assert!((found[0].1 - 0.5).abs() < 1e-9);
        // Three endpoints, one at 50 %: mean 0.83, stddev 0.24, floor 0.39.
        assert!(outliers(&POLICY, &rates(&[1000, 1000, 500])).is_empty());
        let k1 = SuccessRatePolicy {
            stdev_factor: 1.0,
            ..POLICY
        };
        let found = outliers(&k1, &rates(&[1000, 1000, 500]));
        assert_eq!(found.iter().map(|o| o.0).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn equal_rates_have_no_outlier_however_low() {
        assert!(outliers(&POLICY, &rates(&[300, 300, 300, 300])).is_empty());
    }

    #[test]
    fn a_threshold_ejects_whatever_the_peers_do_worst_first() {
        let policy = SuccessRatePolicy {
            threshold: Some(0.95),
            ..POLICY
        };
        let found = outliers(&policy, &rates(&[900, 800, 990, 300]));
        assert_eq!(found.iter().map(|o| o.0).collect::<Vec<_>>(), [3, 1, 0]);
    }

    #[test]
    fn too_few_requests_or_endpoints_judge_nobody() {
        let mut samples = rates(&[1000, 1000, 1000, 1000, 0]);
        samples[4].2 = 99;
        samples[4].1 = 0;
        assert!(
            outliers(&POLICY, &samples).is_empty(),
            "99 outcomes are not enough"
        );
        let five = SuccessRatePolicy {
            min_endpoints: 5,
            ..POLICY
        };
        assert!(outliers(&five, &rates(&[1000, 1000, 1000, 0])).is_empty());
        assert!(outliers(&POLICY, &[]).is_empty());
    }

    #[test]
    fn a_window_counts_and_starts_again() {
        let window = Window::default();
        for success in [true, false, true] {
            window.count(success);
        }
        assert_eq!(window.take(), (2, 3));
        assert_eq!(window.take(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn one_caller_claims_each_due_evaluation() {
        let interval = Duration::from_secs(1);
        let schedule = Schedule::new(Instant::now(), interval);
        assert!(!schedule.claim(Instant::now(), interval), "not due yet");
        tokio::time::advance(interval).await;
        assert!(schedule.claim(Instant::now(), interval));
        assert!(!schedule.claim(Instant::now(), interval), "claimed once");
        tokio::time::advance(interval).await;
        assert!(schedule.claim(Instant::now(), interval));
    }

    #[test]
    fn out_of_range_values_are_named_and_take_the_defaults() {
        assert_eq!(SuccessRatePolicy::from_proto(None), None);
        let proto = plexus_api::v1::SuccessRate {
            interval_ms: Some(0),
            min_requests: Some(0),
            min_endpoints: Some(0),
            stdev_factor: Some(f64::NAN),
            threshold: Some(2.0),
        };
        let fields: Vec<String> = check(&proto)
            .iter()
            .map(|p| p.split(':').next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            fields,
            [
                "interval_ms",
                "min_requests",
                "min_endpoints",
                "stdev_factor",
                "threshold"
            ]
        );
        assert!(check(&plexus_api::v1::SuccessRate::default()).is_empty());
        let policy = SuccessRatePolicy::from_proto(Some(&proto)).expect("on");
        assert_eq!(policy.interval, MIN_INTERVAL);
        assert_eq!((policy.min_requests, policy.min_endpoints), (1, 1));
        assert_eq!(policy.stdev_factor, 1.9);
        assert_eq!(policy.threshold, None);
    }
}
