//! Small servers on loopback for the tests to send traffic to: an HTTP server
//! (HTTP/1 with upgrades such as WebSocket, HTTP/2 and so gRPC, on one port)
//! counting connections and requests, an echoing one, the same speaking only
//! HTTP/2 (an h2c application), and a TCP one.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP upstream on 127.0.0.1:0, counting what it serves.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Requests received so far.
    pub requests: Arc<AtomicUsize>,
    /// Requests whose handler has not answered yet.
    pub in_flight: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// Serves every request with `handler` (HTTP/1 with upgrades, HTTP/2).
pub async fn http_upstream<H, F, B>(handler: H) -> Upstream
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    serve_upstream(handler, false).await
}

/// Serves every request with `handler` over HTTP/2 with prior knowledge only
/// (h2c), as gRPC servers do: an HTTP/1 request fails the connection.
pub async fn h2c_upstream<H, F, B>(handler: H) -> Upstream
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    serve_upstream(handler, true).await
}

async fn serve_upstream<H, F, B>(handler: H, http2_only: bool) -> Upstream
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let upstream = Upstream {
        addr,
        connections: Arc::default(),
        requests: Arc::default(),
        in_flight: Arc::default(),
    };
    let handler = Arc::new(handler);
    let (connections, requests, in_flight) = (
        upstream.connections.clone(),
        upstream.requests.clone(),
        upstream.in_flight.clone(),
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let (handler, requests, in_flight) =
                (handler.clone(), requests.clone(), in_flight.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    requests.fetch_add(1, Ordering::SeqCst);
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    let response = handler(request);
                    let in_flight = in_flight.clone();
                    async move {
                        let response = response.await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(response)
                    }
                });
                let (server, io) = (
                    auto::Builder::new(TokioExecutor::new()),
                    TokioIo::new(stream),
                );
                // Upgrades are HTTP/1's, so serving them would accept HTTP/1.
                let _ = if http2_only {
                    server.http2_only().serve_connection(io, service).await
                } else {
                    server.serve_connection_with_upgrades(io, service).await
                };
            });
        }
    });
    upstream
}

/// `200 ok`.
pub fn ok() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

/// An `ok` body with status `code`.
pub fn status(code: u16) -> Response<Full<Bytes>> {
    let mut response = ok();
    *response.status_mut() = StatusCode::from_u16(code).expect("valid status");
    response
}

/// The body of [`grpc_reply`].
pub type GrpcBody = http_body_util::StreamBody<
    tokio_stream::Iter<std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, Infallible>>>,
>;

/// A gRPC answer carrying `code`: trailers-only (the status in the headers,
/// no body), or, `in_trailers`, one empty message and then the status in the
/// trailers, as a server that streamed before it failed sends it.
pub fn grpc_reply(code: &'static str, in_trailers: bool) -> Response<GrpcBody> {
    let mut status = http::HeaderMap::new();
    status.insert("grpc-status", code.parse().expect("a header value"));
    let frames = if in_trailers {
        vec![
            Ok(hyper::body::Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(hyper::body::Frame::trailers(status)),
        ]
    } else {
        Vec::new()
    };
    let mut response = Response::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)));
    let headers = response.headers_mut();
    headers.insert("content-type", "application/grpc".parse().expect("value"));
    if !in_trailers {
        headers.insert("grpc-status", code.parse().expect("a header value"));
    }
    response
}

/// Answers with a description of the request it got, and echoes its body.
/// Headers: `x-version`, `x-host` (the URI's authority, else `Host`),
/// `x-host-header` (`Host` itself, `-` if none), `x-path`, `x-upstream` (its
/// own address).
pub async fn echo_upstream() -> Upstream {
    serve_echo(false).await
}

/// [`echo_upstream`] speaking only HTTP/2 ([`h2c_upstream`]).
pub async fn h2c_echo_upstream() -> Upstream {
    serve_echo(true).await
}

async fn serve_echo(http2_only: bool) -> Upstream {
    let own = Arc::new(OnceLock::<SocketAddr>::new());
    let upstream = serve_upstream(echo(own.clone()), http2_only).await;
    let _ = own.set(upstream.addr);
    upstream
}

type EchoFuture = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

/// The handler of the echoing upstreams; `own` is filled once bound.
fn echo(
    own: Arc<OnceLock<SocketAddr>>,
) -> impl Fn(Request<Incoming>) -> EchoFuture + Send + Sync + 'static {
    move |request: Request<Incoming>| {
        let own = own.clone();
        Box::pin(async move {
            let version = format!("{:?}", request.version());
            let host_header = request
                .headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned);
            let host = request
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| host_header.clone())
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
                .header("x-host-header", host_header.as_deref().unwrap_or("-"))
                .header("x-path", path)
                .header(
                    "x-upstream",
                    own.get().map(|a| a.to_string()).unwrap_or_default(),
                )
                .body(Full::new(body))
                .expect("echo response")
        })
    }
}

/// Once `request`'s upgrade (WebSocket, say) completes, echoes every byte
/// the client sends on the upgraded connection. For handlers answering 101.
pub fn echo_after_upgrade(request: &mut Request<Incoming>) {
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
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

/// A loopback address nobody listens on (bound, then released).
pub fn unused_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind loopback")
}
