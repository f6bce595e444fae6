//! `chaos net dns`: the kernel answers the target's queries (or loses them), real resolver clients
//! read the answer — glibc's `getaddrinfo` on every lane, `dig` where it is installed (the host
//! lane) — and the test's own DNS server shows which queries still reached it.

use std::{process::Command, time::Duration};

use chaos_tests::*;

const T: Duration = Duration::from_secs(60);

/// The test's DNS server, in the server namespace, on port 53 of both its addresses.
fn dns_server(sb: &Sandbox) -> Proc {
    let mut s = sb.spawn(Place::Server, &["dns-server", "--bind", "[::]:53", "--max", "170s"]);
    s.ready();
    s
}

/// A resolv.conf naming `server`, with one try of one second (glibc's default is 5 s, twice).
fn resolv_conf(server: &str) -> TempFile {
    TempFile::new("chaos-resolv-", &format!("nameserver {server}\noptions timeout:1 attempts:1\n"))
}

/// `getaddrinfo(name)` `count` times from `place` with resolv.conf `conf`: the outcomes by name
/// ("ok", "EAI_AGAIN", ...), and the longest lookup in ms.
fn resolve(sb: &Sandbox, place: Place, conf: &TempFile, name: &str, count: u64) -> (Value, f64) {
    let r = sb.spawn(place, &["resolve", "--resolv-conf", conf.path(), "--name", name, "--count", &count.to_string()]).json(T);
    (r["results"].clone(), r["max_ms"].as_f64().expect("max_ms"))
}

fn outcome(name: &str, count: u64) -> Value {
    serde_json::json!({ name: count })
}

/// The server's queries by name, once it is told to stop.
fn queries(server: Proc) -> Value {
    let mut server = server;
    server.close_stdin();
    server.json(T)["queries"].clone()
}

#[test]
fn dns_faults_answer_the_targets_queries_and_nobody_elses() {
    let sb = Sandbox::new();
    let server = dns_server(&sb);
    let (v4, v6) = (resolv_conf(SERVER_V4), resolv_conf(SERVER_V6));
    let cg = sb.cgroup.path.display().to_string();
    let netns = sb.netns_path(Place::Target).display().to_string();
    let fault = |name: &str, rcode: &str| {
        format!("[[fault]]\nkind = \"net.dns\"\ncgroup = \"{cg}\"\nnetns = [\"{netns}\"]\nname = \"{name}\"\nrcode = \"{rcode}\"\n\n")
    };
    let file = TempFile::new(
        "chaos-dns-",
        &[fault("*.fail.test", "servfail"), fault("gone.test", "nxdomain"), fault("*.slow.test", "timeout")].concat(),
    );
    let chaos = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);

    // glibc asks for A and AAAA at once: two queries a lookup, each answered as it leaves.
    assert_eq!(resolve(&sb, Place::Target, &v4, "api.fail.test", 2).0, outcome("EAI_AGAIN", 2), "SERVFAIL over IPv4");
    assert_eq!(resolve(&sb, Place::Target, &v6, "API.Fail.Test", 1).0, outcome("EAI_AGAIN", 1), "SERVFAIL over IPv6, any case");
    assert_eq!(resolve(&sb, Place::Target, &v4, "gone.test", 1).0, outcome("EAI_NONAME", 1), "NXDOMAIN over IPv4");
    assert_eq!(resolve(&sb, Place::Target, &v6, "gone.test", 1).0, outcome("EAI_NONAME", 1), "NXDOMAIN over IPv6");
    let (slow, waited) = resolve(&sb, Place::Target, &v4, "x.slow.test", 1);
    assert_eq!(slow, outcome("EAI_AGAIN", 1), "no answer: the resolver timed out");
    assert!(waited >= 900.0, "the lookup waited out the 1 s timeout: {waited} ms");
    // Names no rule covers, and a bystander asking for a faulted one, reach the server.
    assert_eq!(resolve(&sb, Place::Target, &v4, "fail.test", 1).0, outcome("ok", 1), "*.fail.test is only below fail.test");
    assert_eq!(resolve(&sb, Place::Target, &v6, "sub.gone.test", 1).0, outcome("ok", 1), "gone.test is that name only");
    assert_eq!(resolve(&sb, Place::Bystander, &v4, "api.fail.test", 2).0, outcome("ok", 2), "a bystander resolves");

    // dig (Debian's bind9-dnsutils) where the lane has it: the status it reads is the kernel's.
    let dig = Command::new("dig").arg("-v").output().is_ok();
    if dig {
        for server in [SERVER_V4, SERVER_V6] {
            let mut cmd = Command::new("dig");
            cmd.args(["+tries=1", "+time=2", &format!("@{server}"), "www.fail.test", "A"]);
            let out = chaos_user::sandbox::spawn_in(cmd.stdout(std::process::Stdio::piped()), Some(&sb.cgroup.path), Some(&sb.netns_path(Place::Target)))
                .expect("running dig")
                .wait_with_output()
                .expect("dig's output");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("status: SERVFAIL") && text.contains("flags: qr rd ra"), "dig @{server}: {text}");
        }
    } else {
        assert_ne!(lane(), "host", "the host lane installs dig (cargo xtask setup)");
        eprintln!("no dig on the {} lane: glibc's resolver alone reads the kernel's answers", lane());
    }

    let summary = stop_chaos(chaos);
    let seen = queries(server);
    let digs = if dig { 2 } else { 0 };
    assert_eq!(counter(&summary, 0, "queries_answered"), 2 * 3 + digs, "rule 0: {summary}");
    assert_eq!(counter(&summary, 1, "queries_answered"), 2 * 2, "rule 1: {summary}");
    assert_eq!(counter(&summary, 2, "queries_dropped"), 2, "rule 2: {summary}");
    // The server saw none of the target's faulted queries: only the bystander's two lookups.
    assert_eq!(seen["api.fail.test"], 4, "{seen}");
    for name in ["gone.test", "x.slow.test", "www.fail.test"] {
        assert!(seen.get(name).is_none(), "{name} reached the server: {seen}");
    }
    assert_eq!((&seen["fail.test"], &seen["sub.gone.test"]), (&2.into(), &2.into()), "{seen}");
    assert!(summary["kernel_errors"].as_object().expect("errors").values().all(|v| v == 0), "{summary}");
}

#[test]
fn a_dns_fault_ends_at_its_deadline_even_with_chaos_frozen() {
    let sb = Sandbox::new();
    let server = dns_server(&sb);
    let conf = resolv_conf(SERVER_V4);
    let lifetime = Duration::from_secs(5);
    let (chaos, started) = start_frozen_udp_fault(&sb, &["dns", "--rcode", "nxdomain"], lifetime);
    assert_eq!(resolve(&sb, Place::Target, &conf, "before.test", 1).0, outcome("EAI_NONAME", 1), "the fault before its deadline");
    sleep_past(started, lifetime);
    assert_eq!(resolve(&sb, Place::Target, &conf, "after.test", 1).0, outcome("ok", 1), "the fault outlived its deadline with chaos frozen");
    chaos.signal(libc::SIGCONT);
    let summary = chaos.json(Duration::from_secs(30));
    let seen = queries(server);
    assert_eq!((seen.get("before.test"), &seen["after.test"]), (None, &2.into()), "{seen}");
    assert_eq!(counter(&summary, 0, "queries_answered"), 2, "{summary}");
}

#[test]
fn bad_dns_faults_are_refused_in_one_line() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    for (extra, mentions) in [
        (&["--rcode", "servfail", "--direction", "ingress"][..], "sent packets only"),
        (&["--rcode", "servfail", "--proto", "tcp"][..], "over UDP"),
        (&["--rcode", "servfail", "--name", "a.*.example"][..], "first label"),
        (&["--rcode", "servfail", "--name", "a..example"][..], "not a DNS name"),
        (&["--rcode", "ok"][..], "--rcode"),
    ] {
        let args: Vec<&str> = ["net", "dns", "--cgroup", &cg].iter().copied().chain(extra.iter().copied()).collect();
        let (code, out, err) = run_chaos(&args);
        assert_eq!((code, err.len()), (2, 1), "chaos {args:?}: {err:?}");
        assert!(err[0].starts_with("chaos: ") && err[0].contains(mentions), "chaos {args:?}: {:?} does not mention {mentions:?}", err[0]);
        assert!(out.is_empty(), "{out}");
    }
}
