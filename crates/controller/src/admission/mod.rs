//! The injector webhook as the API server meets it: HTTPS on :8443 with a
//! certificate from the controller's CA ([`serve`]), and the
//! MutatingWebhookConfiguration's `caBundle` kept equal to that CA's trust
//! anchor ([`ca_bundle`]). [`webhook::review`] turns an AdmissionReview into its
//! answer with the injector's plan (`plexus-inject`).

pub mod ca_bundle;
pub mod webhook;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use plexus_core::annotations::INJECT;
use plexus_discovery::index::SharedIndex;
use plexus_inject::InjectConfig;

use self::webhook::{NamespaceAnnotations, review};
use crate::identity::tls_incoming;

/// The path the MutatingWebhookConfiguration names.
pub const INJECT_PATH: &str = "/inject";
/// An AdmissionReview of a Pod is a few KiB; the API server caps requests at
/// 3 MiB. Anything past this is not a pod we should read.
pub const MAX_REVIEW_BYTES: usize = 2 * 1024 * 1024;

/// The DNS names the API server uses to reach the webhook Service.
pub fn service_dns_names(service: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{cluster_domain}"),
    ]
}

/// What the webhook answers with: namespaces from the discovery index, and the
/// injection defaults (with the CA's trust anchors filled in).
pub struct Injector {
    pub index: SharedIndex,
    pub config: InjectConfig,
}

/// The index already watches Namespaces; it keeps `plexus.io/inject` only.
impl NamespaceAnnotations for SharedIndex {
    fn annotation(&self, namespace: &str, key: &str) -> Option<String> {
        if key != INJECT {
            return None;
        }
        let enabled = self.lock().namespace_inject(namespace)?;
        Some(if enabled { "enabled" } else { "disabled" }.to_string())
    }
}

impl Injector {
    /// Serves HTTPS on `listener` until the task is dropped. Each connection
    /// is its own task; a bad one is logged and never stops the others.
    pub async fn serve(self, listener: TcpListener, tls: Arc<ServerConfig>) {
        let injector = Arc::new(self);
        let mut incoming = tls_incoming(listener, tls);
        while let Some(connection) = incoming.next().await {
            let Ok(connection) = connection else { continue };
            let injector = injector.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let injector = injector.clone();
                    async move { Ok::<_, Infallible>(injector.handle(request).await) }
                });
                if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(connection), service)
                    .await
                {
                    tracing::debug!(error = %e, "webhook connection ended");
                }
            });
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::POST || request.uri().path() != INJECT_PATH {
            return plain(StatusCode::NOT_FOUND, "not found: POST /inject only\n");
        }
        let body = match Limited::new(request.into_body(), MAX_REVIEW_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => {
                tracing::warn!(limit = MAX_REVIEW_BYTES, "admission review too large");
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "admission review larger than 2 MiB\n",
                );
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading an admission review");
                return plain(StatusCode::BAD_REQUEST, "unreadable request body\n");
            }
        };
        // `review` answers every body with an allowing AdmissionReview.
        let answer = review(&body, &self.index, &self.config);
        let mut response = Response::new(Full::new(Bytes::from(answer)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
