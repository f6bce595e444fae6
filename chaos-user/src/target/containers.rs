//! `--container ID|NAME` and `--pod UID`: a container's or a pod's cgroup, found by the names the
//! runtimes and the kubelet give their cgroup directories, under either cgroup driver:
//!
//! | runtime            | systemd driver                          | cgroupfs driver                     |
//! |--------------------|-----------------------------------------|-------------------------------------|
//! | podman             | `machine.slice/libpod-ID.scope`         | `libpod_parent/libpod-ID`           |
//! | Docker             | `system.slice/docker-ID.scope`          | `docker/ID`                         |
//! | containerd (CRI)   | `…/cri-containerd-ID.scope`             | `kubepods/…/podUID/ID`              |
//! | CRI-O              | `…/crio-ID.scope`                       | `kubepods/…/podUID/crio-ID`         |
//! | kubelet (pods)     | `kubepods.slice/kubepods-QOS.slice/kubepods-QOS-podUID.slice` (dashes of the UID as `_`) | `kubepods/QOS/podUID` |
//!
//! (the Guaranteed class has no QOS level). IDs are 64 hex digits; a unique prefix names one, as
//! with the runtimes' own CLIs. A name is asked of the runtime's CLI where one is installed
//! (`podman` or `docker` `inspect`). The tree is walked once, bounded in depth and size.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{error::Result, usage};

/// Directories looked at, at most: a node with thousands of containers has tens of thousands.
const MAX_DIRS: usize = 200_000;
/// Deepest level a runtime's directory sits at (kubepods.slice/…/pod/container is 4).
const MAX_DEPTH: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Podman,
    Docker,
    Containerd,
    CriO,
    /// A container directory of a pod under the cgroupfs driver: containerd's, by its plain name.
    Cri,
}

impl Runtime {
    fn name(self) -> &'static str {
        match self {
            Runtime::Podman => "podman",
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Cri => "cri",
        }
    }
}

/// A container's cgroup directory, as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub runtime: Runtime,
    pub id: String,
    pub path: PathBuf,
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The runtime and container ID a cgroup directory named `name`, under a directory named
/// `parent`, stands for; None for any other directory (conmon's `libpod-conmon-ID` included).
pub fn container_dir(parent: &str, name: &str) -> Option<(Runtime, String)> {
    let scope = name.strip_suffix(".scope");
    let tagged = |prefix: &str| -> Option<String> {
        let id = scope.unwrap_or(name).strip_prefix(prefix)?;
        is_id(id).then(|| id.to_string())
    };
    if let Some(id) = tagged("libpod-") {
        return Some((Runtime::Podman, id));
    }
    if let Some(id) = tagged("cri-containerd-") {
        return Some((Runtime::Containerd, id));
    }
    if let Some(id) = tagged("crio-") {
        return Some((Runtime::CriO, id));
    }
    if scope.is_some()
        && let Some(id) = tagged("docker-")
    {
        return Some((Runtime::Docker, id));
    }
    if is_id(name) {
        if parent == "docker" {
            return Some((Runtime::Docker, name.to_string()));
        }
        if pod_dir(parent).is_some() {
            return Some((Runtime::Cri, name.to_string()));
        }
    }
    None
}

/// The pod UID a kubelet cgroup directory stands for (`podUID`, `kubepods[-QOS]-podUID.slice`
/// with the UID's dashes as underscores), in its usual spelling with dashes.
pub fn pod_dir(name: &str) -> Option<String> {
    let uid = match name.strip_suffix(".slice") {
        Some(slice) => slice.strip_prefix("kubepods-")?.rsplit_once("pod").map(|(qos, uid)| (qos, uid.replace('_', "-")))
            .filter(|(qos, _)| qos.is_empty() || *qos == "besteffort-" || *qos == "burstable-")?.1,
        None => name.strip_prefix("pod")?.to_string(),
    };
    let ok = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') && uid.matches('-').count() == 4;
    ok.then(|| uid.to_ascii_lowercase())
}

/// Every directory under `top` (to `MAX_DEPTH`), with its parent's name.
fn walk(top: &Path, mut visit: impl FnMut(&str, &str, &Path)) {
    let mut stack = vec![(top.to_path_buf(), String::new(), 0usize)];
    let mut seen = 0;
    while let Some((dir, parent, depth)) = stack.pop() {
        seen += 1;
        if seen > MAX_DIRS {
            log::warn!("stopped looking for containers after {MAX_DIRS} cgroup directories");
            return;
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if depth > 0 {
            visit(&parent, &name, &dir);
        }
        if depth < MAX_DEPTH {
            let children = fs::read_dir(&dir).into_iter().flatten().flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir()));
            stack.extend(children.map(|e| (e.path(), name.clone(), depth + 1)));
        }
    }
}

/// Every container directory under `top`.
pub fn containers(top: &Path) -> Vec<Found> {
    let mut out = Vec::new();
    walk(top, |parent, name, path| {
        if let Some((runtime, id)) = container_dir(parent, name) {
            out.push(Found { runtime, id, path: path.to_path_buf() });
        }
    });
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

fn listing(found: &[Found]) -> String {
    let mut names: Vec<String> = found.iter().take(10).map(|f| format!("{} {}", f.runtime.name(), short(&f.id))).collect();
    if found.len() > 10 {
        names.push(format!("and {} more", found.len() - 10));
    }
    names.join(", ")
}

/// A name's ID, from the first runtime CLI installed that knows it.
fn id_by_name(name: &str) -> Option<String> {
    for cli in ["podman", "docker"] {
        let Ok(out) = Command::new(cli).args(["container", "inspect", "--format", "{{.Id}}", name]).output() else { continue };
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && is_id(&id) {
            return Some(id);
        }
    }
    None
}

/// `--container ID|NAME` under the cgroup2 mount `top`: the one container directory it names.
pub fn find_container(top: &Path, query: &str) -> Result<PathBuf> {
    let q = query.trim().to_ascii_lowercase();
    let all = containers(top);
    let hex = q.len() >= 4 && q.bytes().all(|b| b.is_ascii_hexdigit());
    let mut matching: Vec<&Found> = if hex { all.iter().filter(|f| f.id.starts_with(&q)).collect() } else { Vec::new() };
    if matching.is_empty()
        && let Some(id) = id_by_name(query)
    {
        matching = all.iter().filter(|f| f.id == id).collect();
        if matching.is_empty() {
            return Err(usage!("container {query} ({}) has no cgroup under {}: is it running?", short(&id), top.display()));
        }
    }
    match matching.as_slice() {
        [one] => Ok(one.path.clone()),
        [] if all.is_empty() => Err(usage!(
            "no container matches '{query}': no podman, Docker, containerd or CRI-O container has a cgroup under {} (give --cgroup or --pid instead)",
            top.display()
        )),
        [] => Err(usage!(
            "no container matches '{query}' (an ID, a unique prefix of one, or a name podman or docker knows); the containers here: {}",
            listing(&all)
        )),
        many => Err(usage!(
            "'{query}' names {} containers: {}; give more of the ID",
            many.len(),
            listing(&many.iter().map(|f| (*f).clone()).collect::<Vec<_>>())
        )),
    }
}

/// `--pod UID` under the cgroup2 mount `top`: the pod's directory (every container of it inside).
pub fn find_pod(top: &Path, uid: &str) -> Result<PathBuf> {
    if uid.contains('/') {
        return Err(usage!("{}", pod_by_name_hint(uid)));
    }
    let want = uid.trim().to_ascii_lowercase();
    if pod_dir(&format!("pod{want}")).is_none() {
        return Err(usage!(
            "'{uid}' is not a pod UID (36 characters such as 0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b); `kubectl get pod NAME -o jsonpath='{{.metadata.uid}}'` prints it"
        ));
    }
    let mut pods = Vec::new();
    walk(top, |_, name, path| {
        if pod_dir(name).as_deref() == Some(want.as_str()) {
            pods.push(path.to_path_buf());
        }
    });
    match pods.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(usage!("no pod with UID {want} has a cgroup under {} (the kubelet's kubepods tree): is it on this node?", top.display())),
        many => Err(usage!("pod {want} has {} cgroups: {}; give --cgroup", many.len(), many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))),
    }
}

/// What to do with `--pod NAMESPACE/NAME` where it reaches the cgroups unresolved: a fault's is
/// asked of the Kubernetes API first (kubernetes/pods.rs), an observation's is not.
fn pod_by_name_hint(pod: &str) -> String {
    let (ns, name) = pod.split_once('/').unwrap_or(("NAMESPACE", pod));
    format!(
        "'{pod}' names a pod by namespace and name, which faults look up through the Kubernetes API but an observation does not: give the pod's UID (`kubectl get pod -n {ns} {name} -o jsonpath='{{.metadata.uid}}'`)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f5c1d2e4b6a79880a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef";
    const UID: &str = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";

    #[test]
    fn every_runtime_layout_names_its_container() {
        let id = ID.to_string();
        assert_eq!(container_dir("machine.slice", &format!("libpod-{ID}.scope")), Some((Runtime::Podman, id.clone())));
        assert_eq!(container_dir("libpod_parent", &format!("libpod-{ID}")), Some((Runtime::Podman, id.clone())));
        assert_eq!(container_dir("system.slice", &format!("docker-{ID}.scope")), Some((Runtime::Docker, id.clone())));
        assert_eq!(container_dir("docker", ID), Some((Runtime::Docker, id.clone())));
        assert_eq!(container_dir("kubepods-burstable-pod0f1e.slice", &format!("cri-containerd-{ID}.scope")), Some((Runtime::Containerd, id.clone())));
        assert_eq!(container_dir("x", &format!("crio-{ID}.scope")), Some((Runtime::CriO, id.clone())));
        assert_eq!(container_dir(&format!("pod{UID}"), &format!("crio-{ID}")), Some((Runtime::CriO, id.clone())));
        assert_eq!(container_dir(&format!("pod{UID}"), ID), Some((Runtime::Cri, id.clone())));
    }

    #[test]
    fn other_directories_are_not_containers() {
        assert_eq!(container_dir("machine.slice", &format!("libpod-conmon-{ID}.scope")), None, "conmon is not the container");
        assert_eq!(container_dir("system.slice", "docker.service"), None);
        assert_eq!(container_dir("somewhere", ID), None, "a bare ID only under docker/ or a pod");
        assert_eq!(container_dir("system.slice", &format!("docker-{ID}")), None, "docker's systemd name is a scope");
        assert_eq!(container_dir("machine.slice", &format!("libpod-{}.scope", &ID[..63])), None, "IDs are 64 digits");
        assert_eq!(container_dir("machine.slice", &format!("libpod-{}.scope", ID.to_uppercase())), None);
    }

    #[test]
    fn kubelet_layouts_name_their_pod() {
        let under = UID.replace('-', "_");
        assert_eq!(pod_dir(&format!("pod{UID}")).as_deref(), Some(UID));
        assert_eq!(pod_dir(&format!("kubepods-burstable-pod{under}.slice")).as_deref(), Some(UID));
        assert_eq!(pod_dir(&format!("kubepods-besteffort-pod{under}.slice")).as_deref(), Some(UID));
        assert_eq!(pod_dir(&format!("kubepods-pod{under}.slice")).as_deref(), Some(UID), "Guaranteed: no QOS level");
        assert_eq!(pod_dir("kubepods-burstable.slice"), None);
        assert_eq!(pod_dir("kubepods.slice"), None);
        assert_eq!(pod_dir("podman.service"), None);
        assert_eq!(pod_dir(&format!("kubepods-other-pod{under}.slice")), None);
    }
}
