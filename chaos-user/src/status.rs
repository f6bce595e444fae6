//! `chaos status` and `chaos stop`: every session on the host, from the session records and
//! straight from the kernel (each session's maps, opened by id), so they work across processes and
//! show true numbers even for a session whose process is frozen.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{
    error::{Error, Result},
    kernel::{SessionMaps, monotonic_ns},
    session::journal::{self, Record},
    usage,
};

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub sessions: Vec<SessionStatus>,
    /// Records of sessions whose process is gone, with what they left (`chaos cleanup` undoes it).
    pub dead: Vec<DeadSession>,
    /// Records refused (not root's, writable by others) or unreadable.
    pub refused: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SessionStatus {
    pub id: String,
    pub pid: u32,
    pub faults: Vec<FaultStatus>,
    /// Journaled changes the session holds (netlink filters, qdiscs, ...).
    pub changes: Vec<String>,
    /// Why the live counters could not be read, if they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FaultStatus {
    pub rule: u32,
    pub kind: String,
    pub description: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    /// "waiting" (its `after` has not come), "injecting", or "ended".
    pub state: &'static str,
    pub starts_in_s: f64,
    pub left_s: f64,
    pub seen: u64,
    pub matched: u64,
    pub selected: u64,
    pub injected: u64,
    pub capped: u64,
}

#[derive(Debug, Serialize)]
pub struct DeadSession {
    pub id: String,
    pub pid: u32,
    pub changes: Vec<String>,
}

/// Reads every record, and the live sessions' rules and counters from the kernel.
pub fn status() -> Result<StatusReport> {
    let mut report = StatusReport { sessions: Vec::new(), dead: Vec::new(), refused: Vec::new() };
    let records = journal::records().map_err(|e| crate::unsupported!("{e:#}"))?;
    let now = monotonic_ns();
    for (_, rec) in records {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                report.refused.push(format!("{e:#}"));
                continue;
            }
        };
        let changes: Vec<String> = rec.changes.iter().map(|c| c.describe()).collect();
        if !rec.owner_alive() {
            // A killed session's record with nothing left to undo is only a file: the next
            // sweep removes it.
            if !changes.is_empty() {
                report.dead.push(DeadSession { id: rec.id.clone(), pid: rec.pid, changes });
            }
            continue;
        }
        let mut s = SessionStatus { id: rec.id.clone(), pid: rec.pid, faults: Vec::new(), changes, error: None };
        let maps = SessionMaps::open(&rec.maps);
        if let Err(e) = &maps {
            s.error = Some(e.to_string());
        }
        for f in &rec.faults {
            let (rule, c) = match &maps {
                Ok(m) => (m.rule(f.rule).ok(), m.counters(f.rule).unwrap_or_default()),
                Err(_) => (None, Default::default()),
            };
            // The kernel's window is the truth (`chaos stop` shortens it); the record's otherwise.
            let (start, deadline) = rule.map(|r| (r.start_ns, r.deadline_ns)).unwrap_or((f.start_ns, f.deadline_ns));
            let secs = |ns: u64| ns as f64 / 1e9;
            let state = if start == 0 || start == chaos_common::Rule::NOT_STARTED || now < start {
                "waiting"
            } else if now < deadline {
                "injecting"
            } else {
                "ended"
            };
            s.faults.push(FaultStatus {
                rule: f.rule,
                kind: f.kind.clone(),
                description: f.description.clone(),
                cgroup: f.cgroup.clone(),
                cgroup_id: f.cgroup_id,
                state,
                starts_in_s: if state == "waiting" && start != chaos_common::Rule::NOT_STARTED { secs(start.saturating_sub(now)) } else { 0.0 },
                left_s: secs(deadline.saturating_sub(now.max(start.min(deadline)))),
                seen: c.seen,
                matched: c.matched,
                selected: c.selected,
                injected: c.injected,
                capped: c.capped,
            });
        }
        report.sessions.push(s);
    }
    Ok(report)
}

impl StatusReport {
    pub fn text(&self) -> String {
        let mut s = String::new();
        if self.sessions.is_empty() {
            s += "chaos: no session is running\n";
        }
        for x in &self.sessions {
            s += &format!("session {} (pid {}): {} fault(s)\n", x.id, x.pid, x.faults.len());
            for f in &x.faults {
                let when = match f.state {
                    "waiting" => format!("starts in {:.0}s", f.starts_in_s),
                    "injecting" => format!("{:.0}s left", f.left_s),
                    _ => "ended".into(),
                };
                s += &format!(
                    "  rule {} {} on {}: {}; {when}; seen {}, matched {}, injected {}{}\n",
                    f.rule,
                    f.kind,
                    f.cgroup,
                    f.description,
                    f.seen,
                    f.matched,
                    f.injected,
                    if f.capped > 0 { format!(", capped {}", f.capped) } else { String::new() }
                );
            }
            for c in &x.changes {
                s += &format!("  holds: {c}\n");
            }
            if let Some(e) = &x.error {
                s += &format!("  (live counters unavailable: {e})\n");
            }
        }
        for d in &self.dead {
            s += &format!("session {} (pid {}) is gone; it left: {} (run `chaos cleanup`)\n", d.id, d.pid, d.changes.join(", "));
        }
        for r in &self.refused {
            s += &format!("refused: {r}\n");
        }
        s
    }
}

/// The longest `chaos stop` waits for one session's process to end.
const STOP_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize)]
pub struct Stopped {
    pub id: String,
    pub pid: u32,
    /// From the request to the process being gone.
    pub seconds: f64,
}

/// Ends the faults of the chosen sessions in the kernel at once, asks their processes to end
/// (each prints its own summary), and waits until they are gone.
pub fn stop(id: Option<&str>, all: bool) -> Result<Vec<Stopped>> {
    let records = journal::records().map_err(|e| crate::unsupported!("{e:#}"))?;
    let live: Vec<Record> = records.into_iter().filter_map(|(_, r)| r.ok()).filter(|r| r.owner_alive()).collect();
    let chosen: Vec<Record> = match (id, all) {
        (_, true) => live,
        (Some(id), false) => {
            let found: Vec<Record> = live.into_iter().filter(|r| r.id == id).collect();
            if found.is_empty() {
                return Err(usage!("no running session {id}: `chaos status` lists them"));
            }
            found
        }
        (None, false) => return Err(usage!("give a session id, or --all")),
    };
    let mut requested = Vec::new();
    for rec in chosen {
        let started = Instant::now();
        let mut maps = SessionMaps::open(&rec.maps)?;
        maps.stop(rec.faults.len() as u32, monotonic_ns())?;
        requested.push((rec, started));
    }
    let mut out = Vec::new();
    for (rec, started) in requested {
        while rec.owner_alive() {
            if started.elapsed() > STOP_WAIT {
                return Err(Error::Other(anyhow::anyhow!(
                    "session {} (pid {}) did not end within {}s of being stopped; its faults already ended in the kernel",
                    rec.id,
                    rec.pid,
                    STOP_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        out.push(Stopped { id: rec.id, pid: rec.pid, seconds: started.elapsed().as_secs_f64() });
    }
    Ok(out)
}
