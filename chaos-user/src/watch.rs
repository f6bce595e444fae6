//! Runs an injection until its deadline or a signal: live status, new devices picked up,
//! kernel log forwarded. The kernel stops injecting at the deadline on its own; this loop only
//! decides when to detach.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use tokio::signal::unix::{SignalKind, signal};

use crate::faults::Injection;

/// How often device lists and cgroup members are re-read.
const REFRESH: Duration = Duration::from_secs(1);

pub struct Ended {
    pub by: String,
    pub elapsed: Duration,
}

/// The signals that end a run. Registered before anything is attached, so a signal that arrives
/// while attaching ends the run cleanly instead of killing the process with faults in place.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must be called inside the runtime (`Runtime::enter`).
    pub fn register() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Watches until the kernel rule's own deadline (`deadline_ns`, CLOCK_MONOTONIC), so user space
/// and the kernel agree on when the fault ends however long attaching took.
pub async fn watch(inj: &mut dyn Injection, what: &str, deadline_ns: u64, signals: Signals) -> std::io::Result<Ended> {
    let start = Instant::now();
    let duration = Duration::from_nanos(deadline_ns.saturating_sub(crate::run::monotonic_ns()));
    let deadline = tokio::time::Instant::now() + duration;
    let Signals { int: mut sigint, term: mut sigterm, hup: mut sighup } = signals;
    let tty = std::io::stderr().is_terminal();
    // A terminal gets one line rewritten in place; a log gets a line every few seconds.
    let status_every = if tty { Duration::from_millis(500) } else { Duration::from_secs(5) };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut last_status, mut last_refresh) = (Instant::now(), Instant::now());
    let mut last_matched = (Instant::now(), 0u64);
    let by = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break "deadline",
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sighup.recv() => break "SIGHUP",
            _ = tick.tick() => {
                inj.flush_log();
                if last_refresh.elapsed() >= REFRESH {
                    inj.refresh();
                    last_refresh = Instant::now();
                }
                if last_status.elapsed() >= status_every {
                    last_status = Instant::now();
                    if let Ok(c) = inj.counters() {
                        let (t0, m0) = last_matched;
                        let rate = (c.matched() - m0) as f64 / t0.elapsed().as_secs_f64().max(1e-3);
                        last_matched = (Instant::now(), c.matched());
                        let left = duration.saturating_sub(start.elapsed()).as_secs();
                        let line = format!("chaos: {what}: matched {}, injected {}, {rate:.0} matched/s, {left}s left", c.matched(), c.injected());
                        let mut e = std::io::stderr().lock();
                        let _ = if tty { write!(e, "\r\x1b[2K{line}") } else { writeln!(e, "{line}") };
                    }
                }
            }
        }
    };
    if tty {
        eprintln!();
    }
    inj.flush_log();
    Ok(Ended { by: by.to_string(), elapsed: start.elapsed() })
}
