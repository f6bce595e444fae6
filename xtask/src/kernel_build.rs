//! Builds the error-injection kernel for the third lane (see issue 4): Debian's `linux-source-6.1`
//! at the version pinned in `kernels.lock`, configured from `tinyconfig` + `kvm_guest.config` +
//! `kernel/errinj.config`, everything built in. The bzImage is cached per machine under
//! `~/.cache/chaos/kernels/errinj-<version>-<config hash>/`, so the ~8 minute build happens once.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{
    cache_dir, cmd, setup,
    vm::lock::{self, Pin},
    workspace_root,
};

/// What `make bzImage` needs beyond a C toolchain: flex/bison for Kconfig, libelf for objtool,
/// bc for the timeconst header, libssl for the signing tools, pahole (dwarves) for BTF, xz for
/// the source tarball and tinyconfig's xz-compressed bzImage.
const BUILD_PACKAGES: &[&str] =
    &["make", "gcc", "flex", "bison", "bc", "libelf-dev", "libssl-dev", "dwarves", "xz-utils"];

/// The project's options, merged on top of these make targets (in this order).
const FRAGMENT: &str = "kernel/errinj.config";
const BASE_TARGETS: &[&str] = &["tinyconfig", "kvm_guest.config"];

/// Builds (or finds in the cache) the errinj bzImage and returns its path.
pub fn errinj_kernel() -> Result<PathBuf> {
    let fragment_path = workspace_root().join(FRAGMENT);
    let fragment = fs::read_to_string(&fragment_path).with_context(|| format!("reading {}", fragment_path.display()))?;
    let wanted = parse_config(&fragment);
    if wanted.is_empty() {
        bail!("{} sets no CONFIG_ options", fragment_path.display());
    }
    let pin = lock::locked(lock::ERRINJ_SOURCE)?;
    // The hash covers the options and the base targets, not comments or their order.
    let mut recipe = BASE_TARGETS.join(" ");
    for (name, value) in &wanted {
        recipe.push_str(&format!("\n{name}={value}"));
    }
    let key = format!("errinj-{}-{}", pin.version, short_hash(&recipe)?);
    let out = cache_dir().join("kernels").join(&key);
    let bzimage = out.join("bzImage");
    if bzimage.is_file() {
        return Ok(bzimage);
    }

    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // One build at a time per machine: a second caller waits here, then finds the result.
    let build_lock = File::create(cache_dir().join("kernels/build.lock"))?;
    build_lock.lock().context("waiting for another kernel build to finish")?;
    if bzimage.is_file() {
        return Ok(bzimage);
    }

    setup::apt_install(BUILD_PACKAGES)?;
    let deb = lock::fetch_deb(&pin)?;
    let src = unpack(&deb, &pin)?;
    // Out-of-tree build (make O=...): the unpacked source stays pristine and is shared by every
    // configuration; the build folder is reused per source version, so a fragment change rebuilds
    // incrementally.
    let build = cache_dir().join("kernels").join(format!("build-{}", pin.version));
    fs::create_dir_all(&build)?;
    let log_path = out.join("build.log");
    let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    // Runs a step in the source folder with its output in the log; on failure shows the log's tail.
    let logged = |c: &mut Command| -> Result<()> {
        c.current_dir(&src).stdout(log.try_clone()?).stderr(log.try_clone()?);
        let status = c.status().with_context(|| format!("could not start {}", cmd::show(c)))?;
        if !status.success() {
            bail!("`{}` failed; last lines of {}:\n{}", cmd::show(c), log_path.display(), tail(&log_path, 40));
        }
        Ok(())
    };
    let make = |args: &[&str]| logged(Command::new("make").arg(format!("O={}", build.display())).args(args));

    eprintln!("kernel: configuring {key}");
    for target in BASE_TARGETS {
        make(&[target])?;
    }
    let config = build.join(".config");
    let merge = src.join("scripts/kconfig/merge_config.sh");
    logged(Command::new(merge).arg("-m").arg("-O").arg(&build).arg(&config).arg(&fragment_path))?;
    make(&["olddefconfig"])?;
    check_config(&config, &wanted, &src)?;

    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    eprintln!("kernel: building {key} with {jobs} jobs (about 8 minutes on 2 cores); log: {}", log_path.display());
    let started = Instant::now();
    make(&[&format!("-j{jobs}"), "bzImage"])?;
    eprintln!("kernel: built in {:.0?}", started.elapsed());

    // The bzImage lands last, under its final name only once complete: its presence means done.
    fs::copy(&config, out.join("config"))?;
    let partial = out.join("bzImage.partial");
    fs::copy(build.join("arch/x86/boot/bzImage"), &partial)?;
    fs::rename(&partial, &bzimage)?;
    Ok(bzimage)
}

/// `CONFIG_X=value` and `# CONFIG_X is not set` lines, as name -> value ("n" for not set).
fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut options = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
            options.insert(name.to_string(), "n".to_string());
        } else if let Some((name, value)) = line.split_once('=').filter(|(n, _)| n.starts_with("CONFIG_")) {
            options.insert(name.to_string(), value.to_string());
        }
    }
    options
}

/// olddefconfig silently drops an option whose dependencies are not met: fail naming each one,
/// with what its Kconfig entry depends on.
fn check_config(config: &Path, wanted: &BTreeMap<String, String>, src: &Path) -> Result<()> {
    let got = parse_config(&fs::read_to_string(config)?);
    let mut wrong = Vec::new();
    for (name, want) in wanted {
        let have = got.get(name).map_or("n", String::as_str);
        if have != want {
            let depends = kconfig_depends(src, name.trim_start_matches("CONFIG_"));
            wrong.push(format!("  {name}: asked {want}, got {have}{depends}"));
        }
    }
    if !wrong.is_empty() {
        bail!(
            "{FRAGMENT} asks for options the resulting {} does not have (olddefconfig drops an option \
             whose dependency is missing: add the dependency to {FRAGMENT}):\n{}",
            config.display(),
            wrong.join("\n")
        );
    }
    Ok(())
}

/// The `depends on` lines of `config NAME` in the source's Kconfig files, as a hint.
fn kconfig_depends(src: &Path, name: &str) -> String {
    let mut found = Vec::new();
    find_depends(src, name, &mut found);
    if found.is_empty() { String::new() } else { format!(" (Kconfig: depends on {})", found.join("; ")) }
}

fn find_depends(dir: &Path, name: &str, found: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let (path, is_dir) = (entry.path(), entry.file_type().is_ok_and(|t| t.is_dir()));
        if is_dir {
            find_depends(&path, name, found);
        } else if entry.file_name().to_string_lossy().starts_with("Kconfig") {
            let Ok(text) = fs::read_to_string(&path) else { continue };
            // An entry's attributes are the indented lines under its unindented `config` line.
            let mut inside = false;
            for line in text.lines() {
                let trimmed = line.trim();
                if !trimmed.is_empty() && !line.starts_with([' ', '\t']) {
                    inside = trimmed == format!("config {name}") || trimmed == format!("menuconfig {name}");
                } else if let Some(dep) = trimmed.strip_prefix("depends on").filter(|_| inside) {
                    found.push(dep.trim().to_string());
                }
            }
        }
    }
}

/// Unpacks the source package and the tarball inside it, once per version.
fn unpack(deb: &Path, pin: &Pin) -> Result<PathBuf> {
    let root = cache_dir().join("src").join(format!("{}_{}", pin.package, pin.version));
    let src = root.join(&pin.package);
    let done = root.join(".unpacked");
    if done.is_file() {
        return Ok(src);
    }
    eprintln!("kernel: unpacking {} (under a minute)", deb.display());
    let _ = fs::remove_dir_all(&root);
    let deb_dir = root.join("deb");
    fs::create_dir_all(&deb_dir)?;
    cmd::run(Command::new("dpkg").arg("-x").arg(deb).arg(&deb_dir))?;
    let tarball = deb_dir.join(format!("usr/src/{}.tar.xz", pin.package));
    cmd::run(Command::new("tar").arg("-xf").arg(&tarball).arg("-C").arg(&root))
        .with_context(|| format!("unpacking {}", tarball.display()))?;
    if !src.join("Makefile").is_file() {
        bail!("{} did not hold {}/Makefile", tarball.display(), pin.package);
    }
    fs::remove_dir_all(&deb_dir)?;
    fs::write(&done, "")?;
    Ok(src)
}

/// The last `n` lines of a file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The first 12 hex digits of the SHA-256 of `text`.
fn short_hash(text: &str) -> Result<String> {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    child.stdin.take().expect("piped").write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout)[..12].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_set_unset_and_string_options() {
        let options = parse_config("# a comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_LSM=\"x,y\"\nOTHER=1\n");
        let expect = [("CONFIG_A", "y"), ("CONFIG_B", "n"), ("CONFIG_LSM", "\"x,y\"")];
        assert_eq!(options, expect.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    }

    #[test]
    fn fragment_asks_for_what_the_lane_exists_for() {
        let fragment = parse_config(&fs::read_to_string(workspace_root().join(FRAGMENT)).unwrap());
        for name in ["MODULES", "KPROBES", "FUNCTION_ERROR_INJECTION", "BPF_KPROBE_OVERRIDE", "DEBUG_INFO_BTF", "BPF_LSM"] {
            assert_eq!(fragment.get(&format!("CONFIG_{name}")).map(String::as_str), Some("y"), "CONFIG_{name}");
        }
    }
}
