//! The demo's traces: collected by plexus-traces' in-process OTLP receiver, and the few
//! worth showing picked from them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use plexus_traces::{Receiver, SpanKind, Trace, render_waterfall};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::traffic::Outcome;

/// Traces kept at most: the demo sends about a thousand requests.
const MAX_TRACES: usize = 20_000;

/// Width of the timeline column of a printed waterfall.
pub const WATERFALL_WIDTH: usize = 40;

/// Finished traces by trace id, filled by a background task.
#[derive(Clone, Default)]
pub struct TraceStore {
    traces: Arc<Mutex<HashMap<String, Trace>>>,
    /// Print each trace as it arrives (`--keep-running`, after the summary).
    live: Arc<AtomicBool>,
}

impl TraceStore {
    /// Moves every finished trace of `receiver` into the store until the task is aborted.
    pub fn collect_from(&self, mut receiver: Receiver) -> JoinHandle<()> {
        let traces = self.traces.clone();
        let live = self.live.clone();
        tokio::spawn(async move {
            while let Some(trace) = receiver.next_trace().await {
                if live.load(Ordering::Relaxed) {
                    println!("\ntrace {}", trace.trace_id);
                    print!("{}", render_waterfall(&trace, WATERFALL_WIDTH));
                }
                let mut traces = traces.lock().await;
                if traces.len() < MAX_TRACES {
                    traces.insert(trace.trace_id.clone(), trace);
                }
            }
        })
    }

    /// From now on, print every trace as it arrives.
    pub fn print_live(&self) {
        self.live.store(true, Ordering::Relaxed);
    }

    pub async fn len(&self) -> usize {
        self.traces.lock().await.len()
    }

    /// Waits (at most `within`) until the traces of the requests worth showing arrived.
    pub async fn wait_for(&self, outcomes: &[Outcome], expect_retried: bool, within: Duration) {
        let deadline = Instant::now() + within;
        let wanted = worth_showing(outcomes);
        while Instant::now() < deadline {
            {
                let traces = self.traces.lock().await;
                let have_wanted = wanted.iter().all(|id| traces.contains_key(*id));
                let have_retried = !expect_retried || traces.values().any(was_retried);
                if have_wanted && have_retried {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn verified_servers(&self) -> BTreeMap<String, u64> {
        verified_servers(self.traces.lock().await.values())
    }

    /// Up to `n` traces with a caption each: a retried request, a typical one, the slowest.
    pub async fn pick(&self, outcomes: &[Outcome], n: usize) -> Vec<(String, Trace)> {
        let traces = self.traces.lock().await;
        pick(&traces, outcomes, n)
            .into_iter()
            .map(|(caption, trace)| (caption, trace.clone()))
            .collect()
    }
}

/// The server identities the client side checked, with how many attempts did: the
/// `plexus.server.identity` of client spans (an mTLS hop, seen from its caller).
pub fn verified_servers<'a>(traces: impl IntoIterator<Item = &'a Trace>) -> BTreeMap<String, u64> {
    let mut servers = BTreeMap::new();
    for span in traces.into_iter().flat_map(|t| &t.spans) {
        if span.kind != SpanKind::Client {
            continue;
        }
        if let Some(server) = span.attr_str("plexus.server.identity") {
            *servers
                .entry(format!("{} -> {server}", span.service))
                .or_default() += 1;
        }
    }
    servers
}

/// Whether a span of the trace records a retry (attributes of crates/proxy's telemetry,
/// as plexus-traces' waterfall prints them).
pub fn was_retried(trace: &Trace) -> bool {
    trace.spans.iter().any(|span| {
        span.attr_i64("plexus.retry.count").is_some_and(|n| n > 0)
            || span.attr_i64("plexus.retry.attempt").is_some_and(|n| n > 1)
    })
}

/// The trace ids of a typical and of the slowest successful request.
fn worth_showing(outcomes: &[Outcome]) -> Vec<&str> {
    let mut ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.succeeded()).collect();
    ok.sort_by_key(|o| o.latency);
    let mut ids = Vec::new();
    if let Some(typical) = ok.get(ok.len() / 2) {
        ids.push(typical.trace_id.as_str());
    }
    if let Some(slowest) = ok.last() {
        ids.push(slowest.trace_id.as_str());
    }
    ids
}

fn pick<'a>(
    traces: &'a HashMap<String, Trace>,
    outcomes: &[Outcome],
    n: usize,
) -> Vec<(String, &'a Trace)> {
    let mut picked: Vec<(String, &Trace)> = Vec::new();
    let mut add = |caption: String, trace: &'a Trace| {
        if picked.len() < n && !picked.iter().any(|(_, t)| t.trace_id == trace.trace_id) {
            picked.push((caption, trace));
        }
    };
    // A request the app saw succeed although an attempt failed: the retry at work.
    let retried = outcomes
        .iter()
        .filter(|o| o.succeeded())
        .filter_map(|o| traces.get(&o.trace_id))
        .find(|t| was_retried(t))
        .or_else(|| {
            let mut any: Vec<&Trace> = traces.values().filter(|t| was_retried(t)).collect();
            any.sort_by(|a, b| a.trace_id.cmp(&b.trace_id));
            any.into_iter().next()
        });
    if let Some(trace) = retried {
        add(
            "a retried request (an attempt failed, the retry succeeded)".into(),
            trace,
        );
    }
    let captions = ["a typical request", "the slowest successful request"];
    for (caption, id) in captions.iter().zip(worth_showing(outcomes)) {
        if let Some(trace) = traces.get(id) {
            add((*caption).to_owned(), trace);
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_traces::{AttributeValue, Span, Status, StatusCode};

    fn span(id: &str, attributes: &[(&str, i64)]) -> Span {
        Span {
            span_id: id.into(),
            parent_span_id: None,
            service: "frontend".into(),
            name: "GET /".into(),
            kind: SpanKind::Client,
            start_unix_nano: 1,
            end_unix_nano: 2,
            status: Status {
                code: StatusCode::Unset,
                message: String::new(),
            },
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), AttributeValue::Int(*v)))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn trace(id: &str, spans: Vec<Span>) -> Trace {
        Trace {
            trace_id: id.into(),
            spans,
        }
    }

    fn ok(id: &str, ms: u64) -> Outcome {
        Outcome {
            trace_id: id.into(),
            latency: Duration::from_millis(ms),
            status: Some(200),
            plexus_error: None,
            answer: None,
        }
    }

    #[test]
    fn verified_servers_come_from_client_spans() {
        let with = |kind, attributes: &[(&str, &str)]| Span {
            kind,
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), AttributeValue::String((*v).to_owned())))
                .collect(),
            ..span("1", &[])
        };
        let server = "spiffe://td/ns/demo/sa/backend";
        let checked = [("plexus.server.identity", server)];
        let traces = [
            trace(
                "a",
                vec![
                    with(SpanKind::Client, &checked),
                    with(SpanKind::Server, &checked),
                ],
            ),
            trace("b", vec![with(SpanKind::Client, &[])]),
            trace("c", vec![with(SpanKind::Client, &checked)]),
        ];
        let servers = verified_servers(&traces);
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[&format!("frontend -> {server}")], 2);
    }

    #[test]
    fn a_retry_is_seen_in_the_attempt_or_count_attributes() {
        assert!(!was_retried(&trace(
            "a",
            vec![span("1", &[("plexus.retry.attempt", 1)])]
        )));
        assert!(was_retried(&trace(
            "a",
            vec![span("1", &[("plexus.retry.attempt", 2)])]
        )));
        assert!(was_retried(&trace(
            "a",
            vec![span("1", &[("plexus.retry.count", 1)])]
        )));
        assert!(!was_retried(&trace(
            "a",
            vec![span("1", &[("plexus.retry.count", 0)])]
        )));
    }

    #[test]
    fn picks_a_retried_a_typical_and_the_slowest_request_once_each() {
        let traces: HashMap<String, Trace> = [
            trace("fast", vec![span("1", &[])]),
            trace("mid", vec![span("2", &[])]),
            trace("slow", vec![span("3", &[])]),
            trace("retried", vec![span("4", &[("plexus.retry.count", 1)])]),
        ]
        .into_iter()
        .map(|t| (t.trace_id.clone(), t))
        .collect();
        let outcomes = [
            ok("fast", 1),
            ok("mid", 3),
            ok("retried", 4),
            ok("slow", 200),
        ];
        let picked: Vec<&str> = pick(&traces, &outcomes, 3)
            .into_iter()
            .map(|(_, t)| t.trace_id.as_str())
            .collect();
        // The median of four is the third ("retried"), already shown: not repeated.
        assert_eq!(picked, ["retried", "slow"]);

        let no_retry: HashMap<String, Trace> = traces
            .into_iter()
            .filter(|(id, _)| id != "retried")
            .collect();
        let picked: Vec<&str> = pick(&no_retry, &outcomes[..2], 3)
            .into_iter()
            .map(|(_, t)| t.trace_id.as_str())
            .collect();
        assert_eq!(picked, ["mid"]);
    }
}
