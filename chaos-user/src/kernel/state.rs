//! What outlives a killed `chaos`, written down when made and removed at the next start or by
//! `chaos cleanup`.
//!
//! cgroup links and tcx links are file-descriptor based: the kernel detaches them when the process
//! dies. A TC filter attached through netlink (kernels before 6.6) stays. Each run that makes one
//! records it in `/run/chaos/<pid>.json` (tmpfs: the kernel forgets the filters at reboot too).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::Link,
    tc::{SchedClassifierLink, TcAttachType, TcHandle},
};
use serde::{Deserialize, Serialize};

use super::netdev::Netns;

/// The directory of run records; `CHAOS_STATE_DIR` overrides it (tests).
pub fn state_dir() -> PathBuf {
    std::env::var_os("CHAOS_STATE_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/run/chaos"))
}

/// A netlink TC filter this run attached.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TcFilter {
    pub netns_path: PathBuf,
    pub netns_ino: u64,
    pub ifindex: u32,
    pub ifname: String,
    pub egress: bool,
    pub priority: u16,
    pub handle: u32,
    /// chaos added the device's clsact qdisc for this filter; it removes it again once no filter
    /// of anyone's is left on it.
    #[serde(default)]
    pub clsact_added: bool,
}

/// One run's record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub pid: u32,
    /// The process start time (field 22 of /proc/PID/stat), to tell a reused pid from ours.
    pub start_time: u64,
    pub filters: Vec<TcFilter>,
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

impl Record {
    pub fn for_self() -> Record {
        let pid = std::process::id();
        Record { pid, start_time: start_time(pid).unwrap_or(0), filters: Vec::new() }
    }

    fn path(dir: &Path, pid: u32) -> PathBuf {
        dir.join(format!("{pid}.json"))
    }

    /// Writes the record (atomically: a crash mid-write leaves the old one).
    pub fn save(&self) -> anyhow::Result<()> {
        let dir = state_dir();
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.tmp", self.pid));
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        fs::rename(&tmp, Record::path(&dir, self.pid))?;
        Ok(())
    }

    /// Removes the record of a run that ended cleanly.
    pub fn remove(&self) {
        let _ = fs::remove_file(Record::path(&state_dir(), self.pid));
    }

    fn owner_alive(&self) -> bool {
        start_time(self.pid).is_some_and(|t| t == self.start_time)
    }
}

/// Finds the namespace a record names: by its recorded path if that still leads to the same
/// namespace, else by looking for any process or bind mount that holds it.
fn find_netns(f: &TcFilter) -> Option<Netns> {
    let same = |p: &Path| fs::metadata(p).is_ok_and(|m| m.ino() == f.netns_ino);
    if same(&f.netns_path) {
        return Netns::open(&f.netns_path).ok();
    }
    let candidates = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain(fs::read_dir("/proc").into_iter().flatten().flatten().map(|e| e.path().join("ns/net")));
    candidates.into_iter().find(|p| same(p)).and_then(|p| Netns::open(&p).ok())
}

/// Detaches one recorded filter inside its namespace. `Ok(false)`: the namespace or the device is
/// gone, and the filter with it.
pub fn detach_filter(f: &TcFilter) -> anyhow::Result<bool> {
    let Some(ns) = find_netns(f) else { return Ok(false) };
    ns.run(|| {
        // The device must still be the one we attached to: same index, same name.
        let name = super::netdev::devices().into_iter().find(|(i, _)| *i == f.ifindex).map(|(_, n)| n);
        if name.as_deref() != Some(f.ifname.as_str()) {
            return Ok(false);
        }
        let kind = if f.egress { TcAttachType::Egress } else { TcAttachType::Ingress };
        let link = SchedClassifierLink::attached(&f.ifname, kind, f.priority, TcHandle::from(f.handle), None)?;
        link.detach().map_err(|e| anyhow::anyhow!("detaching TC filter on {} (prio {}): {e}", f.ifname, f.priority))?;
        if f.clsact_added {
            super::qdisc::remove_clsact_if_unused(f.ifindex)?;
        }
        Ok(true)
    })?
}

/// What a sweep did.
#[derive(Debug, Default, Serialize)]
pub struct Swept {
    pub runs: u32,
    pub filters_removed: u32,
}

/// Removes what dead runs left: their filters, then their records. Records of live runs stay.
pub fn sweep() -> Swept {
    let mut swept = Swept::default();
    let Ok(entries) = fs::read_dir(state_dir()) else { return swept };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(rec) = fs::read(&p).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok()) else {
            log::warn!("ignoring unreadable run record {}", p.display());
            continue;
        };
        if rec.owner_alive() {
            continue;
        }
        swept.runs += 1;
        for f in &rec.filters {
            match detach_filter(f) {
                Ok(true) => swept.filters_removed += 1,
                Ok(false) => {}
                Err(e) => log::warn!("{e:#}"),
            }
        }
        let _ = fs::remove_file(&p);
    }
    swept
}
