//! `chaos demo` runs end to end: the fault hits the workload, the kernel counts it, and the
//! sandbox is gone afterwards.

use chaos_tests::*;

#[test]
fn demo_injects_counts_and_cleans_up() {
    // 50 requests/s: a load the emulated guests sustain even beside the other lanes. At 200 a
    // guest ran flat out (165/s) while measuring the steady state and slower later, so its
    // "return to the steady state" was judged against CPU it no longer had.
    let (code, out, err) = run_chaos(&["demo", "--phase", "3s", "--percent", "30", "--rate", "50"]);
    assert_eq!(code, 0, "stdout {out}\nstderr {err:?}");
    let removed = out.lines().find(|l| l.contains("fault removed")).unwrap_or_else(|| panic!("no 'fault removed' line: {out}"));
    let dropped: u64 = removed
        .split("dropped ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no drop count in {removed:?}"));
    assert!(dropped > 0, "the kernel dropped nothing during the demo: {out}");
    assert!(out.contains("impact during the fault: yes"), "a 30% drop had no measured impact: {out}");
    assert!(out.lines().any(|l| l.starts_with("returned to the steady state") && l.contains(": yes, ")), "{out}");
    let cg = out.lines().next().and_then(|l| l.split("cgroup ").nth(1)).and_then(|s| s.split_whitespace().next()).expect("cgroup path");
    assert!(!std::path::Path::new(cg).exists(), "the demo left its cgroup {cg} behind");
}
