//! `chaos sys fail`: where `chaos probe` says a backend works, a syscall made by a process in the
//! target cgroup fails with the chosen errno and a bystander's does not; where it says the backend
//! does not work, the command exits 3 with the reason. Both halves run on every lane, so each
//! kernel proves whichever half is true for it.

use std::time::Duration;

use chaos_tests::*;
use serde_json::json;

/// Starts `syscall-loop --wait` at `place`: executed and ready, its calls not yet made.
fn caller(sb: &Sandbox, place: Place, call: &str, path: &str, n: u64) -> Proc {
    let mut p = sb.spawn(place, &["syscall-loop", "--wait", "--call", call, "--path", path, "--count", &n.to_string()]);
    p.ready();
    p
}

/// Lets a waiting caller make its calls and returns its JSON.
fn run_calls(mut p: Proc) -> Value {
    p.go();
    p.json(Duration::from_secs(60))
}

/// One syscall fault at a time. Each attaches a BPF trampoline or kprobe, which patches kernel text;
/// two at once in the errinj qemu guest stalled a vCPU once (RCU self-detected stall, software
/// emulation of cross-CPU code patching). A real kernel does this routinely; the lane must not hang.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fail_case(which: &str, probe_name: &str, call: &str, syscall: &str, errno_name: &str, errno: i32) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let file = std::env::temp_dir().join(unique("chaos-sys-"));
    std::fs::write(&file, b"x").expect("test file");
    let path = file.display().to_string();
    // What this lane has is data (tests/src/lib.rs); probe must agree with it.
    let works = lane_has(probe_name);
    let (probed, reason) = backend(&probe_report(), probe_name);
    assert_eq!(probed, works, "probe disagrees with the {} lane about {probe_name}: {reason}", lane());
    let cg = sb.cgroup.path.display().to_string();
    let mut args: Vec<String> = ["sys", "fail", "--cgroup", &cg, "--syscall", syscall, "--errno", errno_name, "--backend", which, "--for", "60s", "--json"]
        .map(String::from)
        .to_vec();
    if !works {
        let (code, _, err) = run_chaos(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 3, "{probe_name} does not work on this lane ({reason}); chaos must exit 3: {err:?}");
        assert!(err.len() == 1 && err[0].contains("cannot do it"), "{err:?}");
        assert!(err[0].contains(&reason), "the refusal must give probe's reason {reason:?}: {err:?}");
        eprintln!("{probe_name} is not available on this kernel ({reason}): checked the exit-3 refusal instead");
        let _ = std::fs::remove_file(&file);
        return;
    }
    args.push("--percent".into());
    args.push("100".into());
    // The processes exist before the fault starts: an open fault would fail their exec too.
    let (target, bystander) = (caller(&sb, Place::Target, call, &path, 200), caller(&sb, Place::Bystander, call, &path, 200));
    let chaos = start_chaos(&args);
    let (target, bystander) = (run_calls(target), run_calls(bystander));
    let summary = stop_chaos(chaos);
    let _ = std::fs::remove_file(&file);
    assert_eq!(target["ok"], 0, "every {call} in the cgroup should fail: {target}; chaos: {summary}");
    assert_eq!(target["errors"][errno.to_string()], 200, "with {errno_name}: {target}");
    assert_eq!(bystander["ok"], 200, "a process outside the cgroup is untouched: {bystander}");
    let r = &summary["rules"][0];
    assert_eq!(r["failed"], 200, "the kernel counted exactly the failed calls: {summary}");
}

#[test]
fn lsm_backend_fails_open_in_the_cgroup_only() {
    fail_case("lsm", "bpf_lsm", "open", "openat", "EIO", libc::EIO);
}

#[test]
fn kprobe_backend_fails_any_syscall_in_the_cgroup_only() {
    fail_case("kprobe", "kprobe_override", "fsync", "fsync", "ENOSPC", libc::ENOSPC);
}

#[test]
fn fmod_ret_backend_fails_open_through_security_file_open() {
    fail_case("fmod-ret", "fmod_ret_security", "open", "openat", "EACCES", libc::EACCES);
}

#[test]
fn fmod_ret_backend_fails_any_syscall_without_kprobes() {
    fail_case("fmod-ret", "fmod_ret_syscall", "fsync", "fsync", "EDQUOT", libc::EDQUOT);
}

#[test]
fn cgroup_backend_fails_connect_in_the_cgroup_only() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert!(lane_has("cgroup_sock_addr"), "every lane has cgroup sock hooks");
    let sb = Sandbox::new();
    // A listener in the client namespace, outside the cgroup; callers connect to it over lo.
    let mut server = sb.spawn(Place::Bystander, &["rr-server", "--bind", "127.0.0.1:6101", "--max", "60s"]);
    server.ready();
    let cg = sb.cgroup.path.display().to_string();
    let caller = |place| {
        let mut p = sb.spawn(place, &["syscall-loop", "--wait", "--call", "connect", "--to", "127.0.0.1:6101", "--count", "300"]);
        p.ready();
        p
    };
    let (target, bystander) = (caller(Place::Target), caller(Place::Bystander));
    let chaos = start_chaos(
        &["sys", "fail", "--cgroup", &cg, "--syscall", "connect", "--errno", "ECONNREFUSED", "--percent", "40", "--for", "60s", "--json"]
            .map(String::from),
    );
    let (target, bystander) = (run_calls(target), run_calls(bystander));
    let summary = stop_chaos(chaos);
    let failed = target["errors"][libc::ECONNREFUSED.to_string()].as_u64().unwrap_or(0);
    assert_eq!(target["ok"].as_u64().unwrap_or(0) + failed, 300, "only ECONNREFUSED failures: {target}");
    assert!((60..=180).contains(&failed), "about 40% of 300 connects failed: {target}");
    assert_eq!(bystander["ok"], 300, "a process outside the cgroup is untouched: {bystander}");
    assert_eq!(counter(&summary, 0, "failed"), failed, "the kernel counted exactly the failed calls: {summary}");
    assert_eq!(counter(&summary, 0, "seen"), 300, "every connect of the target reached the rule: {summary}");
}

#[test]
fn max_injections_caps_syscall_faults_exactly_across_processes() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let mut server = sb.spawn(Place::Bystander, &["rr-server", "--bind", "127.0.0.1:6111", "--max", "60s"]);
    server.ready();
    let cg = sb.cgroup.path.display().to_string();
    let callers: Vec<Proc> = (0..3)
        .map(|_| {
            let mut p = sb.spawn(Place::Target, &["syscall-loop", "--wait", "--call", "connect", "--to", "127.0.0.1:6111", "--count", "200"]);
            p.ready();
            p
        })
        .collect();
    let chaos = start_chaos(
        &["sys", "fail", "--cgroup", &cg, "--syscall", "connect", "--errno", "ECONNREFUSED", "--max-injections", "77", "--for", "60s", "--json"]
            .map(String::from),
    );
    // All three at once: the cap is one counter shared by every CPU and process.
    let mut callers = callers;
    for p in callers.iter_mut() {
        p.go();
    }
    let refused: u64 = callers
        .into_iter()
        .map(|p| p.json(Duration::from_secs(60))["errors"][libc::ECONNREFUSED.to_string()].as_u64().unwrap_or(0))
        .sum();
    let summary = stop_chaos(chaos);
    assert_eq!(refused, 77, "exactly --max-injections calls failed");
    assert_eq!((counter(&summary, 0, "failed"), counter(&summary, 0, "capped")), (77, 600 - 77), "{summary}");
}

#[test]
fn an_unknown_syscall_or_errno_is_bad_input() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let (code, _, err) = run_chaos(&["sys", "fail", "--cgroup", &cg, "--syscall", "openat", "--errno", "EWHAT"]);
    assert_eq!((code, err.len()), (2, 1), "{err:?}");
    let (code, _, err) = run_chaos(&["sys", "fail", "--cgroup", &cg, "--syscall", "Open At", "--errno", "EIO"]);
    assert_eq!((code, err.len()), (2, 1), "{err:?}");
}

/// Every call a cgroup hook fails, in one session of five rules: in the target, each thread's
/// calls 2, 4 and 6 of 8 fail (`--when 2..6+2`, counted per thread as strace does) with the
/// rule's errno; a bystander making the same calls is untouched; the counters equal the failures.
/// On every lane, this host included: cgroup hooks need neither LSM nor error injection.
#[test]
fn cgroup_backend_fails_socket_calls_exactly_on_the_calls_when_selects() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let calls = [("socket", "EMFILE", libc::EMFILE), ("bind", "EADDRINUSE", libc::EADDRINUSE), ("sendto", "ENOBUFS", libc::ENOBUFS), ("getsockopt", "ENOPROTOOPT", libc::ENOPROTOOPT), ("setsockopt", "EINVAL", libc::EINVAL)];
    // The other loops make sockets too (bind's, each time): socket() is failed in a cgroup of
    // its own, below the target, where only the socket loop runs.
    let sockets = sb.child_cgroup("sockets");
    let at = |call: &str| if call == "socket" { sockets.display().to_string() } else { cg.clone() };
    let mut text = String::new();
    for (call, errno, _) in calls {
        let cgroup = at(call);
        text += &format!("[[fault]]\nkind = \"sys.fail\"\ncgroup = \"{cgroup}\"\nsyscall = \"{call}\"\nerrno = \"{errno}\"\nwhen = \"2..6+2\"\nbackend = \"cgroup\"\nfor = \"60s\"\n\n");
    }
    let file = TempFile::new("chaos-sockcalls-", &text);
    let loops = |place| -> Vec<Proc> {
        calls
            .iter()
            .map(|(call, _, _)| {
                let args = ["syscall-loop", "--wait", "--call", call, "--to", "127.0.0.1:9", "--count", "8", "--threads", "2"];
                let mut p = if place == Place::Target { sb.spawn_at(std::path::Path::new(&at(call)), place, &args) } else { sb.spawn(place, &args) };
                p.ready();
                p
            })
            .collect()
    };
    let (targets, bystanders) = (loops(Place::Target), loops(Place::Bystander));
    let chaos = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);
    let run = |ps: Vec<Proc>| -> Vec<Value> {
        ps.into_iter()
            .map(|mut p| {
                p.go();
                p.json(Duration::from_secs(60))
            })
            .collect()
    };
    let (targets, bystanders) = (run(targets), run(bystanders));
    let summary = stop_chaos(chaos);
    for (i, (call, errno_name, errno)) in calls.iter().enumerate() {
        let t = &targets[i];
        assert_eq!(t["failed_at"], json!([[2, 4, 6], [2, 4, 6]]), "{call}: each thread's calls 2, 4 and 6 fail: {t}");
        assert_eq!(t["errors"][errno.to_string()], 6, "{call}: with {errno_name}: {t}");
        assert_eq!(bystanders[i]["ok"], 16, "{call}: a process outside the cgroup is untouched: {}", bystanders[i]);
        assert_eq!(counter(&summary, i, "failed"), 6, "{call}: the kernel counted exactly the failed calls: {summary}");
        assert_eq!(counter(&summary, i, "seen"), 16, "{call}: every call of the target reached its rule: {summary}");
    }
}

/// `--count-per process` and `--count-per cgroup` widen strace's per-thread count: `--when 3..4`
/// fails two calls of a whole process (of its four threads), and two calls of the whole target
/// (of its two processes).
#[test]
fn when_counts_per_process_or_per_target_when_asked() {
    // The counting is the programs' own code, the same on every kernel: the host lane shows it;
    // the guests' lanes spare their emulated minutes.
    if lane() != "host" {
        eprintln!("the --count-per test runs on the host lane");
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    for (per, processes, threads) in [("process", 1, "4"), ("cgroup", 2, "1")] {
        let mut ps: Vec<Proc> = (0..processes)
            .map(|_| {
                let mut p = sb.spawn(Place::Target, &["syscall-loop", "--wait", "--call", "socket", "--count", "20", "--threads", threads]);
                p.ready();
                p
            })
            .collect();
        let chaos = start_chaos(
            &["sys", "fail", "--cgroup", &cg, "--syscall", "socket", "--errno", "EMFILE", "--when", "3..4", "--count-per", per, "--for", "60s", "--json"]
                .map(String::from),
        );
        for p in ps.iter_mut() {
            p.go();
        }
        let failed: u64 = ps.into_iter().map(|p| p.json(Duration::from_secs(60))["errors"][libc::EMFILE.to_string()].as_u64().unwrap_or(0)).sum();
        let summary = stop_chaos(chaos);
        assert_eq!(failed, 2, "--count-per {per}: calls 3 and 4 of the {per}, and no other, fail");
        assert_eq!(counter(&summary, 0, "failed"), 2, "{summary}");
    }
}

/// strace parity: the calls `strace -f -e inject=CALL:error=E:when=SPEC` fails are the calls
/// chaos fails with `--when SPEC`, thread by thread, for several specs. Socket calls through the
/// cgroup hooks on every lane; fsync through fmod_ret or kprobe where the lane has them. One
/// session per backend: each spec is a rule on a cgroup of its own, where one workload runs.
#[test]
fn when_fails_the_same_calls_as_strace() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The cgroup hooks' parity on the host lane; fmod_ret's and kprobe's where they exist (the
    // errinj lane). The Debian lanes' guests, which have neither, spare their emulated minutes.
    let mut cases = if lane() == "host" { vec![("socket", "cgroup")] } else { Vec::new() };
    if lane_has("fmod_ret_syscall") {
        cases.push(("fsync", "fmod-ret"));
    }
    if lane_has("kprobe_override") {
        cases.push(("fsync", "kprobe"));
    }
    if cases.is_empty() {
        eprintln!("strace parity runs on the host lane (cgroup hooks) and where fmod_ret or kprobe override work");
        return;
    }
    let specs = ["3", "2..5", "4+", "1+3", "2..9+2"];
    let file = TempFile::new("chaos-parity-", "x");
    let sb = Sandbox::new();
    for (call, backend) in cases {
        let workload = ["syscall-loop", "--wait", "--call", call, "--path", file.path(), "--count", "12", "--threads", "2"];
        let mut text = String::new();
        let mut procs = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let cg = sb.child_cgroup(&format!("{backend}-{i}"));
            text += &format!("[[fault]]\nkind = \"sys.fail\"\ncgroup = \"{}\"\nsyscall = \"{call}\"\nerrno = \"EIO\"\nwhen = \"{spec}\"\nbackend = \"{backend}\"\nfor = \"60s\"\n\n", cg.display());
            let mut p = sb.spawn_at(&cg, Place::Target, &workload);
            p.ready();
            procs.push(p);
        }
        let faults = TempFile::new("chaos-parity-faults-", &text);
        let chaos = start_chaos(&["apply".into(), faults.path().into(), "--json".into()]);
        let by_chaos: Vec<Value> = procs
            .into_iter()
            .map(|mut p| {
                p.go();
                p.json(Duration::from_secs(60))
            })
            .collect();
        let summary = stop_chaos(chaos);
        for (i, spec) in specs.iter().enumerate() {
            let out = std::process::Command::new("strace")
                .args(["-f", "-qq", "-o", "/dev/null", "-e", &format!("trace={call}"), "-e", &format!("inject={call}:error=EIO:when={spec}")])
                .arg(chaos_bin())
                .arg("workload")
                .args(workload.iter().filter(|a| **a != "--wait"))
                .output()
                .expect("running strace");
            assert!(out.status.success(), "strace: {}", String::from_utf8_lossy(&out.stderr));
            let by_strace: Value = serde_json::from_slice(out.stdout.split(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap_or_default())
                .unwrap_or_else(|e| panic!("strace's workload printed no JSON ({e})"));
            let mine = &by_chaos[i];
            assert_eq!(mine["failed_at"], by_strace["failed_at"], "{call} --when {spec} ({backend}): chaos {mine}, strace {by_strace}");
            let failed = mine["errors"][libc::EIO.to_string()].as_u64().unwrap_or(0);
            assert!(failed > 0, "{call} --when {spec}: nothing failed: {mine}");
            assert_eq!(counter(&summary, i, "failed"), failed, "{summary}");
        }
    }
}

#[test]
fn bad_when_or_retval_is_bad_input_with_the_reason() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let (code, _, err) = run_chaos(&["sys", "fail", "--cgroup", &cg, "--syscall", "socket", "--errno", "EIO", "--when", "5..2"]);
    assert_eq!((code, err.len()), (2, 1), "{err:?}");
    assert!(err[0].contains("LAST is before FIRST"), "{err:?}");
    let (code, _, err) = run_chaos(&["sys", "fail", "--cgroup", &cg, "--syscall", "socket", "--retval", "3", "--backend", "cgroup"]);
    assert_eq!((code, err.len()), (2, 1), "{err:?}");
    assert!(err[0].contains("--retval") && err[0].contains("--errno"), "{err:?}");
    let (code, _, err) = run_chaos(&["sys", "fail", "--cgroup", &cg, "--syscall", "opnat", "--errno", "EIO"]);
    assert_eq!((code, err.len()), (2, 1), "{err:?}");
    assert!(err[0].contains("did you mean") && err[0].contains("openat"), "{err:?}");
}

/// `--retval` (strace's retval=): where fmod_ret or kprobe override can replace a syscall's
/// result, the selected calls return the value without running; elsewhere chaos exits 3 naming
/// what is missing.
#[test]
fn retval_replaces_the_result_where_a_backend_can() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    // getppid takes no argument: its entry has no BTF, so fmod_ret cannot have it and auto takes
    // the kprobe; write goes through fmod_ret where the lane has it.
    for (call, backend, lane_can) in [("getppid", "auto", lane_has("kprobe_override")), ("write", "fmod-ret", lane_has("fmod_ret_syscall"))] {
        let args = ["sys", "fail", "--cgroup", &cg, "--syscall", call, "--retval", "4242", "--when", "2+2", "--backend", backend, "--for", "60s", "--json"];
        if !lane_can {
            let (code, _, err) = run_chaos(&args);
            assert_eq!((code, err.len()), (3, 1), "no backend replaces {call}'s result on this lane: {err:?}");
            assert!(err[0].contains("cannot do it"), "{err:?}");
            continue;
        }
        let caller = |place| {
            let mut p = sb.spawn(place, &["syscall-loop", "--wait", "--call", call, "--count", "6"]);
            p.ready();
            p
        };
        let (target, bystander) = (caller(Place::Target), caller(Place::Bystander));
        let chaos = start_chaos(&args.map(String::from));
        let (target, bystander) = (run_calls(target), run_calls(bystander));
        let summary = stop_chaos(chaos);
        assert_eq!(target["values"]["4242"], 3, "{call}: calls 2, 4 and 6 returned 4242: {target}");
        assert_eq!(target["ok"], 6, "{target}");
        assert!(bystander["values"].get("4242").is_none(), "a process outside the cgroup is untouched: {bystander}");
        assert_eq!(counter(&summary, 0, "failed"), 3, "{summary}");
    }
}

/// `--log-calls`: one line per injected call, with the caller's pid and the call's outcome, as
/// strace marks (INJECTED) calls; the lines equal the failures.
#[test]
fn log_calls_prints_one_line_per_injected_call() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let mut p = sb.spawn(Place::Target, &["syscall-loop", "--wait", "--call", "socket", "--count", "6"]);
    p.ready();
    let pid = p.child.id();
    let chaos = start_chaos(
        &["sys", "fail", "--cgroup", &cg, "--syscall", "socket", "--errno", "EMFILE", "--when", "2+2", "--log-calls", "--for", "60s", "--json"].map(String::from),
    );
    let calls = run_calls(p);
    chaos.signal(libc::SIGINT);
    let (code, out, err) = chaos.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{err:?}");
    assert_eq!(calls["errors"][libc::EMFILE.to_string()], 3, "{calls}");
    let logged: Vec<&String> = err.iter().filter(|l| l.contains("(INJECTED, rule 0)")).collect();
    assert_eq!(logged.len(), 3, "one line per failed call: {err:?}");
    for l in logged {
        assert!(l.contains(&format!("[pid {pid} ")) && l.contains("socket() = -1 EMFILE"), "{l}");
    }
    let summary: Value = serde_json::from_str(out.lines().last().unwrap_or_default()).expect("JSON summary");
    assert_eq!(summary["kernel_errors"]["call_log_full"], 0, "{summary}");
}

/// A hook finds its call's rules from one lookup, among 64: rules at the top indices act, and a
/// call that more than four rules match is decided against the first four and counted as
/// `sys_rules_skipped` (chaos_common::sys::RULES_PER_CALL).
#[test]
fn syscall_rules_are_found_among_64_and_a_call_meets_at_most_four() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let other = sb.child_cgroup("other").display().to_string();
    let rule = |cgroup: &str, call: &str, errno: &str, extra: &str| {
        format!("[[fault]]\nkind = \"sys.fail\"\ncgroup = \"{cgroup}\"\nsyscall = \"{call}\"\nerrno = \"{errno}\"\nbackend = \"cgroup\"\nfor = \"60s\"\n{extra}\n")
    };
    let mut text = String::new();
    // Rules 0-4: socket() at 0%, five of them; rules 5-61: setsockopt() in a cgroup no caller uses.
    for _ in 0..5 {
        text += &rule(&cg, "socket", "EMFILE", "percent = 0");
    }
    for _ in 5..62 {
        text += &rule(&other, "setsockopt", "EINVAL", "percent = 0");
    }
    text += &rule(&cg, "getsockopt", "ENOPROTOOPT", "when = \"2\"");
    text += &rule(&cg, "bind", "EADDRNOTAVAIL", "");
    let file = TempFile::new("chaos-sys64-", &text);
    let start = |call: &str, n: &str| {
        let mut p = sb.spawn(Place::Target, &["syscall-loop", "--wait", "--call", call, "--count", n]);
        p.ready();
        p
    };
    let (sockets, getsockopts, binds) = (start("socket", "3"), start("getsockopt", "4"), start("bind", "2"));
    let chaos = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);
    let (sockets, getsockopts, binds) = (run_calls(sockets), run_calls(getsockopts), run_calls(binds));
    let summary = stop_chaos(chaos);
    assert_eq!(sockets["ok"], 3, "{sockets}");
    assert_eq!(getsockopts["failed_at"], json!([[2]]), "rule 62 failed the second getsockopt: {getsockopts}");
    assert_eq!(binds["errors"][libc::EADDRNOTAVAIL.to_string()], 2, "rule 63 failed every bind: {binds}");
    assert_eq!((counter(&summary, 62, "failed"), counter(&summary, 63, "failed")), (1, 2), "{summary}");
    // Five socket() calls (the socket loop's three, and one before each bind): rules 0-3 saw
    // each, rule 4 none, and each call counted one skip.
    for r in 0..4 {
        assert_eq!(counter(&summary, r, "seen"), 5, "rule {r}: {summary}");
    }
    assert_eq!(counter(&summary, 4, "seen"), 0, "{summary}");
    assert_eq!(summary["kernel_errors"]["sys_rules_skipped"], 5, "{summary}");
}

/// `--syscall a,b`: one rule for several syscalls, each counted on its own for `--when` (as
/// strace counts per syscall), each named in `--log-calls` by the hook that caught it.
#[test]
fn one_rule_fails_several_syscalls_each_counted_on_its_own() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let start = |call: &str| {
        let mut p = sb.spawn(Place::Target, &["syscall-loop", "--wait", "--call", call, "--count", "3"]);
        p.ready();
        p
    };
    let (sockets, setsockopts) = (start("socket"), start("setsockopt"));
    let chaos = start_chaos(
        &["sys", "fail", "--cgroup", &cg, "--syscall", "socket,setsockopt", "--errno", "EMFILE", "--when", "2", "--log-calls", "--for", "60s", "--json"]
            .map(String::from),
    );
    let (sockets, setsockopts) = (run_calls(sockets), run_calls(setsockopts));
    chaos.signal(libc::SIGINT);
    let (code, out, err) = chaos.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{err:?}");
    assert_eq!((&sockets["failed_at"], &setsockopts["failed_at"]), (&json!([[2]]), &json!([[2]])), "the second call of each syscall");
    let summary: Value = serde_json::from_str(out.lines().last().unwrap_or_default()).expect("JSON summary");
    assert_eq!(counter(&summary, 0, "failed"), 2, "{summary}");
    for call in ["socket", "setsockopt"] {
        let lines = err.iter().filter(|l| l.contains(&format!("] {call}() = -1 EMFILE (INJECTED"))).count();
        assert_eq!(lines, 1, "{call}: {err:?}");
    }
}

/// A set (`--syscall %network`) that this kernel can fail only in part is refused, naming the
/// syscalls it cannot fail, before anything attaches (exit 3): never a fault that silently does
/// less than asked.
#[test]
fn a_set_the_kernel_cannot_wholly_fail_is_refused_naming_the_calls() {
    if lane_has("fmod_ret_syscall") || lane_has("kprobe_override") || lane_has("bpf_lsm") {
        eprintln!("the {} lane fails every syscall of %network", lane());
        return;
    }
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let (code, _, err) = run_chaos(&["sys", "fail", "--cgroup", &cg, "--syscall", "%network", "--errno", "EIO", "--for", "5s"]);
    assert_eq!((code, err.len()), (3, 1), "{err:?}");
    assert!(err[0].contains("not accept,") && err[0].contains("can fail 8 of the"), "{err:?}");
}

/// The call `syscall-loop --call` makes for each syscall an LSM hook fails (raw syscalls made by
/// the loop's own thread, which makes no other call of the list), and that syscall.
const LSM_LOOPS: &[(&str, &str)] = &[
    ("open", "openat"),
    ("read", "read"),
    ("write", "write"),
    ("mmap", "mmap"),
    ("mprotect", "mprotect"),
    ("ioctl", "ioctl"),
    ("fcntl", "fcntl"),
    ("flock", "flock"),
    ("stat", "newfstatat"),
    ("chmod", "chmod"),
    ("mkdir", "mkdir"),
    ("rmdir", "rmdir"),
    ("unlink", "unlink"),
    ("rename", "rename"),
    ("link", "link"),
    ("symlink", "symlink"),
    ("readlink", "readlink"),
    ("fork", "fork"),
    ("kill", "kill"),
    ("socket", "socket"),
    ("socketpair", "socketpair"),
    ("udp-bind", "bind"),
    ("udp-connect", "connect"),
    ("listen", "listen"),
    ("accept4", "accept4"),
    ("sendto", "sendto"),
    ("recvfrom", "recvfrom"),
    ("getsockname", "getsockname"),
    ("getpeername", "getpeername"),
    ("getsockopt", "getsockopt"),
    ("setsockopt", "setsockopt"),
    ("shutdown", "shutdown"),
];

/// Starts a `syscall-loop` of 10 calls in the main thread at `place`, with its objects in a
/// directory of its own under `dir`.
fn lsm_loop(sb: &Sandbox, place: Place, dir: &std::path::Path, call: &str) -> Proc {
    let own = dir.join(format!("{call}-{place:?}"));
    std::fs::create_dir_all(&own).expect("loop directory");
    let path = match call {
        "open" | "write" => own.join("file"),
        _ => own,
    };
    std::fs::write(dir.join("file"), b"chaos").expect("test file");
    let _ = std::fs::write(&path, b"chaos");
    let path = path.display().to_string();
    let mut args = vec!["syscall-loop", "--wait", "--same-thread", "--call", call, "--path", &path, "--count", "10"];
    if call == "sendto" {
        args.extend(["--to", "127.0.0.1:9"]);
    }
    let mut p = sb.spawn(place, &args);
    p.ready();
    p
}

/// Every BPF LSM hook chaos maps syscalls to (`chaos sys syscalls`), in one rule: with `--when
/// 2+2`, exactly the even calls of each syscall fail with the errno, each counted on its own per
/// thread (the hook reads the syscall's number), a bystander's never; the kernel counts exactly
/// the failures. Then execve, counted across the target (each exec is a new process's).
/// Where the kernel has no BPF LSM, `--backend lsm` exits 3 with probe's reason.
#[test]
fn lsm_hooks_fail_exactly_the_calls_when_selects() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let syscalls = LSM_LOOPS.iter().map(|(_, s)| *s).collect::<Vec<_>>().join(",");
    let args = |syscalls: &str, extra: &[&str]| -> Vec<String> {
        let mut a = vec!["sys", "fail", "--cgroup", &cg, "--syscall", syscalls, "--errno", "ENOTRECOVERABLE", "--backend", "lsm", "--when", "2+2"];
        a.extend(extra);
        a.extend(["--for", "120s", "--json"]);
        a.into_iter().map(String::from).collect()
    };
    if !lane_has("bpf_lsm") {
        let (_, reason) = backend(&probe_report(), "bpf_lsm");
        let a = args(&syscalls, &[]);
        let (code, _, err) = run_chaos(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!((code, err.len()), (3, 1), "no BPF LSM here: exit 3 with the reason: {err:?}");
        assert!(err[0].contains(&reason), "probe's reason {reason:?}: {err:?}");
        return;
    }
    let dir = std::env::temp_dir().join(unique("chaos-lsm-"));
    std::fs::create_dir_all(&dir).expect("test directory");
    let _cleanup = RemoveOnDrop(dir.clone());
    let loops: Vec<(&str, Proc, Proc)> =
        LSM_LOOPS.iter().map(|(call, syscall)| (*syscall, lsm_loop(&sb, Place::Target, &dir, call), lsm_loop(&sb, Place::Bystander, &dir, call))).collect();
    let chaos = start_chaos(&args(&syscalls, &[]));
    let outcomes: Vec<(&str, Value, Value)> = loops.into_iter().map(|(syscall, t, b)| (syscall, run_calls(t), run_calls(b))).collect();
    let summary = stop_chaos(chaos);
    let mut wrong = Vec::new();
    for (syscall, target, bystander) in &outcomes {
        let expected = (json!([[2, 4, 6, 8, 10]]), json!({ libc::ENOTRECOVERABLE.to_string(): 5 }), json!(10));
        if (&target["failed_at"], &target["errors"], &bystander["ok"]) != (&expected.0, &expected.1, &expected.2) {
            wrong.push(format!("{syscall}: target {target}, bystander {bystander}"));
        }
    }
    assert!(wrong.is_empty(), "each syscall's even calls fail, a bystander's none:\n{}", wrong.join("\n"));
    assert_eq!(counter(&summary, 0, "failed"), 5 * LSM_LOOPS.len() as u64, "the kernel counted exactly the failures: {summary}");

    // execve: each exec is made by a new child, so count across the target.
    let exec = |place| {
        let own = dir.join(format!("exec-{place:?}"));
        std::fs::create_dir_all(&own).expect("loop directory");
        let own = own.display().to_string();
        let mut p = sb.spawn(place, &["syscall-loop", "--wait", "--same-thread", "--call", "exec", "--path", &own, "--count", "10"]);
        p.ready();
        p
    };
    let (target, bystander) = (exec(Place::Target), exec(Place::Bystander));
    let chaos = start_chaos(&args("execve", &["--count-per", "cgroup"]));
    let (target, bystander) = (run_calls(target), run_calls(bystander));
    let summary = stop_chaos(chaos);
    assert_eq!(target["failed_at"], json!([[2, 4, 6, 8, 10]]), "every second exec of the target fails: {target}");
    assert_eq!(target["errors"][libc::ENOTRECOVERABLE.to_string()], 5, "{target}");
    assert_eq!(bystander["ok"], 10, "{bystander}");
    assert_eq!(counter(&summary, 0, "failed"), 5, "{summary}");
}


/// `--path PREFIX`: only the opens, mappings and ioctls of files under the prefix fail, as the
/// kernel resolves them (a symlink into it counts, a sibling whose name merely starts the same
/// does not) in the process's own root (a chrooted process's view, not the host's), each counted
/// for `--when` only when under it; a bystander opening the same file is untouched. Where the
/// kernel has no BPF LSM, exit 3 with the reason; a relative prefix or a call that opens no file
/// is bad input everywhere.
#[test]
fn path_fails_only_the_opens_under_the_prefix() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let dir = std::env::temp_dir().join(unique("chaos-path-"));
    let _cleanup = RemoveOnDrop(dir.clone());
    for sub in ["in", "inner", "out"] {
        std::fs::create_dir_all(dir.join(sub)).expect("test directory");
        std::fs::write(dir.join(sub).join("f"), b"chaos").expect("test file");
    }
    std::os::unix::fs::symlink(dir.join("in/f"), dir.join("out/link")).expect("symlink");
    let prefix = dir.join("in").display().to_string();
    for (args, says) in [
        (vec!["--syscall", "openat", "--path", "relative/dir"], "is not absolute"),
        (vec!["--syscall", "openat,mkdir", "--path", &prefix], "not mkdir"),
        (vec!["--syscall", "mmap", "--path", "/"], "leave --path out"),
        (vec!["--syscall", "openat", "--path", &prefix, "--backend", "kprobe"], "use --backend lsm"),
    ] {
        let mut all = vec!["sys", "fail", "--cgroup", &cg, "--errno", "EACCES", "--for", "5s"];
        all.extend(args);
        let (code, _, err) = run_chaos(&all);
        assert_eq!((code, err.len()), (2, 1), "{all:?}: {err:?}");
        assert!(err[0].contains(says), "{err:?}");
    }
    let args = ["sys", "fail", "--cgroup", &cg, "--syscall", "openat", "--errno", "EACCES", "--path", &prefix, "--when", "2+2", "--for", "60s", "--json"];
    if !lane_has("bpf_lsm") {
        let (_, reason) = backend(&probe_report(), "bpf_lsm");
        let (code, _, err) = run_chaos(&args);
        assert_eq!((code, err.len()), (3, 1), "no BPF LSM here: exit 3 with the reason: {err:?}");
        assert!(err[0].contains(&reason), "probe's reason {reason:?}: {err:?}");
        return;
    }
    // open: the file named; mmap-file and ioctl: the file `file` in the directory named.
    let opener = |place, call: &str, path: &str| caller(&sb, place, call, &dir.join(path).display().to_string(), 10);
    let loops = [
        ("open", "in/f", true),
        ("open", "out/link", true),
        ("open", "out/f", false),
        ("open", "inner/f", false),
        ("mmap-file", "in", true),
        ("mmap-file", "out", false),
        ("ioctl", "in", true),
        ("ioctl", "inner", false),
    ]
    .map(|(call, path, under)| (call, path, under, opener(Place::Target, call, path)));
    let bystander = opener(Place::Bystander, "open", "in/f");
    // A process with its own root (as in a container) opening what it sees as PREFIX/f: under
    // the prefix in its view, though not in the host's (ROOT/PREFIX/f), which a process of the
    // host opening that same file shows.
    let root = dir.join("root");
    let mirrored = root.join(prefix.trim_start_matches('/')).join("f");
    std::fs::create_dir_all(mirrored.parent().expect("a parent")).expect("mirrored directory");
    std::fs::write(&mirrored, b"chaos").expect("mirrored file");
    let mut jailed = sb.spawn(
        Place::Target,
        &["syscall-loop", "--wait", "--chroot", &root.display().to_string(), "--call", "open", "--path", &format!("{prefix}/f"), "--count", "10"],
    );
    jailed.ready();
    let host_view = caller(&sb, Place::Target, "open", &mirrored.display().to_string(), 10);
    let args = ["sys", "fail", "--cgroup", &cg, "--syscall", "openat,mmap,ioctl", "--errno", "EACCES", "--path", &prefix, "--when", "2+2", "--for", "60s", "--json"];
    let chaos = start_chaos(&args.map(String::from));
    let outcomes: Vec<(&str, &str, bool, Value)> = loops.into_iter().map(|(call, path, under, p)| (call, path, under, run_calls(p))).collect();
    let bystander = run_calls(bystander);
    let (jailed, host_view) = (run_calls(jailed), run_calls(host_view));
    let summary = stop_chaos(chaos);
    assert_eq!(jailed["failed_at"], json!([[2, 4, 6, 8, 10]]), "under the prefix in the process's own root: {jailed}");
    assert_eq!(host_view["failed_at"], json!([[]]), "the same file seen from the host's root is not: {host_view}");
    for (call, path, under, out) in &outcomes {
        let expected = if *under { json!([[2, 4, 6, 8, 10]]) } else { json!([[]]) };
        assert_eq!(out["failed_at"], expected, "{call} {path}: {out}");
    }
    assert_eq!(bystander["ok"], 10, "{bystander}");
    assert_eq!(counter(&summary, 0, "failed"), 25, "the kernel counted exactly the failures: {summary}");
    assert!(summary["rules"][0]["description"].as_str().is_some_and(|d| d.contains(&format!("under {prefix}"))), "{summary}");
}

/// `--path` on read and write, whose hook (`file_permission`) is given an open file and cannot
/// tell its path: each file a target opens under the prefix while the rule is in place is
/// followed from its open, and each it had open under it when chaos started is followed from
/// then (the task_file iterator), as is each a process brought when it joined the target. With `--when 2+2`, exactly the even reads and writes of those
/// files fail (the loader's reads of the libraries, outside the prefix, are not counted); the
/// same calls on a file outside the prefix and a bystander's on the same file go through; the
/// kernel counts exactly the failures.
#[test]
fn path_fails_the_reads_and_writes_of_files_opened_under_the_prefix() {
    if !lane_has("bpf_lsm") {
        eprintln!("no BPF LSM on the {} lane (path_fails_only_the_opens_under_the_prefix checks the refusal)", lane());
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let dir = std::env::temp_dir().join(unique("chaos-path-rw-"));
    let _cleanup = RemoveOnDrop(dir.clone());
    for sub in ["in", "out"] {
        std::fs::create_dir_all(dir.join(sub)).expect("test directory");
        std::fs::write(dir.join(sub).join("file"), b"chaos").expect("test file");
    }
    let prefix = dir.join("in").display().to_string();
    // `read` reads DIR/file; `write` appends to the file named. Each opens it before waiting.
    let looper = |place, call: &str, path: &str| {
        let path = dir.join(path).display().to_string();
        let mut p = sb.spawn(place, &["syscall-loop", "--wait", "--same-thread", "--call", call, "--path", &path, "--count", "10"]);
        p.ready();
        p
    };
    let opened_before = looper(Place::Target, "read", "in");
    // Opened outside the target, and moved in once the session runs.
    let joins_later = looper(Place::Bystander, "read", "in");
    let args = ["sys", "fail", "--cgroup", &cg, "--syscall", "read,write", "--errno", "EIO", "--path", &prefix, "--when", "2+2", "--for", "60s", "--json"];
    let mut chaos = start_chaos_env(&args.map(String::from), &[("RUST_LOG", "info,chaos_user::session=debug")]);
    std::fs::write(sb.cgroup.path.join("cgroup.procs"), joins_later.child.id().to_string()).expect("moving a process into the target");
    chaos.wait_for("that joined the targets", Duration::from_secs(30));
    let loops = [
        (Place::Target, "read", "in", true),
        (Place::Target, "write", "in/w", true),
        (Place::Target, "read", "out", false),
        (Place::Target, "write", "out/w", false),
        (Place::Bystander, "read", "in", false),
    ]
    .map(|(place, call, path, under)| (place, call, path, under, looper(place, call, path)));
    let before = run_calls(opened_before);
    let joined = run_calls(joins_later);
    let outcomes: Vec<_> = loops.into_iter().map(|(place, call, path, under, p)| (place, call, path, under, run_calls(p))).collect();
    let summary = stop_chaos(chaos);
    for (place, call, path, under, out) in &outcomes {
        let expected = if *under { json!([[2, 4, 6, 8, 10]]) } else { json!([[]]) };
        assert_eq!(out["failed_at"], expected, "{place:?} {call} {path}: {out}");
        if *under {
            assert_eq!(out["errors"], json!({"5": 5}), "EIO: {out}");
        }
    }
    assert_eq!(before["failed_at"], json!([[2, 4, 6, 8, 10]]), "a file opened under the prefix before chaos started is followed too: {before}");
    assert_eq!(joined["failed_at"], json!([[2, 4, 6, 8, 10]]), "and one a process brought when it joined the target: {joined}");
    assert_eq!(counter(&summary, 0, "failed"), 20, "the kernel counted exactly the failures: {summary}");
    assert_eq!(summary["kernel_errors"]["followed_full"], 0, "every file followed: {summary}");
}

/// The LSM hooks end as every hook does: with chaos frozen (SIGSTOP) a rule stops failing calls
/// at its deadline, by the kernel's own clock; after SIGKILL nothing of them stays attached and
/// the calls succeed again. (Where the kernel has no BPF LSM, `lsm_hooks_fail_exactly_the_calls_when_selects`
/// checks the refusal.)
#[test]
fn lsm_hooks_end_at_their_deadline_and_go_with_a_killed_chaos() {
    if !lane_has("bpf_lsm") {
        eprintln!("no BPF LSM on the {} lane", lane());
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let dir = std::env::temp_dir().join(unique("chaos-lsm-end-"));
    let _cleanup = RemoveOnDrop(dir.clone());
    // Five mkdirs by a new process in the target (its exec makes no mkdir): how many succeeded.
    let mkdirs = |name: &str| {
        let own = dir.join(name);
        std::fs::create_dir_all(&own).expect("loop directory");
        let own = own.display().to_string();
        sb.spawn(Place::Target, &["syscall-loop", "--same-thread", "--call", "mkdir", "--path", &own, "--count", "5"]).json(Duration::from_secs(60))["ok"]
            .as_u64()
            .unwrap_or(u64::MAX)
    };
    let args = |lifetime: &str| ["sys", "fail", "--cgroup", &cg, "--syscall", "mkdir", "--errno", "EPERM", "--backend", "lsm", "--for", lifetime, "--json"].map(String::from);

    let lifetime = Duration::from_secs(8);
    let chaos = start_chaos(&args("8s"));
    let started = std::time::Instant::now();
    chaos.signal(libc::SIGSTOP);
    assert_eq!(mkdirs("before"), 0, "before the deadline every mkdir fails");
    still_before(started, lifetime, "the first mkdirs");
    sleep_past(started, lifetime);
    assert_eq!(mkdirs("after"), 5, "after the deadline none does, chaos still frozen");
    chaos.signal(libc::SIGCONT);
    let summary = chaos.json(Duration::from_secs(30));
    assert_eq!(counter(&summary, 0, "failed"), 5, "{summary}");

    let mut chaos = start_chaos(&args("60s"));
    let (programs, links) = attached_ids(&chaos.wait_for("attached:", Duration::from_secs(5)));
    assert_eq!(mkdirs("live"), 0, "the fault is live before the kill");
    chaos.signal(libc::SIGKILL);
    let _ = chaos.finish(Duration::from_secs(10));
    assert_all_gone(&programs, &links, "after SIGKILL");
    assert_eq!(mkdirs("killed"), 5, "mkdir works again after SIGKILL");
}
