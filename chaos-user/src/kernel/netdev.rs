//! Network namespaces and devices: where the egress TC program must sit.
//!
//! The TC program decides from the cgroup of a packet's socket, so it must see the packet while
//! the socket is still attached: on the devices of the namespace the target's sockets live in (for
//! a container, its own namespace; crossing a veth into another namespace orphans the packet).
//! Attaching there means entering it: `setns` on a short-lived thread, so the rest of the process
//! never changes namespace, and anything named by ifindex is only ever acted on inside it.

use std::{
    collections::BTreeSet,
    fs::File,
    io,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

use crate::{error::{Error, Result}, target::Cgroup, unsupported, usage};

/// An open handle on a network namespace. Holding it keeps the namespace (and so the session's
/// devices in it) reachable for detaching, however the processes in it come and go.
#[derive(Debug)]
pub struct Netns {
    pub file: File,
    pub ino: u64,
    /// Where it was found (for the journal).
    pub path: PathBuf,
}

impl Netns {
    /// Opens `path`. Another user's `/proc/PID/ns/net` needs CAP_SYS_PTRACE: that is exit 3
    /// naming it; a path that is no namespace is bad input.
    pub fn open(path: &Path) -> Result<Netns> {
        let file = File::open(path).map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => unsupported!(
                "opening the network namespace {} was refused ({e}): reading another user's process's namespace needs CAP_SYS_PTRACE",
                path.display()
            ),
            _ => usage!("cannot open network namespace {} ({e}): give a namespace file such as /run/netns/NAME or /proc/PID/ns/net", path.display()),
        })?;
        let ino = file.metadata().map_err(|e| Error::Other(e.into()))?.ino();
        Ok(Netns { file, ino, path: path.to_path_buf() })
    }

    /// Runs `f` on a thread inside this namespace and returns its result. Entering another
    /// namespace needs CAP_SYS_ADMIN: without it, exit 3 naming it.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    if e == nix::errno::Errno::EPERM {
                        unsupported!(
                            "entering the network namespace {} was refused (EPERM): it needs CAP_SYS_ADMIN",
                            self.path.display()
                        )
                    } else {
                        Error::Other(anyhow::anyhow!("entering network namespace {}: {e}", self.path.display()))
                    }
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| Error::Other(anyhow::anyhow!("a thread inside network namespace {} panicked", self.path.display())))?
        })
    }
}

/// The inode of this process's own network namespace.
pub fn own_netns_ino() -> u64 {
    std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0)
}

/// The network namespaces the processes of `cg` live in, one path per namespace.
pub fn netns_of(cg: &Cgroup) -> Vec<(u64, PathBuf)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for pid in cg.pids() {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        match std::fs::metadata(&path) {
            Ok(m) => {
                if seen.insert(m.ino()) {
                    out.push((m.ino(), path));
                }
            }
            // stat of another user's namespace link is refused without CAP_SYS_PTRACE: keep the
            // path so that opening it reports that.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => out.push((0, path)),
            Err(_) => {}
        }
    }
    out
}

/// Every device of the current thread's network namespace: (ifindex, name).
pub fn devices() -> Vec<(u32, String)> {
    match nix::net::if_::if_nameindex() {
        Ok(list) => list.iter().map(|i| (i.index(), i.name().to_string_lossy().into_owned())).collect(),
        Err(e) => {
            log::warn!("listing network devices: {e}");
            Vec::new()
        }
    }
}

/// Whether device `name` of the current thread's namespace frames packets as Ethernet does (a
/// 14-byte header: Ethernet, veth, bridge, loopback), from its hardware type (SIOCGIFHWADDR).
/// The packet program reads headers in place on those, and with a helper on the others.
pub fn ethernet_framing(name: &str) -> bool {
    const ARPHRD_ETHER: u16 = 1;
    const ARPHRD_LOOPBACK: u16 = 772;
    // SAFETY: SIOCGIFHWADDR fills the ifreq's hardware-address member, read here.
    ifreq(name, libc::SIOCGIFHWADDR).is_some_and(|r| matches!(unsafe { r.ifr_ifru.ifru_hwaddr.sa_family }, ARPHRD_ETHER | ARPHRD_LOOPBACK))
}

/// Whether device `name` of the current thread's namespace is up (IFF_UP, SIOCGIFFLAGS).
pub fn is_up(name: &str) -> bool {
    // SAFETY: SIOCGIFFLAGS fills the ifreq's flags member, read here.
    ifreq(name, libc::SIOCGIFFLAGS).is_some_and(|r| unsafe { r.ifr_ifru.ifru_flags } as libc::c_int & libc::IFF_UP != 0)
}

/// The ifreq a read-only device ioctl (`request`) fills for device `name`, if it succeeds.
fn ifreq(name: &str, request: libc::Ioctl) -> Option<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a socket made and closed here; `ifr` is a zeroed, properly sized ifreq whose name
    // field gets at most IFNAMSIZ-1 bytes (checked above) and stays NUL-terminated; the ioctl
    // writes only into it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in name.bytes().enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        let ok = libc::ioctl(fd, request, &mut ifr) == 0;
        libc::close(fd);
        ok.then_some(ifr)
    }
}
