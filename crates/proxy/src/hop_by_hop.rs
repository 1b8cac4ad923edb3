//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the
//! message: they are removed before a message is forwarded.

use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName};

// Typed names: a `&str` name is parsed and validated on every lookup.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers. With `upgrade`, `Connection: upgrade` and
/// `Upgrade` stay: they are how an upgrade is asked for and agreed to.
pub fn strip(headers: &mut HeaderMap, upgrade: bool) {
    // Runs twice per request; most messages carry none of these, and one
    // pass over the names is cheaper than six hashed removals.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        // Headers the sender named in `Connection` are hop-by-hop too.
        let named: Vec<String> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .filter(|name| !(upgrade && name == "upgrade"))
            .collect();
        for name in &named {
            headers.remove(name.as_str());
        }
        if upgrade {
            headers.insert(CONNECTION, http::HeaderValue::from_static("upgrade"));
        } else {
            headers.remove(CONNECTION);
        }
    }
    if !upgrade {
        headers.remove(UPGRADE);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    // `TE: trailers` is end-to-end in practice: gRPC servers require it.
    if headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
}

/// A header that [`strip`] may remove or rewrite (besides those `Connection` names).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        &CONNECTION,
        &UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TRANSFER_ENCODING,
        &TE,
    ]
    .contains(&name)
}

/// An HTTP/1 request asking to switch protocols (WebSocket, h2c, …).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-end-to-end", "kept"),
        ]);
        strip(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn keeps_te_trailers_and_upgrade_headers_of_an_upgrade() {
        let mut h = headers(&[("te", "trailers")]);
        strip(&mut h, false);
        assert_eq!(h["te"], "trailers");

        let mut h = headers(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
        ]);
        assert!(wants_upgrade(&h));
        strip(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
    }
}
