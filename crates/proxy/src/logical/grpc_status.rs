//! How an attempt's response counts against its endpoint. An HTTP 5xx fails.
//! A gRPC response (HTTP 200) fails by its `grpc-status`: in the response
//! headers of a trailers-only response, known at once; otherwise in the
//! trailers at the body's end, which the body reports as it passes
//! (`outcome::TrailersOutcome`), never held back or buffered.
//!
//! The codes that fail an endpoint are those that say the server, not the
//! request, went wrong: UNKNOWN (2), DEADLINE_EXCEEDED (4), INTERNAL (13),
//! UNAVAILABLE (14), DATA_LOSS (15). Envoy's outlier detection counts the codes
//! it maps to a 5xx, which are these and UNIMPLEMENTED (501); Linkerd's
//! default classifier counts every non-OK code. Left out here: what a healthy
//! replica answers as well, such as NOT_FOUND, INVALID_ARGUMENT,
//! PERMISSION_DENIED, RESOURCE_EXHAUSTED (a quota or load shed) and
//! UNIMPLEMENTED (every replica lacks the method: ejecting one helps nobody),
//! and CANCELLED (the caller gave up).

use http::{HeaderMap, Response};
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

pub const GRPC_STATUS: &str = "grpc-status";

const UNKNOWN: u8 = 2;
const DEADLINE_EXCEEDED: u8 = 4;
const INTERNAL: u8 = 13;
const UNAVAILABLE: u8 = 14;
const DATA_LOSS: u8 = 15;
/// The highest code gRPC defines (UNAUTHENTICATED).
const MAX_CODE: u8 = 16;

/// A response's `grpc-status`, as the metrics label it: one of gRPC's 17
/// codes, or `Invalid` (absent where it was due, not a number, out of range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrpcStatus {
    Code(u8),
    Invalid,
}

impl GrpcStatus {
    /// How many label values there are: the codes and `invalid`.
    pub const COUNT: usize = MAX_CODE as usize + 2;

    /// The `grpc-status` in `headers` (or trailers), `None` when absent.
    pub fn of(headers: &HeaderMap) -> Option<GrpcStatus> {
        let value = headers.get(GRPC_STATUS)?;
        let code = std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|v| v.trim().parse::<u8>().ok())
            .filter(|code| *code <= MAX_CODE);
        Some(code.map_or(GrpcStatus::Invalid, GrpcStatus::Code))
    }

    /// Whether this status counts against the endpoint that answered it.
    pub fn fails_endpoint(self) -> bool {
        match self {
            GrpcStatus::Code(code) => matches!(
                code,
                UNKNOWN | DEADLINE_EXCEEDED | INTERNAL | UNAVAILABLE | DATA_LOSS
            ),
            // gRPC clients fail such a call (tonic: "missing grpc-status").
            GrpcStatus::Invalid => true,
        }
    }

    /// Its position among the `COUNT` label values.
    pub fn index(self) -> usize {
        match self {
            GrpcStatus::Code(code) => usize::from(code),
            GrpcStatus::Invalid => Self::COUNT - 1,
        }
    }

    /// Every label value, in `index` order.
    pub fn all() -> impl Iterator<Item = GrpcStatus> {
        (0..=MAX_CODE)
            .map(GrpcStatus::Code)
            .chain([GrpcStatus::Invalid])
    }
}

impl EncodeLabelValue for GrpcStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            GrpcStatus::Code(code) => EncodeLabelValue::encode(&u64::from(*code), encoder),
            GrpcStatus::Invalid => EncodeLabelValue::encode(&"invalid", encoder),
        }
    }
}

/// What an attempt's response head says about the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadOutcome {
    /// Known now; `grpc` is the status of a trailers-only gRPC response.
    Known {
        success: bool,
        grpc: Option<GrpcStatus>,
    },
    /// A gRPC response whose status is due in the trailers.
    AtTrailers,
}

/// Classifies a response head. `grpc`: the request was a gRPC call; other
/// requests pay only the status check they always paid.
pub fn classify_head<B>(response: &Response<B>, grpc: bool) -> HeadOutcome {
    let server_error = response.status().is_server_error();
    if !grpc || server_error {
        return HeadOutcome::Known {
            success: !server_error,
            grpc: None,
        };
    }
    match GrpcStatus::of(response.headers()) {
        Some(status) => HeadOutcome::Known {
            success: !status.fails_endpoint(),
            grpc: Some(status),
        },
        // A 2xx without a gRPC status in its head streams messages first.
        None if response.status().is_success() => HeadOutcome::AtTrailers,
        // Not a gRPC answer at all (an HTTP 4xx from something on the way).
        None => HeadOutcome::Known {
            success: true,
            grpc: None,
        },
    }
}

/// The status a gRPC response's trailers carry (`Invalid` when they carry none).
pub fn classify_trailers(trailers: &HeaderMap) -> GrpcStatus {
    GrpcStatus::of(trailers).unwrap_or(GrpcStatus::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn response(status: u16, grpc_status: Option<&'static str>) -> Response<()> {
        let mut builder = Response::builder().status(status);
        if let Some(code) = grpc_status {
            builder = builder.header(GRPC_STATUS, code);
        }
        builder.body(()).expect("response")
    }

    fn trailers(grpc_status: Option<&'static str>) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Some(code) = grpc_status {
            map.insert(GRPC_STATUS, HeaderValue::from_static(code));
        }
        map
    }

    #[test]
    fn trailers_only_responses_are_classified_by_their_head() {
        let unavailable = classify_head(&response(200, Some("14")), true);
        assert_eq!(
            unavailable,
            HeadOutcome::Known {
                success: false,
                grpc: Some(GrpcStatus::Code(14))
            }
        );
        let not_found = classify_head(&response(200, Some("5")), true);
        assert_eq!(
            not_found,
            HeadOutcome::Known {
                success: true,
                grpc: Some(GrpcStatus::Code(5))
            }
        );
    }

    #[test]
    fn streaming_responses_wait_for_their_trailers() {
        assert_eq!(
            classify_head(&response(200, None), true),
            HeadOutcome::AtTrailers
        );
        assert_eq!(classify_trailers(&trailers(Some("0"))), GrpcStatus::Code(0));
        assert!(classify_trailers(&trailers(Some("14"))).fails_endpoint());
        assert!(!classify_trailers(&trailers(Some("0"))).fails_endpoint());
        assert_eq!(classify_trailers(&trailers(None)), GrpcStatus::Invalid);
        assert!(GrpcStatus::Invalid.fails_endpoint());
    }

    #[test]
    fn http_errors_fail_whatever_the_protocol() {
        for grpc in [false, true] {
            let outcome = classify_head(&response(503, None), grpc);
            assert_eq!(
                outcome,
                HeadOutcome::Known {
                    success: false,
                    grpc: None
                }
            );
        }
        let plain_ok = classify_head(&response(200, Some("14")), false);
        assert_eq!(
            plain_ok,
            HeadOutcome::Known {
                success: true,
                grpc: None
            },
            "a non-gRPC request's response is judged by its HTTP status alone"
        );
        let forbidden = classify_head(&response(403, None), true);
        assert!(matches!(
            forbidden,
            HeadOutcome::Known { success: true, .. }
        ));
    }

    #[test]
    fn the_failing_codes_are_the_server_faults() {
        let failing: Vec<u8> = GrpcStatus::all()
            .filter_map(|s| match s {
                GrpcStatus::Code(code) if s.fails_endpoint() => Some(code),
                _ => None,
            })
            .collect();
        assert_eq!(failing, [2, 4, 13, 14, 15]);
    }

    #[test]
    fn bad_values_are_invalid_and_every_status_has_its_own_index() {
        for bad in ["17", "-1", "x", "", "300"] {
            let map = trailers(Some(bad));
            assert_eq!(GrpcStatus::of(&map), Some(GrpcStatus::Invalid), "{bad:?}");
        }
        assert_eq!(
            GrpcStatus::of(&trailers(Some(" 14 "))),
            Some(GrpcStatus::Code(14))
        );
        let indices: Vec<usize> = GrpcStatus::all().map(GrpcStatus::index).collect();
        assert_eq!(indices, (0..GrpcStatus::COUNT).collect::<Vec<_>>());
    }
}
