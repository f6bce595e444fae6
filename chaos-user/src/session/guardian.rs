//! The guardian: a small process that undoes a session's journaled changes when the session's
//! process dies, SIGKILL included, without waiting for another `chaos` command.
//!
//! The session starts it before its first journaled change, with the read end of a pipe as its
//! stdin; the session holds the write end. When the session's process ends, the kernel closes the
//! write end and the guardian's read returns end-of-file: then it undoes what the session's record
//! still lists (nothing, after a clean end) and exits. One mechanism for every change that outlives
//! a process: a TC filter, a qdisc, a stopped process, a frozen cgroup.
//!
//! The pipe also carries a heartbeat: the session writes a byte ([`beat`]) at every tick of its
//! watch loop or experiment runner (`Session::drive`), and along the long waits of its end (fq
//! draining), at most every [`BEAT_EVERY`]; the write end is non-blocking, so a guardian that does
//! not read (stopped, say) never holds the session up. A session past its faults' end that can no longer end what only
//! user space ends is one the guardian steps in for ([`end_if_frozen`]): it continues the
//! processes the session's `sys delay` rules hold, thaws the cgroups `proc pause` froze and puts
//! back the default qdisc where the session put fq. That is a session stopped (SIGSTOP, a
//! debugger: procfs state T), or wedged: alive and not stopped but silent for [`WEDGED_AFTER`]
//! (a busy loop, a deadlock, a blocked write to a full pipe).

use std::{
    io::{Read, Write},
    os::fd::AsFd,
    os::unix::process::CommandExt,
    process::{Child, ChildStdin, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
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
        // The running binary, even if its file was replaced since.
        let mut cmd = crate::self_command();
        cmd.args(["guardian", "--session", session]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit());
        cmd.env_remove(super::killpoint::KILL_AT_ENV).env_remove(super::killpoint::WEDGE_AT_END_ENV);
        // SAFETY: setsid(2) is async-signal-safe and touches no memory: the guardian leaves the
        // terminal's process group, so a Ctrl-C meant for the session does not kill it.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting the guardian")?;
        // The heartbeat's write end: non-blocking (a full pipe drops a beat, never blocks the
        // session), and held by [`PIPES`] for the life of this process (see `Drop`).
        if let Some(stdin) = child.stdin.take() {
            let flags = nix::fcntl::fcntl(&stdin, nix::fcntl::FcntlArg::F_GETFL).context("the guardian's pipe")?;
            let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(&stdin, nix::fcntl::FcntlArg::F_SETFL(flags)).context("the guardian's pipe")?;
            PIPES.lock().unwrap_or_else(|e| e.into_inner()).push(stdin);
            LAST_BEAT_NS.store(0, Ordering::Relaxed);
            beat();
        }
        Ok(Guardian { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        // The write end of its stdin (in PIPES, a static never dropped) closes with this process;
        // closing it early would wake the guardian while the session still runs. Keep it open.
        if let Some(stdin) = self.child.stdin.take() {
            std::mem::forget(stdin);
        }
    }
}

/// The write ends of this process's guardians' pipes (one a session; a process runs one session
/// at a time, but `chaos bench` runs many in turn, each guardian staying until the process ends).
static PIPES: Mutex<Vec<ChildStdin>> = Mutex::new(Vec::new());
/// When [`beat`] last wrote (CLOCK_MONOTONIC ns).
static LAST_BEAT_NS: AtomicU64 = AtomicU64::new(0);

/// How often a session beats at most: a byte to write, and a guardian to wake, twice a second.
pub const BEAT_EVERY: Duration = Duration::from_millis(500);

/// How long a session past its faults' end (+ [`FROZEN_GRACE`]) may stay silent before its
/// guardian takes it for wedged. Six beats: a healthy session beats every [`BEAT_EVERY`] (its
/// watch loop ticks every 100 ms), and neither a loaded machine's scheduling delays nor a slow
/// netlink dump in a tick come near; the long waits of a session's end (fq draining, up to the
/// longest delay) beat as they wait. Short enough that a wedged session's held processes and
/// frozen cgroups go on within about 5 s of its faults' end. Mistaking a slow session for a wedged
/// one would end early only what its faults' end ends anyway (and say so, wrongly, in a log line).
pub const WEDGED_AFTER: Duration = Duration::from_secs(3);

/// The session is alive: tells its guardian, if it has one (a byte on the pipe, not more often
/// than [`BEAT_EVERY`]). Cheap enough for any loop: one clock read, mostly.
pub fn beat() {
    let now = monotonic_ns();
    if now.saturating_sub(LAST_BEAT_NS.load(Ordering::Relaxed)) < BEAT_EVERY.as_nanos() as u64 {
        return;
    }
    LAST_BEAT_NS.store(now, Ordering::Relaxed);
    for mut pipe in PIPES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        // EAGAIN (the guardian does not read: stopped, busy) drops the beat; EPIPE (it died)
        // is the next sweep's business. SIGPIPE is ignored by Rust's runtime.
        let _ = pipe.write(&[1]);
    }
}

/// How long past its faults' end a stopped or wedged session may hold processes, keep a cgroup
/// frozen or fq in place, before the guardian ends them.
const FROZEN_GRACE: Duration = Duration::from_secs(1);

/// How often the guardian looks at its session.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Why the guardian steps in for a live session past its faults' end.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Frozen {
    /// Stopped (procfs state T or t).
    Stopped,
    /// Running (or sleeping) but silent this long.
    Wedged(Duration),
}

impl std::fmt::Display for Frozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frozen::Stopped => write!(f, "is stopped past its faults' end"),
            Frozen::Wedged(silent) => write!(f, "is wedged past its faults' end (silent {:.1} s)", silent.as_secs_f64()),
        }
    }
}

/// Whether a live session in procfs state `state`, whose faults end at `ended` (CLOCK_MONOTONIC
/// ns; 0 while any has not started), silent for `silent`, is one to step in for `now`.
fn judge(state: char, ended: u64, now: u64, silent: Duration) -> Option<Frozen> {
    if ended == 0 || now < ended.saturating_add(FROZEN_GRACE.as_nanos() as u64) {
        return None;
    }
    if state == 'T' || state == 't' {
        return Some(Frozen::Stopped);
    }
    (silent >= WEDGED_AFTER && !matches!(state, 'Z' | 'X' | 'x')).then_some(Frozen::Wedged(silent))
}

/// `chaos guardian --session ID`: waits for end-of-file on stdin (the session's process is gone),
/// then undoes what the session's record still lists. Meanwhile it notes each heartbeat, and once a
/// second, if the session is past its faults' end and stopped or wedged, ends what only user space
/// ends ([`end_if_frozen`]): a held process waits for nobody, a frozen cgroup thaws, a device gets
/// its qdisc back.
pub fn run(session: &str) -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGHUP, libc::SIGTERM, libc::SIGPIPE] {
        // SAFETY: sets a signal's disposition to ignore; no handler code runs.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let path = Record::path_in(&state_dir(), session);
    let mut buf = [0u8; 256];
    let mut restored = Vec::new();
    // From the start: a session silent since then (before its first beat) is silent as long.
    let mut last_beat = Instant::now();
    let mut next_look = Instant::now() + LOOK_EVERY;
    // Beats are read as they come; read returns 0 at end-of-file. Errors other than EINTR end the wait.
    loop {
        let now = Instant::now();
        if now >= next_look {
            end_if_frozen(&path, &mut restored, last_beat.elapsed());
            next_look = now + LOOK_EVERY;
        }
        let stdin = std::io::stdin();
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        let wait = next_look.saturating_duration_since(Instant::now()).as_millis().clamp(1, 1000) as u16;
        match poll(&mut fds, PollTimeout::from(wait)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            _ => {}
        }
        match stdin.lock().read(&mut buf) {
            Ok(0) => break,
            Ok(_) => last_beat = Instant::now(),
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

/// For a session stopped or wedged past its faults' end (the kernel's windows, which `chaos stop`
/// may have shortened, else the record's), plus a grace ([`judge`]; `silent`: since its last beat):
/// continues what its `sys.delay` rules hold and thaws what its `proc.pause` rules froze (at every
/// look: a stop is never undone for good while the session may stop again) and deletes each fq
/// qdisc it put on a device, once (`restored`), so the kernel attaches the default again: fq would
/// go on holding the device's packets to departure times nobody sets any more, with limits and a
/// horizon of its own. Nothing of the record changes: the session, continued or unwedged, or the
/// guardian after its death, undoes the same changes again and finds nothing of its own (an fq is
/// known by the handle unique to the session).
fn end_if_frozen(path: &std::path::Path, restored: &mut Vec<Change>, silent: Duration) {
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
    if left.is_empty() || !rec.owner_alive() {
        return;
    }
    let Ok(state) = procfs::process::Process::new(rec.pid as i32).and_then(|p| p.stat()).map(|s| s.state) else { return };
    let Some(why) = judge(state, faults_end(&rec), monotonic_ns(), silent) else { return };
    for c in left {
        match undo(c) {
            Ok(true) if matches!(c, Change::RootFq { .. }) => {
                eprintln!("chaos guardian: session {} {why}; put back the default qdisc in place of the {}", rec.id, c.describe())
            }
            Ok(true) if matches!(c, Change::Frozen { .. }) => eprintln!("chaos guardian: session {} {why}; thawed the {}", rec.id, c.describe()),
            Ok(true) => eprintln!("chaos guardian: session {} {why}; continued the {}", rec.id, c.describe()),
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
    let kernel =
        SessionMaps::open(&rec.maps).ok().and_then(|m| rec.faults.iter().map(|f| m.rule(f.rule).ok().map(|r| r.deadline_ns)).collect::<Option<Vec<u64>>>());
    let deadlines = kernel.unwrap_or_else(|| rec.faults.iter().map(|f| f.deadline_ns).collect());
    if deadlines.iter().any(|&d| d == 0 || d == u64::MAX) {
        return 0;
    }
    deadlines.into_iter().max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_stepped_in_for_only_past_its_end_and_stopped_or_silent() {
        let s = Duration::from_secs;
        let end = 100_000_000_000u64;
        let after = end + FROZEN_GRACE.as_nanos() as u64;
        // Not started, or not past its end and the grace: never, whatever its state.
        assert_eq!(judge('T', 0, after, s(60)), None);
        assert_eq!(judge('R', end, after - 1, s(60)), None);
        assert_eq!(judge('T', end, after - 1, s(60)), None);
        // Past it: stopped, or alive and silent for the bound.
        assert_eq!(judge('T', end, after, s(0)), Some(Frozen::Stopped));
        assert_eq!(judge('t', end, after, s(0)), Some(Frozen::Stopped));
        assert_eq!(judge('R', end, after, WEDGED_AFTER), Some(Frozen::Wedged(WEDGED_AFTER)));
        assert_eq!(judge('D', end, after, s(10)), Some(Frozen::Wedged(s(10))));
        // Beating, or a zombie (its pipe closes: end-of-file is the guardian's cue then).
        assert_eq!(judge('R', end, after, WEDGED_AFTER - Duration::from_millis(1)), None);
        assert_eq!(judge('S', end, after, BEAT_EVERY), None);
        assert_eq!(judge('Z', end, after, s(60)), None);
        assert!(Frozen::Wedged(s(4)).to_string().contains("wedged past its faults' end (silent 4.0 s)"));
        assert_eq!(Frozen::Stopped.to_string(), "is stopped past its faults' end");
    }
}
