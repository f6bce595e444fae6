//! The guardian: a small process that undoes a session's journaled changes when the session's
//! process dies, SIGKILL included, without waiting for another `chaos` command.
//!
//! The session starts it before its first journaled change, with the read end of a pipe as its
//! stdin; the session holds the write end and never writes. When the session's process ends, the
//! kernel closes the write end and the guardian's read returns end-of-file: then it undoes what the
//! session's record still lists (nothing, after a clean end) and exits. One mechanism for every
//! change that outlives a process: a TC filter, a qdisc, later a stopped process or a made cgroup.
//!
//! A session whose process is stopped (SIGSTOP, a debugger) past its faults' end cannot end what
//! only user space ends; the guardian does it meanwhile: it continues the processes the session's
//! `sys delay` rules hold and puts back the default qdisc where the session put fq.

use std::{
    io::Read,
    os::fd::AsFd,
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::journal::{Change, Record, read_record, state_dir, undo, undo_record};
use crate::kernel::{SessionMaps, monotonic_ns};

/// A running guardian. Dropping it keeps it running: it ends by itself when this process does.
pub struct Guardian {
    child: Child,
}

impl Guardian {
    /// Starts `chaos guardian --session ID` watching this process.
    pub fn start(session: &str) -> anyhow::Result<Guardian> {
        let exe = std::env::current_exe().context("finding the chaos executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(["guardian", "--session", session]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit());
        cmd.env_remove(super::killpoint::KILL_AT_ENV);
        // SAFETY: setsid(2) is async-signal-safe and touches no memory: the guardian leaves the
        // terminal's process group, so a Ctrl-C meant for the session does not kill it.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting the guardian")?;
        Ok(Guardian { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        // The write end of its stdin closes with this process; dropping the handle early would
        // close it now and wake the guardian while the session still runs. Keep it open.
        if let Some(stdin) = self.child.stdin.take() {
            std::mem::forget(stdin);
        }
    }
}

/// How long past its faults' end a stopped session may hold processes, or keep fq in place,
/// before the guardian ends them.
const FROZEN_GRACE: Duration = Duration::from_secs(1);

/// `chaos guardian --session ID`: waits for end-of-file on stdin (the session's process is gone),
/// then undoes what the session's record still lists. Meanwhile, once the session's faults have
/// ended, if the session itself is stopped (SIGSTOP, a debugger) it ends what only user space
/// ends ([`end_if_frozen`]): a held process waits for nobody, and a device gets its qdisc back.
pub fn run(session: &str) -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGHUP, libc::SIGTERM, libc::SIGPIPE] {
        // SAFETY: sets a signal's disposition to ignore; no handler code runs.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let path = Record::path_in(&state_dir(), session);
    let mut buf = [0u8; 64];
    let mut restored = Vec::new();
    // Nothing is ever written; read returns 0 at end-of-file. Errors other than EINTR end the wait.
    loop {
        let stdin = std::io::stdin();
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(0) => {
                end_if_frozen(&path, &mut restored);
                continue;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            _ => {}
        }
        match stdin.lock().read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let mut rec = match read_record(&path) {
        Ok(r) => r,
        // Gone: the session ended cleanly and undid everything itself.
        Err(_) if !path.exists() => return Ok(()),
        Err(e) => return Err(e),
    };
    // The session's stdin pipe closes as its process exits; give the kernel a moment to finish
    // tearing it down (its fd-based links go with it) before acting.
    let end = Instant::now() + Duration::from_secs(2);
    while rec.owner_alive() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    if rec.owner_alive() {
        anyhow::bail!("session {session}'s process {} still runs; leaving its changes to it", rec.pid);
    }
    let (undone, errors) = undo_record(&path, &mut rec);
    if undone > 0 {
        eprintln!("chaos guardian: session {session} ended without cleaning up; undid {undone} change(s)");
    }
    for e in &errors {
        eprintln!("chaos guardian: {e}");
    }
    Ok(())
}

/// For a session stopped past its faults' end (the kernel's windows, which `chaos stop` may have
/// shortened, else the record's), plus a grace: continues what its `sys.delay` rules hold (at
/// every poll: a stop is never undone for good while the session may stop again) and deletes each
/// fq qdisc it put on a device, once (`restored`), so the kernel attaches the default again: fq
/// would go on holding the device's packets to departure times nobody sets any more, with
/// limits and a horizon of its own. Nothing of the record changes: the session, continued, or the
/// guardian after its death, undoes the same changes again and finds nothing of its own (an fq
/// is known by the handle unique to the session).
fn end_if_frozen(path: &std::path::Path, restored: &mut Vec<Change>) {
    let Ok(rec) = read_record(path) else { return };
    let left: Vec<&Change> = rec
        .changes
        .iter()
        .filter(|c| match c {
            Change::Stopped { .. } | Change::Frozen { .. } => true,
            Change::RootFq { .. } => !restored.contains(c),
            _ => false,
        })
        .collect();
    if left.is_empty() {
        return;
    }
    let stopped = procfs::process::Process::new(rec.pid as i32).and_then(|p| p.stat()).is_ok_and(|s| s.state == 'T' || s.state == 't');
    if !stopped || !rec.owner_alive() {
        return;
    }
    let ended = faults_end(&rec);
    if ended == 0 || monotonic_ns() < ended.saturating_add(FROZEN_GRACE.as_nanos() as u64) {
        return;
    }
    for c in left {
        match undo(c) {
            Ok(true) if matches!(c, Change::RootFq { .. }) => {
                eprintln!("chaos guardian: session {} is stopped past its faults' end; put back the default qdisc in place of the {}", rec.id, c.describe())
            }
            Ok(true) if matches!(c, Change::Frozen { .. }) => {
                eprintln!("chaos guardian: session {} is stopped past its faults' end; thawed the {}", rec.id, c.describe())
            }
            Ok(true) => eprintln!("chaos guardian: session {} is stopped past its faults' end; continued the {}", rec.id, c.describe()),
            Ok(false) => {}
            Err(e) => {
                eprintln!("chaos guardian: {e:#}");
                continue;
            }
        }
        if matches!(c, Change::RootFq { .. }) {
            restored.push(c.clone());
        }
    }
}

/// When the session's last rule ends (CLOCK_MONOTONIC ns; 0 while any has not started): the
/// kernel's windows, read from the session's maps, else the record's.
fn faults_end(rec: &Record) -> u64 {
    let kernel = SessionMaps::open(&rec.maps).ok().and_then(|m| rec.faults.iter().map(|f| m.rule(f.rule).ok().map(|r| r.deadline_ns)).collect::<Option<Vec<u64>>>());
    let deadlines = kernel.unwrap_or_else(|| rec.faults.iter().map(|f| f.deadline_ns).collect());
    if deadlines.iter().any(|&d| d == 0 || d == u64::MAX) {
        return 0;
    }
    deadlines.into_iter().max().unwrap_or(0)
}
