//! The route step: where an outbound connection's requests go. A redirected
//! connection has a target (its original destination's, or the address
//! itself when not meshed); one sent to the listener directly is routed per
//! request by its `Host` / `:authority`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use http::Request;
use hyper::body::Incoming;
use plexus_api::v1::Target;
use plexus_core::Direction;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{Outbound, Targets};
use crate::error::ProxyError;
use crate::http::RequestPath;
use crate::telemetry::RequestSpan;
use crate::upstream::Upstream;

/// Where a connection goes, known before any byte is read.
pub(super) struct Route {
    /// The original destination, for opaque TCP; `None`: not redirected.
    pub(super) addr: Option<SocketAddr>,
    /// Skip detection: the port or the target says the protocol is opaque.
    pub(super) opaque: bool,
    /// The meshed target, for opaque TCP over mTLS.
    pub(super) target: Option<watch::Receiver<Arc<Target>>>,
    pub(super) requests: OutboundRequests,
}

impl Route {
    /// `source`: the application's address, the connection's peer.
    pub(super) async fn of(outbound: &Outbound, stream: &TcpStream, source: IpAddr) -> Self {
        match (outbound.original_dst)(stream) {
            Some(addr) => {
                let redirected = outbound.targets.by_original_dst(addr).await;
                Self {
                    addr: Some(addr),
                    opaque: redirected.opaque || outbound.opaque_ports.contains(addr.port()),
                    target: redirected.target,
                    requests: OutboundRequests {
                        source,
                        to: Requests::Redirected(redirected.upstream),
                    },
                }
            }
            None => Self {
                addr: None,
                opaque: false,
                target: None,
                requests: OutboundRequests {
                    source,
                    to: Requests::ByAuthority {
                        targets: outbound.targets.clone(),
                        last: Mutex::new(None),
                    },
                },
            },
        }
    }
}

/// The requests of one outbound connection: from where, and where they go.
pub(super) struct OutboundRequests {
    source: IpAddr,
    to: Requests,
}

/// Where the requests of one outbound connection go.
enum Requests {
    /// The redirected connection's target, for all of them.
    Redirected(Upstream),
    /// Each request's `Host` / `:authority`, looked up among known targets;
    /// `last` keeps the previous one, since a connection's requests mostly
    /// name the same authority.
    ByAuthority {
        targets: Arc<Targets>,
        last: Mutex<Option<(String, Upstream)>>,
    },
}

impl RequestPath for OutboundRequests {
    const DIRECTION: Direction = Direction::Outbound;

    /// Nothing to undo: the application is the first hop.
    fn received(&self, _: &mut Request<Incoming>) {}

    /// The application may call anything; the destination's proxy decides.
    fn admit(&self, _: &mut Request<Incoming>, _: &mut RequestSpan) -> Result<(), ProxyError> {
        Ok(())
    }

    fn source(&self) -> Option<&IpAddr> {
        Some(&self.source)
    }

    async fn upstream(&self, request: &Request<Incoming>) -> Result<Upstream, ProxyError> {
        let (targets, cache) = match &self.to {
            Requests::Redirected(upstream) => return Ok(upstream.clone()),
            Requests::ByAuthority { targets, last } => (targets, last),
        };
        let authority = authority(request)?;
        if let Ok(last) = cache.lock()
            && let Some((cached, upstream)) = last.as_ref()
            && cached == authority
        {
            return Ok(upstream.clone());
        }
        let upstream = targets.by_authority(authority).await?;
        if let Ok(mut last) = cache.lock() {
            *last = Some((authority.to_owned(), upstream.clone()));
        }
        Ok(upstream)
    }
}

/// `:authority` (HTTP/2, absolute-form) or else `Host`.
fn authority<B>(request: &Request<B>) -> Result<&str, ProxyError> {
    if let Some(authority) = request.uri().authority() {
        return Ok(authority.as_str());
    }
    let host = request
        .headers()
        .get(http::header::HOST)
        .ok_or_else(|| ProxyError::BadRequest("no Host header or :authority".into()))?;
    host.to_str()
        .map_err(|_| ProxyError::BadRequest("Host header is not visible ASCII".into()))
}
