//! A test hook for the kill-point tests: with `CHAOS_TEST_KILL_AT=N`, a session names each step of
//! its life on stderr ("chaos: step 3: journal: recorded clsact on eth0") and SIGKILLs itself right
//! after the N-th, so a test can show that a kill at every step (each journal write, the
//! guardian's start, each attach, the qdisc changes, the first held process, each detach) leaves
//! nothing behind. `CHAOS_TEST_KILL_AT=0` only names the steps. Unset, a step costs one load.
//!
//! The guardian is started without the variable: it must do its work, not die at a step.

use std::{
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

pub const KILL_AT_ENV: &str = "CHAOS_TEST_KILL_AT";

static KILL_AT: OnceLock<Option<u32>> = OnceLock::new();
/// Steps taken so far. A mutex, not an atomic: two threads' steps (the watch loop's, a hold's)
/// are numbered and printed in one order, so the last line before the kill is the N-th (an atomic
/// let step 13 kill the process before step 11's line was written, seen once in CI).
static STEPS: Mutex<u32> = Mutex::new(0);

/// One step of a session's life has just been taken.
pub fn step(what: impl FnOnce() -> String) {
    let Some(at) = *KILL_AT.get_or_init(|| std::env::var(KILL_AT_ENV).ok().and_then(|v| v.parse().ok())) else {
        return;
    };
    let mut steps = STEPS.lock().unwrap_or_else(|e| e.into_inner());
    *steps += 1;
    let n = *steps;
    eprintln!("chaos: step {n}: {}", what());
    if n == at {
        // As an operator's `kill -9` or the OOM killer would: no handler, destructor or flush runs.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        // A signal to oneself is delivered before kill(2) returns to user space; should it not
        // be, nothing of this session may go on.
        loop {
            std::thread::park();
        }
    }
}

/// A test hook for the guardian's wedge check: with `CHAOS_TEST_WEDGE_AT_END=1`, a session busy-
/// loops once its faults' end is reached, before it undoes anything ([`wedge_at_end`]), as a
/// session stuck in a loop or a deadlock would: alive, running (state R, not stopped), silent.
/// With `CHAOS_TEST_WEDGE_AT_END=beat` it waits there as long instead, beating as it waits: a slow
/// but healthy end (as a long fq drain), which the guardian must leave alone.
pub const WEDGE_AT_END_ENV: &str = "CHAOS_TEST_WEDGE_AT_END";

/// How long the wedge spins at most: a test that fails before it kills chaos leaves no process
/// spinning for long.
const WEDGE_FOR: Duration = Duration::from_secs(60);
/// How long a slow end (`beat`) waits: longer than the guardian's grace, bound on silence and
/// look together, with a margin.
const SLOW_END: Duration = Duration::from_secs(8);

static WEDGE: OnceLock<Option<bool>> = OnceLock::new();
static WEDGED: AtomicBool = AtomicBool::new(false);

/// The session's faults have ended and it is about to end what user space ends (thaw, continue,
/// detach, undo): with [`WEDGE_AT_END_ENV`] set, the first call spins (on the CPU, not asleep) for
/// up to a minute, or waits beating, then goes on. Unset, a call costs one load.
pub fn wedge_at_end() {
    let Some(spin) = *WEDGE.get_or_init(|| match std::env::var(WEDGE_AT_END_ENV).as_deref() {
        Ok("1") => Some(true),
        Ok("beat") => Some(false),
        _ => None,
    }) else {
        return;
    };
    if WEDGED.swap(true, Ordering::SeqCst) {
        return;
    }
    let since = Instant::now();
    if spin {
        eprintln!("chaos: wedged at the faults' end ({WEDGE_AT_END_ENV}): spinning for up to {WEDGE_FOR:?}");
        while since.elapsed() < WEDGE_FOR {
            std::hint::spin_loop();
        }
        eprintln!("chaos: no longer wedged");
    } else {
        eprintln!("chaos: a slow end ({WEDGE_AT_END_ENV}): waiting {SLOW_END:?}, beating");
        while since.elapsed() < SLOW_END {
            super::guardian::beat();
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("chaos: the slow end is over");
    }
}
