//! W3C trace context across the queue (docs/operations.md "Traces"): the API stores the
//! `traceparent` of the trace a job was created in, and the worker
//! continues it, so one trace shows the request, the wait in the queue and
//! every edit and critique. Without an OpenTelemetry exporter installed the
//! spans go nowhere, but the stored context still links the job's logs
//! (`trace_id`) to the caller's trace.

use std::collections::HashMap;
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and stored field) name.
pub const TRACEPARENT: &str = "traceparent";

/// The trace id of a well-formed `traceparent`
/// (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all
/// zero); `None` for anything else.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    (parts.next().is_none()
        && hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && !zero(trace)
        && hex(parent, 16)
        && !zero(parent)
        && hex(flags, 2))
    .then_some(trace)
}

fn context_of(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.trim().to_string())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` a child of the span `traceparent` names; a missing or
/// malformed value leaves `span` a root (a new trace).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent.filter(|t| trace_id_of(t).is_some()) {
        let _ = span.set_parent(context_of(traceparent));
    }
}

/// The `traceparent` of `span` when it belongs to an exported trace;
/// `None` when no exporter is installed.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The trace a new job belongs to: that of `request_span` when it is
/// exported, else the caller's well-formed `traceparent` (kept for the
/// job's logs), else none.
pub fn job_traceparent(request_span: &tracing::Span, header: Option<&str>) -> Option<String> {
    traceparent_of(request_span).or_else(|| {
        header
            .filter(|v| trace_id_of(v).is_some())
            .map(str::to_owned)
    })
}

/// The trace id of `span` in hex, when it belongs to an exported trace.
pub fn trace_id_of_span(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Records a span that already ended (`queue.wait`: from when the job
/// became due to its claim) under the span `traceparent` names.
pub fn record_past_span(
    name: &'static str,
    traceparent: &str,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
) {
    if trace_id_of(traceparent).is_none() {
        return;
    }
    let tracer = opentelemetry::global::tracer("editthinker");
    let builder = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes);
    tracer
        .build_with_context(builder, &context_of(traceparent))
        .end_with_timestamp(end.max(start));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_have_a_trace_id() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id_of(good), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad}");
        }
    }
}
