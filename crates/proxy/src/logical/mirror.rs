//! Request mirroring (Gateway API RequestMirror), fire-and-forget: each
//! mirror whose fraction a request falls in gets a copy of it (as the rule's
//! filters left it), its `Host` / `:authority` suffixed `-shadow` as Envoy and
//! Istio do, so the mirror can tell copies from real traffic; its response is
//! discarded. A copy needs the whole body before the request goes on, so only
//! a request without a body, or with a length known to be within the replay
//! limit (64 KiB), is mirrored (that body is read whole first, within the
//! route's request timeout); any other goes unmirrored, as does an upgrade (a
//! copy cannot take over a connection). Each backend sends at most
//! [`MAX_COPIES_IN_FLIGHT`] copies at once, each for at most [`COPY_TIMEOUT`];
//! a copy beyond that is dropped, so a slow or failing mirror never slows or
//! fails the request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, UPGRADE};
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Request, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};

use super::backend::Backend;
use super::rebuild;
use super::replay::MAX_REPLAY_BYTES;
use super::routes::Mirror;
use crate::body::{self, Body};
use crate::error::ProxyError;

/// Copies one backend sends at once; more are dropped.
pub const MAX_COPIES_IN_FLIGHT: usize = 64;
/// How long a copy may take before it is given up (and its slot freed).
pub const COPY_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a copy of `request` (from the application at `source`) to each
/// mirror it falls to, and gives the request back to be forwarded (its body
/// read whole, within `timeout`, if it was copied).
pub async fn send_copies(
    backends: &HashMap<String, Arc<Backend>>,
    mirrors: &[Mirror],
    request: Request<Body>,
    source: Option<&IpAddr>,
    timeout: Option<Duration>,
) -> Result<Request<Body>, ProxyError> {
    if request.headers().contains_key(UPGRADE) {
        return Ok(request);
    }
    let firing: Vec<Arc<Backend>> = mirrors
        .iter()
        .filter(|m| m.fires())
        .filter_map(|m| backends.get(&*m.backend).cloned())
        .collect();
    if firing.is_empty() {
        return Ok(request);
    }
    let (parts, body) = request.into_parts();
    let (data, trailers, body) = if body.is_end_stream() {
        (Bytes::new(), None, body)
    } else if body
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MAX_REPLAY_BYTES)
    {
        let (data, trailers) = match timeout {
            None => read_whole(body).await?,
            Some(limit) => tokio::time::timeout(limit, read_whole(body))
                .await
                .map_err(|_| ProxyError::Timeout(super::millis(limit)))??,
        };
        let body = body_of(data.clone(), trailers.clone());
        (data, trailers, body)
    } else {
        tracing::debug!("request not mirrored: its body is not known to fit the replay limit");
        return Ok(Request::from_parts(parts, body));
    };
    for backend in &firing {
        let mut copy = rebuild(&parts, body_of(data.clone(), trailers.clone()));
        shadow(&mut copy);
        send_copy(backend, copy, source);
    }
    Ok(Request::from_parts(parts, body))
}

/// A body of a known length within the replay limit, read whole (data,
/// trailers); the HTTP codecs end a body that would outgrow its length.
async fn read_whole(body: Body) -> Result<(Bytes, Option<HeaderMap>), ProxyError> {
    match body.collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            Ok((collected.to_bytes(), trailers))
        }
        Err(error) => Err(ProxyError::BadRequest(format!("request body: {error}"))),
    }
}

fn body_of(data: Bytes, trailers: Option<HeaderMap>) -> Body {
    let full = Full::new(data);
    match trailers {
        None => body::boxed(full),
        Some(trailers) => body::boxed(full.with_trailers(std::future::ready(Some(Ok(trailers))))),
    }
}

/// Suffixes the host of `Host` and of the URI's authority with `-shadow`,
/// before the port (`web:80` becomes `web-shadow:80`).
fn shadow<B>(request: &mut Request<B>) {
    let shadowed = |authority: &str| {
        let authority = Authority::from_str(authority).ok()?;
        let shadowed = match authority.port() {
            Some(port) => format!("{}-shadow:{port}", authority.host()),
            None => format!("{}-shadow", authority.host()),
        };
        Authority::from_str(&shadowed).ok()
    };
    let host = request.headers().get(HOST).and_then(|h| h.to_str().ok());
    if let Some(value) = host
        .and_then(shadowed)
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        request.headers_mut().insert(HOST, value);
    }
    if let Some(authority) = request.uri().authority().and_then(|a| shadowed(a.as_str())) {
        let mut parts = request.uri().clone().into_parts();
        parts.authority = Some(authority);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

/// Sends `copy` to an endpoint of `backend` in a task of its own, if the
/// backend has a slot for it; the outcome feeds the endpoint's accrual.
fn send_copy(backend: &Arc<Backend>, copy: Request<Body>, source: Option<&IpAddr>) {
    let Ok(slot) = backend.mirror_slots.clone().try_acquire_owned() else {
        tracing::debug!(backend = %backend.name, "mirror copy dropped: too many in flight");
        return;
    };
    // A hashing mirror places copies by their key, as it would the requests.
    let Ok(picked) = backend.pick(backend.hash(&copy, source)) else {
        tracing::debug!(backend = %backend.name, "mirror copy dropped: no endpoint");
        return;
    };
    let backend = backend.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let outcome = tokio::time::timeout(COPY_TIMEOUT, picked.endpoint.send(copy)).await;
        let success = matches!(&outcome, Ok(Ok(response)) if !response.status().is_server_error());
        backend.record(&picked, success);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_suffix_goes_before_the_port() {
        let mut request = Request::builder()
            .uri("http://web.shop:8080/a?b=1")
            .header(HOST, "web.shop:8080")
            .body(())
            .expect("a request");
        shadow(&mut request);
        assert_eq!(request.headers()[HOST], "web.shop-shadow:8080");
        assert_eq!(request.uri(), "http://web.shop-shadow:8080/a?b=1");
        let mut origin_form = Request::builder()
            .uri("/a")
            .header(HOST, "web")
            .body(())
            .expect("a request");
        shadow(&mut origin_form);
        assert_eq!(origin_form.headers()[HOST], "web-shadow");
        assert_eq!(origin_form.uri(), "/a");
    }
}
