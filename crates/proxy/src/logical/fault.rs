//! Faults injected into a share of a rule's requests, for resilience testing
//! (what Istio's `HTTPFaultInjection` does): a fixed delay before the request
//! is routed, and an abort the proxy answers itself with a chosen status and
//! `plexus-error: fault-injected`, so a client's retries, timeouts and
//! fallbacks can be tried against a healthy service. Each is drawn on its
//! own, per request; a rule without faults carries none (`Rule::fault` is
//! `None`) and pays one branch.

use std::time::Duration;

use http::StatusCode;
use plexus_api::v1 as proto;

/// Shares are drawn in parts per million: 0.0001 % steps.
const MILLION: u32 = 1_000_000;
/// The longest delay injected: a test of timeouts, not a request held for ever.
pub const MAX_DELAY_MS: u64 = 3_600_000;

#[derive(Debug)]
pub struct Fault {
    delay: Option<(Duration, Share)>,
    abort: Option<(Abort, Share)>,
}

/// What the proxy answers an aborted request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    pub status: StatusCode,
    /// The `grpc-status` of an aborted gRPC call.
    pub grpc_code: u16,
}

/// A share of requests, in parts per million.
#[derive(Debug, Clone, Copy)]
struct Share(u32);

impl Share {
    fn compile(percent: f64, field: &str) -> Result<Share, String> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(format!("{field}: {percent} is not a percentage (0 to 100)"));
        }
        // In range, so the product fits a u32.
        Ok(Share((percent * f64::from(MILLION) / 100.0).round() as u32))
    }

    fn hit(self) -> bool {
        self.0 > 0 && rand::random_range(0..MILLION) < self.0
    }
}

impl Fault {
    /// `None` when the proto injects nothing; an error names the field.
    pub fn compile(proto: Option<&proto::Fault>, field: &str) -> Result<Option<Fault>, String> {
        let Some(proto) = proto else {
            return Ok(None);
        };
        if proto.delay_ms > MAX_DELAY_MS {
            return Err(format!(
                "{field}.delay_ms: {} is more than an hour ({MAX_DELAY_MS})",
                proto.delay_ms
            ));
        }
        let delay_share = Share::compile(proto.delay_percent, &format!("{field}.delay_percent"))?;
        let abort_share = Share::compile(proto.abort_percent, &format!("{field}.abort_percent"))?;
        let delay = (proto.delay_ms > 0 && delay_share.0 > 0)
            .then(|| (Duration::from_millis(proto.delay_ms), delay_share));
        let abort = match proto.abort_status {
            0 => None,
            status => Some((abort(status, proto.abort_grpc_status, field)?, abort_share)),
        }
        .filter(|(_, share)| share.0 > 0);
        Ok((delay.is_some() || abort.is_some()).then_some(Fault { delay, abort }))
    }

    /// This request's delay, if it is drawn.
    pub fn delay(&self) -> Option<Duration> {
        self.delay
            .and_then(|(delay, share)| share.hit().then_some(delay))
    }

    /// This request's abort, if it is drawn.
    pub fn abort(&self) -> Option<Abort> {
        self.abort
            .and_then(|(abort, share)| share.hit().then_some(abort))
    }
}

fn abort(status: u32, grpc: u32, field: &str) -> Result<Abort, String> {
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (400..=599).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            format!("{field}.abort_status: {status} is not an error status (400 to 599)")
        })?;
    let grpc_code = match grpc {
        0 => grpc_code_of(status),
        code @ 1..=16 => code as u16,
        other => {
            return Err(format!(
                "{field}.abort_grpc_status: {other} is not a gRPC error code (1 to 16)"
            ));
        }
    };
    Ok(Abort { status, grpc_code })
}

/// gRPC's mapping of HTTP statuses to codes (grpc/doc/http-grpc-status-mapping.md).
fn grpc_code_of(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(proto: proto::Fault) -> Result<Option<Fault>, String> {
        Fault::compile(Some(&proto), "routes.http[0].rules[0].fault")
    }

    #[test]
    fn nothing_to_inject_is_no_fault() {
        assert!(Fault::compile(None, "f").unwrap().is_none());
        assert!(fault(proto::Fault::default()).unwrap().is_none());
        // A delay or abort drawn for no request injects nothing.
        let never = proto::Fault {
            delay_ms: 100,
            abort_status: 503,
            ..Default::default()
        };
        assert!(fault(never).unwrap().is_none());
    }

    #[test]
    fn bad_values_are_named_by_field() {
        let cases = [
            (
                proto::Fault {
                    delay_percent: 120.0,
                    ..Default::default()
                },
                "routes.http[0].rules[0].fault.delay_percent: 120 is not a percentage (0 to 100)",
            ),
            (
                proto::Fault {
                    abort_status: 200,
                    abort_percent: 5.0,
                    ..Default::default()
                },
                "routes.http[0].rules[0].fault.abort_status: 200 is not an error status (400 to 599)",
            ),
            (
                proto::Fault {
                    abort_status: 503,
                    abort_grpc_status: 17,
                    abort_percent: 5.0,
                    ..Default::default()
                },
                "routes.http[0].rules[0].fault.abort_grpc_status: 17 is not a gRPC error code (1 to 16)",
            ),
            (
                proto::Fault {
                    delay_ms: MAX_DELAY_MS + 1,
                    delay_percent: 1.0,
                    ..Default::default()
                },
                "routes.http[0].rules[0].fault.delay_ms: 3600001 is more than an hour (3600000)",
            ),
            (
                proto::Fault {
                    abort_percent: f64::NAN,
                    ..Default::default()
                },
                "routes.http[0].rules[0].fault.abort_percent: NaN is not a percentage (0 to 100)",
            ),
        ];
        for (proto, message) in cases {
            assert_eq!(fault(proto).unwrap_err(), message);
        }
    }

    #[test]
    fn shares_are_drawn_at_their_rate() {
        let fault = fault(proto::Fault {
            delay_ms: 7,
            delay_percent: 100.0,
            abort_status: 503,
            abort_percent: 25.0,
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        let draws = 20_000;
        let aborted = (0..draws).filter(|_| fault.abort().is_some()).count();
        // 25 % of 20,000 = 5,000; the standard deviation is ~61.
        assert!((4_600..=5_400).contains(&aborted), "{aborted}");
        assert!((0..100).all(|_| fault.delay() == Some(Duration::from_millis(7))));
    }

    #[test]
    fn grpc_codes_follow_the_http_status_unless_given() {
        let abort_of = |status, grpc| abort(status, grpc, "f").unwrap().grpc_code;
        assert_eq!(abort_of(503, 0), 14);
        assert_eq!(abort_of(403, 0), 7);
        assert_eq!(abort_of(500, 0), 2);
        assert_eq!(abort_of(503, 8), 8);
    }
}
