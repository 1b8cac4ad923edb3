//! Fault injection of a route, by annotation: a delay and/or an abort for a
//! share of its requests, for resilience testing. Gateway API has no fault
//! filter; its extension point is an `ExtensionRef` filter naming a CRD,
//! which costs users a CRD install and an object per fault. Annotations on
//! the HTTPRoute or GRPCRoute are what Plexus reads for retries of GRPCRoutes
//! and every Service policy, so faults follow the same way: they apply to
//! every rule of the route, and a bad value refuses the route, naming the
//! annotation, as a bad field of its spec does.

use plexus_api::v1::Fault;

use super::annotations::{Annotations, parse_duration_ms};
use super::grpc_retry::parse_code;

pub const FAULT_DELAY: &str = "plexus.io/fault-delay";
pub const FAULT_DELAY_PERCENT: &str = "plexus.io/fault-delay-percent";
pub const FAULT_ABORT_STATUS: &str = "plexus.io/fault-abort-status";
pub const FAULT_ABORT_GRPC_STATUS: &str = "plexus.io/fault-abort-grpc-status";
pub const FAULT_ABORT_PERCENT: &str = "plexus.io/fault-abort-percent";

/// The longest delay a route may inject (the proxy refuses longer ones too).
const MAX_DELAY_MS: u64 = 3_600_000;

/// The route's faults, `None` when none of the annotations is set. A delay or
/// abort without its percentage hits every request (what a user who names
/// only the fault wants to see); a percentage without its fault is an error.
pub fn fault(annotations: &mut Annotations<'_>) -> Option<Fault> {
    let delay_ms = annotations.get(FAULT_DELAY, |v| match parse_duration_ms(v)? {
        ms if ms <= MAX_DELAY_MS => Ok(ms),
        _ => Err("a delay of at most an hour".to_string()),
    });
    let delay_percent = annotations.get(FAULT_DELAY_PERCENT, parse_percent);
    let abort_status = annotations.get(FAULT_ABORT_STATUS, |v| {
        v.parse::<u32>()
            .ok()
            .filter(|s| (400..=599).contains(s))
            .ok_or_else(|| "an HTTP error status (400 to 599)".to_string())
    });
    let abort_grpc_status = annotations.get(FAULT_ABORT_GRPC_STATUS, parse_code);
    let abort_percent = annotations.get(FAULT_ABORT_PERCENT, parse_percent);
    if delay_percent.is_some() && delay_ms.is_none() {
        annotations.refuse(FAULT_DELAY_PERCENT, format!("set without {FAULT_DELAY}"));
    }
    if (abort_percent.is_some() || abort_grpc_status.is_some()) && abort_status.is_none() {
        let which = if abort_percent.is_some() {
            FAULT_ABORT_PERCENT
        } else {
            FAULT_ABORT_GRPC_STATUS
        };
        annotations.refuse(which, format!("set without {FAULT_ABORT_STATUS}"));
    }
    if delay_ms.is_none() && abort_status.is_none() {
        return None;
    }
    Some(Fault {
        delay_ms: delay_ms.unwrap_or(0),
        delay_percent: delay_ms.map_or(0.0, |_| delay_percent.unwrap_or(100.0)),
        abort_status: abort_status.unwrap_or(0),
        abort_grpc_status: abort_grpc_status.unwrap_or(0),
        abort_percent: abort_status.map_or(0.0, |_| abort_percent.unwrap_or(100.0)),
    })
}

/// `10`, `0.5` or `10%`: a share of requests from 0 to 100.
fn parse_percent(value: &str) -> Result<f64, String> {
    value
        .strip_suffix('%')
        .unwrap_or(value)
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|p| (0.0..=100.0).contains(p))
        .ok_or_else(|| "a percentage from 0 to 100 (e.g. 10 or 0.5)".to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn read(pairs: &[(&str, &str)]) -> (Option<Fault>, Vec<String>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut annotations = Annotations::new(Some(&map));
        let fault = fault(&mut annotations);
        let errors = annotations
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.field(), e.message))
            .collect();
        (fault, errors)
    }

    #[test]
    fn delay_and_abort_with_their_shares() {
        let (fault, errors) = read(&[
            (FAULT_DELAY, "250ms"),
            (FAULT_DELAY_PERCENT, "10%"),
            (FAULT_ABORT_STATUS, "503"),
            (FAULT_ABORT_GRPC_STATUS, "unavailable"),
            (FAULT_ABORT_PERCENT, "0.5"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            fault,
            Some(Fault {
                delay_ms: 250,
                delay_percent: 10.0,
                abort_status: 503,
                abort_grpc_status: 14,
                abort_percent: 0.5,
            })
        );
    }

    #[test]
    fn a_fault_without_its_share_hits_every_request() {
        let (fault, errors) = read(&[(FAULT_ABORT_STATUS, "500")]);
        assert!(errors.is_empty(), "{errors:?}");
        let fault = fault.expect("a fault");
        assert_eq!((fault.abort_status, fault.abort_percent), (500, 100.0));
        assert_eq!((fault.delay_ms, fault.delay_percent), (0, 0.0));
    }

    #[test]
    fn no_annotation_no_fault() {
        assert_eq!(read(&[]), (None, vec![]));
    }

    #[test]
    fn every_bad_value_is_named() {
        let (_, errors) = read(&[
            (FAULT_DELAY, "soon"),
            (FAULT_DELAY_PERCENT, "150"),
            (FAULT_ABORT_STATUS, "200"),
            (FAULT_ABORT_PERCENT, "5"),
        ]);
        assert_eq!(errors.len(), 4, "{errors:?}");
        for annotation in [
            FAULT_DELAY,
            FAULT_DELAY_PERCENT,
            FAULT_ABORT_STATUS,
            FAULT_ABORT_PERCENT,
        ] {
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with(&format!("metadata.annotations[{annotation}]"))),
                "{annotation} not named in {errors:?}"
            );
        }
        assert!(
            errors
                .iter()
                .any(|e| e.contains("set without plexus.io/fault-abort-status")),
            "{errors:?}"
        );
    }
}
