//! What the integration tests share: a sandbox (a cgroup of their own and two network namespaces
//! joined by a veth pair), workload processes placed in it before they run, and a running `chaos`.
//!
//! Everything a test makes is named uniquely (pid + counter), so tests run in parallel, and is
//! removed on drop, so a failing test cleans up too. Traffic stays inside the sandbox's namespaces.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use chaos_user::sandbox::{TempCgroup, spawn_in};
pub use serde_json::Value;

/// The `chaos` binary under test: `CHAOS_BIN`, or `target/<profile>/chaos` beside the test binary.
pub fn chaos_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAOS_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("chaos");
    assert!(bin.exists(), "{} is missing: build it first (cargo build --release -p chaos-user)", bin.display());
    bin
}

/// A short name unique to this process and call (interface names are limited to 15 bytes).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id() % 100_000, N.fetch_add(1, Ordering::Relaxed))
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Addresses of the two ends of the sandbox's veth pair (each inside a namespace the test made).
pub const CLIENT_V4: &str = "10.254.0.1";
pub const SERVER_V4: &str = "10.254.0.2";
pub const CLIENT_V6: &str = "fd00:c4a0::1";
pub const SERVER_V6: &str = "fd00:c4a0::2";

/// Where a workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// In the client namespace and in the target cgroup.
    Target,
    /// In the client namespace, outside the target cgroup.
    Bystander,
    /// In the server namespace (never in the cgroup).
    Server,
}

pub struct Sandbox {
    pub cgroup: TempCgroup,
    pub client_ns: String,
    pub server_ns: String,
    /// The veth ends: in the client namespace and in the server namespace.
    pub client_dev: String,
    pub server_dev: String,
}

impl Sandbox {
    /// A cgroup, a client and a server namespace, and a veth pair between them with IPv4 and IPv6
    /// addresses; `lo` up in both.
    pub fn new() -> Sandbox {
        let name = unique("ct");
        let cgroup = TempCgroup::new(&format!("chaos-test-{name}")).expect("creating the test cgroup");
        let (a, b) = (format!("{name}a"), format!("{name}b"));
        let sb = Sandbox { cgroup, client_ns: format!("{name}c"), server_ns: format!("{name}s"), client_dev: a.clone(), server_dev: b.clone() };
        ip(&["netns", "add", &sb.client_ns]);
        ip(&["netns", "add", &sb.server_ns]);
        ip(&["-n", &sb.client_ns, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &sb.server_ns]);
        for (ns, dev, v4, v6) in [(&sb.client_ns, &a, CLIENT_V4, CLIENT_V6), (&sb.server_ns, &b, SERVER_V4, SERVER_V6)] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/30"), "dev", dev]);
            ip(&["-n", ns, "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        // Permanent neighbour entries both ways: a fresh link's first IPv6 neighbour resolution
        // took over half a second here, and a burst sent meanwhile overflowed the queue of
        // packets waiting for it (30 of 1000 fragmented datagrams arrived, with no fault at all).
        let mac = |ns: &str, dev: &str| {
            let out = Command::new("ip").args(["-n", ns, "-o", "link", "show", dev]).output().expect("ip link show");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split("link/ether ").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string).expect("a MAC address")
        };
        let (mac_a, mac_b) = (mac(&sb.client_ns, &a), mac(&sb.server_ns, &b));
        for (ns, dev, peer_mac, peer_v4, peer_v6) in [(&sb.client_ns, &a, &mac_b, SERVER_V4, SERVER_V6), (&sb.server_ns, &b, &mac_a, CLIENT_V4, CLIENT_V6)] {
            for addr in [peer_v4, peer_v6] {
                ip(&["-n", ns, "neigh", "replace", addr, "lladdr", peer_mac, "dev", dev, "nud", "permanent"]);
            }
        }
        sb
    }

    pub fn netns_path(&self, p: Place) -> PathBuf {
        let ns = if p == Place::Server { &self.server_ns } else { &self.client_ns };
        PathBuf::from("/run/netns").join(ns)
    }

    /// Starts `chaos workload ARGS` at `place`.
    pub fn spawn(&self, place: Place, args: &[&str]) -> Proc {
        let mut cmd = Command::new(chaos_bin());
        cmd.arg("workload").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let cg = (place == Place::Target).then_some(self.cgroup.path.as_path());
        let child = spawn_in(&mut cmd, cg, Some(&self.netns_path(place))).expect("spawning a workload");
        Proc::new(child, format!("workload {}", args.join(" ")))
    }

    /// Runs `tc ARGS` in the client namespace; panics with tc's message if it fails.
    pub fn client_tc(&self, args: &[&str]) {
        let out = Command::new("ip").args(["netns", "exec", &self.client_ns, "tc"]).args(args).output().expect("tc");
        assert!(out.status.success(), "tc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `tc qdisc show` of the client namespace (where chaos attaches its device programs).
    pub fn client_qdiscs(&self) -> String {
        let out = Command::new("ip").args(["netns", "exec", &self.client_ns, "tc", "qdisc", "show"]).output().expect("tc");
        assert!(out.status.success(), "tc qdisc show: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `tc qdisc show` line of the client device's root qdisc ("" if none shows).
    pub fn client_root_qdisc(&self) -> String {
        root_qdisc_line(&self.client_qdiscs(), &self.client_dev)
    }

    /// Starts `chaos workload ARGS` in cgroup `cgroup` (a descendant of the sandbox's, say) and
    /// the network namespace of `place`.
    pub fn spawn_at(&self, cgroup: &std::path::Path, place: Place, args: &[&str]) -> Proc {
        let mut cmd = Command::new(chaos_bin());
        cmd.arg("workload").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = spawn_in(&mut cmd, Some(cgroup), Some(&self.netns_path(place))).expect("spawning a workload");
        Proc::new(child, format!("workload {} in {}", args.join(" "), cgroup.display()))
    }

    /// Starts `chaos workload ARGS` at `place`, running as user `uid`.
    pub fn spawn_as(&self, place: Place, uid: u32, args: &[&str]) -> Proc {
        // Run through a descriptor opened here: the other user then needs only the right to
        // execute the file, not to search the folders above it (a clone in a 0700 folder). The
        // kernel lets a process follow its own /proc/self/fd links whoever it now runs as.
        let bin = std::fs::File::open(chaos_bin()).expect("opening the chaos binary");
        let mut cmd = Command::new(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&bin)));
        cmd.arg("workload").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let cg = (place == Place::Target).then_some(self.cgroup.path.as_path());
        let child = chaos_user::sandbox::spawn_in_as(&mut cmd, cg, Some(&self.netns_path(place)), Some(uid)).expect("spawning a workload");
        drop(bin);
        Proc::new(child, format!("workload {} as uid {uid}", args.join(" ")))
    }

    /// A child cgroup of the sandbox's (made now, removed with the sandbox).
    pub fn child_cgroup(&self, rel: &str) -> PathBuf {
        let p = self.cgroup.path.join(rel);
        std::fs::create_dir_all(&p).expect("creating a child cgroup");
        p
    }

    /// Runs `tc ARGS` in the server namespace.
    pub fn server_tc(&self, args: &[&str]) {
        let out = Command::new("ip").args(["netns", "exec", &self.server_ns, "tc"]).args(args).output().expect("tc");
        assert!(out.status.success(), "tc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `--cgroup PATH --netns FILE` for a chaos run on this sandbox.
    pub fn target_args(&self) -> Vec<String> {
        vec!["--cgroup".into(), self.cgroup.path.display().to_string(), "--netns".into(), self.netns_path(Place::Target).display().to_string()]
    }
}

impl Default for Sandbox {
    fn default() -> Sandbox {
        Sandbox::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.cgroup.kill_all();
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A child process with its stderr read line by line in the background; killed on drop.
pub struct Proc {
    pub child: Child,
    what: String,
    stderr: mpsc::Receiver<String>,
    pub stderr_seen: Vec<String>,
}

impl Proc {
    pub fn new(mut child: Child, what: String) -> Proc {
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, what, stderr: rx, stderr_seen: Vec::new() }
    }

    /// Waits for a stderr line containing `needle` (or finds it among those already seen);
    /// panics with what was seen if it does not come.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(l) = self.stderr_seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("{}: no '{needle}' on stderr within {timeout:?}; saw: {:?}", self.what, self.stderr_seen),
            }
        }
    }

    pub fn ready(&mut self) {
        self.wait_for("ready", Duration::from_secs(20));
    }

    /// Writes a line to the child's stdin (a `--wait`ing workload starts).
    pub fn go(&mut self) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin piped");
        stdin.write_all(b"go\n").and_then(|_| stdin.flush()).expect("writing to the workload's stdin");
    }

    /// Closes the child's stdin (a udp-sink then finishes once traffic stops).
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits for exit (bounded) and returns (exit code, stdout, all stderr lines).
    pub fn finish(mut self, timeout: Duration) -> (i32, String, Vec<String>) {
        self.close_stdin();
        let end = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("{}: still running after {timeout:?}; stderr: {:?}", self.what, self.stderr_seen);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut out).expect("reading stdout");
        }
        // The reader thread ends at EOF; collect what it has.
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            self.stderr_seen.push(l);
        }
        (status.code().unwrap_or(-1), out, std::mem::take(&mut self.stderr_seen))
    }

    /// Waits for a successful exit and parses stdout's last line as JSON.
    pub fn json(self, timeout: Duration) -> Value {
        let what = self.what.clone();
        let (code, out, err) = self.finish(timeout);
        assert_eq!(code, 0, "{what} exited {code}; stdout {out:?} stderr {err:?}");
        let last = out.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {out:?}"))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `chaos ARGS` with RUST_LOG=info; returns once it says it is injecting.
pub fn start_chaos(args: &[String]) -> Proc {
    start_chaos_env(args, &[])
}

/// [`start_chaos`] with extra environment variables.
pub fn start_chaos_env(args: &[String], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(chaos_bin());
    cmd.args(args).env("RUST_LOG", "info").envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawning chaos");
    let mut p = Proc::new(child, format!("chaos {}", args.join(" ")));
    p.wait_for("chaos: injecting", START);
    p
}

/// Runs `chaos observe ARGS` with RUST_LOG=info; returns once it observes.
pub fn start_observe(args: &[&str]) -> Proc {
    let mut cmd = Command::new(chaos_bin());
    cmd.arg("observe").args(args).env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut p = Proc::new(cmd.spawn().expect("spawning chaos observe"), format!("chaos observe {}", args.join(" ")));
    p.wait_for("chaos: observing", START);
    p
}

/// A UDP packet fault frozen before its deadline: `chaos net FLAGS --proto udp --for LIFETIME
/// --json` on the sandbox's target, stopped by SIGSTOP once it injects, so only the kernel can end
/// the fault. Returns chaos and the moment the fault started.
pub fn start_frozen_udp_fault(sb: &Sandbox, flags: &[&str], lifetime: Duration) -> (Proc, Instant) {
    let mut a: Vec<String> = ["net"].iter().chain(flags).map(|s| s.to_string()).collect();
    a.extend(["--proto".into(), "udp".into(), "--for".into(), format!("{}ms", lifetime.as_millis()), "--json".into()]);
    a.extend(sb.target_args());
    let chaos = start_chaos(&a);
    let started = Instant::now();
    chaos.signal(libc::SIGSTOP);
    (chaos, started)
}

/// Several UDP packet faults in one session, frozen as [`start_frozen_udp_fault`] freezes one:
/// each `(flags, port)` is `chaos net FLAGS --proto udp --port PORT` as a `[[fault]]` of a fault
/// file (`--key value` becomes `key = "value"`, a lone `--flag` becomes `flag = true`), all with
/// the same lifetime, on the sandbox's target. One session instead of one per fault: a session's
/// start takes seconds under emulation.
pub fn start_frozen_udp_faults(sb: &Sandbox, faults: &[(&[&str], u16)], lifetime: Duration) -> (Proc, Instant, TempFile) {
    let mut text = String::new();
    for (flags, port) in faults {
        let (verb, rest) = flags.split_first().expect("a fault verb");
        text += &format!(
            "[[fault]]\nkind = \"net.{verb}\"\ncgroup = \"{}\"\nnetns = [\"{}\"]\nproto = \"udp\"\nport = {port}\nfor = \"{}ms\"\n",
            sb.cgroup.path.display(),
            sb.netns_path(Place::Target).display(),
            lifetime.as_millis()
        );
        let mut i = 0;
        while i < rest.len() {
            let key = rest[i].strip_prefix("--").unwrap_or_else(|| panic!("{flags:?}: {} is not a flag", rest[i]));
            match rest.get(i + 1).filter(|v| !v.starts_with("--")) {
                Some(value) => {
                    text += &format!("{key} = \"{value}\"\n");
                    i += 2;
                }
                None => {
                    text += &format!("{key} = true\n");
                    i += 1;
                }
            }
        }
        text += "\n";
    }
    let file = TempFile::new("chaos-frozen-", &text);
    let chaos = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);
    let started = Instant::now();
    chaos.signal(libc::SIGSTOP);
    (chaos, started, file)
}

/// Asserts that the work meant to happen before a frozen fault's deadline did.
pub fn still_before(started: Instant, lifetime: Duration, what: &str) {
    assert!(started.elapsed() < lifetime, "{what} took longer than the faults' lifetime of {lifetime:?}: raise it");
}

/// Sleeps until a little after `lifetime` has passed since `started`.
pub fn sleep_past(started: Instant, lifetime: Duration) {
    std::thread::sleep(lifetime.saturating_sub(started.elapsed()) + Duration::from_millis(300));
}

/// How long a chaos start may take: checking the kernel and loading, verifying and attaching the
/// programs takes seconds under software emulation, more with another test beside it.
pub const START: Duration = Duration::from_secs(90);

/// Ends a chaos run with SIGINT and returns its JSON summary.
pub fn stop_chaos(p: Proc) -> Value {
    p.signal(libc::SIGINT);
    p.json(Duration::from_secs(30))
}

/// Runs `chaos ARGS` to the end; (exit code, stdout, stderr lines).
pub fn run_chaos(args: &[&str]) -> (i32, String, Vec<String>) {
    run_chaos_env(args, &[])
}

/// [`run_chaos`] with extra environment variables.
pub fn run_chaos_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, Vec<String>) {
    let child = Command::new(chaos_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning chaos");
    Proc::new(child, format!("chaos {}", args.join(" "))).finish(Duration::from_secs(120))
}

/// The first rule's counters of a chaos summary.
pub fn rule0(summary: &Value) -> (u64, u64, u64, u64) {
    let r = &summary["rules"][0];
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("summary lacks rules[0].{k}: {summary}"));
    (n("seen"), n("matched"), n("selected"), n("dropped"))
}

/// Program and link ids from chaos's `attached:` log line.
pub fn attached_ids(line: &str) -> (Vec<u32>, Vec<u32>) {
    let list = |key: &str| -> Vec<u32> {
        let start = line.find(key).unwrap_or_else(|| panic!("no '{key}' in {line:?}")) + key.len();
        let rest = &line[start..];
        let end = rest.find(']').expect("closing bracket");
        rest[..end].trim_start_matches('[').split(',').filter_map(|s| s.trim().parse().ok()).collect()
    };
    (list("programs "), list("links "))
}

/// Whether any of these program or link ids still exists in the kernel.
pub fn still_loaded(programs: &[u32], links: &[u32]) -> Vec<String> {
    let mut left = Vec::new();
    for p in aya::programs::loaded_programs().flatten() {
        if programs.contains(&p.id()) {
            left.push(format!("program {}", p.id()));
        }
    }
    for l in aya::programs::loaded_links().flatten() {
        if links.contains(&l.id()) {
            left.push(format!("link {}", l.id()));
        }
    }
    left
}

/// Polls `still_loaded` until empty (the kernel frees programs after an RCU grace period).
pub fn assert_all_gone(programs: &[u32], links: &[u32], when: &str) {
    assert!(!programs.is_empty(), "no program ids to check {when}");
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let left = still_loaded(programs, links);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < end, "{when}: still in the kernel: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The JSON `chaos probe --json` prints.
pub fn probe_report() -> Value {
    let (code, out, err) = run_chaos(&["probe", "--json"]);
    assert_eq!(code, 0, "probe failed: {err:?}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("probe --json is not JSON ({e}): {out}"))
}

/// (works, reason) of one backend in a probe report.
pub fn backend(report: &Value, name: &str) -> (bool, String) {
    let c = report["checks"].as_array().expect("checks").iter().find(|c| c["backend"] == name);
    let c = c.unwrap_or_else(|| panic!("no check for {name} in {report}"));
    (c["works"] == true, c["reason"].as_str().unwrap_or_default().to_string())
}

/// The test lanes, and what `chaos probe` must find on each: the expectations are data, so a
/// probe that wrongly says "no" (or "yes") fails the lane instead of steering the tests.
pub const LANES: &[(&str, &[(&str, bool)])] = &[
    (
        "host",
        &[
            ("cgroup_skb", true),
            ("tcx", true),
            ("tc_netlink", true),
            ("cgroup_sock_addr", true),
            ("tp_btf_signal", true),
            ("bpf_lsm", false),
            ("fmod_ret_security", false),
            ("fmod_ret_syscall", false),
            ("kprobe_override", false),
            ("sch_fq", false),
            ("netem", false),
            ("cgroup_freezer", true),
            ("task_file_iter", true),
            ("tc_ingress_socket", true),
        ],
    ),
    (
        "debian-6.1-cloud",
        &[
            ("cgroup_skb", true),
            ("tcx", false),
            ("tc_netlink", true),
            ("cgroup_sock_addr", true),
            ("tp_btf_signal", true),
            ("bpf_lsm", true),
            ("fmod_ret_security", true),
            ("fmod_ret_syscall", false),
            ("kprobe_override", false),
            ("sch_fq", true),
            ("netem", true),
            ("cgroup_freezer", true),
            ("task_file_iter", true),
            ("tc_ingress_socket", true),
        ],
    ),
    (
        "errinj",
        &[
            ("cgroup_skb", true),
            ("tcx", false),
            ("tc_netlink", true),
            ("cgroup_sock_addr", true),
            ("tp_btf_signal", true),
            ("bpf_lsm", true),
            ("fmod_ret_security", true),
            ("fmod_ret_syscall", true),
            ("kprobe_override", true),
            ("sch_fq", true),
            ("netem", true),
            ("cgroup_freezer", true),
            ("task_file_iter", true),
            ("tc_ingress_socket", true),
        ],
    ),
    (
        "debian-6.12-cloud",
        &[
            ("cgroup_skb", true),
            ("tcx", true),
            ("tc_netlink", true),
            ("cgroup_sock_addr", true),
            ("tp_btf_signal", true),
            ("bpf_lsm", true),
            ("fmod_ret_security", true),
            ("fmod_ret_syscall", false),
            ("kprobe_override", false),
            ("sch_fq", true),
            ("netem", true),
            ("cgroup_freezer", true),
            ("task_file_iter", true),
            ("tc_ingress_socket", true),
        ],
    ),
];

/// The lane these tests run on: `CHAOS_LANE` (set by `cargo xtask test` and the guests' /init),
/// or "host" for a plain `cargo test` on a machine of this project's kind.
pub fn lane() -> &'static str {
    let name = std::env::var("CHAOS_LANE").unwrap_or_else(|_| "host".into());
    LANES.iter().find(|(l, _)| *l == name).map(|(l, _)| *l).unwrap_or_else(|| {
        let known: Vec<&str> = LANES.iter().map(|(l, _)| *l).collect();
        panic!("unknown CHAOS_LANE {name}: one of {}", known.join(", "))
    })
}

/// Whether backend `name` works on this lane (the data above, not the probe).
pub fn lane_has(name: &str) -> bool {
    let (_, table) = LANES.iter().find(|(l, _)| *l == lane()).expect("known lane");
    table.iter().find(|(b, _)| *b == name).unwrap_or_else(|| panic!("no expectation for backend {name}")).1
}

/// Whether TC programs attach through netlink (a filter that outlives the process) here.
pub fn netlink_tc() -> bool {
    !lane_has("tcx")
}

/// Removes a directory tree when dropped, the test failing or not.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new directory in the temporary directory, removed (with what is in it) when dropped.
pub fn temp_dir(prefix: &str) -> RemoveOnDrop {
    let p = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir(&p).expect("a temporary directory");
    RemoveOnDrop(p)
}

/// A file in the temporary directory, removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(prefix: &str, content: &str) -> TempFile {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::write(&p, content).expect("writing a temporary file");
        TempFile(p)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A counter of rule `i` of a summary.
pub fn counter(summary: &Value, i: usize, key: &str) -> u64 {
    summary["rules"][i][key].as_u64().unwrap_or_else(|| panic!("summary lacks rules[{i}].{key}: {summary}"))
}

/// `chaos status --json`.
pub fn status() -> Value {
    let (code, out, err) = run_chaos(&["status", "--json"]);
    assert_eq!(code, 0, "status failed: {err:?}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
}

/// The session id a running chaos announced ("chaos: injecting: session ID ...").
pub fn session_id(chaos: &mut Proc) -> String {
    let line = chaos.wait_for("chaos: injecting", START);
    line.split("session ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("no session id in {line:?}")).to_string()
}

/// `f`'s result, made in network namespace `netns` by a thread that enters it: a socket made
/// there (a listener on the namespace's own `lo`) stays in it, used from any thread.
pub fn in_netns<T: Send>(netns: &std::path::Path, f: impl FnOnce() -> T + Send) -> T {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(netns).expect("opening the namespace");
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) on a valid namespace fd moves only this short-lived thread.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            f()
        })
        .join()
        .expect("the namespace's thread")
    })
}

/// An OTLP/HTTP receiver on loopback: takes one export request and decodes it with the
/// OpenTelemetry proto types.
pub struct OtlpReceiver {
    pub url: String,
    got: mpsc::Receiver<Result<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest, String>>,
}

impl OtlpReceiver {
    pub fn start() -> OtlpReceiver {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
        let (tx, got) = mpsc::channel();
        std::thread::spawn(move || {
            let Ok((mut conn, _)) = listener.accept() else { return };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let decoded = (|| -> Result<_, String> {
                let mut reader = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).map_err(|e| e.to_string())?;
                    if line.trim().is_empty() {
                        break;
                    }
                    head.push(line.trim().to_string());
                }
                let request_line = head.first().cloned().unwrap_or_default();
                if !request_line.starts_with("POST /v1/traces ") {
                    return Err(format!("not an OTLP traces POST: {head:?}"));
                }
                let header =
                    |name: &str| head.iter().find_map(|h| h.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()));
                if header("content-type").as_deref() != Some("application/x-protobuf") {
                    return Err(format!("not protobuf: {head:?}"));
                }
                let len: usize = header("content-length").and_then(|l| l.parse().ok()).ok_or_else(|| format!("no Content-Length: {head:?}"))?;
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body).map_err(|e| e.to_string())?;
                <opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest as prost::Message>::decode(&body[..])
                    .map_err(|e| format!("not an ExportTraceServiceRequest: {e}"))
            })();
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n");
            let _ = tx.send(decoded);
        });
        OtlpReceiver { url, got }
    }

    /// The request received (panics if none came within `timeout` or it did not decode).
    pub fn wait(&self, timeout: Duration) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        self.got.recv_timeout(timeout).expect("no OTLP request came").unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A span's attribute as text (strings as they are, numbers written out).
pub fn span_attr(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.as_ref()).map(|v| match v {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(f) => f.to_string(),
        other => format!("{other:?}"),
    })
}

/// The line of a `tc qdisc show` output for device `dev`'s root qdisc ("" if none).
pub fn root_qdisc_line(qdiscs: &str, dev: &str) -> String {
    qdiscs.lines().find(|l| l.contains(&format!(" dev {dev} ")) && l.contains(" root ")).unwrap_or("").to_string()
}

/// A process's state letter from /proc/PID/stat (`T` stopped, `Z` zombie, ...); `None` if it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    proc_stat(pid).map(|s| s.state)
}

/// What /proc/PID/stat says of a process; `None` if it is gone.
pub fn proc_stat(pid: u32) -> Option<procfs::process::Stat> {
    procfs::process::Process::new(pid as i32).and_then(|p| p.stat()).ok()
}

/// What /proc/PID/status says of a process (memory in kB, signal masks); `None` if it is gone.
pub fn proc_status(pid: u32) -> Option<procfs::process::Status> {
    procfs::process::Process::new(pid as i32).and_then(|p| p.status()).ok()
}

/// Waits until process `pid` is stopped (state T), bounded.
pub fn wait_until_stopped(pid: u32, timeout: Duration) {
    let end = Instant::now() + timeout;
    loop {
        let state = proc_state(pid);
        if state == Some('T') {
            return;
        }
        assert!(Instant::now() < end, "process {pid} was not held within {timeout:?} (state {state:?})");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The inode number of a cgroup2 directory is its id, as the kernel programs see it.
pub fn cgroup_id(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).expect("a cgroup"))
}

/// A `[[fault]]` table of a fault file: `body` (the kind and its settings) on cgroup `cgroup`,
/// lasting `lifetime`; a packet fault also attaches in the sandbox's target namespace.
pub fn fault_table(sb: &Sandbox, cgroup: &Path, body: &str, lifetime: &str) -> String {
    let mut t = format!("[[fault]]\n{body}\ncgroup = \"{}\"\nfor = \"{lifetime}\"\n", cgroup.display());
    if body.contains("\"net.") {
        t += &format!("netns = [\"{}\"]\n", sb.netns_path(Place::Target).display());
    }
    t
}

/// What of a session is left in the kernel and the system, by kind: its programs and links (any
/// would hold its maps, whose targets map names one of `targets`), a clsact qdisc, TC filter or
/// root qdisc other than `root_before` on the sandbox's client device, a frozen target, a stopped
/// process in a target, a record of the session (`chaos_pid`'s), a cgroup made in a target.
pub fn leftovers(sb: &Sandbox, targets: &[&Path], root_before: &str, chaos_pid: u32) -> Vec<String> {
    use chaos_common::{TARGETS_MAP, TargetRules};
    let mut left = Vec::new();
    // A program of a session is alive while anything holds it (a link, a TC filter, an
    // attachment, a process): it holds the session's maps, and its targets map names the
    // targets. The map is freed with the last program that uses it.
    let ids: Vec<u64> = targets.iter().map(|t| cgroup_id(t)).collect();
    let objects = aya::maps::loaded_maps()
        .flatten()
        .filter(|m| m.name_as_str() == Some(TARGETS_MAP))
        .filter(|m| {
            let Ok(data) = aya::maps::MapData::from_id(m.id()) else { return false };
            aya::maps::HashMap::<_, u64, TargetRules>::try_from(aya::maps::Map::HashMap(data)).is_ok_and(|h| ids.iter().any(|id| h.get(id, 0).is_ok()))
        })
        .count();
    if objects > 0 {
        left.push(format!("{objects} session object(s) still held (programs, links)"));
    }
    let qdiscs = sb.client_qdiscs();
    if qdiscs.contains("clsact") {
        left.push("a clsact qdisc".into());
    }
    for direction in ["egress", "ingress"] {
        let out = Command::new("ip")
            .args(["netns", "exec", &sb.client_ns, "tc", "filter", "show", "dev", &sb.client_dev, direction])
            .output()
            .expect("tc filter show");
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            left.push(format!("a TC filter at {direction}: {}", String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    let root = root_qdisc_line(&qdiscs, &sb.client_dev);
    if root != root_before {
        left.push(format!("a changed root qdisc: {root}"));
    }
    for target in targets {
        let events = std::fs::read_to_string(target.join("cgroup.events")).unwrap_or_default();
        if std::fs::read_to_string(target.join("cgroup.freeze")).is_ok_and(|f| f.trim() == "1") || events.lines().any(|l| l == "frozen 1") {
            left.push(format!("{} frozen", target.display()));
        }
        for pid in std::fs::read_to_string(target.join("cgroup.procs")).unwrap_or_default().lines() {
            if pid.parse().ok().and_then(proc_state) == Some('T') {
                left.push(format!("process {pid} stopped"));
            }
        }
        let made: Vec<String> = std::fs::read_dir(target)
            .expect("a target cgroup")
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !made.is_empty() {
            left.push(format!("cgroups made in {}: {made:?}", target.display()));
        }
    }
    let st = status();
    for key in ["sessions", "dead"] {
        if st[key].as_array().is_some_and(|a| a.iter().any(|s| s["pid"] == chaos_pid)) {
            left.push(format!("a session record ({key})"));
        }
    }
    left
}

/// Polls [`leftovers`] for up to `within`: what is still there then (nothing, for a clean end).
pub fn leftovers_after(sb: &Sandbox, targets: &[&Path], root_before: &str, chaos_pid: u32, within: Duration) -> Vec<String> {
    let end = Instant::now() + within;
    loop {
        let left = leftovers(sb, targets, root_before, chaos_pid);
        if left.is_empty() || Instant::now() >= end {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A cgroup's freeze state: (`cgroup.freeze`, the `frozen` line of `cgroup.events`); ("1", "1")
/// frozen, ("0", "0") thawed.
pub fn freeze_state(cgroup: &Path) -> (String, String) {
    let freeze = std::fs::read_to_string(cgroup.join("cgroup.freeze")).unwrap_or_default().trim().to_string();
    let events = std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap_or_default();
    let frozen = events.lines().find_map(|l| l.strip_prefix("frozen ")).unwrap_or("?").to_string();
    (freeze, frozen)
}

/// Waits (bounded) until the cgroup is thawed; how long it took.
pub fn thawed_within(cgroup: &Path, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if freeze_state(cgroup) == ("0".into(), "0".into()) {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The clock tests' shell tickers print (/proc/uptime, in 10 ms steps: `date +%N` is not in
/// every lane's busybox), in ns.
pub fn uptime_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/uptime").expect("/proc/uptime");
    let secs: f64 = text.split_whitespace().next().and_then(|s| s.parse().ok()).expect("uptime seconds");
    (secs * 1e9) as u64
}

/// Runs `chaos ARGS` on a terminal of its own: a pseudo-terminal `script(1)` (util-linux, in every
/// Debian) makes, its stdout and stderr both. Returns its exit code and all it wrote there.
pub fn chaos_on_a_terminal(args: &[&str]) -> (i32, String) {
    let quote = |a: &str| format!("'{}'", a.replace('\'', r"'\''"));
    let line: Vec<String> = std::iter::once(quote(&chaos_bin().display().to_string())).chain(args.iter().map(|a| quote(a))).collect();
    let out = Command::new("script")
        .args(["--quiet", "--return", "--flush", "--command", &line.join(" "), "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("running script(1), util-linux");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this is the host lane; elsewhere says that `what` is tested there (a timing of
/// milliseconds, or user space's alone, which an emulated guest adds nothing to).
pub fn host_only(what: &str) -> bool {
    if lane() != "host" {
        eprintln!("{what}: tested on the host lane only");
        return false;
    }
    true
}

/// A loopback port free now and not handed to another test of this process (the kernel may give
/// a released port to the next bind(0): two experiments running at once must not share one).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port").local_addr().expect("addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}
