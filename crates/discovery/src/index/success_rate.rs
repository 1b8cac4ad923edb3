//! Success-rate outlier detection of a Service's endpoints, by annotation,
//! beside the `plexus.io/failure-accrual-*` consecutive failures:
//! `plexus.io/failure-accrual-success-rate: enabled` turns it on (default
//! off: with few endpoints or little traffic the statistics are noise, and an
//! ejection the operator did not ask for costs capacity); the other
//! annotations tune it and need it on.

use plexus_api::v1::SuccessRate;

use super::annotations::{AnnotationError, Annotations, parse_duration_ms};

pub const SUCCESS_RATE: &str = "plexus.io/failure-accrual-success-rate";
pub const SUCCESS_RATE_INTERVAL: &str = "plexus.io/failure-accrual-success-rate-interval";
pub const SUCCESS_RATE_MIN_REQUESTS: &str = "plexus.io/failure-accrual-success-rate-min-requests";
pub const SUCCESS_RATE_MIN_ENDPOINTS: &str = "plexus.io/failure-accrual-success-rate-min-endpoints";
pub const SUCCESS_RATE_STDEV_FACTOR: &str = "plexus.io/failure-accrual-success-rate-stdev-factor";
pub const SUCCESS_RATE_THRESHOLD: &str = "plexus.io/failure-accrual-success-rate-threshold";

/// Evaluations closer together than this would judge a handful of requests.
const MIN_INTERVAL_MS: u64 = 100;

/// The success-rate settings, `None` when off (unset tunings stay unset:
/// the proxy applies the documented defaults).
pub fn success_rate(annotations: &mut Annotations<'_>) -> Option<SuccessRate> {
    let enabled = annotations.get(SUCCESS_RATE, |v| match v {
        "enabled" => Ok(true),
        "disabled" => Ok(false),
        _ => Err("enabled or disabled".to_string()),
    });
    let interval_ms = annotations.get(SUCCESS_RATE_INTERVAL, |v| match parse_duration_ms(v) {
        Ok(ms) if ms >= MIN_INTERVAL_MS => Ok(ms),
        Ok(_) => Err(format!("a duration of at least {MIN_INTERVAL_MS}ms")),
        Err(expected) => Err(expected),
    });
    let at_least_one = |v: &str| match v.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("a whole number, at least 1".to_string()),
    };
    let min_requests = annotations.get(SUCCESS_RATE_MIN_REQUESTS, at_least_one);
    let min_endpoints = annotations.get(SUCCESS_RATE_MIN_ENDPOINTS, at_least_one);
    let stdev_factor = annotations.get(SUCCESS_RATE_STDEV_FACTOR, |v| match v.parse::<f64>() {
        Ok(k) if k.is_finite() && k >= 0.0 => Ok(k),
        _ => Err("a number of standard deviations, 0 or more (e.g. 1.9)".to_string()),
    });
    let threshold = annotations.get(SUCCESS_RATE_THRESHOLD, |v| match v.parse::<f64>() {
        Ok(t) if (0.0..=1.0).contains(&t) => Ok(t),
        _ => Err("a success rate from 0 to 1 (e.g. 0.8)".to_string()),
    });
    if enabled != Some(true) {
        let tunings = [
            (SUCCESS_RATE_INTERVAL, interval_ms.is_some()),
            (SUCCESS_RATE_MIN_REQUESTS, min_requests.is_some()),
            (SUCCESS_RATE_MIN_ENDPOINTS, min_endpoints.is_some()),
            (SUCCESS_RATE_STDEV_FACTOR, stdev_factor.is_some()),
            (SUCCESS_RATE_THRESHOLD, threshold.is_some()),
        ];
        for (annotation, set) in tunings {
            if set && enabled.is_none() {
                annotations.errors.push(AnnotationError {
                    annotation,
                    message: format!("has no effect without {SUCCESS_RATE}: enabled"),
                });
            }
        }
        return None;
    }
    Some(SuccessRate {
        interval_ms,
        min_requests,
        min_endpoints,
        stdev_factor,
        threshold,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn read(pairs: &[(&str, &str)]) -> (Option<SuccessRate>, Vec<String>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut annotations = Annotations::new(Some(&map));
        let read = success_rate(&mut annotations);
        let errors = annotations.errors.iter().map(|e| e.field()).collect();
        (read, errors)
    }

    #[test]
    fn enabled_with_tunings_or_defaults() {
        let (read, errors) = read(&[
            (SUCCESS_RATE, "enabled"),
            (SUCCESS_RATE_INTERVAL, "5s"),
            (SUCCESS_RATE_MIN_REQUESTS, "20"),
            (SUCCESS_RATE_MIN_ENDPOINTS, "3"),
            (SUCCESS_RATE_STDEV_FACTOR, "1"),
            (SUCCESS_RATE_THRESHOLD, "0.8"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        let expected = SuccessRate {
            interval_ms: Some(5_000),
            min_requests: Some(20),
            min_endpoints: Some(3),
            stdev_factor: Some(1.0),
            threshold: Some(0.8),
        };
        assert_eq!(read, Some(expected));
        let (read, _) = super::tests::read(&[(SUCCESS_RATE, "enabled")]);
        assert_eq!(read, Some(SuccessRate::default()));
    }

    #[test]
    fn off_by_default_and_tunings_alone_are_named() {
        assert_eq!(read(&[]), (None, vec![]));
        let (read, errors) = read(&[(SUCCESS_RATE_THRESHOLD, "0.8")]);
        assert_eq!(read, None);
        assert_eq!(
            errors,
            [format!("metadata.annotations[{SUCCESS_RATE_THRESHOLD}]")]
        );
        let (read, errors) =
            super::tests::read(&[(SUCCESS_RATE, "disabled"), (SUCCESS_RATE_THRESHOLD, "0.8")]);
        assert_eq!((read, errors.len()), (None, 0), "switched off on purpose");
    }

    #[test]
    fn bad_values_are_named() {
        for (annotation, value) in [
            (SUCCESS_RATE, "on"),
            (SUCCESS_RATE_INTERVAL, "10ms"),
            (SUCCESS_RATE_INTERVAL, "often"),
            (SUCCESS_RATE_MIN_REQUESTS, "0"),
            (SUCCESS_RATE_MIN_ENDPOINTS, "-2"),
            (SUCCESS_RATE_STDEV_FACTOR, "-1"),
            (SUCCESS_RATE_STDEV_FACTOR, "NaN"),
            (SUCCESS_RATE_THRESHOLD, "1.5"),
        ] {
            let pairs = if annotation == SUCCESS_RATE {
                vec![(annotation, value)]
            } else {
                vec![(SUCCESS_RATE, "enabled"), (annotation, value)]
            };
            let (_, errors) = read(&pairs);
            assert_eq!(
                errors,
                [format!("metadata.annotations[{annotation}]")],
                "{value:?}"
            );
        }
    }
}
