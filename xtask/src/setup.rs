//! `cargo xtask setup`: everything the build and the tests need, installed idempotently.
//! Each step checks first and does nothing when its result is already there.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{cache_dir, cmd};

/// Debian packages the host lane uses: iproute2 for the tests' network namespaces and veth
/// pairs, util-linux (setpriv) to drop capabilities in the exit-3 test, bind9-dnsutils for `dig`,
/// one of the resolver clients the DNS-fault test reads the kernel's answers with; chromium, in
/// which a test renders an experiment's HTML report headless.
pub const HOST_PACKAGES: &[&str] = &["iproute2", "util-linux", "bind9-dnsutils", "chromium"];

/// Debian packages the VM lanes use: qemu; busybox, iproute2 and util-linux (setpriv) to copy into
/// the guest; kmod for depmod; binutils to strip the guest's binaries; cpio to inspect an initramfs.
pub const VM_PACKAGES: &[&str] =
    &["qemu-system-x86", "busybox-static", "iproute2", "util-linux", "kmod", "binutils", "cpio", "strace"];

const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";

pub fn run() -> Result<()> {
    apt_install(HOST_PACKAGES)?;
    rust_src()?;
    bpf_linker()?;
    podman()?;
    Ok(())
}

/// What the VM lanes need on top of `run()`.
pub fn vm() -> Result<()> {
    apt_install(VM_PACKAGES)
}

/// Installs the Debian packages that are missing (`--no-install-recommends`), running
/// `apt-get update` once first only when something is to be installed.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    cmd::run(Command::new("apt-get").args(["update", "-qq"]).envs(env))
        .context("apt-get update failed: the Debian package mirror must be reachable")?;
    cmd::run(
        Command::new("apt-get")
            // Another apt run (a second clone's set-up) may hold the lock for a while.
            .args(["install", "-y", "-qq", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600"])
            .args(&missing)
            .envs(env),
    )
}

/// The nightly toolchain's `rust-src`, needed for `-Z build-std=core` (the one download outside
/// the package registries; RUSTUP_AUTO_INSTALL=0 means nothing installs it implicitly).
fn rust_src() -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", NIGHTLY]))
        .context("rustup cannot list the nightly toolchain's components: a nightly toolchain is required")?;
    if String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
        .context("could not install rust-src for nightly (the Rust distribution server must be reachable)")
}

/// bpf-linker, linked against the nightly toolchain's own libLLVM (the only LLVM here new enough
/// to read rustc's bitcode with the BPF backend built in). The LLVM "prefix" is a folder of
/// symlinks in the cache; the binary finds libLLVM through its rpath there.
fn bpf_linker() -> Result<()> {
    let sysroot = String::from_utf8(
        cmd::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?.stdout,
    )?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}: the nightly toolchain is incomplete", libdir.display()))?;
    let prefix = cache_dir().join("llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = lib.join(name);
        let target = libdir.join(&libllvm);
        if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link)?;
        }
    }
    let version = Command::new("bpf-linker").arg("--version").output();
    if matches!(&version, Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against the toolchain's libLLVM (about 90 s)");
    let status = Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", &prefix)
        .status()?;
    if !status.success() {
        bail!("building bpf-linker failed; see the cargo output above");
    }
    Ok(())
}

/// Debian 12's podman 4.3 for the host lane's container tests (tests/tests/podman.rs), and what it
/// needs on this kind of machine: runc (crun, podman's first choice, refuses the hybrid cgroup
/// layout here), netavark for the default bridge network and iptables for the rules netavark
/// writes, and busybox-static, the test image's one program.
pub const PODMAN_PACKAGES: &[&str] = &["podman", "runc", "netavark", "iptables", "busybox-static"];

/// The image the container tests run (`podman import` of a busybox root file system). Its tag is
/// the recipe's version: change it when `test_image` changes. tests/tests/podman.rs names it too.
pub const TEST_IMAGE: &str = "localhost/chaos-test:busybox-1";

/// Where podman (root) reads settings added to its defaults (/usr/share/containers/containers.conf).
const CONTAINERS_CONF: &str = "/etc/containers/containers.conf.d/50-chaos-tests.conf";

/// The settings podman needs on this kind of machine, each measured with podman 4.3.
const CONTAINERS_CONF_TEXT: &str = r#"# Written by `cargo xtask setup` (chaos's container tests); rewritten when it differs.
[containers]
# podman raises a root container's open-files limit to 1048576 by default; root here lacks
# CAP_SYS_RESOURCE (the bounding set drops it), so runc failed "setting rlimit type 7: operation not
# permitted". With no default limits the container keeps podman's own.
default_ulimits = []

[engine]
# crun, podman's first choice when installed, refuses this host's hybrid cgroup layout (v1
# controllers beside a cgroup2 mount at /sys/fs/cgroup/unified): "cgroups in hybrid mode not
# supported". runc runs the container and puts its processes in the cgroup2 hierarchy too, at
# /libpod_parent/libpod-ID, where chaos finds them.
runtime = "runc"
"#;

/// podman, its settings and the test image: each only when missing or different.
fn podman() -> Result<()> {
    apt_install(PODMAN_PACKAGES)?;
    let conf = Path::new(CONTAINERS_CONF);
    if std::fs::read_to_string(conf).ok().as_deref() != Some(CONTAINERS_CONF_TEXT) {
        eprintln!("setup: writing {CONTAINERS_CONF}");
        std::fs::create_dir_all(conf.parent().expect("a folder"))?;
        std::fs::write(conf, CONTAINERS_CONF_TEXT).with_context(|| format!("writing {CONTAINERS_CONF}"))?;
    }
    if cmd::succeeds(Command::new("podman").args(["image", "exists", TEST_IMAGE])) {
        return Ok(());
    }
    test_image()
}

/// `TEST_IMAGE` from a root file system made here: the static busybox with a link per applet, and
/// empty folders where the tests bind-mount the host's `chaos` and the libraries it links.
fn test_image() -> Result<()> {
    eprintln!("setup: building the container tests' image {TEST_IMAGE}");
    let scratch = cache_dir().join(format!("image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let built = (|| -> Result<()> {
        let root = scratch.join("root");
        for dir in ["bin", "etc", "tmp", "proc", "sys", "dev", "lib", "lib64", "usr/lib", "usr/local/bin"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying /bin/busybox (busybox-static)")?;
        let list = cmd::output(Command::new("/bin/busybox").arg("--list"))?;
        for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| !a.is_empty() && *a != "busybox") {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
        std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
        let tar = scratch.join("root.tar");
        cmd::run(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).args(["--owner=0", "--group=0", "."]))?;
        cmd::output(Command::new("podman").arg("import").args(["--change", "CMD=[\"/bin/sh\"]"]).arg(&tar).arg(TEST_IMAGE))
            .context("podman import of the test image failed")?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    built
}
