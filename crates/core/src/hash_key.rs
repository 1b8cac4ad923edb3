//! What a consistent-hash load balancer hashes a request by: the syntax of
//! the `plexus.io/hash-key` annotation and of `Resilience.hash_key`, so the
//! discovery index refuses exactly what the proxy could not read.
//!
//! Balancing happens in the client's outbound proxy, which sees the
//! application's request and connection but not a client identity of its
//! own callers: the only identity it knows is its own workload's, the same
//! for every request. So `identity` is refused with that reason, and
//! `source-ip` (the application's address) gives per-pod affinity.

use std::fmt;
use std::str::FromStr;

/// The part of a request whose hash picks its endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// The first value of this request header; the name is lowercase.
    Header(String),
    /// The value of this cookie (names are case-sensitive).
    Cookie(String),
    /// The IP address the application connected from.
    SourceIp,
}

/// Why a hash key does not parse; its text reads after "is not".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HashKeyError {
    #[error("{EXPECTED}")]
    Syntax,
    #[error("{EXPECTED}, the name made of letters, digits and !#$%&'*+-.^_`|~")]
    Name,
    #[error(
        "a key the balancing proxy can read ({EXPECTED}): the client's outbound proxy knows only \
         its own workload's identity, the same for every request; source-ip gives each client \
         pod its endpoint"
    )]
    Identity,
}

const EXPECTED: &str = "header:<name>, cookie:<name> or source-ip";

impl FromStr for HashKey {
    type Err = HashKeyError;

    fn from_str(value: &str) -> Result<Self, HashKeyError> {
        let value = value.trim();
        match value {
            "source-ip" => return Ok(HashKey::SourceIp),
            "identity" => return Err(HashKeyError::Identity),
            _ => {}
        }
        let (kind, name) = value.split_once(':').ok_or(HashKeyError::Syntax)?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(HashKeyError::Name);
        }
        match kind.trim() {
            "header" => Ok(HashKey::Header(name.to_ascii_lowercase())),
            "cookie" => Ok(HashKey::Cookie(name.to_owned())),
            _ => Err(HashKeyError::Syntax),
        }
    }
}

impl fmt::Display for HashKey {
    /// The canonical spelling, which parses back to the same key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
            HashKey::SourceIp => f.write_str("source-ip"),
        }
    }
}

/// RFC 9110 `tchar`: what header and cookie names are made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_to_their_canonical_spelling() {
        for (text, key, canonical) in [
            (
                "header:X-User",
                HashKey::Header("x-user".into()),
                "header:x-user",
            ),
            (
                " cookie : Session ",
                HashKey::Cookie("Session".into()),
                "cookie:Session",
            ),
            ("source-ip", HashKey::SourceIp, "source-ip"),
        ] {
            assert_eq!(text.parse::<HashKey>(), Ok(key.clone()), "{text}");
            assert_eq!(key.to_string(), canonical);
            assert_eq!(canonical.parse::<HashKey>(), Ok(key));
        }
    }

    #[test]
    fn bad_keys_say_what_is_expected() {
        for (text, error) in [
            ("", HashKeyError::Syntax),
            ("header", HashKeyError::Syntax),
            ("query:user", HashKeyError::Syntax),
            ("header:", HashKeyError::Name),
            ("header:x user", HashKeyError::Name),
            ("cookie:a=b", HashKeyError::Name),
            ("identity", HashKeyError::Identity),
        ] {
            assert_eq!(text.parse::<HashKey>(), Err(error.clone()), "{text:?}");
            assert!(error.to_string().contains(EXPECTED), "{error}");
        }
        assert!(HashKeyError::Identity.to_string().contains("source-ip"));
    }
}
