//! Runs a session until its last rule's deadline, a signal, or `chaos stop`: live status, new
//! devices picked up, kernel log forwarded. The kernel stops injecting at each deadline on its
//! own; this loop only decides when to detach.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use tokio::signal::unix::{SignalKind, signal};

use crate::{kernel::monotonic_ns, session::Session};

/// How often device lists and cgroup members are re-read.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How often the loop looks at the kernel (the stop flag, counters): also the bound on how long
/// `chaos stop` waits for a session to notice.
pub const TICK: Duration = Duration::from_millis(100);

/// How a session run with `-- CMD` ends when CMD does.
pub const COMMAND_EXITED: &str = "command exited";

pub struct Ended {
    pub by: String,
    pub elapsed: Duration,
}

/// The signals that end a session. Registered before anything is attached, so a signal that
/// arrives while attaching ends the run cleanly instead of killing the process with faults in place.
pub struct Signals {
    pub int: tokio::signal::unix::Signal,
    pub term: tokio::signal::unix::Signal,
    pub hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must be called inside the runtime (`Runtime::enter`).
    pub fn register() -> std::io::Result<Signals> {
        Ok(Signals { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())?, hup: signal(SignalKind::hangup())? })
    }
}

/// Watches until the session's last deadline, read through the kernel's clock, so user space and
/// the kernel agree on when the faults end however long attaching took.
/// With `command` (`-- CMD`), the watch also ends when CMD exits.
/// With `metrics`, a snapshot of the rules' counters is published every second.
pub async fn watch(session: &mut Session, signals: Signals, mut command: Option<&mut crate::run::CommandRun>, metrics: Option<&crate::metrics::Exporter>) -> std::io::Result<Ended> {
    let publish = |session: &Session| {
        if let Some(m) = metrics {
            let mut f = crate::metrics::Families::default();
            session.metrics(&mut f);
            m.publish(&f);
        }
    };
    publish(session);
    let start = Instant::now();
    let duration = Duration::from_nanos(session.end_ns().saturating_sub(monotonic_ns()));
    let deadline = tokio::time::Instant::now() + duration;
    let Signals { int: mut sigint, term: mut sigterm, hup: mut sighup } = signals;
    let tty = std::io::stderr().is_terminal();
    // A terminal gets one line rewritten in place; a log gets a line every few seconds.
    let status_every = if tty { Duration::from_millis(500) } else { Duration::from_secs(5) };
    let mut tick = tokio::time::interval(TICK);
    let (mut last_status, mut last_refresh) = (Instant::now(), Instant::now());
    let mut last_matched = (Instant::now(), 0u64);
    let n = session.rules();
    let what = if n == 1 { format!("session {}", session.id) } else { format!("session {} ({n} faults)", session.id) };
    let by = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break "deadline",
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sighup.recv() => break "SIGHUP",
            _ = tick.tick() => {
                session.drive();
                session.flush_log();
                if session.stop_requested() {
                    break "chaos stop";
                }
                if command.as_deref_mut().is_some_and(|c| c.exited()) {
                    break COMMAND_EXITED;
                }
                if last_refresh.elapsed() >= REFRESH {
                    session.refresh();
                    publish(session);
                    last_refresh = Instant::now();
                }
                if last_status.elapsed() >= status_every {
                    last_status = Instant::now();
                    let (matched, injected) = session.totals();
                    let (t0, m0) = last_matched;
                    let rate = matched.saturating_sub(m0) as f64 / t0.elapsed().as_secs_f64().max(1e-3);
                    last_matched = (Instant::now(), matched);
                    let left = duration.saturating_sub(start.elapsed()).as_secs();
                    let line = format!("chaos: {what}: matched {matched}, injected {injected}, {rate:.0} matched/s, {left}s left");
                    let mut e = std::io::stderr().lock();
                    let _ = if tty { write!(e, "\r\x1b[2K{line}") } else { writeln!(e, "{line}") };
                }
            }
        }
    };
    if tty {
        eprintln!();
    }
    session.flush_log();
    Ok(Ended { by: by.to_string(), elapsed: start.elapsed() })
}
