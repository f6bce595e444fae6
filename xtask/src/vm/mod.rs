//! The qemu test lanes: the integration tests run inside a guest booted from a real distribution
//! kernel (Debian 12's 6.1 cloud, Debian 13's 6.12 cloud) or the self-built errinj kernel, on a
//! busybox initramfs. `vm-run` boots the same guest to run one command instead.
//!
//! Cache layout (`~/.cache/chaos/`): `debs/` the pinned packages, `apt/trixie/` the private apt
//! configuration Debian 13's packages come through, `kernels/PACKAGE_VERSION/` the unpacked Debian
//! kernels, `vm/LANE/` the initramfs of each run while it lasts.

mod cpio;
mod initramfs;
mod kernel;
pub mod lock;
mod qemu;

use std::{
    fs,
    io::BufRead,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};

use crate::{cache_dir, chaos_binary, cmd, setup};
pub use qemu::Outcome;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lane {
    /// Debian 12's packaged 6.1 cloud kernel (pinned in kernels.lock).
    #[value(name = "debian-6.1-cloud")]
    DebianCloud,
    /// The self-built 6.1 kernel with error injection and kprobe override.
    #[value(name = "errinj")]
    Errinj,
    /// Debian 13's packaged 6.12 cloud kernel (pinned in kernels.lock): tcx, sch_fq and the BPF
    /// LSM in one kernel.
    #[value(name = "debian-6.12-cloud")]
    Debian612Cloud,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::DebianCloud, Lane::Errinj, Lane::Debian612Cloud];

    pub fn name(self) -> &'static str {
        match self {
            Lane::DebianCloud => "debian-6.1-cloud",
            Lane::Errinj => "errinj",
            Lane::Debian612Cloud => "debian-6.12-cloud",
        }
    }

    /// The integration test binaries (by target name) this lane runs under `cargo xtask test`
    /// (`vm-test` always runs all). The guests share this machine's two cores with the host lane,
    /// so each binary runs where its outcome depends on what that kernel has, not everywhere:
    /// - errinj is the same 6.1.192 kernel as debian-6.1-cloud with the same packet backends, which
    ///   that lane covers; it alone has fmod_ret on syscalls and kprobe override, so it runs the
    ///   syscall and session tests whose outcome depends on them (and, for the 6.1 kernel, the
    ///   targeting and fault-file tests), and the one session of every fault kind frozen past its
    ///   deadline (`frozen`: every backend at once, fq and the LSM with netlink TC);
    /// - debian-6.1-cloud is the lane of TC through netlink with fq and netem: every packet test;
    /// - neither Debian lane runs what is the same on every kernel and runs on the host (the CLI,
    ///   tp_btf and the cgroup syscall hooks: `sys signal`, `sys delay`, `-- CMD`), nor what errinj
    ///   runs on the same 6.1 kernel;
    /// - debian-6.12-cloud runs what tcx with fq, and its newer verifier, can change: the probe, device
    ///   attachment, the delay and fq-shaped faults, sessions, and the LSM syscall faults; the other
    ///   packet tests are the host's (tcx) and 6.1's (fq, netem), the fault files errinj's.
    /// - the real containers (`podman`) are the host's alone: the guests have no container runtime;
    ///   so is the guardian's wedge check (`wedged`), user space's alone on every kernel.
    pub fn full_run_tests(self) -> Tests {
        match self {
            Lane::Errinj => Tests::Only(&["probe", "sys_fail", "sys_delay", "apply", "targets", "experiment", "kill_points", "frozen"]),
            Lane::DebianCloud => Tests::AllBut(&["cli", "sys_signal", "sys_delay", "sys_command", "sys_fail", "apply", "targets", "experiment", "metrics", "otlp", "corpus", "kill_points", "load", "frozen", "wedged", "containers", "proc_faults", "podman", "agent", "kubernetes"]),
            Lane::Debian612Cloud => Tests::Only(&["probe", "devices", "net_delay", "net_faults", "sessions", "sys_fail", "kill_points"]),
        }
    }
}

/// Which integration test binaries a lane runs, by target name.
#[derive(Clone, Copy, Debug)]
pub enum Tests {
    All,
    Only(&'static [&'static str]),
    AllBut(&'static [&'static str]),
}

/// Test threads per binary in the guest: one per vCPU (2 gave the same results as 1 in 25% less
/// time; CHAOS_VM_TEST_THREADS=1 runs them one by one).
const TEST_THREADS: u64 = 2;
/// The default limit for one boot (emulation is slow; CHAOS_VM_TIMEOUT_SECS overrides it).
const TIMEOUT_SECS: u64 = 20 * 60;

/// `cargo xtask vm-test`: one lane, its own `N passed, N failed` line; an error if it failed.
pub fn vm_test(lane: Lane, filter: &[String]) -> Result<()> {
    let outcome = run_lane(lane, filter)?;
    println!("{} passed, {} failed", outcome.tally.passed, outcome.tally.failed);
    match outcome.problem {
        Some(p) => bail!("{} lane failed: {p}", lane.name()),
        None => Ok(()),
    }
}

/// Variables of this environment the guest's tests get when they are set here: which sections of
/// the benchmark (tests/tests/bench_peers.rs) run.
const PASSED_ON: &[&str] = &["CHAOS_BENCH_SECTIONS"];

/// Boots the lane's kernel and runs the integration tests (those matching `filter`) inside, with
/// the variables of `PASSED_ON` that are set here.
/// Errors before the boot (set-up, build) are returned; what happened in the guest is in `Outcome`.
pub fn run_lane(lane: Lane, filter: &[String]) -> Result<Outcome> {
    let env: Vec<(&str, String)> = PASSED_ON.iter().filter_map(|name| std::env::var(name).ok().map(|v| (*name, v))).collect();
    prepare(lane, filter, Tests::All, &env)?.boot()
}

/// `cargo xtask vm-run`: boots the lane's guest, runs `argv` in it after /init's set-up, with
/// `copies` at their host paths, and returns the command's exit status.
pub fn vm_run(lane: Lane, argv: &[String], copies: &[PathBuf], timeout: Duration) -> Result<i32> {
    let prepared = prepare_job(lane, Job { command: true, args: argv, copies, timeout, tests: Tests::All, env: &[] })?;
    let outcome = prepared.boot();
    drop(prepared);
    let outcome = outcome?;
    if outcome.hung {
        bail!("the command did not end within {} s; qemu killed (--timeout sets the limit)", timeout.as_secs());
    }
    match outcome.status {
        Some(status) => Ok(status),
        None => bail!("{}", outcome.problem.unwrap_or_else(|| "the guest gave no exit status".into())),
    }
}

/// What the guest's /init runs after its set-up.
struct Job<'a> {
    /// `args` is one command to run (vm-run), not arguments for every test binary.
    command: bool,
    args: &'a [String],
    /// Host paths copied in at the same paths.
    copies: &'a [PathBuf],
    timeout: Duration,
    /// Only these integration test binaries (by target name); `None` for all.
    tests: Tests,
    /// Environment variables the tests (or the command) get.
    env: &'a [(&'a str, String)],
}

/// A lane ready to boot: its kernel and initramfs built.
pub struct Prepared {
    lane: Lane,
    image: PathBuf,
    initrd: PathBuf,
    marker: String,
    timeout: Duration,
    show: qemu::Show,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.initrd);
    }
}

impl Prepared {
    /// Boots the guest and runs its job; its console lines are prefixed with the lane's name
    /// (lanes boot side by side: with single-threaded TCG each takes one host core).
    pub fn boot(&self) -> Result<Outcome> {
        let prefix = format!("[{}] ", self.lane.name());
        qemu::run(&self.image, &self.initrd, &self.marker, self.timeout, &prefix, self.show)
    }
}

/// Everything before the boot of a test lane (see `prepare_job`); `tests` chooses the test
/// binaries, which get the environment variables `env`.
pub fn prepare(lane: Lane, filter: &[String], tests: Tests, env: &[(&str, String)]) -> Result<Prepared> {
    let timeout = Duration::from_secs(env_number("CHAOS_VM_TIMEOUT_SECS", TIMEOUT_SECS)?);
    prepare_job(lane, Job { command: false, args: filter, copies: &[], timeout, tests, env })
}

/// Everything before the boot: set-up, the kernel (downloaded or built), the release binary, the
/// test binaries (none for a command), the initramfs.
fn prepare_job(lane: Lane, job: Job) -> Result<Prepared> {
    eprintln!("xtask: {} lane", lane.name());
    setup::vm()?;
    let kernel = match lane {
        Lane::DebianCloud => kernel::debian_cloud(lock::DEBIAN_CLOUD)?,
        Lane::Debian612Cloud => kernel::debian_cloud(lock::DEBIAN_612_CLOUD)?,
        Lane::Errinj => {
            let image = crate::kernel_build::errinj_kernel()?;
            let config = image.parent().map(|d| d.join("config"));
            kernel::Kernel { image, modules: None, config }
        }
    };
    crate::build_release()?;
    let dir = cache_dir().join("vm").join(lane.name());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tests = if job.command { Vec::new() } else { select(test_binaries()?, job.tests)? };
    if tests.is_empty() && !job.command {
        eprintln!("xtask: warning: no integration test binaries to run in the guest");
    }
    let marker = end_marker();
    let threads = env_number("CHAOS_VM_TEST_THREADS", TEST_THREADS)?;
    let closure = kernel.modules.as_ref().map(|m| m.closure(initramfs::MODULES)).transpose()?;
    let mut init = format!(
        "#!/bin/sh\nEND={marker}\nMODULES='{}'\nTHREADS={threads}\nRUN={}\nexport CHAOS_LANE={}\nset -- {}\n",
        closure.as_ref().map(|c| c.load.join(" ")).unwrap_or_default(),
        if job.command { "command" } else { "tests" },
        lane.name(),
        job.args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "),
    );
    for (name, value) in job.env {
        init += &format!("export {name}={}\n", quote(value));
    }
    init.push_str(include_str!("init.sh"));
    let scratch = dir.join(format!("strip-{}", std::process::id()));
    // Each run's image has a name of its own (and goes when it is dropped): another run of the
    // same lane at the same time (vm-run beside a test lane, a CI clone beside a developer's run)
    // must not boot it or overwrite it.
    let initrd = dir.join(format!("{}-{}.cpio.gz", if job.command { "run" } else { "initramfs" }, std::process::id()));
    let started = Instant::now();
    let built = initramfs::build(
        &initramfs::Contents {
            init,
            chaos: &chaos_binary(),
            tests: &tests,
            modules: kernel.modules.as_ref().zip(closure.as_ref()).map(|(m, c)| (m.dir.as_path(), m.release.as_str(), c)),
            config: kernel.config.as_deref(),
            scratch: &scratch,
            copies: job.copies,
        },
        &initrd,
    );
    let _ = fs::remove_dir_all(&scratch);
    built.context("building the initramfs")?;
    let size = fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "xtask: initramfs {} ({:.1} MB) built in {:.1} s; booting {} under qemu (software emulation)",
        initrd.display(),
        size as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        kernel.image.display()
    );

    let show = if job.command { qemu::Show::Command } else { qemu::Show::Console };
    Ok(Prepared { lane, image: kernel.image, initrd, marker, timeout: job.timeout, show })
}

/// The integration test executables: `cargo test --no-run` on chaos-tests, or the paths in
/// CHAOS_VM_TEST_BINARIES (colon-separated; for trying the lane with a test binary of one's own).
fn test_binaries() -> Result<Vec<PathBuf>> {
    if let Some(list) = std::env::var_os("CHAOS_VM_TEST_BINARIES") {
        return Ok(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()).collect());
    }
    // The whole workspace's tests, built as the host lane builds them (`test::host_lane`): one
    // feature resolution, so the host lane finds every artifact built and compiles nothing.
    let mut c = cmd::cargo();
    c.args(["test", "--release", "--no-run", "--message-format=json", "--workspace", "--exclude", "chaos-ebpf"]);
    let out = cmd::output(c.stderr(std::process::Stdio::inherit()))
        .context("building the integration tests failed (the compiler's messages are above)")?;
    let mut bins = Vec::new();
    for line in out.stdout.as_slice().lines() {
        let msg: serde_json::Value = serde_json::from_str(&line?).unwrap_or_default();
        let is_test = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"));
        let integration = msg["manifest_path"].as_str().is_some_and(|m| m.ends_with("tests/Cargo.toml"));
        if msg["reason"] == "compiler-artifact"
            && is_test
            && integration
            && let Some(exe) = msg["executable"].as_str()
        {
            bins.push(PathBuf::from(exe));
        }
    }
    Ok(bins)
}

/// The binaries among `all` that `tests` selects; an error if a name it lists matches none, so a
/// renamed test file cannot drop out of (or into) a lane unnoticed.
fn select(all: Vec<PathBuf>, tests: Tests) -> Result<Vec<PathBuf>> {
    let (names, keep) = match tests {
        Tests::All => return Ok(all),
        Tests::Only(names) => (names, true),
        Tests::AllBut(names) => (names, false),
    };
    // cargo names a test executable `<target>-<hash>`.
    let target = |p: &PathBuf| {
        let file = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        file.rsplit_once('-').map_or(file.clone(), |(t, _)| t.to_string())
    };
    if let Some(missing) = names.iter().find(|n| !all.iter().any(|p| target(p) == **n)) {
        bail!("no integration test binary `{missing}` (tests/tests/{missing}.rs) to select for the guest");
    }
    let mut chosen: Vec<PathBuf> = all.into_iter().filter(|p| names.contains(&target(p).as_str()) == keep).collect();
    // The delay-accuracy tests last: a guest lane starts when the host lane ends, while errinj's
    // still runs, and three emulated guests on two cores made fq release held packets 10-25% late.
    chosen.sort_by_key(|p| TIMING_SENSITIVE.contains(&target(p).as_str()));
    Ok(chosen)
}

/// Test binaries whose figures (a delay's median, EDT beside netem) a loaded machine skews.
const TIMING_SENSITIVE: &[&str] = &["edt_ground", "net_delay", "net_faults", "net_loss_models"];

/// The marker of the lines /init prints at the end (and, for vm-run, before the command); the
/// nonce keeps test output from faking it.
fn end_marker() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("CHAOS-VM-END-{:08x}{:x}", nanos, std::process::id())
}

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().with_context(|| format!("{name}={v} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// Single-quotes `s` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_test_binaries_by_target_name() {
        let all: Vec<PathBuf> =
            ["/t/sys_fail-0a1b", "/t/net_faults-2c3d", "/t/probe-4e5f"].iter().map(PathBuf::from).collect();
        assert_eq!(select(all.clone(), Tests::All).unwrap(), all);
        assert_eq!(
            select(all.clone(), Tests::Only(&["probe", "sys_fail"])).unwrap(),
            [PathBuf::from("/t/sys_fail-0a1b"), PathBuf::from("/t/probe-4e5f")]
        );
        assert_eq!(select(all.clone(), Tests::AllBut(&["probe", "sys_fail"])).unwrap(), [PathBuf::from("/t/net_faults-2c3d")]);
        assert!(select(all.clone(), Tests::Only(&["sys"])).is_err());
        let both = select(all.clone(), Tests::Only(&["net_faults", "probe"])).unwrap();
        assert_eq!(both, [PathBuf::from("/t/probe-4e5f"), PathBuf::from("/t/net_faults-2c3d")], "timing-sensitive binaries last");
        assert!(select(all, Tests::AllBut(&["sys"])).is_err());
    }
}
