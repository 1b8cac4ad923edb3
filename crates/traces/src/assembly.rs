//! Groups received spans by trace id and decides when a trace is finished.
//!
//! OTLP has no "trace complete" signal, so a trace is judged finished when no
//! span of it arrived for a quiet period, or sooner once its root arrived and
//! every received span's parent is present (nothing visibly missing). Memory is
//! bounded: past the caps the oldest pending traces are evicted and counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::model::{ReceivedSpan, Span, Trace};

/// When a trace counts as finished, and how much may wait in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssemblyConfig {
    /// A trace with no new span for this long is finished.
    pub quiet_period: Duration,
    /// A trace whose root arrived and has no span with a missing parent is
    /// finished after no new span for this (shorter) time.
    pub root_settle: Duration,
    /// Pending (unfinished) traces kept at most; the oldest is evicted past it.
    pub max_pending_traces: usize,
    /// Spans of pending traces kept at most; the oldest traces are evicted past it.
    pub max_pending_spans: usize,
}

impl Default for AssemblyConfig {
    fn default() -> Self {
        AssemblyConfig {
            quiet_period: Duration::from_secs(2),
            root_settle: Duration::from_millis(300),
            max_pending_traces: 10_000,
            max_pending_spans: 200_000,
        }
    }
}

/// What the assembler dropped because of its memory caps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evictions {
    pub traces: u64,
    pub spans: u64,
}

#[derive(Debug)]
pub(crate) struct Assembly {
    config: AssemblyConfig,
    pending: HashMap<String, PendingTrace>,
    /// Pending trace ids by arrival sequence: the first entry is the oldest.
    arrival: BTreeMap<u64, String>,
    next_seq: u64,
    pending_spans: usize,
    evictions: Evictions,
}

#[derive(Debug)]
struct PendingTrace {
    last_span_at: Instant,
    span_ids: HashSet<String>,
    spans: Vec<Span>,
}

impl PendingTrace {
    /// The root arrived and no received span points at a parent we lack.
    fn looks_complete(&self) -> bool {
        let mut has_root = false;
        for span in &self.spans {
            match &span.parent_span_id {
                None => has_root = true,
                Some(parent) if !self.span_ids.contains(parent) => return false,
                Some(_) => {}
            }
        }
        has_root
    }
}

impl Assembly {
    pub(crate) fn new(config: AssemblyConfig) -> Self {
        Assembly {
            config,
            pending: HashMap::new(),
            arrival: BTreeMap::new(),
            next_seq: 0,
            pending_spans: 0,
            evictions: Evictions::default(),
        }
    }

    pub(crate) fn evictions(&self) -> Evictions {
        self.evictions
    }

    /// Adds spans; a span id already received for its trace (an exporter's
    /// retry) is ignored.
    pub(crate) fn add(&mut self, spans: Vec<ReceivedSpan>, now: Instant) {
        for ReceivedSpan { trace_id, span } in spans {
            if !self.pending.contains_key(&trace_id) {
                while self.pending.len() >= self.config.max_pending_traces.max(1) {
                    self.evict_oldest();
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.arrival.insert(seq, trace_id.clone());
                self.pending.insert(
                    trace_id.clone(),
                    PendingTrace {
                        last_span_at: now,
                        span_ids: HashSet::new(),
                        spans: Vec::new(),
                    },
                );
            }
            let Some(trace) = self.pending.get_mut(&trace_id) else {
                continue;
            };
            if !trace.span_ids.insert(span.span_id.clone()) {
                continue;
            }
            trace.spans.push(span);
            trace.last_span_at = now;
            self.pending_spans += 1;
            while self.pending_spans > self.config.max_pending_spans.max(1) {
                self.evict_oldest();
            }
        }
    }

    /// Removes and returns the traces finished at `now`, oldest first.
    pub(crate) fn take_finished(&mut self, now: Instant) -> Vec<Trace> {
        let finished: Vec<(u64, String)> = self
            .arrival
            .iter()
            .filter(|(_, id)| {
                self.pending.get(*id).is_some_and(|t| {
                    let quiet = now.saturating_duration_since(t.last_span_at);
                    quiet >= self.config.quiet_period
                        || (quiet >= self.config.root_settle && t.looks_complete())
                })
            })
            .map(|(seq, id)| (*seq, id.clone()))
            .collect();
        finished
            .into_iter()
            .filter_map(|(seq, id)| self.remove(seq, &id))
            .collect()
    }

    /// Removes and returns every pending trace, oldest first (used at exit).
    pub(crate) fn take_all(&mut self) -> Vec<Trace> {
        let all: Vec<(u64, String)> = std::mem::take(&mut self.arrival).into_iter().collect();
        all.into_iter()
            .filter_map(|(seq, id)| self.remove(seq, &id))
            .collect()
    }

    fn remove(&mut self, seq: u64, trace_id: &str) -> Option<Trace> {
        self.arrival.remove(&seq);
        let trace = self.pending.remove(trace_id)?;
        self.pending_spans -= trace.spans.len();
        Some(Trace::from_spans(trace_id.to_owned(), trace.spans))
    }

    fn evict_oldest(&mut self) {
        let Some((_, id)) = self.arrival.pop_first() else {
            return;
        };
        if let Some(trace) = self.pending.remove(&id) {
            self.pending_spans -= trace.spans.len();
            self.evictions.traces += 1;
            self.evictions.spans += trace.spans.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SpanKind, Status, StatusCode};

    fn span(trace: &str, id: &str, parent: Option<&str>) -> ReceivedSpan {
        ReceivedSpan {
            trace_id: trace.into(),
            span: Span {
                span_id: id.into(),
                parent_span_id: parent.map(Into::into),
                service: "svc".into(),
                name: id.into(),
                kind: SpanKind::Server,
                start_unix_nano: 1,
                end_unix_nano: 2,
                status: Status {
                    code: StatusCode::Unset,
                    message: String::new(),
                },
                attributes: Default::default(),
            },
        }
    }

    fn config() -> AssemblyConfig {
        AssemblyConfig {
            quiet_period: Duration::from_secs(2),
            root_settle: Duration::from_millis(300),
            max_pending_traces: 3,
            max_pending_spans: 5,
        }
    }

    #[test]
    fn a_trace_with_a_missing_parent_waits_for_the_quiet_period() {
        let t0 = Instant::now();
        let mut a = Assembly::new(config());
        a.add(
            vec![span("t", "root", None), span("t", "c", Some("gone"))],
            t0,
        );
        assert!(a.take_finished(t0 + Duration::from_secs(1)).is_empty());
        let done = a.take_finished(t0 + Duration::from_secs(2));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].spans.len(), 2);
    }

    #[test]
    fn a_complete_trace_finishes_after_the_settle_time() {
        let t0 = Instant::now();
        let mut a = Assembly::new(config());
        a.add(vec![span("t", "c", Some("root"))], t0);
        a.add(
            vec![span("t", "root", None)],
            t0 + Duration::from_millis(100),
        );
        assert!(a.take_finished(t0 + Duration::from_millis(300)).is_empty());
        let done = a.take_finished(t0 + Duration::from_millis(400));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].spans[0].span_id, "root");
    }

    #[test]
    fn a_new_span_resets_the_quiet_period() {
        let t0 = Instant::now();
        let mut a = Assembly::new(config());
        a.add(vec![span("t", "a", Some("x"))], t0);
        a.add(
            vec![span("t", "b", Some("x"))],
            t0 + Duration::from_millis(1500),
        );
        assert!(a.take_finished(t0 + Duration::from_millis(2500)).is_empty());
        assert_eq!(a.take_finished(t0 + Duration::from_millis(3500)).len(), 1);
    }

    #[test]
    fn duplicate_spans_are_ignored() {
        let t0 = Instant::now();
        let mut a = Assembly::new(config());
        a.add(vec![span("t", "root", None), span("t", "root", None)], t0);
        let done = a.take_finished(t0 + Duration::from_secs(5));
        assert_eq!(done[0].spans.len(), 1);
    }

    #[test]
    fn the_oldest_traces_are_evicted_past_the_trace_cap() {
        let t0 = Instant::now();
        let mut a = Assembly::new(config());
        for t in ["t1", "t2", "t3", "t4"] {
            a.add(vec![span(t, "root", None)], t0);
        }
        assert_eq!(
            a.evictions(),
            Evictions {
                traces: 1,
                spans: 1
            }
        );
        let ids: Vec<String> = a.take_all().into_iter().map(|t| t.trace_id).collect();
        assert_eq!(ids, ["t2", "t3", "t4"]);
    }

    #[test]
    fn the_oldest_traces_are_evicted_past_the_span_cap() {
        let t0 = Instant::now();
        let mut a = Assembly::new(config());
        a.add(
            vec![
                span("t1", "a", None),
                span("t1", "b", Some("a")),
                span("t1", "c", Some("a")),
            ],
            t0,
        );
        a.add(
            vec![
                span("t2", "a", None),
                span("t2", "b", Some("a")),
                span("t2", "c", Some("a")),
            ],
            t0,
        );
        assert_eq!(
            a.evictions(),
            Evictions {
                traces: 1,
                spans: 3
            }
        );
        let left = a.take_all();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].trace_id, "t2");
        assert_eq!(left[0].spans.len(), 3);
    }
}
