//! The guest kernels: Debian's packaged cloud kernels (unpacked once per pinned version) and the
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

/// An unpacked `lib/modules/RELEASE` tree with a modules.dep from depmod. Its modules may be
/// compressed (`.ko.xz` on Debian 13).
pub struct Modules {
    pub dir: PathBuf,
    pub release: String,
}

/// A Debian cloud kernel as pinned in kernels.lock under `pin` (`lock::DEBIAN_CLOUD`,
/// `lock::DEBIAN_612_CLOUD`), unpacked into `~/.cache/chaos/kernels/PACKAGE_VERSION/` on first use.
pub fn debian_cloud(pin: &str) -> Result<Kernel> {
    let pin = lock::locked(pin)?;
    let dir = cache_dir().join("kernels").join(format!("{}_{}", pin.package, pin.version));
    if !dir.join(".unpacked").exists() {
        unpack(&lock::fetch_deb(&pin)?, &dir)?;
    }
    let modules = modules_root(&dir)?;
    let release = only_entry(&modules)?;
    Ok(Kernel {
        image: dir.join("boot").join(format!("vmlinuz-{release}")),
        config: Some(dir.join("boot").join(format!("config-{release}"))),
        modules: Some(Modules { dir: modules.join(&release), release }),
    })
}

/// `lib/modules` in an unpacked package, or `usr/lib/modules` (Debian 13 ships its files under
/// /usr only).
fn modules_root(dir: &Path) -> Result<PathBuf> {
    ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|p| dir.join(p))
        .find(|p| p.is_dir())
        .with_context(|| format!("{} has neither lib/modules nor usr/lib/modules", dir.display()))
}

/// `dpkg -x` then `depmod -b` (the package ships no modules.dep), in a temporary folder renamed
/// into place when complete, so an interrupted run leaves nothing half-done behind.
fn unpack(deb: &Path, dir: &Path) -> Result<()> {
    eprintln!("xtask: unpacking {}", deb.display());
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    cmd::run(Command::new("dpkg").arg("-x").arg(deb).arg(&tmp))?;
    let modules = modules_root(&tmp)?;
    let release = only_entry(&modules)?;
    // depmod -b BASE reads BASE/lib/modules/RELEASE.
    let base = modules.parent().and_then(Path::parent).expect("…/lib/modules has two parents");
    cmd::run(Command::new("depmod").arg("-b").arg(base).arg(&release))
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

/// What loading a list of modules takes on one kernel.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Closure {
    /// The module files (paths relative to the modules folder), dependencies included.
    pub files: BTreeSet<String>,
    /// The names to modprobe: those not built into the kernel.
    pub load: Vec<String>,
}

impl Modules {
    /// What loading `names` takes, from modules.dep (`kernel/a.ko: kernel/b.ko kernel/c.ko`) and
    /// modules.builtin (a name built in needs no file and no modprobe). Errors on a name that is
    /// neither.
    pub fn closure(&self, names: &[&str]) -> Result<Closure> {
        let read = |file: &str| {
            let path = self.dir.join(file);
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        closure(&read("modules.dep")?, &read("modules.builtin")?, names)
            .with_context(|| format!("kernel {}", self.release))
    }
}

fn closure(dep: &str, builtin: &str, names: &[&str]) -> Result<Closure> {
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    let mut by_name: HashMap<String, String> = HashMap::new();
    for line in dep.lines() {
        let Some((module, rest)) = line.split_once(':') else { continue };
        deps.insert(module.to_string(), rest.split_whitespace().map(str::to_string).collect());
        by_name.insert(module_name(module), module.to_string());
    }
    let built_in: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let mut out = Closure::default();
    for name in names {
        let name = name.replace('-', "_");
        if let Some(path) = by_name.get(&name) {
            out.files.insert(path.clone());
            // modules.dep lists the full (transitive) dependency set on each line.
            out.files.extend(deps[path].iter().cloned());
            out.load.push(name);
        } else if !built_in.contains(&name) {
            bail!("no module {name}, and it is not built in");
        }
    }
    Ok(out)
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

    #[test]
    fn closure_skips_built_in_modules() {
        let dep = "kernel/net/sched/sch_fq.ko.xz:\nkernel/net/sched/sch_fq_pie.ko.xz: kernel/net/sched/sch_pie.ko.xz\n";
        let builtin = "kernel/drivers/net/veth.ko\n";
        let c = closure(dep, builtin, &["sch_fq_pie", "veth", "sch-fq"]).unwrap();
        assert_eq!(c.load, ["sch_fq_pie", "sch_fq"]);
        assert_eq!(
            c.files.into_iter().collect::<Vec<_>>(),
            ["kernel/net/sched/sch_fq.ko.xz", "kernel/net/sched/sch_fq_pie.ko.xz", "kernel/net/sched/sch_pie.ko.xz"]
        );
        assert!(closure(dep, builtin, &["ifb"]).unwrap_err().to_string().contains("no module ifb"));
    }
}
