//! `--container` against real podman containers (the host lane; `cargo xtask setup` installs podman
//! with runc and netavark and builds the image these tests run, `IMAGE`). Two containers per test
//! on podman's default bridge network, each running `chaos workload` (the binary under test,
//! bind-mounted read-only with the libraries it links); traffic goes only between the two
//! containers, over the bridge. Every container is removed when its test ends, failed or not, and
//! containers of a test binary that was killed are removed by the next one (they carry its pid).

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Stdio},
    sync::Once,
    time::Duration,
};

use chaos_tests::*;
use chaos_user::target::Cgroup;

/// The image `cargo xtask setup` builds (xtask/src/setup.rs `TEST_IMAGE`).
const IMAGE: &str = "localhost/chaos-test:busybox-1";
/// The label that marks the containers of these tests, with the test binary that made them.
const OWNER: &str = "chaos-test-owner";
const T: Duration = Duration::from_secs(60);

/// Runs `podman ARGS` to the end (bounded); (exit code, stdout, stderr lines).
fn podman(args: &[&str]) -> (i32, String, Vec<String>) {
    let child = Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running podman: `cargo xtask setup` installs it");
    Proc::new(child, format!("podman {}", args.join(" "))).finish(T)
}

/// `podman ARGS`, which must succeed; its stdout, trimmed.
fn podman_ok(args: &[&str]) -> String {
    let (code, out, err) = podman(args);
    assert_eq!(code, 0, "podman {} failed: {err:?}", args.join(" "));
    out.trim().to_string()
}

/// Once per test binary: the image is there, and containers left by killed test binaries go.
fn prepare() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let (code, _, err) = podman(&["image", "exists", IMAGE]);
        assert_eq!(code, 0, "no image {IMAGE}: `cargo xtask setup` builds it ({err:?})");
        let listed = podman_ok(&["ps", "--all", "--filter", &format!("label={OWNER}"), "--format", &format!("{{{{.Names}}}} {{{{index .Labels \"{OWNER}\"}}}}")]);
        for line in listed.lines() {
            let Some((name, owner)) = line.split_once(' ') else { continue };
            if owner.split_once('-').and_then(|(pid, _)| process_tag(pid.parse().ok()?)).as_deref() != Some(owner) {
                let _ = podman(&["rm", "--force", "--time", "0", name]);
            }
        }
    });
}

/// `PID-STARTTIME` of a live process (a zombie is dead), which a later process with the same pid
/// does not share.
fn process_tag(pid: u32) -> Option<String> {
    let stat = proc_stat(pid)?;
    (stat.state != 'Z').then(|| format!("{pid}-{}", stat.starttime))
}

/// Where the libraries `chaos` links live (the directories of the paths `ldd` prints), each
/// bind-mounted at the same path: the image has only busybox.
fn library_dirs() -> Vec<String> {
    let out = Command::new("ldd").arg(chaos_bin()).output().expect("running ldd");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut dirs = BTreeSet::new();
    for line in text.lines() {
        let path = line.rsplit("=>").next().and_then(|r| r.split_whitespace().next()).filter(|p| p.starts_with('/'));
        if let Some(dir) = path.and_then(|p| Path::new(p).parent()) {
            dirs.insert(dir.display().to_string());
        }
    }
    assert!(!dirs.is_empty(), "ldd listed no library of {}: {text}", chaos_bin().display());
    dirs.into_iter().collect()
}

/// A running container of `IMAGE` on podman's default network; removed when dropped.
struct Container {
    name: String,
    id: String,
}

impl Container {
    /// `sleep 600` as its main process: a container this test could not remove ends on its own.
    fn start(tag: &str) -> Container {
        prepare();
        let name = unique(&format!("chaos-{tag}-"));
        let mut args: Vec<String> = ["run", "--detach", "--name", &name, "--label", &format!("{OWNER}={}", process_tag(std::process::id()).expect("this process's stat"))].map(String::from).to_vec();
        args.extend(["--volume".into(), format!("{}:/usr/local/bin/chaos:ro", chaos_bin().display())]);
        for dir in library_dirs() {
            args.extend(["--volume".into(), format!("{dir}:{dir}:ro")]);
        }
        args.extend([IMAGE, "sleep", "600"].map(String::from));
        // The guard first: a container made by a run that then failed is removed too.
        let mut c = Container { name, id: String::new() };
        c.id = podman_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(c.id.len(), 64, "podman run printed no container id: {:?}", c.id);
        c
    }

    /// Its address on podman's bridge (a restart may change it).
    fn ip(&self) -> String {
        let ip = podman_ok(&["container", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", &self.name]);
        assert!(ip.starts_with("10.88."), "{} is not on podman's default bridge (10.88.0.0/16): {ip:?}", self.name);
        ip
    }

    /// The cgroup v2 directory of its main process.
    fn cgroup(&self) -> Cgroup {
        let pid: u32 = podman_ok(&["container", "inspect", "--format", "{{.State.Pid}}", &self.name]).parse().expect("a pid");
        Cgroup::of_pid(pid).unwrap_or_else(|e| panic!("the cgroup of {}'s process {pid}: {e}", self.name))
    }

    /// Starts `chaos workload ARGS` inside, through `podman exec` (stdin forwarded).
    fn exec(&self, args: &[&str]) -> Proc {
        let mut cmd = Command::new("podman");
        cmd.args(["exec", "--interactive", &self.name, "/usr/local/bin/chaos", "workload"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Proc::new(cmd.spawn().expect("running podman exec"), format!("workload {} in {}", args.join(" "), self.name))
    }

    /// `n` datagrams from here to `to`'s port `port` at 1000/s: how many arrived.
    fn udp_to(&self, to: &Container, port: u16, n: u64) -> u64 {
        let mut sink = to.exec(&["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "500ms", "--max", "30s"]);
        sink.ready();
        let sent = self.exec(&["udp-send", "--to", &format!("{}:{port}", to.ip()), "--count", &n.to_string(), "--rate", "1000"]).json(T);
        assert_eq!(sent["sent"], n, "{} sent every datagram: {sent}", self.name);
        sink.json(T)["received"].as_u64().expect("received")
    }

    /// `n` TCP connects from here to `to`'s rr-server on `port`: the workload's counts.
    fn connects_to(&self, to: &Container, port: u16, n: u64) -> Value {
        self.exec(&["syscall-loop", "--call", "connect", "--to", &format!("{}:{port}", to.ip()), "--count", &n.to_string()]).json(T)
    }

    /// An rr-server on `port` (answers connections until the container goes).
    fn rr_server(&self, port: u16) -> Proc {
        let mut p = self.exec(&["rr-server", "--bind", &format!("0.0.0.0:{port}"), "--max", "120s"]);
        p.ready();
        p
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

/// Whether this lane has podman: the host's only (the guests' initramfs has none).
fn on_host() -> bool {
    if lane() != "host" {
        eprintln!("podman runs on the host lane only; lane {} skips it", lane());
        return false;
    }
    true
}

#[test]
fn a_drop_on_a_container_by_name_takes_its_traffic_and_not_its_neighbours() {
    if !on_host() {
        return;
    }
    let (a, b) = (Container::start("drop-a"), Container::start("drop-b"));
    let chaos = start_chaos(&["net", "drop", "--container", &a.name, "--percent", "100", "--proto", "udp", "--for", "60s", "--json"].map(String::from));
    let (a_to_b, b_to_a) = (a.udp_to(&b, 7000, 100), b.udp_to(&a, 7000, 100));
    let summary = stop_chaos(chaos);
    assert_eq!((a_to_b, b_to_a), (0, 100), "the target lost every datagram it sent; its neighbour's reached it");
    assert_eq!(counter(&summary, 0, "dropped"), 100, "the kernel dropped exactly the target's: {summary}");
    assert_eq!(counter(&summary, 0, "seen"), 100, "only the target's packets reached the rule: {summary}");
    let cg = a.cgroup();
    assert_eq!(summary["rules"][0]["cgroup"], cg.path.display().to_string(), "the name resolved to the container's cgroup: {summary}");
    assert!(cg.path.ends_with(format!("libpod-{}", a.id)), "podman's cgroupfs layout: {}", cg.path.display());
    let devices = summary["attached"]["devices"].as_array().expect("attached devices");
    assert!(devices.iter().any(|d| d["ifname"] == "eth0"), "the TC program went on the container's eth0: {summary}");
    assert!(summary.get("targets_changed").is_none(), "nothing restarted: {summary}");
}

#[test]
fn a_syscall_fault_on_a_container_by_id_prefix_fails_its_connects_only() {
    if !on_host() {
        return;
    }
    let (a, b) = (Container::start("sys-a"), Container::start("sys-b"));
    let _servers = (a.rr_server(7100), b.rr_server(7100));
    let chaos = start_chaos(
        &["sys", "fail", "--container", &a.id[..12], "--syscall", "connect", "--errno", "ECONNREFUSED", "--for", "60s", "--json"].map(String::from),
    );
    let (from_a, from_b) = (a.connects_to(&b, 7100, 40), b.connects_to(&a, 7100, 40));
    let summary = stop_chaos(chaos);
    assert_eq!(from_a["errors"][libc::ECONNREFUSED.to_string()], 40, "every connect of the target was refused: {from_a}");
    assert_eq!(from_a["ok"], 0, "{from_a}");
    assert_eq!(from_b["ok"], 40, "the neighbour's connects (to the target) all succeeded: {from_b}");
    assert_eq!(counter(&summary, 0, "failed"), 40, "the kernel counted exactly the refused connects: {summary}");
    assert_eq!(summary["rules"][0]["cgroup_id"], a.cgroup().id, "{summary}");
}

#[test]
fn a_container_restarted_mid_fault_is_followed_and_one_stopped_is_reported() {
    if !on_host() {
        return;
    }
    let (a, b) = (Container::start("restart-a"), Container::start("restart-b"));
    let _server = b.rr_server(7200);
    // A packet fault (the TC program, by cgroup id) and a syscall fault (a hook on the cgroup
    // itself) in one session on the container, by name.
    let faults = TempFile::new(
        "chaos-podman-",
        &format!(
            "[[fault]]\nkind = \"net.drop\"\ncontainer = \"{0}\"\npercent = 100\nproto = \"udp\"\nfor = \"90s\"\n\n\
             [[fault]]\nkind = \"sys.fail\"\ncontainer = \"{0}\"\nsyscall = \"connect\"\nerrno = \"ECONNREFUSED\"\nfor = \"90s\"\n",
            a.name
        ),
    );
    let before = a.cgroup();
    let mut chaos = start_chaos(&["apply".into(), faults.path().into(), "--json".into()]);
    let first = (a.udp_to(&b, 7201, 50), a.connects_to(&b, 7200, 20));
    podman_ok(&["restart", "--time", "0", &a.name]);
    let after = a.cgroup();
    assert_eq!(after.path, before.path, "podman restart makes the container's cgroup at the same path");
    assert_ne!(after.id, before.id, "... as a new directory (a new cgroup id)");
    let line = chaos.wait_for("was recreated", Duration::from_secs(20));
    assert!(line.contains(&before.path.display().to_string()) && line.contains("now apply to the new cgroup"), "{line}");
    let second = (a.udp_to(&b, 7202, 50), a.connects_to(&b, 7200, 20));
    podman_ok(&["stop", "--time", "0", &a.name]);
    chaos.wait_for("is gone", Duration::from_secs(20));
    let summary = stop_chaos(chaos);
    for (when, (received, connects)) in [("before the restart", &first), ("after it", &second)] {
        assert_eq!(*received, 0, "{when}: every datagram of the container was dropped");
        assert_eq!(connects["errors"][libc::ECONNREFUSED.to_string()], 20, "{when}: every connect was refused: {connects}");
    }
    assert_eq!(counter(&summary, 0, "dropped"), 100, "{summary}");
    assert_eq!(counter(&summary, 1, "failed"), 40, "{summary}");
    let changes = summary["targets_changed"].as_array().unwrap_or_else(|| panic!("no targets_changed: {summary}"));
    assert_eq!(changes.len(), 2, "one restart, one stop: {summary}");
    let without_time = |c: &Value| {
        let mut c = c.clone();
        assert!(c["at_s"].as_f64().is_some(), "{c}");
        c.as_object_mut().expect("an object").remove("at_s");
        c
    };
    let path = before.path.display().to_string();
    assert_eq!(without_time(&changes[0]), serde_json::json!({"cgroup": path, "old_id": before.id, "new_id": after.id, "followed": true}), "{summary}");
    assert_eq!(without_time(&changes[1]), serde_json::json!({"cgroup": path, "old_id": after.id, "new_id": null, "followed": false}), "{summary}");
    assert_eq!(summary["rules"][0]["cgroup_id"], after.id, "the rules name the cgroup they last applied to: {summary}");
}

#[test]
fn an_unknown_container_name_is_one_line_naming_the_running_ones() {
    if !on_host() {
        return;
    }
    let a = Container::start("unknown");
    let (code, _, err) = run_chaos(&["net", "drop", "--container", "chaos-no-such-container", "--percent", "5", "--dry-run"]);
    assert_eq!(code, 2, "{err:?}");
    assert_eq!(err.len(), 1, "one line: {err:?}");
    assert!(err[0].starts_with("chaos: no container matches 'chaos-no-such-container'"), "{err:?}");
    // The running containers are listed (ten at most: tests beside this one run theirs).
    assert!(err[0].contains("the containers here: podman "), "{err:?}");
    drop(a);
}
