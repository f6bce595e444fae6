//! `chaos net delay`: departure times that sch_fq honours, on the lanes whose kernel has sch_fq
//! (the qemu lanes); elsewhere (this host) it is refused with exit 3 naming CONFIG_NET_SCH_FQ
//! before anything is attached. The one-way delay is read from the send time each datagram carries
//! (CLOCK_MONOTONIC, one clock for every namespace of the machine). fq goes on in place of the
//! kernel's default qdisc and the default comes back however chaos ends, SIGKILL included.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use chaos_tests::*;

const N: u64 = 400;
const T: Duration = Duration::from_secs(90);

fn fq_here() -> bool {
    lane_has("sch_fq")
}

/// Sends N stamped datagrams at 200/s from `from` to a sink in the server namespace; returns the
/// sink's report.
fn udp_round(sb: &Sandbox, from: Place, port: u16) -> Value {
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "3s"]);
    sink.ready();
    let sent = sb.spawn(from, &["udp-send", "--to", &format!("{SERVER_V4}:{port}"), "--count", &N.to_string(), "--rate", "200"]).json(T);
    assert_eq!(sent["errors"], 0, "{sent}");
    sink.close_stdin();
    sink.json(T)
}

fn delay_ms(v: &Value, q: &str) -> f64 {
    v["delay_ms"][q].as_f64().unwrap_or_else(|| panic!("no delay_ms.{q} in {v}"))
}

fn delay_args(sb: &Sandbox, extra: &[&str]) -> Vec<String> {
    let mut a = delay_args_kind(sb, "delay", extra);
    a.extend(["--proto", "udp"].map(String::from));
    a
}

/// `chaos net VERB EXTRA... --for 90s --json` on the sandbox's target.
fn delay_args_kind(sb: &Sandbox, verb: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["net", verb, "--for", "90s", "--json"].map(String::from).to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(sb.target_args());
    a
}

#[test]
fn without_sch_fq_delay_is_refused_by_name_before_anything_attaches() {
    if fq_here() {
        return;
    }
    let sb = Sandbox::new();
    let args = delay_args(&sb, &["--delay", "100ms"]);
    let (code, _, err) = run_chaos(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 3, "{err:?}");
    assert_eq!(err.len(), 1, "one line: {err:?}");
    assert!(err[0].contains("CONFIG_NET_SCH_FQ"), "{err:?}");
    assert!(!sb.client_qdiscs().contains("fq"), "a qdisc was changed");
}

#[test]
fn delay_adds_the_configured_one_way_delay_and_spares_bystanders_and_restores_the_qdisc() {
    if !fq_here() {
        return;
    }
    let sb = Sandbox::new();
    let before = sb.client_root_qdisc();
    assert!(before.contains("noqueue"), "a veth starts with noqueue: {before}");
    let mut chaos = start_chaos(&delay_args(&sb, &["--delay", "100ms"]));
    let _ = session_id(&mut chaos);
    let during = sb.client_root_qdisc();
    assert!(during.contains("qdisc fq c"), "chaos put its fq on the device: {during}");
    let target = udp_round(&sb, Place::Target, 5501);
    let bystander = udp_round(&sb, Place::Bystander, 5502);
    let summary = stop_chaos(chaos);
    assert_eq!(sb.client_root_qdisc(), before, "the default qdisc is back");

    assert_eq!(target["unique"], N, "nothing lost under delay: {target}");
    // The kernel's count first: it is exact, and says whether chaos touched a bystander's packet.
    assert_eq!(counter(&summary, 0, "delayed"), N, "every datagram of the target was delayed, and only those");
    // The delay chaos adds is the target's above the bystander's, measured in the same run: an
    // emulated guest under load adds milliseconds of its own to both (a CI run's p50 was 105.6
    // ms), and releases held packets late besides (fq's timer: 109.8 ms over a 1.6 ms floor with
    // three guests on two cores). Early is a fault of chaos; late, within a fifth, the emulator's.
    let (p50, floor) = (delay_ms(&target, "p50"), delay_ms(&bystander, "p50"));
    eprintln!(
        "one-way delay: p50 {p50:.2} ms, p99 {:.2} ms (configured 100 ms); bystander p50 {floor:.2} ms, p99 {:.2} ms",
        delay_ms(&target, "p99"),
        delay_ms(&bystander, "p99")
    );
    assert!((95.0..=120.0).contains(&(p50 - floor)), "p50 {p50:.2} ms over the bystander's {floor:.2} ms; expected 100 ms, -5% to +20%");
    assert!(delay_ms(&target, "min") >= 99.0, "a packet left early: {target}");
    // What the bystander saw: most of its datagrams none of the delay. Not every one: an emulated
    // guest's scheduler alone has held a bystander's datagram for 65 ms, and once five for 123 ms
    // (CI, Debian 6.1 lane, three guests on two cores; that run checked the count only after
    // this, so whether chaos had touched them is not known). The count above is exact: a datagram
    // of the bystander's that chaos delayed fails it.
    assert!(delay_ms(&bystander, "p90") < 50.0, "bystander datagrams were slowed: {bystander}");
}

#[test]
fn jitter_spreads_the_delay_around_it_and_reorders_within_a_flow() {
    if !fq_here() {
        return;
    }
    let sb = Sandbox::new();
    let chaos = start_chaos(&delay_args(&sb, &["--delay", "60ms", "--jitter", "20ms"]));
    let got = udp_round(&sb, Place::Target, 5503);
    stop_chaos(chaos);
    let (min, p50, p99) = (delay_ms(&got, "min"), delay_ms(&got, "p50"), delay_ms(&got, "p99"));
    eprintln!("jitter 60±20 ms: min {min:.2} p50 {p50:.2} p99 {p99:.2} max {:.2} ms; reordered {}", delay_ms(&got, "max"), got["reordered"]);
    assert!(min >= 39.5, "a packet left before delay - jitter: {got}");
    // fq holds a flow it throttled until the departure time of the packet it throttled on, so a
    // packet drawn a shorter delay behind it waits that long: the median sits above the delay by
    // up to jitter/2 (netem, which sorts every packet, gives the delay). docs/design.md. Below:
    // the median of 400 uniform draws over 40 ms has a standard error of 1 ms (CI on 6.12 once
    // gave 58.56 ms), so three of them.
    assert!((57.0..=70.0).contains(&p50), "median {p50:.2}; expected 57-70 ms");
    // No packet waits much longer than the longest draw of one sent before it. The margin is for
    // timers firing late in a guest under emulation that shares its cores (measured up to +51 ms
    // with CI's four lanes on two cores); a jitter drawn too wide shows above, in the minimum.
    assert!(p99 <= 80.0 + 60.0, "p99 {p99:.2} ms far beyond delay + jitter: {got}");
    assert!(got["reordered"].as_u64().unwrap_or(0) > 0, "jitter reorders within a flow, as netem does: {got}");
}

#[test]
fn a_normal_distribution_spreads_the_delay_past_the_jitter_both_ways() {
    if !fq_here() {
        return;
    }
    let sb = Sandbox::new();
    let chaos = start_chaos(&delay_args(&sb, &["--delay", "60ms", "--jitter", "20ms", "--distribution", "normal"]));
    let got = udp_round(&sb, Place::Target, 5504);
    // The guest's own latency in the same run, which a loaded emulated guest raises for every
    // packet (a CI run's median was 75 ms): the median is checked above it.
    let floor = delay_ms(&udp_round(&sb, Place::Bystander, 5505), "p50");
    let summary = stop_chaos(chaos);
    let (min, p50, p99) = (delay_ms(&got, "min"), delay_ms(&got, "p50") - floor, delay_ms(&got, "p99"));
    eprintln!("normal 60±20 ms: min {min:.2} p50 {p50:.2} p99 {p99:.2} max {:.2} ms", delay_ms(&got, "max"));
    assert_eq!(counter(&summary, 0, "delayed"), N, "{summary}");
    // Uniform jitter never goes below delay - jitter (the test above); a normal one does for about
    // 16% of the packets (one deviation below), and above delay + jitter for as many.
    assert!(min < 39.0, "no packet below 60 - 20 ms: not a normal spread: {got}");
    assert!(p99 > 85.0, "p99 {p99:.2} ms: a normal spread's 99th percentile is about 60 + 2.3 x 20 ms: {got}");
    // The median: as with uniform jitter, fq's per-flow order raises it by up to a few ms; a
    // loaded emulated guest's late timer by up to a quarter more (73.5 ms in a CI run).
    assert!((57.0..=75.0).contains(&p50), "median {p50:.2} over the bystander's {floor:.2} ms; expected about 60 ms");
}

#[test]
fn reorder_with_a_gap_sends_every_nth_packet_at_once() {
    if !fq_here() {
        return;
    }
    let sb = Sandbox::new();
    let chaos = start_chaos(&delay_args_kind(&sb, "reorder", &["--percent", "100", "--gap", "5", "--delay", "50ms", "--proto", "udp"]));
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", "0.0.0.0:5507", "--idle", "1s"]);
    sink.ready();
    // One CPU: netem's gap counts packets in order, and so does the rule's shared counter.
    sb.spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:5507"), "--count", "100", "--rate", "500", "--cpu", "0"]).json(T);
    sink.close_stdin();
    let got = sink.json(T);
    let summary = stop_chaos(chaos);
    // Datagrams 4, 9, ..., 99 leave at once; each of the other 80 arrives after a later one.
    assert_eq!((&got["unique"], &got["reordered"]), (&100.into(), &80.into()), "{got}");
    assert_eq!((counter(&summary, 0, "held_back"), counter(&summary, 0, "sent_at_once")), (80, 20), "{summary}");
}

#[test]
fn the_guardian_restores_the_qdisc_after_sigkill() {
    if !fq_here() {
        return;
    }
    let sb = Sandbox::new();
    let before = sb.client_root_qdisc();
    let mut chaos = start_chaos(&delay_args(&sb, &["--delay", "2s"]));
    let _ = session_id(&mut chaos);
    assert!(sb.client_root_qdisc().contains("qdisc fq c"), "{}", sb.client_root_qdisc());
    chaos.signal(libc::SIGKILL);
    let killed = Instant::now();
    while sb.client_root_qdisc() != before && killed.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sb.client_root_qdisc(), before, "the guardian did not restore the qdisc within 10 s");
    eprintln!("default qdisc back {:?} after SIGKILL", killed.elapsed());
}

#[test]
fn a_configured_qdisc_and_keep_qdisc_are_refused_and_left_alone() {
    if !fq_here() {
        return;
    }
    let sb = Sandbox::new();
    // --keep-qdisc on the default noqueue: refused, nothing changed.
    let before = sb.client_root_qdisc();
    let args = delay_args(&sb, &["--delay", "10ms", "--keep-qdisc"]);
    let (code, _, err) = run_chaos(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 3, "{err:?}");
    assert!(err.len() == 1 && err[0].contains("--keep-qdisc"), "{err:?}");
    assert_eq!(sb.client_root_qdisc(), before);
    // Someone's own qdisc: refused, and still there afterwards.
    sb.client_tc(&["qdisc", "replace", "dev", &sb.client_dev, "root", "handle", "1:", "pfifo", "limit", "500"]);
    let args = delay_args(&sb, &["--delay", "10ms"]);
    let (code, _, err) = run_chaos(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 3, "{err:?}");
    assert!(err.len() == 1 && err[0].contains("configured"), "{err:?}");
    assert!(sb.client_root_qdisc().contains("pfifo 1:"), "{}", sb.client_root_qdisc());
    // fq someone set up (on every device of the namespace: --keep-qdisc needs it on lo too):
    // used as it is, and left there at the end.
    sb.client_tc(&["qdisc", "replace", "dev", &sb.client_dev, "root", "handle", "7:", "fq"]);
    sb.client_tc(&["qdisc", "replace", "dev", "lo", "root", "handle", "8:", "fq"]);
    let chaos = start_chaos(&delay_args(&sb, &["--delay", "30ms", "--keep-qdisc"]));
    let got = udp_round(&sb, Place::Target, 5504);
    stop_chaos(chaos);
    // Someone's fq paces by default (chaos's own does not), and its timers fire late under
    // emulation: the delay is applied and never early.
    assert!(delay_ms(&got, "min") >= 29.5 && delay_ms(&got, "p50") <= 45.0, "{got}");
    assert!(sb.client_root_qdisc().contains("fq 7:"), "someone's fq stays: {}", sb.client_root_qdisc());
}

#[test]
fn a_second_session_is_refused_the_first_sessions_fq() {
    if !fq_here() {
        return;
    }
    let sb = Sandbox::new();
    let mut first = start_chaos(&delay_args(&sb, &["--delay", "10ms"]));
    let id = session_id(&mut first);
    let args = delay_args(&sb, &["--delay", "20ms"]);
    let (code, _, err) = run_chaos(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 3, "{err:?}");
    assert!(err.len() == 1 && err[0].contains(&id), "names the session that owns the fq: {err:?}");
    stop_chaos(first);
    assert!(sb.client_root_qdisc().contains("noqueue"), "{}", sb.client_root_qdisc());
}

#[test]
fn shaping_sends_at_the_rate() {
    if !fq_here() {
        return;
    }
    let sb = Sandbox::new();
    // 250 KB/s; the sender offers 1000-byte datagrams at up to 2000/s, eight times that.
    let chaos = start_chaos(&delay_args_kind(&sb, "rate", &["--rate", "2mbit", "--proto", "udp"]));
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", "0.0.0.0:5505", "--idle", "3s"]);
    sink.ready();
    let n = 500u64;
    sb.spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:5505"), "--count", &n.to_string(), "--rate", "2000", "--size", "1000"]).json(T);
    let got = sink.json(T);
    let summary = stop_chaos(chaos);
    assert_eq!(got["unique"], n, "shaping loses nothing: {got}");
    assert_eq!(counter(&summary, 0, "shaped"), n);
    // The receiver's throughput between the first and the last arrival, in the bytes the rate
    // counts (the TC program's view: 1000 + UDP, IP and Ethernet headers).
    let span = got["arrival_span_ms"].as_f64().expect("arrival_span_ms") / 1000.0;
    let rate = (n - 1) as f64 * 1042.0 / span;
    eprintln!("shaping 2mbit: {rate:.0} B/s over {span:.3} s (configured 250000 B/s)");
    assert!((rate / 250_000.0 - 1.0).abs() <= 0.05, "{rate:.0} B/s; expected 250000 ± 5%");
}

#[test]
fn reorder_sends_some_at_once_and_they_overtake_the_held_ones() {
    if !fq_here() {
        return;
    }
    let sb = Sandbox::new();
    let chaos = start_chaos(&delay_args_kind(&sb, "reorder", &["--percent", "25", "--delay", "20ms", "--proto", "udp"]));
    let got = udp_round(&sb, Place::Target, 5506);
    let summary = stop_chaos(chaos);
    let (held, at_once) = (counter(&summary, 0, "held_back"), counter(&summary, 0, "sent_at_once"));
    assert_eq!(held + at_once, N, "{summary}");
    let sd = (N as f64 * 0.25 * 0.75).sqrt();
    assert!((at_once as f64 - N as f64 * 0.25).abs() <= 4.5 * sd, "{at_once} of {N} sent at once; expected 25%");
    assert_eq!(got["unique"], N, "{got}");
    assert!(got["reordered"].as_u64().unwrap_or(0) > 0, "nothing overtook: {got}");
    // The held ones leave no earlier than 20 ms (EDT); later by what an emulated guest adds
    // (seen: p50 24.1 ms under TCG with the other lanes running).
    let p50 = delay_ms(&got, "p50");
    assert!(delay_ms(&got, "min") < 10.0 && (19.0..=27.0).contains(&p50), "{got}");
}

/// 100 stamped 1000-byte datagrams at 500/s from the target; the sink's report.
fn small_round(sb: &Sandbox, port: u16) -> Value {
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "1500ms"]);
    sink.ready();
    sb.spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:{port}"), "--count", "100", "--rate", "500", "--size", "1000"]).json(T);
    sink.close_stdin();
    sink.json(T)
}

#[test]
fn delay_shaping_and_reorder_end_at_their_deadline_even_with_chaos_frozen() {
    if !fq_here() {
        return;
    }
    // (fault flags, whether a round shows the fault)
    type Shows = fn(&Value) -> bool;
    let faults: [(&[&str], Shows); 3] = [
        (&["delay", "--delay", "300ms"], |v| delay_ms(v, "min") >= 299.0),
        // 100 KB/s against 500 KB/s offered: the round's last datagram leaves about 0.8 s late.
        (&["rate", "--rate", "800kbit"], |v| delay_ms(v, "max") >= 400.0),
        (&["reorder", "--percent", "50", "--delay", "300ms"], |v| v["reordered"].as_u64().unwrap_or(0) > 0),
    ];
    // One session for the three, each on its own port; long enough for three rounds before it
    // ends, which take seconds each in a busy emulated guest.
    let sb = Sandbox::new();
    let before_qdisc = sb.client_root_qdisc();
    let lifetime = Duration::from_secs(16);
    let ports: Vec<(&[&str], u16)> = faults.iter().enumerate().map(|(i, (flags, _))| (*flags, 5520 + 2 * i as u16)).collect();
    let (chaos, started, _file) = start_frozen_udp_faults(&sb, &ports, lifetime);
    for ((flags, shows), (_, port)) in faults.iter().zip(&ports) {
        let before = small_round(&sb, *port);
        assert!(shows(&before), "net {flags:?}: no fault before the deadline: {before}");
    }
    still_before(started, lifetime, "the rounds with the faults on");
    sleep_past(started, lifetime);
    // The same ports: each rule would still act on its own port's datagrams if it outlived its
    // deadline.
    // (What arrives is not counted: a stalled emulated guest lost 4 of 100 datagrams of a round
    // after the deadline once, with no fault of chaos's live; the kernel's counts below say
    // whether a rule took any.)
    for (flags, port) in &ports {
        let after = small_round(&sb, *port);
        assert!(after["unique"].as_u64().unwrap_or(0) > 0, "net {flags:?}: {after}");
        assert_eq!(after["reordered"], 0, "net {flags:?}: the fault outlived its deadline with chaos frozen: {after}");
        assert!(delay_ms(&after, "max") < 100.0, "net {flags:?}: the fault outlived its deadline with chaos frozen: {after}");
    }
    chaos.signal(libc::SIGCONT);
    let summary = chaos.json(Duration::from_secs(30));
    for (i, (flags, _)) in ports.iter().enumerate() {
        assert_eq!(counter(&summary, i, "matched"), 100, "net {flags:?} matched the round before its deadline only: {summary}");
    }
    assert_eq!(sb.client_root_qdisc(), before_qdisc, "the default qdisc is back");
}

#[test]
fn a_stopped_or_killed_delay_still_sends_what_fq_holds_before_the_default_qdisc_comes_back() {
    if !fq_here() {
        return;
    }
    // Deleting a qdisc drops the packets it holds, and so does deleting a clsact qdisc (the
    // kernel resets the device's queues to graft it). A session stopped while fq held delayed
    // datagrams lost them all (the first run on errinj: 0 of 100 arrived). chaos, and its
    // guardian after a SIGKILL, now let fq send them at their departure times first.
    for (ending, port) in [("stop", "5523"), ("SIGKILL", "5524")] {
        let sb = Sandbox::new();
        let before = sb.client_root_qdisc();
        let mut chaos = start_chaos(&delay_args(&sb, &["--delay", "1500ms"]));
        let _ = session_id(&mut chaos);
        let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "2s"]);
        sink.ready();
        let sent = sb.spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:{port}"), "--count", "100", "--rate", "400"]).json(T);
        assert_eq!(sent["errors"], 0, "{sent}");
        // Every datagram left the target at most 0.25 s ago and is due 1.5 s after it left: all
        // are held now.
        let ending_at = Instant::now();
        if ending == "stop" {
            let summary = stop_chaos(chaos);
            assert_eq!(counter(&summary, 0, "delayed"), 100, "{summary}");
        } else {
            chaos.signal(libc::SIGKILL);
            while sb.client_root_qdisc() != before && ending_at.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let restored_in = ending_at.elapsed();
        assert_eq!(sb.client_root_qdisc(), before, "{ending}: the default qdisc is back");
        sink.close_stdin();
        let got = sink.json(T);
        eprintln!("{ending}: default qdisc back in {restored_in:?}; {got}");
        assert_eq!(got["unique"], 100, "{ending}: datagrams fq held at the end were lost: {got}");
        assert!(delay_ms(&got, "min") >= 1499.0, "{ending}: a held datagram left early: {got}");
    }
}

/// Sends `n` datagrams at 500/s from the target to a sink in the server namespace; returns how
/// many packets chaos's `kind` root qdisc on device `dev` of the target's namespace held 0.4 s in
/// (its backlog), the `tc -s` text it was read from, and the sink's report.
fn held_on(sb: &Sandbox, dev: &str, kind: &str, port: u16, n: u64) -> (u64, String, Value) {
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "2s"]);
    sink.ready();
    let sender = sb.spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:{port}"), "--count", &n.to_string(), "--rate", "500"]);
    std::thread::sleep(Duration::from_millis(400));
    let (held, stats) = backlog(sb, dev, kind);
    assert_eq!(sender.json(T)["errors"], 0);
    sink.close_stdin();
    (held, stats, sink.json(T))
}

/// A delayed packet waits without being charged to its socket, as under netem (which orphans
/// it): held, it would fill the sender's send buffer and stop the sender, which throttles TCP
/// (TCP Small Queues) far below netem's throughput under the same delay. A UDP sender whose
/// buffer holds a handful of datagrams sends 300 under a 1 s delay without once finding it
/// full (before: 11 sent, 289 refused), while chaos's fq holds far more of them than the buffer
/// could; each arrives, delayed.
#[test]
fn delayed_packets_wait_without_filling_their_senders_buffer() {
    if !fq_here() {
        return;
    }
    let sb = Sandbox::new();
    let chaos = start_chaos(&delay_args_kind(&sb, "delay", &["--delay", "1s", "--proto", "udp"]));
    let port = 5531;
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "1500ms"]);
    sink.ready();
    let sender = sb.spawn(
        Place::Target,
        &["udp-send", "--to", &format!("{SERVER_V4}:{port}"), "--count", "300", "--rate", "1000", "--size", "64", "--sndbuf", "4096", "--nonblocking"],
    );
    std::thread::sleep(Duration::from_millis(250));
    let (held, _) = backlog(&sb, &sb.client_dev, "fq");
    let sent = sender.json(T);
    let got = sink.json(T);
    let summary = stop_chaos(chaos);
    assert_eq!((sent["sent"].as_u64(), sent["errors"].as_u64()), (Some(300), Some(0)), "no send found the buffer full: {sent}");
    // The buffer held 11 of these datagrams when chaos kept them charged to it (measured); a
    // quarter second at 1000/s is 250, fewer in a busy emulated guest.
    assert!(held >= 40, "chaos's fq held {held} datagrams a quarter second in, more than the sender's buffer could: {sent}");
    assert_eq!(got["unique"], 300, "every datagram arrived: {got}");
    assert!(got["delay_ms"]["min"].as_f64().unwrap_or(0.0) >= 1000.0, "each a second late: {got}");
    assert_eq!(counter(&summary, 0, "delayed"), 300, "{summary}");
}

/// The packets chaos's `kind` root qdisc on `dev` of the sandbox's client namespace holds now (its
/// backlog), and the `tc -s` text it was read from.
fn backlog(sb: &Sandbox, dev: &str, kind: &str) -> (u64, String) {
    let stats = Command::new("ip").args(["netns", "exec", &sb.client_ns, "tc", "-s", "qdisc", "show", "dev", dev]).output().expect("tc -s");
    let stats = String::from_utf8_lossy(&stats.stdout).into_owned();
    let held = stats
        .split(&format!("qdisc {kind} c"))
        .nth(1)
        .and_then(|r| r.split(" backlog ").nth(1))
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|p| p.trim_end_matches('p').parse().ok())
        .unwrap_or_else(|| panic!("no backlog of chaos's {kind} in {stats}"));
    (held, stats)
}

#[test]
fn a_device_with_a_queue_per_cpu_gets_fq_on_each_queue_and_its_default_mq_back() {
    if !fq_here() {
        return;
    }
    // A device with several transmit queues gets the kernel's default mq, a qdisc per queue: a
    // host's NIC. An ifb with four queues has it too, and carries the target's datagrams here:
    // chaos stamps them on the veth, a mirred action (after chaos's program) hands each to the
    // ifb, whose queues must hold it to its departure time, and the ifb sends it out the veth.
    for (ending, port) in [("stop", 5525), ("SIGKILL", 5526)] {
        let sb = Sandbox::new();
        let ifb = format!("{}q", sb.client_dev);
        ip(&["-n", &sb.client_ns, "link", "add", &ifb, "numtxqueues", "4", "type", "ifb"]);
        ip(&["-n", &sb.client_ns, "link", "set", &ifb, "up"]);
        sb.client_tc(&["qdisc", "add", "dev", &sb.client_dev, "clsact"]);
        // cls_bpf with a classic BPF program that matches every packet (`ret #-1`): every lane has it.
        let every_packet = ["bpf", "bytecode", "1,6 0 0 4294967295,"];
        let redirect = ["action", "mirred", "egress", "redirect", "dev", &ifb];
        sb.client_tc(&[&["filter", "add", "dev", &sb.client_dev, "egress", "prio", "60000"][..], &every_packet, &redirect].concat());
        let ifb_qdiscs = || sb.client_qdiscs().lines().filter(|l| l.contains(&format!(" dev {ifb} "))).map(str::to_string).collect::<Vec<_>>();
        let before = ifb_qdiscs();
        assert!(before.iter().any(|l| l.starts_with("qdisc mq 0: ") && l.contains(" root")), "no default mq: {before:?}");
        assert_eq!(before.len(), 5, "mq and a qdisc per queue: {before:?}");

        let mut chaos = start_chaos(&delay_args(&sb, &["--delay", "1s"]));
        let _ = session_id(&mut chaos);
        let during = ifb_qdiscs();
        let root = during.iter().find(|l| l.contains(" root")).cloned().unwrap_or_default();
        assert!(root.starts_with("qdisc mq c"), "chaos's mq is not the root: {during:?}");
        let major = root.split_whitespace().nth(2).unwrap_or_default().to_string();
        let fq_queues = during.iter().filter(|l| l.starts_with("qdisc fq ") && l.contains(&format!(" parent {major}"))).count();
        assert_eq!(fq_queues, 4, "fq on each of the 4 queues: {during:?}");

        // 100 datagrams in 0.2 s, each due 1 s after it left: the ifb's queues hold them (the
        // veth's fq, where the ifb sends them, would hold them too, were they not held first).
        let (held, stats, got) = held_on(&sb, &ifb, "mq", port, 100);
        eprintln!("{ending}: the ifb's queues held {held} datagrams 0.4 s in; {got}");
        assert!(held > 0, "{ending}: the ifb's fq queues held nothing: {stats}");
        assert_eq!(got["unique"], 100, "{ending}: {got}");
        assert!(delay_ms(&got, "min") >= 999.0, "{ending}: a datagram left before its time: {got}");

        let ended = Instant::now();
        if ending == "stop" {
            let summary = stop_chaos(chaos);
            assert_eq!(counter(&summary, 0, "delayed"), 100, "{summary}");
        } else {
            chaos.signal(libc::SIGKILL);
            while ifb_qdiscs() != before && ended.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let after = ifb_qdiscs();
        eprintln!("{ending}: the default mq back in {:?}; during the fault {during:?}", ended.elapsed());
        assert_eq!(after, before, "{ending}: the default mq and its queues' qdiscs are not back");
    }
}

/// A device that is down as the session starts sends nothing and gets no fq then (a tunnel's
/// fallback device sits down in every namespace); brought up while the session runs, it gets the
/// session's fq within the session's refresh (a second), which holds the target's packets, and its
/// default qdisc back at the end. (It kept the default qdisc it was given as it came up: failed
/// first.) The device is an ifb that carries the target's datagrams, as in the test above.
#[test]
fn a_device_brought_up_during_the_session_gets_fq_then() {
    if !fq_here() {
        return;
    }
    let sb = Sandbox::new();
    let ifb = format!("{}u", sb.client_dev);
    ip(&["-n", &sb.client_ns, "link", "add", &ifb, "type", "ifb"]);
    sb.client_tc(&["qdisc", "add", "dev", &sb.client_dev, "clsact"]);
    let every_packet = ["bpf", "bytecode", "1,6 0 0 4294967295,"];
    let redirect = ["action", "mirred", "egress", "redirect", "dev", &ifb];
    sb.client_tc(&[&["filter", "add", "dev", &sb.client_dev, "egress", "prio", "60000"][..], &every_packet, &redirect].concat());
    let ifb_root = || root_qdisc_line(&sb.client_qdiscs(), &ifb);
    // The kernel's default (pfifo_fast, or fq_codel on Debian's kernels) for an ifb as it comes
    // up, from a twin brought up before chaos starts (a read after the device comes up can come
    // after chaos's refresh in a stalled emulated guest).
    let twin = format!("{}v", sb.client_dev);
    ip(&["-n", &sb.client_ns, "link", "add", &twin, "type", "ifb"]);
    ip(&["-n", &sb.client_ns, "link", "set", &twin, "up"]);
    let default = root_qdisc_line(&sb.client_qdiscs(), &twin).replacen(&format!(" dev {twin} "), &format!(" dev {ifb} "), 1);
    ip(&["-n", &sb.client_ns, "link", "del", &twin]);

    let chaos = start_chaos(&delay_args(&sb, &["--delay", "1s"]));
    assert!(!ifb_root().starts_with("qdisc fq "), "a device that is down gets no fq: {}", ifb_root());
    ip(&["-n", &sb.client_ns, "link", "set", &ifb, "up"]);
    let up = Instant::now();
    while !ifb_root().starts_with("qdisc fq c") && up.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let during = ifb_root();
    eprintln!("up with {default:?}; {during:?} after {:?}", up.elapsed());
    assert!(during.starts_with("qdisc fq c"), "the session's fq on the device brought up: {}", sb.client_qdiscs());

    let port = 5527;
    let (held, stats, got) = held_on(&sb, &ifb, "fq", port, 50);
    eprintln!("the device's fq held {held} datagrams 0.4 s in; {got}");
    assert!(held > 0, "the device's fq held nothing: {stats}");
    assert_eq!(got["unique"], 50, "{got}");
    assert!(delay_ms(&got, "min") >= 999.0, "a datagram left before its time: {got}");
    let summary = stop_chaos(chaos);
    assert_eq!(counter(&summary, 0, "delayed"), 50, "{summary}");
    assert_eq!(ifb_root(), default, "the default qdisc the device came up with is back: {}", sb.client_qdiscs());
}
