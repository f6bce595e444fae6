//! The packet faults beyond drop that work on any kernel chaos runs on: duplicate, corrupt,
//! partition, and the TCP-flags filter. Real datagrams from a process in the target cgroup over a
//! veth pair to a sink in another namespace; the sink reads the sequence numbers, send times and
//! patterns the sender put in each datagram (`chaos workload udp-send`), and the test holds what
//! it saw against the kernel's counters. A bystander in the same namespace sees nothing.

use std::time::Duration;

use chaos_tests::*;

const N: u64 = 2000;
const T: Duration = Duration::from_secs(60);

/// Sends N stamped datagrams from `from` to a sink in the server namespace on `port`; returns
/// the sender's and the sink's reports.
fn udp_round(sb: &Sandbox, from: Place, port: u16, size: usize) -> (Value, Value) {
    udp_between(sb, from, (Place::Server, SERVER_V4), port, size)
}

/// Sends N stamped datagrams from the server namespace to a sink at `at` (the target or the
/// bystander, in the client namespace) on `port`; returns the sink's report.
fn udp_round_to(sb: &Sandbox, at: Place, port: u16, size: usize) -> Value {
    udp_between(sb, Place::Server, (at, CLIENT_V4), port, size).1
}

/// N stamped datagrams of `size` bytes from `from` to a sink at `(place, address)` on `port`: the
/// sender's and the sink's reports.
fn udp_between(sb: &Sandbox, from: Place, (at, address): (Place, &str), port: u16, size: usize) -> (Value, Value) {
    let mut sink = sb.spawn(at, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "1s"]);
    sink.ready();
    let to = format!("{address}:{port}");
    let sent = sb.spawn(from, &["udp-send", "--to", &to, "--count", &N.to_string(), "--rate", "4000", "--size", &size.to_string()]).json(T);
    assert_eq!(sent["errors"], 0, "{sent}");
    let got = sink.json(T);
    assert_eq!(got["rcvbuf_errors"], 0, "the sink's buffer overflowed: {got}");
    (sent, got)
}

fn fault(sb: &Sandbox, args: &[&str]) -> Proc {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend(["--for", "60s", "--json"].map(String::from));
    a.extend(sb.target_args());
    start_chaos(&a)
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// |observed - expected| within 4.5 standard deviations of a binomial(N, p).
fn within_sigma(observed: u64, n: u64, p: f64) -> bool {
    let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
    (observed as f64 - mean).abs() <= 4.5 * sd
}

#[test]
fn duplicate_sends_copies_the_receiver_counts_and_never_copies_a_copy() {
    let sb = Sandbox::new();
    let chaos = fault(&sb, &["net", "duplicate", "--percent", "40", "--proto", "udp"]);
    let (_, got) = udp_round(&sb, Place::Target, 5401, 64);
    let (_, bystander) = udp_round(&sb, Place::Bystander, 5402, 64);
    let summary = stop_chaos(chaos);
    let duplicated = counter(&summary, 0, "duplicated");
    assert_eq!(n(&got, "unique"), N, "nothing lost: {got}");
    assert_eq!(n(&got, "duplicates"), duplicated, "every copy the kernel made arrived, and no other: {got}");
    assert_eq!(n(&got, "received"), N + duplicated);
    assert!(within_sigma(duplicated, N, 0.4), "{duplicated} of {N} duplicated; expected 40%");
    assert_eq!(counter(&summary, 0, "selected"), duplicated);
    assert_eq!((n(&bystander, "received"), n(&bystander, "duplicates")), (N, 0), "the bystander's packets were copied");
}

#[test]
fn duplicate_at_100_percent_sends_exactly_two_of_each() {
    // A copy meets the program again on its way out; were it copied again, this would be more.
    let sb = Sandbox::new();
    let chaos = fault(&sb, &["net", "duplicate", "--percent", "100", "--proto", "udp"]);
    let (_, got) = udp_round(&sb, Place::Target, 5403, 64);
    let summary = stop_chaos(chaos);
    assert_eq!((n(&got, "unique"), n(&got, "duplicates")), (N, N), "{got}");
    assert_eq!(counter(&summary, 0, "duplicated"), N);
    assert_eq!(counter(&summary, 0, "matched"), N, "copies are not matched again");
}

#[test]
fn corrupt_flips_payload_bits_that_the_receiver_sees_or_loses() {
    // A veth leaves the checksum to the device: every changed datagram reaches the application.
    let (summary, got, bystander) = corrupt_sent(5404, 256);
    corrupted_as_counted(&summary, &got, &bystander, true);
}

#[test]
fn corrupt_of_a_datagram_checksummed_before_chaos_is_lost_as_on_a_wire() {
    // A datagram larger than the veth's MTU (1500) leaves in fragments, whose UDP checksum the
    // stack computes itself, before TC: the receiver's check then drops every corrupted one, and
    // the kernel counts none as offloaded.
    let (summary, got, bystander) = corrupt_sent(5415, 2000);
    corrupted_as_counted(&summary, &got, &bystander, false);
}

/// Under a 30% corrupt rule on the target's sent UDP, N datagrams of `size` bytes from the target
/// (to `port`), then from the bystander (to `port + 1`): the session's summary and the two sinks'
/// reports.
fn corrupt_sent(port: u16, size: usize) -> (Value, Value, Value) {
    let sb = Sandbox::new();
    let chaos = fault(&sb, &["net", "corrupt", "--percent", "30", "--proto", "udp"]);
    let (_, got) = udp_round(&sb, Place::Target, port, size);
    let (_, bystander) = udp_round(&sb, Place::Bystander, port + 1, size);
    (stop_chaos(chaos), got, bystander)
}

#[test]
fn corrupt_anywhere_hits_headers_as_netem_does_and_a_checksum_drops_those_of_ipv4() {
    // 256-byte payloads over IPv4: 284 bytes from the network header on, 20 of them the IPv4
    // header, 8 the UDP header. A bit of the IPv4 header fails its checksum at the receiver: lost.
    // A bit of the payload arrives (the device computes the UDP checksum after chaos): corrupted.
    // A bit of the UDP header changes a port, the length or the checksum's seed: lost or arrived.
    let sb = Sandbox::new();
    let chaos = fault(&sb, &["net", "corrupt", "--percent", "30", "--proto", "udp", "--where", "any"]);
    let (_, got) = udp_round(&sb, Place::Target, 5417, 256);
    let summary = stop_chaos(chaos);
    let corrupted = counter(&summary, 0, "corrupted");
    let (lost, bad) = (N - n(&got, "received"), n(&got, "corrupted"));
    eprintln!("corrupted {corrupted}: arrived corrupted {bad}, lost {lost}");
    assert!(within_sigma(corrupted, N, 0.3), "{corrupted} of {N} corrupted; expected 30%");
    assert_eq!(counter(&summary, 0, "corrupted_checksum_offloaded"), corrupted, "a veth computes UDP checksums: {summary}");
    assert!(within_sigma(bad, corrupted, 256.0 / 284.0), "{bad} of {corrupted} arrived corrupted; the payload's share is 256/284");
    let sd = |p: f64| (corrupted as f64 * p * (1.0 - p)).sqrt();
    let (ip, ip_and_udp) = (20.0 / 284.0, 28.0 / 284.0);
    assert!(lost as f64 >= corrupted as f64 * ip - 4.5 * sd(ip), "lost {lost}: a bit in the IPv4 header is lost");
    assert!(lost as f64 <= corrupted as f64 * ip_and_udp + 4.5 * sd(ip_and_udp), "lost {lost}: only a header's bit loses the datagram");
    assert!(bad + lost <= corrupted, "arrived corrupted {bad} and lost {lost} of {corrupted} corrupted");
}

/// What a 30% corrupt rule's target received (`got`) agrees with the kernel's counts, and the
/// bystander's datagrams arrived intact. Each corrupted datagram either reached the application
/// with the flipped bit, as the kernel counted it (its checksum was left to the device, as on a
/// veth, or was checked before chaos changed it), or was dropped by the receiver's checksum check;
/// `reach`: whether all of them (or none) were to reach it.
fn corrupted_as_counted(summary: &Value, got: &Value, bystander: &Value, reach: bool) {
    let corrupted = counter(summary, 0, "corrupted");
    let offloaded = counter(summary, 0, "corrupted_checksum_offloaded");
    assert_eq!(offloaded, if reach { corrupted } else { 0 }, "corrupted {corrupted}, of which past the checksum: {summary}");
    let (received, bad) = (n(got, "received"), n(got, "corrupted"));
    assert_eq!(
        (bad, N - received),
        (offloaded, corrupted - offloaded),
        "seen corrupted and lost; the kernel's corrupted {corrupted}, of which {offloaded} past the checksum"
    );
    assert!(within_sigma(corrupted, N, 0.3), "{corrupted} of {N} corrupted; expected 30%");
    assert_eq!(n(got, "unique") + bad, received, "every other datagram arrived intact");
    assert_eq!((n(bystander, "received"), n(bystander, "corrupted")), (N, 0), "a bystander's packet was corrupted");
}

#[test]
fn ingress_duplicate_copies_each_received_packet_once_for_the_target_only() {
    // A copy is injected at the device's ingress and meets the TC ingress program again; were it
    // copied again, the target would receive more than two of each.
    let sb = Sandbox::new();
    let chaos = fault(&sb, &["net", "duplicate", "--percent", "100", "--proto", "udp", "--direction", "ingress"]);
    let got = udp_round_to(&sb, Place::Target, 5406, 64);
    let bystander = udp_round_to(&sb, Place::Bystander, 5407, 64);
    // What the target sends is not copied: the rule is for received packets.
    let (_, sent_back) = udp_round(&sb, Place::Target, 5408, 64);
    let summary = stop_chaos(chaos);
    assert_eq!((n(&got, "unique"), n(&got, "duplicates")), (N, N), "{got}");
    assert_eq!(counter(&summary, 0, "duplicated"), N);
    assert_eq!(counter(&summary, 0, "matched"), N, "copies are not matched again");
    assert_eq!((n(&bystander, "received"), n(&bystander, "duplicates")), (N, 0), "the bystander's packets were copied");
    assert_eq!((n(&sent_back, "received"), n(&sent_back, "duplicates")), (N, 0), "the target's sent packets were copied");
}

#[test]
fn ingress_corrupt_changes_received_payloads_before_the_receiver_checks_them() {
    let sb = Sandbox::new();
    let chaos = fault(&sb, &["net", "corrupt", "--percent", "30", "--proto", "udp", "--direction", "ingress"]);
    let got = udp_round_to(&sb, Place::Target, 5409, 256);
    let bystander = udp_round_to(&sb, Place::Bystander, 5410, 256);
    // From a veth peer the checksum is left unchecked, so every changed datagram reaches the
    // application, and the kernel counts each as offloaded.
    corrupted_as_counted(&stop_chaos(chaos), &got, &bystander, true);
}

#[test]
fn partition_cuts_the_target_off_from_one_peer_both_ways() {
    let sb = Sandbox::new();
    let chaos = fault(&sb, &["net", "partition", "--peer", &format!("{SERVER_V4}/32")]);
    let (_, to_peer) = udp_round(&sb, Place::Target, 5406, 64);
    // Another address of the same server (IPv6) is not in the partition.
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", "[::]:5407", "--idle", "1s"]);
    sink.ready();
    sb.spawn(Place::Target, &["udp-send", "--to", &format!("[{SERVER_V6}]:5407"), "--count", &N.to_string(), "--rate", "4000"]).json(T);
    let other = sink.json(T);
    // From the peer to the target: lost on the way in.
    let mut target_sink = sb.spawn(Place::Target, &["udp-sink", "--bind", "0.0.0.0:5408", "--idle", "1s"]);
    target_sink.ready();
    sb.spawn(Place::Server, &["udp-send", "--to", &format!("{CLIENT_V4}:5408"), "--count", "500", "--rate", "4000"]).json(T);
    let inbound = target_sink.json(T);
    let summary = stop_chaos(chaos);
    assert_eq!(n(&to_peer, "received"), 0, "the target reached the partitioned peer");
    assert_eq!(n(&inbound, "received"), 0, "the partitioned peer reached the target");
    assert_eq!(n(&other, "received"), N, "another peer was cut off too");
    assert_eq!(counter(&summary, 0, "dropped"), N + 500);
    assert_eq!(summary["rules"][0]["kind"], "net.partition", "{summary}");
}

#[test]
fn a_tcp_flags_filter_fails_connection_setup_and_leaves_other_packets_alone() {
    let sb = Sandbox::new();
    let chaos = fault(&sb, &["net", "drop", "--percent", "100", "--proto", "tcp", "--tcp-flags", "syn"]);
    let mut server = sb.spawn(Place::Server, &["rr-server", "--bind", &format!("{SERVER_V4}:5409"), "--max", "60s"]);
    server.ready();
    let connects = sb
        .spawn(Place::Target, &["syscall-loop", "--call", "connect", "--to", &format!("{SERVER_V4}:5409"), "--count", "1"])
        .json(T);
    let by_bystander = sb
        .spawn(Place::Bystander, &["syscall-loop", "--call", "connect", "--to", &format!("{SERVER_V4}:5409"), "--count", "3"])
        .json(T);
    let (_, udp) = udp_round(&sb, Place::Target, 5410, 64);
    let summary = stop_chaos(chaos);
    assert_eq!(connects["ok"], 0, "a connection was set up through a SYN filter: {connects}");
    assert_eq!(by_bystander["ok"], 3, "{by_bystander}");
    assert_eq!(n(&udp, "received"), N, "UDP has no SYN flag");
    let (matched, dropped) = (counter(&summary, 0, "matched"), counter(&summary, 0, "dropped"));
    assert!(matched >= 1 && dropped == matched, "every SYN sent (with retries) matched and was dropped: {matched}/{dropped}");
}

#[test]
fn police_passes_the_rate_and_its_burst_and_drops_the_rest_like_a_wire() {
    let sb = Sandbox::new();
    // 125 KB/s, a burst of 32 KB; the sender offers up to 4000 datagrams of 1042 bytes a second, 30
    // times that (the bucket's depth also covers pauses of a slow sender of up to 260 ms).
    let chaos = fault(&sb, &["net", "rate", "--rate", "1mbit", "--police", "--burst", "32kb", "--proto", "udp"]);
    let (sent, got) = udp_round(&sb, Place::Target, 5411, 1000);
    let (_, bystander) = udp_round(&sb, Place::Bystander, 5412, 1000);
    let summary = stop_chaos(chaos);
    let received = n(&got, "received");
    // What a token bucket lets through over the sender's time: the rate times that time, plus the
    // burst, in packets as the TC program counts their bytes (link-layer header included).
    let wire = (14 + 20 + 8 + 1000) as f64;
    let secs = sent["secs"].as_f64().expect("secs");
    let expected = (125_000.0 * secs + 32_768.0) / wire;
    eprintln!("police 1mbit: {received} of {N} in {secs:.3} s; a token bucket passes {expected:.0}");
    assert!((received as f64 / expected - 1.0).abs() <= 0.05, "{received} passed; expected {expected:.0} ± 5%");
    assert_eq!(counter(&summary, 0, "dropped"), N - received, "the kernel's count equals what the receiver missed");
    assert_eq!(n(&bystander, "received"), N, "the bystander was policed");
}

#[test]
fn stall_silences_each_flow_after_its_bytes_and_only_that_flow() {
    let sb = Sandbox::new();
    // 64-byte datagrams: a flow passes exactly 100 of them (6400 bytes of payload), then goes silent.
    let chaos = fault(&sb, &["net", "stall", "--after-bytes", "6400", "--proto", "udp"]);
    let (_, first) = udp_round(&sb, Place::Target, 5413, 64);
    // Another flow (another socket, so another source port) starts from zero.
    let (_, second) = udp_round(&sb, Place::Target, 5413, 64);
    let (_, bystander) = udp_round(&sb, Place::Bystander, 5414, 64);
    let summary = stop_chaos(chaos);
    assert_eq!((n(&first, "received"), n(&second, "received")), (100, 100), "each flow: 100 datagrams, then silence");
    assert_eq!(n(&bystander, "received"), N);
    assert_eq!(counter(&summary, 0, "dropped"), 2 * (N - 100));
}

#[test]
fn a_seed_makes_the_same_datagrams_meet_the_same_fate_in_every_run() {
    // The seeded generator is the program's own code, the same on every kernel: the host lane
    // shows it; the guests' lanes spare their emulated minutes (three sessions).
    if lane() != "host" {
        eprintln!("the seed test runs on the host lane");
        return;
    }
    // One session a run, two seeded rules on two ports (plain loss and a loss model: the two ways
    // the kernel draws), the sender on one CPU (a rule's seeded generator is per CPU). Returns,
    // per rule, (received, which ones).
    let run = |seed: u64| -> [(u64, u64); 2] {
        let sb = Sandbox::new();
        let cg = sb.cgroup.path.display().to_string();
        let netns = sb.netns_path(Place::Target).display().to_string();
        let rule = |port: u16, what: &str| {
            format!("[[fault]]\nkind = \"net.drop\"\ncgroup = \"{cg}\"\nnetns = [\"{netns}\"]\nproto = \"udp\"\nport = {port}\nseed = {seed}\n{what}\n\n")
        };
        let file = TempFile::new("chaos-seed-", &[rule(5440, "percent = 30"), rule(5441, "model = \"gemodel:5,30,70,1\"")].concat());
        let chaos = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);
        let rounds = [5440u16, 5441].map(|port| {
            let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "1s"]);
            sink.ready();
            let to = format!("{SERVER_V4}:{port}");
            let sent = sb.spawn(Place::Target, &["udp-send", "--to", &to, "--count", "1000", "--rate", "4000", "--cpu", "0"]).json(T);
            assert_eq!(sent["errors"], 0, "{sent}");
            sink.json(T)
        });
        let summary = stop_chaos(chaos);
        [0, 1].map(|i| {
            let got = &rounds[i];
            assert_eq!(n(got, "unique") + counter(&summary, i, "dropped"), 1000, "rule {i}: {got} {summary}");
            assert!(n(got, "unique") < 1000, "rule {i} lost nothing: {got}");
            (n(got, "unique"), n(got, "received_digest"))
        })
    };
    let first = run(7);
    assert_eq!(run(7), first, "--seed 7 lost other datagrams the second time");
    let other = run(8);
    for i in 0..2 {
        assert_ne!(other[i].1, first[i].1, "rule {i}: --seed 8 lost the same datagrams as --seed 7");
    }
}

/// A round of 200 stamped datagrams from the target, or to it for a rule on received packets
/// (`ingress`: sent from `port` on the server, which the rule's port filter names):
/// (received, duplicates, corrupted).
fn small_round(sb: &Sandbox, port: u16, ingress: bool) -> (u64, u64, u64) {
    let (sink_at, sender_at, to) = if ingress { (Place::Target, Place::Server, CLIENT_V4) } else { (Place::Server, Place::Target, SERVER_V4) };
    let mut sink = sb.spawn(sink_at, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "500ms"]);
    sink.ready();
    let to = format!("{to}:{port}");
    let from = if ingress { port.to_string() } else { "0".into() };
    sb.spawn(sender_at, &["udp-send", "--to", &to, "--from-port", &from, "--count", "200", "--rate", "2000", "--size", "200"]).json(T);
    let got = sink.json(T);
    (n(&got, "received"), n(&got, "duplicates"), n(&got, "corrupted"))
}

#[test]
fn every_packet_fault_ends_at_its_deadline_even_with_chaos_frozen() {
    // (fault flags, whether a round shows the fault)
    type Shows = fn((u64, u64, u64)) -> bool;
    let faults: [(&[&str], Shows); 6] = [
        (&["duplicate", "--percent", "100"], |(_, d, _)| d == 200),
        (&["duplicate", "--percent", "100", "--direction", "ingress"], |(_, d, _)| d == 200),
        (&["corrupt", "--percent", "100"], |(r, _, c)| c + (200 - r) == 200),
        (&["rate", "--rate", "8kbit", "--police", "--burst", "2000b"], |(r, _, _)| r < 50),
        (&["stall", "--after-bytes", "1000"], |(r, _, _)| r < 10),
        // netem decides a packet by the state it arrived in: the first one, in the good state, passes.
        (&["drop", "--model", "gemodel:100,0"], |(r, _, _)| r == 1),
    ];
    // One session for the six, each on its own port, long enough for six rounds before it ends.
    let sb = Sandbox::new();
    let lifetime = Duration::from_secs(16);
    let ports: Vec<(&[&str], u16)> = faults.iter().enumerate().map(|(i, (flags, _))| (*flags, 5420 + i as u16)).collect();
    let (chaos, started, _file) = start_frozen_udp_faults(&sb, &ports, lifetime);
    for ((flags, shows), (_, port)) in faults.iter().zip(&ports) {
        let before = small_round(&sb, *port, flags.contains(&"ingress"));
        assert!(shows(before), "net {flags:?}: no fault before the deadline: {before:?}");
    }
    still_before(started, lifetime, "the rounds with the faults on");
    sleep_past(started, lifetime);
    // The same ports: each rule would still act on its own port's datagrams if it outlived its
    // deadline.
    for (flags, port) in &ports {
        let after = small_round(&sb, *port, flags.contains(&"ingress"));
        assert_eq!(after, (200, 0, 0), "net {flags:?}: the fault outlived its deadline with chaos frozen");
    }
    chaos.signal(libc::SIGCONT);
    chaos.json(Duration::from_secs(30));
}
