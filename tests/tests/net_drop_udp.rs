//! `chaos net drop` with UDP: the drop ratio, what senders see, what the counters say, filters,
//! and that processes outside the target are untouched.

use std::time::Duration;

use chaos_tests::*;

const N: u64 = 2000;
const T: Duration = Duration::from_secs(60);

/// Sends N paced datagrams from `from` to the server's sink on `port`; returns (sent, send
/// errors, received, receiver buffer overflows).
fn udp_round(sb: &Sandbox, from: Place, to_addr: &str, port: u16) -> (u64, u64, u64, u64) {
    let bind = if to_addr.contains(':') { format!("[::]:{port}") } else { format!("0.0.0.0:{port}") };
    let to = if to_addr.contains(':') { format!("[{to_addr}]:{port}") } else { format!("{to_addr}:{port}") };
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &bind, "--idle", "1s"]);
    sink.ready();
    let sent = sb.spawn(from, &["udp-send", "--to", &to, "--count", &N.to_string(), "--rate", "4000"]).json(T);
    let got = sink.json(T);
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    (n(&sent, "sent"), n(&sent, "errors"), n(&got, "received"), n(&got, "rcvbuf_errors"))
}

fn drop_args(sb: &Sandbox, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["net", "drop", "--percent", "30", "--for", "60s", "--json"].map(String::from).to_vec();
    a.extend(sb.target_args());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn udp_egress_drop_is_wire_like_and_counted_and_spares_bystanders() {
    let sb = Sandbox::new();
    let chaos = start_chaos(&drop_args(&sb, &["--proto", "udp"]));

    let (sent, errors, received, overflow) = udp_round(&sb, Place::Target, SERVER_V4, 5301);
    assert_eq!(sent, N, "every send succeeded");
    assert_eq!(errors, 0, "a wire-like drop is invisible to the sender");
    assert_eq!(overflow, 0, "the receiver's buffer never overflowed, so every loss is chaos's");
    let lost = N - received;
    let pct = 100.0 * lost as f64 / N as f64;
    assert!((25.0..=35.0).contains(&pct), "lost {pct:.1}% of {N}; expected 30 ± 5");

    // An identical sender in the same namespace but outside the cgroup loses nothing.
    let (b_sent, b_errors, b_received, _) = udp_round(&sb, Place::Bystander, SERVER_V4, 5302);
    assert_eq!((b_sent, b_errors, b_received), (N, 0, N), "the bystander lost packets");

    let summary = stop_chaos(chaos);
    let (seen, matched, selected, dropped) = rule0(&summary);
    assert_eq!(dropped, lost, "the kernel's drop count equals what the receiver missed");
    assert_eq!(selected, dropped, "every selected packet was dropped on a device chaos attached to");
    assert!(matched >= N && seen >= matched, "seen {seen} matched {matched}");
    assert_eq!(summary["ended_by"], "SIGINT");
}

#[test]
fn udp_ingress_drop_over_ipv6() {
    let sb = Sandbox::new();
    // The sink is the target: it runs in the cgroup, in the client namespace.
    let chaos = start_chaos(&drop_args(&sb, &["--direction", "ingress", "--proto", "udp"]));
    let mut sink = sb.spawn(Place::Target, &["udp-sink", "--bind", "[::]:5303", "--idle", "1s"]);
    sink.ready();
    let to = format!("[{CLIENT_V6}]:5303");
    let sent = sb.spawn(Place::Server, &["udp-send", "--to", &to, "--count", &N.to_string(), "--rate", "4000"]).json(T);
    let got = sink.json(T);
    assert_eq!(sent["errors"], 0);
    assert_eq!(got["rcvbuf_errors"], 0);
    let received = got["received"].as_u64().expect("received");
    let pct = 100.0 * (N - received) as f64 / N as f64;
    assert!((25.0..=35.0).contains(&pct), "lost {pct:.1}%; expected 30 ± 5");
    let (_, _, _, dropped) = rule0(&stop_chaos(chaos));
    assert_eq!(dropped, N - received);
}

#[test]
fn port_and_peer_filters_limit_the_fault() {
    let sb = Sandbox::new();
    let chaos = start_chaos(&{
        let mut a = drop_args(&sb, &["--proto", "udp", "--port", "5305", "--peer", &format!("{SERVER_V4}/32")]);
        a[3] = "100".into(); // --percent 100
        a
    });
    let (_, _, on_port, _) = udp_round(&sb, Place::Target, SERVER_V4, 5305);
    let (_, _, other_port, _) = udp_round(&sb, Place::Target, SERVER_V4, 5306);
    let (_, _, other_peer, _) = udp_round(&sb, Place::Target, SERVER_V6, 5305);
    assert_eq!(on_port, 0, "port 5305 to the peer: all dropped");
    assert_eq!(other_port, N, "another port: untouched");
    assert_eq!(other_peer, N, "another peer address (IPv6): untouched");
    let (_, matched, _, dropped) = rule0(&stop_chaos(chaos));
    assert_eq!((matched, dropped), (N, N));
}

#[test]
fn log_packets_reports_each_decision_and_a_status_line_comes_every_few_seconds() {
    let sb = Sandbox::new();
    let mut args: Vec<String> = ["net", "drop", "--percent", "100", "--proto", "udp", "--for", "6s", "--json", "--log-packets"]
        .map(String::from)
        .to_vec();
    args.extend(sb.target_args());
    let mut cmd = std::process::Command::new(chaos_bin());
    cmd.args(&args).env("RUST_LOG", "debug").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut chaos = Proc::new(cmd.spawn().expect("chaos"), "chaos --log-packets".into());
    chaos.wait_for("chaos: injecting", START);
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", "0.0.0.0:5307", "--idle", "500ms"]);
    sink.ready();
    sb.spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:5307"), "--count", "20", "--rate", "200"]).json(T);
    assert_eq!(sink.json(T)["received"], 0);
    let (code, out, err) = chaos.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{err:?}");
    let decisions = err.iter().filter(|l| l.contains("chaos: drop rule=0")).count();
    assert_eq!(decisions, 20, "one kernel log line per dropped packet: {err:?}");
    assert!(err.iter().any(|l| l.contains(": matched 20, injected 20")), "no status line: {err:?}");
    let summary: Value = serde_json::from_str(out.lines().last().unwrap_or_default()).expect("json");
    assert_eq!(rule0(&summary).3, 20);
}

#[test]
fn pid_targets_the_cgroup_the_process_is_in() {
    let sb = Sandbox::new();
    let mut sink = sb.spawn(Place::Target, &["udp-sink", "--bind", "0.0.0.0:5309", "--idle", "500ms"]);
    sink.ready();
    let pid = sink.child.id().to_string();
    let netns = sb.netns_path(Place::Target).display().to_string();
    let chaos = start_chaos(
        &["net", "drop", "--pid", &pid, "--percent", "100", "--direction", "ingress", "--for", "60s", "--json", "--netns", &netns]
            .map(String::from),
    );
    sb.spawn(Place::Server, &["udp-send", "--to", &format!("{CLIENT_V4}:5309"), "--count", "50", "--rate", "500"]).json(T);
    assert_eq!(sink.json(T)["received"], 0, "the process's cgroup receives nothing");
    let summary = stop_chaos(chaos);
    assert_eq!(summary["rules"][0]["cgroup"], sb.cgroup.path.display().to_string(), "--pid resolved to the sandbox cgroup");
    assert_eq!(rule0(&summary).3, 50);
}

#[test]
fn ecn_marks_capable_packets_congestion_experienced_and_drops_the_others() {
    let sb = Sandbox::new();
    let mut args: Vec<String> = ["net", "drop", "--percent", "100", "--ecn", "--proto", "udp", "--port", "5320-5322", "--for", "60s", "--json"].map(String::from).to_vec();
    args.extend(sb.target_args());
    let chaos = start_chaos(&args);
    // (destination, port, TOS byte or traffic class): ECT(0) over IPv4, ECT(1) over IPv6, and
    // a sender that is not ECN-capable.
    let round = |addr: &str, port: u16, tos: &str| -> Value {
        let (bind, to) = if addr.contains(':') { (format!("[::]:{port}"), format!("[{addr}]:{port}")) } else { (format!("0.0.0.0:{port}"), format!("{addr}:{port}")) };
        let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &bind, "--idle", "1s", "--ecn"]);
        sink.ready();
        let sent = sb.spawn(Place::Target, &["udp-send", "--to", &to, "--count", "500", "--rate", "4000", "--tos", tos]).json(T);
        assert_eq!((sent["sent"].as_u64(), sent["errors"].as_u64()), (Some(500), Some(0)), "{sent}");
        sink.json(T)
    };
    let v4 = round(SERVER_V4, 5320, "2");
    let v6 = round(SERVER_V6, 5321, "1");
    let plain = round(SERVER_V4, 5322, "0");
    let summary = stop_chaos(chaos);
    // Marked datagrams arrive (the IPv4 header checksum was kept right), all of them CE.
    assert_eq!((&v4["received"], &v4["ce"]), (&500.into(), &500.into()), "IPv4 ECT(0): {v4}");
    assert_eq!((&v6["received"], &v6["ce"]), (&500.into(), &500.into()), "IPv6 ECT(1): {v6}");
    assert_eq!(plain["received"], 0, "not ECN-capable: dropped: {plain}");
    assert_eq!((counter(&summary, 0, "marked_ce"), counter(&summary, 0, "dropped")), (1000, 500), "{summary}");
}

#[test]
fn ecn_on_received_packets_marks_them_before_the_target_reads_them() {
    // The same, for datagrams the target receives: marked at TC ingress, where the packet can
    // still be changed, for the target's sockets only.
    let sb = Sandbox::new();
    let mut args: Vec<String> =
        ["net", "drop", "--percent", "100", "--ecn", "--direction", "ingress", "--proto", "udp", "--local-port", "5323-5326", "--for", "60s", "--json"]
            .map(String::from)
            .to_vec();
    args.extend(sb.target_args());
    let chaos = start_chaos(&args);
    let round = |at: Place, addr: &str, port: u16, tos: &str| -> Value {
        let (bind, to) = if addr.contains(':') { (format!("[::]:{port}"), format!("[{addr}]:{port}")) } else { (format!("0.0.0.0:{port}"), format!("{addr}:{port}")) };
        let mut sink = sb.spawn(at, &["udp-sink", "--bind", &bind, "--idle", "1s", "--ecn"]);
        sink.ready();
        let sent = sb.spawn(Place::Server, &["udp-send", "--to", &to, "--count", "500", "--rate", "4000", "--tos", tos]).json(T);
        assert_eq!((sent["sent"].as_u64(), sent["errors"].as_u64()), (Some(500), Some(0)), "{sent}");
        sink.json(T)
    };
    let v4 = round(Place::Target, CLIENT_V4, 5323, "2");
    let v6 = round(Place::Target, CLIENT_V6, 5324, "1");
    let plain = round(Place::Target, CLIENT_V4, 5325, "0");
    let bystander = round(Place::Bystander, CLIENT_V4, 5326, "2");
    let summary = stop_chaos(chaos);
    assert_eq!((&v4["received"], &v4["ce"]), (&500.into(), &500.into()), "IPv4 ECT(0): {v4}");
    assert_eq!((&v6["received"], &v6["ce"]), (&500.into(), &500.into()), "IPv6 ECT(1): {v6}");
    assert_eq!(plain["received"], 0, "not ECN-capable: dropped: {plain}");
    assert_eq!((&bystander["received"], &bystander["ce"]), (&500.into(), &0.into()), "the bystander's datagrams were touched: {bystander}");
    assert_eq!((counter(&summary, 0, "marked_ce"), counter(&summary, 0, "dropped")), (1000, 500), "{summary}");
}
