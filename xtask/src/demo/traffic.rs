//! The demo's client: a fixed request rate for a bounded count, a progress bar on
//! stderr, and what each request saw.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::app::FrontendAnswer;

/// A request that takes longer than this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in flight at most; beyond it the driver waits (it never piles up work).
const MAX_IN_FLIGHT: usize = 256;

/// What to send.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: SocketAddr,
    /// The `Host` of each request: the frontend Service.
    pub authority: String,
    pub rate_per_second: u32,
    pub duration: Duration,
}

impl Plan {
    /// The bound on the number of requests.
    pub fn count(&self) -> u64 {
        (f64::from(self.rate_per_second) * self.duration.as_secs_f64()).ceil() as u64
    }
}

/// What one request saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The trace the request started (its `traceparent`).
    pub trace_id: String,
    pub latency: Duration,
    /// `None`: no response (connection error or client timeout).
    pub status: Option<u16>,
    /// Set by the proxy when it answered instead of the app.
    pub plexus_error: Option<String>,
    /// The frontend's answer, when it was one.
    pub answer: Option<FrontendAnswer>,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Sends `plan.count()` requests at `plan.rate_per_second`, then waits for the last ones.
pub async fn drive(plan: &Plan) -> Vec<Outcome> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let total = plan.count();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let progress = tokio::spawn(show_progress(total, done.clone(), failed.clone()));

    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut requests = JoinSet::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(plan.rate_per_second.max(1)),
    ));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for _ in 0..total {
        ticks.tick().await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (client, plan) = (client.clone(), plan.clone());
        let (done, failed) = (done.clone(), failed.clone());
        requests.spawn(async move {
            let outcome = send_one(&client, &plan).await;
            if !outcome.succeeded() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            done.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            outcome
        });
    }
    // Every request carries its own timeout, so this ends.
    let mut outcomes = Vec::with_capacity(total as usize);
    while let Some(joined) = requests.join_next().await {
        if let Ok(outcome) = joined {
            outcomes.push(outcome);
        }
    }
    progress.abort();
    let _ = progress.await;
    finish_progress(total, &outcomes);
    outcomes
}

async fn send_one(client: &Client<HttpConnector, Full<Bytes>>, plan: &Plan) -> Outcome {
    let trace_id = format!("{:032x}", rand::random::<u128>());
    let traceparent = format!("00-{trace_id}-{:016x}-01", rand::random::<u64>() | 1);
    let started = Instant::now();
    let request = Request::get(format!("http://{}/", plan.target))
        .header(header::HOST, &plan.authority)
        .header("traceparent", traceparent)
        .body(Full::default());
    let mut outcome = Outcome {
        trace_id,
        latency: Duration::ZERO,
        status: None,
        plexus_error: None,
        answer: None,
    };
    let Ok(request) = request else {
        return outcome;
    };
    let exchange = async {
        let response = client.request(request).await.ok()?;
        let status = response.status().as_u16();
        let plexus_error = response
            .headers()
            .get("plexus-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, plexus_error, serde_json::from_slice(&body).ok()))
    };
    if let Ok(Some((status, plexus_error, answer))) =
        tokio::time::timeout(REQUEST_TIMEOUT, exchange).await
    {
        outcome.status = Some(status);
        outcome.plexus_error = plexus_error;
        outcome.answer = answer;
    }
    outcome.latency = started.elapsed();
    outcome
}

async fn show_progress(total: u64, done: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(5)
    };
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let line = progress_line(
            done.load(Ordering::Relaxed),
            total,
            failed.load(Ordering::Relaxed),
            started.elapsed(),
        );
        let mut err = std::io::stderr().lock();
        // A closed stderr is no reason to stop the demo.
        let _ = if tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

fn finish_progress(total: u64, outcomes: &[Outcome]) {
    let failed = outcomes.iter().filter(|o| !o.succeeded()).count() as u64;
    let line = progress_line(outcomes.len() as u64, total, failed, Duration::ZERO);
    let mut err = std::io::stderr().lock();
    let _ = if err.is_terminal() {
        writeln!(err, "\r\x1b[2K{line}")
    } else {
        writeln!(err, "{line}")
    };
}

const BAR_WIDTH: usize = 30;

/// `[=========>          ]  412/1000 requests, 1 failed, 8.2 s`
pub fn progress_line(done: u64, total: u64, failed: u64, elapsed: Duration) -> String {
    let filled = if total == 0 {
        BAR_WIDTH
    } else {
        ((done.min(total) as f64 / total as f64) * BAR_WIDTH as f64) as usize
    };
    let mut bar = "=".repeat(filled);
    if filled < BAR_WIDTH {
        bar.push('>');
        bar.push_str(&" ".repeat(BAR_WIDTH - filled - 1));
    }
    let mut line = format!("  [{bar}] {done:>5}/{total} requests, {failed} failed");
    if !elapsed.is_zero() {
        line.push_str(&format!(", {:.1} s", elapsed.as_secs_f64()));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_bounded_by_rate_times_duration() {
        let plan = Plan {
            target: "127.0.0.1:1".parse().expect("addr"),
            authority: "frontend:8080".into(),
            rate_per_second: 50,
            duration: Duration::from_secs(20),
        };
        assert_eq!(plan.count(), 1000);
        let short = Plan {
            duration: Duration::from_millis(1500),
            ..plan
        };
        assert_eq!(short.count(), 75);
    }

    #[test]
    fn the_bar_fills_with_progress() {
        let empty = progress_line(0, 100, 0, Duration::ZERO);
        assert_eq!(
            empty,
            format!("  [>{}]     0/100 requests, 0 failed", " ".repeat(29))
        );
        let half = progress_line(50, 100, 2, Duration::from_millis(8_250));
        assert!(
            half.starts_with(&format!("  [{}>", "=".repeat(15))),
            "{half}"
        );
        assert!(half.ends_with("50/100 requests, 2 failed, 8.2 s"), "{half}");
        let full = progress_line(100, 100, 0, Duration::ZERO);
        assert!(
            full.starts_with(&format!("  [{}]", "=".repeat(30))),
            "{full}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_failed_outcome_not_an_error() {
        // Bound then dropped: nothing listens on it any more.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("ephemeral port");
        let plan = Plan {
            target: addr,
            authority: "frontend:8080".into(),
            rate_per_second: 100,
            duration: Duration::from_millis(50),
        };
        let outcomes = tokio::time::timeout(Duration::from_secs(30), drive(&plan))
            .await
            .expect("bounded");
        assert_eq!(outcomes.len(), 5);
        assert!(
            outcomes
                .iter()
                .all(|o| o.status.is_none() && !o.succeeded())
        );
        assert!(outcomes.iter().all(|o| o.trace_id.len() == 32));
    }
}
