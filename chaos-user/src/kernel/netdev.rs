//! Network namespaces and devices: where the egress TC program must sit.
//!
//! `skb->mark` is cleared when a packet crosses into another namespace, so the program that steals
//! marked packets sits on the devices of the namespace the target's sockets live in: for a
//! container, its own namespace. Attaching there means entering it: `setns` on a short-lived
//! thread, so the rest of the process never changes namespace.

use std::{
    collections::BTreeSet,
    fs::File,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, anyhow};
use nix::sched::{CloneFlags, setns};

use crate::target::Cgroup;

/// An open handle on a network namespace. Holding it keeps the namespace (and so our filters'
/// devices) reachable for detaching, however the processes in it come and go.
#[derive(Debug)]
pub struct Netns {
    pub file: File,
    pub ino: u64,
    /// Where it was found (for the cleanup record).
    pub path: PathBuf,
}

impl Netns {
    pub fn open(path: &Path) -> anyhow::Result<Netns> {
        let file = File::open(path).with_context(|| format!("opening network namespace {}", path.display()))?;
        let ino = file.metadata()?.ino();
        Ok(Netns { file, ino, path: path.to_path_buf() })
    }

    /// Runs `f` on a thread inside this namespace and returns its result.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| anyhow!("entering network namespace {}: {e}", self.path.display()))?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("a thread inside network namespace {} panicked", self.path.display()))?
        })
    }
}

/// The inode of this process's own network namespace.
pub fn own_netns_ino() -> u64 {
    std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0)
}

/// The network namespaces the processes of `cg` live in, one path per namespace.
pub fn netns_of(cg: &Cgroup) -> Vec<(u64, PathBuf)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for pid in cg.pids() {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if let Ok(m) = std::fs::metadata(&path)
            && seen.insert(m.ino())
        {
            out.push((m.ino(), path));
        }
    }
    out
}

/// Every device of the current thread's network namespace: (ifindex, name).
pub fn devices() -> Vec<(u32, String)> {
    match nix::net::if_::if_nameindex() {
        Ok(list) => list.iter().map(|i| (i.index(), i.name().to_string_lossy().into_owned())).collect(),
        Err(e) => {
            log::warn!("listing network devices: {e}");
            Vec::new()
        }
    }
}
