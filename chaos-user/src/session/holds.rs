//! `sys.delay`'s user-space half: a thread that continues each held process when its hold ends.
//!
//! The kernel program stops the calling process (SIGSTOP) and posts a [`HoldRecord`] to a ring
//! buffer that wakes this thread at once. The thread keeps, per process, the end of its hold (the
//! latest, when several of its threads were caught together), sleeps until the next end with a
//! 1 ns timer slack, and sends SIGCONT through a pidfd opened when the record arrived. A SIGCONT
//! that comes before the stop has landed cancels it (the kernel drops a pending stop on SIGCONT),
//! so a process is never left stopped by a race. At the session's end every held process is
//! continued at once; if chaos is killed, the guardian continues the target's stopped processes
//! (`Change::Stopped`).

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use chaos_common::{loss::Prng, sys::HoldRecord};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::eventfd::{EfdFlags, EventFd},
};

use crate::{faults::sys_delay::HoldSpec, kernel::monotonic_ns};

/// What the holder did, for the log.
#[derive(Debug, Default)]
pub struct HoldStats {
    /// Holds started (records read).
    pub holds: u64,
    /// Processes continued.
    pub continued: u64,
    /// How late the latest SIGCONT was sent, past its hold's end.
    pub worst_late: Duration,
}

pub struct Holder {
    stop: EventFd,
    thread: Option<JoinHandle<HoldStats>>,
}

impl Holder {
    /// Starts the thread reading `ring`; `specs[i]`: rule `i`'s hold, if it is a delay rule.
    pub fn start(ring: RingBuf<MapData>, specs: Vec<Option<HoldSpec>>) -> anyhow::Result<Holder> {
        let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let stop_fd = stop.as_fd().try_clone_to_owned()?;
        let thread = std::thread::Builder::new().name("chaos-holds".into()).spawn(move || run(ring, specs, stop_fd))?;
        Ok(Holder { stop, thread: Some(thread) })
    }

    /// Continues every held process now (after the rules ended and the hooks are detached) and
    /// ends the thread.
    pub fn finish(&mut self) -> HoldStats {
        let _ = self.stop.write(1);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A held process: when to continue it, and a handle that cannot name another process.
struct Held {
    until_ns: u64,
    pidfd: OwnedFd,
}

fn run(mut ring: RingBuf<MapData>, specs: Vec<Option<HoldSpec>>, stop: OwnedFd) -> HoldStats {
    // SAFETY: prctl(PR_SET_TIMERSLACK) sets a number on the calling thread; no memory is passed.
    // 1 ns: the default 50 µs slack would be added to every hold.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut stats = HoldStats::default();
    let mut held: HashMap<u32, Held> = HashMap::new();
    let mut rng = Prng::seeded(monotonic_ns() ^ u64::from(std::process::id()));
    loop {
        continue_due(&mut held, monotonic_ns(), &mut stats);
        let timeout = match held.values().map(|h| h.until_ns).min() {
            None => PollTimeout::NONE,
            // poll(2) counts in ms: sleep the last part precisely below.
            Some(t) => PollTimeout::try_from(Duration::from_nanos(t.saturating_sub(monotonic_ns())).as_millis().min(60_000) as u64)
                .unwrap_or(PollTimeout::ZERO),
        };
        let (ring_ready, stopping) = {
            let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(_) => (fds[0].any().unwrap_or(false), fds[1].any().unwrap_or(false)),
                Err(nix::errno::Errno::EINTR) => (false, false),
                Err(_) => (true, true),
            }
        };
        if ring_ready || stopping {
            read_holds(&mut ring, &specs, &mut held, &mut rng, &mut stats);
        }
        if stopping {
            break;
        }
        // The remainder of the nearest hold, below poll's millisecond, slept precisely.
        if let Some(t) = held.values().map(|h| h.until_ns).min() {
            let left = t.saturating_sub(monotonic_ns());
            if left < 1_000_000 {
                sleep_until(t);
            }
        }
    }
    // The session is ending: a record posted just before the hooks were detached may still be
    // on its way; read twice, then continue everyone.
    std::thread::sleep(Duration::from_millis(5));
    read_holds(&mut ring, &specs, &mut held, &mut rng, &mut stats);
    continue_due(&mut held, u64::MAX, &mut stats);
    log::debug!("holder: {} holds, {} continued, latest SIGCONT {:?} late", stats.holds, stats.continued, stats.worst_late);
    stats
}

/// Reads every record in the ring into `held`.
fn read_holds(ring: &mut RingBuf<MapData>, specs: &[Option<HoldSpec>], held: &mut HashMap<u32, Held>, rng: &mut Prng, stats: &mut HoldStats) {
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<HoldRecord>() {
            continue;
        }
        // SAFETY: the kernel wrote a HoldRecord (repr(C), plain integers) at the item's start.
        let r: HoldRecord = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        drop(item);
        stats.holds += 1;
        let Some(Some(spec)) = specs.get(r.rule as usize) else { continue };
        let until_ns = r.at_ns + hold_ns(spec, rng.next_u32());
        match held.get_mut(&r.pid) {
            Some(h) => h.until_ns = h.until_ns.max(until_ns),
            None => match pidfd_open(r.pid) {
                Some(pidfd) => {
                    held.insert(r.pid, Held { until_ns, pidfd });
                    if stats.holds == 1 {
                        super::killpoint::step(|| format!("holding process {} (the first stopped)", r.pid));
                    }
                }
                // Gone already (killed while stopped): nothing to continue.
                None => log::debug!("holder: process {} is gone", r.pid),
            },
        }
    }
}

/// One hold's length: the delay, plus or minus up to the jitter, uniformly (`draw` is random).
pub fn hold_ns(spec: &HoldSpec, draw: u32) -> u64 {
    let (delay, jitter) = (spec.delay.as_nanos() as u64, spec.jitter.as_nanos() as u64);
    if jitter == 0 {
        return delay;
    }
    // draw/2^32 spread over [-jitter, +jitter].
    let offset = ((u128::from(draw) * u128::from(2 * jitter)) >> 32) as u64;
    (delay - jitter) + offset
}

/// Continues the processes whose hold ends by `now`.
fn continue_due(held: &mut HashMap<u32, Held>, now: u64, stats: &mut HoldStats) {
    held.retain(|pid, h| {
        if h.until_ns > now {
            return true;
        }
        if let Err(e) = pidfd_send_sigcont(&h.pidfd) {
            log::debug!("holder: continuing process {pid}: {e}");
        }
        stats.continued += 1;
        if now != u64::MAX {
            stats.worst_late = stats.worst_late.max(Duration::from_nanos(monotonic_ns().saturating_sub(h.until_ns)));
        }
        false
    });
}

/// Sleeps until CLOCK_MONOTONIC `t_ns`.
fn sleep_until(t_ns: u64) {
    let ts = libc::timespec { tv_sec: (t_ns / 1_000_000_000) as libc::time_t, tv_nsec: (t_ns % 1_000_000_000) as libc::c_long };
    // SAFETY: clock_nanosleep reads the valid timespec; the remainder pointer may be null with
    // TIMER_ABSTIME. An interruption just ends the sleep early: the loop looks again.
    unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut()) };
}

/// A pidfd for `pid` (Linux 5.3+): a signal sent through it reaches this process or none.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a new fd that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_send_sigcont(pidfd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: the fd is a valid pidfd; a null siginfo means "as kill(2) would send it".
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), libc::SIGCONT, std::ptr::null::<libc::siginfo_t>(), 0) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_spans_the_jitter_around_the_delay() {
        let ms = Duration::from_millis;
        let spec = HoldSpec { delay: ms(100), jitter: ms(20) };
        assert_eq!(hold_ns(&spec, 0), 80_000_000);
        assert_eq!(hold_ns(&spec, u32::MAX / 2), 99_999_999);
        assert!(hold_ns(&spec, u32::MAX) < 120_000_000 && hold_ns(&spec, u32::MAX) > 119_999_990);
        assert_eq!(hold_ns(&HoldSpec { delay: ms(5), jitter: ms(0) }, 12345), 5_000_000);
    }
}
