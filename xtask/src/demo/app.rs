//! The demo application's services (`cargo xtask demo-app`): tiny HTTP servers that play
//! the frontend and the backend replicas.
//!
//! Like any meshed application, the frontend forwards the trace context of the request it
//! serves (`traceparent`, `tracestate`, B3) on the request it makes, so the hops join one
//! trace; the mesh cannot do that for it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use super::topology::Role;

/// The header the inbound sidecar sets to the caller's identity.
pub const CLIENT_ID_HEADER: &str = "plexus-client-id";

/// Headers that carry trace context; the frontend copies them onto its backend call.
const TRACE_HEADERS: [&str; 7] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
];

/// How long the frontend waits for the backend, whatever the mesh's own timeouts.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct AppArgs {
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    #[arg(long)]
    pub listen: SocketAddr,
    /// Pod name, reported in answers and stats.
    #[arg(long, default_value = "demo-app")]
    pub pod: String,
    #[arg(long, default_value = "v1")]
    pub version: String,
    /// Backend: fraction of requests answered with 500 or 503.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Backend: delay added to every answer.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Frontend: the sidecar's outbound listener, which routes by Host.
    #[arg(long)]
    pub upstream_proxy: Option<SocketAddr>,
    /// Frontend: the authority of the Service it calls.
    #[arg(long, default_value = "backend.demo.svc.cluster.local:8080")]
    pub upstream_host: String,
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "frontend" => Ok(Role::Frontend),
        "backend" => Ok(Role::Backend),
        other => Err(format!("expected frontend or backend, got {other:?}")),
    }
}

/// What an app reports on `GET /stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppStats {
    pub pod: String,
    pub version: String,
    /// Requests served, `/stats` excluded.
    pub requests: u64,
    /// Failures this app produced itself (injected errors, failed upstream calls).
    pub failures: u64,
    /// Requests per `plexus-client-id`; "" when the header was absent.
    pub client_ids: BTreeMap<String, u64>,
}

/// What a backend answers on success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendAnswer {
    pub version: String,
    pub pod: String,
    pub client_id: Option<String>,
}

/// What the frontend answers: the backend's status and body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontendAnswer {
    pub pod: String,
    pub backend_status: u16,
    /// The backend's answer when it was one, else its body as text.
    pub backend: serde_json::Value,
    pub client_id: Option<String>,
}

struct App {
    args: AppArgs,
    requests: AtomicU64,
    failures: AtomicU64,
    client_ids: Mutex<BTreeMap<String, u64>>,
    upstream: Client<HttpConnector, Full<Bytes>>,
}

/// Serves until the process is stopped.
pub async fn run(args: AppArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.fail_rate) {
        anyhow::bail!("--fail-rate must be within 0..=1, got {}", args.fail_rate);
    }
    if args.role == Role::Frontend && args.upstream_proxy.is_none() {
        anyhow::bail!("--upstream-proxy is required for --role frontend");
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    serve(listener, args).await;
    Ok(())
}

/// Serves `listener` forever.
async fn serve(listener: TcpListener, args: AppArgs) {
    let app = Arc::new(App {
        args,
        requests: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        client_ids: Mutex::new(BTreeMap::new()),
        upstream: Client::builder(TokioExecutor::new()).build_http(),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            // Out of descriptors and the like: keep serving the connections we have.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(app.handle(req).await) }
            });
            // A client that hangs up mid-request is its business, not an app failure.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl App {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() == Method::GET && req.uri().path() == "/stats" {
            return json_response(StatusCode::OK, &self.stats().await);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let client_id = req
            .headers()
            .get(CLIENT_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        *self
            .client_ids
            .lock()
            .await
            .entry(client_id.clone().unwrap_or_default())
            .or_default() += 1;
        match self.args.role {
            Role::Backend => self.answer_as_backend(client_id).await,
            Role::Frontend => self.answer_as_frontend(req.headers(), client_id).await,
        }
    }

    async fn stats(&self) -> AppStats {
        AppStats {
            pod: self.args.pod.clone(),
            version: self.args.version.clone(),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            client_ids: self.client_ids.lock().await.clone(),
        }
    }

    async fn answer_as_backend(&self, client_id: Option<String>) -> Response<Full<Bytes>> {
        if self.args.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.args.delay_ms)).await;
        }
        if rand::random::<f64>() < self.args.fail_rate {
            self.failures.fetch_add(1, Ordering::Relaxed);
            let status = if rand::random::<bool>() {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return json_response(
                status,
                &json!({ "error": "injected failure", "pod": self.args.pod }),
            );
        }
        let answer = BackendAnswer {
            version: self.args.version.clone(),
            pod: self.args.pod.clone(),
            client_id,
        };
        json_response(StatusCode::OK, &answer)
    }

    async fn answer_as_frontend(
        &self,
        incoming: &HeaderMap,
        client_id: Option<String>,
    ) -> Response<Full<Bytes>> {
        match self.call_backend(incoming).await {
            Ok((status, body)) => {
                let backend = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| json!(String::from_utf8_lossy(&body)));
                let answer = FrontendAnswer {
                    pod: self.args.pod.clone(),
                    backend_status: status.as_u16(),
                    backend,
                    client_id,
                };
                json_response(status, &answer)
            }
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let body = json!({ "pod": self.args.pod, "error": format!("{error:#}") });
                json_response(StatusCode::BAD_GATEWAY, &body)
            }
        }
    }

    async fn call_backend(&self, incoming: &HeaderMap) -> anyhow::Result<(StatusCode, Bytes)> {
        let proxy = self
            .args
            .upstream_proxy
            .context("the frontend has no --upstream-proxy")?;
        let mut request = Request::get(format!("http://{proxy}/"))
            .header(header::HOST, &self.args.upstream_host)
            .body(Full::default())
            .context("building the backend request")?;
        for name in TRACE_HEADERS {
            for value in incoming.get_all(name) {
                request.headers_mut().append(name, value.clone());
            }
        }
        let call = async {
            let response = self.upstream.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(UPSTREAM_TIMEOUT, call)
            .await
            .context("the backend did not answer in time")?
            .with_context(|| format!("calling {} through {proxy}", self.args.upstream_host))
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(role: Role) -> AppArgs {
        AppArgs {
            role,
            listen: "127.0.0.1:0".parse().expect("addr"),
            pod: format!("{}-test", role.as_str()),
            version: "v7".into(),
            fail_rate: 0.0,
            delay_ms: 0,
            upstream_proxy: None,
            upstream_host: "backend.demo.svc.cluster.local:8080".into(),
        }
    }

    /// Serves `args` on an ephemeral port; the task ends with the test's runtime.
    async fn start(args: AppArgs) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(serve(listener, args));
        addr
    }

    async fn get(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let mut request = Request::get(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let exchange = async {
            let response = client
                .request(request.body(Full::default()).expect("request"))
                .await
                .expect("answered");
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (status, serde_json::from_slice(&body).expect("json body"))
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("in time")
    }

    async fn stats(addr: SocketAddr) -> AppStats {
        let (status, body) = get(addr, "/stats", &[]).await;
        assert_eq!(status, 200);
        serde_json::from_value(body).expect("stats shape")
    }

    #[tokio::test]
    async fn a_backend_answers_its_version_and_the_callers_identity() {
        let addr = start(args(Role::Backend)).await;
        let id = "spiffe://cluster.local/ns/demo/sa/frontend";
        let (status, body) = get(addr, "/", &[(CLIENT_ID_HEADER, id)]).await;
        assert_eq!(status, 200);
        let answer: BackendAnswer = serde_json::from_value(body).expect("answer shape");
        assert_eq!(answer.version, "v7");
        assert_eq!(answer.pod, "backend-test");
        assert_eq!(answer.client_id.as_deref(), Some(id));
        let stats = stats(addr).await;
        assert_eq!((stats.requests, stats.failures), (1, 0));
        assert_eq!(stats.client_ids[id], 1);
    }

    #[tokio::test]
    async fn a_backend_fails_at_its_fail_rate_and_counts_it() {
        let addr = start(AppArgs {
            fail_rate: 1.0,
            ..args(Role::Backend)
        })
        .await;
        for _ in 0..4 {
            let (status, _) = get(addr, "/", &[]).await;
            assert!(status == 500 || status == 503, "{status}");
        }
        let stats = stats(addr).await;
        assert_eq!((stats.requests, stats.failures), (4, 4));
        assert_eq!(stats.client_ids[""], 4);
    }

    #[tokio::test]
    async fn the_frontend_forwards_trace_context_and_the_backends_status() {
        // Stands in for the sidecar's outbound listener: echoes what it received.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = listener.local_addr().expect("bound");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let seen = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let body = json!({
                        "version": "echo",
                        "host": seen("host"),
                        "traceparent": seen("traceparent"),
                        "b3": seen("b3"),
                        "unrelated": seen("x-unrelated"),
                    });
                    Ok::<_, std::convert::Infallible>(json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &body,
                    ))
                });
                tokio::spawn(
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned(),
                );
            }
        });
        let frontend = start(AppArgs {
            upstream_proxy: Some(upstream),
            ..args(Role::Frontend)
        })
        .await;
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let (status, body) = get(
            frontend,
            "/",
            &[
                ("traceparent", traceparent),
                ("b3", "80f198ee56343ba8-e457b5a2e4d86bd1-1"),
                ("x-unrelated", "1"),
            ],
        )
        .await;
        assert_eq!(status, 503, "the backend's status is passed through");
        let answer: FrontendAnswer = serde_json::from_value(body).expect("answer shape");
        assert_eq!(answer.backend_status, 503);
        assert_eq!(
            answer.backend["host"],
            "backend.demo.svc.cluster.local:8080"
        );
        assert_eq!(answer.backend["traceparent"], traceparent);
        assert_eq!(answer.backend["b3"], "80f198ee56343ba8-e457b5a2e4d86bd1-1");
        assert_eq!(answer.backend["unrelated"], serde_json::Value::Null);
        // Passing a backend failure through is not a failure of the frontend itself.
        assert_eq!(stats(frontend).await.failures, 0);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_502_counted_as_the_frontends_failure() {
        let gone = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("ephemeral port");
        let frontend = start(AppArgs {
            upstream_proxy: Some(gone),
            ..args(Role::Frontend)
        })
        .await;
        let (status, body) = get(frontend, "/", &[]).await;
        assert_eq!(status, 502);
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("through")),
            "{body}"
        );
        assert_eq!(stats(frontend).await.failures, 1);
    }
}
