//! `chaos probe` matches reality: checked against independent evidence (iproute2 creating the same
//! qdiscs, the kernel version for tcx) and against what the fault commands really do.

use std::process::Command;

use chaos_tests::*;

fn probe() -> Value {
    probe_report()
}

fn works(report: &Value, name: &str) -> bool {
    backend(report, name).0
}

/// Whether `tc qdisc add dev lo root KIND ARGS` works in a fresh namespace.
fn tc_can_add(kind: &[&str]) -> bool {
    let ns = unique("pq");
    assert!(Command::new("ip").args(["netns", "add", &ns]).status().expect("ip").success());
    let ok = Command::new("ip")
        .args(["netns", "exec", &ns, "tc", "qdisc", "add", "dev", "lo", "root"])
        .args(kind)
        .output()
        .expect("tc")
        .status
        .success();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    ok
}

#[test]
fn probe_finds_exactly_what_this_lane_is_known_to_have() {
    // The lane's expected backends are data (tests/src/lib.rs): a probe that says "no" where the
    // kernel can, or "yes" where it cannot, fails here rather than steering the other tests.
    let report = probe();
    let (_, expected) = LANES.iter().find(|(l, _)| *l == lane()).expect("known lane");
    let mut wrong = Vec::new();
    for (name, works) in expected.iter() {
        let (got, reason) = backend(&report, name);
        if got != *works {
            wrong.push(format!("{name}: probe says {got} ({reason}), the {} lane has {works}", lane()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_backend_is_reported_with_a_reason_when_it_does_not_work() {
    let report = probe();
    let checks = report["checks"].as_array().expect("checks");
    // One check per backend the lanes' expectations name.
    let (_, expected) = LANES.iter().find(|(l, _)| *l == lane()).expect("known lane");
    assert_eq!(checks.len(), expected.len(), "{report}");
    for c in checks {
        if c["works"] == false {
            let reason = c["reason"].as_str().unwrap_or_default();
            assert!(reason.len() > 10, "{} does not work but says no reason: {c}", c["backend"]);
        } else {
            assert!(c["reason"].is_null(), "{c}");
        }
    }
}

#[test]
fn qdisc_checks_agree_with_iproute2() {
    let report = probe();
    assert_eq!(works(&report, "sch_fq"), tc_can_add(&["fq"]), "fq: probe and tc disagree");
    assert_eq!(works(&report, "netem"), tc_can_add(&["netem", "delay", "1ms"]), "netem: probe and tc disagree");
}

#[test]
fn tcx_is_reported_exactly_on_6_6_and_later() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert_eq!(works(&probe(), "tcx"), (major, minor) >= (6, 6), "kernel {release}");
}

#[test]
fn net_drop_starts_exactly_when_this_lane_has_its_backends() {
    let can = lane_has("tcx") || lane_has("tc_netlink");
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let (code, _, err) = run_chaos(&["net", "drop", "--cgroup", &cg, "--percent", "1", "--for", "1s"]);
    if can {
        assert_eq!(code, 0, "probe says net drop can work, but: {err:?}");
    } else {
        assert_eq!(code, 3, "probe says net drop cannot work: expected exit 3, got {code}: {err:?}");
    }
}
