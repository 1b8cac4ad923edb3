//! The seam between the logical side of the proxy (routes, balancing, retries)
//! and the transport side (connection pools, TLS, HTTP/1 vs HTTP/2).
//!
//! `logical` decides *which* endpoint gets a request; an `EndpointClient`
//! sends it there. Tests can substitute an in-memory one.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use http::{Request, Response};

use crate::body::Body;

/// What the logical side knows about an endpoint when it hands a request over.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointTarget {
    pub addr: SocketAddr,
    /// Expected SPIFFE ID of the endpoint's proxy; `None` when not meshed.
    pub identity: Option<String>,
    /// The endpoint runs a Plexus proxy: use mTLS + HTTP/2 to its inbound port.
    pub meshed: bool,
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
}
