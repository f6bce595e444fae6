//! Targets whose cgroup directory was removed and made again under the same path while the session
//! runs: a restarted container (`podman restart` removes `libpod_parent/libpod-ID` and makes it
//! anew, same path, new inode). The kernel knows a target by its cgroup id, the directory's inode,
//! so the rules and the per-cgroup hooks would silently miss every process of the new directory.
//!
//! Each refresh compares every target's path with its id. A new directory is followed: its id gets
//! the old one's rules, and the per-cgroup hooks the old one had are attached to it (the device
//! programs find the new network namespace by the path's processes, as any new namespace). Each
//! change is one line on stderr and an entry of the summary's `targets_changed`; a directory that
//! is gone is reported once, and followed if it comes back.

use std::{os::unix::fs::MetadataExt, path::Path};

use serde::Serialize;

use super::{Session, journal::Change};
use crate::{
    error::{Error, Result},
    target::Cgroup,
};

/// Refreshes a target must be missing at before it is reported gone: a restart removes the
/// directory for a moment before making it again.
const GONE_AFTER: u32 = 2;

/// A test hook: with this set, following a recreated directory fails before anything is done, to
/// show that a target the session cannot follow is reported, not silently missed.
const FAIL_FOLLOW_ENV: &str = "CHAOS_TEST_FAIL_FOLLOW";

/// One change of a target's directory, as the summary reports it.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct TargetChange {
    pub cgroup: String,
    /// The cgroup id the session targeted until then.
    pub old_id: u64,
    /// The new directory's id; `None`: the directory is gone.
    pub new_id: Option<u64>,
    /// Whether the session now targets the new directory (its rules and per-cgroup hooks).
    pub followed: bool,
    /// Why the new directory is not targeted, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds into the session when it was noticed.
    pub at_s: f64,
}

/// What the session knows of its targets' directories.
#[derive(Debug, Default)]
pub struct Followed {
    /// Per target: refreshes in a row its directory was missing at (reported at `GONE_AFTER`).
    missing: Vec<u32>,
    /// Per target: a new directory the session failed to follow (not tried, nor reported, again).
    failed: Vec<Option<u64>>,
    pub changes: Vec<TargetChange>,
    started: Option<std::time::Instant>,
}

/// What a target's path holds now, against the id the session has for it.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Same,
    Missing,
    Recreated(u64),
}

fn look(path: &Path, id: u64) -> Seen {
    match std::fs::metadata(path) {
        Ok(m) if m.ino() == id => Seen::Same,
        Ok(m) if path.join("cgroup.procs").is_file() => Seen::Recreated(m.ino()),
        _ => Seen::Missing,
    }
}

impl Session {
    /// Notices targets whose directory was recreated or is gone (see the module's comment).
    pub(super) fn follow_targets(&mut self) {
        let started = *self.followed.started.get_or_insert_with(std::time::Instant::now);
        self.followed.missing.resize(self.plan.targets.len(), 0);
        self.followed.failed.resize(self.plan.targets.len(), None);
        for t in 0..self.plan.targets.len() {
            let Cgroup { path, id } = self.plan.targets[t].clone();
            match look(&path, id) {
                Seen::Same => self.followed.missing[t] = 0,
                Seen::Missing => {
                    self.followed.missing[t] += 1;
                    if self.followed.missing[t] == GONE_AFTER {
                        eprintln!("chaos: the target cgroup {} is gone (the container stopped?): chaos targets it again if it comes back", path.display());
                        self.followed.changes.push(TargetChange {
                            cgroup: path.display().to_string(),
                            old_id: id,
                            new_id: None,
                            followed: false,
                            error: None,
                            at_s: started.elapsed().as_secs_f64(),
                        });
                    }
                }
                Seen::Recreated(new) if self.followed.failed[t] == Some(new) => self.followed.missing[t] = 0,
                Seen::Recreated(new) => {
                    self.followed.missing[t] = 0;
                    let result = self.retarget(t, new);
                    if result.is_err() {
                        self.followed.failed[t] = Some(new);
                    }
                    match &result {
                        Ok(()) => eprintln!(
                            "chaos: the target cgroup {} was recreated (the container restarted?): its faults now apply to the new cgroup (id {new}, was {id})",
                            path.display()
                        ),
                        Err(e) => eprintln!(
                            "chaos: the target cgroup {} was recreated (the container restarted?): the faults may miss its new processes ({e}); start a new session",
                            path.display()
                        ),
                    }
                    self.followed.changes.push(TargetChange {
                        cgroup: path.display().to_string(),
                        old_id: id,
                        new_id: Some(new),
                        followed: result.is_ok(),
                        error: result.err().map(|e| e.to_string()),
                        at_s: started.elapsed().as_secs_f64(),
                    });
                }
            }
        }
    }

    /// Makes target `t`'s new directory, id `new`, the target in place of the old one: the
    /// journal's entries that name the old id get a twin naming the new one (a guardian then
    /// continues or thaws the new directory's processes too), the old id's rules are written for
    /// the new one (in the old one's place if the table is full), and the per-cgroup hooks the old
    /// directory had are attached to the new one.
    /// On failure the session keeps the old id, and the new directory may be missed in part (its
    /// rules written, a hook not attached).
    fn retarget(&mut self, t: usize, new: u64) -> Result<()> {
        if std::env::var_os(FAIL_FOLLOW_ENV).is_some() {
            return Err(Error::Other(anyhow::anyhow!("following failed on purpose ({FAIL_FOLLOW_ENV})")));
        }
        let old = self.plan.targets[t].clone();
        let fresh = Cgroup { path: old.path.clone(), id: new };
        let rules = self.kernel.target(old.id)?.ok_or_else(|| Error::Other(anyhow::anyhow!("cgroup id {} has no rules in the kernel", old.id)))?;
        for c in self.journal.changes().to_vec() {
            let twin = match c {
                Change::Stopped { cgroup, cgroup_id } if cgroup_id == old.id => Change::Stopped { cgroup, cgroup_id: new },
                Change::Frozen { cgroup, cgroup_id } if cgroup_id == old.id => Change::Frozen { cgroup, cgroup_id: new },
                _ => continue,
            };
            self.journal.before(twin).map_err(Error::Other)?;
        }
        // The old id keeps its rules for what it still has (a socket a process took elsewhere);
        // where the table is full (a session of MAX_TARGETS targets), the new one takes its place.
        if self.kernel.set_target(new, &rules).is_err() {
            self.kernel.remove_target(old.id)?;
            self.kernel.set_target(new, &rules)?;
        }
        for (hook, _) in self.plan.cgroup_at.clone().iter().filter(|(_, at)| *at == t) {
            self.attachments.attach_cgroup(&mut self.kernel, hook, &fresh)?;
        }
        // The programs may have cached the new directory as no target before its rules were written.
        self.kernel.forget_cached_targets()?;
        // A paused target stays paused: the new directory is frozen too.
        if self.pauses.iter().any(|p| p.target == t && p.frozen)
            && let Err(e) = crate::target::set_frozen(&fresh.path, true)
        {
            log::warn!("freezing {}: {e}", fresh.path.display());
        }
        for f in self.journal.record_mut().faults.iter_mut().filter(|f| f.cgroup_id == old.id) {
            f.cgroup_id = new;
        }
        if let Err(e) = self.journal.save() {
            log::warn!("writing the session record: {e:#}");
        }
        self.plan.targets[t] = fresh;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_the_same_recreated_or_missing() {
        let dir = std::env::temp_dir().join(format!("chaos-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ino = std::fs::metadata(&dir).unwrap().ino();
        assert_eq!(look(&dir, ino), Seen::Same);
        assert_eq!(look(&dir, ino + 1), Seen::Missing, "a directory that is no cgroup is not a new target");
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        assert_eq!(look(&dir, ino + 1), Seen::Recreated(ino));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(look(&dir, ino), Seen::Missing);
    }
}
