//! Where a request goes: a meshed target's `Logical` service (routes,
//! balancing, retries), or straight to an address (passthrough: inbound's
//! application, an outbound destination that is not meshed).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};

use http::{Request, Response};

use crate::body::Body;
use crate::connect::{AppProtocol, EndpointClient, EndpointTarget, SendError};
use crate::error::ProxyError;
use crate::logical::Logical;
use crate::telemetry::RequestSpan;

/// The upstream of a connection or of one authority.
#[derive(Clone)]
pub enum Upstream {
    Logical(Arc<LogicalTarget>),
    Passthrough {
        /// `passthrough`, the `target` label of request metrics: one word
        /// for every address, which applications choose without bound.
        name: Arc<str>,
        endpoint: Arc<EndpointTarget>,
    },
}

impl Upstream {
    /// Straight to `addr`, whose protocol no hint names: the inbound's
    /// application gets what the client proxy left (see
    /// `crate::transport::ORIG_PROTO_HEADER`), an unmeshed destination what
    /// the app sent.
    pub fn passthrough(addr: SocketAddr) -> Self {
        Self::passthrough_from(addr, None)
    }

    /// [`Upstream::passthrough`], connecting from `source` when given.
    pub fn passthrough_from(addr: SocketAddr, source: Option<IpAddr>) -> Self {
        Self::Passthrough {
            name: PASSTHROUGH.clone(),
            endpoint: Arc::new(EndpointTarget {
                addr,
                identity: None,
                meshed: false,
                protocol: AppProtocol::AsRequested,
                source,
            }),
        }
    }

    pub fn name(&self) -> &Arc<str> {
        match self {
            Self::Logical(target) => &target.name,
            Self::Passthrough { name, .. } => name,
        }
    }

    /// Sends the request from the application at `source` (outbound);
    /// failures are already responses with `plexus-error`. `span` learns the
    /// route, backend and attempts (meshed targets) or the error
    /// (passthrough).
    pub async fn send(
        &self,
        client: &dyn EndpointClient,
        request: Request<Body>,
        source: Option<&IpAddr>,
        grpc: bool,
        span: &mut RequestSpan,
    ) -> Response<Body> {
        match self {
            Self::Logical(target) => target.logical.handle_traced(request, source, span).await,
            Self::Passthrough { endpoint, .. } => match client.send(endpoint, request).await {
                Ok(response) => response,
                Err(error) => {
                    let error = match error {
                        SendError::Connect(reason) => ProxyError::ConnectFailed {
                            endpoint: endpoint.addr.to_string(),
                            reason,
                        },
                        SendError::Request(reason) => ProxyError::UpstreamFailed {
                            endpoint: endpoint.addr.to_string(),
                            reason,
                        },
                    };
                    span.record_error(&error);
                    error.into_response(grpc)
                }
            },
        }
    }
}

static PASSTHROUGH: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("passthrough"));

/// A meshed target's logical service.
pub struct LogicalTarget {
    /// The target's name, the `target` label of request metrics.
    pub(crate) name: Arc<str>,
    pub(crate) logical: Logical,
}
