//! The guest's whole file system: busybox, iproute2, setpriv, chaos, the test binaries, their
//! shared libraries, the kernel modules the tests need, vm-run's copies, and /init. Rebuilt on every
//! run (the test binaries change); it takes about a second.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::{cpio::Archive, kernel::Closure};
use crate::cmd;

/// Modules the tests need on a kernel that has them as modules (Debian's): qdiscs for delay (fq,
/// netem), veth pairs, tun (a device without Ethernet framing), ifb, TC classifiers and actions.
/// Their dependencies come from modules.dep; one built into the kernel (modules.builtin) is
/// skipped.
pub const MODULES: &[&str] = &[
    "veth",
    "tun",
    "ifb",
    "sch_ingress",
    "cls_bpf",
    "act_bpf",
    "act_gact",
    "act_mirred",
    "sch_fq",
    "sch_netem",
    "sch_htb",
    "sch_tbf",
];

/// Where the guest finds chaos (the tests read `CHAOS_BIN`, set by /init).
pub const GUEST_CHAOS: &str = "bin/chaos";

/// Host tools copied in with their libraries, replacing busybox's applets of the same name:
/// (name on the host, path in the guest, Debian package). busybox's `ip` and `tc` cannot make network
/// namespaces, fq or netem, and its shell runs its own applets ahead of PATH, so `sh -c "ip ..."`
/// would get busybox's `ip`: /bin/sh is dash, as on Debian.
const TOOLS: &[(&str, &str, &str)] = &[
    ("dash", "bin/sh", "dash"),
    ("ip", "usr/sbin/ip", "iproute2"),
    ("tc", "usr/sbin/tc", "iproute2"),
    ("setpriv", "usr/bin/setpriv", "util-linux"),
    // busybox's unshare has no --cgroup (the cgroup-namespace test needs it).
    ("unshare", "usr/bin/unshare", "util-linux"),
    // The peer the syscall-fault benchmark measures chaos against.
    ("strace", "usr/bin/strace", "strace"),
];

/// netem's delay distribution tables (`tc ... netem delay 10ms 2ms distribution normal`).
const TC_TABLES: &str = "/usr/lib/x86_64-linux-gnu/tc";

pub struct Contents<'a> {
    pub init: String,
    pub chaos: &'a Path,
    pub tests: &'a [PathBuf],
    /// The kernel's modules folder, and which of its files the guest gets.
    pub modules: Option<(&'a Path, &'a str, &'a Closure)>,
    /// Shipped as /boot/config; /init renames it to /boot/config-$(uname -r).
    pub config: Option<&'a Path>,
    /// A scratch folder for stripped copies of the Rust binaries.
    pub scratch: &'a Path,
    /// Absolute host paths (files or folders) that /init copies to the same paths (vm-run's `--copy`).
    pub copies: &'a [PathBuf],
}

/// Where the copies wait in the archive: /init moves them into place after mounting /tmp and /run,
/// which would hide them otherwise.
const COPIES: &str = "copies";

/// Writes the gzip'd initramfs to `out`.
pub fn build(c: &Contents, out: &Path) -> Result<()> {
    let mut a = Archive::default();
    for d in ["proc", "sys", "dev", "run", "tmp", "root", "tests", "etc", "lib64", "lib", "boot"] {
        a.dir(d);
    }
    // The kernel opens /dev/console for /init's stdio before anything is mounted.
    a.char_dev("dev/console", 5, 1);
    a.char_dev("dev/null", 1, 3);
    // iproute2 keeps named network namespaces in /var/run/netns; /run is a tmpfs.
    a.symlink("var/run", "/run");
    a.bytes("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644);
    // As on any installed system; the DNS tests' resolver mounts its own over it.
    a.bytes("etc/resolv.conf", "# no name servers in the guest\n", 0o644);
    a.bytes("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n", 0o644);
    a.bytes("etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644);
    a.bytes("init", c.init.clone(), 0o755);

    busybox(&mut a)?;
    for (name, guest, package) in TOOLS {
        let host = host_tool(name, package)?;
        binary(&mut a, guest, &host, &host)?;
    }
    if Path::new(TC_TABLES).is_dir() {
        for e in fs::read_dir(TC_TABLES)? {
            let p = e?.path();
            a.file(&p.to_string_lossy(), &p, 0o644);
        }
    }

    fs::create_dir_all(c.scratch)?;
    binary(&mut a, GUEST_CHAOS, &strip(c.chaos, c.scratch)?, c.chaos)?;
    // /init runs /tests/* in name order: a prefix keeps the order of `c.tests` (timing-sensitive
    // binaries last, `vm::select`).
    for (i, t) in c.tests.iter().enumerate() {
        let name = t.file_name().context("test binary without a name")?.to_string_lossy();
        binary(&mut a, &format!("tests/{i:02}-{name}"), &strip(t, c.scratch)?, t)?;
    }
    if let Some((dir, release, closure)) = c.modules {
        modules(&mut a, dir, release, closure)?;
    }
    if let Some(cfg) = c.config.filter(|p| p.is_file()) {
        a.file("boot/config", cfg, 0o644);
    }
    for p in c.copies {
        copy(&mut a, p, &format!("{COPIES}{}", p.display()))?;
    }
    a.write_gz(out)
}

/// The host file or folder `from` (followed if a symlink) at `to`, folders recursively with the
/// symlinks inside them kept as symlinks, files with their permission bits.
fn copy(a: &mut Archive, from: &Path, to: &str) -> Result<()> {
    let meta = fs::metadata(from).with_context(|| format!("reading {}", from.display()))?;
    if meta.is_dir() {
        a.dir(to);
        for e in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
            let e = e?;
            let (path, name) = (e.path(), e.file_name());
            let inner = format!("{to}/{}", name.to_string_lossy());
            if e.file_type()?.is_symlink() {
                a.symlink(&inner, &fs::read_link(&path)?.to_string_lossy());
            } else {
                copy(a, &path, &inner)?;
            }
        }
    } else if meta.is_file() {
        a.file(to, from, meta.permissions().mode() & 0o7777);
    } // sockets, fifos and devices: nothing to copy
    Ok(())
}

/// The static busybox as /bin/busybox, and a symlink for each of its applets that TOOLS does not
/// replace.
fn busybox(a: &mut Archive) -> Result<()> {
    let host = host_tool("busybox", "busybox-static")?;
    binary(a, "bin/busybox", &host, &host)?;
    let list = cmd::output(Command::new(&host).arg("--list-full"))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        if TOOLS.iter().any(|(_, guest, _)| guest.rsplit('/').next() == Some(name)) || a.contains(applet) {
            continue;
        }
        a.symlink(applet, "/bin/busybox");
    }
    Ok(())
}

/// `file` at `guest`, plus the shared libraries and loader `ldd` lists for `linked` (the unstripped
/// original, which links the same libraries), each at the path ldd names.
fn binary(a: &mut Archive, guest: &str, file: &Path, linked: &Path) -> Result<()> {
    a.file(guest, file, 0o755);
    for lib in libraries(linked)? {
        a.file(&lib, &fs::canonicalize(&lib).with_context(|| format!("resolving {lib}"))?, 0o755);
    }
    Ok(())
}

/// Absolute library paths from `ldd` (`libc.so.6 => /lib/.../libc.so.6 (0x..)` and the loader's own
/// `/lib64/ld-linux-x86-64.so.2 (0x..)`); none for a static binary.
fn libraries(bin: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd").arg(bin).output().context("could not run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || String::from_utf8_lossy(&out.stderr).contains("not a dynamic") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(p.to_string()),
            Some("not") => bail!("{}: a shared library is missing: {}", bin.display(), line.trim()),
            _ => {} // linux-vdso.so.1 and the like: provided by the kernel
        }
    }
    Ok(libs)
}

fn host_tool(name: &str, package: &str) -> Result<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not installed: `cargo xtask setup` installs {package}"))
}

/// A stripped copy of `bin` in `dir` (symbols make the test binaries several times larger, and
/// the initramfs lives in guest memory).
fn strip(bin: &Path, dir: &Path) -> Result<PathBuf> {
    let out = dir.join(bin.file_name().context("binary without a name")?);
    cmd::output(Command::new("strip").arg("--strip-all").arg("-o").arg(&out).arg(bin))
        .context("strip failed: `cargo xtask setup` installs binutils")?;
    Ok(out)
}

/// The modules of `closure`, uncompressed, and a modules.dep listing just those, for busybox's
/// modprobe. Debian 13 ships `.ko.xz` files: the guest's busybox could unpack them itself, but
/// under emulation that is slower than doing it here, and an uncompressed module loads with any
/// modprobe (the whole archive is gzip'd anyway).
fn modules(a: &mut Archive, dir: &Path, release: &str, closure: &Closure) -> Result<()> {
    let base = format!("lib/modules/{release}");
    let mut busybox = None;
    for f in &closure.files {
        let from = dir.join(f);
        if f.ends_with(".zst") {
            bail!("{}: zstd-compressed modules are not handled (busybox 1.35 cannot unpack them)", from.display());
        }
        match compression(f) {
            None => a.file(&format!("{base}/{f}"), &from, 0o644),
            Some((plain, applet)) => {
                let bb = match &busybox {
                    Some(b) => b,
                    None => busybox.insert(host_tool("busybox", "busybox-static")?),
                };
                let out = cmd::output(Command::new(bb).args([applet, "-dc"]).arg(&from))
                    .with_context(|| format!("decompressing {}", from.display()))?;
                a.bytes(&format!("{base}/{plain}"), out.stdout, 0o644);
            }
        }
    }
    let dep = fs::read_to_string(dir.join("modules.dep"))?;
    let mut kept = String::new();
    for line in dep.lines() {
        let Some((module, deps)) = line.split_once(':') else { continue };
        if closure.files.contains(module) {
            let plain = |m: &str| compression(m).map_or(m, |(p, _)| p).to_string();
            let deps: Vec<String> = deps.split_whitespace().map(plain).collect();
            kept.push_str(&format!("{}:{}{}\n", plain(module), if deps.is_empty() { "" } else { " " }, deps.join(" ")));
        }
    }
    a.bytes(&format!("{base}/modules.dep"), kept, 0o644);
    Ok(())
}

/// For a compressed module, its name without the compression suffix and the busybox applet that
/// decompresses it (`a.ko.xz` → `a.ko`, xz); `None` for a plain `.ko`.
fn compression(module: &str) -> Option<(&str, &'static str)> {
    [(".xz", "xz"), (".gz", "gzip")]
        .into_iter()
        .find_map(|(suffix, applet)| module.strip_suffix(suffix).map(|plain| (plain, applet)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_module_names() {
        assert_eq!(compression("kernel/net/sched/sch_fq.ko.xz"), Some(("kernel/net/sched/sch_fq.ko", "xz")));
        assert_eq!(compression("kernel/a.ko.gz"), Some(("kernel/a.ko", "gzip")));
        assert_eq!(compression("kernel/a.ko"), None);
    }
}
