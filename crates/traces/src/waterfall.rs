//! The terminal view of a trace: one line per span, indented by parentage,
//! with a bar placing the span within the whole trace.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::model::{Span, StatusCode, Trace};

/// Attributes worth a glance, in the order they are printed. Status codes are
/// left out: the status column shows them.
const KEY_ATTRIBUTES: &[&str] = &[
    "http.request.method",
    "url.path",
    "http.route",
    "server.address",
    "network.peer.address",
    "rpc.service",
    "rpc.method",
    "plexus.route",
    "plexus.backend",
    "plexus.retry.attempt",
    "plexus.retry.reason",
    "plexus.retry.count",
    "plexus.client.identity",
    "plexus.server.identity",
];

const MAX_SERVICE_WIDTH: usize = 24;
const MAX_NAME_WIDTH: usize = 48;

/// Renders `trace` as text; `bar_width` is the width of the timeline column.
pub fn render_waterfall(trace: &Trace, bar_width: usize) -> String {
    let bar_width = bar_width.max(1);
    let t0 = trace.start_unix_nano();
    let total = trace.end_unix_nano().saturating_sub(t0).max(1);
    let depths = depths(trace);
    let labels: Vec<String> = trace
        .spans
        .iter()
        .map(|s| {
            let depth = depths.get(s.span_id.as_str()).copied().unwrap_or(0);
            truncate(&format!("{}{}", "  ".repeat(depth), s.name), MAX_NAME_WIDTH)
        })
        .collect();
    let services: Vec<String> = trace
        .spans
        .iter()
        .map(|s| {
            truncate(
                if s.service.is_empty() {
                    "?"
                } else {
                    &s.service
                },
                MAX_SERVICE_WIDTH,
            )
        })
        .collect();
    let service_width = services
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0);
    let name_width = labels.iter().map(|s| s.chars().count()).max().unwrap_or(0);

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "trace {}  {} span{}  {}",
        trace.trace_id,
        trace.spans.len(),
        if trace.spans.len() == 1 { "" } else { "s" },
        format_duration(total)
    );
    for ((span, label), service) in trace.spans.iter().zip(&labels).zip(&services) {
        let line = format!(
            "  {service:<service_width$}  {label:<name_width$}  |{bar}|  {duration:>9}  {status:<12}  {attributes}",
            bar = bar(span, t0, total, bar_width),
            duration = format_duration(span.duration_nanos()),
            status = status(span),
            attributes = attributes(span),
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// Depth of each span below the spans whose parent is not in the trace.
fn depths(trace: &Trace) -> HashMap<&str, usize> {
    // Spans come in tree order, so a parent's depth is known before its children's.
    let mut depths: HashMap<&str, usize> = HashMap::new();
    for span in &trace.spans {
        let depth = span
            .parent_span_id
            .as_deref()
            .and_then(|p| depths.get(p))
            .map_or(0, |d| d + 1);
        depths.insert(&span.span_id, depth);
    }
    depths
}

fn bar(span: &Span, t0: u64, total: u64, width: usize) -> String {
    let scale = |nanos: u64| (u128::from(nanos) * width as u128 / u128::from(total)) as usize;
    let offset = scale(span.start_unix_nano.saturating_sub(t0)).min(width - 1);
    // Every span gets at least one cell so that short spans stay visible.
    let len = scale(span.duration_nanos()).clamp(1, width - offset);
    format!(
        "{}{}{}",
        " ".repeat(offset),
        "█".repeat(len),
        " ".repeat(width - offset - len)
    )
}

fn status(span: &Span) -> String {
    let mut s = String::from(match span.status.code {
        StatusCode::Error => "ERROR",
        StatusCode::Ok | StatusCode::Unset => "OK",
    });
    if let Some(code) = span.attr("http.response.status_code") {
        let _ = write!(s, " {code}");
    }
    if let Some(code) = span.attr("rpc.grpc.status_code") {
        let _ = write!(s, " grpc={code}");
    }
    s
}

fn attributes(span: &Span) -> String {
    let mut parts: Vec<String> = KEY_ATTRIBUTES
        .iter()
        .filter_map(|key| Some(format!("{key}={}", span.attr(key)?)))
        .collect();
    if !span.status.message.is_empty() {
        parts.push(format!("error={:?}", span.status.message));
    }
    parts.join(" ")
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max - 1).collect();
    t.push('…');
    t
}

/// Human durations: `850 µs`, `12.3 ms`, `1.25 s`.
fn format_duration(nanos: u64) -> String {
    match nanos {
        0..1_000_000 => format!("{} µs", nanos / 1_000),
        1_000_000..1_000_000_000 => format!("{:.1} ms", nanos as f64 / 1e6),
        _ => format!("{:.2} s", nanos as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttributeValue, SpanKind, Status};

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000_000_000_000;

    fn span(
        id: &str,
        parent: Option<&str>,
        service: &str,
        name: &str,
        start: u64,
        end: u64,
    ) -> Span {
        Span {
            span_id: id.into(),
            parent_span_id: parent.map(Into::into),
            service: service.into(),
            name: name.into(),
            kind: SpanKind::Server,
            start_unix_nano: T0 + start,
            end_unix_nano: T0 + end,
            status: Status {
                code: StatusCode::Unset,
                message: String::new(),
            },
            attributes: Default::default(),
        }
    }

    fn with(mut span: Span, attributes: &[(&str, AttributeValue)]) -> Span {
        for (k, v) in attributes {
            span.attributes.insert((*k).to_owned(), v.clone());
        }
        span
    }

    fn s(v: &str) -> AttributeValue {
        AttributeValue::String(v.into())
    }

    /// A frontend calling a backend whose first attempt failed and was retried.
    fn retried_request() -> Trace {
        let mut failed = with(
            span(
                "0000000000000003",
                Some("0000000000000002"),
                "frontend",
                "attempt",
                2 * MS,
                6 * MS,
            ),
            &[
                ("http.response.status_code", AttributeValue::Int(503)),
                ("plexus.retry.attempt", AttributeValue::Int(1)),
                ("server.address", s("10.0.0.7:8080")),
            ],
        );
        failed.kind = SpanKind::Client;
        failed.status = Status {
            code: StatusCode::Error,
            message: "upstream reset".into(),
        };
        Trace::from_spans(
            "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            vec![
                with(
                    span(
                        "0000000000000001",
                        None,
                        "frontend",
                        "GET /api/items",
                        0,
                        20 * MS,
                    ),
                    &[
                        ("http.request.method", s("GET")),
                        ("url.path", s("/api/items")),
                        ("http.response.status_code", AttributeValue::Int(200)),
                    ],
                ),
                with(
                    span(
                        "0000000000000002",
                        Some("0000000000000001"),
                        "frontend",
                        "GET backend",
                        MS,
                        19 * MS,
                    ),
                    &[("plexus.retry.count", AttributeValue::Int(1))],
                ),
                failed,
                with(
                    span(
                        "0000000000000004",
                        Some("0000000000000002"),
                        "frontend",
                        "attempt",
                        8 * MS,
                        18 * MS,
                    ),
                    &[
                        ("http.response.status_code", AttributeValue::Int(200)),
                        ("plexus.retry.attempt", AttributeValue::Int(2)),
                        ("plexus.retry.reason", s("status 503")),
                    ],
                ),
                with(
                    span(
                        "0000000000000005",
                        Some("0000000000000004"),
                        "backend-v2",
                        "GET /items",
                        9 * MS,
                        17 * MS + 500_000,
                    ),
                    &[("rpc.grpc.status_code", AttributeValue::Int(0))],
                ),
            ],
        )
    }

    #[test]
    fn golden_waterfall() {
        let expected = "\
trace 4bf92f3577b34da6a3ce929d0e0e4736  5 spans  20.0 ms
  frontend    GET /api/items    |████████████████████|    20.0 ms  OK 200        http.request.method=GET url.path=/api/items
  frontend      GET backend     | ██████████████████ |    18.0 ms  OK            plexus.retry.count=1
  frontend        attempt       |  ████              |     4.0 ms  ERROR 503     server.address=10.0.0.7:8080 plexus.retry.attempt=1 error=\"upstream reset\"
  frontend        attempt       |        ██████████  |    10.0 ms  OK 200        plexus.retry.attempt=2 plexus.retry.reason=status 503
  backend-v2        GET /items  |         ████████   |     8.5 ms  OK grpc=0
";
        let got = render_waterfall(&retried_request(), 20);
        assert_eq!(got, expected, "got:\n{got}");
    }

    #[test]
    fn short_spans_stay_visible_and_bars_stay_in_bounds() {
        let trace = Trace::from_spans(
            "t".into(),
            vec![
                span("a", None, "svc", "root", 0, 1_000 * MS),
                span("b", Some("a"), "svc", "tiny", 1_000 * MS - 1, 1_000 * MS),
            ],
        );
        let out = render_waterfall(&trace, 10);
        let tiny = out.lines().find(|l| l.contains("tiny")).unwrap_or_default();
        assert!(tiny.contains("|         █|"), "{out}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(850_000), "850 µs");
        assert_eq!(format_duration(12_340_000), "12.3 ms");
        assert_eq!(format_duration(1_250_000_000), "1.25 s");
    }
}
