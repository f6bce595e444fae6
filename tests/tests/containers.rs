//! `--container` and `--pod`: a container's or a pod's cgroup found by the directory names the
//! runtimes and the kubelet use, here made as they make them (inside the test's own cgroup, so
//! tests run side by side), with real traffic from processes placed in them.

use std::time::Duration;

use chaos_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// A container ID (64 hex digits) no other test shares: its first 12 digits differ by `tag`.
fn container_id(tag: u8) -> String {
    let u = unique("");
    let digits: String = u.chars().filter(char::is_ascii_digit).collect();
    format!("{tag:02x}{digits:0<10}{}", "0123456789abcdef".repeat(4))[..64].to_string()
}

/// `n` datagrams at 2000/s from a process in `cgroup` to the sandbox's server: how many arrived.
fn udp_from(sb: &Sandbox, cgroup: &std::path::Path, port: u16, n: u64) -> u64 {
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "500ms"]);
    sink.ready();
    sb.spawn_at(cgroup, Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:{port}"), "--count", &n.to_string(), "--rate", "2000"]).json(T);
    sink.json(T)["received"].as_u64().expect("received")
}

/// A 100% UDP drop on `target`, its traffic leaving through the sandbox's client namespace
/// (a container's namespace, were it a runtime's).
fn drop_all(sb: &Sandbox, target: &[&str]) -> Vec<String> {
    let netns = sb.netns_path(Place::Target).display().to_string();
    let mut args: Vec<String> = ["net", "drop", "--percent", "100", "--proto", "udp", "--for", "60s", "--json", "--netns", &netns].map(String::from).to_vec();
    args.extend(target.iter().map(|s| s.to_string()));
    args
}

#[test]
fn a_container_named_by_an_id_prefix_is_the_target_and_its_neighbour_is_not() {
    let sb = Sandbox::new();
    let (a, b) = (container_id(0xa1), container_id(0xb2));
    let in_a = sb.child_cgroup(&format!("machine.slice/libpod-{a}.scope"));
    let in_b = sb.child_cgroup(&format!("machine.slice/libpod-{b}.scope"));
    // conmon's scope carries the same ID and is not the container.
    sb.child_cgroup(&format!("machine.slice/libpod-conmon-{a}.scope"));
    let chaos = start_chaos(&drop_all(&sb, &["--container", &a[..12]]));
    let (got_a, got_b) = (udp_from(&sb, &in_a, 6401, 100), udp_from(&sb, &in_b, 6401, 100));
    let summary: Value = stop_chaos(chaos);
    assert_eq!((got_a, got_b), (0, 100), "the container lost every datagram, its neighbour none");
    assert_eq!(counter(&summary, 0, "dropped"), 100, "the kernel dropped exactly the container's: {summary}");
    assert_eq!(summary["rules"][0]["cgroup"], in_a.display().to_string(), "{summary}");
}

#[test]
fn every_runtime_layout_resolves_to_its_container() {
    let sb = Sandbox::new();
    let layouts = [
        ("podman, cgroupfs", "libpod_parent/libpod-{}"),
        ("podman, systemd", "machine.slice/libpod-{}.scope"),
        ("docker, cgroupfs", "docker/{}"),
        ("docker, systemd", "system.slice/docker-{}.scope"),
        ("containerd, systemd", "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-{}.scope"),
        ("containerd, cgroupfs", "kubepods/burstable/pod1b2c3d4e-5f60-7182-93a4-b5c6d7e8f902/{}"),
        ("cri-o, systemd", "kubepods.slice/kubepods-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f903.slice/crio-{}.scope"),
        ("cri-o, cgroupfs", "kubepods/besteffort/pod1b2c3d4e-5f60-7182-93a4-b5c6d7e8f904/crio-{}"),
    ];
    for (i, (what, layout)) in layouts.iter().enumerate() {
        let id = container_id(0x10 + i as u8);
        let dir = sb.child_cgroup(&layout.replace("{}", &id));
        let (code, out, err) = run_chaos(&["net", "drop", "--container", &id[..16], "--percent", "5", "--dry-run", "--json"]);
        assert_eq!(code, 0, "{what}: {err:?}");
        let plan: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: {e}: {out}"));
        assert_eq!(plan["faults"][0]["cgroup"], dir.display().to_string(), "{what}: {plan}");
    }
}

#[test]
fn a_pod_is_every_container_of_it_and_no_other_pods() {
    let sb = Sandbox::new();
    let uid = format!("{}-5f60-7182-93a4-b5c6d7e8f9aa", &container_id(0xc3)[..8]);
    let other = format!("{}-5f60-7182-93a4-b5c6d7e8f9bb", &container_id(0xd4)[..8]);
    let pod = |uid: &str, id: &str| format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope", uid.replace('-', "_"));
    let first = sb.child_cgroup(&pod(&uid, &container_id(0xe5)));
    let second = sb.child_cgroup(&pod(&uid, &container_id(0xe6)));
    let elsewhere = sb.child_cgroup(&pod(&other, &container_id(0xe7)));
    let chaos = start_chaos(&drop_all(&sb, &["--pod", &uid]));
    let got = [udp_from(&sb, &first, 6402, 50), udp_from(&sb, &second, 6402, 50), udp_from(&sb, &elsewhere, 6402, 50)];
    let summary = stop_chaos(chaos);
    assert_eq!(got, [0, 0, 50], "both containers of the pod lost every datagram; the other pod's none");
    assert_eq!(counter(&summary, 0, "dropped"), 100, "{summary}");
}

#[test]
fn an_ambiguous_or_unknown_container_is_refused_with_the_candidates() {
    let sb = Sandbox::new();
    let a = container_id(0xf1);
    let mut b = a.clone();
    b.replace_range(40.., &"f".repeat(24));
    sb.child_cgroup(&format!("docker/{a}"));
    sb.child_cgroup(&format!("docker/{b}"));
    let (code, _, err) = run_chaos(&["net", "drop", "--container", &a[..12], "--percent", "5", "--dry-run"]);
    assert_eq!(code, 2, "{err:?}");
    assert!(err.len() == 1 && err[0].contains("names 2 containers") && err[0].contains(&format!("docker {}", &a[..12])), "{err:?}");
    let (code, _, err) = run_chaos(&["net", "drop", "--container", "no-such-container", "--percent", "5", "--dry-run"]);
    assert_eq!(code, 2, "{err:?}");
    assert!(err.len() == 1 && err[0].starts_with("chaos: no container matches 'no-such-container'") && err[0].contains(&a[..12]), "{err:?}");
    let (code, _, err) = run_chaos(&["net", "drop", "--pod", "0f1e", "--percent", "5", "--dry-run"]);
    assert_eq!(code, 2, "{err:?}");
    assert!(err.len() == 1 && err[0].contains("is not a pod UID"), "{err:?}");
}
