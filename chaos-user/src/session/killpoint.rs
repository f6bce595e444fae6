//! A test hook for the kill-point tests: with `CHAOS_TEST_KILL_AT=N`, a session names each step of
//! its life on stderr ("chaos: step 3: journal: recorded clsact on eth0") and SIGKILLs itself right
//! after the N-th, so a test can show that a kill at every step (each journal write, the
//! guardian's start, each attach, the qdisc changes, the first held process, each detach) leaves
//! nothing behind. `CHAOS_TEST_KILL_AT=0` only names the steps. Unset, a step costs one load.
//!
//! The guardian is started without the variable: it must do its work, not die at a step.

use std::sync::{
    OnceLock,
    atomic::{AtomicU32, Ordering},
};

pub const KILL_AT_ENV: &str = "CHAOS_TEST_KILL_AT";

static KILL_AT: OnceLock<Option<u32>> = OnceLock::new();
static STEPS: AtomicU32 = AtomicU32::new(0);

/// One step of a session's life has just been taken.
pub fn step(what: impl FnOnce() -> String) {
    let Some(at) = *KILL_AT.get_or_init(|| std::env::var(KILL_AT_ENV).ok().and_then(|v| v.parse().ok())) else {
        return;
    };
    let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
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
