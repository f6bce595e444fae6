//! Builds the kernel object (chaos-ebpf, for bpfel-unknown-none with nightly and bpf-linker)
//! and leaves it in OUT_DIR, from where `include_bytes!` embeds it in the `chaos` binary.
//!
//! What aya-build does, plus `-C target-cpu=v3`: the fetching atomic add that makes
//! `--max-injections` exact across CPUs is a BPF ISA v3 instruction (Linux 5.12+), and aya-build
//! sets the rustflags itself with no way to add one.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const TARGET: &str = "bpfel-unknown-none";

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../chaos-ebpf");
    for watched in ["../chaos-ebpf/src", "../chaos-ebpf/Cargo.toml", "../chaos-common/src"] {
        println!("cargo:rerun-if-changed={watched}");
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    if let Err(e) = build(&root, &out_dir) {
        eprintln!("building the kernel object failed: {e}\n(run `cargo xtask setup` if a tool is missing)");
        std::process::exit(1);
    }
}

fn build(root: &Path, out_dir: &Path) -> Result<(), String> {
    let have = |prog: &str, arg: &str| Command::new(prog).arg(arg).output().is_ok_and(|o| o.status.success());
    if !have("bpf-linker", "--version") {
        return Err("bpf-linker is not installed".into());
    }
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").map_err(|_| "CARGO_CFG_TARGET_ARCH is not set")?;
    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-cpu=v3".into(),
    ];
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--package", "chaos-ebpf", "--bins", "--release"])
        .args(["--message-format=json", "--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(out_dir.join("ebpf-target"))
        .current_dir(root)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        // Nothing to read: the nested cargo's rustc probe (`rustc -`) reads its stdin as source,
        // and an inherited one once held another build script's compiler output (ring's `cc -?`,
        // built beside it), failing the build with "failed to run `rustc` to learn about
        // target-specific information".
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("running `rustup run nightly cargo`: {e}"))?;
    let stderr = child.stderr.take().expect("piped");
    let relay = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut executable = None;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines().map_while(Result::ok) {
        // Only the two fields needed, without a JSON parser in the build script.
        if line.contains("\"reason\":\"compiler-artifact\"")
            && let Some(rest) = line.split("\"executable\":\"").nth(1)
            && let Some(path) = rest.split('"').next()
        {
            executable = Some(PathBuf::from(path));
        }
        if line.contains("\"reason\":\"compiler-message\"")
            && let Some(rest) = line.split("\"rendered\":\"").nth(1)
        {
            let rendered = rest.split("\",\"").next().unwrap_or_default().replace("\\n", "\n");
            for l in rendered.lines() {
                println!("cargo:warning={l}");
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let errors = relay.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("cargo build of chaos-ebpf failed ({status}):\n{errors}"));
    }
    let executable = executable.ok_or("cargo built no chaos-ebpf binary")?;
    std::fs::copy(&executable, out_dir.join("chaos")).map_err(|e| format!("copying {}: {e}", executable.display()))?;
    Ok(())
}
