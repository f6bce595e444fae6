//! Expiry while frozen: one session with a rule of every fault kind the kernel runs (each backend
//! of `sys fail` it has), `chaos` SIGSTOPped from the moment it injects. Each rule shows its fault
//! before the deadline; from the deadline + 100 ms on, the same traffic and calls from the target
//! are untouched and the kernel's counters of every rule (read by `chaos status` from the frozen
//! session's maps) stop at what they were: matched, selected and injected do not move while seen
//! does (the programs still run). What needs user space to end (a process `sys delay` holds, fq in
//! place of a device's default qdisc, a cgroup `proc pause` froze) is ended by the guardian with
//! chaos still stopped. Continued, chaos ends at its deadline with its summary and leaves nothing
//! behind.
//!
//! The two kinds chaos does itself rather than the kernel join as far as they can: `proc pause`
//! freezes its cgroup before the deadline and the guardian thaws it after (the cgroup's process
//! stands still through the window and goes on within the bound of its end); `proc kill` signals
//! once as its window opens, so its window opens (`after`) with chaos already stopped: a stopped
//! chaos signals nobody, and continued past the deadline it must not signal late (the process
//! in its cgroup lives to the end, its counters 0). Neither runs a kernel program, so `seen`
//! does not move for them after the deadline.
//!
//! The packet rules are on the sandbox's cgroup, each on a port of its own; each syscall rule on a
//! cgroup of its own, so no rule's fault falls on another's probe. A probe that must not be failed
//! while it sets up (an open-family rule fails every open, a dynamic loader's too) is a process
//! started before the session, waiting for a line.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chaos_tests::*;
use chaos_user::sandbox::TempCgroup;

const T: Duration = Duration::from_secs(60);
/// A UDP probe sends this many datagrams, at 500 a second, of SIZE bytes each.
const DGRAMS: u64 = 100;
const SIZE: &str = "500";
/// A syscall probe makes its call this many times.
const CALLS: u64 = 3;
/// After the deadline, a UDP probe's datagrams must all arrive within this: the delay faults
/// hold each datagram they select for 300 ms or more, so one selected after the deadline shows;
/// the rest is margin for an emulated guest with a dozen probes at once.
const ON_TIME_MS: f64 = 250.0;

/// How a rule's fault shows: the same traffic or calls, from the target, before and after the
/// deadline.
#[derive(Clone, Copy)]
enum Probe {
    /// Datagrams from the target to the server on this port; the fault shows as the function says.
    Udp(u16, fn(&Value) -> bool),
    /// Datagrams over IPv6, from the target to the server on the first port and back to the
    /// target on the second: a partition loses both.
    UdpBothWays(u16, u16),
    /// TCP requests from the target to the rr-server on this port: none answered.
    Tcp(u16),
    /// A lookup of a name under frozen.test: SERVFAIL.
    Dns,
    /// `syscall-loop --call CALL` by a process of the rule's own cgroup: each call fails with ERRNO.
    Calls(&'static str, i32),
    /// A process of the rule's own cgroup sleeps (nanosleep): killed by SIGTERM.
    Signal,
    /// A process of the rule's own cgroup calls getppid: held (for 60 s, well past the deadline).
    Hold,
    /// A process of the rule's own cgroup ticks every 20 ms: it stands still while the cgroup is
    /// frozen (`proc pause`).
    Pause,
    /// A process of the rule's own cgroup sleeps: `proc kill`, its window opening halfway to the
    /// deadline with chaos stopped, must never signal it.
    KillLate,
}

impl Probe {
    fn sys(self) -> bool {
        matches!(self, Probe::Calls(..) | Probe::Signal | Probe::Hold)
    }

    /// Done by chaos itself, no kernel program: nothing counts `seen`.
    fn proc(self) -> bool {
        matches!(self, Probe::Pause | Probe::KillLate)
    }

    fn net(self) -> bool {
        !self.sys() && !self.proc()
    }

    /// Its rule has a cgroup of its own.
    fn own_cgroup(self) -> bool {
        self.sys() || self.proc()
    }
}

struct Case {
    name: &'static str,
    /// The backends it needs (`chaos probe`'s names), all of them this lane's (`lane_has`).
    needs: &'static [&'static str],
    body: String,
    probe: Probe,
}

impl Case {
    /// Sets departure times, so fq replaces the device's default qdisc.
    fn fq(&self) -> bool {
        self.needs.contains(&"sch_fq")
    }
}

fn delay_ms(v: &Value, q: &str) -> Option<f64> {
    v["delay_ms"][q].as_f64()
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

const LSM_CASE: &str = "sys.fail openat (lsm, --path)";

/// The directory of a syscall probe's files (the LSM rule's --path, for its probe).
fn case_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(name.replace(|c: char| !c.is_ascii_alphanumeric(), "-"))
}

fn cases(dir: &Path) -> Vec<Case> {
    let udp = |port: u16, kind: &str, settings: &str| format!("kind = \"{kind}\"\n{settings}\nproto = \"udp\"\nport = {port}");
    let fail = |call: &str, errno: &str, backend: &str| format!("kind = \"sys.fail\"\nsyscall = \"{call}\"\nerrno = \"{errno}\"\nbackend = \"{backend}\"");
    let case = |name, needs, body, probe| Case { name, needs, body, probe };
    const NET: &[&str] = &["cgroup_skb"];
    const FQ: &[&str] = &["sch_fq"];
    const CGROUP: &[&str] = &["cgroup_sock_addr"];
    const TP_BTF: &[&str] = &["tp_btf_signal"];
    vec![
        case("net.drop (UDP)", NET, udp(7401, "net.drop", "percent = 100"), Probe::Udp(7401, |v| n(v, "received") == 0)),
        case("net.partition (both ways)", NET, format!("kind = \"net.partition\"\npeer = \"{SERVER_V6}\""), Probe::UdpBothWays(7402, 7412)),
        case("net.delay", FQ, udp(7403, "net.delay", "delay = \"300ms\""), Probe::Udp(7403, |v| delay_ms(v, "min").is_some_and(|d| d >= 299.0))),
        case("net.duplicate", NET, udp(7404, "net.duplicate", "percent = 100"), Probe::Udp(7404, |v| n(v, "duplicates") > 0)),
        case("net.corrupt", NET, udp(7405, "net.corrupt", "percent = 100"), Probe::Udp(7405, |v| n(v, "unique") == 0)),
        // 50 KB/s against 250 KB/s offered: the last datagram leaves about 0.9 s late.
        case("net.rate (shaping)", FQ, udp(7406, "net.rate", "rate = \"400kbit\""), Probe::Udp(7406, |v| delay_ms(v, "max").is_some_and(|d| d >= 400.0))),
        case(
            "net.rate (police)",
            NET,
            udp(7407, "net.rate", "rate = \"8kbit\"\nburst = \"2000b\"\npolice = true"),
            Probe::Udp(7407, |v| n(v, "received") < 20),
        ),
        case("net.reorder", FQ, udp(7408, "net.reorder", "percent = 50\ndelay = \"300ms\""), Probe::Udp(7408, |v| n(v, "reordered") > 0)),
        case("net.stall", NET, udp(7409, "net.stall", "after-bytes = \"1000\""), Probe::Udp(7409, |v| n(v, "received") < 10)),
        case("net.drop (TCP)", NET, "kind = \"net.drop\"\npercent = 100\nproto = \"tcp\"\nport = 7410".into(), Probe::Tcp(7410)),
        case("net.dns", NET, "kind = \"net.dns\"\nrcode = \"servfail\"\nname = \"*.frozen.test\"".into(), Probe::Dns),
        case("sys.fail connect (cgroup)", CGROUP, fail("connect", "ECONNREFUSED", "cgroup"), Probe::Calls("connect", libc::ECONNREFUSED)),
        case("sys.fail bind (cgroup)", CGROUP, fail("bind", "EADDRINUSE", "cgroup"), Probe::Calls("bind", libc::EADDRINUSE)),
        case("sys.fail sendto (cgroup)", CGROUP, fail("sendto", "ENETUNREACH", "cgroup"), Probe::Calls("sendto", libc::ENETUNREACH)),
        case(
            LSM_CASE,
            &["bpf_lsm"],
            format!("{}\npath = \"{}\"", fail("openat", "EACCES", "lsm"), case_dir(dir, LSM_CASE).display()),
            Probe::Calls("open", libc::EACCES),
        ),
        case("sys.fail openat (fmod_ret)", &["fmod_ret_security"], fail("openat", "EACCES", "fmod-ret"), Probe::Calls("open", libc::EACCES)),
        case("sys.fail openat (kprobe)", &["kprobe_override"], fail("openat", "EACCES", "kprobe"), Probe::Calls("open", libc::EACCES)),
        case("sys.fail mkdir (fmod_ret)", &["fmod_ret_syscall"], fail("mkdir", "EPERM", "fmod-ret"), Probe::Calls("mkdir", libc::EPERM)),
        case("sys.signal", TP_BTF, "kind = \"sys.signal\"\nsyscall = \"nanosleep\"\nsignal = \"TERM\"".into(), Probe::Signal),
        case("sys.delay", TP_BTF, "kind = \"sys.delay\"\nsyscall = \"getppid\"\ndelay = \"60s\"\nwhen = \"1\"".into(), Probe::Hold),
        case("proc.pause", &["cgroup_freezer"], "kind = \"proc.pause\"".into(), Probe::Pause),
        // Its `after` (half the lifetime, its `for` the rest) is added with the lifetime.
        case("proc.kill (window opening with chaos stopped)", &[], "kind = \"proc.kill\"\nsignal = \"TERM\"".into(), Probe::KillLate),
    ]
}

/// DGRAMS stamped datagrams from `from` to a sink at `to` on `port` (`addr` is its address); the
/// sink's report.
fn udp_round(sb: &Sandbox, from: Place, to: Place, addr: &str, port: u16) -> Value {
    let mut sink = sb.spawn(to, &["udp-sink", "--bind", &format!("[::]:{port}"), "--idle", "1500ms"]);
    sink.ready();
    let sent = sb.spawn(from, &["udp-send", "--to", &format!("{addr}:{port}"), "--count", &DGRAMS.to_string(), "--rate", "500", "--size", SIZE]).json(T);
    assert_eq!(sent["errors"], 0, "{sent}");
    let got = sink.json(T);
    assert_eq!(got["rcvbuf_errors"], 0, "the sink's buffer overflowed (a loaded machine), so its view says nothing: {got}");
    got
}

/// Every datagram arrived once, intact, in order and on time.
fn udp_clean(v: &Value) -> bool {
    (n(v, "received"), n(v, "unique"), n(v, "duplicates"), n(v, "corrupted"), n(v, "reordered")) == (DGRAMS, DGRAMS, 0, 0, 0)
        && delay_ms(v, "max").is_some_and(|d| d < ON_TIME_MS)
}

fn udp_line(v: &Value) -> String {
    if n(v, "received") == 0 {
        return format!("received 0 of {DGRAMS} sent");
    }
    format!(
        "received {} of {DGRAMS} sent (unique {}, duplicates {}, corrupted {}, reordered {}), delay min {:.0} max {:.0} ms",
        v["received"],
        v["unique"],
        v["duplicates"],
        v["corrupted"],
        v["reordered"],
        delay_ms(v, "min").unwrap_or(f64::NAN),
        delay_ms(v, "max").unwrap_or(f64::NAN)
    )
}

/// Runs a packet probe: (what was seen, whether the fault showed, whether all was clean).
fn net_probe(sb: &Sandbox, probe: Probe, resolv: &TempFile) -> (String, bool, bool) {
    match probe {
        Probe::Udp(port, shows) => {
            let got = udp_round(sb, Place::Target, Place::Server, SERVER_V4, port);
            (udp_line(&got), shows(&got), udp_clean(&got))
        }
        Probe::UdpBothWays(out, back) => {
            let (to, from) = std::thread::scope(|s| {
                let back = s.spawn(|| udp_round(sb, Place::Server, Place::Target, &format!("[{CLIENT_V6}]"), back));
                (udp_round(sb, Place::Target, Place::Server, &format!("[{SERVER_V6}]"), out), back.join().expect("a probe"))
            });
            let line = format!("to the peer: {}; from it: {}", udp_line(&to), udp_line(&from));
            (line, n(&to, "received") == 0 && n(&from, "received") == 0, udp_clean(&to) && udp_clean(&from))
        }
        Probe::Tcp(port) => {
            let to = format!("{SERVER_V4}:{port}");
            let got = sb.spawn(Place::Target, &["rr-client", "--to", &to, "--rate", "10", "--duration", "1s", "--interval", "60s", "--timeout", "1s"]).json(T);
            let (ok, errors) = (n(&got, "ok"), n(&got, "errors"));
            (format!("{ok} requests answered, {errors} failed"), ok == 0 && errors > 0, ok > 0 && errors == 0)
        }
        Probe::Dns => {
            let got = sb.spawn(Place::Target, &["resolve", "--resolv-conf", resolv.path(), "--name", "a.frozen.test"]).json(T);
            let results = got["results"].clone();
            (format!("getaddrinfo: {results}"), results == serde_json::json!({"EAI_AGAIN": 1}), results == serde_json::json!({"ok": 1}))
        }
        _ => unreachable!("a syscall probe"),
    }
}

/// A syscall probe's process in `cgroup`, set up and waiting for its line; `dir` holds its files.
fn sys_probe(sb: &Sandbox, cgroup: &Path, probe: Probe, dir: &Path) -> Proc {
    let sub = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).expect("a probe directory");
        d.display().to_string()
    };
    let calls = CALLS.to_string();
    let mut args: Vec<String> = ["syscall-loop", "--wait", "--count", &calls].map(String::from).to_vec();
    match probe {
        Probe::Calls(call, _) => {
            args.extend(["--call".into(), call.into()]);
            match call {
                "connect" => args.extend(["--to".into(), format!("{SERVER_V4}:7410")]),
                "sendto" => args.extend(["--to".into(), "127.0.0.1:7411".into()]),
                "open" => args.extend(["--path".into(), format!("{}/f", dir.display())]),
                "mkdir" => args.extend(["--path".into(), sub(&unique("mkdir-"))]),
                _ => {}
            }
        }
        Probe::Signal => args.extend(["--call".into(), "nanosleep".into(), "--path".into(), sub("sleep")]),
        Probe::Hold => args.extend(["--call", "getppid", "--timings"].map(String::from)),
        _ => unreachable!("a packet probe"),
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = sb.spawn_at(cgroup, Place::Target, &args);
    p.ready();
    p
}

/// A process in `cgroup` (no namespace of the sandbox's): for `proc pause` a shell printing the
/// time since boot (/proc/uptime) every 20 ms, for `proc kill` a sleep.
fn proc_probe(cgroup: &Path, probe: Probe) -> Proc {
    let mut cmd = Command::new("sh");
    let script = if let Probe::Pause = probe { "while :; do read u _ < /proc/uptime; echo $u; sleep 0.02; done" } else { "exec sleep 170" };
    cmd.args(["-c", script]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    Proc::new(chaos_user::sandbox::spawn_in(&mut cmd, Some(cgroup), None).expect("a proc probe"), format!("{script} in {}", cgroup.display()))
}

/// Ends a ticker: its longest pause, and when it went on after it (uptime ns).
fn longest_gap(mut p: Proc) -> (u64, u64) {
    let _ = p.child.kill();
    let mut out = String::new();
    std::io::Read::read_to_string(p.child.stdout.as_mut().expect("piped"), &mut out).expect("the ticker's output");
    let ticks: Vec<u64> = out.lines().filter_map(|l| l.trim().parse::<f64>().ok()).map(|s| (s * 1e9) as u64).collect();
    assert!(ticks.len() > 10, "the ticker ticked {} times", ticks.len());
    ticks.windows(2).map(|w| (w[1].saturating_sub(w[0]), w[1])).max().expect("ticks")
}

/// Waits (bounded by `until`) for a cgroup's freeze state to be `want` ("1" frozen, "0" thawed).
fn freeze_reaches(cgroup: &Path, want: &str, until: Instant) -> bool {
    loop {
        if freeze_state(cgroup) == (want.into(), want.into()) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long each of a syscall-loop's calls took, in ms.
fn took_ms(out: &Value) -> Vec<f64> {
    out["took_ns"][0].as_array().expect("took_ns").iter().map(|v| v.as_u64().unwrap_or(0) as f64 / 1e6).collect()
}

/// Ends a syscall probe (not a hold): (what was seen, whether the fault showed, whether all was clean).
fn sys_outcome(p: Proc, probe: Probe) -> (String, bool, bool) {
    let (code, out, err) = p.finish(T);
    match probe {
        // Proc::finish gives -1 for a death by signal.
        Probe::Signal => {
            let ok = serde_json::from_str::<Value>(out.lines().last().unwrap_or_default()).map(|v| v["ok"].clone()).unwrap_or_default();
            let line = if code == -1 { "killed by a signal at its first sleep".to_string() } else { format!("exit {code}, {ok} of {CALLS} sleeps") };
            (line, code == -1, code == 0 && ok == CALLS)
        }
        Probe::Calls(_, errno) => {
            assert_eq!(code, 0, "{out} {err:?}");
            let v: Value = serde_json::from_str(out.lines().last().unwrap_or_default()).expect("the loop's JSON");
            let failed = v["errors"][errno.to_string()].as_u64().unwrap_or(0);
            (format!("{} ok, errors {}", v["ok"], v["errors"]), failed == CALLS, n(&v, "ok") == CALLS)
        }
        _ => unreachable!("a hold or a packet probe"),
    }
}

/// The frozen session's entry in `chaos status --json`: each rule's counters, read by map id.
fn session_status(pid: u32, rules: usize) -> Vec<Value> {
    let st = status();
    let s = st["sessions"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["pid"] == pid))
        .unwrap_or_else(|| panic!("chaos status does not list session pid {pid}: {st}"));
    assert!(s.get("error").is_none(), "chaos status could not read the frozen session's maps: {s}");
    let faults = s["faults"].as_array().expect("faults").clone();
    assert_eq!(faults.len(), rules, "{s}");
    faults
}

const KEPT: [&str; 3] = ["matched", "selected", "injected"];

fn kept(f: &Value) -> [u64; 3] {
    KEPT.map(|k| n(f, k))
}

fn lifetime() -> Duration {
    // The probes before the deadline run at once: 2-4 s on the host, 8-13 s in the errinj guest
    // alone (emulated, on one host core), which in CI shares the machine with the host lane.
    if lane() == "host" { Duration::from_secs(6) } else { Duration::from_secs(25) }
}

#[test]
fn every_fault_kind_ends_at_its_deadline_with_chaos_frozen() {
    let sb = Sandbox::new();
    let dir = temp_dir("chaos-frozen-");
    let all = cases(&dir.0);
    let lifetime = lifetime();
    // The rules this lane's kernel runs, by its data (a test of its own holds `chaos probe` to it).
    let cases: Vec<(usize, &Case)> = all.iter().enumerate().filter(|(_, c)| c.needs.iter().all(|b| lane_has(b))).collect();
    // A cgroup of its own for each syscall rule.
    let own: Vec<Option<TempCgroup>> = all
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (c.probe.own_cgroup() && cases.iter().any(|(k, _)| *k == i)).then(|| TempCgroup::new(&format!("chaos-test-{}", unique("fz"))).expect("a cgroup"))
        })
        .collect();
    let cgroup_of = |i: usize| -> PathBuf { own[i].as_ref().map_or(sb.cgroup.path.clone(), |c| c.path.clone()) };
    // proc.kill's window opens halfway to the deadline, with chaos stopped; it ends with the others'.
    let kill_after = lifetime / 2;
    let text: String = cases
        .iter()
        .map(|(i, c)| match c.probe {
            Probe::KillLate => {
                let body = format!("{}\nafter = \"{}ms\"", c.body, kill_after.as_millis());
                fault_table(&sb, &cgroup_of(*i), &body, &format!("{}ms", (lifetime - kill_after).as_millis())) + "\n"
            }
            _ => fault_table(&sb, &cgroup_of(*i), &c.body, &format!("{}ms", lifetime.as_millis())) + "\n",
        })
        .collect();
    let file = TempFile::new("chaos-frozen-", &text);
    let names: Vec<&str> = cases.iter().map(|(_, c)| c.name).collect();
    eprintln!("rules of this kernel ({}): {}", lane(), names.join(", "));
    assert!(cases.iter().any(|(_, c)| c.probe.sys()) && cases.iter().any(|(_, c)| c.probe.net()), "{names:?}");
    let targets: Vec<PathBuf> =
        std::iter::once(sb.cgroup.path.clone()).chain(cases.iter().filter(|(_, c)| c.probe.own_cgroup()).map(|(i, _)| cgroup_of(*i))).collect();
    // Each syscall probe's files are in a directory of its own: an open-family probe opens its
    // file f (under the LSM rule's --path, for its probe).
    for (_, c) in cases.iter().filter(|(_, c)| c.probe.sys()) {
        let d = case_dir(&dir.0, c.name);
        std::fs::create_dir_all(&d).expect("a probe directory");
        std::fs::write(d.join("f"), b"chaos").expect("a probe file");
    }

    // The servers, and the syscall probes of before the deadline (set up now, before any rule).
    let mut dns = sb.spawn(Place::Server, &["dns-server", "--bind", "[::]:53", "--max", "170s"]);
    dns.ready();
    let mut rr = sb.spawn(Place::Server, &["rr-server", "--bind", &format!("{SERVER_V4}:7410"), "--max", "170s"]);
    rr.ready();
    let resolv = TempFile::new("chaos-resolv-", &format!("nameserver {SERVER_V4}\noptions timeout:1 attempts:1\n"));
    let mut before_sys: Vec<(usize, Proc)> =
        cases.iter().filter(|(_, c)| c.probe.sys()).map(|(i, c)| (*i, sys_probe(&sb, &cgroup_of(*i), c.probe, &case_dir(&dir.0, c.name)))).collect();
    let root_before = sb.client_root_qdisc();
    // The proc probes, started before the session: a ticker the pause freezes, a sleeper the kill
    // must never reach.
    let mut proc_probes: Vec<(usize, Proc)> = cases.iter().filter(|(_, c)| c.probe.proc()).map(|(i, c)| (*i, proc_probe(&cgroup_of(*i), c.probe))).collect();

    let starting = Instant::now();
    let mut chaos = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);
    chaos.signal(libc::SIGSTOP);
    let start_took = starting.elapsed();
    // The rules started before chaos said it injects: their deadline is no later than this.
    let (deadline, deadline_up) = (Instant::now() + lifetime, uptime_ns() + lifetime.as_nanos() as u64);
    let pid = chaos.child.id();
    let at_start = session_status(pid, cases.len());
    for (f, (_, c)) in at_start.iter().zip(&cases) {
        // proc.kill's window has not opened: what is left of it is its `for`.
        let (state, window) = if let Probe::KillLate = c.probe { ("waiting", lifetime - kill_after) } else { ("injecting", lifetime) };
        assert_eq!(f["state"], state, "{f}");
        let left = Duration::from_secs_f64(f["left_s"].as_f64().expect("left_s"));
        assert!(left <= window && left + Duration::from_secs(5) > window, "the kernel's window does not end {lifetime:?} after the start: {left:?} left: {f}");
    }
    let uses_fq = cases.iter().any(|(_, c)| c.fq());
    if uses_fq {
        assert!(sb.client_root_qdisc().contains("qdisc fq c"), "chaos's fq: {}", sb.client_root_qdisc());
    }

    // Before the deadline: every probe shows its rule's fault.
    let mut before: Vec<Option<String>> = vec![None; all.len()];
    let mut held = None;
    for (i, p) in &mut before_sys {
        p.go();
        if let Probe::Hold = all[*i].probe {
            wait_until_stopped(p.child.id(), deadline.saturating_duration_since(Instant::now()));
            held = Some((*i, Instant::now()));
        }
    }
    let net_before: Vec<(usize, (String, bool, bool))> = std::thread::scope(|s| {
        let handles: Vec<_> = cases.iter().filter(|(_, c)| c.probe.net()).map(|(i, c)| (*i, s.spawn(|| net_probe(&sb, c.probe, &resolv)))).collect();
        handles.into_iter().map(|(i, h)| (i, h.join().expect("a probe"))).collect()
    });
    let before_took = starting.elapsed() - start_took;
    let mut hold_proc = None;
    let mut sys_before = Vec::new();
    for (i, p) in before_sys {
        match all[i].probe {
            Probe::Hold => hold_proc = Some(p),
            probe => sys_before.push((i, sys_outcome(p, probe))),
        }
    }
    assert!(Instant::now() < deadline, "the probes before the deadline took longer than the rules' lifetime of {lifetime:?}: raise it");
    for (i, (line, shows, _)) in net_before.iter().chain(&sys_before) {
        assert!(shows, "{}: no fault before the deadline: {line}", all[*i].name);
        before[*i] = Some(line.clone());
    }
    if let Some((i, _)) = held {
        before[i] = Some("held at its first getppid".into());
    }
    for (i, p) in &mut proc_probes {
        let cg = cgroup_of(*i);
        match all[*i].probe {
            Probe::Pause => {
                assert!(
                    freeze_reaches(&cg, "1", Instant::now() + Duration::from_secs(1)),
                    "{}: no fault before the deadline: {:?}",
                    all[*i].name,
                    freeze_state(&cg)
                );
                before[*i] = Some(format!("{} frozen", cg.display()));
            }
            _ => {
                // Its window opened with chaos stopped: nothing signals.
                assert_eq!(p.child.try_wait().expect("try_wait"), None, "{}: signalled by a stopped chaos", all[*i].name);
                before[*i] = Some("not signalled: its window opened with chaos stopped".into());
            }
        }
    }

    // From the deadline + 100 ms on, chaos still stopped: nothing is selected.
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(100));
    assert_eq!(proc_state(pid), Some('T'), "chaos is still stopped");
    let at_deadline = session_status(pid, cases.len());
    for (r, (i, c)) in cases.iter().enumerate() {
        let f = &at_deadline[r];
        assert_eq!(f["state"], "ended", "{}: {f}", all[*i].name);
        if let Probe::KillLate = c.probe {
            assert_eq!(n(f, "injected"), 0, "{}: signalled with chaos stopped: {f}", all[*i].name);
        } else {
            assert!(n(f, "injected") > 0, "{}: the kernel counted no injection before the deadline: {f}", all[*i].name);
        }
    }
    let after_sys: Vec<(usize, Proc)> =
        cases.iter().filter(|(_, c)| c.probe.sys()).map(|(i, c)| (*i, sys_probe(&sb, &cgroup_of(*i), c.probe, &case_dir(&dir.0, c.name)))).collect();
    let after: Vec<(usize, (String, bool, bool))> = std::thread::scope(|s| {
        let net: Vec<_> = cases.iter().filter(|(_, c)| c.probe.net()).map(|(i, c)| (*i, s.spawn(|| net_probe(&sb, c.probe, &resolv)))).collect();
        let mut out = Vec::new();
        for (i, mut p) in after_sys {
            p.go();
            let outcome = match all[i].probe {
                Probe::Hold => {
                    let v = p.json(T);
                    let took = took_ms(&v);
                    (format!("getppid took {took:.1?} ms"), false, took.len() == CALLS as usize && took.iter().all(|t| *t < 500.0))
                }
                probe => sys_outcome(p, probe),
            };
            out.push((i, outcome));
        }
        out.extend(net.into_iter().map(|(i, h)| (i, h.join().expect("a probe"))));
        out
    });
    let mut after_lines: Vec<Option<String>> = vec![None; all.len()];
    for (i, (line, _, clean)) in &after {
        assert!(clean, "{}: the fault outlived its deadline with chaos frozen: {line}", all[*i].name);
        after_lines[*i] = Some(line.clone());
    }
    let after_probes = session_status(pid, cases.len());
    for (r, (i, c)) in cases.iter().enumerate() {
        let (d, a) = (&at_deadline[r], &after_probes[r]);
        assert_eq!(kept(a), kept(d), "{}: the kernel counted after the deadline ({KEPT:?}): at it {d}, after {a}", all[*i].name);
        assert!(
            c.probe.proc() || n(a, "seen") > n(d, "seen"),
            "{}: the probes after the deadline never reached the rule (seen did not move): {a}",
            all[*i].name
        );
    }

    // What needs user space to end, ended by the guardian with chaos still stopped.
    let bound = if lane() == "host" { Duration::from_secs(8) } else { Duration::from_secs(30) };
    if let (Some((i, stopped_at)), Some(p)) = (held, hold_proc) {
        let v = p.json(bound);
        let took = took_ms(&v);
        assert_eq!(proc_state(pid), Some('T'), "chaos is still stopped");
        chaos.wait_for("continued the processes held", Duration::from_secs(5));
        let until = deadline.saturating_duration_since(stopped_at).as_secs_f64() * 1e3;
        assert!(took[0] >= until - 50.0, "the held process was continued {:.0} ms before the deadline: {took:?}", until - took[0]);
        before[i] = Some(format!("held at its first getppid, continued {:.0} ms after the deadline", took[0] - until));
    }
    if uses_fq {
        let end = Instant::now() + bound;
        while sb.client_qdiscs().contains("qdisc fq c") && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(proc_state(pid), Some('T'), "chaos is still stopped");
        assert!(!sb.client_qdiscs().contains("qdisc fq c"), "chaos's fq is still in place with chaos stopped past its deadline:\n{}", sb.client_qdiscs());
        assert_eq!(sb.client_root_qdisc(), root_before, "the default qdisc is back");
        chaos.wait_for("put back the default qdisc", Duration::from_secs(5));
    }
    let mut sleepers = Vec::new();
    for (i, p) in proc_probes {
        let cg = cgroup_of(i);
        if let Probe::KillLate = all[i].probe {
            sleepers.push((i, p));
            continue;
        }
        let thawed = freeze_reaches(&cg, "0", deadline + bound);
        assert_eq!(proc_state(pid), Some('T'), "chaos is still stopped");
        assert!(thawed, "{}: {} is still frozen with chaos stopped past its deadline: {:?}", all[i].name, cg.display(), freeze_state(&cg));
        chaos.wait_for("thawed the frozen cgroup", Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(200));
        let (gap, resumed) = longest_gap(p);
        let late_ms = resumed as f64 / 1e6 - deadline_up as f64 / 1e6;
        assert!(gap >= lifetime.as_nanos() as u64, "{}: the ticker stood still {} ms, not the whole window", all[i].name, gap / 1_000_000);
        assert!(late_ms <= bound.as_millis() as f64, "{}: the ticker went on {late_ms:.0} ms after the deadline", all[i].name);
        after_lines[i] = Some(format!("thawed by the guardian: the ticker stood still {} ms and went on {late_ms:.0} ms after the deadline", gap / 1_000_000));
    }
    let stopped: Vec<String> = targets
        .iter()
        .flat_map(|t| std::fs::read_to_string(t.join("cgroup.procs")).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>())
        .filter(|p| p.parse().ok().and_then(proc_state) == Some('T'))
        .collect();
    assert!(stopped.is_empty(), "processes of the targets left stopped: {stopped:?}");

    // Continued, chaos ends as at its deadline, its counters those of the deadline.
    chaos.signal(libc::SIGCONT);
    let (code, out, err) = chaos.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "chaos exited {code}: {err:?}");
    let summary: Value = serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("no summary ({e}): {out:?}"));
    assert_eq!(summary["ended_by"], "deadline", "{summary}");
    // Continued past its deadline, chaos did not signal late either.
    for (i, mut p) in sleepers {
        let r = cases.iter().position(|(k, _)| *k == i).expect("a rule");
        assert_eq!(p.child.try_wait().expect("try_wait"), None, "{}: signalled after its deadline", all[i].name);
        assert_eq!(counter(&summary, r, "signalled"), 0, "{}: {summary}", all[i].name);
        after_lines[i] = Some("alive after chaos, continued past the deadline, ended: signalled nobody".into());
    }
    // The guardian's lines: what it ended (one per device for fq: the veth and lo), and nothing else.
    let ended = |l: &String| {
        l.contains("stopped past its faults' end; continued the processes held in")
            || l.contains("stopped past its faults' end; put back the default qdisc in place of the fq qdisc")
            || l.contains("stopped past its faults' end; thawed the frozen cgroup")
    };
    let warned: Vec<&String> = err.iter().filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("chaos guardian: ") && !ended(l)).collect();
    assert!(warned.is_empty(), "chaos or its guardian complained: {warned:?}");
    let guardian: Vec<&String> = err.iter().filter(|l| ended(l)).collect();
    for (r, (i, _)) in cases.iter().enumerate() {
        assert_eq!(
            KEPT.map(|k| counter(&summary, r, k)),
            kept(&at_deadline[r]),
            "{}: the summary's counters are not those of the deadline: {summary}",
            all[*i].name
        );
    }
    assert!(summary["kernel_errors"].as_object().expect("kernel_errors").values().all(|v| v == 0), "{summary}");
    let target_paths: Vec<&Path> = targets.iter().map(PathBuf::as_path).collect();
    let left = leftovers_after(&sb, &target_paths, &root_before, pid, Duration::from_secs(3));
    assert!(left.is_empty(), "left behind: {left:?}");

    let mut report = Vec::new();
    for (r, (i, c)) in cases.iter().enumerate() {
        let (d, a) = (&at_deadline[r], &after_probes[r]);
        report.push(format!(
            "  rule {r} {}:\n    before: {}\n    after:  {}\n    counters: injected {} by the deadline; after it seen +{}, matched/selected/injected +0",
            c.name,
            before[*i].as_deref().unwrap_or("?"),
            after_lines[*i].as_deref().unwrap_or("?"),
            n(d, "injected"),
            n(a, "seen") - n(d, "seen"),
        ));
    }
    eprintln!(
        "expiry with chaos frozen ({} rules, lifetime {lifetime:?}; the session started in {start_took:.1?}, the probes before the deadline took {before_took:.1?}):\n{}",
        cases.len(),
        report.join("\n")
    );
    for line in &guardian {
        eprintln!("  {line}");
    }
}
