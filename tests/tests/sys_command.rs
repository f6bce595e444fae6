//! `chaos sys ... -- CMD`: CMD runs in a fresh cgroup with the fault live from its first
//! instruction; chaos ends the fault when CMD ends, removes the cgroup, and exits with CMD's
//! status. The strace-like local use.

use std::process::Command;

use chaos_tests::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(chaos_bin()).args(args).output().expect("running chaos");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The run's cgroup, from the summary on stderr ("rule 0 (sys.fail) on /sys/fs/cgroup/.../chaos-run-N: ...").
fn run_cgroup(stderr: &str) -> String {
    stderr.split(" on ").nth(1).and_then(|s| s.split(':').next()).map(str::to_string).unwrap_or_else(|| panic!("no cgroup in {stderr}"))
}

#[test]
fn a_command_runs_under_the_fault_and_chaos_exits_with_its_status() {
    // User-space plumbing, the same on every kernel (the faults it runs are tested per lane).
    if lane() != "host" {
        eprintln!("the -- CMD test runs on the host lane");
        return;
    }
    let bin = chaos_bin().display().to_string();
    // The fault is live from the command's first instruction: its 2nd, 4th and 6th socket() fail.
    let (code, out, err) = run(&["sys", "fail", "--syscall", "socket", "--errno", "EMFILE", "--when", "2+2", "--", &bin, "workload", "syscall-loop", "--call", "socket", "--count", "6"]);
    assert_eq!(code, 0, "chaos exits with the command's status: {err}");
    let calls: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("the command's stdout is its own ({e}): {out:?}"));
    assert_eq!(calls["failed_at"], serde_json::json!([[2, 4, 6]]), "{calls}");
    assert!(err.contains("ended by command exited") && err.contains("failed 3"), "the summary on stderr counts the failures: {err}");
    let cg = run_cgroup(&err);
    assert!(!std::path::Path::new(&cg).exists(), "the run's cgroup {cg} was removed");

    // A signal that ends the command: 128 + its number, as a shell reports it. The shell dies at
    // its second write (to a pipe, which completes: a pipe with room does not check for a fatal
    // signal), so the third never comes.
    let (code, out, err) = run(&["sys", "signal", "--syscall", "write", "--signal", "TERM", "--when", "2", "--", "sh", "-c", "echo one; echo two; echo three"]);
    assert_eq!(code, 128 + libc::SIGTERM, "{err}");
    assert!(out.starts_with("one\n") && !out.contains("three"), "SIGTERM at the second write: {out:?}");
    let (code, _, err) = run(&["sys", "fail", "--syscall", "socket", "--errno", "EMFILE", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code, 7, "{err}");
}

#[test]
fn a_command_that_cannot_run_is_bad_input() {
    let (code, _, err) = run(&["sys", "fail", "--syscall", "socket", "--errno", "EMFILE", "--", "/nonexistent/program"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("cannot run /nonexistent/program"), "{err}");
    let (code, _, err) = run(&["sys", "fail", "--cgroup", "/", "--syscall", "socket", "--errno", "EMFILE", "--", "true"]);
    assert_eq!(code, 2, "a target and a command are one too many: {err}");
}
