//! HTTP clients for the tests: single connections with hyper's client
//! (HTTP/1.1, HTTP/2 prior knowledge), one request over a stream the test
//! opened itself (from inside a network namespace, say), raw exchanges, GETs
//! on admin servers, and HTTPS verified against given trust anchors.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use plexus_identity::tls::{provider, trust_anchors_from_pem};
use plexus_proxy::body::{self, Body};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, ToSocketAddrs};

use crate::wait::bounded;

/// One HTTP/1.1 connection to `addr`.
pub async fn http1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    http1_over(TcpStream::connect(addr).await.expect("connect")).await
}

/// One HTTP/1.1 connection to `addr` from `source` (a loopback address, as
/// another pod's application would come from its own).
pub async fn http1_from(
    addr: SocketAddr,
    source: IpAddr,
) -> hyper::client::conn::http1::SendRequest<Body> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the source");
    http1_over(socket.connect(addr).await.expect("connect")).await
}

async fn http1_over(stream: TcpStream) -> hyper::client::conn::http1::SendRequest<Body> {
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

/// `GET uri` with a `host` header and no body.
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

pub fn full(bytes: impl Into<Bytes>) -> Full<Bytes> {
    Full::new(bytes.into())
}

/// GET on an admin server with hyper's client; returns status and body.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let mut send = http1(admin).await;
    let response = send
        .send_request(get(path, "admin"))
        .await
        .expect("admin request");
    let status = response.status().as_u16();
    (status, text(response).await)
}

/// `GET path` written by hand (`host: admin`, `connection: close`) on a new
/// connection to `addr`, bounded; the whole response as the server wrote it,
/// status line and headers included.
pub async fn raw_get(addr: impl ToSocketAddrs, path: &str) -> String {
    bounded("the GET is answered", async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    })
    .await
}

/// Writes raw bytes on a new connection and reads until the server closes
/// or `until` appears in what was read.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], until: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_until(&mut stream, until).await
}

/// Reads from `stream` until the server closes or `until` appears in what
/// was read (a keep-alive connection's next request can follow).
pub async fn read_until(stream: &mut TcpStream, until: &str) -> String {
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

/// What came back from [`get_over`].
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends `GET path` with `headers` over `stream` (opened by the caller, from
/// wherever it likes) and reads the whole answer. The caller bounds the time
/// (`tokio::time::timeout`).
pub async fn get_over(
    stream: TcpStream,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let mut request = Request::get(path).header(http::header::HOST, authority);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let (head, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("GET {path}: body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status: head.status,
        headers: head.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One request over HTTPS (HTTP/2 by ALPN) on a new connection to `addr`,
/// trusting only the PEM certificates `trust_anchors` and checking that the
/// server's certificate names `server_name`, as the API server calls a
/// webhook with its `caBundle`. Every failure is an error, never a panic:
/// the API server stand-in reports them as a failed webhook call.
pub async fn https_exchange(
    trust_anchors: &[u8],
    addr: SocketAddr,
    server_name: &str,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    let roots = trust_anchors_from_pem(trust_anchors).map_err(|e| e.to_string())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("dial {addr}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes()))
}
