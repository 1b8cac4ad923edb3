//! Shared helpers for the proxy's loopback tests: tiny upstreams on port 0,
//! an in-process proxy with a static config, and single-connection clients.
//! Each test file uses a different subset of them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use plexus_proxy::body::{self, Body};
use plexus_proxy::config::Config;
use plexus_proxy::{Proxy, RunningProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound for anything a test waits on.
pub const BOUND: Duration = Duration::from_secs(10);

/// Runs `f` within [`BOUND`], failing the test instead of hanging it.
pub async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(BOUND, f).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: no result within {BOUND:?}"),
    }
}

/// An HTTP upstream (HTTP/1 with upgrades, HTTP/2) on 127.0.0.1:0.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Serves every request with `handler`.
pub async fn http_upstream<H, F>(handler: H) -> Upstream
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream { addr, connections }
}

/// Answers with a description of the request it got, and echoes its body.
/// Headers: `x-version`, `x-host`, `x-path`, `x-upstream` (its own address).
pub async fn echo_upstream() -> Upstream {
    let own = Arc::new(std::sync::OnceLock::<SocketAddr>::new());
    let own2 = own.clone();
    let upstream = http_upstream(move |request: Request<Incoming>| {
        let own = own2.clone();
        async move {
            let version = format!("{:?}", request.version());
            let host = request
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| {
                    request
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            let path = request.uri().path().to_owned();
            let body = request
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::builder()
                .header("x-version", version)
                .header("x-host", host)
                .header("x-path", path)
                .header(
                    "x-upstream",
                    own.get().map(|a| a.to_string()).unwrap_or_default(),
                )
                .body(body::full(body))
                .expect("echo response")
        }
    })
    .await;
    let _ = own.set(upstream.addr);
    upstream
}

/// A TCP server that writes `greeting` as soon as a client connects
/// (server-speaks-first, like MySQL), then echoes.
pub async fn tcp_upstream(greeting: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind tcp upstream");
    let addr = listener.local_addr().expect("tcp upstream addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if stream.write_all(greeting).await.is_err() {
                    return;
                }
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

/// A static config with one target per `(aliases, backend endpoints)`;
/// the target's name is its first alias and its one backend is "default".
pub fn static_config(targets: &[(&[&str], &[SocketAddr])]) -> String {
    static_config_with(targets, false)
}

/// As [`static_config`]; `meshed` marks every endpoint as running a proxy.
pub fn static_config_with(targets: &[(&[&str], &[SocketAddr])], meshed: bool) -> String {
    let mut yaml = String::from("destinations:\n");
    for (aliases, endpoints) in targets {
        let aliases: Vec<String> = aliases.iter().map(|a| format!("{a:?}")).collect();
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{{ address: \"{e}\", ready: true, meshed: {meshed} }}"))
            .collect();
        yaml.push_str(&format!(
            "  - aliases: [{}]\n    target:\n      routes: {{ default_backend: default }}\n      backends:\n        backends:\n          default: {{ endpoints: [{}] }}\n",
            aliases.join(", "),
            endpoints.join(", ")
        ));
    }
    yaml
}

/// An in-process proxy on 127.0.0.1 ephemeral ports.
pub struct TestProxy {
    env: HashMap<String, String>,
    yaml: Option<String>,
    original_dst: Option<SocketAddr>,
}

pub fn proxy() -> TestProxy {
    let env = [
        ("PLEXUS_OUTBOUND_ADDR", "127.0.0.1:0"),
        ("PLEXUS_INBOUND_ADDR", "127.0.0.1:0"),
        ("PLEXUS_ADMIN_ADDR", "127.0.0.1:0"),
        ("PLEXUS_DRAIN_TIMEOUT_MS", "5000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    TestProxy {
        env,
        yaml: None,
        original_dst: None,
    }
}

impl TestProxy {
    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.env.insert(name.to_owned(), value.to_string());
        self
    }

    /// Destinations as the static YAML file (written to a temporary file).
    pub fn static_config(mut self, yaml: impl Into<String>) -> Self {
        self.yaml = Some(yaml.into());
        self
    }

    /// Pretends every accepted connection was redirected from `addr`.
    pub fn original_dst(mut self, addr: SocketAddr) -> Self {
        self.original_dst = Some(addr);
        self
    }

    pub async fn start(mut self) -> RunningProxy {
        static FILES: AtomicUsize = AtomicUsize::new(0);
        let file = self.yaml.as_ref().map(|yaml| {
            let n = FILES.fetch_add(1, Ordering::SeqCst);
            let path = std::env::temp_dir()
                .join(format!("plexus-proxy-test-{}-{n}.yaml", std::process::id()));
            std::fs::write(&path, yaml).expect("write static config");
            path
        });
        if let Some(path) = &file {
            self.env
                .insert("PLEXUS_STATIC_CONFIG".into(), path.display().to_string());
        }
        let config = Config::from_env(&self.env).expect("test config");
        let mut builder = Proxy::builder(config);
        if let Some(addr) = self.original_dst {
            builder = builder.original_dst(Arc::new(move |_: &TcpStream| Some(addr)));
        }
        let running = builder.bind().await.expect("proxy starts");
        if let Some(path) = file {
            // Read once at start; nothing needs it any more.
            let _ = std::fs::remove_file(path);
        }
        running
    }
}

/// One HTTP/1.1 connection to `addr`.
pub async fn http1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1 handshake");
    tokio::spawn(conn.with_upgrades());
    send
}

/// One HTTP/2 (prior knowledge) connection to `addr`.
pub async fn http2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("http2 handshake");
    tokio::spawn(conn);
    send
}

pub fn get(uri: &str, host: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .header("host", host)
        .body(body::empty())
        .expect("request")
}

/// The whole body of a response, as text.
pub async fn text<B>(response: Response<B>) -> String
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// GET on the admin server; returns status and body.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let mut send = http1(admin).await;
    let response = send
        .send_request(get(path, "admin"))
        .await
        .expect("admin request");
    let status = response.status().as_u16();
    (status, text(response).await)
}

/// Writes raw bytes on a new connection and reads until the server closes
/// or `until` appears in what was read.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], until: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if String::from_utf8_lossy(&got).contains(until) {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

pub fn full(bytes: impl Into<Bytes>) -> Full<Bytes> {
    Full::new(bytes.into())
}
