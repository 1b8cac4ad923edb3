//! A finished trace as `plexusctl traces` shows it, and the conversion from
//! OTLP's wire types.
//!
//! The serde shape of [`Trace`] is the stable `--json` schema: scripts and
//! tests read it, so fields are only ever added.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1 as otlp;
use serde::Serialize;

/// All spans of one trace id received before the trace was judged finished,
/// in tree order: each span is followed by its children, siblings by start time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trace {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    pub spans: Vec<Span>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    /// The resource's `service.name` (empty when the sender set none).
    pub service: String,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub status: Status,
    pub attributes: BTreeMap<String, AttributeValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub code: StatusCode,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusCode {
    Unset,
    Ok,
    Error,
}

/// An attribute value; serialised as the plain JSON value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AttributeValue {
    String(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(Vec<AttributeValue>),
    Map(BTreeMap<String, AttributeValue>),
}

impl Trace {
    /// The first span (in tree order) with this name.
    pub fn span(&self, name: &str) -> Option<&Span> {
        self.spans.iter().find(|s| s.name == name)
    }

    pub fn span_by_id(&self, span_id: &str) -> Option<&Span> {
        self.spans.iter().find(|s| s.span_id == span_id)
    }

    /// Direct children of `span_id`, by start time.
    pub fn children<'a>(&'a self, span_id: &'a str) -> impl Iterator<Item = &'a Span> + 'a {
        self.spans
            .iter()
            .filter(move |s| s.parent_span_id.as_deref() == Some(span_id))
    }

    /// Spans whose parent is absent from this trace: true roots, and spans whose
    /// parent lives in a process that did not report to us.
    pub fn tops(&self) -> impl Iterator<Item = &Span> {
        self.spans.iter().filter(|s| {
            s.parent_span_id
                .as_deref()
                .is_none_or(|p| self.span_by_id(p).is_none())
        })
    }

    pub fn start_unix_nano(&self) -> u64 {
        self.spans
            .iter()
            .map(|s| s.start_unix_nano)
            .min()
            .unwrap_or(0)
    }

    pub fn end_unix_nano(&self) -> u64 {
        self.spans
            .iter()
            .map(|s| s.end_unix_nano)
            .max()
            .unwrap_or(0)
    }

    /// Builds a trace from spans in any order, putting them in tree order.
    pub(crate) fn from_spans(trace_id: String, mut spans: Vec<Span>) -> Trace {
        spans.sort_by(|a, b| (a.start_unix_nano, &a.span_id).cmp(&(b.start_unix_nano, &b.span_id)));
        let index: HashMap<&str, usize> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.span_id.as_str(), i))
            .collect();
        let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut tops = Vec::new();
        for (i, span) in spans.iter().enumerate() {
            match span.parent_span_id.as_deref().and_then(|p| index.get(p)) {
                Some(&parent) if parent != i => children.entry(parent).or_default().push(i),
                _ => tops.push(i),
            }
        }
        let mut order = Vec::with_capacity(spans.len());
        let mut visited = vec![false; spans.len()];
        // Spans caught in a parent cycle have no top; they are appended as tops
        // so that nothing received is hidden.
        let all = tops.into_iter().chain(0..spans.len());
        for top in all {
            let mut stack = vec![top];
            while let Some(i) = stack.pop() {
                if std::mem::replace(&mut visited[i], true) {
                    continue;
                }
                order.push(i);
                if let Some(kids) = children.get(&i) {
                    stack.extend(kids.iter().rev());
                }
            }
        }
        let mut slots: Vec<Option<Span>> = spans.into_iter().map(Some).collect();
        Trace {
            trace_id,
            spans: order.into_iter().filter_map(|i| slots[i].take()).collect(),
        }
    }
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&AttributeValue> {
        self.attributes.get(key)
    }

    pub fn attr_str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key)? {
            AttributeValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn attr_bool(&self, key: &str) -> Option<bool> {
        match self.attributes.get(key)? {
            AttributeValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key)? {
            AttributeValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }
}

impl std::fmt::Display for AttributeValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttributeValue::String(s) => f.write_str(s),
            AttributeValue::Bool(b) => write!(f, "{b}"),
            AttributeValue::Int(i) => write!(f, "{i}"),
            AttributeValue::Double(d) => write!(f, "{d}"),
            AttributeValue::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            AttributeValue::Map(map) => {
                f.write_str("{")?;
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{k}={v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// A span received on the wire, with the trace it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReceivedSpan {
    pub trace_id: String,
    pub span: Span,
}

/// Why a span from the wire could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RejectedSpan {
    pub reason: String,
}

/// Flattens an OTLP export request into spans, rejecting (not failing on)
/// spans with malformed ids.
pub(crate) fn spans_from_otlp(
    resource_spans: Vec<otlp::ResourceSpans>,
) -> (Vec<ReceivedSpan>, Vec<RejectedSpan>) {
    let mut received = Vec::new();
    let mut rejected = Vec::new();
    for rs in resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .map(|v| attribute_value(v).to_string())
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
            match span_from_otlp(span, &service) {
                Ok(s) => received.push(s),
                Err(reason) => rejected.push(RejectedSpan { reason }),
            }
        }
    }
    (received, rejected)
}

fn span_from_otlp(span: otlp::Span, service: &str) -> Result<ReceivedSpan, String> {
    if span.trace_id.len() != 16 || span.trace_id.iter().all(|b| *b == 0) {
        return Err(format!(
            "span {:?}: trace_id must be 16 non-zero bytes, got {}",
            span.name,
            span.trace_id.len()
        ));
    }
    if span.span_id.len() != 8 || span.span_id.iter().all(|b| *b == 0) {
        return Err(format!(
            "span {:?}: span_id must be 8 non-zero bytes, got {}",
            span.name,
            span.span_id.len()
        ));
    }
    let parent_span_id = match span.parent_span_id.len() {
        0 => None,
        8 if span.parent_span_id.iter().all(|b| *b == 0) => None,
        8 => Some(hex(&span.parent_span_id)),
        n => {
            return Err(format!(
                "span {:?}: parent_span_id must be empty or 8 bytes, got {n}",
                span.name
            ));
        }
    };
    let kind = match otlp::span::SpanKind::try_from(span.kind) {
        Ok(otlp::span::SpanKind::Internal) => SpanKind::Internal,
        Ok(otlp::span::SpanKind::Server) => SpanKind::Server,
        Ok(otlp::span::SpanKind::Client) => SpanKind::Client,
        Ok(otlp::span::SpanKind::Producer) => SpanKind::Producer,
        Ok(otlp::span::SpanKind::Consumer) => SpanKind::Consumer,
        Ok(otlp::span::SpanKind::Unspecified) | Err(_) => SpanKind::Unspecified,
    };
    let status = match span.status {
        Some(s) => Status {
            code: match otlp::status::StatusCode::try_from(s.code) {
                Ok(otlp::status::StatusCode::Ok) => StatusCode::Ok,
                Ok(otlp::status::StatusCode::Error) => StatusCode::Error,
                Ok(otlp::status::StatusCode::Unset) | Err(_) => StatusCode::Unset,
            },
            message: s.message,
        },
        None => Status {
            code: StatusCode::Unset,
            message: String::new(),
        },
    };
    Ok(ReceivedSpan {
        trace_id: hex(&span.trace_id),
        span: Span {
            span_id: hex(&span.span_id),
            parent_span_id,
            service: service.to_owned(),
            name: span.name,
            kind,
            start_unix_nano: span.start_time_unix_nano,
            // A span that claims to end before it starts is drawn as zero-length.
            end_unix_nano: span.end_time_unix_nano.max(span.start_time_unix_nano),
            status,
            attributes: attributes(&span.attributes),
        },
    })
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, AttributeValue> {
    kvs.iter()
        .filter_map(|kv| Some((kv.key.clone(), attribute_value(kv.value.as_ref()?))))
        .collect()
}

fn attribute_value(v: &AnyValue) -> AttributeValue {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => AttributeValue::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => AttributeValue::Bool(*b),
        Some(any_value::Value::IntValue(i)) => AttributeValue::Int(*i),
        Some(any_value::Value::DoubleValue(d)) => AttributeValue::Double(*d),
        Some(any_value::Value::ArrayValue(a)) => {
            AttributeValue::Array(a.values.iter().map(attribute_value).collect())
        }
        Some(any_value::Value::KvlistValue(l)) => AttributeValue::Map(attributes(&l.values)),
        Some(any_value::Value::BytesValue(b)) => AttributeValue::String(hex(b)),
        // Reserved for future value kinds; shown as empty rather than rejected.
        Some(_) | None => AttributeValue::String(String::new()),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn otlp_span(trace: u8, span: u8, parent: Option<u8>, name: &str) -> otlp::Span {
        otlp::Span {
            trace_id: vec![trace; 16],
            span_id: vec![span; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: name.into(),
            kind: otlp::span::SpanKind::Server as i32,
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            attributes: vec![KeyValue {
                key: "http.response.status_code".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(200)),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn request(spans: Vec<otlp::Span>) -> Vec<otlp::ResourceSpans> {
        vec![otlp::ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("web".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![otlp::ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }]
    }

    #[test]
    fn converts_ids_service_and_attributes() {
        let (ok, rejected) = spans_from_otlp(request(vec![otlp_span(1, 2, Some(3), "GET")]));
        assert!(rejected.is_empty());
        let s = &ok[0];
        assert_eq!(s.trace_id, "01".repeat(16));
        assert_eq!(s.span.span_id, "0202020202020202");
        assert_eq!(s.span.parent_span_id.as_deref(), Some("0303030303030303"));
        assert_eq!(s.span.service, "web");
        assert_eq!(s.span.kind, SpanKind::Server);
        assert_eq!(s.span.attr_i64("http.response.status_code"), Some(200));
    }

    #[test]
    fn rejects_malformed_ids_without_failing_the_batch() {
        let mut bad = otlp_span(1, 2, None, "bad");
        bad.trace_id = vec![1, 2, 3];
        let mut zero = otlp_span(1, 0, None, "zero span id");
        zero.span_id = vec![0; 8];
        let (ok, rejected) = spans_from_otlp(request(vec![bad, zero, otlp_span(1, 4, None, "ok")]));
        assert_eq!(ok.len(), 1);
        assert_eq!(rejected.len(), 2);
        assert!(rejected[0].reason.contains("trace_id"), "{:?}", rejected[0]);
        assert!(rejected[1].reason.contains("span_id"), "{:?}", rejected[1]);
    }

    #[test]
    fn tree_order_puts_children_after_parents() {
        let (spans, _) = spans_from_otlp(request(vec![
            otlp_span(1, 3, Some(2), "grandchild"),
            otlp_span(1, 2, Some(1), "child"),
            otlp_span(1, 1, None, "root"),
        ]));
        let trace = Trace::from_spans(
            spans[0].trace_id.clone(),
            spans.into_iter().map(|s| s.span).collect(),
        );
        let names: Vec<&str> = trace.spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["root", "child", "grandchild"]);
    }

    #[test]
    fn a_parent_cycle_keeps_every_span() {
        let (spans, _) = spans_from_otlp(request(vec![
            otlp_span(1, 1, Some(2), "a"),
            otlp_span(1, 2, Some(1), "b"),
        ]));
        let trace = Trace::from_spans("t".into(), spans.into_iter().map(|s| s.span).collect());
        assert_eq!(trace.spans.len(), 2);
    }
}
