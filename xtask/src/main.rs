//! Project tasks: set-up, build, the test lanes, the demo. `cargo xtask --help` lists them.

mod bench;
mod cmd;
mod kernel_build;
mod long_form;
mod setup;
mod test;
mod vm;

use std::{
    path::{Component, Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and demo chaos")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and tests need (idempotent; quick when nothing is missing).
    Setup,
    /// Set up, then build the release `chaos` binary (kernel object embedded).
    Build,
    /// Set up, build, then run `chaos demo`.
    Demo,
    /// Set up, build, run every test lane, and print one combined `N passed, N failed` line.
    Test {
        /// Only the host lane (the running kernel).
        #[arg(long)]
        host_only: bool,
    },
    /// Build (once per machine) the error-injection kernel for the third lane; print its bzImage path.
    KernelBuild,
    /// Set up, build, and run the integration tests inside a qemu guest on one kernel.
    VmTest {
        /// Which kernel the guest boots.
        #[arg(long, value_enum, default_value = "debian-6.1-cloud")]
        kernel: vm::Lane,
        /// Passed to each test binary (test name filters, `--exact`, ...).
        #[arg(last = true)]
        filter: Vec<String>,
    },
    /// Set up, build, and run one command inside a vm-test guest (chaos, ip and tc on PATH); exit
    /// with its status. Its output is on stdout, the guest's boot on stderr.
    VmRun {
        /// Which kernel the guest boots.
        #[arg(long, value_enum, default_value = "debian-6.1-cloud")]
        kernel: vm::Lane,
        /// A host file or folder (recursively) to put at the same absolute path in the guest.
        #[arg(long, value_name = "PATH", value_parser = guest_copy)]
        copy: Vec<PathBuf>,
        /// Stop the guest and fail if the command has not ended by then (90s, 10m, 1h).
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = duration)]
        timeout: Duration,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Measure what chaos costs the traffic it watches, side by side with the baseline; writes
    /// BENCHMARKS.md.
    Bench,
    /// The long form of the hostile-input tests: every parser's generated cases
    /// (chaos-user/tests/fuzz.rs), many more of them than the test lanes run.
    Fuzz {
        /// Cases per target.
        #[arg(long, default_value_t = 100_000)]
        cases: u32,
    },
    /// The long form of the survival tests on the running kernel: `chaos` SIGKILLed at many random
    /// moments of a session with every fault kind (tests/tests/kill_points.rs), then a session's
    /// memory sampled under constant traffic (tests/tests/load.rs).
    Soak {
        /// Random kill moments.
        #[arg(long, default_value_t = 100)]
        kills: u32,
        /// How long the memory run lasts.
        #[arg(long, default_value = "10m", value_parser = duration)]
        memory_for: Duration,
    },
    /// Learn strace's syscall sets (%file, %network, ...) from the strace on PATH and write them
    /// to chaos-user/src/faults/syscall_sets.rs.
    SyscallSets,
    /// Manage the kernels the VM lanes use (kernels.lock).
    Kernels {
        #[command(subcommand)]
        action: KernelsAction,
    },
}

#[derive(Subcommand)]
enum KernelsAction {
    /// Move each pin in kernels.lock to the newest package apt offers (prints old → new).
    Update,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli.task) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            build_release()
        }
        Task::Demo => {
            setup::run()?;
            build_release()?;
            cmd::run(std::process::Command::new(chaos_binary()).arg("demo"))
        }
        Task::Test { host_only } => {
            // A run that cannot even build still ends with the combined line.
            if let Err(e) = setup::run().and_then(|_| build_release()) {
                eprintln!("xtask: {e:#}");
                println!("0 passed, 1 failed");
                std::process::exit(1);
            }
            test::run(host_only)
        }
        Task::VmTest { kernel, filter } => {
            setup::run()?;
            vm::vm_test(kernel, &filter)
        }
        Task::VmRun { kernel, copy, timeout, command } => {
            setup::run()?;
            let status = vm::vm_run(kernel, &command, &copy, timeout)?;
            std::process::exit(status)
        }
        Task::Kernels { action: KernelsAction::Update } => vm::lock::update(),
        Task::Bench => {
            setup::run()?;
            build_release()?;
            bench::run()
        }
        Task::Fuzz { cases } => {
            setup::run()?;
            let mut c = cmd::cargo();
            c.args(["test", "--release", "--package", "chaos-user", "--test", "fuzz", "--", "--nocapture"]).env("CHAOS_FUZZ_CASES", cases.to_string());
            let mut rows = vec!["| target | cases | refused as bad input | failures |".to_string(), "|---|---:|---:|---:|".to_string()];
            rows.extend(long_form::run_marked(&mut c)?);
            let heading = format!(
                "### Fuzzing: `cargo xtask fuzz`, {cases} cases per target ({})\n\n\
                 `chaos-user/tests/fuzz.rs` (proptest): each target's cases, and how many of them chaos refused as bad input\n\
                 (one line, a usage exit) rather than accepted. A failure (a panic, or an error that is not one clean line) fails\n\
                 the run, so a table here has none.",
                long_form::when()
            );
            long_form::write("fuzz", &heading, &rows)
        }
        Task::Soak { kills, memory_for } => {
            setup::run()?;
            build_release()?;
            let mut c = cmd::cargo();
            c.args(["test", "--release", "--package", "chaos-tests", "--test", "kill_points", "--", "--nocapture", "a_kill_at_a_random_moment"])
                .env("CHAOS_KILL_RANDOM", kills.to_string())
                .env("CHAOS_LANE", "host");
            let mut lines = long_form::run_marked(&mut c)?;
            let mut c = cmd::cargo();
            c.args(["test", "--release", "--package", "chaos-tests", "--test", "load", "--", "--nocapture", "chaos_memory_stays_flat"])
                .env("CHAOS_SOAK_SECS", memory_for.as_secs().to_string())
                .env("CHAOS_LANE", "host");
            lines.extend(long_form::run_marked(&mut c)?);
            let heading = format!(
                "### Survival: `cargo xtask soak` on the host ({})\n\n\
                 `tests/tests/kill_points.rs` and `tests/tests/load.rs`, natively: the figures of a run that passed (a kill that\n\
                 leaves anything behind, or memory that grows, fails it).",
                long_form::when()
            );
            long_form::write("soak", &heading, &lines)
        }
        Task::SyscallSets => {
            setup::run()?;
            build_release()?;
            let out = std::process::Command::new(chaos_binary()).args(["workload", "strace-sets", "--rust"]).output()?;
            anyhow::ensure!(out.status.success(), "learning the sets: {}", String::from_utf8_lossy(&out.stderr).trim());
            let path = workspace_root().join("chaos-user/src/faults/syscall_sets.rs");
            std::fs::write(&path, &out.stdout)?;
            cmd::run(std::process::Command::new("rustfmt").args(["--edition", "2024"]).arg(&path))?;
            eprintln!("xtask: wrote {}", path.display());
            Ok(())
        }
        Task::KernelBuild => {
            println!("{}", kernel_build::errinj_kernel()?.display());
            Ok(())
        }
    }
}

/// `cargo build --release -p chaos-user`: the build script builds and embeds the kernel object.
pub fn build_release() -> Result<()> {
    cmd::run(cmd::cargo().args(["build", "--release", "--package", "chaos-user"]))
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

/// The release `chaos` binary where cargo builds it: under `CARGO_TARGET_DIR` if set (`.ci/run`
/// sets it to the per-user cache, so a fresh clone reuses the dependencies built before), else
/// under the workspace's `target/`.
pub fn chaos_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"));
    workspace_root().join(target).join("release/chaos")
}

/// The per-user cache outside the work tree, shared by every clone on this machine (CI builds a
/// fresh clone in another folder, and must find the same downloads and builds).
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("chaos")
}

/// A `--copy` path: it must exist; made absolute (without `.` and `..`) because it lands at the
/// same absolute path in the guest.
fn guest_copy(arg: &str) -> Result<PathBuf, String> {
    let absolute = std::path::absolute(arg).map_err(|e| format!("{arg}: {e}"))?;
    let mut path = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::ParentDir => {
                path.pop();
            }
            Component::CurDir => {}
            c => path.push(c),
        }
    }
    if path == Path::new("/") {
        return Err("copying / itself is not supported".into());
    }
    if !path.exists() {
        return Err(format!("{} does not exist", path.display()));
    }
    Ok(path)
}

/// `90`, `90s`, `10m` or `1h`.
fn duration(arg: &str) -> Result<Duration, String> {
    let (number, unit) = arg.split_at(arg.find(|c: char| !c.is_ascii_digit()).unwrap_or(arg.len()));
    let n: u64 = number.parse().map_err(|_| format!("`{arg}` is not a duration like 90s, 10m or 1h"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("`{arg}`: the unit must be s, m or h")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(duration("10 min").is_err());
        assert!(duration("m").is_err());
    }

    #[test]
    fn copy_paths_are_absolute_and_must_exist() {
        let here = std::env::current_dir().unwrap();
        assert_eq!(guest_copy("src/../src/./main.rs"), Ok(here.join("src/main.rs")));
        assert!(guest_copy("no/such/file").unwrap_err().contains("does not exist"));
        assert!(guest_copy("/tmp/..").is_err());
    }
}
