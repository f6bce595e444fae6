//! The undo journal: each session's record of what it changed that does not die with its process,
//! written **before** each change, with what proves the change is the session's own. A session
//! undoes its changes at its end; its guardian undoes them when it is killed; every `chaos` start
//! and `chaos cleanup` undo those of dead sessions. Nothing that is not provably a session's is
//! ever touched.
//!
//! Records live in `/run/chaos` (tmpfs: the kernel forgets filters and qdiscs at reboot too), one
//! JSON file per session. The directory must be root's and writable by nobody else, and so must
//! each record: a record anyone else could have written is refused, never acted on.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::killpoint;
use crate::kernel::{MapIds, netdev::Netns, rtnl};

/// The directory of session records; `CHAOS_STATE_DIR` overrides it (tests).
pub fn state_dir() -> PathBuf {
    std::env::var_os("CHAOS_STATE_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/run/chaos"))
}

/// A network namespace as a record names it: its inode (what identifies it) and where it was
/// found (a path that may no longer lead to it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetnsRef {
    pub ino: u64,
    pub path: PathBuf,
}

/// A change a session made (or was about to make) that outlives its process.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A cls_bpf filter attached through netlink (kernels before 6.6), proved the session's by the
    /// id of the program it runs: the session's own program, loaded by it, recorded before
    /// attaching. A filter running any other program is never removed.
    TcFilter { netns: NetnsRef, ifindex: u32, ifname: String, parent: u32, prog_id: u32 },
    /// A clsact qdisc the session added for its filters. Removed only once no filter of anyone's
    /// is left on it (deleting a clsact deletes every filter under it).
    Clsact { netns: NetnsRef, ifindex: u32, ifname: String },
    /// An fq root qdisc the session put on a device in place of the kernel's default one (`replaced`
    /// names it), proved the session's by its handle, unique to the session; on a device with a
    /// queue per CPU (`replaced` mq), an mq of the session's with fq on each of its `queues`. Deleting
    /// it makes the kernel attach the default again, and drops what it holds: undoing waits first,
    /// up to `hold_ms` (fq's horizon, the longest it holds a packet), for it to send what it holds.
    RootFq {
        netns: NetnsRef,
        ifindex: u32,
        ifname: String,
        handle: u32,
        replaced: String,
        #[serde(default)]
        hold_ms: u64,
        #[serde(default)]
        queues: u32,
    },
    /// A target whose processes the session's `sys.delay` rules stop (SIGSTOP), each to be
    /// continued at its hold's end. Undoing it (the session died holding some) continues every
    /// stopped process of the cgroup and its descendants: a stop is not marked with who sent it,
    /// so one sent by someone else to a process of the target during the fault is undone too.
    Stopped { cgroup: PathBuf, cgroup_id: u64 },
    /// A target the session's `proc.pause` rules freeze (cgroup v2 `cgroup.freeze`). Undoing it
    /// thaws the cgroup; a freeze is not marked with who asked for it, so one someone else asked
    /// for during the fault is undone too.
    Frozen { cgroup: PathBuf, cgroup_id: u64 },
    /// A file the session created, marked with its id: a harmless change that exercises the
    /// journal and the guardian in tests (`CHAOS_TEST_FAKE_CHANGE`).
    TestFile { path: PathBuf, marker: String },
}

impl Change {
    pub fn describe(&self) -> String {
        match self {
            Change::TcFilter { ifname, prog_id, parent, .. } => {
                format!("TC filter (program {prog_id}) on {ifname}{}", if *parent == rtnl::CLSACT_INGRESS { " ingress" } else { "" })
            }
            Change::Clsact { ifname, .. } => format!("clsact qdisc on {ifname}"),
            Change::RootFq { ifname, handle, replaced, queues: 0, .. } => format!("fq qdisc {:x}: on {ifname} (in place of {replaced})", handle >> 16),
            Change::RootFq { ifname, handle, replaced, queues, .. } => {
                format!("mq qdisc {:x}: with fq on each of {queues} queues on {ifname} (in place of {replaced})", handle >> 16)
            }
            Change::Stopped { cgroup, .. } => format!("processes held in {}", cgroup.display()),
            Change::Frozen { cgroup, .. } => format!("frozen cgroup {}", cgroup.display()),
            Change::TestFile { path, .. } => format!("test file {}", path.display()),
        }
    }
}

/// What a session shows of one of its faults (for `chaos status`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FaultInfo {
    pub rule: u32,
    pub kind: String,
    pub description: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    /// The rule's window, CLOCK_MONOTONIC ns (0 until the session has started it).
    pub start_ns: u64,
    pub deadline_ns: u64,
}

/// One session's record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub pid: u32,
    /// The process start time (field 22 of /proc/PID/stat), to tell a reused pid from ours.
    pub start_time: u64,
    /// The session's maps, for `chaos status` and `chaos stop`.
    pub maps: MapIds,
    pub faults: Vec<FaultInfo>,
    /// The guardian process that undoes `changes` if this process is killed.
    pub guardian: Option<u32>,
    /// Changes not yet undone, in the order they were made (undone in reverse).
    pub changes: Vec<Change>,
}

/// A running process's start time, to tell it from a later process with the same pid. `None` for
/// no process, or one that has exited and not yet been reaped (a zombie holds no resources).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = procfs::process::Process::new(pid as i32).and_then(|p| p.stat()).ok()?;
    (!matches!(stat.state, 'Z' | 'X' | 'x')).then_some(stat.starttime)
}

impl Record {
    pub fn new(id: &str) -> Record {
        let pid = std::process::id();
        Record { id: id.to_string(), pid, start_time: start_time(pid).unwrap_or(0), ..Default::default() }
    }

    pub fn path_in(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("{id}.json"))
    }

    /// Writes the record (atomically: a crash mid-write leaves the old one), root-only.
    pub fn save(&self) -> anyhow::Result<()> {
        let dir = secure_dir()?;
        let tmp = dir.join(format!(".{}.tmp", self.id));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_data()?;
        fs::rename(&tmp, Record::path_in(&dir, &self.id))?;
        Ok(())
    }

    /// Removes the record of a session that ended with nothing left to undo.
    pub fn remove(&self) {
        let _ = fs::remove_file(Record::path_in(&state_dir(), &self.id));
    }

    /// Whether the process that owns this record is running (the same process, not a reused pid).
    pub fn owner_alive(&self) -> bool {
        start_time(self.pid).is_some_and(|t| t == self.start_time)
    }
}

/// The state directory, made if missing (root-only), and refused if anyone but root could write
/// it: records are acted on, so who can write them matters.
pub fn secure_dir() -> anyhow::Result<PathBuf> {
    let dir = state_dir();
    match fs::symlink_metadata(&dir) {
        Err(_) => {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(m) => trusted(&dir, &m, true)?,
    }
    Ok(dir)
}

/// Refuses a directory or file that is not root's, or that others can write, or a symlink.
fn trusted(path: &Path, m: &fs::Metadata, dir: bool) -> anyhow::Result<()> {
    if m.file_type().is_symlink() {
        bail!("{} is a symbolic link", path.display());
    }
    if dir != m.is_dir() {
        bail!("{} is not a {}", path.display(), if dir { "directory" } else { "regular file" });
    }
    if m.uid() != 0 {
        bail!("{} is owned by uid {}, not root", path.display(), m.uid());
    }
    if m.mode() & 0o022 != 0 {
        bail!("{} can be written by others (mode {:o})", path.display(), m.mode() & 0o7777);
    }
    Ok(())
}

/// Reads a record, refusing one that is not root-only (see the module doc).
pub fn read_record(path: &Path) -> anyhow::Result<Record> {
    let f = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).with_context(|| format!("opening {}", path.display()))?;
    trusted(path, &f.metadata()?, false)?;
    serde_json::from_reader(f).with_context(|| format!("reading {}", path.display()))
}

/// Every record in the state directory, or why the directory itself is refused. Unreadable or
/// untrusted records come back as errors, one each.
pub fn records() -> anyhow::Result<Vec<(PathBuf, anyhow::Result<Record>)>> {
    let dir = state_dir();
    let m = match fs::symlink_metadata(&dir) {
        Ok(m) => m,
        Err(_) => return Ok(Vec::new()),
    };
    trusted(&dir, &m, true).context("refusing the session records")?;
    let mut out = Vec::new();
    for e in fs::read_dir(&dir)?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let r = read_record(&p);
            out.push((p, r));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Finds the namespace a record names: by its recorded path if that still leads to the same
/// namespace, else by any process or bind mount that holds it. `None`: the namespace is gone, and
/// every device and filter in it with it.
pub fn find_netns(n: &NetnsRef) -> Option<Netns> {
    let same = |p: &Path| fs::metadata(p).is_ok_and(|m| m.ino() == n.ino);
    if same(&n.path) {
        return Netns::open(&n.path).ok();
    }
    let candidates = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain(fs::read_dir("/proc").into_iter().flatten().flatten().map(|e| e.path().join("ns/net")));
    candidates.into_iter().find(|p| same(p)).and_then(|p| Netns::open(&p).ok())
}

/// Undoes one change. `Ok(true)`: something was removed; `Ok(false)`: nothing of the session's
/// was there (already gone, or never made). Never touches what the change does not prove is ours.
pub fn undo(change: &Change) -> anyhow::Result<bool> {
    match change {
        Change::TcFilter { netns, ifindex, ifname, parent, prog_id } => {
            let Some(ns) = find_netns(netns) else { return Ok(false) };
            ns.run(|| -> anyhow::Result<bool> {
                if !same_device(*ifindex, ifname) {
                    return Ok(false);
                }
                let mut removed = false;
                for f in rtnl::filters(*ifindex, *parent)? {
                    if f.kind == "bpf" && f.bpf_prog_id == Some(*prog_id) {
                        rtnl::delete_filter(*ifindex, &f).with_context(|| format!("removing chaos's TC filter on {ifname}"))?;
                        removed = true;
                    }
                }
                Ok(removed)
            })?
        }
        Change::Clsact { netns, ifindex, ifname } => {
            let Some(ns) = find_netns(netns) else { return Ok(false) };
            ns.run(|| -> anyhow::Result<bool> {
                if !same_device(*ifindex, ifname) || !rtnl::has_qdisc(*ifindex, "clsact")? {
                    return Ok(false);
                }
                Ok(rtnl::remove_clsact_if_unused(*ifindex)?)
            })?
        }
        Change::RootFq { netns, ifindex, ifname, handle, hold_ms, .. } => {
            let Some(ns) = find_netns(netns) else { return Ok(false) };
            ns.run(|| -> anyhow::Result<bool> {
                if !same_device(*ifindex, ifname) {
                    return Ok(false);
                }
                super::qdisc::remove_fq(*ifindex, ifname, *handle, Duration::from_millis(*hold_ms))
                    .with_context(|| format!("restoring the default qdisc of {ifname}"))
            })?
        }
        Change::Frozen { cgroup, cgroup_id } => {
            if !fs::metadata(cgroup).is_ok_and(|m| m.ino() == *cgroup_id) {
                return Ok(false);
            }
            crate::target::set_frozen(cgroup, false).with_context(|| format!("thawing {}", cgroup.display()))
        }
        Change::Stopped { cgroup, cgroup_id } => {
            if !fs::metadata(cgroup).is_ok_and(|m| m.ino() == *cgroup_id) {
                return Ok(false);
            }
            let target = crate::target::Cgroup { path: cgroup.clone(), id: *cgroup_id };
            let mut continued = false;
            for pid in target.pids() {
                if stopped_or_stopping(pid) {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGCONT)
                        .with_context(|| format!("continuing process {pid}"))?;
                    continued = true;
                }
            }
            Ok(continued)
        }
        Change::TestFile { path, marker } => match fs::read_to_string(path) {
            Ok(text) if text.trim() == marker => {
                fs::remove_file(path)?;
                Ok(true)
            }
            Ok(_) => Err(anyhow!("{} does not hold this session's marker: left alone", path.display())),
            Err(_) => Ok(false),
        },
    }
}

/// Whether process `pid` is stopped (state `T`) or about to be: a SIGSTOP pending on any of its
/// threads, sent by a `sys.delay` program just before the session died and not yet acted on (a
/// process not yet run on a loaded machine, or one frozen). SIGCONT cancels a pending stop, so
/// both are continued. The pending signals are read before the state: a stop that lands between
/// the two reads is seen in the state.
fn stopped_or_stopping(pid: u32) -> bool {
    const SIGSTOP_BIT: u64 = 1 << (libc::SIGSTOP - 1);
    let Ok(process) = procfs::process::Process::new(pid as i32) else { return false };
    let pending = process.tasks().is_ok_and(|mut tasks| tasks.any(|t| t.and_then(|t| t.status()).is_ok_and(|s| (s.sigpnd | s.shdpnd) & SIGSTOP_BIT != 0)));
    pending || process.stat().is_ok_and(|s| s.state == 'T')
}

/// Waits for an fq the session put on a device to send what it holds (see
/// [`super::qdisc::wait_until_sent`]); anything else is left alone.
fn drain(change: &Change) {
    let Change::RootFq { netns, ifindex, ifname, handle, hold_ms, .. } = change else { return };
    let Some(ns) = find_netns(netns) else { return };
    let waited = ns.run(|| {
        if same_device(*ifindex, ifname) {
            super::qdisc::wait_until_sent(*ifindex, ifname, *handle, Duration::from_millis(*hold_ms))?;
        }
        Ok::<(), std::io::Error>(())
    });
    match waited {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("reading what fq holds on {ifname}: {e}"),
        Err(e) => log::warn!("entering the namespace of {ifname}: {e}"),
    }
}

/// Whether the device at `ifindex` in the current namespace is still the one the record names.
fn same_device(ifindex: u32, ifname: &str) -> bool {
    nix::net::if_::if_indextoname(ifindex).is_ok_and(|n| n.to_string_lossy() == ifname)
}

/// Undoes a dead session's changes, newest first, and removes its record once nothing is left.
/// Returns how many changes were undone and the errors of those that could not be.
pub fn undo_record(path: &Path, rec: &mut Record) -> (u32, Vec<String>) {
    let (mut undone, mut errors) = (0, Vec::new());
    let mut left = Vec::new();
    for c in rec.changes.iter().rev() {
        // The session's TC filters are gone by now (recorded after their clsact): let the fq on
        // that device send what it holds before the clsact goes, which would drop it.
        if let Change::Clsact { netns, ifindex, .. } = c {
            for fq in rec.changes.iter().filter(|f| matches!(f, Change::RootFq { netns: n, ifindex: i, .. } if n.ino == netns.ino && i == ifindex)) {
                drain(fq);
            }
        }
        match undo(c) {
            Ok(true) => undone += 1,
            Ok(false) => {}
            Err(e) => {
                errors.push(format!("{}: {e:#}", c.describe()));
                left.push(c.clone());
            }
        }
    }
    left.reverse();
    rec.changes = left;
    if rec.changes.is_empty() {
        let _ = fs::remove_file(path);
    } else if let Err(e) = rec.save() {
        errors.push(format!("saving {}: {e:#}", path.display()));
    }
    (undone, errors)
}

/// What a sweep did.
#[derive(Debug, Default, Serialize)]
pub struct Swept {
    /// Dead sessions whose records were handled.
    pub sessions: u32,
    /// Changes undone (filters removed, qdiscs restored, ...).
    pub undone: u32,
    /// Records refused (not root's, writable by others) or unreadable, and undo failures.
    pub refused: Vec<String>,
}

/// Undoes what dead sessions left and removes their records. Records of live sessions stay.
pub fn sweep() -> Swept {
    let mut swept = Swept::default();
    let all = match records() {
        Ok(all) => all,
        Err(e) => {
            swept.refused.push(format!("{e:#}"));
            return swept;
        }
    };
    for (path, rec) in all {
        let mut rec = match rec {
            Ok(r) => r,
            Err(e) => {
                swept.refused.push(format!("{e:#}"));
                continue;
            }
        };
        if rec.owner_alive() {
            continue;
        }
        swept.sessions += 1;
        let (undone, errors) = undo_record(&path, &mut rec);
        swept.undone += undone;
        swept.refused.extend(errors);
    }
    swept
}

/// The record of a live session other than `own_id` that lists a change `which` picks (a qdisc
/// it made, which another session may share or must leave alone).
pub fn live_owner(own_id: &str, which: impl Fn(&Change) -> bool) -> Option<Record> {
    records().ok()?.into_iter().filter_map(|(_, r)| r.ok()).find(|r| r.id != own_id && r.changes.iter().any(&which) && r.owner_alive())
}

/// A live session's journal: its record, saved before each change, and the guardian that undoes
/// the changes if the session's process is killed.
pub struct Journal {
    record: Record,
    guardian: Option<super::guardian::Guardian>,
    /// Called once the guardian runs, with its pid (the session exempts it from its faults).
    on_guardian: Option<Box<dyn FnMut(u32) + Send>>,
}

impl Journal {
    pub fn new(record: Record) -> Journal {
        Journal { record, guardian: None, on_guardian: None }
    }

    pub fn record(&self) -> &Record {
        &self.record
    }

    pub fn record_mut(&mut self) -> &mut Record {
        &mut self.record
    }

    pub fn on_guardian(&mut self, f: impl FnMut(u32) + Send + 'static) {
        self.on_guardian = Some(Box::new(f));
    }

    pub fn save(&self) -> anyhow::Result<()> {
        self.record.save()?;
        killpoint::step(|| "journal: saved".into());
        Ok(())
    }

    /// Records `change` before it is made: the guardian is started first, so a kill at any moment
    /// from here on leaves someone to undo it.
    pub fn before(&mut self, change: Change) -> anyhow::Result<()> {
        if self.guardian.is_none() {
            let g = super::guardian::Guardian::start(&self.record.id)?;
            self.record.guardian = Some(g.pid());
            if let Some(f) = self.on_guardian.as_mut() {
                f(g.pid());
            }
            self.guardian = Some(g);
            killpoint::step(|| "guardian started".into());
        }
        let what = change.describe();
        self.record.changes.push(change);
        self.record.save()?;
        killpoint::step(|| format!("journal: recorded {what}"));
        Ok(())
    }

    /// Forgets a change that was undone (or turned out not to be made).
    pub fn forget(&mut self, change: &Change) -> anyhow::Result<()> {
        if let Some(i) = self.record.changes.iter().rposition(|c| c == change) {
            self.record.changes.remove(i);
            self.record.save()?;
            killpoint::step(|| format!("journal: forgot {}", change.describe()));
        }
        Ok(())
    }

    pub fn changes(&self) -> &[Change] {
        &self.record.changes
    }

    /// At the session's end: the record goes if nothing is left to undo; otherwise it stays for
    /// the guardian (which acts when this process exits) and the next sweep.
    pub fn close(&mut self) {
        if self.record.changes.is_empty() {
            self.record.remove();
            killpoint::step(|| "journal: record removed".into());
        } else if let Err(e) = self.record.save() {
            log::warn!("saving the session record: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_through_json_with_their_kind() {
        let c = Change::TcFilter {
            netns: NetnsRef { ino: 4026531840, path: "/proc/1/ns/net".into() },
            ifindex: 2,
            ifname: "eth0".into(),
            parent: rtnl::CLSACT_EGRESS,
            prog_id: 77,
        };
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains("\"kind\":\"tc_filter\""), "{text}");
        assert_eq!(serde_json::from_str::<Change>(&text).unwrap(), c);
    }

    #[test]
    fn a_test_file_is_removed_only_with_its_marker() {
        let dir = std::env::temp_dir().join(format!("chaos-journal-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        fs::write(&path, "someone else's").unwrap();
        let c = Change::TestFile { path: path.clone(), marker: "session-1".into() };
        assert!(undo(&c).is_err(), "a file without the marker is not ours");
        assert!(path.exists());
        fs::write(&path, "session-1\n").unwrap();
        assert!(undo(&c).unwrap());
        assert!(!path.exists());
        assert!(!undo(&c).unwrap(), "already gone: nothing to do");
        fs::remove_dir_all(&dir).unwrap();
    }
}
