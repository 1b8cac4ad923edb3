//! Clients calling the Service through the proxies' outbound listeners,
//! addressed by `Host` as in local mode, continuously until stopped: every
//! request must succeed. Bounded in count and time even if never stopped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{BOUND, PROXIES};

/// Pause between a client's requests: a steady load, not a benchmark.
const PACE: Duration = Duration::from_millis(10);
/// Each client stops by itself after this many requests or this long.
const MAX_REQUESTS_PER_CLIENT: u64 = 30_000;
const MAX_DURATION: Duration = Duration::from_secs(240);
/// A request that takes longer counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Failures described in the report (all are counted).
const KEPT_ERRORS: usize = 20;

/// One client: a keep-alive HTTP/1.1 connection to a proxy, `Host: host`.
pub struct Client {
    pub outbound: SocketAddr,
    pub host: String,
    /// Which proxy (the upstreams count per proxy).
    pub via: usize,
}

#[derive(Default)]
struct Stats {
    ok: [AtomicU64; PROXIES],
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

pub struct Traffic {
    stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

/// What the clients saw.
#[derive(Debug)]
pub struct Summary {
    pub ok: u64,
    pub failed: u64,
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl Traffic {
    pub fn start(clients: Vec<Client>) -> Self {
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = watch::channel(false);
        let clients = clients
            .into_iter()
            .map(|client| tokio::spawn(run(client, stats.clone(), stopped.clone())))
            .collect();
        Self {
            stats,
            stop,
            clients,
            started: Instant::now(),
        }
    }

    /// Successful requests through proxy `via` so far.
    pub fn ok_via(&self, via: usize) -> u64 {
        self.stats.ok[via].load(Ordering::SeqCst)
    }

    pub fn failed(&self) -> u64 {
        self.stats.failed.load(Ordering::SeqCst)
    }

    pub async fn stop(mut self) -> Summary {
        let _ = self.stop.send(true);
        for client in std::mem::take(&mut self.clients) {
            // A client ends within one request timeout of being told.
            let ended = tokio::time::timeout(REQUEST_TIMEOUT + BOUND, client).await;
            assert!(matches!(ended, Ok(Ok(()))), "a client ended: {ended:?}");
        }
        let errors = self
            .stats
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Summary {
            ok: (0..PROXIES).map(|via| self.ok_via(via)).sum(),
            failed: self.failed(),
            errors,
            elapsed: self.started.elapsed(),
        }
    }
}

async fn run(client: Client, stats: Arc<Stats>, stopped: watch::Receiver<bool>) {
    let deadline = Instant::now() + MAX_DURATION;
    let mut connection: Option<SendRequest<Empty<Bytes>>> = None;
    let mut sent = 0;
    while !*stopped.borrow() && sent < MAX_REQUESTS_PER_CLIENT && Instant::now() < deadline {
        sent += 1;
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, call(&client, &mut connection)).await;
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error),
            Err(_) => Some(format!("no answer within {REQUEST_TIMEOUT:?}")),
        };
        match error {
            None => {
                stats.ok[client.via].fetch_add(1, Ordering::SeqCst);
            }
            Some(error) => {
                stats.failed.fetch_add(1, Ordering::SeqCst);
                // Start over on a new connection.
                connection = None;
                let mut errors = stats.errors.lock().unwrap_or_else(|e| e.into_inner());
                if errors.len() < KEPT_ERRORS {
                    errors.push(format!("via proxy {}: {error}", client.via + 1));
                }
            }
        }
        tokio::time::sleep(PACE).await;
    }
}

/// One GET; a new connection first when there is none (or the last one closed).
async fn call(
    client: &Client,
    connection: &mut Option<SendRequest<Empty<Bytes>>>,
) -> Result<(), String> {
    if connection.as_ref().is_none_or(SendRequest::is_closed) {
        let stream = TcpStream::connect(client.outbound)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        *connection = Some(send);
    }
    let Some(send) = connection.as_mut() else {
        return Err("no connection".into());
    };
    send.ready().await.map_err(|e| format!("connection: {e}"))?;
    let request = hyper::Request::get("/")
        .header(hyper::header::HOST, &client.host)
        .header("x-via", client.via.to_string())
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = send
        .send_request(request)
        .await
        .map_err(|e| format!("GET: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    if status != hyper::StatusCode::OK || !body.starts_with("web-") {
        return Err(format!("{status}: {body}"));
    }
    Ok(())
}
