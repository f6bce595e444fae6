//! `--otlp URL`: the faults as OpenTelemetry spans, so they show on a service's trace timeline
//! (Jaeger, Zipkin, Tempo) beside the requests they hurt. One trace per session (or experiment): a
//! root span for the whole, a child per fault rule with its window, its target and its kernel
//! counters as attributes. Sent once at the end, by OTLP/HTTP in protobuf (`POST URL`, e.g.
//! `http://127.0.0.1:4318/v1/traces`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status},
};
use prost::Message;

use crate::report::Summary;

/// An attribute value.
pub enum Attr {
    Str(String),
    Int(i64),
    Float(f64),
}

fn kv(key: &str, v: Attr) -> KeyValue {
    let value = match v {
        Attr::Str(s) => any_value::Value::StringValue(s),
        Attr::Int(i) => any_value::Value::IntValue(i),
        Attr::Float(f) => any_value::Value::DoubleValue(f),
    };
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }) }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SAFETY: getrandom writes at most N bytes into the valid buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        let seed = unix_ns(SystemTime::now()) ^ u64::from(std::process::id());
        for (i, x) in b.iter_mut().enumerate() {
            *x = (seed >> ((i % 8) * 8)) as u8 ^ i as u8;
        }
    }
    b
}

/// The spans of one trace, built as the run goes.
pub struct Trace {
    trace_id: [u8; 16],
    root_id: [u8; 8],
    spans: Vec<Span>,
}

impl Trace {
    pub fn new() -> Trace {
        Trace { trace_id: random(), root_id: random(), spans: Vec::new() }
    }

    /// A child of the root span.
    pub fn child(&mut self, name: &str, start: SystemTime, end: SystemTime, attrs: Vec<(&str, Attr)>, events: Vec<(String, SystemTime)>) {
        self.spans.push(Span {
            trace_id: self.trace_id.to_vec(),
            span_id: random::<8>().to_vec(),
            parent_span_id: self.root_id.to_vec(),
            name: name.to_string(),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: unix_ns(start),
            end_time_unix_nano: unix_ns(end.max(start)),
            attributes: attrs.into_iter().map(|(k, v)| kv(k, v)).collect(),
            events: events.into_iter().map(|(name, t)| span::Event { time_unix_nano: unix_ns(t), name, ..Default::default() }).collect(),
            ..Default::default()
        });
    }

    /// A span per rule of a finished session, its window placed from the session's start.
    pub fn faults(&mut self, summary: &Summary, started: SystemTime, ended: SystemTime) {
        for r in &summary.rules {
            let start = started + Duration::from_secs_f64(r.after_s);
            let end = (start + Duration::from_secs_f64(r.for_s)).min(ended);
            if start >= ended {
                continue;
            }
            let attrs = vec![
                ("chaos.session", Attr::Str(summary.session.clone())),
                ("chaos.rule", Attr::Int(i64::from(r.rule))),
                ("chaos.kind", Attr::Str(r.kind.clone())),
                ("chaos.fault", Attr::Str(r.description.clone())),
                ("chaos.cgroup", Attr::Str(r.cgroup.clone())),
                ("chaos.seen", Attr::Int(r.seen as i64)),
                ("chaos.matched", Attr::Int(r.matched as i64)),
                ("chaos.injected", Attr::Int(r.injected as i64)),
                ("chaos.ended_by", Attr::Str(summary.ended_by.clone())),
            ];
            self.child(&format!("chaos {}", r.kind), start, end, attrs, vec![("fault start".into(), start), ("fault end".into(), end)]);
        }
    }

    /// Sends the trace with its root span (`name`, from `start` to `end`) to `url`.
    pub fn send(mut self, url: &str, name: &str, start: SystemTime, end: SystemTime, attrs: Vec<(&str, Attr)>, error: Option<String>) -> anyhow::Result<()> {
        self.spans.push(Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.root_id.to_vec(),
            name: name.to_string(),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: unix_ns(start),
            end_time_unix_nano: unix_ns(end.max(start)),
            attributes: attrs.into_iter().map(|(k, v)| kv(k, v)).collect(),
            status: error.map(|message| Status { message, code: status::StatusCode::Error as i32 }),
            ..Default::default()
        });
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: vec![kv("service.name", Attr::Str("chaos".into()))], ..Default::default() }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope { name: "chaos".into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }),
                    spans: self.spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
        agent.post(url).header("Content-Type", "application/x-protobuf").send(&request.encode_to_vec()[..]).map_err(|e| anyhow::anyhow!("--otlp {url}: {e}"))?;
        Ok(())
    }
}

impl Default for Trace {
    fn default() -> Trace {
        Trace::new()
    }
}

/// `--otlp URL`: an http:// URL (chaos sends plain OTLP/HTTP; a collector on the host or a sidecar
/// forwards it further).
pub fn parse_url(s: &str) -> std::result::Result<String, String> {
    if s.starts_with("http://") && s.len() > "http://".len() {
        Ok(s.to_string())
    } else {
        Err(format!("'{s}' is not an http:// URL; give the collector's OTLP/HTTP traces endpoint, such as http://127.0.0.1:4318/v1/traces"))
    }
}

/// Sends a finished session's faults; a failure is a warning (the faults themselves were fine).
pub fn send_session(url: &str, summary: &Summary, started: SystemTime, ended: SystemTime) {
    let mut trace = Trace::new();
    trace.faults(summary, started, ended);
    let attrs = vec![("chaos.session", Attr::Str(summary.session.clone())), ("chaos.ended_by", Attr::Str(summary.ended_by.clone())), ("chaos.elapsed_s", Attr::Float(summary.elapsed_s))];
    if let Err(e) = trace.send(url, &format!("chaos session {}", summary.session), started, ended, attrs, None) {
        log::warn!("sending the faults as spans failed: {e:#}");
        eprintln!("chaos: warning: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_encodes_its_spans_under_one_root() {
        let mut t = Trace::new();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        t.child("chaos net.drop", t0, t0 + Duration::from_secs(2), vec![("chaos.injected", Attr::Int(7))], vec![]);
        let root = t.root_id;
        assert_eq!(t.spans[0].parent_span_id, root.to_vec());
        assert_eq!(t.spans[0].end_time_unix_nano - t.spans[0].start_time_unix_nano, 2_000_000_000);
        assert!(parse_url("http://127.0.0.1:4318/v1/traces").is_ok());
        assert!(parse_url("https://collector:4318").is_err() && parse_url("127.0.0.1:4318").is_err());
    }
}
