//! The target of a fault: one cgroup v2 directory, found from a path or a process, and known to the
//! kernel by its id.
//!
//! Paths are only how a person names a cgroup. /proc/PID/cgroup gives a path relative to the root
//! of the reader's cgroup namespace, and a cgroup2 mount may show only a subtree (a bind mount, or
//! a mount made inside a cgroup namespace: mountinfo's `root` field says which). The kernel
//! programs never use paths or levels: they match cgroup ids, which are global.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

pub mod containers;

use procfs::process::Process;

use crate::{error::Result, unsupported, usage};

/// The id of the root cgroup of the cgroup2 hierarchy (the inode of its directory).
const ROOT_CGROUP_ID: u64 = 1;

/// A target as the user named it.
#[derive(Clone, Copy, Debug)]
pub enum Named<'a> {
    Cgroup(&'a Path),
    Pid(u32),
    Container(&'a str),
    Pod(&'a str),
}

impl<'a> Named<'a> {
    /// The one of the four options clap let through (they form a required group of one).
    pub fn from_options(cgroup: Option<&'a Path>, pid: Option<u32>, container: Option<&'a str>, pod: Option<&'a str>) -> Result<Named<'a>> {
        match (cgroup, pid, container, pod) {
            (Some(p), ..) => Ok(Named::Cgroup(p)),
            (_, Some(pid), ..) => Ok(Named::Pid(pid)),
            (_, _, Some(c), _) => Ok(Named::Container(c)),
            (.., Some(uid)) => Ok(Named::Pod(uid)),
            _ => Err(usage!("give a target: --cgroup PATH, --pid PID, --container ID|NAME or --pod UID")),
        }
    }
}

/// A resolved cgroup v2 directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// Absolute path of the directory, under this process's cgroup2 mount.
    pub path: PathBuf,
    /// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`): the directory's inode.
    pub id: u64,
}

/// Where this process sees the cgroup2 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup2Mount {
    pub mount_point: PathBuf,
    /// The cgroup the mount shows at `mount_point`, as a path in this process's cgroup namespace
    /// (mountinfo's `root` field): "/" for a whole hierarchy, "/a/b" for a bind-mounted subtree,
    /// "/.." for a mount made outside the namespace.
    pub root: String,
}

/// The first cgroup2 mount of /proc/self/mountinfo (never assumed: hybrid systems mount it at
/// /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Result<Cgroup2Mount> {
    let mounts = Process::myself()
        .and_then(|p| p.mountinfo())
        .map_err(|e| unsupported!("cannot read /proc/self/mountinfo ({e}): is /proc mounted?"))?;
    mounts
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| Cgroup2Mount { mount_point: m.mount_point, root: unescape_octal(&m.root) })
        .ok_or_else(|| unsupported!("no cgroup2 hierarchy is mounted: mount one with `mount -t cgroup2 none /sys/fs/cgroup`"))
}

/// mountinfo escapes spaces and a few other characters as \ooo.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0').wrapping_mul(64).wrapping_add((b[i + 2] - b'0') * 8).wrapping_add(b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The normal components of a cgroup path ("/a/../b" → ["b"]; ".." above the top is kept as "..").
fn components(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            Component::ParentDir if out.last().is_some_and(|l| l != "..") => {
                out.pop();
            }
            Component::ParentDir => out.push("..".into()),
            _ => {}
        }
    }
    out
}

impl Cgroup2Mount {
    /// The directory under this mount of the cgroup that /proc/PID/cgroup names `proc_path`, or
    /// `None` when the mount does not show that cgroup.
    pub fn local_path(&self, proc_path: &str) -> Option<PathBuf> {
        let (root, path) = (components(&self.root), components(proc_path));
        let rest = path.strip_prefix(root.as_slice())?;
        if rest.iter().any(|c| c == "..") {
            return None;
        }
        Some(rest.iter().fold(self.mount_point.clone(), |p, c| p.join(c)))
    }
}

impl Cgroup {
    /// `--cgroup PATH`: absolute under the cgroup2 mount, or relative to it (a leading `/` that
    /// is not under the mount is read as relative, as `/system.slice/x.service` usually is).
    pub fn from_arg(arg: &Path) -> Result<Cgroup> {
        let mount = cgroup2_mount()?;
        let path = if arg.starts_with(&mount.mount_point) {
            arg.to_path_buf()
        } else {
            mount.mount_point.join(arg.strip_prefix("/").unwrap_or(arg))
        };
        Cgroup::at(&mount, path)
    }

    /// `--cgroup PATH`, `--pid PID`, `--container ID|NAME` or `--pod UID`, whichever was given.
    pub fn of_target(t: Named) -> Result<Cgroup> {
        match t {
            Named::Cgroup(p) => Cgroup::from_arg(p),
            Named::Pid(pid) => Cgroup::of_pid(pid),
            Named::Container(q) => {
                let mount = cgroup2_mount()?;
                let path = containers::find_container(&mount.mount_point, q)?;
                Cgroup::at(&mount, path)
            }
            Named::Pod(uid) => {
                let mount = cgroup2_mount()?;
                let path = containers::find_pod(&mount.mount_point, uid)?;
                Cgroup::at(&mount, path)
            }
        }
    }

    /// `--pid PID`: the cgroup v2 directory the process is in.
    pub fn of_pid(pid: u32) -> Result<Cgroup> {
        let mount = cgroup2_mount()?;
        let proc_path = cgroup2_path_of(pid).ok_or_else(|| usage!("no process with pid {pid}: give the pid of a running process"))??;
        // A path that climbs out of this process's cgroup namespace ("/../t") cannot be mapped from
        // the strings; the directory whose cgroup.procs lists the process can be found.
        let local = mount.local_path(&proc_path).or_else(|| find_member(&mount.mount_point, pid)).ok_or_else(|| {
            unsupported!(
                "process {pid} is in cgroup {proc_path}, which the cgroup2 mount at {} (showing {}) does not contain: mount the whole hierarchy",
                mount.mount_point.display(),
                mount.root
            )
        })?;
        Cgroup::at(&mount, local)
    }

    /// The cgroup this process is in, if the cgroup2 mount shows it.
    pub fn own() -> Option<Cgroup> {
        let mount = cgroup2_mount().ok()?;
        let proc_path = cgroup2_path_of(std::process::id())?.ok()?;
        let path = mount.local_path(&proc_path)?;
        let id = fs::metadata(&path).ok()?.ino();
        Some(Cgroup { path, id })
    }

    fn at(mount: &Cgroup2Mount, path: PathBuf) -> Result<Cgroup> {
        let path = path.canonicalize().unwrap_or(path);
        if !path.join("cgroup.procs").is_file() {
            return Err(usage!(
                "no cgroup v2 directory at {} (the cgroup2 hierarchy is mounted at {}): give an existing cgroup",
                path.display(),
                mount.mount_point.display()
            ));
        }
        let id = fs::metadata(&path).map_err(|e| usage!("cannot stat {}: {e}", path.display()))?.ino();
        if id == ROOT_CGROUP_ID {
            return Err(usage!(
                "refusing to target the root cgroup (every process on the machine): give a container's or service's cgroup"
            ));
        }
        Ok(Cgroup { path, id })
    }

    /// Whether `other` is this cgroup or one of its descendants, by ids: walks up from `other`'s
    /// directory comparing inodes (the directories of one mount, so no path spelling matters).
    pub fn contains(&self, other: &Cgroup) -> bool {
        let mut dir = Some(other.path.as_path());
        while let Some(d) = dir {
            match fs::metadata(d) {
                Ok(m) if m.ino() == self.id && d.join("cgroup.procs").is_file() => return true,
                Ok(_) if d.join("cgroup.procs").is_file() => dir = d.parent(),
                _ => return false,
            }
        }
        false
    }

    /// Pids of the processes in this cgroup and all its descendants.
    pub fn pids(&self) -> Vec<u32> {
        fn walk(dir: &Path, out: &mut Vec<u32>, depth: u32) {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if depth >= 64 {
                return;
            }
            if let Ok(entries) = fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&e.path(), out, depth + 1);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path, &mut out, 0);
        out
    }
}

/// Freezes or thaws cgroup `dir` (cgroup v2 `cgroup.freeze`, Linux 5.2+); true if that changed
/// it. The kernel freezes the processes in the background: `cgroup.events` says `frozen 1` once
/// every one is, which is waited for here (bounded: a process in uninterruptible sleep freezes
/// when it wakes).
pub fn set_frozen(dir: &Path, frozen: bool) -> std::io::Result<bool> {
    let file = dir.join("cgroup.freeze");
    let want = if frozen { "1" } else { "0" };
    if fs::read_to_string(&file)?.trim() == want {
        return Ok(false);
    }
    fs::write(&file, want)?;
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while std::time::Instant::now() < give_up {
        let events = fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        if events.lines().any(|l| l == format!("frozen {want}")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(true)
}

/// The cgroup directory under `top` whose members include `pid` (bounded search).
fn find_member(top: &Path, pid: u32) -> Option<PathBuf> {
    let mut stack = vec![top.to_path_buf()];
    let mut visited = 0;
    while let Some(dir) = stack.pop() {
        visited += 1;
        if visited > 200_000 {
            return None;
        }
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.lines().any(|l| l.trim().parse() == Ok(pid)) {
            return Some(dir);
        }
        stack.extend(fs::read_dir(&dir).into_iter().flatten().flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    None
}

/// The cgroup v2 path of process `pid`, relative to this process's cgroup namespace root.
/// `None`: no such process. `Some(Err)`: the process has no cgroup v2 membership.
fn cgroup2_path_of(pid: u32) -> Option<Result<String>> {
    let cgroups = Process::new(pid as i32).and_then(|p| p.cgroups()).ok()?;
    Some(
        cgroups
            .into_iter()
            .find(|c| c.hierarchy == 0)
            .map(|c| c.pathname)
            .ok_or_else(|| unsupported!("process {pid} has no cgroup v2 membership (/proc/{pid}/cgroup has no 0:: line)")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(root: &str) -> Cgroup2Mount {
        Cgroup2Mount { mount_point: "/sys/fs/cgroup/unified".into(), root: root.into() }
    }

    #[test]
    fn a_whole_hierarchy_maps_every_path() {
        let m = mount("/");
        assert_eq!(m.local_path("/user.slice/s-1.scope"), Some("/sys/fs/cgroup/unified/user.slice/s-1.scope".into()));
        assert_eq!(m.local_path("/"), Some("/sys/fs/cgroup/unified".into()));
    }

    #[test]
    fn a_bind_mounted_subtree_shows_only_its_descendants() {
        let m = mount("/chaos-test-1");
        assert_eq!(m.local_path("/chaos-test-1/inner/x"), Some("/sys/fs/cgroup/unified/inner/x".into()));
        assert_eq!(m.local_path("/chaos-test-1"), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(m.local_path("/chaos-test-10"), None, "a sibling with a common prefix is not inside");
        assert_eq!(m.local_path("/other"), None);
    }

    #[test]
    fn inside_a_cgroup_namespace_only_paths_below_the_mount_root_map() {
        // A mount made inside the namespace shows the namespace root: paths below it map.
        let m = mount("/");
        assert_eq!(m.local_path("/t/u"), Some("/sys/fs/cgroup/unified/t/u".into()));
        // A mount made outside, seen from inside `unshare --cgroup` in /a/ns, shows its root as
        // "/../..", and a process in /a/t as "/../t": the names between are not in the strings,
        // so the path cannot be mapped (`Cgroup::of_pid` then finds the process's directory).
        let m = mount("/../..");
        assert_eq!(m.local_path("/../t"), None);
        assert_eq!(m.local_path("/../../x"), Some("/sys/fs/cgroup/unified/x".into()));
    }

    #[test]
    fn components_fold_dotdot() {
        assert_eq!(components("/a/../b"), vec!["b"]);
        assert_eq!(components("/../t"), vec!["..", "t"]);
        assert_eq!(components("/../.."), vec!["..", ".."]);
        assert_eq!(components("/"), Vec::<String>::new());
    }

    #[test]
    fn unescapes_spaces_in_mount_fields() {
        assert_eq!(unescape_octal("/my\\040cgroups"), "/my cgroups");
        assert_eq!(unescape_octal("/plain"), "/plain");
        assert_eq!(unescape_octal("/trailing\\04"), "/trailing\\04");
    }
}
