//! A gzip'd cpio archive in the kernel's `newc` format, written directly: no staging folder, and
//! device nodes, owners and modes are set without needing root or touching the host.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use flate2::{Compression, write::GzEncoder};

enum Entry {
    Dir,
    File { from: Source, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

enum Source {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// The archive's entries by path (no leading `/`). Sorted order puts every folder before what it
/// holds, which the kernel's unpacker needs.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return;
        }
        self.parents(path);
        self.entries.entry(path.to_string()).or_insert(Entry::Dir);
    }

    /// A copy of the host file `from` (symlinks followed) at `path`; replaces what was there.
    pub fn file(&mut self, path: &str, from: &Path, mode: u32) {
        self.put(path, Entry::File { from: Source::Host(from.to_path_buf()), mode });
    }

    pub fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) {
        self.put(path, Entry::File { from: Source::Bytes(data.into()), mode });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.put(path, Entry::Symlink(target.to_string()));
    }

    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.put(path, Entry::CharDev { major, minor });
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_matches('/'))
    }

    fn put(&mut self, path: &str, entry: Entry) {
        let path = path.trim_matches('/');
        self.parents(path);
        self.entries.insert(path.to_string(), entry);
    }

    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    /// Writes the archive gzip'd at the fastest level (no name or time in the header, so the
    /// same files give the same bytes) to `out`, via a temporary file renamed into place.
    pub fn write_gz(&self, out: &Path) -> Result<()> {
        let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut gz = GzEncoder::new(std::io::BufWriter::new(file), Compression::fast());
        self.write_to(&mut gz)?;
        gz.finish()?.flush().with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, out).with_context(|| format!("moving {} to {}", tmp.display(), out.display()))
    }

    fn write_to(&self, w: &mut impl Write) -> Result<()> {
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let ino = ino as u32 + 1;
            match entry {
                Entry::Dir => header(w, ino, 0o040755, 2, 0, (0, 0), path)?,
                Entry::Symlink(target) => {
                    header(w, ino, 0o120777, 1, target.len(), (0, 0), path)?;
                    data(w, target.as_bytes())?;
                }
                Entry::CharDev { major, minor } => header(w, ino, 0o020600, 1, 0, (*major, *minor), path)?,
                Entry::File { from, mode } => {
                    let bytes = match from {
                        Source::Host(p) => fs::read(p).with_context(|| format!("reading {}", p.display()))?,
                        Source::Bytes(b) => b.clone(),
                    };
                    header(w, ino, 0o100000 | mode, 1, bytes.len(), (0, 0), path)?;
                    data(w, &bytes)?;
                }
            }
        }
        header(w, 0, 0, 1, 0, (0, 0), "TRAILER!!!")
    }
}

/// One `newc` header (110 ASCII bytes: magic and 13 hex fields) and the NUL-terminated name, padded
/// to a multiple of 4. Owner root, mtime 0 (the archive depends only on its contents).
fn header(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> Result<()> {
    let fields = [ino, mode, 0, 0, nlink, 0, size as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
    let mut h = String::from("070701");
    for f in fields {
        h.push_str(&format!("{f:08x}"));
    }
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, 110 + name.len() + 1)
}

fn data(w: &mut impl Write, bytes: &[u8]) -> Result<()> {
    w.write_all(bytes)?;
    pad(w, bytes.len())
}

fn pad(w: &mut impl Write, len: usize) -> Result<()> {
    w.write_all(&[0; 3][..(4 - len % 4) % 4])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut a = Archive::default();
        a.bytes("etc/x", "hi", 0o644);
        a.symlink("bin/sh", "busybox");
        let mut out = Vec::new();
        a.write_to(&mut out).unwrap();
        // Parents first, then entries in path order, then the trailer.
        let names: Vec<&str> = ["bin", "bin/sh", "etc", "etc/x", "TRAILER!!!"].to_vec();
        let mut pos = 0;
        for name in names {
            assert_eq!(&out[pos..pos + 6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&out[pos + 6 + 8 * i..][..8]).unwrap(), 16).unwrap() as usize
            };
            let (size, namesize) = (field(6), field(11));
            assert_eq!(&out[pos + 110..pos + 110 + namesize - 1], name.as_bytes());
            pos += (110 + namesize).div_ceil(4) * 4;
            pos += size.div_ceil(4) * 4;
        }
        assert_eq!(pos, out.len());
    }
}
