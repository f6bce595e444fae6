//! The TC side: chaos's program runs before any other on the device, never touches `skb->mark`,
//! finds ports behind IPv6 extension headers, and a session that fails half-way through attaching
//! undoes exactly what it did, in the namespace where it did it.

use std::{process::Command, time::Duration};

use aya::programs::{
    SchedClassifier,
    links::LinkOrder,
    tc::{NlOptions, TcAttachOptions, TcAttachType},
};
use chaos_tests::*;
use chaos_user::kernel::{Kernel, netdev::Netns};

const T: Duration = Duration::from_secs(60);

fn drop_args(sb: &Sandbox, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["net", "drop", "--for", "60s", "--json"].map(String::from).to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(sb.target_args());
    a
}

fn udp(sb: &Sandbox, from: Place, to: &str, port: u16, n: u64, extra: &[&str]) -> Value {
    let v6 = to.contains(':');
    let bind = if v6 { format!("[::]:{port}") } else { format!("0.0.0.0:{port}") };
    let dest = if v6 { format!("[{to}]:{port}") } else { format!("{to}:{port}") };
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &bind, "--idle", "500ms"]);
    sink.ready();
    let mut args = vec!["udp-send", "--to", &dest, "--count"];
    let n_s = n.to_string();
    args.push(&n_s);
    args.extend_from_slice(extra);
    let sent = sb.spawn(from, &args).json(T);
    assert_eq!(sent["errors"], 0, "{sent}");
    sink.json(T)
}

#[test]
fn chaos_runs_before_a_program_that_was_there_first_and_passes_everything() {
    // Another tool's program on the device, attached before chaos, that passes every packet:
    // under tcx its "pass" ends the chain, so chaos must be first; under netlink the kernel puts
    // chaos's filter (priority chosen by the kernel) ahead of it too.
    let sb = Sandbox::new();
    let mut kernel = Kernel::load(false).expect("loading the kernel object");
    let prog: &mut SchedClassifier = kernel.ebpf.program_mut("chaos_probe_edt").expect("program").try_into().expect("classifier");
    prog.load().expect("load");
    let ns = Netns::open(&sb.netns_path(Place::Target)).expect("netns");
    let dev = sb.client_dev.clone();
    let netlink = netlink_tc();
    if netlink {
        sb.client_tc(&["qdisc", "add", "dev", &dev, "clsact"]);
    }
    let opts = if netlink {
        TcAttachOptions::Netlink(NlOptions { priority: 100, ..Default::default() })
    } else {
        TcAttachOptions::TcxOrder(LinkOrder::default())
    };
    let pass = ns.run(|| prog.attach_with_options(&dev, TcAttachType::Egress, opts).expect("attaching the other tool's program")).expect("netns");
    let chaos = start_chaos(&drop_args(&sb, &["--percent", "100", "--proto", "udp"]));
    let got = udp(&sb, Place::Target, SERVER_V4, 6601, 100, &[]);
    assert_eq!(got["received"], 0, "the other program's pass must not let chaos's drops through");
    assert_eq!(counter(&stop_chaos(chaos), 0, "dropped"), 100);
    ns.run(|| prog.detach(pass)).expect("netns").expect("detaching the other tool's program in its namespace");
}

#[test]
fn packets_keep_their_mark_and_selected_ones_are_dropped() {
    // An application that marks its packets (SO_MARK), as CNIs and routing policies rely on:
    // chaos drops half and must not change the mark of any packet that goes on. Sender and
    // receiver share the client namespace (lo keeps the mark), the receiver reads each
    // datagram's mark (SO_RCVMARK).
    let sb = Sandbox::new();
    let chaos = start_chaos(&drop_args(&sb, &["--percent", "50", "--proto", "udp", "--port", "6611"]));
    let mut sink = sb.spawn(Place::Bystander, &["udp-sink", "--bind", "127.0.0.1:6611", "--idle", "500ms", "--marks"]);
    sink.ready();
    let sent = sb.spawn(Place::Target, &["udp-send", "--to", "127.0.0.1:6611", "--count", "1000", "--mark", "4660"]).json(T);
    assert_eq!(sent["errors"], 0, "{sent}");
    let got = sink.json(T);
    let received = got["received"].as_u64().expect("received");
    assert_eq!(got["marks"], serde_json::json!({ "4660": received }), "every delivered datagram kept its mark 0x1234");
    let summary = stop_chaos(chaos);
    assert_eq!(counter(&summary, 0, "dropped"), 1000 - received, "what was lost is what chaos dropped");
    assert!((350..=650).contains(&received), "about half dropped: {received}");
}

#[test]
fn ports_are_found_behind_ipv6_extension_headers() {
    let sb = Sandbox::new();
    let chaos = start_chaos(&drop_args(&sb, &["--percent", "100", "--proto", "udp", "--port", "6621"]));
    let with_ext = udp(&sb, Place::Target, SERVER_V6, 6621, 100, &["--dstopts"]);
    assert_eq!(with_ext["received"], 0, "a destination-options header does not hide the UDP port");
    let other_port = udp(&sb, Place::Target, SERVER_V6, 6622, 100, &["--dstopts"]);
    assert_eq!(other_port["received"], 100, "and the port still filters");
    let summary = stop_chaos(chaos);
    assert_eq!(counter(&summary, 0, "matched"), 100);
    assert_eq!(summary["kernel_errors"]["ipv6_headers"], 0);
}

/// Filters on the egress hook of `dev` in namespace `ns` (iproute2's view).
fn egress_filters(ns: &str, dev: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns, "tc", "filter", "show", "dev", dev, "egress"]).output().expect("tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_session_that_fails_half_way_through_attaching_undoes_exactly_what_it_did() {
    // chaos itself runs in a namespace of its own that holds another tool's filters on devices
    // with the same indexes, priorities and handles chaos's filters get in the target's
    // namespace (lo, the sandbox's veth, a second veth pair: indexes 1-4). The 2nd of the
    // target's four attachments fails (a test hook): the 1st must be undone inside the target's
    // namespace, and nothing in chaos's own namespace may be touched.
    let sb = Sandbox::new();
    let (x, y) = (format!("{}x", sb.client_dev), format!("{}y", sb.client_dev));
    ip(&["-n", &sb.client_ns, "link", "add", &x, "type", "veth", "peer", "name", &y]);
    let own = unique("cx");
    ip(&["netns", "add", &own]);
    let cleanup = scopeguard(own.clone());
    ip(&["-n", &own, "link", "set", "lo", "up"]);
    let decoys = ["lo".to_string(), format!("{own}a"), format!("{own}b"), format!("{own}c"), format!("{own}d")];
    ip(&["-n", &own, "link", "add", &decoys[1], "type", "veth", "peer", "name", &decoys[2]]);
    ip(&["-n", &own, "link", "add", &decoys[3], "type", "veth", "peer", "name", &decoys[4]]);
    for d in &decoys {
        let tc = |args: &[&str]| {
            let out = Command::new("ip").args(["netns", "exec", &own, "tc"]).args(args).output().expect("tc");
            assert!(out.status.success(), "tc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        tc(&["qdisc", "add", "dev", d, "clsact"]);
        tc(&["filter", "add", "dev", d, "egress", "prio", "49152", "handle", "1", "bpf", "bytecode", "1,6 0 0 4294967295"]);
    }
    let args = drop_args(&sb, &["--percent", "100", "--proto", "udp"]);
    let script = format!(
        "CHAOS_TEST_FAIL_ATTACH=2 exec nsenter --net=/run/netns/{own} '{}' {}",
        chaos_bin().display(),
        args.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().expect("sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("failed on purpose"), "{err}");
    for d in &decoys {
        assert!(egress_filters(&own, d).contains("pref 49152"), "the other tool's filter on {d} in chaos's own namespace is gone");
    }
    for d in ["lo", sb.client_dev.as_str(), x.as_str(), y.as_str()] {
        let f = egress_filters(&sb.client_ns, d);
        assert!(!f.contains("chaos_tc_egress"), "chaos's filter stayed on {d}:\n{f}");
    }
    assert!(!sb.client_qdiscs().contains("clsact"), "a clsact chaos added stayed:\n{}", sb.client_qdiscs());
    assert_eq!(udp(&sb, Place::Target, SERVER_V4, 6631, 50, &[])["received"], 50, "nothing injects");
    drop(cleanup);
}

/// Deletes a named network namespace when dropped.
struct NsGuard(String);

fn scopeguard(ns: String) -> NsGuard {
    NsGuard(ns)
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn devices_without_ethernet_framing_get_chaos_in_both_directions() {
    // A tun device in the target's namespace has no link-layer header, so the programs that read
    // headers relative to the network header go on it (chaos_tc_l3, chaos_tc_ingress_l3). Each
    // must load on every lane's kernel: once, the ingress one was refused where a tunnel device
    // existed (errinj's sit0), and with it the whole session.
    let sb = Sandbox::new();
    let add = Command::new("ip").args(["-n", &sb.client_ns, "tuntap", "add", "dev", "chaostun0", "mode", "tun"]).status().expect("ip tuntap");
    assert!(add.success(), "adding a tun device");
    let up = Command::new("ip").args(["-n", &sb.client_ns, "link", "set", "chaostun0", "up"]).status().expect("ip link");
    assert!(up.success(), "bringing the tun device up");
    let mut args: Vec<String> = ["net", "duplicate", "--percent", "100", "--direction", "both", "--proto", "udp", "--for", "60s", "--json"].map(String::from).to_vec();
    args.extend(sb.target_args());
    let chaos = start_chaos(&args);
    let got = udp(&sb, Place::Target, SERVER_V4, 6611, 100, &[]);
    let summary = stop_chaos(chaos);
    assert_eq!(got["received"], 200, "every datagram sent twice: {got}");
    let devices = summary["attached"]["devices"].as_array().expect("attached devices");
    for direction in ["egress", "ingress"] {
        assert!(
            devices.iter().any(|d| d["ifname"] == "chaostun0" && d["direction"] == direction),
            "no {direction} program on the tun device: {devices:?}"
        );
    }
}
