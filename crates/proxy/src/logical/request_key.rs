//! What a consistent-hash backend hashes a request by
//! ([`plexus_core::hash_key::HashKey`]), read once per request, before its
//! first attempt: retries keep the key, so they go to the same endpoint
//! unless failure accrual ejected it.

use std::net::IpAddr;
use std::num::NonZeroU64;

use http::header::{COOKIE, HeaderName};
use http::{HeaderMap, Request};
use plexus_core::hash_key::HashKey;

use super::maglev;

#[derive(Debug)]
pub enum RequestKey {
    Header(HeaderName),
    Cookie(String),
    SourceIp,
}

impl RequestKey {
    /// `Resilience.hash_key`; the error says what was expected.
    pub fn parse(text: &str) -> Result<RequestKey, String> {
        let key = text
            .parse::<HashKey>()
            .map_err(|e| format!("{text:?} is not {e}"))?;
        Ok(match key {
            HashKey::Header(name) => RequestKey::Header(
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{text:?}: {e}"))?,
            ),
            HashKey::Cookie(name) => RequestKey::Cookie(name),
            HashKey::SourceIp => RequestKey::SourceIp,
        })
    }

    /// The hash of this key in `request` from the application at `source`;
    /// `None` when the request has none (or an empty one), which gets the
    /// default pick rather than piling every such request on one endpoint.
    pub fn hash<B>(&self, request: &Request<B>, source: Option<&IpAddr>) -> Option<NonZeroU64> {
        let hash = match self {
            RequestKey::Header(name) => request
                .headers()
                .get(name)
                .map(|value| value.as_bytes())
                .filter(|value| !value.is_empty())
                .map(maglev::hash),
            RequestKey::Cookie(name) => cookie(request.headers(), name).map(maglev::hash),
            RequestKey::SourceIp => source.map(|ip| match ip {
                IpAddr::V4(v4) => maglev::hash(&v4.octets()),
                IpAddr::V6(v6) => maglev::hash(&v6.octets()),
            }),
        };
        // Not zero, so that "no key" costs no extra word in every request's
        // future; one hash in 2^64 shares its slot with another.
        hash.map(|h| NonZeroU64::new(h).unwrap_or(NonZeroU64::MIN))
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (HTTP/2
/// may send several), the first if it is repeated.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|b| *b == b'=')?;
            (pair[..at].trim_ascii() == name.as_bytes()).then(|| pair[at + 1..].trim_ascii())
        })
        .find(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut request = Request::new(());
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        request
    }

    fn key(text: &str) -> RequestKey {
        RequestKey::parse(text).unwrap()
    }

    #[test]
    fn a_header_key_is_its_first_value() {
        let k = key("header:X-User");
        let alice = k.hash(&request(&[("x-user", "alice")]), None);
        assert!(alice.is_some());
        assert_eq!(
            k.hash(&request(&[("x-user", "alice"), ("x-user", "bob")]), None),
            alice
        );
        assert_ne!(k.hash(&request(&[("x-user", "bob")]), None), alice);
        assert_eq!(k.hash(&request(&[("x-user", "")]), None), None);
        assert_eq!(k.hash(&request(&[("x-other", "alice")]), None), None);
    }

    #[test]
    fn a_cookie_key_is_found_in_any_cookie_header() {
        let k = key("cookie:session");
        let expected = NonZeroU64::new(maglev::hash(b"s1"));
        for headers in [
            &[("cookie", "session=s1")][..],
            &[("cookie", "a=1; session=s1; b=2")],
            &[("cookie", "a=1"), ("cookie", " session = s1 ")],
            &[("cookie", "sessionx=s2; session=s1")],
        ] {
            assert_eq!(k.hash(&request(headers), None), expected, "{headers:?}");
        }
        for headers in [
            &[("cookie", "Session=s1")][..],
            &[("cookie", "session=")],
            &[("cookie", "session")],
            &[],
        ] {
            assert_eq!(k.hash(&request(headers), None), None, "{headers:?}");
        }
    }

    #[test]
    fn a_source_key_is_the_application_address() {
        let k = key("source-ip");
        let (two, three): (IpAddr, IpAddr) =
            ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let a = k.hash(&request(&[]), Some(&two));
        assert!(a.is_some());
        assert_ne!(k.hash(&request(&[]), Some(&three)), a);
        assert_eq!(k.hash(&request(&[]), None), None);
    }
}

/// Properties of reading a cookie key from `Cookie` headers, which any
/// application sends: no bytes panic, and a cookie among others is found.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn pair() -> impl Strategy<Value = (String, String)> {
        ("[a-z]{1,6}", "[a-zA-Z0-9]{1,8}")
    }

    proptest! {
        #![proptest_config(plexus_core::property::config())]

        #[test]
        fn any_cookie_bytes_are_read_or_skipped(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut headers = HeaderMap::new();
            if let Ok(value) = http::HeaderValue::from_bytes(&bytes) {
                headers.insert(COOKIE, value);
            }
            let _ = cookie(&headers, "session");
        }

        #[test]
        fn a_cookie_among_others_is_found(
            before in prop::collection::vec(pair(), 0..4),
            value in "[a-zA-Z0-9]{1,8}",
            after in prop::collection::vec(pair(), 0..4),
            split in any::<bool>(),
        ) {
            prop_assume!(before.iter().all(|(name, _)| name != "session"));
            let list = |pairs: &[(String, String)]| {
                pairs.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>()
            };
            let mut pairs = list(&before);
            pairs.push(format!("session={value}"));
            pairs.extend(list(&after));
            let mut headers = HeaderMap::new();
            // One header, or (as HTTP/2 may send them) one per cookie.
            let values = if split { pairs } else { vec![pairs.join("; ")] };
            for v in values {
                headers.append(COOKIE, v.parse().expect("a header value"));
            }
            prop_assert_eq!(cookie(&headers, "session"), Some(value.as_bytes()));
        }
    }
}
