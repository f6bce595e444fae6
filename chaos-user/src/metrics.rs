//! `--metrics ADDR`: what a long-running command sees, in the Prometheus text format, served on
//! `http://ADDR/metrics` from a thread of its own. The command's loop publishes a snapshot of the
//! kernel's counters every tick; a scrape returns the latest one.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use chaos_common::observe::{CallStats, NetStats};
use prometheus::{
    Encoder, TextEncoder,
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::{
    error::Result,
    faults::sys::errno_name,
    observe::Counts,
    target::Cgroup,
    usage,
};

/// The metrics of one snapshot, by family.
#[derive(Default)]
pub struct Families(Vec<MetricFamily>);

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(n, v)| {
            let mut l = LabelPair::default();
            l.set_name(n.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

impl Families {
    fn family(&mut self, name: &str, help: &str, kind: MetricType) -> &mut MetricFamily {
        if let Some(i) = self.0.iter().position(|f| f.name() == name) {
            return &mut self.0[i];
        }
        let mut f = MetricFamily::default();
        f.set_name(name.to_string());
        f.set_help(help.to_string());
        f.set_field_type(kind);
        self.0.push(f);
        self.0.last_mut().expect("just pushed")
    }

    /// Adds one labelled metric to its family (made on first use).
    fn push(&mut self, name: &str, help: &str, kind: MetricType, pairs: &[(&str, &str)], fill: impl FnOnce(&mut Metric)) {
        let mut m = Metric::default();
        m.set_label(labels(pairs));
        fill(&mut m);
        self.family(name, help, kind).mut_metric().push(m);
    }

    pub fn counter(&mut self, name: &str, help: &str, pairs: &[(&str, &str)], value: f64) {
        let mut c = Counter::default();
        c.set_value(value);
        self.push(name, help, MetricType::COUNTER, pairs, |m| m.set_counter(c));
    }

    pub fn gauge(&mut self, name: &str, help: &str, pairs: &[(&str, &str)], value: f64) {
        let mut g = Gauge::default();
        g.set_value(value);
        self.push(name, help, MetricType::GAUGE, pairs, |m| m.set_gauge(g));
    }

    /// A histogram from the kernel's log2 buckets: bucket b holds calls of [2^(b-1), 2^b) ns.
    fn latency(&mut self, name: &str, help: &str, pairs: &[(&str, &str)], s: &CallStats) {
        let mut h = Histogram::default();
        h.set_sample_count(s.calls);
        h.set_sample_sum(s.total_ns as f64 / 1e9);
        let mut cumulative = 0;
        let mut buckets = Vec::new();
        for (b, n) in s.hist.iter().enumerate() {
            cumulative += n;
            let mut bucket = Bucket::default();
            bucket.set_upper_bound((1u64 << b) as f64 / 1e9);
            bucket.set_cumulative_count(cumulative);
            buckets.push(bucket);
        }
        h.set_bucket(buckets);
        self.push(name, help, MetricType::HISTOGRAM, pairs, |m| m.set_histogram(h));
    }

    /// The observed cgroups' syscalls and traffic: `cgroups[slot]` names each slot.
    pub fn observed(&mut self, counts: &Counts, cgroups: &[Cgroup]) {
        let cg = |slot: u32| cgroups.get(slot as usize).map_or_else(|| slot.to_string(), |c| c.path.display().to_string());
        let name = |nr: u32| syscalls::Sysno::new(nr as usize).map_or_else(|| format!("syscall_{nr}"), |s| s.name().to_string());
        for (k, s) in &counts.calls {
            let (cgroup, syscall) = (cg(k.slot), name(k.nr));
            let l = [("cgroup", cgroup.as_str()), ("syscall", syscall.as_str())];
            self.counter("chaos_syscall_calls_total", "Syscalls the observed cgroup made (finished calls).", &l, s.calls as f64);
            self.latency("chaos_syscall_duration_seconds", "Time in each syscall, from entry to exit (log2 buckets).", &l, s);
        }
        for (k, n) in &counts.errors {
            let (cgroup, syscall) = (cg(k.slot), name(k.nr));
            let errno = errno_name(k.errno as i32).unwrap_or_else(|| k.errno.to_string());
            let l = [("cgroup", cgroup.as_str()), ("syscall", syscall.as_str()), ("errno", errno.as_str())];
            self.counter("chaos_syscall_errors_total", "Syscalls that returned an error, by errno.", &l, *n as f64);
        }
        for (slot, n) in &counts.net {
            let cgroup = cg(*slot);
            let NetStats { packets_in, bytes_in, packets_out, bytes_out, retransmits } = *n;
            for (dir, packets, bytes) in [("in", packets_in, bytes_in), ("out", packets_out, bytes_out)] {
                let l = [("cgroup", cgroup.as_str()), ("direction", dir)];
                self.counter("chaos_cgroup_packets_total", "Packets of the observed cgroup.", &l, packets as f64);
                self.counter("chaos_cgroup_bytes_total", "Bytes of the observed cgroup's packets.", &l, bytes as f64);
            }
            self.counter("chaos_cgroup_tcp_retransmits_total", "TCP segments the observed cgroup sent again.", &[("cgroup", cgroup.as_str())], retransmits as f64);
        }
    }

    /// The text exposition.
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on a malformed family, which this module never builds.
        let _ = TextEncoder::new().encode(&self.0, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The `/metrics` endpoint; stops serving when dropped.
pub struct Exporter {
    latest: Arc<Mutex<String>>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Serves on `addr` (port 0: any free port, see [`Exporter::addr`]).
    pub fn serve(addr: SocketAddr) -> Result<Exporter> {
        let server = Arc::new(tiny_http::Server::http(addr).map_err(|e| usage!("--metrics {addr}: cannot listen there ({e}); give a free address such as 127.0.0.1:9464"))?);
        let latest = Arc::new(Mutex::new(String::new()));
        let (s, l) = (server.clone(), latest.clone());
        let thread = std::thread::spawn(move || {
            // Ends when `unblock` is called on drop.
            for req in s.incoming_requests() {
                let resp = if req.url() == "/metrics" || req.url().starts_with("/metrics?") {
                    let body = l.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let header = tiny_http::Header::from_bytes("Content-Type", "text/plain; version=0.0.4; charset=utf-8").expect("a valid header");
                    tiny_http::Response::from_string(body).with_header(header)
                } else {
                    tiny_http::Response::from_string("chaos serves /metrics\n").with_status_code(404)
                };
                let _ = req.respond(resp);
            }
        });
        Ok(Exporter { latest, server, thread: Some(thread) })
    }

    /// Where it listens.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.server.server_addr().to_ip()
    }

    pub fn publish(&self, families: &Families) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = families.text();
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_encode_counters_gauges_and_log2_histograms() {
        let mut f = Families::default();
        f.counter("chaos_rule_injected_total", "Injected.", &[("rule", "0")], 5.0);
        f.counter("chaos_rule_injected_total", "Injected.", &[("rule", "1")], 7.0);
        f.gauge("chaos_session_seconds_left", "Left.", &[], 3.5);
        let mut s = CallStats { calls: 3, total_ns: 3000, ..Default::default() };
        s.hist[10] = 2;
        s.hist[11] = 1;
        f.latency("chaos_syscall_duration_seconds", "Time.", &[("syscall", "read")], &s);
        let text = f.text();
        assert!(text.contains("# TYPE chaos_rule_injected_total counter"), "{text}");
        assert!(text.contains("chaos_rule_injected_total{rule=\"1\"} 7"), "{text}");
        assert!(text.contains("chaos_session_seconds_left 3.5"), "{text}");
        assert!(text.contains("chaos_syscall_duration_seconds_bucket{syscall=\"read\",le=\"0.000001024\"} 2"), "{text}");
        assert!(text.contains("chaos_syscall_duration_seconds_count{syscall=\"read\"} 3"), "{text}");
        assert_eq!(text.matches("# TYPE chaos_rule_injected_total").count(), 1, "one family per name");
    }

    /// Every metric the Grafana dashboard queries is one chaos serves (by its name in the code
    /// that publishes it).
    #[test]
    fn the_dashboard_queries_only_metrics_chaos_serves() {
        let dashboard: serde_json::Value = serde_json::from_str(include_str!("../../dashboards/chaos.json")).expect("the dashboard is JSON");
        let sources = [include_str!("metrics.rs"), include_str!("session/mod.rs"), include_str!("experiment/runner.rs")].concat();
        let mut exprs = Vec::new();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                            _ => walk(v, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        walk(&dashboard, &mut exprs);
        assert!(exprs.len() >= 12, "{exprs:?}");
        let mut names = 0;
        for e in &exprs {
            for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("chaos_")) {
                let name = ["_bucket", "_count", "_sum"].iter().fold(word, |w, suffix| w.strip_suffix(suffix).unwrap_or(w));
                assert!(sources.contains(&format!("\"{name}\"")), "the dashboard queries {word}, which chaos does not serve");
                names += 1;
            }
        }
        assert!(names >= 12);
    }
}
