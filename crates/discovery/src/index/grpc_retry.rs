//! Retries of a GRPCRoute, by annotation: Gateway API's GRPCRoute has no
//! `retry` field (HTTPRoute's is experimental), so a GRPCRoute says which gRPC
//! statuses are retried in `plexus.io/retry-grpc-codes`, and how often and
//! how patiently in `plexus.io/retry-attempts` and `plexus.io/retry-backoff`
//! (the meaning of HTTPRoute's `retry.attempts` and `retry.backoff`). The
//! policy applies to every rule of the route. A bad value refuses the route,
//! naming the annotation, as a bad field of its spec does.

use plexus_api::v1::RetryPolicy;

use super::annotations::{Annotations, parse_duration_ms};

pub const RETRY_GRPC_CODES: &str = "plexus.io/retry-grpc-codes";
pub const RETRY_ATTEMPTS: &str = "plexus.io/retry-attempts";
pub const RETRY_BACKOFF: &str = "plexus.io/retry-backoff";

/// Retried when the attempts or backoff are set but the codes are not: the
/// one status gRPC itself calls safe to retry.
const DEFAULT_CODES: [u32; 1] = [14];

/// gRPC's status codes by name, in code order (`OK` = 0 is never retried).
const NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

/// The route's retry policy, `None` when none of the annotations is set.
/// `default_retries`: what an HTTPRoute's `retry` without `attempts` gets.
pub fn grpc_retry(annotations: &mut Annotations<'_>, default_retries: u32) -> Option<RetryPolicy> {
    let codes = annotations.get(RETRY_GRPC_CODES, parse_codes);
    let retries = annotations.get(RETRY_ATTEMPTS, |v| {
        v.parse::<u32>()
            .map_err(|_| "a whole number of retries (0 = none)".to_string())
    });
    let backoff_ms = annotations.get(RETRY_BACKOFF, parse_duration_ms);
    if codes.is_none() && retries.is_none() && backoff_ms.is_none() {
        return None;
    }
    Some(RetryPolicy {
        // The proto counts attempts with the first; the annotation counts retries.
        attempts: retries.unwrap_or(default_retries).saturating_add(1),
        codes: Vec::new(),
        grpc_codes: codes.unwrap_or_else(|| DEFAULT_CODES.to_vec()),
        backoff_base_ms: backoff_ms.unwrap_or(0),
        backoff_max_ms: 0,
    })
}

/// A comma list of gRPC codes by name (`unavailable`, `RESOURCE_EXHAUSTED`)
/// or number (1 to 16), each once.
fn parse_codes(value: &str) -> Result<Vec<u32>, String> {
    let mut codes = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let code = parse_code(item).map_err(|expected| {
            format!("a comma list of {expected} (e.g. unavailable,resource-exhausted; {item:?} is not one)")
        })?;
        if codes.contains(&code) {
            return Err(format!("a list naming each code once ({code} twice)"));
        }
        codes.push(code);
    }
    if codes.is_empty() {
        return Err("a comma list of gRPC status names or numbers 1-16 (e.g. unavailable,resource-exhausted)".into());
    }
    Ok(codes)
}

/// One gRPC error code by name (`unavailable`, `RESOURCE_EXHAUSTED`) or number (1 to 16).
pub fn parse_code(item: &str) -> Result<u32, String> {
    let name = item.to_ascii_lowercase().replace('_', "-");
    let code = match item.parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) => NAMES.iter().position(|n| *n == name).map(|i| i as u32),
    };
    code.filter(|c| (1..=16).contains(c))
        .ok_or_else(|| "gRPC status names or numbers 1-16".to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn read(pairs: &[(&str, &str)]) -> (Option<RetryPolicy>, Vec<String>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut annotations = Annotations::new(Some(&map));
        let policy = grpc_retry(&mut annotations, 2);
        let errors = annotations.errors.iter().map(|e| e.field()).collect();
        (policy, errors)
    }

    #[test]
    fn names_and_numbers_become_grpc_codes() {
        let (policy, errors) = read(&[
            (RETRY_GRPC_CODES, "unavailable, RESOURCE_EXHAUSTED,4"),
            (RETRY_ATTEMPTS, "3"),
            (RETRY_BACKOFF, "25ms"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        let policy = policy.expect("a policy");
        assert_eq!(policy.grpc_codes, [14, 8, 4]);
        assert_eq!(policy.attempts, 4, "three retries after the first try");
        assert_eq!(policy.backoff_base_ms, 25);
        assert!(policy.codes.is_empty());
    }

    #[test]
    fn unset_parts_take_the_defaults_and_no_annotation_means_no_retries() {
        let (policy, _) = read(&[(RETRY_ATTEMPTS, "1")]);
        let policy = policy.expect("a policy");
        assert_eq!(policy.grpc_codes, DEFAULT_CODES);
        assert_eq!(policy.attempts, 2);
        let (policy, _) = read(&[(RETRY_GRPC_CODES, "unavailable")]);
        assert_eq!(policy.expect("a policy").attempts, 3);
        assert_eq!(read(&[]).0, None);
    }

    #[test]
    fn bad_values_are_named() {
        for (annotation, value) in [
            (RETRY_GRPC_CODES, "unavailable,bogus"),
            (RETRY_GRPC_CODES, "0"),
            (RETRY_GRPC_CODES, "17"),
            (RETRY_GRPC_CODES, "14,unavailable"),
            (RETRY_GRPC_CODES, " , "),
            (RETRY_ATTEMPTS, "-1"),
            (RETRY_BACKOFF, "soon"),
        ] {
            let (_, errors) = read(&[(annotation, value)]);
            assert_eq!(
                errors,
                [format!("metadata.annotations[{annotation}]")],
                "{value:?}"
            );
        }
    }
}
