//! `cargo xtask test`: every lane, then one combined line.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{cmd, vm};

/// Pass/fail counts from libtest's `test result:` lines.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    pub fn add(&mut self, o: Tally) {
        self.passed += o.passed;
        self.failed += o.failed;
    }

    /// Adds the counts of one `test result: ok. 3 passed; 1 failed; ...` line, if it is one.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else { return };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next()) {
                match (n.parse::<u64>(), what) {
                    (Ok(n), "passed") => self.passed += n,
                    (Ok(n), "failed") => self.failed += n,
                    _ => {}
                }
            }
        }
    }
}

/// When each guest lane boots. Each emulated guest keeps a host core busy and this machine has
/// two: at most two guests run at once, or the timing checks of the packet tests fail (fq released
/// held packets 10-25% late with three guests at once). The host's tests are native and mostly
/// wait, so a short guest lane runs beside them (`vm::Lane::full_run_tests`).
const BESIDE_HOST: &[vm::Lane] = &[vm::Lane::Errinj];
/// Booted when the host lane ends.
const AFTER_HOST: &[vm::Lane] = &[vm::Lane::DebianCloud];
// The others boot when the lanes beside the host have ended.

pub fn run(host_only: bool) -> Result<()> {
    let started = Instant::now();
    let mut total = Tally::default();
    let mut broken = Vec::new();
    // Every lane runs even when an earlier one failed, so the combined line counts them all. The
    // guest lanes are prepared first, one after the other (downloads, a kernel build, the test
    // binaries); single-threaded TCG keeps each booted guest on one host core.
    let mut prepared = Vec::new();
    if !host_only {
        for lane in vm::Lane::ALL {
            match vm::prepare(lane, &[], lane.full_run_tests(), &[]) {
                Ok(p) => prepared.push((lane, p)),
                Err(e) => {
                    eprintln!("xtask: {} lane failed: {e:#}", lane.name());
                    broken.push(lane.name());
                }
            }
        }
    }
    let beside: Vec<_> = prepared.iter().filter(|(lane, _)| BESIDE_HOST.contains(lane)).collect();
    let after_host: Vec<_> = prepared.iter().filter(|(lane, _)| AFTER_HOST.contains(lane)).collect();
    let last: Vec<_> = prepared.iter().filter(|(lane, _)| !BESIDE_HOST.contains(lane) && !AFTER_HOST.contains(lane)).collect();
    let (host, outcomes) = std::thread::scope(|s| {
        let join = |(lane, h): (vm::Lane, std::thread::ScopedJoinHandle<'_, (Result<vm::Outcome>, Duration)>)| {
            let (outcome, took) = h.join().unwrap_or_else(|_| (Err(anyhow::anyhow!("the lane's thread panicked")), Duration::ZERO));
            (lane, outcome, took)
        };
        let beside: Vec<_> = beside.iter().map(|(lane, p)| (*lane, boot(s, p))).collect();
        let host_started = Instant::now();
        let host = (host_lane(), host_started.elapsed());
        let after_host: Vec<_> = after_host.iter().map(|(lane, p)| (*lane, boot(s, p))).collect();
        // The last lanes boot as those beside the host end: two guests at a time.
        let mut outcomes: Vec<(vm::Lane, Result<vm::Outcome>, Duration)> = beside.into_iter().map(join).collect();
        let last: Vec<_> = last.iter().map(|(lane, p)| (*lane, boot(s, p))).collect();
        outcomes.extend(after_host.into_iter().chain(last).map(join));
        (host, outcomes)
    });
    match host {
        (Ok(t), took) => {
            eprintln!("xtask: host lane: {} passed, {} failed in {}", t.passed, t.failed, minutes(took));
            if t.failed > 0 {
                broken.push("host");
            }
            total.add(t)
        }
        (Err(e), _) => {
            eprintln!("xtask: host lane: {e:#}");
            broken.push("host");
        }
    }
    for (lane, outcome, took) in outcomes {
        match outcome {
            Ok(outcome) => {
                eprintln!(
                    "xtask: {} lane: {} passed, {} failed in {}",
                    lane.name(),
                    outcome.tally.passed,
                    outcome.tally.failed,
                    minutes(took)
                );
                total.add(outcome.tally);
                if let Some(p) = outcome.problem {
                    eprintln!("xtask: {} lane failed: {p}", lane.name());
                    broken.push(lane.name());
                } else if outcome.tally.failed > 0 {
                    broken.push(lane.name());
                }
            }
            Err(e) => {
                eprintln!("xtask: {} lane failed: {e:#}", lane.name());
                broken.push(lane.name());
            }
        }
    }
    if !broken.is_empty() {
        eprintln!("xtask: lanes with failures: {}", broken.join(", "));
    }
    eprintln!("xtask: every lane in {}", minutes(started.elapsed()));
    // The last line of every run, whatever happened above.
    println!("{} passed, {} failed", total.passed, total.failed);
    if !broken.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// Boots a prepared guest lane in a thread of `s`; the thread returns its outcome and how long it took.
fn boot<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    p: &'scope vm::Prepared,
) -> std::thread::ScopedJoinHandle<'scope, (Result<vm::Outcome>, Duration)> {
    s.spawn(move || {
        let booted = Instant::now();
        (p.boot(), booted.elapsed())
    })
}

/// The running kernel: unit and integration tests, release profile (the same build as the demo;
/// the guest lanes' preparation built them with the same command, `vm::test_binaries`).
fn host_lane() -> Result<Tally> {
    eprintln!("xtask: host lane (kernel {})", kernel_release());
    let mut c = cmd::cargo();
    c.args(["test", "--release", "--workspace", "--exclude", "chaos-ebpf", "--no-fail-fast"]).env("CHAOS_LANE", "host");
    run_counting(&mut c)
}

/// Runs a test command, echoing its output, and adds up its result lines.
pub fn run_counting(c: &mut Command) -> Result<Tally> {
    let mut child = c.stdout(Stdio::piped()).spawn()?;
    let mut tally = Tally::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait()?;
    if !status.success() && tally.failed == 0 {
        bail!("{} failed ({status}) before any test failed: a build error?", cmd::show(c));
    }
    Ok(tally)
}

/// `7m 05s`.
fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m {:02}s", s / 60, s % 60)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_result_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add_line("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add_line("running 5 tests");
        assert_eq!(t, Tally { passed: 15, failed: 2 });
    }
}
