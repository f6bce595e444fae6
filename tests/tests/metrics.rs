//! `--metrics ADDR`: a session's rules and an observation's syscalls scraped as Prometheus text,
//! read by a Prometheus parser (prometheus-parse), and the numbers equal to the summaries'.

use std::{
    io::{BufRead, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use chaos_tests::*;
use prometheus_parse::{Scrape, Value as PromValue};

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    l.local_addr().expect("addr").to_string()
}

/// GET http://ADDR/metrics, parsed.
fn scrape(addr: &str) -> Scrape {
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: chaos\r\n\r\n").expect("request");
    let mut resp = String::new();
    c.read_to_string(&mut resp).expect("response");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not HTTP: {resp:?}"));
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    Scrape::parse(body.as_bytes().lines()).unwrap_or_else(|e| panic!("not Prometheus text ({e}): {body}"))
}

/// The value of `metric` with these labels (all of them matching), if present.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples.iter().find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))).map(|x| match &x.value {
        PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => *v,
        PromValue::Histogram(h) => h.last().map_or(0.0, |b| b.count),
        PromValue::Summary(_) => f64::NAN,
    })
}

/// Scrapes until `metric` reaches `want` (the exporter publishes every second).
fn scrape_until(addr: &str, metric: &str, labels: &[(&str, &str)], want: f64) -> Scrape {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(addr);
        if value(&s, metric, labels).is_some_and(|v| v >= want) || Instant::now() > end {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_session_serves_its_rules_counters_as_prometheus_metrics() {
    let sb = Sandbox::new();
    let addr = free_addr();
    let mut args = vec!["net".to_string(), "drop".into()];
    args.extend(sb.target_args());
    args.extend(["--percent", "100", "--proto", "udp", "--for", "60s", "--json", "--metrics", &addr].map(String::from));
    let chaos = start_chaos(&args);
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", "0.0.0.0:5411", "--idle", "500ms"]);
    sink.ready();
    sb.spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:5411"), "--count", "300", "--rate", "2000"]).json(Duration::from_secs(30));
    sink.close_stdin();
    let got = sink.json(Duration::from_secs(30));
    let rule = [("rule", "0"), ("kind", "net.drop")];
    let s = scrape_until(&addr, "chaos_rule_injected_total", &rule, 300.0);
    let injected = value(&s, "chaos_rule_injected_total", &rule).expect("chaos_rule_injected_total for rule 0");
    assert_eq!(injected, 300.0, "every datagram dropped and counted: {:?}", s.samples);
    assert_eq!(value(&s, "chaos_session_faults_active", &[]), Some(1.0));
    let left = value(&s, "chaos_session_seconds_left", &[]).expect("seconds left");
    assert!(left > 0.0 && left <= 60.0, "{left}");
    assert_eq!(got["received"], 0, "the sink saw none: {got}");
    // The summary read after detaching says the same.
    let summary = stop_chaos(chaos);
    assert_eq!(counter(&summary, 0, "injected") as f64, injected, "{summary}");
    let session = summary["session"].as_str().expect("session id");
    assert!(s.samples.iter().any(|x| x.labels.get("session") == Some(session)), "labelled with the session id");
}

#[test]
fn observe_serves_syscall_counts_and_latency_histograms() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let addr = free_addr();
    let observe = start_observe(&["--cgroup", &cg, "--json", "--interval", "200ms", "--metrics", &addr]);
    let dir = std::env::temp_dir();
    let here = dir.to_str().expect("utf-8");
    for place in [Place::Target, Place::Bystander] {
        let mut p = sb.spawn(place, &["syscall-loop", "--wait", "--same-thread", "--call", "getppid", "--path", here, "--count", "700"]);
        p.ready();
        p.go();
        p.json(Duration::from_secs(60));
    }
    let getppid = [("cgroup", cg.as_str()), ("syscall", "getppid")];
    let s = scrape_until(&addr, "chaos_syscall_calls_total", &getppid, 700.0);
    assert_eq!(value(&s, "chaos_syscall_calls_total", &getppid), Some(700.0), "the target's calls, not the bystander's");
    let hist = s.samples.iter().find(|x| x.metric == "chaos_syscall_duration_seconds" && getppid.iter().all(|(k, v)| x.labels.get(k) == Some(*v))).expect("a latency histogram");
    let PromValue::Histogram(buckets) = &hist.value else { panic!("not a histogram: {:?}", hist.value) };
    assert!(buckets.windows(2).all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count), "cumulative buckets");
    assert_eq!(buckets.last().map(|b| b.count), Some(700.0), "every call in a bucket");
    let summary = stop_chaos(observe);
    let row = summary["syscalls"].as_array().and_then(|r| r.iter().find(|r| r["syscall"] == "getppid")).expect("getppid row");
    assert_eq!(row["calls"], 700, "{summary}");
}

#[test]
fn a_taken_metrics_address_is_a_usage_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("addr").to_string();
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let (code, _, err) = run_chaos(&["observe", "--cgroup", &cg, "--for", "1s", "--metrics", &addr]);
    assert_eq!((code, err.len()), (2, 1), "{err:?}");
    assert!(err[0].contains("--metrics") && err[0].contains(&addr), "{err:?}");
}
