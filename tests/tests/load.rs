//! Load held: packets at a high rate through a session of 64 rules, syscall loops on both cores
//! (through a cgroup hook and through the tp_btf tracepoint), and a session's memory under
//! constant traffic. Each checks exact accounting, not speed (the speed is `cargo xtask bench`'s):
//! every datagram sent is received, dropped by the rule, or dropped by the stack where the stack
//! counts it; every call the kernel failed is one the process saw fail; chaos's resident memory
//! does not grow with the traffic it judges.
//!
//! The memory run is bounded here (CHAOS_SOAK_SECS, 12 s unless set); `cargo xtask soak` runs it
//! for 10 minutes.

use std::time::{Duration, Instant};

use chaos_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

/// A device's packets dropped on the way out and on the way in (`ip -s link`), in a namespace.
fn device_drops(ns: &str, dev: &str) -> (u64, u64) {
    let out = std::process::Command::new("ip").args(["-n", ns, "-j", "-s", "link", "show", "dev", dev]).output().expect("ip -s link");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ip -j -s link: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let stats = &v[0]["stats64"];
    let n = |dir: &str| stats[dir]["dropped"].as_u64().unwrap_or_else(|| panic!("no stats64.{dir}.dropped in {v}"));
    (n("tx"), n("rx"))
}

#[test]
fn udp_at_a_high_rate_through_64_rules_is_accounted_for_datagram_by_datagram() {
    let sb = Sandbox::new();
    let netns = sb.netns_path(Place::Target).display().to_string();
    let cg = sb.cgroup.path.display().to_string();
    // 63 rules on other ports (each packet is checked against every rule the target has), then
    // the one that matches: 20% of port 7200.
    let mut text = String::new();
    for i in 0..63 {
        text += &format!("[[fault]]\nkind = \"net.drop\"\ncgroup = \"{cg}\"\nnetns = [\"{netns}\"]\nproto = \"udp\"\nport = {}\npercent = 100\n\n", 20000 + i);
    }
    text += &format!("[[fault]]\nkind = \"net.drop\"\ncgroup = \"{cg}\"\nnetns = [\"{netns}\"]\nproto = \"udp\"\nport = 7200\npercent = 20\n");
    let file = TempFile::new("chaos-load-", &text);
    let chaos = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);

    let before = (device_drops(&sb.client_ns, &sb.client_dev), device_drops(&sb.server_ns, &sb.server_dev));
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", "0.0.0.0:7200", "--idle", "1s"]);
    sink.ready();
    let n: u64 = 200_000;
    let sent = sb.spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:7200"), "--count", &n.to_string(), "--rate", "100000"]).json(T);
    sink.close_stdin();
    let got = sink.json(T);
    let after = (device_drops(&sb.client_ns, &sb.client_dev), device_drops(&sb.server_ns, &sb.server_dev));
    let summary = stop_chaos(chaos);

    let sent_ok = sent["sent"].as_u64().expect("sent");
    let received = got["received"].as_u64().expect("received");
    let by_rule = counter(&summary, 63, "dropped");
    let rcvbuf = got["rcvbuf_errors"].as_u64().expect("rcvbuf_errors");
    let veth = (after.0.0 - before.0.0) + (after.1.1 - before.1.1);
    let rate = sent_ok as f64 / sent["secs"].as_f64().unwrap_or(1.0);
    eprintln!(
        "{sent_ok} sent at {rate:.0}/s ({} send errors): {received} received, {by_rule} dropped by the rule, {rcvbuf} by the receive buffer, {veth} by the veth pair",
        sent["errors"]
    );
    assert_eq!(sent_ok + sent["errors"].as_u64().unwrap_or(0), n, "{sent}");
    assert_eq!(sent_ok, received + by_rule + rcvbuf + veth, "every datagram accounted for: {sent} {got} {summary}");
    assert_eq!(counter(&summary, 63, "matched"), sent_ok, "the rule saw every datagram sent");
    for i in 0..63 {
        assert_eq!(counter(&summary, i, "matched"), 0, "rule {i} (another port) matched nothing");
    }
    // 20% of the datagrams, within 5 standard deviations of a binomial draw.
    let sd = (sent_ok as f64 * 0.2 * 0.8).sqrt();
    assert!((by_rule as f64 - sent_ok as f64 * 0.2).abs() < 5.0 * sd, "{by_rule} of {sent_ok} dropped; expected 20%");
    let errors = summary["kernel_errors"].as_object().expect("kernel_errors");
    assert!(errors.values().all(|v| v == 0), "the kernel programs counted errors: {errors:?}");
}

#[test]
fn a_syscall_loop_on_both_cores_is_counted_call_by_call() {
    let sb = Sandbox::new();
    let dir = temp_dir("chaos-load-calls-");
    let cg = sb.cgroup.path.display().to_string();
    let chaos = start_chaos(
        &["sys", "fail", "--cgroup", &cg, "--syscall", "connect", "--errno", "ECONNREFUSED", "--percent", "50", "--for", "90s", "--json"].map(String::from),
    );
    let n: u64 = 100_000;
    let args = ["syscall-loop", "--call", "udp-connect", "--path", dir.0.to_str().unwrap(), "--count", &n.to_string(), "--threads", "2"];
    let (target, bystander) = std::thread::scope(|s| {
        let t = s.spawn(|| sb.spawn(Place::Target, &args).json(T));
        let b = s.spawn(|| sb.spawn(Place::Bystander, &args).json(T));
        (t.join().expect("target"), b.join().expect("bystander"))
    });
    let summary = stop_chaos(chaos);
    let refused = |r: &Value| r["errors"][libc::ECONNREFUSED.to_string()].as_u64().unwrap_or(0);
    let (calls, failed) = (target["calls"].as_u64().expect("calls"), refused(&target));
    eprintln!(
        "target: {calls} connects in {:.2}s on two threads, {failed} refused; bystander: {} in {:.2}s, {} refused",
        target["secs"],
        bystander["calls"],
        bystander["secs"],
        refused(&bystander)
    );
    assert_eq!(calls, 2 * n);
    assert_eq!(target["ok"].as_u64().unwrap_or(0) + failed, calls, "every call either worked or was refused: {target}");
    assert_eq!(counter(&summary, 0, "injected"), failed, "the kernel failed exactly the calls the process saw fail: {summary}");
    assert_eq!(counter(&summary, 0, "matched"), calls, "the kernel saw every call of the target: {summary}");
    let sd = (calls as f64 * 0.25).sqrt();
    assert!((failed as f64 - calls as f64 / 2.0).abs() < 5.0 * sd, "{failed} of {calls} failed; expected 50%");
    assert_eq!(bystander["ok"], 2 * n, "the bystander's calls all worked: {bystander}");
}

/// `GET /metrics` on 127.0.0.1:`port`: the body, or "" if it did not answer.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut body = String::new();
    if s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").is_ok() {
        let _ = s.read_to_string(&mut body);
    }
    body
}

/// A process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    proc_status(pid).and_then(|s| s.vmrss).expect("the process's VmRSS")
}

#[test]
fn chaos_memory_stays_flat_under_constant_traffic() {
    let secs: u64 = std::env::var("CHAOS_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let sb = Sandbox::new();
    let mut args = vec![
        "net".to_string(),
        "drop".into(),
        "--percent".into(),
        "10".into(),
        "--proto".into(),
        "udp".into(),
        "--json".into(),
        "--for".into(),
        format!("{}s", secs + 60),
    ];
    args.extend(sb.target_args());
    // --metrics too: its per-tick snapshot is the loader's biggest allocation.
    let port = 17000 + (std::process::id() % 1000) as u16;
    args.extend(["--metrics".into(), format!("127.0.0.1:{port}")]);
    let chaos = start_chaos(&args);
    let pid = chaos.child.id();
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", "0.0.0.0:7300", "--idle", "1s", "--max", &format!("{}s", secs + 30)]);
    sink.ready();
    // Constant traffic for the whole run: 5000 datagrams a second.
    let sender = sb.spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:7300"), "--count", &(secs * 5000).to_string(), "--rate", "5000"]);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut scraped = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(500));
        // A scrape of --metrics each sample, as Prometheus would.
        scraped += u32::from(scrape(port).contains("chaos_rule_matched_total"));
        samples.push(rss_kib(pid));
    }
    assert!(scraped > 0, "--metrics never answered");
    let sent = sender.json(T);
    sink.close_stdin();
    let _ = sink.json(T);
    let summary = stop_chaos(chaos);
    assert!(counter(&summary, 0, "dropped") > 0, "the fault judged the traffic: {summary} {sent}");
    // The first second is start-up (the object, the maps' first reads); then it must not grow.
    let settled = &samples[2..];
    let (first, last) = settled.split_at(settled.len() / 2);
    let (early, late) = (*first.iter().max().expect("samples"), *last.iter().max().expect("samples"));
    eprintln!("chaos RSS over {secs}s of 5000 datagrams/s, KiB every 0.5 s: {samples:?}");
    // For `cargo xtask soak`'s section of BENCHMARKS.md.
    eprintln!(
        "LONG| - Memory: `chaos net drop` under 5,000 datagrams/s for {secs} s, `--metrics` scraped every 0.5 s: resident {} KiB after the first second, at most {early} KiB in the first half and {late} KiB in the second ({} samples).",
        settled[0],
        samples.len()
    );
    assert!(late <= early + 512, "chaos's memory grew from {early} KiB to {late} KiB under constant traffic");
}

/// The same on the tp_btf `sys_enter` hook (every syscall of the machine passes through it): a
/// getppid loop on two threads in the target and another in a bystander, with a `sys signal` rule
/// (SIGCHLD, ignored by default: the loop runs to its end) selecting half the target's calls.
#[test]
fn a_syscall_loop_on_both_cores_through_the_tracepoint_is_counted_call_by_call() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let chaos = start_chaos(
        &["sys", "signal", "--cgroup", &cg, "--syscall", "getppid", "--signal", "CHLD", "--percent", "50", "--for", "90s", "--json"].map(String::from),
    );
    let n: u64 = 200_000;
    let args = ["syscall-loop", "--call", "getppid", "--count", &n.to_string(), "--threads", "2"];
    let (target, bystander) = std::thread::scope(|s| {
        let t = s.spawn(|| sb.spawn(Place::Target, &args).json(T));
        let b = s.spawn(|| sb.spawn(Place::Bystander, &args).json(T));
        (t.join().expect("target"), b.join().expect("bystander"))
    });
    let summary = stop_chaos(chaos);
    let calls = target["calls"].as_u64().expect("calls");
    let (matched, signalled) = (counter(&summary, 0, "matched"), counter(&summary, 0, "signalled"));
    eprintln!(
        "target: {calls} getppid in {:.2}s on two threads; bystander: {} in {:.2}s; kernel: {matched} matched, {signalled} signalled",
        target["secs"], bystander["calls"], bystander["secs"]
    );
    assert_eq!((calls, target["ok"].as_u64()), (2 * n, Some(2 * n)), "{target}");
    assert_eq!(bystander["ok"], 2 * n, "{bystander}");
    assert_eq!(matched, calls, "the kernel saw every call of the target, and none of the bystander's: {summary}");
    let sd = (calls as f64 * 0.25).sqrt();
    assert!((signalled as f64 - calls as f64 / 2.0).abs() < 5.0 * sd, "{signalled} of {calls} signalled; expected 50%: {summary}");
    let errors = summary["kernel_errors"].as_object().expect("kernel_errors");
    assert!(errors.values().all(|v| v == 0), "the kernel programs counted errors: {errors:?}");
}
