//! The guest kernels: Debian's packaged cloud kernel (unpacked once per pinned version) and the
//! self-built errinj kernel.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::lock;
use crate::{cache_dir, cmd};

/// What qemu boots, and where its modules are (none for a kernel with everything built in).
pub struct Kernel {
    pub image: PathBuf,
    pub modules: Option<Modules>,
    /// The kernel's build configuration, shipped as /boot/config-RELEASE as a distribution does
    /// (`chaos probe` names the option behind a refusal from it).
    pub config: Option<PathBuf>,
}

/// An unpacked `lib/modules/RELEASE` tree with a modules.dep from depmod.
pub struct Modules {
    pub dir: PathBuf,
    pub release: String,
}

/// Debian's 6.1 cloud kernel as pinned in kernels.lock, unpacked into
/// `~/.cache/chaos/kernels/PACKAGE_VERSION/` on first use.
pub fn debian_cloud() -> Result<Kernel> {
    let pin = lock::locked(lock::DEBIAN_CLOUD)?;
    let dir = cache_dir().join("kernels").join(format!("{}_{}", pin.package, pin.version));
    if !dir.join(".unpacked").exists() {
        unpack(&lock::fetch_deb(&pin)?, &dir)?;
    }
    let release = only_entry(&dir.join("lib/modules"))?;
    Ok(Kernel {
        image: dir.join("boot").join(format!("vmlinuz-{release}")),
        config: Some(dir.join("boot").join(format!("config-{release}"))),
        modules: Some(Modules { dir: dir.join("lib/modules").join(&release), release }),
    })
}

/// `dpkg -x` then `depmod -b` (the package ships no modules.dep), in a temporary folder renamed
/// into place when complete, so an interrupted run leaves nothing half-done behind.
fn unpack(deb: &Path, dir: &Path) -> Result<()> {
    eprintln!("xtask: unpacking {}", deb.display());
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    cmd::run(Command::new("dpkg").arg("-x").arg(deb).arg(&tmp))?;
    let release = only_entry(&tmp.join("lib/modules"))?;
    cmd::run(Command::new("depmod").arg("-b").arg(&tmp).arg(&release))
        .context("depmod failed: `cargo xtask setup` installs kmod")?;
    fs::write(tmp.join(".unpacked"), "")?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&tmp, dir).with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))
}

fn only_entry(dir: &Path) -> Result<String> {
    let names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one kernel release in {}, found {names:?}", dir.display()),
    }
}

impl Modules {
    /// The module files (paths relative to `dir`) needed to load `names`, dependencies included,
    /// from modules.dep (`kernel/a.ko: kernel/b.ko kernel/c.ko`). Errors on an unknown name.
    pub fn closure(&self, names: &[&str]) -> Result<BTreeSet<String>> {
        let dep_file = self.dir.join("modules.dep");
        let text = fs::read_to_string(&dep_file).with_context(|| format!("reading {}", dep_file.display()))?;
        let mut deps: HashMap<String, Vec<String>> = HashMap::new();
        let mut by_name: HashMap<String, String> = HashMap::new();
        for line in text.lines() {
            let Some((module, rest)) = line.split_once(':') else { continue };
            deps.insert(module.to_string(), rest.split_whitespace().map(str::to_string).collect());
            by_name.insert(module_name(module), module.to_string());
        }
        let mut out = BTreeSet::new();
        for name in names {
            let path = by_name
                .get(&name.replace('-', "_"))
                .with_context(|| format!("kernel {} has no module {name}", self.release))?;
            out.insert(path.clone());
            // modules.dep lists the full (transitive) dependency set on each line.
            out.extend(deps[path].iter().cloned());
        }
        Ok(out)
    }
}

/// `kernel/net/sched/sch_fq.ko` → `sch_fq` (modprobe treats `-` and `_` alike).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/net/sched/sch_fq.ko"), "sch_fq");
        assert_eq!(module_name("kernel/drivers/net/ifb.ko.xz"), "ifb");
        assert_eq!(module_name("kernel/x/nf-nat.ko"), "nf_nat");
    }
}
