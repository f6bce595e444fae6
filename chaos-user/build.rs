//! Builds the kernel object (chaos-ebpf, for bpfel-unknown-none with nightly and bpf-linker)
//! and leaves it in OUT_DIR, from where `include_bytes!` embeds it in the `chaos` binary.

use std::process::Command;

fn main() {
    let have = |prog: &str, arg: &str| Command::new(prog).arg(arg).output().is_ok_and(|o| o.status.success());
    if std::env::var_os("AYA_BUILD_SKIP").is_none() && !have("bpf-linker", "--version") {
        eprintln!("bpf-linker is not installed: run `cargo xtask setup` first");
        std::process::exit(1);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../chaos-ebpf");
    let root = root.to_str().expect("utf-8 path");
    println!("cargo:rerun-if-changed=../chaos-common/src");
    let pkg = aya_build::Package { name: "chaos-ebpf", root_dir: root, ..Default::default() };
    if let Err(e) = aya_build::build_ebpf([pkg], aya_build::Toolchain::default()) {
        eprintln!("building the kernel object failed: {e:#}\n(run `cargo xtask setup` if a tool is missing)");
        std::process::exit(1);
    }
}
