//! The `plexus.io/*` annotations users write on Services, Namespaces and Pods.
//! A bad value is an error naming the annotation and what was expected; the
//! object's other annotations still apply.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::str::FromStr;

use plexus_api::v1::{Concurrency, FailureAccrual, RateLimit, Resilience, RetryBudget};
use plexus_core::annotations::{INJECT, OPAQUE_PORTS};
use plexus_core::hash_key::HashKey;
use plexus_core::ports::{PortRange, parse_list};
use plexus_identity::{SpiffeId, SpiffeIdError};

use super::fault::{
    FAULT_ABORT_GRPC_STATUS, FAULT_ABORT_PERCENT, FAULT_ABORT_STATUS, FAULT_DELAY,
    FAULT_DELAY_PERCENT,
};
use super::grpc_retry::{RETRY_ATTEMPTS, RETRY_BACKOFF, RETRY_GRPC_CODES};
use super::success_rate::{
    SUCCESS_RATE, SUCCESS_RATE_INTERVAL, SUCCESS_RATE_MIN_ENDPOINTS, SUCCESS_RATE_MIN_REQUESTS,
    SUCCESS_RATE_STDEV_FACTOR, SUCCESS_RATE_THRESHOLD, success_rate,
};

pub const MTLS_MODE: &str = "plexus.io/mtls-mode";
pub const ALLOWED_CLIENTS: &str = "plexus.io/allowed-clients";
pub const RETRY_BUDGET_RATIO: &str = "plexus.io/retry-budget-ratio";
pub const RETRY_BUDGET_MIN_PER_SECOND: &str = "plexus.io/retry-budget-min-per-second";
pub const FAILURE_ACCRUAL_CONSECUTIVE: &str = "plexus.io/failure-accrual-consecutive";
pub const FAILURE_ACCRUAL_MIN_BACKOFF: &str = "plexus.io/failure-accrual-min-backoff";
pub const FAILURE_ACCRUAL_MAX_BACKOFF: &str = "plexus.io/failure-accrual-max-backoff";
pub const LOAD_BALANCER: &str = "plexus.io/load-balancer";
pub const HASH_KEY: &str = "plexus.io/hash-key";
pub const MAX_CONCURRENCY: &str = "plexus.io/max-concurrency";
pub const MAX_QUEUE: &str = "plexus.io/max-queue";
pub const RATE_LIMIT: &str = "plexus.io/rate-limit";
pub const RATE_LIMIT_BURST: &str = "plexus.io/rate-limit-burst";
pub const RATE_LIMIT_PER_IDENTITY: &str = "plexus.io/rate-limit-per-identity";

/// Every annotation the discovery index reads; docs/annotations.md lists the same.
pub const READ: &[&str] = &[
    INJECT,
    OPAQUE_PORTS,
    MTLS_MODE,
    ALLOWED_CLIENTS,
    RETRY_BUDGET_RATIO,
    RETRY_BUDGET_MIN_PER_SECOND,
    FAILURE_ACCRUAL_CONSECUTIVE,
    FAILURE_ACCRUAL_MIN_BACKOFF,
    FAILURE_ACCRUAL_MAX_BACKOFF,
    SUCCESS_RATE,
    SUCCESS_RATE_INTERVAL,
    SUCCESS_RATE_MIN_REQUESTS,
    SUCCESS_RATE_MIN_ENDPOINTS,
    SUCCESS_RATE_STDEV_FACTOR,
    SUCCESS_RATE_THRESHOLD,
    LOAD_BALANCER,
    HASH_KEY,
    MAX_CONCURRENCY,
    MAX_QUEUE,
    RATE_LIMIT,
    RATE_LIMIT_BURST,
    RATE_LIMIT_PER_IDENTITY,
    RETRY_GRPC_CODES,
    RETRY_ATTEMPTS,
    RETRY_BACKOFF,
    FAULT_DELAY,
    FAULT_DELAY_PERCENT,
    FAULT_ABORT_STATUS,
    FAULT_ABORT_GRPC_STATUS,
    FAULT_ABORT_PERCENT,
];

/// The largest retry ratio accepted (tower's budget accepts up to 1000).
const MAX_RETRY_RATIO: f64 = 1000.0;

/// A bad annotation value: which annotation, and what is wrong with it.
#[derive(Clone, Debug, PartialEq)]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub message: String,
}

impl AnnotationError {
    pub fn field(&self) -> String {
        format!("metadata.annotations[{}]", self.annotation)
    }
}

/// Reads annotations, collecting errors instead of stopping at the first.
pub struct Annotations<'a> {
    map: Option<&'a BTreeMap<String, String>>,
    pub errors: Vec<AnnotationError>,
}

impl<'a> Annotations<'a> {
    pub fn new(map: Option<&'a BTreeMap<String, String>>) -> Self {
        Self {
            map,
            errors: Vec::new(),
        }
    }

    fn raw(&self, name: &'static str) -> Option<&'a str> {
        self.map.and_then(|m| m.get(name)).map(|v| v.trim())
    }

    /// Parses one annotation with `parse`, whose error says what was expected.
    pub(super) fn get<T>(
        &mut self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let raw = self.raw(name)?;
        match parse(raw) {
            Ok(value) => Some(value),
            Err(expected) => {
                self.errors.push(AnnotationError {
                    annotation: name,
                    message: format!("{raw:?} is not {expected}"),
                });
                None
            }
        }
    }

    /// Records an annotation that is wrong beside the others (set without
    /// the one it qualifies), `message` saying how.
    pub(super) fn refuse(&mut self, name: &'static str, message: String) {
        self.errors.push(AnnotationError {
            annotation: name,
            message,
        });
    }

    fn number<T: FromStr>(&mut self, name: &'static str, expected: &str) -> Option<T> {
        self.get(name, |v| v.parse::<T>().map_err(|_| expected.to_string()))
    }

    fn duration_ms(&mut self, name: &'static str) -> Option<u64> {
        self.get(name, parse_duration_ms)
    }

    /// The per-Service resilience policy; unset annotations stay unset (the
    /// proxy applies the documented defaults).
    pub fn resilience(&mut self) -> Resilience {
        let ratio = self.get(RETRY_BUDGET_RATIO, |v| match v.parse::<f64>() {
            Ok(r) if (0.0..=MAX_RETRY_RATIO).contains(&r) => Ok(r),
            _ => Err(format!("a number from 0 to {MAX_RETRY_RATIO} (e.g. 0.2)")),
        });
        let min_per_second = self.number(
            RETRY_BUDGET_MIN_PER_SECOND,
            "a whole number of retries per second",
        );
        let consecutive = self.number(
            FAILURE_ACCRUAL_CONSECUTIVE,
            "a whole number of failures (0 disables)",
        );
        let mut min_backoff = self.duration_ms(FAILURE_ACCRUAL_MIN_BACKOFF);
        let max_backoff = self.duration_ms(FAILURE_ACCRUAL_MAX_BACKOFF);
        if let (Some(min), Some(max)) = (min_backoff, max_backoff)
            && min > max
        {
            self.errors.push(AnnotationError {
                annotation: FAILURE_ACCRUAL_MIN_BACKOFF,
                message: format!("{min}ms is more than {FAILURE_ACCRUAL_MAX_BACKOFF} ({max}ms)"),
            });
            min_backoff = None;
        }
        let (load_balancer, hash_key) = self.load_balancer();
        let max_in_flight = self.number(
            MAX_CONCURRENCY,
            "a whole number of requests (0 = unlimited)",
        );
        let max_queue = self.number(MAX_QUEUE, "a whole number of requests");
        let retry_budget = (ratio.is_some() || min_per_second.is_some()).then_some(RetryBudget {
            ratio,
            min_per_second,
            ttl_ms: None,
        });
        let success_rate = success_rate(self);
        let failure_accrual = (consecutive.is_some()
            || min_backoff.is_some()
            || max_backoff.is_some()
            || success_rate.is_some())
        .then_some(FailureAccrual {
            consecutive_failures: consecutive,
            min_backoff_ms: min_backoff,
            max_backoff_ms: max_backoff,
            success_rate,
        });
        let concurrency = (max_in_flight.is_some() || max_queue.is_some()).then(|| Concurrency {
            max_in_flight: max_in_flight.unwrap_or(0),
            max_queue: max_queue.unwrap_or(0),
            queue_timeout_ms: None,
        });
        Resilience {
            retry_budget,
            failure_accrual,
            load_balancer,
            concurrency,
            hash_key,
        }
    }

    /// `plexus.io/load-balancer`, and the `plexus.io/hash-key` that
    /// `consistent-hash` needs (in its canonical spelling); consistent hashing
    /// without a valid key is the default balancer, and a key without it an
    /// error (it would do nothing).
    fn load_balancer(&mut self) -> (String, String) {
        let load_balancer = self
            .get(LOAD_BALANCER, |v| match v {
                "p2c-ewma" | "round-robin" | "consistent-hash" => Ok(v.to_string()),
                _ => Err("one of p2c-ewma, round-robin, consistent-hash".to_string()),
            })
            .unwrap_or_default();
        let key = self.get(HASH_KEY, |v| {
            v.parse::<HashKey>().map_err(|e| e.to_string())
        });
        match key {
            Some(key) if load_balancer == "consistent-hash" => (load_balancer, key.to_string()),
            None if load_balancer == "consistent-hash" => {
                if self.raw(HASH_KEY).is_none() {
                    self.errors.push(AnnotationError {
                        annotation: LOAD_BALANCER,
                        message: format!("consistent-hash needs {HASH_KEY}"),
                    });
                }
                (String::new(), String::new())
            }
            // Named only when the balancer is known: a bad one is its own error.
            Some(_) if self.raw(LOAD_BALANCER).is_none() || !load_balancer.is_empty() => {
                self.errors.push(AnnotationError {
                    annotation: HASH_KEY,
                    message: format!("has no effect without {LOAD_BALANCER}: consistent-hash"),
                });
                (load_balancer, String::new())
            }
            _ => (load_balancer, String::new()),
        }
    }

    /// `plexus.io/inject`: `enabled` / `disabled`.
    pub fn inject(&mut self) -> Option<bool> {
        self.get(INJECT, |v| match v {
            "enabled" => Ok(true),
            "disabled" => Ok(false),
            _ => Err("enabled or disabled".to_string()),
        })
    }

    pub fn mtls_mode(&mut self) -> Option<MtlsMode> {
        self.get(MTLS_MODE, |v| match v.to_ascii_lowercase().as_str() {
            "strict" => Ok(MtlsMode::Strict),
            "permissive" => Ok(MtlsMode::Permissive),
            _ => Err("strict or permissive".to_string()),
        })
    }

    /// `plexus.io/allowed-clients`: comma-separated SPIFFE IDs, or
    /// `namespace/serviceaccount` shorthands in `trust_domain`.
    pub fn allowed_clients(&mut self, trust_domain: &str) -> Option<Vec<String>> {
        self.get(ALLOWED_CLIENTS, |v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|id| {
                    let parsed = match id.split_once('/') {
                        _ if id.starts_with("spiffe://") => id.parse::<SpiffeId>(),
                        Some((ns, sa)) => SpiffeId::new(trust_domain, ns, sa),
                        None => Err(SpiffeIdError::Scheme),
                    };
                    parsed
                        .map(|id| id.to_string())
                        .map_err(|e| format!("a comma list of spiffe:// IDs or namespace/serviceaccount ({id:?}: {e})"))
                })
                .collect()
        })
    }

    pub fn opaque_ports(&mut self) -> Option<PortSet> {
        self.get(OPAQUE_PORTS, |v| v.parse::<PortSet>())
    }

    /// `plexus.io/rate-limit` (`100/s`, `600/m`, `1000/h`), with
    /// `plexus.io/rate-limit-burst` (default: one second of the rate, at
    /// least 1) and `plexus.io/rate-limit-per-identity` (`enabled`: a
    /// bucket per client identity). The last two need the first.
    pub fn rate_limit(&mut self) -> Option<RateLimit> {
        let rate = self.get(RATE_LIMIT, parse_rate);
        let burst = self.get(RATE_LIMIT_BURST, |v| match v.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err("a whole number of requests, at least 1".to_string()),
        });
        let per_identity = self.get(RATE_LIMIT_PER_IDENTITY, |v| match v {
            "enabled" => Ok(true),
            "disabled" => Ok(false),
            _ => Err("enabled or disabled".to_string()),
        });
        let Some((requests, period_seconds)) = rate else {
            if self.raw(RATE_LIMIT).is_none() {
                for (name, set) in [
                    (RATE_LIMIT_BURST, burst.is_some()),
                    (RATE_LIMIT_PER_IDENTITY, per_identity.is_some()),
                ] {
                    if set {
                        self.errors.push(AnnotationError {
                            annotation: name,
                            message: format!("has no effect without {RATE_LIMIT}"),
                        });
                    }
                }
            }
            return None;
        };
        Some(RateLimit {
            requests,
            period_seconds,
            burst: burst.unwrap_or_else(|| requests.div_ceil(period_seconds).max(1)),
            per_identity: per_identity.unwrap_or(false),
        })
    }
}

/// A rate, `<requests>/<s|m|h>`: the requests and the period in seconds.
fn parse_rate(value: &str) -> Result<(u32, u32), String> {
    let expected = || "a rate of requests per s, m or h (e.g. 100/s, 600/m)".to_string();
    let (requests, unit) = value.split_once('/').ok_or_else(expected)?;
    let requests = match requests.trim().parse::<u32>() {
        Ok(n) if n > 0 => n,
        _ => return Err(expected()),
    };
    let period_seconds = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(expected()),
    };
    Ok((requests, period_seconds))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsMode {
    Permissive,
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Permissive => "permissive",
            MtlsMode::Strict => "strict",
        }
    }
}

/// The SPIFFE ID of a workload's service account; empty when the names cannot
/// form one (the endpoint then cannot be verified, so it is treated as not meshed).
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    SpiffeId::new(trust_domain, namespace, service_account)
        .map(|id| id.to_string())
        .unwrap_or_default()
}

/// Ports and port ranges, `"3306,5432,4000-4100"` (a range may also be written `4000:4100`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet(Vec<RangeInclusive<u16>>);

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(&port))
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().flat_map(|r| r.clone())
    }
}

impl FromStr for PortSet {
    type Err = String;

    // One port-list syntax for the whole mesh: the injector reads its port annotations
    // with the same parser (`plexus_core::ports`).
    fn from_str(s: &str) -> Result<Self, String> {
        parse_list::<PortRange>(s)
            .map(|ranges| PortSet(ranges.iter().map(|r| r.first..=r.last).collect()))
            .map_err(|_| "a comma list of ports or ranges (e.g. 3306,4000-4100)".to_string())
    }
}

/// Parses a Gateway API duration ("500ms", "10s", "1m", "1h30m") to milliseconds.
pub fn parse_duration_ms(value: &str) -> Result<u64, String> {
    value
        .parse::<gateway_api::Duration>()
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|_| "a duration such as 500ms, 10s or 1m".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn resilience_annotations_are_read() {
        let map = annotations(&[
            (RETRY_BUDGET_RATIO, "0.5"),
            (RETRY_BUDGET_MIN_PER_SECOND, "3"),
            (FAILURE_ACCRUAL_CONSECUTIVE, "7"),
            (FAILURE_ACCRUAL_MIN_BACKOFF, "500ms"),
            (FAILURE_ACCRUAL_MAX_BACKOFF, "1m"),
            (LOAD_BALANCER, "round-robin"),
            (MAX_CONCURRENCY, "100"),
            (MAX_QUEUE, "10"),
        ]);
        let mut a = Annotations::new(Some(&map));
        let r = a.resilience();
        assert!(a.errors.is_empty(), "{:?}", a.errors);
        let budget = r.retry_budget.unwrap();
        assert_eq!((budget.ratio, budget.min_per_second), (Some(0.5), Some(3)));
        let fa = r.failure_accrual.unwrap();
        assert_eq!(
            (
                fa.consecutive_failures,
                fa.min_backoff_ms,
                fa.max_backoff_ms
            ),
            (Some(7), Some(500), Some(60_000))
        );
        assert_eq!(r.load_balancer, "round-robin");
        let c = r.concurrency.unwrap();
        assert_eq!((c.max_in_flight, c.max_queue), (100, 10));
    }

    #[test]
    fn bad_values_name_the_annotation_and_the_rest_apply() {
        let map = annotations(&[
            (RETRY_BUDGET_RATIO, "lots"),
            (FAILURE_ACCRUAL_MIN_BACKOFF, "5 seconds"),
            (LOAD_BALANCER, "random"),
            (MAX_CONCURRENCY, "-1"),
            (MAX_QUEUE, "4"),
        ]);
        let mut a = Annotations::new(Some(&map));
        let r = a.resilience();
        let named: Vec<_> = a.errors.iter().map(|e| e.annotation).collect();
        assert_eq!(
            named,
            [
                RETRY_BUDGET_RATIO,
                FAILURE_ACCRUAL_MIN_BACKOFF,
                LOAD_BALANCER,
                MAX_CONCURRENCY
            ]
        );
        assert!(
            a.errors[0].message.contains("\"lots\" is not a number"),
            "{}",
            a.errors[0].message
        );
        assert_eq!(
            a.errors[0].field(),
            "metadata.annotations[plexus.io/retry-budget-ratio]"
        );
        assert_eq!(r.retry_budget, None);
        assert_eq!(r.load_balancer, "");
        assert_eq!(r.concurrency.unwrap().max_queue, 4);
    }

    #[test]
    fn consistent_hashing_needs_a_key_it_can_read() {
        let read = |pairs: &[(&str, &str)]| {
            let map = annotations(pairs);
            let mut a = Annotations::new(Some(&map));
            let r = a.resilience();
            let named: Vec<_> = a.errors.iter().map(|e| e.annotation).collect();
            (r.load_balancer, r.hash_key, named, a.errors)
        };
        for (key, canonical) in [
            ("header:X-User", "header:x-user"),
            ("cookie:session", "cookie:session"),
            ("source-ip", "source-ip"),
        ] {
            let (lb, hash_key, named, _) =
                read(&[(LOAD_BALANCER, "consistent-hash"), (HASH_KEY, key)]);
            assert_eq!(
                (lb.as_str(), hash_key.as_str()),
                ("consistent-hash", canonical)
            );
            assert!(named.is_empty(), "{named:?}");
        }
        // A bad key, or none: named, and the default balancer.
        let (lb, hash_key, named, errors) =
            read(&[(LOAD_BALANCER, "consistent-hash"), (HASH_KEY, "identity")]);
        assert_eq!(
            (lb.as_str(), hash_key.as_str(), named),
            ("", "", vec![HASH_KEY])
        );
        assert!(
            errors[0]
                .message
                .starts_with("\"identity\" is not a key the balancing proxy can read"),
            "{errors:?}"
        );
        let (lb, _, named, errors) = read(&[(LOAD_BALANCER, "consistent-hash")]);
        assert_eq!((lb.as_str(), named), ("", vec![LOAD_BALANCER]));
        assert_eq!(
            errors[0].message,
            "consistent-hash needs plexus.io/hash-key"
        );
        // A key without consistent hashing does nothing: named; with a bad balancer, only that is.
        let (lb, hash_key, named, _) =
            read(&[(LOAD_BALANCER, "round-robin"), (HASH_KEY, "source-ip")]);
        assert_eq!(
            (lb.as_str(), hash_key.as_str(), named),
            ("round-robin", "", vec![HASH_KEY])
        );
        let (_, _, named, _) = read(&[(HASH_KEY, "source-ip")]);
        assert_eq!(named, [HASH_KEY]);
        let (_, _, named, _) = read(&[(LOAD_BALANCER, "random"), (HASH_KEY, "source-ip")]);
        assert_eq!(named, [LOAD_BALANCER]);
    }

    #[test]
    fn min_backoff_above_max_is_refused() {
        let map = annotations(&[
            (FAILURE_ACCRUAL_MIN_BACKOFF, "10s"),
            (FAILURE_ACCRUAL_MAX_BACKOFF, "1s"),
        ]);
        let mut a = Annotations::new(Some(&map));
        let fa = a.resilience().failure_accrual.unwrap();
        assert_eq!(fa.min_backoff_ms, None);
        assert_eq!(fa.max_backoff_ms, Some(1000));
        assert_eq!(a.errors.len(), 1);
    }

    #[test]
    fn rate_limits_are_read_with_a_default_burst_of_one_second() {
        let read = |pairs: &[(&str, &str)]| {
            let map = annotations(pairs);
            let mut a = Annotations::new(Some(&map));
            let limit = a.rate_limit();
            (limit, a.errors)
        };
        let (limit, errors) = read(&[(RATE_LIMIT, "100/s")]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            limit,
            Some(RateLimit {
                requests: 100,
                period_seconds: 1,
                burst: 100,
                per_identity: false
            })
        );
        let (limit, _) = read(&[
            (RATE_LIMIT, "30 / m"),
            (RATE_LIMIT_BURST, "5"),
            (RATE_LIMIT_PER_IDENTITY, "enabled"),
        ]);
        assert_eq!(
            limit,
            Some(RateLimit {
                requests: 30,
                period_seconds: 60,
                burst: 5,
                per_identity: true
            })
        );
        assert_eq!(read(&[(RATE_LIMIT, "1/h")]).0.unwrap().burst, 1);

        for bad in ["100", "0/s", "-1/s", "10/d", "ten/s"] {
            let (limit, errors) = read(&[(RATE_LIMIT, bad)]);
            assert_eq!(limit, None, "{bad}");
            assert_eq!(errors[0].annotation, RATE_LIMIT, "{bad}");
            assert!(
                errors[0].message.contains("a rate of requests"),
                "{errors:?}"
            );
        }
        let (limit, errors) = read(&[(RATE_LIMIT, "10/s"), (RATE_LIMIT_BURST, "0")]);
        assert_eq!(limit.unwrap().burst, 10, "a bad burst keeps the default");
        assert_eq!(errors[0].annotation, RATE_LIMIT_BURST);
        let (limit, errors) = read(&[(RATE_LIMIT_PER_IDENTITY, "enabled")]);
        assert_eq!(limit, None);
        assert_eq!(errors[0].annotation, RATE_LIMIT_PER_IDENTITY);
        assert!(errors[0].message.contains("without plexus.io/rate-limit"));
    }

    #[test]
    fn port_sets_and_clients() {
        let set: PortSet = "3306, 4000-4002".parse().unwrap();
        assert!(set.contains(3306) && set.contains(4001) && !set.contains(80));
        assert_eq!(set.ports().collect::<Vec<_>>(), [3306, 4000, 4001, 4002]);
        assert!("4002-4000".parse::<PortSet>().is_err());
        assert!("http".parse::<PortSet>().is_err());
        // The injector's syntax (plexus_core::ports) is read here too.
        let colon: PortSet = "4000:4001".parse().unwrap();
        assert_eq!(colon.ports().collect::<Vec<_>>(), [4000, 4001]);
        assert!("0".parse::<PortSet>().is_err());

        let map = annotations(&[(ALLOWED_CLIENTS, "shop/web, spiffe://other.td/ns/a/sa/b")]);
        let mut a = Annotations::new(Some(&map));
        assert_eq!(
            a.allowed_clients("cluster.local").unwrap(),
            [
                "spiffe://cluster.local/ns/shop/sa/web",
                "spiffe://other.td/ns/a/sa/b"
            ]
        );
        let map = annotations(&[(ALLOWED_CLIENTS, "web")]);
        let mut a = Annotations::new(Some(&map));
        assert_eq!(a.allowed_clients("cluster.local"), None);
        assert_eq!(a.errors[0].annotation, ALLOWED_CLIENTS);
    }
}

/// Properties of annotation values, which any user of the cluster writes:
/// no value panics, a bad one is an error naming its annotation, and valid
/// generated values read back as generated.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Any value, or one near the syntax of some annotation.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,24}",
            "[0-9,:\\- ]{0,16}",
            "([0-9]{0,6}(h|m|s|ms|us|ns)){0,5}",
            "[a-z0-9./,\\- ]{0,40}",
            "spiffe://[a-z./]{0,12}/ns/[a-z-]{0,6}/sa/[a-z.-]{0,6}",
            "(header|cookie|query|source-ip|identity|consistent-hash)(:[A-Za-z0-9;= -]{0,8})?",
        ]
    }

    /// Reads every annotation the index reads.
    fn read_all(map: &BTreeMap<String, String>) -> Vec<AnnotationError> {
        let mut a = Annotations::new(Some(map));
        let _ = a.resilience();
        let _ = a.inject();
        let _ = a.mtls_mode();
        let _ = a.allowed_clients("cluster.local");
        let _ = a.opaque_ports();
        let _ = a.rate_limit();
        a.errors
    }

    fn label() -> &'static str {
        "[a-z]([a-z0-9-]{0,8}[a-z0-9])?"
    }

    proptest! {
        #![proptest_config(plexus_core::property::config())]

        #[test]
        fn any_values_are_read_or_named_errors(values in prop::collection::vec(value(), READ.len())) {
            let map: BTreeMap<String, String> =
                READ.iter().map(|a| a.to_string()).zip(values).collect();
            for error in read_all(&map) {
                prop_assert!(READ.contains(&error.annotation), "{:?}", error);
                prop_assert!(!error.message.is_empty());
            }
        }

        #[test]
        fn a_port_list_reads_back_its_ports(
            ranges in prop::collection::vec((1u16.., 0u16..200), 1..5),
            dash in prop::sample::select(vec!["-", ":"]),
            probe in any::<u16>(),
        ) {
            let ranges: Vec<(u16, u16)> =
                ranges.into_iter().map(|(first, len)| (first, first.saturating_add(len))).collect();
            let list = ranges
                .iter()
                .map(|(first, last)| if first == last { first.to_string() } else { format!("{first}{dash}{last}") })
                .collect::<Vec<_>>()
                .join(",");
            let map = BTreeMap::from([(OPAQUE_PORTS.to_owned(), list.clone())]);
            let ports = Annotations::new(Some(&map)).opaque_ports().expect("a valid list");
            for (first, last) in &ranges {
                prop_assert!(ports.contains(*first) && ports.contains(*last), "{}", list);
            }
            let covered = ranges.iter().any(|(first, last)| (*first..=*last).contains(&probe));
            prop_assert_eq!(ports.contains(probe), covered, "{} {}", list, probe);
        }

        #[test]
        fn a_duration_reads_back_in_milliseconds(
            h in prop::option::of(0u64..10_000),
            m in prop::option::of(0u64..100_000),
            s in prop::option::of(0u64..100_000),
            ms in prop::option::of(0u64..100_000),
        ) {
            prop_assume!(h.is_some() || m.is_some() || s.is_some() || ms.is_some());
            let text: String = [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")]
                .iter()
                .filter_map(|(n, unit)| n.map(|n| format!("{n}{unit}")))
                .collect();
            let total = h.unwrap_or(0) * 3_600_000 + m.unwrap_or(0) * 60_000 + s.unwrap_or(0) * 1000 + ms.unwrap_or(0);
            prop_assert_eq!(parse_duration_ms(&text), Ok(total), "{}", text);
        }

        #[test]
        fn a_hash_key_reads_back_in_its_canonical_spelling(
            kind in prop::sample::select(vec!["header", "cookie", "source-ip"]),
            name in "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}",
        ) {
            let key = if kind == "source-ip" { kind.to_owned() } else { format!("{kind}:{name}") };
            let map = BTreeMap::from([
                (LOAD_BALANCER.to_owned(), "consistent-hash".to_owned()),
                (HASH_KEY.to_owned(), key.clone()),
            ]);
            let mut a = Annotations::new(Some(&map));
            let r = a.resilience();
            prop_assert!(a.errors.is_empty(), "{:?}", a.errors);
            prop_assert_eq!(&r.load_balancer, "consistent-hash");
            let canonical = match kind {
                "header" => key.to_ascii_lowercase(),
                _ => key.clone(),
            };
            prop_assert_eq!(&r.hash_key, &canonical);
            prop_assert_eq!(canonical.parse::<HashKey>(), key.parse::<HashKey>());
        }

        #[test]
        fn switches_and_identities_read_back(
            inject in any::<bool>(),
            strict in any::<bool>(),
            upper in any::<bool>(),
            clients in prop::collection::vec((label(), label()), 1..4),
        ) {
            let mode = if strict { "strict" } else { "permissive" };
            let mode = if upper { mode.to_ascii_uppercase() } else { mode.to_owned() };
            let list = clients.iter().map(|(ns, sa)| format!("{ns}/{sa}")).collect::<Vec<_>>().join(", ");
            let map = BTreeMap::from([
                (INJECT.to_owned(), if inject { "enabled" } else { "disabled" }.to_owned()),
                (MTLS_MODE.to_owned(), mode),
                (ALLOWED_CLIENTS.to_owned(), list),
            ]);
            let mut a = Annotations::new(Some(&map));
            prop_assert_eq!(a.inject(), Some(inject));
            prop_assert_eq!(a.mtls_mode(), Some(if strict { MtlsMode::Strict } else { MtlsMode::Permissive }));
            let expected: Vec<String> = clients
                .iter()
                .map(|(ns, sa)| format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"))
                .collect();
            prop_assert_eq!(a.allowed_clients("cluster.local"), Some(expected));
            prop_assert!(a.errors.is_empty(), "{:?}", a.errors);
        }
    }
}
