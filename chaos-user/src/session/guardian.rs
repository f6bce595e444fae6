//! The guardian: a small process that undoes a session's journaled changes when the session's
//! process dies, SIGKILL included, without waiting for another `chaos` command.
//!
//! The session starts it before its first journaled change, with the read end of a pipe as its
//! stdin; the session holds the write end and never writes. When the session's process ends, the
//! kernel closes the write end and the guardian's read returns end-of-file: then it undoes what the
//! session's record still lists (nothing, after a clean end) and exits. One mechanism for every
//! change that outlives a process: a TC filter, a qdisc, later a stopped process or a made cgroup.

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

/// How long past its faults' end a stopped session may hold processes before the guardian
/// continues them.
const FROZEN_GRACE: Duration = Duration::from_secs(1);

/// `chaos guardian --session ID`: waits for end-of-file on stdin (the session's process is gone),
/// then undoes what the session's record still lists. Meanwhile, once the session's faults have
/// ended, it continues the processes a `sys.delay` rule holds if the session itself is stopped
/// (SIGSTOP, a debugger): a held process waits for nobody.
pub fn run(session: &str) -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGHUP, libc::SIGTERM, libc::SIGPIPE] {
        // SAFETY: sets a signal's disposition to ignore; no handler code runs.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let path = Record::path_in(&state_dir(), session);
    let mut buf = [0u8; 64];
    // Nothing is ever written; read returns 0 at end-of-file. Errors other than EINTR end the wait.
    loop {
        let stdin = std::io::stdin();
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(0) => {
                continue_if_frozen(&path);
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

/// Continues what the session's `sys.delay` rules hold if its faults have ended and its process
/// is stopped: the session would continue them itself, were it running.
fn continue_if_frozen(path: &std::path::Path) {
    let Ok(rec) = read_record(path) else { return };
    let holds: Vec<&Change> = rec.changes.iter().filter(|c| matches!(c, Change::Stopped { .. })).collect();
    let ended = rec.faults.iter().map(|f| f.deadline_ns).max().unwrap_or(0);
    if holds.is_empty() || ended == 0 || crate::kernel::monotonic_ns() < ended + FROZEN_GRACE.as_nanos() as u64 {
        return;
    }
    let stopped = procfs::process::Process::new(rec.pid as i32).and_then(|p| p.stat()).is_ok_and(|s| s.state == 'T' || s.state == 't');
    if !stopped {
        return;
    }
    for c in holds {
        match undo(c) {
            Ok(true) => eprintln!("chaos guardian: session {} is stopped past its faults' end; continued the {}", rec.id, c.describe()),
            Ok(false) => {}
            Err(e) => eprintln!("chaos guardian: {e:#}"),
        }
    }
}
