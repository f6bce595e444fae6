//! Boots the guest under qemu (software emulation: /dev/kvm is not usable here), streams its
//! serial console to stdout line by line, and judges the run from what the console showed.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::test::Tally;

/// How a boot went: the tests' counts, and what went wrong, if anything.
pub struct Outcome {
    pub tally: Tally,
    pub problem: Option<String>,
    /// Lines the guest printed as `BENCH| ...` (benchmark tables), without the prefix.
    pub bench: Vec<String>,
    /// The status in /init's end marker: the tests' (0 or 1), or vm-run's command's.
    pub status: Option<i32>,
    /// Killed at the time limit.
    pub hung: bool,
}

/// Where the console's lines go.
#[derive(Clone, Copy)]
pub enum Show {
    /// Every line to stdout after the prefix (the test lanes, which boot side by side).
    Console,
    /// The lines between /init's `<marker> start` and its end marker (vm-run's command's output)
    /// to stdout as they are, so that stdout carries nothing else; the rest (firmware, boot,
    /// power-off) to stderr after the prefix. The marker lines are not shown.
    Command,
}

/// How long qemu may take to exit after the guest printed its end marker.
const LINGER: Duration = Duration::from_secs(5);

/// What the console showed.
#[derive(Default)]
struct Console {
    tally: Tally,
    bench: Vec<String>,
    end_code: Option<i32>,
    panic: Option<String>,
}

/// Boots `kernel` with `initrd`; the guest's /init prints `<marker> rc=N` when done. The run is
/// killed after `timeout`.
pub fn run(kernel: &Path, initrd: &Path, marker: &str, timeout: Duration, prefix: &str, show: Show) -> Result<Outcome> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-m", "2048", "-smp", "2", "-nographic", "-no-reboot"])
        // No network card: the guest's only traffic is loopback and its own namespaces.
        .args(["-nic", "none"])
        // Both vCPUs on one host thread (round-robin TCG). Multi-threaded TCG, qemu's default
        // here, can keep a stale translation of kernel text that the other vCPU is patching
        // (static keys, BPF trampolines: text_poke_bp): a vCPU then traps on the int3 the patch
        // left behind, and the kernel's int3 handler retries it forever (a soft lockup that never
        // ends: seen in the Debian lane's demo test, and reproduced 4 times in 4 by toggling a
        // static key in a loop, with qemu 7.2 and 10.0). Round-robin TCG cannot interleave the
        // two; the lane was not slower (114-145 s against 130-149 s). The guest still has 2 CPUs.
        .args(["-accel", "tcg,thread=single"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let started = Instant::now();
    let mut child =
        c.spawn().context("could not start qemu-system-x86_64: `cargo xtask setup` installs qemu-system-x86")?;
    let stdout = child.stdout.take().expect("piped");
    let marker = marker.to_string();
    let ended = Arc::new(AtomicBool::new(false));
    let reader = thread::spawn({
        let ended = ended.clone();
        let prefix = prefix.to_string();
        move || watch(stdout, &marker, &ended, &prefix, show)
    });

    // A kernel without ACPI (the errinj one) halts on `poweroff -f` instead of ending qemu, so
    // once the end marker is out, qemu gets a few seconds to exit and is then stopped.
    let mut ended_at = None;
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if ended_at.is_none() && ended.load(Ordering::Relaxed) {
            ended_at = Some(Instant::now());
        }
        let linger = ended_at.is_some_and(|t| t.elapsed() > LINGER);
        if linger || started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break !linger;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let console = reader.join().expect("console reader panicked")?;
    let secs = started.elapsed().as_secs();
    let problem = if timed_out {
        Some(format!("hung: no end after {secs} s, qemu killed (CHAOS_VM_TIMEOUT_SECS sets the limit)"))
    } else if let Some(p) = console.panic {
        Some(format!("the guest kernel panicked: {p}"))
    } else {
        match console.end_code {
            None => Some("the guest stopped without reaching the end of /init (see its console above)".into()),
            Some(0) => None,
            Some(n) => Some(format!("the tests in the guest ended with status {n} (see the console above)")),
        }
    };
    eprintln!("xtask: {prefix}guest ran {secs} s");
    Ok(Outcome { tally: console.tally, problem, bench: console.bench, status: console.end_code, hung: timed_out })
}

/// Echoes each console line (cleaned of terminal control sequences) as `show` says, and notes
/// results, the end marker and a kernel panic.
fn watch(out: impl Read, marker: &str, ended: &AtomicBool, prefix: &str, show: Show) -> Result<Console> {
    let (start, end) = (format!("{marker} start"), format!("{marker} rc="));
    let mut console = Console::default();
    let mut in_command = false;
    let mut r = BufReader::new(out);
    let mut raw = Vec::new();
    while r.read_until(b'\n', &mut raw)? > 0 {
        let line = plain(&String::from_utf8_lossy(&raw));
        raw.clear();
        let end_split = line.split_once(&end);
        match show {
            Show::Console => println!("{prefix}{line}"),
            Show::Command => {
                if line.contains(&start) {
                    in_command = true;
                } else if let Some((before, _)) = end_split {
                    // The command's last line may lack its newline: the marker then ends it.
                    if in_command && !before.is_empty() {
                        println!("{before}");
                    }
                    in_command = false;
                } else if in_command {
                    println!("{line}");
                } else {
                    eprintln!("{prefix}{line}");
                }
            }
        }
        console.tally.add_line(&line);
        if let Some(b) = crate::bench::bench_line(&line) {
            console.bench.push(b.to_string());
        }
        if let Some((_, rest)) = end_split {
            console.end_code = rest.trim().parse().ok().or(Some(-1));
            ended.store(true, Ordering::Relaxed);
        }
        if line.contains("Kernel panic - not syncing") && console.panic.is_none() {
            console.panic = Some(line.trim().to_string());
        }
    }
    Ok(console)
}

/// The line without escape sequences and control characters (the firmware clears the screen with
/// `ESC c`, which would wipe the user's terminal).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\x1b' => {
                // ESC [ params final-byte, or ESC and one character.
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\t' => out.push(ch),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_terminal_controls() {
        assert_eq!(plain("\x1bcSeaBIOS\r\n"), "SeaBIOS");
        assert_eq!(plain("\x1b[2J\x1b[01;01Hok\tx"), "ok\tx");
    }

    #[test]
    fn reads_marker_results_and_panics() {
        let text = "test result: ok. 2 passed; 0 failed; 0 ignored\r\n\
                    [ 1.0] Kernel panic - not syncing: Attempted to kill init!\r\n\
                    END-1 rc=3\r\n";
        let ended = AtomicBool::new(false);
        let c = watch(text.as_bytes(), "END-1", &ended, "", Show::Console).unwrap();
        assert!(ended.load(Ordering::Relaxed));
        assert_eq!(c.tally, Tally { passed: 2, failed: 0 });
        assert_eq!(c.end_code, Some(3));
        assert!(c.panic.unwrap().contains("Attempted to kill init"));
    }

    #[test]
    fn reads_the_status_after_a_command_output_without_newline() {
        let text = "SeaBIOS\r\nEND-1 start\r\nout\r\nlastEND-1 rc=3\r\n[ 2.0] reboot: Power down\r\n";
        let ended = AtomicBool::new(false);
        let c = watch(text.as_bytes(), "END-1", &ended, "", Show::Command).unwrap();
        assert_eq!(c.end_code, Some(3));
    }
}
