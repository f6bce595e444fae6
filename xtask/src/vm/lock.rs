//! `kernels.lock`: the exact Debian packages the test lanes use, with their checksums.
//!
//! Debian replaces kernel packages (a new ABI number with each update) and drops old ones from the
//! archive, so "the newest" is resolved once, on purpose, by `cargo xtask kernels update`, and every
//! run uses the pinned package. One line per pin: `NAME package=P version=V sha256=S`.
//!
//! Debian 12 packages come through the host's own apt configuration; Debian 13 (trixie) packages
//! through a private one the project owns in `~/.cache/chaos/apt/trixie/` (its own sources.list,
//! lists and cache; signatures checked with the system keyring), so the host's apt stays as it is.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cache_dir, cmd, workspace_root};

/// The pin of the Debian 6.1 cloud kernel (Debian 12).
pub const DEBIAN_CLOUD: &str = "debian-6.1-cloud";
/// The pin of the Debian 6.12 cloud kernel (Debian 13).
pub const DEBIAN_612_CLOUD: &str = "debian-6.12-cloud";
/// The pin of the kernel source the errinj kernel is built from.
pub const ERRINJ_SOURCE: &str = "errinj-source";

/// Every pin `kernels update` moves: its name, where apt finds it, and which package is newest.
const PINS: &[(&str, Source, Newest)] = &[
    (DEBIAN_CLOUD, Source::System, Newest::Abi { prefix: "linux-image-6.1.0-", suffix: "-cloud-amd64-unsigned" }),
    (DEBIAN_612_CLOUD, Source::Trixie, Newest::Abi { prefix: "linux-image-6.12.", suffix: "-cloud-amd64-unsigned" }),
    (ERRINJ_SOURCE, Source::System, Newest::Package("linux-source-6.1")),
];

/// How `kernels update` picks a pin's package.
#[derive(Clone, Copy)]
enum Newest {
    /// This package, at the version apt would install.
    Package(&'static str),
    /// The package `PREFIX<abi>SUFFIX` with the highest ABI apt knows (the ABI's numbers compared
    /// in order: `57`, or `118+deb13`, `115+deb13.1`). The meta package (`linux-image-cloud-amd64`)
    /// can lag behind the newest ABI and names the signed image, so it is not asked.
    Abi { prefix: &'static str, suffix: &'static str },
}

/// Where apt finds a pinned package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The host's apt configuration (Debian 12, bookworm).
    System,
    /// The project's private apt configuration for Debian 13 (trixie and trixie-security).
    Trixie,
}

/// One pinned Debian package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub package: String,
    pub version: String,
    pub sha256: String,
    /// Where apt finds it (from the pin's name).
    pub source: Source,
}

/// The source of pin `name`: the system's, unless PINS says otherwise.
fn source_of(name: &str) -> Source {
    PINS.iter().find(|(n, _, _)| *n == name).map_or(Source::System, |(_, s, _)| *s)
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
        (Some(package), Some(version), Some(sha256)) => {
            Ok(Some((name, Pin { package, version, sha256, source: source_of(name) })))
        }
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
    eprintln!("xtask: downloading {spec} with apt{}", pin.source.described());
    pin.source.prepare()?;
    let get = || {
        cmd::output(
            pin.source.apt("apt-get").args(["download", "-q", "-o", "APT::Sandbox::User=root", &spec]).current_dir(dir),
        )
    };
    if !(apt_knows(pin) && get().is_ok()) {
        pin.source.update()?;
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
    cmd::succeeds(pin.source.apt("apt-cache").args(["show", &format!("{}={}", pin.package, pin.version)]))
}

/// The private configuration's sources (Debian 13 and its security updates, main only).
const TRIXIE_SOURCES: &str = "deb http://deb.debian.org/debian trixie main\n\
                              deb http://deb.debian.org/debian-security trixie-security main\n";

impl Source {
    /// The private configuration's folder: `sources.list`, `lists/`, `cache/`.
    fn dir(self) -> Option<PathBuf> {
        match self {
            Source::System => None,
            Source::Trixie => Some(cache_dir().join("apt").join("trixie")),
        }
    }

    fn described(self) -> String {
        match self.dir() {
            Some(d) => format!(" (private configuration {})", d.display()),
            None => String::new(),
        }
    }

    /// `program` (apt-get or apt-cache) with this source's options: for a private configuration,
    /// its sources.list alone (no /etc/apt/sources.list.d), its own lists and cache, and apt's
    /// download sandbox user root (apt's own `_apt` user cannot write into the per-user cache).
    fn apt(self, program: &str) -> Command {
        let mut c = Command::new(program);
        if let Some(d) = self.dir() {
            c.args(["-o", "APT::Sandbox::User=root"]);
            for (key, value) in [
                ("Dir::Etc::SourceList", d.join("sources.list")),
                ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
                ("Dir::State::Lists", d.join("lists")),
                ("Dir::Cache", d.join("cache")),
            ] {
                c.arg("-o").arg(format!("{key}={}", value.display()));
            }
        }
        c
    }

    /// Writes the private configuration's sources.list and folders (nothing for the system's).
    fn prepare(self) -> Result<()> {
        let Some(d) = self.dir() else { return Ok(()) };
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(d.join(sub)).with_context(|| format!("creating {}", d.join(sub).display()))?;
        }
        let list = d.join("sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(TRIXIE_SOURCES) {
            fs::write(&list, TRIXIE_SOURCES).with_context(|| format!("writing {}", list.display()))?;
        }
        Ok(())
    }

    /// `apt-get update` of this source's lists.
    fn update(self) -> Result<()> {
        self.prepare()?;
        eprintln!("xtask: refreshing apt's package lists{}", self.described());
        cmd::run(self.apt("apt-get").args(["update", "-qq"]))
            .context("apt-get update failed: the Debian package mirror must be reachable")
    }
}

fn sha256(path: &Path) -> Result<String> {
    let out = cmd::output(Command::new("sha256sum").arg(path))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().next().unwrap_or_default().to_lowercase())
}

/// `cargo xtask kernels update`: moves each pin to the newest package apt offers and rewrites
/// kernels.lock (comments and unknown lines stay), printing old → new.
pub fn update() -> Result<()> {
    let mut updated = Vec::new();
    let mut newest = Vec::new();
    for (name, source, rule) in PINS {
        if !updated.contains(source) {
            source.update()?;
            updated.push(*source);
        }
        let package = match rule {
            Newest::Package(p) => p.to_string(),
            Newest::Abi { prefix, suffix } => newest_abi(*source, prefix, suffix)?,
        };
        newest.push((*name, candidate(*source, &package)?));
    }
    let path = lock_path();
    let old_text = fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = old_text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(
            "# Kernels the test lanes use; move with `cargo xtask kernels update` (see xtask/src/vm/lock.rs).".into(),
        );
    }
    for (name, new) in newest {
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

/// The package `PREFIX<abi>SUFFIX` with the highest ABI that `source` offers.
fn newest_abi(source: Source, prefix: &str, suffix: &str) -> Result<String> {
    let pattern = format!("^{}.*{}$", regex_escape(prefix), regex_escape(suffix));
    let out = cmd::output(source.apt("apt-cache").args(["search", "--names-only", &pattern]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| Some((abi_key(name.strip_prefix(prefix)?.strip_suffix(suffix)?)?, name.to_string())))
        .max()
        .map(|(_, name)| name)
        .with_context(|| format!("apt{} offers no {prefix}*{suffix}", source.described()))
}

/// The ABI part of a kernel package name as numbers to compare: `57` → [57], `118+deb13` →
/// [118, 13], `115+deb13.1` → [115, 13, 1]; `None` for anything else (another flavour, say).
fn abi_key(abi: &str) -> Option<Vec<u64>> {
    let (number, debian) = match abi.split_once('+') {
        Some((n, d)) => (n, Some(d.strip_prefix("deb")?)),
        None => (abi, None),
    };
    let mut key = vec![number.parse().ok()?];
    if let Some(d) = debian {
        for part in d.split('.') {
            key.push(part.parse().ok()?);
        }
    }
    Some(key)
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if ".+*?()[]{}^$|\\".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}

/// The version `source` would install of `package`, with the checksum from the (signed) archive
/// index.
fn candidate(source: Source, package: &str) -> Result<Pin> {
    let out = cmd::output(source.apt("apt-cache").args(["show", "--no-all-versions", package]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .with_context(|| format!("`apt-cache show {package}` has no {key} field"))
    };
    Ok(Pin {
        package: package.to_string(),
        version: field("Version:")?,
        sha256: field("SHA256:")?.to_lowercase(),
        source,
    })
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
        assert_eq!(
            pin,
            Pin { package: "p".into(), version: "1:2-3".into(), sha256: "abc".into(), source: Source::System }
        );
        assert!(parse_line("k package=p version=1").is_err());
        assert_eq!(format_line(name, &pin), "k package=p version=1:2-3 sha256=abc");
        let (_, pin) = parse_line("debian-6.12-cloud package=p version=1 sha256=a").unwrap().unwrap();
        assert_eq!(pin.source, Source::Trixie);
    }

    #[test]
    fn orders_kernel_abis() {
        assert_eq!(abi_key("57"), Some(vec![57]));
        assert_eq!(abi_key("118+deb13"), Some(vec![118, 13]));
        assert!(abi_key("115+deb13.1") > abi_key("115+deb13"));
        assert!(abi_key("116+deb13") > abi_key("115+deb13.1"));
        assert!(abi_key("99+deb13") < abi_key("107+deb13"));
        assert_eq!(abi_key("57-rt"), None);
        assert_eq!(abi_key("118+bpo"), None);
        assert_eq!(regex_escape("linux-image-6.12."), r"linux-image-6\.12\.");
    }
}
