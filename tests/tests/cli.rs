//! Bad input and missing privileges: one line on stderr naming the problem, and the promised exit
//! code (2 bad input, 3 this machine cannot), never a panic or a backtrace.

use chaos_tests::*;

fn one_line_error(args: &[&str], code: i32, mentions: &str) {
    let (got, out, err) = run_chaos(args);
    assert_eq!(got, code, "chaos {args:?}: exit {got}, stderr {err:?}");
    assert_eq!(err.len(), 1, "chaos {args:?}: expected one stderr line, got {err:?}");
    assert!(err[0].starts_with("chaos: "), "{:?}", err[0]);
    assert!(err[0].contains(mentions), "chaos {args:?}: {:?} does not mention {mentions:?}", err[0]);
    assert!(!err[0].contains("panicked") && !err[0].contains("RUST_BACKTRACE"), "{:?}", err[0]);
    assert!(out.is_empty(), "nothing on stdout: {out:?}");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    one_line_error(&["net", "drop", "--cgroup", &cg, "--percent", "150"], 2, "outside 0-100");
    one_line_error(&["net", "drop", "--cgroup", &cg, "--percent", "abc"], 2, "not a number");
    one_line_error(&["net", "drop", "--percent", "5"], 2, "--cgroup");
    one_line_error(&["net", "drop", "--cgroup", &cg, "--percent", "5", "--for", "0s"], 2, "longer than 0s");
    one_line_error(&["net", "drop", "--cgroup", &cg, "--percent", "5", "--for", "soon"], 2, "not a duration");
    one_line_error(&["net", "drop", "--cgroup", &cg, "--percent", "5", "--port", "0"], 2, "not a port");
    one_line_error(&["net", "drop", "--cgroup", &cg, "--percent", "5", "--peer", "10.0.0.0/40"], 2, "not an address");
    one_line_error(&["net", "drop", "--cgroup", "/no/such/cgroup-here", "--percent", "5"], 2, "no cgroup v2 directory");
    one_line_error(&["net", "drop", "--cgroup", "/", "--percent", "5"], 2, "root cgroup");
    one_line_error(&["net", "drop", "--pid", "4000000000", "--percent", "5"], 2, "no process");
    one_line_error(&["net", "drop", "--cgroup", &cg, "--percent", "5", "--netns", "/no/such/netns"], 2, "network namespace");
    one_line_error(&["net", "explode", "--cgroup", &cg], 2, "explode");
    one_line_error(&["sys", "fail", "--cgroup", &cg, "--syscall", "connect", "--errno", "EIO", "--seed", "1"], 2, "packet faults");
    one_line_error(&["net", "delay", "--cgroup", &cg, "--delay", "10ms", "--direction", "both"], 2, "none of their own");
    one_line_error(&["net", "delay", "--cgroup", &cg, "--delay", "10ms", "--distribution", "normal"], 2, "give --jitter");
    one_line_error(&["net", "delay", "--cgroup", &cg, "--delay", "10ms", "--jitter", "1ms", "--distribution", "lumpy"], 2, "lumpy.dist");
}

#[test]
fn missing_capabilities_exit_3_naming_them() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    // An empty bounding set: the exec'd chaos gets no capabilities, even as root.
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all"])
        .arg(chaos_bin())
        .args(["net", "drop", "--cgroup", &cg, "--percent", "5", "--for", "5s"])
        .output()
        .expect("running setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("CAP_BPF") && err.contains("CAP_NET_ADMIN"), "{err}");
}

#[test]
fn help_and_version_exit_0_and_no_command_exits_2() {
    let (code, out, _) = run_chaos(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("net") && out.contains("demo"), "{out}");
    let (code, out, _) = run_chaos(&["net", "drop", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--percent") && out.contains("Examples:"), "{out}");
    let (code, _, _) = run_chaos(&[]);
    assert_eq!(code, 2);
}

/// The syscall sets `--syscall %file` takes are strace's own: what the strace here traces for
/// each set, learned afresh (a helper makes every syscall, each denied by seccomp), equals the
/// table chaos was built with.
#[test]
fn syscall_sets_are_what_strace_traces() {
    if which_strace().is_none() {
        eprintln!("no strace here: the sets are checked where there is one");
        return;
    }
    let run = |args: &[&str]| {
        let (code, out, err) = run_chaos(args);
        assert_eq!(code, 0, "chaos {args:?}: {err:?}");
        serde_json::from_str::<serde_json::Value>(out.trim()).expect("JSON")
    };
    let learned = run(&["workload", "strace-sets"]);
    let built = run(&["sys", "sets", "--json"]);
    assert!(learned["%file"].as_array().is_some_and(|a| a.len() > 20), "{learned}");
    assert_eq!(built, learned, "the table differs from what this strace traces: regenerate it with `cargo xtask syscall-sets`");
}

fn which_strace() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("strace")).find(|p| p.is_file()))
}
