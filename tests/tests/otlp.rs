//! `--otlp URL`: a session's faults arrive at an OTLP/HTTP receiver as spans (decoded with the
//! OpenTelemetry proto types): a root span for the session, a child per rule with its window and
//! the kernel's counters, equal to the summary's.

use std::time::Duration;

use chaos_tests::*;

#[test]
fn a_sessions_faults_arrive_as_spans_with_their_counters() {
    let sb = Sandbox::new();
    let receiver = OtlpReceiver::start();
    let mut args = vec!["net".to_string(), "drop".into()];
    args.extend(sb.target_args());
    args.extend(["--percent", "100", "--proto", "udp", "--for", "3s", "--json", "--otlp", &receiver.url].map(String::from));
    let chaos = start_chaos(&args);
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", "0.0.0.0:5421", "--idle", "500ms"]);
    sink.ready();
    sb.spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:5421"), "--count", "100", "--rate", "1000"]).json(Duration::from_secs(30));
    sink.close_stdin();
    sink.json(Duration::from_secs(30));
    let summary = chaos.json(Duration::from_secs(30));
    let request = receiver.wait(Duration::from_secs(10));

    let rs = &request.resource_spans[0];
    let service = rs.resource.as_ref().and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name")).and_then(|kv| kv.value.as_ref()?.value.clone());
    assert_eq!(format!("{service:?}"), "Some(StringValue(\"chaos\"))");
    let spans = &rs.scope_spans[0].spans;
    let session = summary["session"].as_str().expect("session id");
    let root = spans.iter().find(|s| s.name == format!("chaos session {session}")).unwrap_or_else(|| panic!("no root span: {spans:?}"));
    let fault = spans.iter().find(|s| s.name == "chaos net.drop").unwrap_or_else(|| panic!("no fault span: {spans:?}"));
    assert_eq!(fault.trace_id, root.trace_id);
    assert_eq!(fault.parent_span_id, root.span_id, "the fault is a child of the session");
    assert_eq!(span_attr(fault, "chaos.injected"), Some(counter(&summary, 0, "injected").to_string()));
    assert_eq!(span_attr(fault, "chaos.injected"), Some("100".into()), "every datagram dropped");
    assert_eq!(span_attr(fault, "chaos.cgroup").as_deref(), summary["rules"][0]["cgroup"].as_str());
    assert_eq!(span_attr(fault, "chaos.ended_by").as_deref(), Some("deadline"));
    let window = (fault.end_time_unix_nano - fault.start_time_unix_nano) as f64 / 1e9;
    assert!((2.5..=3.6).contains(&window), "the span covers the fault's 3 s window: {window:.2}s");
    assert!(root.start_time_unix_nano <= fault.start_time_unix_nano && fault.end_time_unix_nano <= root.end_time_unix_nano + 1_000_000);
}

#[test]
fn a_bad_otlp_url_is_a_usage_error() {
    let (code, _, err) = run_chaos(&["net", "drop", "--cgroup", "/x", "--percent", "1", "--otlp", "https://collector:4318"]);
    assert_eq!((code, err.len()), (2, 1), "{err:?}");
    assert!(err[0].contains("http:// URL"), "{err:?}");
}
