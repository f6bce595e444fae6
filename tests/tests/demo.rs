//! `chaos demo` runs its built-in experiment end to end: the loss hits the service, the kernel
//! counts it, the probe sees it as latency, the hypothesis holds, the steady state returns, and
//! nothing of the run is left.

use chaos_tests::*;

#[test]
fn demo_injects_counts_and_cleans_up() {
    // 50 requests/s: a load the emulated guests sustain even beside the other lanes. At 200 a
    // guest ran flat out while measuring the steady state and slower later, so its "return to
    // the steady state" was judged against CPU it no longer had. 10% loss, the demo's own: at 20%
    // a packet lost again on its retransmissions (a 2 s timeout is 3 losses of a segment in a row,
    // 2 of a SYN-ACK) stalled the probe, one request at a time, for two of the 3 s phase in a CI
    // run: 1 error in 9 requests, the hypothesis violated by luck.
    // Phases of 5 s in the emulated guests: in 3 s of recovery, a Debian 6.1 guest that stood
    // still for a moment in a CI run never had the two calm intervals in a row the return takes.
    let phase = if lane() == "host" { "3s" } else { "5s" };
    let (code, out, err) = run_chaos(&["demo", "--phase", phase, "--percent", "10", "--rate", "50"]);
    let report_dir = out.lines().find_map(|l| l.strip_prefix("report: ")).and_then(|p| p.strip_suffix("/report.html")).map(std::path::PathBuf::from);
    let _cleanup = report_dir.clone().map(RemoveOnDrop);
    assert_eq!(code, 0, "the hypothesis held: stdout {out}\nstderr {err:?}");
    let report_dir = report_dir.unwrap_or_else(|| panic!("no 'report: ' line: {out}"));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).expect("report.json")).expect("JSON");
    assert_eq!(report["verdict"], "held", "{out}");

    // The kernel dropped some of the service's packets, and the summary says so.
    let rule = &report["faults"]["rules"][0];
    let dropped = rule["injected"].as_u64().unwrap_or(0);
    assert!(dropped > 0 && dropped < rule["matched"].as_u64().unwrap_or(0), "the kernel dropped a share of the service's packets: {rule}");
    assert!(out.contains(&format!("injected {dropped}")), "the printed summary names the drops: {out}");

    // What the probe saw: answers all along, the slow ones only while packets were lost (a
    // retransmission waits 200 ms or more on loopback).
    let requests = report["sources"].as_array().expect("sources").iter().find(|s| s["name"] == "requests").expect("the requests probe");
    let phase = |p: &str| &requests["phases"][p];
    let p99 = |p: &str| phase(p)["p99_ms"].as_f64().unwrap_or(0.0);
    eprintln!("p99: baseline {:.1} ms, inject {:.1} ms, recovery {:.1} ms", p99("baseline"), p99("inject"), p99("recovery"));
    assert_eq!(phase("inject")["errors"], 0, "TCP resent what was lost: {}", phase("inject"));
    assert!(p99("inject") > 150.0 && p99("inject") > p99("baseline"), "the loss showed as latency: {requests}");
    assert!(report["recovery"]["recovered_after_s"].is_number(), "the steady state returned: {}", report["recovery"]);

    // Nothing left: the service's cgroup and the fault's programs.
    let cg = rule["cgroup"].as_str().expect("the fault's cgroup");
    assert!(!std::path::Path::new(cg).exists(), "the demo left its cgroup {cg} behind");
    let ids = |k: &str| report["faults"]["attached"][k].as_array().expect(k).iter().filter_map(|v| v.as_u64().map(|n| n as u32)).collect::<Vec<u32>>();
    assert_all_gone(&ids("programs"), &ids("links"), "after the demo");
}
