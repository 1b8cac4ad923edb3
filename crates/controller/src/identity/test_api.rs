//! A tiny in-process stand-in for the Kubernetes API server: real HTTP on
//! loopback, answers computed by the test, for kube's real client.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub(crate) struct Reply {
    status: StatusCode,
    body: serde_json::Value,
}

impl Reply {
    pub(crate) fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap(),
            body,
        }
    }

    /// A `Status` object, as the API server sends with errors.
    pub(crate) fn status(code: u16, reason: &str) -> Self {
        Self::json(
            code,
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": reason, "reason": reason, "code": code
            }),
        )
    }
}

pub(crate) struct ApiStandIn {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl ApiStandIn {
    pub(crate) async fn start(
        answer: impl Fn(Method, &str, Bytes) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answer = Arc::new(answer);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let answer = answer.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let reply = answer(parts.method, parts.uri.path(), body);
                                let response = Response::builder()
                                    .status(reply.status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(reply.body.to_string())))
                                    .unwrap();
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, task }
    }

    pub(crate) fn client(&self) -> kube::Client {
        client_for(&self.url)
    }
}

impl Drop for ApiStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn client_for(url: &str) -> kube::Client {
    let mut config = kube::Config::new(url.parse().unwrap());
    config.default_namespace = "plexus".into();
    kube::Client::try_from(config).unwrap()
}

/// A loopback URL where nothing listens.
pub(crate) fn unreachable_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}
