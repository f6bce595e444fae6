//! Project tasks: set-up, build, the test lanes, the demo. `cargo xtask --help` lists them.

mod bench;
mod cmd;
mod kernel_build;
mod setup;
mod test;
mod vm;

use std::path::PathBuf;

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
    /// Measure what chaos costs the traffic it watches, side by side with the baseline; writes
    /// BENCHMARKS.md.
    Bench,
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
            cmd::run(std::process::Command::new(workspace_root().join("target/release/chaos")).arg("demo"))
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
        Task::Kernels { action: KernelsAction::Update } => vm::lock::update(),
        Task::Bench => {
            setup::run()?;
            build_release()?;
            bench::run()
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

/// The per-user cache outside the work tree, shared by every clone on this machine (CI builds a
/// fresh clone in another folder, and must find the same downloads and builds).
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("chaos")
}
