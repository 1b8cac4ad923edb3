//! Where a request goes: a meshed target's `Logical` service (routes,
//! balancing, retries), or straight to an address (passthrough).
//!
//! [`Targets`] keeps one `Logical` per target, shared by every connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use plexus_api::v1::Target;
use tokio::sync::watch;

use crate::body::Body;
use crate::connect::{EndpointClient, EndpointTarget, SendError};
use crate::destinations::{Destinations, Resolution};
use crate::error::ProxyError;
use crate::logical::{Logical, LogicalMetrics};

/// The upstream of a connection or of one authority.
#[derive(Clone)]
pub enum Upstream {
    Logical {
        /// The target's name, the `target` label of request metrics.
        name: Arc<str>,
        logical: Logical,
    },
    Passthrough {
        /// The address, the `target` label of request metrics.
        name: Arc<str>,
        endpoint: Arc<EndpointTarget>,
    },
}

impl Upstream {
    pub fn passthrough(addr: SocketAddr) -> Self {
        Self::Passthrough {
            name: Arc::from(addr.to_string()),
            endpoint: Arc::new(EndpointTarget {
                addr,
                identity: None,
                meshed: false,
            }),
        }
    }

    pub fn name(&self) -> &Arc<str> {
        match self {
            Self::Logical { name, .. } | Self::Passthrough { name, .. } => name,
        }
    }

    /// Sends the request; failures are already responses with `plexus-error`.
    pub async fn send(
        &self,
        client: &dyn EndpointClient,
        request: Request<Body>,
        grpc: bool,
    ) -> Response<Body> {
        match self {
            Self::Logical { logical, .. } => logical.handle(request).await,
            Self::Passthrough { endpoint, .. } => match client.send(endpoint, request).await {
                Ok(response) => response,
                Err(SendError::Connect(reason)) => ProxyError::ConnectFailed {
                    endpoint: endpoint.addr.to_string(),
                    reason,
                }
                .into_response(grpc),
                Err(SendError::Request(reason)) => ProxyError::UpstreamFailed {
                    endpoint: endpoint.addr.to_string(),
                    reason,
                }
                .into_response(grpc),
            },
        }
    }
}

/// The outbound side's view of destinations, with one `Logical` per target.
pub struct Targets {
    destinations: Destinations,
    client: Arc<dyn EndpointClient>,
    metrics: LogicalMetrics,
    logicals: Mutex<HashMap<String, (Arc<str>, Logical)>>,
}

/// What is known about a redirected outbound connection's original destination.
pub struct Redirected {
    pub upstream: Upstream,
    /// The target says it carries an opaque protocol: do not sniff.
    pub opaque: bool,
}

impl Targets {
    pub fn new(
        destinations: Destinations,
        client: Arc<dyn EndpointClient>,
        metrics: LogicalMetrics,
    ) -> Self {
        Self {
            destinations,
            client,
            metrics,
            logicals: Mutex::default(),
        }
    }

    /// The upstream of a redirected connection: its target if meshed, else the address itself.
    pub async fn by_original_dst(&self, addr: SocketAddr) -> Redirected {
        match self.destinations.by_addr(addr).await {
            Resolution::Meshed(target) => {
                let opaque = target
                    .borrow()
                    .protocol
                    .as_ref()
                    .is_some_and(|p| p.protocol == "opaque");
                Redirected {
                    upstream: self.logical(target),
                    opaque,
                }
            }
            Resolution::NotMeshed => Redirected {
                upstream: Upstream::passthrough(addr),
                opaque: false,
            },
        }
    }

    /// The upstream for a `Host` / `:authority` on a connection that was not
    /// redirected: only known targets, as there is no address to pass through to.
    pub async fn by_authority(&self, authority: &str) -> Result<Upstream, ProxyError> {
        match self.destinations.by_authority(authority).await {
            Some(Resolution::Meshed(target)) => Ok(self.logical(target)),
            Some(Resolution::NotMeshed) => Err(ProxyError::UnknownTarget(authority.to_owned())),
            None => Err(ProxyError::BadRequest(format!(
                "invalid authority {authority:?}"
            ))),
        }
    }

    fn logical(&self, target: watch::Receiver<Arc<Target>>) -> Upstream {
        let name = target.borrow().name.clone();
        let mut logicals = match self.logicals.lock() {
            Ok(logicals) => logicals,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (name, logical) = logicals
            .entry(name)
            .or_insert_with_key(|name| {
                let logical = Logical::new(target, self.client.clone(), self.metrics.clone());
                (Arc::from(name.as_str()), logical)
            })
            .clone();
        Upstream::Logical { name, logical }
    }
}
