//! Trace context in HTTP headers: W3C `traceparent`/`tracestate` read and
//! written (through the OpenTelemetry SDK's propagator), B3 accepted as input
//! and rewritten in the form it came in so B3-only applications keep working.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;

const B3_SINGLE: &str = "b3";
const B3_TRACE_ID: &str = "x-b3-traceid";
const B3_SPAN_ID: &str = "x-b3-spanid";
const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";

/// Which header format carried the incoming context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    W3c,
    B3Single,
    B3Multi,
}

/// What the incoming headers say about the trace.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// No usable context: this hop starts a trace.
    None,
    /// Continue this remote parent.
    Parent {
        context: SpanContext,
        format: Format,
    },
    /// B3 with ids but no sampling decision: the receiver decides.
    Deferred {
        trace_id: TraceId,
        span_id: SpanId,
        format: Format,
    },
    /// A B3 sampling-only header (`b3: 0`): do not record, but no ids to continue.
    DenyWithoutIds { format: Format },
}

/// Reads the context from request headers: W3C first, then B3 single, then B3 multi.
/// Malformed headers are ignored (the hop starts a trace), never an error.
pub fn extract(headers: &HeaderMap) -> Incoming {
    let w3c = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let span = w3c.span();
    let context = span.span_context();
    if context.is_valid() {
        return Incoming::Parent {
            context: context.clone(),
            format: Format::W3c,
        };
    }
    if let Some(single) = header_str(headers, B3_SINGLE) {
        return parse_b3_single(single);
    }
    parse_b3_multi(headers)
}

/// Writes `context` as the outgoing trace context, in W3C form and, when the
/// incoming context was B3, in the same B3 form too.
pub fn inject(context: &SpanContext, b3: Option<Format>, headers: &mut HeaderMap) {
    let cx = Context::new().with_remote_span_context(context.clone());
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    let sampled = if context.is_sampled() { "1" } else { "0" };
    match b3 {
        Some(Format::B3Single) => {
            let value = format!("{}-{}-{sampled}", context.trace_id(), context.span_id());
            set(headers, B3_SINGLE, value);
        }
        Some(Format::B3Multi) => {
            set(headers, B3_TRACE_ID, context.trace_id().to_string());
            set(headers, B3_SPAN_ID, context.span_id().to_string());
            set(headers, B3_SAMPLED, sampled.to_owned());
            // The parent id and debug flag described the previous hop.
            headers.remove(B3_PARENT_SPAN_ID);
            headers.remove(B3_FLAGS);
        }
        Some(Format::W3c) | None => {}
    }
}

/// `{TraceId}-{SpanId}-{SamplingState}-{ParentSpanId}` with the last two
/// optional, or a lone sampling state.
fn parse_b3_single(value: &str) -> Incoming {
    let format = Format::B3Single;
    let parts: Vec<&str> = value.trim().split('-').collect();
    match parts[..] {
        ["0"] => Incoming::DenyWithoutIds { format },
        [trace, span] => b3_ids(trace, span, None, format),
        [trace, span, sampling] | [trace, span, sampling, _] => match b3_sampling(sampling) {
            Some(sampled) => b3_ids(trace, span, Some(sampled), format),
            None => Incoming::None,
        },
        // A lone `1`/`d` asks to sample but carries no ids: start a trace.
        _ => Incoming::None,
    }
}

fn parse_b3_multi(headers: &HeaderMap) -> Incoming {
    let format = Format::B3Multi;
    let debug = header_str(headers, B3_FLAGS).is_some_and(|f| f.trim() == "1");
    let sampled = if debug {
        Some(true)
    } else {
        match header_str(headers, B3_SAMPLED) {
            None => None,
            Some(s) => match s.trim() {
                "1" | "true" => Some(true),
                "0" | "false" => Some(false),
                _ => return Incoming::None,
            },
        }
    };
    match (
        header_str(headers, B3_TRACE_ID),
        header_str(headers, B3_SPAN_ID),
    ) {
        (Some(trace), Some(span)) => b3_ids(trace.trim(), span.trim(), sampled, format),
        (None, None) if sampled == Some(false) => Incoming::DenyWithoutIds { format },
        _ => Incoming::None,
    }
}

fn b3_sampling(s: &str) -> Option<bool> {
    match s {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

fn b3_ids(trace: &str, span: &str, sampled: Option<bool>, format: Format) -> Incoming {
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    // B3 allows 64-bit trace ids; they are the low half of a 128-bit one.
    let trace_ok = (trace.len() == 16 || trace.len() == 32) && lower_hex(trace);
    if !trace_ok || span.len() != 16 || !lower_hex(span) {
        return Incoming::None;
    }
    let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(trace), SpanId::from_hex(span)) else {
        return Incoming::None;
    };
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return Incoming::None;
    }
    match sampled {
        None => Incoming::Deferred {
            trace_id,
            span_id,
            format,
        },
        Some(sampled) => Incoming::Parent {
            context: SpanContext::new(
                trace_id,
                span_id,
                if sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                TraceState::default(),
            ),
            format,
        },
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn set(headers: &mut HeaderMap, name: &'static str, value: String) {
    // Hex digits and dashes are always a valid header value.
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        header_str(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(name) = HeaderName::try_from(key) else {
            return;
        };
        // The SDK writes an empty `tracestate` when there is none; send none,
        // and drop the stale one from the previous hop.
        if value.is_empty() {
            self.0.remove(name);
        } else if let Ok(value) = HeaderValue::try_from(value) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("test header value"));
        }
        h
    }

    fn parent(incoming: &Incoming) -> (SpanContext, Format) {
        match incoming {
            Incoming::Parent { context, format } => (context.clone(), *format),
            other => panic!("expected a parent, got {other:?}"),
        }
    }

    #[test]
    fn w3c_sampled_and_unsampled() {
        let h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", "vendor=opaque,other=x"),
        ]);
        let incoming = extract(&h);
        let (cx, format) = parent(&incoming);
        assert_eq!(format, Format::W3c);
        assert_eq!(cx.trace_id().to_string(), TRACE);
        assert_eq!(cx.span_id().to_string(), SPAN);
        assert!(cx.is_sampled());
        assert!(cx.is_remote());
        assert_eq!(cx.trace_state().get("vendor"), Some("opaque"));

        let h = headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))]);
        assert!(!parent(&extract(&h)).0.is_sampled());
    }

    #[test]
    fn invalid_w3c_is_ignored() {
        for bad in [
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            "garbage".to_owned(),
        ] {
            assert_eq!(
                extract(&headers(&[("traceparent", &bad)])),
                Incoming::None,
                "{bad}"
            );
        }
    }

    #[test]
    fn w3c_wins_over_b3() {
        let h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("b3", &format!("{}-{}-0", "a".repeat(32), "b".repeat(16))),
        ]);
        let (cx, format) = parent(&extract(&h));
        assert_eq!(format, Format::W3c);
        assert_eq!(cx.trace_id().to_string(), TRACE);
    }

    #[test]
    fn b3_single_variants() {
        let h = headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))]);
        let (cx, format) = parent(&extract(&h));
        assert_eq!(format, Format::B3Single);
        assert!(cx.is_sampled());

        let h = headers(&[("b3", &format!("{TRACE}-{SPAN}-d-{}", "1".repeat(16)))]);
        assert!(parent(&extract(&h)).0.is_sampled(), "debug means sampled");

        let h = headers(&[("b3", &format!("{TRACE}-{SPAN}-0"))]);
        assert!(!parent(&extract(&h)).0.is_sampled());

        // A 64-bit trace id is the low half of a 128-bit one.
        let h = headers(&[("b3", &format!("{}-{SPAN}-1", &TRACE[16..]))]);
        assert_eq!(
            parent(&extract(&h)).0.trace_id().to_string(),
            format!("{}{}", "0".repeat(16), &TRACE[16..])
        );

        let h = headers(&[("b3", &format!("{TRACE}-{SPAN}"))]);
        assert!(matches!(
            extract(&h),
            Incoming::Deferred {
                format: Format::B3Single,
                ..
            }
        ));

        assert_eq!(
            extract(&headers(&[("b3", "0")])),
            Incoming::DenyWithoutIds {
                format: Format::B3Single
            }
        );
        for bad in [
            "1",
            "zz-yy-1",
            &format!("{TRACE}-{SPAN}-x"),
            &format!("{TRACE}-short-1"),
        ] {
            assert_eq!(extract(&headers(&[("b3", bad)])), Incoming::None, "{bad}");
        }
    }

    #[test]
    fn b3_multi_variants() {
        let h = headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "1"),
        ]);
        let (cx, format) = parent(&extract(&h));
        assert_eq!(format, Format::B3Multi);
        assert!(cx.is_sampled());
        assert_eq!(cx.span_id().to_string(), SPAN);

        let h = headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "1"),
        ]);
        assert!(
            parent(&extract(&h)).0.is_sampled(),
            "the debug flag forces sampling"
        );

        let h = headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)]);
        assert!(matches!(
            extract(&h),
            Incoming::Deferred {
                format: Format::B3Multi,
                ..
            }
        ));

        let h = headers(&[("x-b3-sampled", "0")]);
        assert_eq!(
            extract(&h),
            Incoming::DenyWithoutIds {
                format: Format::B3Multi
            }
        );

        let h = headers(&[("x-b3-traceid", TRACE)]);
        assert_eq!(extract(&h), Incoming::None);
    }

    #[test]
    fn inject_rewrites_w3c_and_the_b3_form_that_came_in() {
        let cx = SpanContext::new(
            TraceId::from_hex(TRACE).expect("trace id"),
            SpanId::from_hex("1111111111111111").expect("span id"),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut h = headers(&[
            ("tracestate", "stale=1"),
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", "2222222222222222"),
            ("x-b3-sampled", "1"),
        ]);
        inject(&cx, Some(Format::B3Multi), &mut h);
        assert_eq!(
            h["traceparent"],
            format!("00-{TRACE}-1111111111111111-01").as_str()
        );
        assert!(
            !h.contains_key("tracestate"),
            "an empty tracestate is not sent"
        );
        assert_eq!(h["x-b3-spanid"], "1111111111111111");
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(!h.contains_key("x-b3-parentspanid"));

        let mut h = HeaderMap::new();
        let unsampled = SpanContext::new(
            cx.trace_id(),
            cx.span_id(),
            TraceFlags::default(),
            false,
            TraceState::from_key_value([("k", "v")]).expect("trace state"),
        );
        inject(&unsampled, Some(Format::B3Single), &mut h);
        assert_eq!(
            h["traceparent"],
            format!("00-{TRACE}-1111111111111111-00").as_str()
        );
        assert_eq!(h["tracestate"], "k=v");
        assert_eq!(h["b3"], format!("{TRACE}-1111111111111111-0").as_str());
    }
}

/// Properties of trace-context parsing: any header value is a context or
/// none, never a panic; a valid one comes back unchanged.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const TRACEPARENT: &str = "traceparent";

    /// Any printable value, or one that looks almost like a context.
    fn header_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,80}",
            "[0-9a-fA-F]{0,34}(-[0-9a-fA-Fdx]{0,34}){0,5}",
        ]
    }

    fn only(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
        headers
    }

    fn outgoing(incoming: &Incoming) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Incoming::Parent { context, format } = incoming {
            inject(context, Some(*format), &mut headers);
        }
        headers
    }

    proptest! {
        #![proptest_config(plexus_core::property::config())]

        #[test]
        fn any_header_value_is_a_context_or_none(
            name in prop::sample::select(vec![
                TRACEPARENT, B3_SINGLE, B3_TRACE_ID, B3_SPAN_ID, B3_SAMPLED, B3_FLAGS,
            ]),
            value in header_value(),
            trace in header_value(),
            span in header_value(),
        ) {
            let _ = extract(&only(name, &value));
            let mut multi = only(B3_TRACE_ID, &trace);
            multi.extend(only(B3_SPAN_ID, &span));
            multi.extend(only(name, &value));
            let _ = extract(&multi);
        }

        /// Parse then format gives the same `traceparent`, in lowercase.
        #[test]
        fn a_valid_traceparent_round_trips(
            trace in "[0-9a-f]{32}",
            span in "[0-9a-f]{16}",
            flags in prop::sample::select(vec!["00", "01"]),
        ) {
            prop_assume!(trace.bytes().any(|b| b != b'0') && span.bytes().any(|b| b != b'0'));
            let value = format!("00-{trace}-{span}-{flags}");
            let incoming = extract(&only(TRACEPARENT, &value));
            prop_assert!(matches!(incoming, Incoming::Parent { format: Format::W3c, .. }), "{:?}", incoming);
            let out = outgoing(&incoming);
            prop_assert_eq!(out.get(TRACEPARENT).and_then(|v| v.to_str().ok()), Some(value.as_str()));
        }

        /// Version `ff` is forbidden, and all-zero ids name no trace.
        #[test]
        fn an_invalid_traceparent_is_none(
            trace in "[0-9a-f]{32}",
            span in "[0-9a-f]{16}",
            which in 0..3u8,
        ) {
            let value = match which {
                0 => format!("ff-{trace}-{span}-01"),
                1 => format!("00-{}-{span}-01", "0".repeat(32)),
                _ => format!("00-{trace}-{}-01", "0".repeat(16)),
            };
            prop_assert_eq!(extract(&only(TRACEPARENT, &value)), Incoming::None);
        }

        /// A sampled B3 single header comes back in the same form, with the same ids.
        #[test]
        fn a_valid_b3_single_round_trips(
            trace in "[0-9a-f]{32}",
            span in "[0-9a-f]{16}",
            sampled in prop::sample::select(vec!["0", "1"]),
        ) {
            prop_assume!(trace.bytes().any(|b| b != b'0') && span.bytes().any(|b| b != b'0'));
            let value = format!("{trace}-{span}-{sampled}");
            let incoming = extract(&only(B3_SINGLE, &value));
            prop_assert!(matches!(incoming, Incoming::Parent { format: Format::B3Single, .. }), "{:?}", incoming);
            let out = outgoing(&incoming);
            prop_assert_eq!(out.get(B3_SINGLE).and_then(|v| v.to_str().ok()), Some(value.as_str()));
        }
    }
}
