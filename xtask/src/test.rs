//! `cargo xtask test`: every lane, then one combined line.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
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

pub fn run(host_only: bool) -> Result<()> {
    let mut total = Tally::default();
    let mut broken = Vec::new();
    match host_lane() {
        Ok(t) => {
            if t.failed > 0 {
                broken.push("host");
            }
            total.add(t)
        }
        Err(e) => {
            eprintln!("xtask: host lane: {e:#}");
            broken.push("host");
        }
    }
    // Every lane runs even when an earlier one failed, so the combined line counts them all. The
    // guest lanes are prepared one after the other (downloads, a kernel build), then booted side
    // by side: single-threaded TCG keeps each on one host core.
    if !host_only {
        let mut prepared = Vec::new();
        for lane in vm::Lane::ALL {
            match vm::prepare(lane, &[]) {
                Ok(p) => prepared.push((lane, p)),
                Err(e) => {
                    eprintln!("xtask: {} lane failed: {e:#}", lane.name());
                    broken.push(lane.name());
                }
            }
        }
        let outcomes: Vec<(vm::Lane, Result<vm::Outcome>)> = std::thread::scope(|s| {
            let running: Vec<_> = prepared.iter().map(|(lane, p)| (*lane, s.spawn(move || p.boot()))).collect();
            running.into_iter().map(|(lane, h)| (lane, h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the lane's thread panicked"))))).collect()
        });
        for (lane, outcome) in outcomes {
            match outcome {
                Ok(outcome) => {
                    eprintln!(
                        "xtask: {} lane: {} passed, {} failed",
                        lane.name(),
                        outcome.tally.passed,
                        outcome.tally.failed
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
    }
    if !broken.is_empty() {
        eprintln!("xtask: lanes with failures: {}", broken.join(", "));
    }
    // The last line of every run, whatever happened above.
    println!("{} passed, {} failed", total.passed, total.failed);
    if !broken.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// The running kernel: unit and integration tests, release profile (the same build as the demo).
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
