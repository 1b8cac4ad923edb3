//! The load generator: N connections, each sending request after request
//! (closed loop) or on a fixed schedule (open loop), each recording latencies
//! in its own histogram, merged at the end.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::latency::LatencyHistogram;
use super::scenario::{Pacing, Protocol};
use super::schedule::{FixedRateSchedule, latency_origin};

/// The name the proxies route by (an alias in their static configuration).
pub const BENCH_AUTHORITY: &str = "bench:80";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed reconnect, so a dead target is not hammered in a hot loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// When the measurement happens: requests sent (or, at a fixed rate, due)
/// before `start` are warm-up; nothing is sent from `end` on.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn seconds(&self) -> f64 {
        (self.end - self.start).as_secs_f64()
    }
}

#[derive(Default)]
pub struct LoadOutcome {
    /// One entry per successful request inside the window.
    pub latency: LatencyHistogram,
    /// Failed requests inside the window (errors, timeouts, non-2xx answers).
    pub errors: u64,
    pub first_error: Option<String>,
    /// Some connection used up its share of the request cap before the window ended.
    pub capped: bool,
}

impl LoadOutcome {
    /// Successful requests inside the window.
    pub fn completed(&self) -> u64 {
        self.latency.count()
    }
}

/// Open connections, ready to be driven.
pub struct Load {
    target: SocketAddr,
    protocol: Protocol,
    senders: Vec<Sender>,
}

impl Load {
    /// Opens every connection up front, so the measurement starts warm.
    pub async fn connect(
        target: SocketAddr,
        protocol: Protocol,
        connections: usize,
    ) -> Result<Self> {
        let mut senders = Vec::with_capacity(connections);
        for index in 0..connections {
            let sender = Sender::open(target, protocol)
                .await
                .with_context(|| format!("opening connection {index} to {target}"))?;
            senders.push(sender);
        }
        Ok(Self {
            target,
            protocol,
            senders,
        })
    }

    /// Drives every connection until the window ends or `max_requests` (all
    /// connections together, warm-up included) have been sent.
    pub async fn run(
        self,
        pacing: Pacing,
        window: Window,
        max_requests: u64,
    ) -> Result<LoadOutcome> {
        let connections = self.senders.len();
        let warmup_start = Instant::now();
        let tasks: Vec<_> = self
            .senders
            .into_iter()
            .enumerate()
            .map(|(index, sender)| {
                let schedule = match pacing {
                    Pacing::ClosedLoop => None,
                    Pacing::FixedRate { requests_per_sec } => {
                        Some(FixedRateSchedule::for_connection(
                            warmup_start,
                            requests_per_sec,
                            connections,
                            index,
                        ))
                    }
                };
                let connection = Connection {
                    target: self.target,
                    protocol: self.protocol,
                    sender: Some(sender),
                    schedule,
                    cap: share(max_requests, connections, index),
                };
                tokio::spawn(connection.drive(window))
            })
            .collect();

        let mut total = LoadOutcome::default();
        for task in tasks {
            let outcome = task.await.context("a load connection task failed")?;
            total.latency.merge(&outcome.latency)?;
            total.errors += outcome.errors;
            total.capped |= outcome.capped;
            if total.first_error.is_none() {
                total.first_error = outcome.first_error;
            }
        }
        Ok(total)
    }
}

/// Connection `index`'s part of a request budget shared by `connections`.
fn share(total: u64, connections: usize, index: usize) -> u64 {
    let connections = connections.max(1) as u64;
    total / connections + u64::from((index as u64) < total % connections)
}

struct Connection {
    target: SocketAddr,
    protocol: Protocol,
    sender: Option<Sender>,
    schedule: Option<FixedRateSchedule>,
    cap: u64,
}

impl Connection {
    async fn drive(mut self, window: Window) -> LoadOutcome {
        let mut outcome = LoadOutcome::default();
        let mut sent = 0;
        let mut previous_done = Instant::now();
        loop {
            if sent == self.cap {
                outcome.capped = true;
                break;
            }
            let now = Instant::now();
            let intended = match &mut self.schedule {
                Some(schedule) => schedule.next_send_time(),
                None => now,
            };
            if intended >= window.end || now >= window.end {
                break;
            }
            // Only a schedule waits: even an expired timer costs a tick (1 ms) in tokio.
            if intended > now {
                sleep_until(intended).await;
            }
            sent += 1;
            let sent_at = Instant::now();
            let result = self.exchange().await;
            let done = Instant::now();
            let origin = latency_origin(intended, previous_done, sent_at);
            previous_done = done;
            let measured = intended >= window.start;
            match result {
                Ok(()) if measured => outcome.latency.record(done - origin),
                Ok(()) => {}
                Err(error) => {
                    if measured {
                        outcome.errors += 1;
                    }
                    outcome
                        .first_error
                        .get_or_insert_with(|| format!("{error:#}"));
                    // The connection may be broken: the next request gets a new one.
                    self.sender = None;
                }
            }
        }
        outcome
    }

    async fn exchange(&mut self) -> Result<()> {
        let sender = match &mut self.sender {
            Some(sender) => sender,
            None => match Sender::open(self.target, self.protocol).await {
                Ok(sender) => self.sender.insert(sender),
                Err(error) => {
                    sleep(RECONNECT_PAUSE).await;
                    return Err(error.context("reconnecting"));
                }
            },
        };
        timeout(REQUEST_TIMEOUT, sender.exchange())
            .await
            .with_context(|| format!("no response within {REQUEST_TIMEOUT:?}"))?
    }
}

/// One client connection, HTTP/1.1 or HTTP/2.
enum Sender {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn open(target: SocketAddr, protocol: Protocol) -> Result<Self> {
        let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
            .await
            .with_context(|| {
                format!("connecting to {target}: no answer within {CONNECT_TIMEOUT:?}")
            })?
            .with_context(|| format!("connecting to {target}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let io = TokioIo::new(stream);
        let sender = match protocol {
            Protocol::H1 => {
                let (sender, connection) =
                    http1::handshake(io).await.context("HTTP/1.1 handshake")?;
                tokio::spawn(connection);
                Sender::Http1(sender)
            }
            Protocol::H2 => {
                let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .context("HTTP/2 handshake")?;
                tokio::spawn(connection);
                Sender::Http2(sender)
            }
        };
        Ok(sender)
    }

    /// One request, its whole response body read.
    async fn exchange(&mut self) -> Result<()> {
        let response = match self {
            Sender::Http1(sender) => {
                sender.ready().await.context("HTTP/1.1 connection closed")?;
                let request = Request::get("/")
                    .header(header::HOST, BENCH_AUTHORITY)
                    .body(Empty::new())?;
                sender.send_request(request).await?
            }
            Sender::Http2(sender) => {
                sender.ready().await.context("HTTP/2 connection closed")?;
                let request =
                    Request::get(format!("http://{BENCH_AUTHORITY}/")).body(Empty::new())?;
                sender.send_request(request).await?
            }
        };
        let status = response.status();
        let why = response
            .headers()
            .get("plexus-error")
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        response
            .into_body()
            .collect()
            .await
            .context("reading the response body")?;
        if !status.is_success() {
            bail!(
                "answered {status} (plexus-error: {})",
                why.as_deref().unwrap_or("none")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::upstream;

    /// The bench upstream, served by the test's runtime.
    async fn upstream() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(upstream::serve(listener));
        addr
    }

    fn window_from_now(warmup: Duration, measured: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + measured,
        }
    }

    async fn closed_loop_against_upstream(protocol: Protocol) {
        let target = upstream().await;
        let load = Load::connect(target, protocol, 4).await.unwrap();
        let window = window_from_now(Duration::from_millis(50), Duration::from_millis(300));
        let outcome = timeout(
            Duration::from_secs(20),
            load.run(Pacing::ClosedLoop, window, 1_000_000),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(outcome.errors, 0, "{:?}", outcome.first_error);
        assert!(!outcome.capped);
        // Even a debug build on a loaded machine does far more than this in 300 ms.
        assert!(
            outcome.completed() >= 20,
            "only {} requests",
            outcome.completed()
        );
        let latency = outcome.latency.summary();
        assert!(
            latency.p50_us > 0.0 && latency.p50_us <= latency.p99_us,
            "{latency:?}"
        );
    }

    #[tokio::test]
    async fn closed_loop_http1() {
        closed_loop_against_upstream(Protocol::H1).await;
    }

    #[tokio::test]
    async fn closed_loop_http2() {
        closed_loop_against_upstream(Protocol::H2).await;
    }

    #[tokio::test]
    async fn the_request_cap_stops_the_run_before_the_window_ends() {
        let target = upstream().await;
        let load = Load::connect(target, Protocol::H1, 3).await.unwrap();
        let window = window_from_now(Duration::ZERO, Duration::from_secs(60));
        let outcome = timeout(
            Duration::from_secs(20),
            load.run(Pacing::ClosedLoop, window, 100),
        )
        .await
        .expect("the cap, not the 60 s window, must end the run")
        .unwrap();
        assert_eq!(outcome.completed() + outcome.errors, 100);
        assert!(outcome.capped);
    }

    #[tokio::test]
    async fn fixed_rate_sends_at_the_rate() {
        let target = upstream().await;
        let load = Load::connect(target, Protocol::H1, 2).await.unwrap();
        let window = window_from_now(Duration::from_millis(100), Duration::from_millis(500));
        let pacing = Pacing::FixedRate {
            requests_per_sec: 200.0,
        };
        let outcome = timeout(Duration::from_secs(20), load.run(pacing, window, 1_000_000))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome.errors, 0, "{:?}", outcome.first_error);
        // 200 req/s over 0.5 s is 100 requests due in the window; sending stops at its end,
        // so a slow machine may fall a little short, never above.
        let completed = outcome.completed();
        assert!((60..=101).contains(&completed), "{completed} requests");
    }

    #[tokio::test]
    async fn an_unreachable_target_fails_to_connect() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let error = Load::connect(closed, Protocol::H1, 1).await.err().unwrap();
        assert!(
            format!("{error:#}").contains(&closed.to_string()),
            "{error:#}"
        );
    }

    #[test]
    fn request_budget_is_shared_exactly() {
        let shares: Vec<u64> = (0..16).map(|index| share(100_000, 16, index)).collect();
        assert_eq!(shares.iter().sum::<u64>(), 100_000);
        let shares: Vec<u64> = (0..3).map(|index| share(10, 3, index)).collect();
        assert_eq!(shares, [4, 3, 3]);
    }
}
