//! Local rate limiting of inbound HTTP requests: a token bucket per workload,
//! or per client identity, in this proxy alone (as Envoy's `local_ratelimit`
//! and Linkerd's `HTTPLocalRateLimitPolicy`: N replicas admit N times the rate).
//!
//! Each bucket is kept as GCRA's "theoretical arrival time" (TAT): the
//! instant at which the bucket would be full again. A request moves it one
//! token interval later; it is admitted while the TAT stays within `burst`
//! intervals of now. So a bucket is one `u64`: the workload's bucket is an
//! atomic updated by compare-and-swap (lock-free, one atomic per request);
//! per-identity buckets share one map behind a mutex held for a lookup and
//! that arithmetic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use plexus_api::v1::RateLimit;
use tokio::time::Instant;

/// At most this many identities have a bucket of their own; see [`IdentityBuckets`].
pub const MAX_IDENTITY_BUCKETS: usize = 4096;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// A compiled `RateLimit`, with its buckets: a new one (full buckets) for
/// each new limit, kept across policy updates that do not change it.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimit,
    /// Nanoseconds per token.
    interval: u64,
    /// `burst` intervals: how far past now a bucket's TAT may run.
    capacity: u64,
    /// Time zero of the buckets' TATs.
    epoch: Instant,
    buckets: Buckets,
}

/// A refused request: how long until a token is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up and at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

#[derive(Debug)]
enum Buckets {
    Workload(AtomicU64),
    PerIdentity(Mutex<IdentityBuckets>),
}

/// One bucket per verified client identity, at most
/// [`MAX_IDENTITY_BUCKETS`]. When full, the buckets that have refilled are
/// dropped (a full bucket is what a new one would be, so nothing is lost);
/// if none has, identities without a bucket share `overflow` until one does.
/// Plaintext clients (no identity) share `plaintext`.
#[derive(Debug, Default)]
struct IdentityBuckets {
    by_identity: HashMap<String, u64>,
    plaintext: u64,
    overflow: u64,
}

impl RateLimiter {
    /// `None` when the limit admits nothing sensible (no requests or no
    /// period): the controller refuses those, so one is logged and ignored.
    pub fn new(config: &RateLimit) -> Option<Self> {
        if config.requests == 0 || config.period_seconds == 0 {
            tracing::warn!(
                ?config,
                "inbound rate limit without requests or period: ignored"
            );
            return None;
        }
        let period = u64::from(config.period_seconds) * NANOS_PER_SECOND;
        let interval = (period / u64::from(config.requests)).max(1);
        let burst = u64::from(config.burst.max(1));
        let buckets = if config.per_identity {
            Buckets::PerIdentity(Mutex::default())
        } else {
            Buckets::Workload(AtomicU64::new(0))
        };
        Some(Self {
            config: *config,
            interval,
            capacity: interval.saturating_mul(burst),
            epoch: Instant::now(),
            buckets,
        })
    }

    /// Whether this limiter enforces `config` (so it can outlive a policy update).
    pub fn enforces(&self, config: &RateLimit) -> bool {
        self.config == *config
    }

    /// Takes a token for a request of `client` (its SPIFFE ID; `None`: plaintext).
    pub fn admit(&self, client: Option<&str>) -> Result<(), Limited> {
        let now = Instant::now().saturating_duration_since(self.epoch);
        self.admit_at(client, now)
    }

    /// [`Self::admit`] at `now`, the time since the limiter was made.
    fn admit_at(&self, client: Option<&str>, now: Duration) -> Result<(), Limited> {
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        match &self.buckets {
            Buckets::Workload(tat) => {
                let mut current = tat.load(Ordering::Relaxed);
                loop {
                    let next = self.take(current, now)?;
                    match tat.compare_exchange_weak(
                        current,
                        next,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => return Ok(()),
                        Err(moved) => current = moved,
                    }
                }
            }
            Buckets::PerIdentity(buckets) => {
                let mut buckets = buckets.lock().unwrap_or_else(|e| e.into_inner());
                let tat = buckets.bucket(client, now);
                *tat = self.take(*tat, now)?;
                Ok(())
            }
        }
    }

    /// The bucket's TAT after taking a token at `now`, or how long to wait.
    fn take(&self, tat: u64, now: u64) -> Result<u64, Limited> {
        let next = tat.max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead <= self.capacity {
            Ok(next)
        } else {
            Err(Limited {
                retry_after: Duration::from_nanos(ahead - self.capacity),
            })
        }
    }
}

impl IdentityBuckets {
    fn bucket(&mut self, client: Option<&str>, now: u64) -> &mut u64 {
        let Some(id) = client else {
            return &mut self.plaintext;
        };
        if !self.by_identity.contains_key(id) {
            if self.by_identity.len() >= MAX_IDENTITY_BUCKETS {
                // A TAT not after now is a full bucket.
                self.by_identity.retain(|_, tat| *tat > now);
            }
            if self.by_identity.len() >= MAX_IDENTITY_BUCKETS {
                return &mut self.overflow;
            }
            self.by_identity.insert(id.to_owned(), 0);
        }
        self.by_identity.get_mut(id).unwrap_or(&mut self.overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests: u32, period_seconds: u32, burst: u32, per_identity: bool) -> RateLimiter {
        RateLimiter::new(&RateLimit {
            requests,
            period_seconds,
            burst,
            per_identity,
        })
        .expect("a valid limit")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_is_admitted_then_tokens_come_back_at_the_rate() {
        // 10/s: a token every 100 ms, at most 3 saved.
        let l = limiter(10, 1, 3, false);
        for _ in 0..3 {
            assert!(l.admit_at(None, ms(1000)).is_ok());
        }
        let refused = l.admit_at(None, ms(1000)).unwrap_err();
        assert_eq!(refused.retry_after, ms(100));
        assert!(l.admit_at(None, ms(1099)).is_err(), "not yet refilled");
        assert!(l.admit_at(None, ms(1100)).is_ok(), "one token back");
        assert!(l.admit_at(None, ms(1100)).is_err());
        // A long idle time refills to the burst, no more.
        for _ in 0..3 {
            assert!(l.admit_at(None, ms(60_000)).is_ok());
        }
        assert!(l.admit_at(None, ms(60_000)).is_err());
    }

    #[test]
    fn refused_requests_take_no_token() {
        let l = limiter(1, 1, 1, false);
        assert!(l.admit_at(None, ms(0)).is_ok());
        for t in [1, 200, 500, 999] {
            assert!(l.admit_at(None, ms(t)).is_err());
        }
        assert!(l.admit_at(None, ms(1000)).is_ok());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        let l = limiter(1, 60, 1, false);
        assert!(l.admit_at(None, ms(0)).is_ok());
        let refused = l.admit_at(None, ms(500)).unwrap_err();
        assert_eq!(refused.retry_after, ms(59_500));
        assert_eq!(refused.retry_after_secs(), 60);
        let l = limiter(100, 1, 1, false);
        assert!(l.admit_at(None, ms(0)).is_ok());
        let refused = l.admit_at(None, ms(0)).unwrap_err();
        assert_eq!(refused.retry_after, ms(10));
        assert_eq!(refused.retry_after_secs(), 1);
    }

    #[test]
    fn each_identity_has_its_bucket_and_plaintext_clients_share_one() {
        let l = limiter(1, 60, 2, true);
        let (a, b) = (Some("spiffe://td/ns/a/sa/a"), Some("spiffe://td/ns/b/sa/b"));
        for client in [a, a, b, b, None, None] {
            assert!(l.admit_at(client, ms(0)).is_ok(), "{client:?}");
        }
        for client in [a, b, None] {
            assert!(l.admit_at(client, ms(0)).is_err(), "{client:?}");
        }
    }

    #[test]
    fn identity_buckets_are_bounded_and_refilled_ones_make_room() {
        let l = limiter(1, 1, 1, true);
        let ids: Vec<String> = (0..=MAX_IDENTITY_BUCKETS)
            .map(|i| format!("spiffe://td/ns/n/sa/s{i}"))
            .collect();
        for id in &ids[..MAX_IDENTITY_BUCKETS] {
            assert!(l.admit_at(Some(id), ms(0)).is_ok());
        }
        let size = || match &l.buckets {
            Buckets::PerIdentity(b) => b.lock().unwrap().by_identity.len(),
            Buckets::Workload(_) => unreachable!(),
        };
        // At the cap, with every bucket drained: newcomers share the overflow bucket.
        let newcomer = Some(ids[MAX_IDENTITY_BUCKETS].as_str());
        assert!(l.admit_at(newcomer, ms(0)).is_ok());
        assert!(
            l.admit_at(Some("spiffe://td/ns/n/sa/other"), ms(0))
                .is_err()
        );
        assert_eq!(size(), MAX_IDENTITY_BUCKETS);
        // Once they have refilled, the idle buckets go and the newcomer gets its own.
        assert!(l.admit_at(newcomer, ms(1000)).is_ok());
        assert_eq!(size(), 1);
        assert!(l.admit_at(Some(&ids[0]), ms(1000)).is_ok());
    }

    #[test]
    fn a_limit_without_requests_or_period_is_ignored() {
        let none = |requests, period_seconds| {
            RateLimiter::new(&RateLimit {
                requests,
                period_seconds,
                burst: 1,
                per_identity: false,
            })
            .is_none()
        };
        assert!(none(0, 1) && none(1, 0));
    }
}
