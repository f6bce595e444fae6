//! `kernels.lock`: the exact Debian packages the test lanes use, with their checksums.
//!
//! Debian replaces kernel packages (a new ABI number with each update) and drops old ones from the
//! archive, so "the newest" is resolved once, on purpose, by `cargo xtask kernels update`, and every
//! run uses the pinned package. One line per pin: `NAME package=P version=V sha256=S`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cache_dir, cmd, workspace_root};

/// The pin of the Debian 6.1 cloud kernel (the second lane).
pub const DEBIAN_CLOUD: &str = "debian-6.1-cloud";
/// The pin of the kernel source the errinj kernel is built from (the third lane).
pub const ERRINJ_SOURCE: &str = "errinj-source";

/// One pinned Debian package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub package: String,
    pub version: String,
    pub sha256: String,
}

fn lock_path() -> PathBuf {
    workspace_root().join("kernels.lock")
}

/// The pin called `name` in kernels.lock.
pub fn locked(name: &str) -> Result<Pin> {
    let path = lock_path();
    let text = fs::read_to_string(&path)
        .with_context(|| format!("reading {}: run `cargo xtask kernels update` to create it", path.display()))?;
    for line in text.lines() {
        if let Some((n, pin)) = parse_line(line)?
            && n == name
        {
            return Ok(pin);
        }
    }
    bail!("{} has no `{name}` line: run `cargo xtask kernels update` to add it", path.display())
}

/// Parses `NAME package=P version=V sha256=S`; `None` for blank and `#` comment lines.
fn parse_line(line: &str) -> Result<Option<(&str, Pin)>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let name = words.next().expect("line is not empty");
    let (mut package, mut version, mut sha256) = (None, None, None);
    for word in words {
        match word.split_once('=') {
            Some(("package", v)) => package = Some(v.to_string()),
            Some(("version", v)) => version = Some(v.to_string()),
            Some(("sha256", v)) => sha256 = Some(v.to_lowercase()),
            _ => bail!("kernels.lock: `{word}` in line `{line}` is not package=, version= or sha256="),
        }
    }
    match (package, version, sha256) {
        (Some(package), Some(version), Some(sha256)) => Ok(Some((name, Pin { package, version, sha256 }))),
        _ => bail!("kernels.lock: line `{line}` needs package=, version= and sha256="),
    }
}

fn format_line(name: &str, pin: &Pin) -> String {
    format!("{name} package={} version={} sha256={}", pin.package, pin.version, pin.sha256)
}

/// The pinned .deb in `~/.cache/chaos/debs/`, downloaded with `apt-get download` unless a file with
/// the pinned checksum is already there.
pub fn fetch_deb(pin: &Pin) -> Result<PathBuf> {
    let dir = cache_dir().join("debs");
    let dest = dir.join(format!("{}_{}.deb", pin.package, pin.version.replace(':', "%3a")));
    if dest.exists() && sha256(&dest)? == pin.sha256 {
        return Ok(dest);
    }
    // A private folder per process: two clones fetching at once must not write the same file.
    let tmp = dir.join(format!(".download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let fetched = download(pin, &tmp);
    let result = fetched.and_then(|deb| {
        let sum = sha256(&deb)?;
        if sum != pin.sha256 {
            bail!(
                "{}={} downloaded with sha256 {sum}, but kernels.lock pins {}: the archive changed the package \
                 or the download is corrupt; retry, and if it persists check and run `cargo xtask kernels update`",
                pin.package,
                pin.version,
                pin.sha256
            );
        }
        fs::rename(&deb, &dest).with_context(|| format!("moving {} to {}", deb.display(), dest.display()))
    });
    let _ = fs::remove_dir_all(&tmp);
    result.map(|()| dest)
}

/// `apt-get download package=version` into `dir`; refreshes apt's lists once if apt does not know
/// the version or the download fails (stale lists name files the mirror no longer has).
fn download(pin: &Pin, dir: &Path) -> Result<PathBuf> {
    let spec = format!("{}={}", pin.package, pin.version);
    eprintln!("xtask: downloading {spec} with apt");
    let get = || {
        cmd::output(
            Command::new("apt-get").args(["download", "-q", "-o", "APT::Sandbox::User=root", &spec]).current_dir(dir),
        )
    };
    if !(apt_knows(pin) && get().is_ok()) {
        apt_update()?;
        if !apt_knows(pin) {
            bail!(
                "the pinned {spec} is gone from the Debian archive: run `cargo xtask kernels update` to move the pin"
            );
        }
        get().with_context(|| format!("apt-get download {spec} failed (is the Debian mirror reachable?)"))?;
    }
    let deb = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {spec} left no .deb in {}", dir.display()))?;
    Ok(deb)
}

fn apt_knows(pin: &Pin) -> bool {
    cmd::succeeds(Command::new("apt-cache").args(["show", &format!("{}={}", pin.package, pin.version)]))
}

fn apt_update() -> Result<()> {
    eprintln!("xtask: refreshing apt's package lists");
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update failed: the Debian package mirror must be reachable")
}

fn sha256(path: &Path) -> Result<String> {
    let out = cmd::output(Command::new("sha256sum").arg(path))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().next().unwrap_or_default().to_lowercase())
}

/// `cargo xtask kernels update`: moves each pin to the newest package apt offers and rewrites
/// kernels.lock (comments and unknown lines stay), printing old → new.
pub fn update() -> Result<()> {
    apt_update()?;
    let newest = [(DEBIAN_CLOUD, newest_cloud_kernel()?), (ERRINJ_SOURCE, "linux-source-6.1".to_string())];
    let path = lock_path();
    let old_text = fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = old_text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(
            "# Kernels the test lanes use; move with `cargo xtask kernels update` (see xtask/src/vm/lock.rs).".into(),
        );
    }
    for (name, package) in newest {
        let new = candidate(&package)?;
        let at = lines.iter().position(|l| matches!(parse_line(l), Ok(Some((n, _))) if n == name));
        let old = at.and_then(|i| parse_line(&lines[i]).ok().flatten().map(|(_, p)| p));
        match &old {
            Some(old) if *old == new => println!("{name}: {} {} (unchanged)", new.package, new.version),
            Some(old) => println!("{name}: {} {} → {} {}", old.package, old.version, new.package, new.version),
            None => println!("{name}: (none) → {} {}", new.package, new.version),
        }
        match at {
            Some(i) => lines[i] = format_line(name, &new),
            None => lines.push(format_line(name, &new)),
        }
    }
    fs::write(&path, lines.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))
}

/// The `linux-image-6.1.0-NN-cloud-amd64-unsigned` with the highest NN apt knows. (The meta package
/// `linux-image-cloud-amd64` can lag behind the newest ABI, so it is not asked.)
fn newest_cloud_kernel() -> Result<String> {
    let out = cmd::output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
    ]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let abi = name.strip_prefix("linux-image-6.1.0-")?.strip_suffix("-cloud-amd64-unsigned")?;
            Some((abi.parse::<u32>().ok()?, name.to_string()))
        })
        .max()
        .map(|(_, name)| name)
        .context("apt offers no linux-image-6.1.0-*-cloud-amd64-unsigned: is this Debian 12 with its security archive?")
}

/// The version apt would install of `package`, with the checksum from the (signed) archive index.
fn candidate(package: &str) -> Result<Pin> {
    let out = cmd::output(Command::new("apt-cache").args(["show", "--no-all-versions", package]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .with_context(|| format!("`apt-cache show {package}` has no {key} field"))
    };
    Ok(Pin { package: package.to_string(), version: field("Version:")?, sha256: field("SHA256:")?.to_lowercase() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pins_and_skips_comments() {
        assert_eq!(parse_line("# comment").unwrap(), None);
        assert_eq!(parse_line("   ").unwrap(), None);
        let (name, pin) = parse_line("k package=p version=1:2-3 sha256=ABC").unwrap().unwrap();
        assert_eq!(name, "k");
        assert_eq!(pin, Pin { package: "p".into(), version: "1:2-3".into(), sha256: "abc".into() });
        assert!(parse_line("k package=p version=1").is_err());
        assert_eq!(format_line(name, &pin), "k package=p version=1:2-3 sha256=abc");
    }
}
