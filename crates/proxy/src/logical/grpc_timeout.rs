//! The `grpc-timeout` header: read the caller's deadline, write what is left of it.
//!
//! Format (gRPC over HTTP/2 spec): 1 to 8 ASCII digits, then a unit:
//! H (hours), M (minutes), S (seconds), m (ms), u (µs), n (ns).

use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// Typed: looked up on every request, and a `&str` name is parsed per lookup.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The caller's timeout, or `None` when the value is malformed (then it is ignored,
/// as gRPC servers do).
pub fn parse(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The most precise unit whose amount fits the 8 digits the spec allows.
pub fn encode(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let units: [(u128, &str); 6] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ];
    for (per_unit, unit) in units {
        // Rounds down: the callee may see a slightly shorter deadline, never a longer one.
        let amount = nanos / per_unit;
        if amount <= MAX
            && let Ok(value) = HeaderValue::from_str(&format!("{amount}{unit}"))
        {
            return value;
        }
    }
    HeaderValue::from_static("99999999H")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse(&hv("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(parse(&hv("3M")), Some(Duration::from_secs(180)));
        assert_eq!(parse(&hv("5S")), Some(Duration::from_secs(5)));
        assert_eq!(parse(&hv("250m")), Some(Duration::from_millis(250)));
        assert_eq!(parse(&hv("40u")), Some(Duration::from_micros(40)));
        assert_eq!(
            parse(&hv("99999999n")),
            Some(Duration::from_nanos(99_999_999))
        );
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in ["", "S", "10", "10s", "123456789S", "-1S", "1.5S", " 1S"] {
            assert_eq!(parse(&HeaderValue::from_str(bad).unwrap()), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_within_eight_digits_and_never_longer_than_given() {
        for timeout in [
            Duration::from_nanos(1),
            Duration::from_millis(250),
            Duration::from_secs(5),
            Duration::from_secs(100_000),
            Duration::from_secs(u64::MAX / 4),
        ] {
            let value = encode(timeout);
            let back = parse(&value).expect("encoded value parses");
            assert!(back <= timeout, "{value:?} longer than {timeout:?}");
            assert!(value.len() <= 9);
        }
        assert_eq!(
            encode(Duration::from_millis(1500)).to_str().unwrap(),
            "1500000u"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(plexus_core::property::config())]

        /// Encoding rounds down to the unit that fits, never up.
        #[test]
        fn an_encoded_timeout_parses_to_at_most_itself(nanos in any::<u64>()) {
            let timeout = Duration::from_nanos(nanos);
            let parsed = parse(&encode(timeout));
            prop_assert!(parsed.is_some_and(|p| p <= timeout), "{:?}", parsed);
        }

        #[test]
        fn any_value_parses_or_is_ignored(raw in "[ -~]{0,12}") {
            if let Ok(value) = HeaderValue::from_str(&raw) {
                let _ = parse(&value);
            }
        }
    }
}
