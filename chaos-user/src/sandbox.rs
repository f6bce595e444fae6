//! Throwaway cgroups and processes placed in a cgroup and a network namespace before they run,
//! for the demo and the tests.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use crate::target::cgroup2_mount;

/// A cgroup made for one run, removed (its processes killed first) when dropped.
pub struct TempCgroup {
    pub path: PathBuf,
}

impl TempCgroup {
    /// Makes `<cgroup2 mount>/<name>`.
    pub fn new(name: &str) -> anyhow::Result<TempCgroup> {
        let path = cgroup2_mount()?.mount_point.join(name);
        std::fs::create_dir(&path).map_err(|e| anyhow::anyhow!("creating cgroup {}: {e}", path.display()))?;
        Ok(TempCgroup { path })
    }

    pub fn kill_all(&self) {
        // cgroup.kill (5.14+) kills every member at once; otherwise signal them one by one.
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_err() {
            for pid in std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill(2) with a pid read from the cgroup; no memory is involved.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

impl Drop for TempCgroup {
    fn drop(&mut self) {
        self.kill_all();
        remove_tree(&self.path);
    }
}

/// Removes a cgroup and its descendants, deepest first. Members take a moment to leave after
/// SIGKILL, and rmdir fails with EBUSY until they have; retried for a bounded time.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    // The killed members may take a moment to leave (exiting under load).
    let start = Instant::now();
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(_) if !dir.exists() => return,
            Err(e) if start.elapsed() > Duration::from_secs(15) => {
                let members = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
                log::warn!("cannot remove cgroup {}: {e} (members: [{members}])", dir.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Spawns `cmd` already inside `cgroup` and network namespace `netns` (each optional), so its
/// very first socket belongs to them.
pub fn spawn_in(cmd: &mut Command, cgroup: Option<&Path>, netns: Option<&Path>) -> io::Result<Child> {
    spawn_in_as(cmd, cgroup, netns, None)
}

/// [`spawn_in`], and then running as user and group `uid` (after entering, which needs root).
pub fn spawn_in_as(cmd: &mut Command, cgroup: Option<&Path>, netns: Option<&Path>, uid: Option<u32>) -> io::Result<Child> {
    let procs = cgroup.map(|c| OpenOptions::new().write(true).open(c.join("cgroup.procs"))).transpose()?;
    let ns = netns.map(File::open).transpose()?;
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    let ns_fd = ns.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: the closure runs in the child between fork and exec, so it may only make
    // async-signal-safe calls: setns(2) and write(2) on descriptors opened above, and the
    // set*id(2) calls, nothing that allocates or locks. Writing "0" to cgroup.procs moves the
    // writing process itself.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = ns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = procs_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(id) = uid
                && (libc::setgroups(0, std::ptr::null()) != 0 || libc::setresgid(id, id, id) != 0 || libc::setresuid(id, id, id) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop((procs, ns));
    child
}
