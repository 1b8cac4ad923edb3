//! The seam between the logical side of the proxy (routes, balancing, retries)
//! and the transport side (connection pools, TLS, HTTP/1 vs HTTP/2).
//!
//! `logical` decides *which* endpoint gets a request; an `EndpointClient`
//! sends it there. Tests can substitute an in-memory one.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use http::{Request, Response};
use plexus_api::v1::Target;

use crate::body::Body;

/// What the logical side knows about an endpoint when it hands a request over.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointTarget {
    pub addr: SocketAddr,
    /// Expected SPIFFE ID of the endpoint's proxy; `None` when not meshed.
    pub identity: Option<String>,
    /// The endpoint runs a Plexus proxy: use mTLS + HTTP/2 to its inbound port.
    pub meshed: bool,
    /// What the application behind the endpoint speaks, from its target's hint.
    pub protocol: AppProtocol,
    /// The local address to connect from (inbound's app in a cluster:
    /// [`plexus_core::app_source`]); `None`: the kernel picks.
    pub source: Option<IpAddr>,
}

/// The HTTP version an application is known to speak: its target's
/// `ProtocolHint` (the static file's `protocol`, or the Service port's
/// `appProtocol` through the Destination API). The hint is the target's, so
/// it holds for every backend of a traffic split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AppProtocol {
    /// Nothing known ("detect", no hint): the application gets the client's version.
    #[default]
    AsRequested,
    /// "http1": HTTP/1.1 only; HTTP/2 requests are translated.
    Http1,
    /// "http2": HTTP/2 with prior knowledge (h2c in plaintext); HTTP/1 requests are translated.
    Http2,
}

impl AppProtocol {
    pub fn of(target: &Target) -> AppProtocol {
        match target.protocol.as_ref().map(|hint| hint.protocol.as_str()) {
            Some("http1") => AppProtocol::Http1,
            Some("http2") => AppProtocol::Http2,
            // An "opaque" target never carries HTTP requests.
            None | Some("" | "detect" | "opaque") => AppProtocol::AsRequested,
            Some(unknown) => {
                tracing::warn!(target = %target.name, protocol = unknown,
                    "unknown protocol hint, the application gets the client's HTTP version");
                AppProtocol::AsRequested
            }
        }
    }
}

/// Why a single attempt failed before a response arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: the request was never sent, so it is
    /// always safe to retry, whatever its method.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection broke after the request may have been (partly) sent.
    #[error("request failed: {0}")]
    Request(String),
}

pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, SendError>> + Send>>;

/// Sends one request to one endpoint, reusing pooled connections.
pub trait EndpointClient: Send + Sync + 'static {
    fn send(&self, target: &EndpointTarget, request: Request<Body>) -> ResponseFuture;

    /// Drops what is kept per endpoint (pooled connections) for endpoints
    /// that no request used for `idle`, and says whether there were any; a
    /// client that keeps nothing has nothing to do.
    fn release_idle(&self, _idle: Duration) -> bool {
        false
    }
}
