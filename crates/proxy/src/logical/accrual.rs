//! Failure accrual: an endpoint that fails N times in a row is ejected for a
//! backoff that doubles from min to max; when it ends exactly one probe request
//! is let through. The probe's success readmits the endpoint, its failure
//! ejects it again for longer. The backend decides whether an ejection is
//! allowed (never more than half of its endpoints).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::outlier::Window;

/// A backend's accrual settings, from `plexus_api::v1::FailureAccrual`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccrualPolicy {
    /// Consecutive failures that eject; 0 disables accrual.
    pub consecutive_failures: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl AccrualPolicy {
    pub fn from_proto(proto: Option<&plexus_api::v1::FailureAccrual>) -> AccrualPolicy {
        let default = plexus_api::v1::FailureAccrual::default();
        let proto = proto.unwrap_or(&default);
        let min_backoff = Duration::from_millis(proto.min_backoff_ms.unwrap_or(1_000));
        AccrualPolicy {
            consecutive_failures: proto.consecutive_failures.unwrap_or(5),
            min_backoff,
            max_backoff: Duration::from_millis(proto.max_backoff_ms.unwrap_or(60_000))
                .max(min_backoff),
        }
    }
}

/// One endpoint's accrual state.
#[derive(Debug, Default)]
pub struct Accrual {
    state: Mutex<State>,
    /// Mirrors "not admitting" so the balancer's hot path reads no lock.
    ejected: AtomicBool,
    /// Outcomes since the last success-rate evaluation (counted only when
    /// the backend has one).
    pub window: Window,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Admitting {
        consecutive_failures: u32,
    },
    Ejected {
        until: Instant,
        backoff: Duration,
    },
    /// The one probe is in flight; `backoff` is the ejection it follows.
    Probing {
        backoff: Duration,
    },
}

impl Default for State {
    fn default() -> Self {
        State::Admitting {
            consecutive_failures: 0,
        }
    }
}

/// What an outcome did to the endpoint, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Ejected,
    /// The probe failed: ejected again (counts as an ejection, the gauge stays).
    Reejected,
    Readmitted,
}

impl Accrual {
    /// True when the endpoint takes ordinary requests (lock-free).
    pub fn admits(&self) -> bool {
        !self.ejected.load(Ordering::Acquire)
    }

    /// Claims the single probe of an ejected endpoint whose backoff has ended.
    pub fn try_probe(&self, now: Instant) -> bool {
        let mut state = self.lock();
        match *state {
            State::Ejected { until, backoff } if now >= until => {
                *state = State::Probing { backoff };
                true
            }
            _ => false,
        }
    }

    /// A probe that ended with no outcome (cancelled): let the next request probe.
    pub fn release_probe(&self, now: Instant) {
        let mut state = self.lock();
        if let State::Probing { backoff } = *state {
            *state = State::Ejected {
                until: now,
                backoff,
            };
        }
    }

    /// Records an attempt's outcome. `may_eject` is asked only when this
    /// failure would eject the endpoint from the admitting state.
    pub fn record(
        &self,
        policy: &AccrualPolicy,
        probe: bool,
        success: bool,
        now: Instant,
        may_eject: impl FnOnce() -> bool,
    ) -> Transition {
        let mut state = self.lock();
        let (next, transition) = match (*state, probe, success) {
            (State::Probing { .. }, true, true) => (State::default(), Transition::Readmitted),
            (State::Probing { backoff }, true, false) => {
                let backoff = (backoff * 2).min(policy.max_backoff);
                let until = now + backoff;
                (State::Ejected { until, backoff }, Transition::Reejected)
            }
            (State::Admitting { .. }, _, true) => (State::default(), Transition::None),
            (
                State::Admitting {
                    consecutive_failures,
                },
                _,
                false,
            ) => {
                let failures = consecutive_failures.saturating_add(1);
                let threshold = policy.consecutive_failures;
                if threshold > 0 && failures >= threshold && may_eject() {
                    let backoff = policy.min_backoff;
                    let until = now + backoff;
                    (State::Ejected { until, backoff }, Transition::Ejected)
                } else {
                    let state = State::Admitting {
                        consecutive_failures: failures,
                    };
                    (state, Transition::None)
                }
            }
            // Outcomes of requests sent before the ejection change nothing.
            (state, _, _) => (state, Transition::None),
        };
        *state = next;
        let ejected = !matches!(next, State::Admitting { .. });
        self.ejected.store(ejected, Ordering::Release);
        transition
    }

    /// Ejects an admitting endpoint found to be a success-rate outlier, for
    /// the policy's first backoff, if `may_eject` allows it.
    pub fn eject_outlier(
        &self,
        policy: &AccrualPolicy,
        now: Instant,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        let mut state = self.lock();
        if !matches!(*state, State::Admitting { .. }) || !may_eject() {
            return false;
        }
        let backoff = policy.min_backoff;
        *state = State::Ejected {
            until: now + backoff,
            backoff,
        };
        self.ejected.store(true, Ordering::Release);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value: a panic elsewhere cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: AccrualPolicy = AccrualPolicy {
        consecutive_failures: 3,
        min_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(5),
    };

    fn fail(a: &Accrual, probe: bool) -> Transition {
        a.record(&POLICY, probe, false, Instant::now(), || true)
    }

    fn succeed(a: &Accrual, probe: bool) -> Transition {
        a.record(&POLICY, probe, true, Instant::now(), || true)
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let a = Accrual::default();
        fail(&a, false);
        fail(&a, false);
        succeed(&a, false);
        fail(&a, false);
        assert_eq!(fail(&a, false), Transition::None);
        assert!(a.admits());
        assert_eq!(fail(&a, false), Transition::Ejected);
        assert!(!a.admits());
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_after_backoff_success_readmits() {
        let a = Accrual::default();
        (0..3).for_each(|_| {
            fail(&a, false);
        });
        assert!(!a.try_probe(Instant::now()), "no probe during the backoff");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!a.try_probe(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(a.try_probe(Instant::now()), "probe once the backoff ends");
        assert!(!a.try_probe(Instant::now()), "exactly one probe");
        assert!(!a.admits());
        // A late outcome of a request sent before the ejection changes nothing.
        assert_eq!(succeed(&a, false), Transition::None);
        assert!(!a.admits());
        assert_eq!(succeed(&a, true), Transition::Readmitted);
        assert!(a.admits());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_double_the_backoff_up_to_max() {
        let a = Accrual::default();
        (0..3).for_each(|_| {
            fail(&a, false);
        });
        let mut backoff = POLICY.min_backoff;
        for _ in 0..5 {
            tokio::time::advance(backoff - Duration::from_millis(1)).await;
            assert!(
                !a.try_probe(Instant::now()),
                "still ejected before {backoff:?}"
            );
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(a.try_probe(Instant::now()), "probe after {backoff:?}");
            assert_eq!(fail(&a, true), Transition::Reejected);
            backoff = (backoff * 2).min(POLICY.max_backoff);
        }
        assert_eq!(backoff, POLICY.max_backoff);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_lets_the_next_request_probe() {
        let a = Accrual::default();
        (0..3).for_each(|_| {
            fail(&a, false);
        });
        tokio::time::advance(POLICY.min_backoff).await;
        assert!(a.try_probe(Instant::now()));
        a.release_probe(Instant::now());
        assert!(a.try_probe(Instant::now()));
        assert_eq!(succeed(&a, true), Transition::Readmitted);
    }

    #[tokio::test(start_paused = true)]
    async fn backend_veto_keeps_the_endpoint_admitting() {
        let a = Accrual::default();
        for _ in 0..10 {
            assert_eq!(
                a.record(&POLICY, false, false, Instant::now(), || false),
                Transition::None
            );
        }
        assert!(a.admits());
    }

    #[test]
    fn disabled_accrual_never_ejects() {
        let policy = AccrualPolicy {
            consecutive_failures: 0,
            ..POLICY
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let a = Accrual::default();
            for _ in 0..100 {
                a.record(&policy, false, false, Instant::now(), || true);
            }
            assert!(a.admits());
        });
    }

    #[tokio::test(start_paused = true)]
    async fn an_outlier_is_ejected_like_a_failing_endpoint_and_probed_back() {
        let a = Accrual::default();
        assert!(
            !a.eject_outlier(&POLICY, Instant::now(), || false),
            "vetoed"
        );
        assert!(a.admits());
        assert!(a.eject_outlier(&POLICY, Instant::now(), || true));
        assert!(!a.admits());
        assert!(!a.eject_outlier(&POLICY, Instant::now(), || true), "once");
        tokio::time::advance(POLICY.min_backoff).await;
        assert!(a.try_probe(Instant::now()));
        assert_eq!(succeed(&a, true), Transition::Readmitted);
    }

    #[test]
    fn defaults_follow_the_proto() {
        let p = AccrualPolicy::from_proto(None);
        assert_eq!(p.consecutive_failures, 5);
        assert_eq!(p.min_backoff, Duration::from_secs(1));
        assert_eq!(p.max_backoff, Duration::from_secs(60));
    }
}
