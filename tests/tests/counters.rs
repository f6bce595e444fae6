//! The counters are exact: under load on both CPUs, for GSO packets (segments beside skbs), for
//! fragmented datagrams (one decision, dropped ≤ selected ≤ matched ≤ seen), and for
//! `--max-injections` (exactly N, whatever the load).

use std::time::Duration;

use chaos_tests::*;

const T: Duration = Duration::from_secs(120);

fn chaos_args(sb: &Sandbox, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["net", "drop", "--for", "120s", "--json"].map(String::from).to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(sb.target_args());
    a
}

/// Two senders in the target, pinned to CPU 0 and CPU 1, at once; returns what the sink got.
fn two_cpu_burst(sb: &Sandbox, port: u16, each: u64, rate: &str, size: &str) -> (u64, Value) {
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "1s"]);
    sink.ready();
    let to = format!("{SERVER_V4}:{port}");
    let senders: Vec<Proc> = ["0", "1"]
        .iter()
        .map(|cpu| sb.spawn(Place::Target, &["udp-send", "--to", &to, "--count", &each.to_string(), "--rate", rate, "--size", size, "--cpu", cpu]))
        .collect();
    let mut sent = 0;
    for s in senders {
        let v = s.json(T);
        assert_eq!(v["errors"], 0, "{v}");
        sent += v["sent"].as_u64().expect("sent");
    }
    assert_eq!(sent, 2 * each);
    let got = sink.json(T);
    (got["received"].as_u64().expect("received"), got)
}

#[test]
fn counters_are_exact_under_load_on_both_cpus_in_both_directions() {
    // A rule on both directions at 0%: every packet is counted and none dropped. Egress is
    // counted at TC in the senders' context, ingress at cgroup_skb in softirq context, on both
    // CPUs at once: with plain (non-atomic) per-CPU additions, updates are lost when one
    // interrupts the other on the same CPU.
    // Under emulation a quarter of the packets: the guests run on a fraction of the host's speed,
    // and the lost-update races this looks for are the host's to show.
    let each: u64 = if lane() == "host" { 20000 } else { 5000 };
    let sb = Sandbox::new();
    let chaos = start_chaos(&chaos_args(&sb, &["--percent", "0", "--direction", "both", "--proto", "udp"]));
    // Meanwhile the target also receives: a sink in the cgroup, fed from the server side.
    let mut inbound_sink = sb.spawn(Place::Target, &["udp-sink", "--bind", "0.0.0.0:6402", "--idle", "1s"]);
    inbound_sink.ready();
    let inbound = sb.spawn(Place::Server, &["udp-send", "--to", &format!("{CLIENT_V4}:6402"), "--count", &each.to_string(), "--rate", "20000", "--cpu", "1"]);
    let (received, _) = two_cpu_burst(&sb, 6401, each, "20000", "64");
    assert_eq!(received, 2 * each, "0% drops nothing");
    assert_eq!(inbound.json(T)["sent"], each);
    let inbound = inbound_sink.json(T);
    // The ingress program counts what reaches the socket's filter, before its receive buffer.
    let inbound_received = inbound["received"].as_u64().expect("received") + inbound["rcvbuf_errors"].as_u64().expect("rcvbuf_errors");
    let summary = stop_chaos(chaos);
    let seen = counter(&summary, 0, "seen");
    assert_eq!(seen, 2 * each + inbound_received, "every datagram counted once, sent and received: {summary}");
    assert_eq!(counter(&summary, 0, "matched"), seen);
    assert_eq!(counter(&summary, 0, "selected"), 0);
}

#[test]
fn max_injections_is_exact_under_load_from_both_cpus() {
    let sb = Sandbox::new();
    let chaos = start_chaos(&chaos_args(&sb, &["--percent", "100", "--proto", "udp", "--max-injections", "777"]));
    let (received, _) = two_cpu_burst(&sb, 6411, 5000, "20000", "64");
    let summary = stop_chaos(chaos);
    assert_eq!(received, 10000 - 777, "exactly 777 were lost");
    assert_eq!(counter(&summary, 0, "dropped"), 777);
    assert_eq!(counter(&summary, 0, "selected"), 10000);
    assert_eq!(counter(&summary, 0, "capped"), 10000 - 777);
}

#[test]
fn a_fragmented_datagram_is_one_decision_and_dropped_never_exceeds_selected() {
    // 4000-byte datagrams over a 1500-byte MTU veth: three IP fragments each, on the wire.
    for (to, port) in [(SERVER_V6, 6422u16), (SERVER_V4, 6421)] {
        let sb = Sandbox::new();
        let chaos = start_chaos(&chaos_args(&sb, &["--percent", "30", "--proto", "udp"]));
        let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &if to.contains(':') { format!("[::]:{port}") } else { format!("0.0.0.0:{port}") }, "--idle", "1s"]);
        sink.ready();
        let dest = if to.contains(':') { format!("[{to}]:{port}") } else { format!("{to}:{port}") };
        let sent = sb.spawn(Place::Target, &["udp-send", "--to", &dest, "--count", "1000", "--rate", "2000", "--size", "4000"]).json(T);
        assert_eq!(sent["errors"], 0);
        let got = sink.json(T);
        assert_eq!(got["rcvbuf_errors"], 0, "{got}");
        let lost = 1000 - got["received"].as_u64().expect("received");
        let summary = stop_chaos(chaos);
        let (seen, matched, selected, dropped) = rule0(&summary);
        assert!(dropped <= selected && selected <= matched && matched <= seen, "{to}: dropped {dropped} selected {selected} matched {matched} seen {seen}");
        assert_eq!(dropped, lost, "{to}: one drop per lost datagram: {summary}");
        assert_eq!(seen, 1000, "{to}: a datagram is seen once, not once per fragment: {summary}");
        let pct = 100.0 * lost as f64 / 1000.0;
        assert!((22.0..=38.0).contains(&pct), "{to}: {pct}% of datagrams lost; 30% asked (not 1-0.7^3 = 66%)");
        assert_eq!(counter(&summary, 0, "dropped_fragments"), 2 * dropped, "{to}: the two later fragments of each dropped datagram followed it");
    }
}

#[test]
fn gso_packets_are_counted_as_skbs_and_as_wire_segments() {
    let sb = Sandbox::new();
    // 5%: 16 MiB in GSO packets of up to 64 KiB is a few hundred skbs; at 2% one CI run in a
    // couple of hundred dropped none of them (256 skbs: 0.98^256 = 0.6%; at 5%, 2 in a million).
    let chaos = start_chaos(&chaos_args(&sb, &["--percent", "5", "--proto", "tcp"]));
    let mut sink = sb.spawn(Place::Server, &["tcp-sink", "--bind", "0.0.0.0:6431"]);
    sink.ready();
    let sent = sb.spawn(Place::Target, &["tcp-send", "--to", &format!("{SERVER_V4}:6431"), "--bytes", &(16u64 << 20).to_string()]).json(T);
    assert_eq!(sink.json(T)["bytes"], 16u64 << 20);
    let summary = stop_chaos(chaos);
    let (seen, seen_segs) = (counter(&summary, 0, "seen"), counter(&summary, 0, "seen_segs"));
    assert!(seen_segs > seen, "veth hands chaos GSO packets of many segments: seen {seen} skbs, {seen_segs} segments: {summary}");
    // 16 MiB is at least 16 MiB / MSS segments on the wire.
    assert!(seen_segs >= (16u64 << 20) / 1500, "{summary}");
    let (dropped, dropped_segs) = (counter(&summary, 0, "dropped"), counter(&summary, 0, "dropped_segs"));
    assert!(dropped > 0 && dropped_segs >= dropped, "{summary}");
    assert!(sent["retransmits"].as_u64().unwrap_or(0) > 0, "{sent}");
}
