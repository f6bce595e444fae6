//! The target of a fault: one cgroup v2 directory, found from a path or a process.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::{error::Result, unsupported, usage};

/// A resolved cgroup v2 directory.
#[derive(Clone, Debug)]
pub struct Cgroup {
    /// Absolute path of the directory.
    pub path: PathBuf,
    /// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`): the directory's inode.
    pub id: u64,
}

/// Where the cgroup2 hierarchy is mounted, read from /proc/self/mountinfo (never assumed:
/// hybrid systems mount it at /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| unsupported!("cannot read /proc/self/mountinfo ({e}): is /proc mounted?"))?;
    mount_from_mountinfo(&info)
        .ok_or_else(|| unsupported!("no cgroup2 hierarchy is mounted: mount one with `mount -t cgroup2 none /sys/fs/cgroup`"))
}

/// The mount point of the first cgroup2 entry of a mountinfo text.
pub fn mount_from_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        // Fields: id parent major:minor root mountpoint options [optional...] - fstype source ...
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo escapes spaces and a few other characters as \ooo.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Cgroup {
    /// `--cgroup PATH`: absolute under the cgroup2 mount, or relative to it (a leading `/` that
    /// is not under the mount is read as relative, as `/system.slice/x.service` usually is).
    pub fn from_arg(arg: &Path) -> Result<Cgroup> {
        let mount = cgroup2_mount()?;
        let path = if arg.starts_with(&mount) {
            arg.to_path_buf()
        } else {
            mount.join(arg.strip_prefix("/").unwrap_or(arg))
        };
        Cgroup::at(&mount, path)
    }

    /// `--pid PID`: the cgroup v2 directory the process is in.
    pub fn of_pid(pid: u32) -> Result<Cgroup> {
        let mount = cgroup2_mount()?;
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|_| usage!("no process with pid {pid}: give the pid of a running process"))?;
        let rel = cgroup2_path_of(&text)
            .ok_or_else(|| unsupported!("process {pid} has no cgroup v2 membership (/proc/{pid}/cgroup has no 0:: line)"))?;
        Cgroup::at(&mount, mount.join(rel.trim_start_matches('/')))
    }

    fn at(mount: &Path, path: PathBuf) -> Result<Cgroup> {
        let path = path.canonicalize().unwrap_or(path);
        if !path.join("cgroup.procs").is_file() {
            return Err(usage!(
                "no cgroup v2 directory at {} (the cgroup2 hierarchy is mounted at {}): give an existing cgroup",
                path.display(),
                mount.display()
            ));
        }
        if path == mount.canonicalize().unwrap_or(mount.to_path_buf()) {
            return Err(usage!(
                "refusing to target the root cgroup (every process on the machine): give a container's or service's cgroup"
            ));
        }
        let id = fs::metadata(&path).map_err(|e| usage!("cannot stat {}: {e}", path.display()))?.ino();
        Ok(Cgroup { path, id })
    }

    /// Pids of the processes in this cgroup and all its descendants.
    pub fn pids(&self) -> Vec<u32> {
        fn walk(dir: &Path, out: &mut Vec<u32>) {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(entries) = fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&e.path(), out);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path, &mut out);
        out
    }
}

/// The path of the `0::` line of a /proc/PID/cgroup text.
pub fn cgroup2_path_of(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn finds_the_cgroup2_mount_on_a_hybrid_system() {
        assert_eq!(mount_from_mountinfo(HYBRID), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(mount_from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn unescapes_spaces_in_mount_points() {
        let info = "34 33 0:29 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(mount_from_mountinfo(info), Some(PathBuf::from("/mnt/my cgroups")));
    }

    #[test]
    fn reads_the_v2_line_of_proc_cgroup() {
        let text = "12:memory:/user.slice\n0::/user.slice/session-1.scope\n";
        assert_eq!(cgroup2_path_of(text), Some("/user.slice/session-1.scope"));
        assert_eq!(cgroup2_path_of("12:memory:/x\n"), None);
    }
}
