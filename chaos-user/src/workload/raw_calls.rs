//! The calls `syscall-loop` makes where a test needs one syscall exactly: each a raw syscall (so
//! libc substitutes no other), with everything it needs made before the first call, so the loop
//! makes no other call a fault on the listed syscalls could count.

use std::{
    ffi::CString,
    io,
    net::{TcpListener, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd, IntoRawFd, RawFd},
        unix::{ffi::OsStrExt, net::UnixDatagram, net::UnixStream},
    },
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Result;

/// One call, given its number (from 1): what it returned, or its error.
pub type Call = Box<dyn Fn(u64) -> io::Result<i64> + Sync>;

/// The calls this module makes, by the name `--call` takes.
pub const NAMES: &[&str] = &[
    "read", "mmap", "mmap-file", "mprotect", "ioctl", "fcntl", "flock", "stat", "chmod", "mkdir", "rmdir", "unlink", "rename", "link", "symlink", "readlink", "fork",
    "kill", "exec", "nanosleep", "socketpair", "udp-bind", "udp-connect", "listen", "accept4", "recvfrom", "getsockname", "getpeername", "shutdown",
];

fn check(r: libc::c_long) -> io::Result<i64> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("a path without NUL")
}

/// A file in `dir`, made if missing: what the file calls act on.
fn file(dir: &Path) -> Result<std::path::PathBuf> {
    let f = dir.join("file");
    if !f.exists() {
        std::fs::write(&f, b"chaos")?;
    }
    Ok(f)
}

/// `call`, made `count` times, with its objects in the directory `dir`.
pub fn prepare(call: &str, dir: &Path, count: u64) -> Result<Call> {
    // The k-th call's own name, for calls that make or remove one.
    let named = |what: &str| -> Vec<CString> { (0..=count).map(|k| c(&dir.join(format!("{what}.{k}")))).collect() };
    let open_fd = || -> Result<RawFd> { Ok(std::fs::File::open(file(dir)?)?.into_raw_fd()) };
    // SAFETY (every `unsafe` below): raw syscalls given valid pointers to live buffers, paths and
    // fds owned by this process for its whole life; a failure is an errno, never UB.
    Ok(match call {
        "read" => {
            let fd = open_fd()?;
            Box::new(move |_| {
                let mut b = [0u8; 1];
                check(unsafe { libc::syscall(libc::SYS_read, fd, b.as_mut_ptr(), 1) })
            })
        }
        "mmap" => Box::new(|_| {
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            let addr = check(unsafe { libc::syscall(libc::SYS_mmap, 0, 4096, libc::PROT_READ, flags, -1, 0) })?;
            unsafe { libc::syscall(libc::SYS_munmap, addr, 4096) };
            Ok(0)
        }),
        "mmap-file" => {
            let fd = open_fd()?;
            Box::new(move |_| {
                let addr = check(unsafe { libc::syscall(libc::SYS_mmap, 0, 4096, libc::PROT_READ, libc::MAP_PRIVATE, fd, 0) })?;
                unsafe { libc::syscall(libc::SYS_munmap, addr, 4096) };
                Ok(0)
            })
        }
        "mprotect" => {
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            let addr = check(unsafe { libc::syscall(libc::SYS_mmap, 0, 4096, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) })?;
            Box::new(move |k| check(unsafe { libc::syscall(libc::SYS_mprotect, addr, 4096, if k % 2 == 0 { libc::PROT_READ } else { libc::PROT_READ | libc::PROT_WRITE }) }))
        }
        "ioctl" => {
            let fd = open_fd()?;
            Box::new(move |_| {
                let mut n: libc::c_int = 0;
                check(unsafe { libc::syscall(libc::SYS_ioctl, fd, libc::FIONREAD, &mut n) })
            })
        }
        "fcntl" => {
            let fd = open_fd()?;
            Box::new(move |_| check(unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) }))
        }
        "flock" => {
            let fd = open_fd()?;
            Box::new(move |_| check(unsafe { libc::syscall(libc::SYS_flock, fd, libc::LOCK_SH) }))
        }
        "stat" => {
            let f = c(&file(dir)?);
            Box::new(move |_| {
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                check(unsafe { libc::syscall(libc::SYS_newfstatat, libc::AT_FDCWD, f.as_ptr(), st.as_mut_ptr(), 0) })
            })
        }
        "chmod" => {
            let f = c(&file(dir)?);
            Box::new(move |_| check(unsafe { libc::syscall(libc::SYS_chmod, f.as_ptr(), 0o644) }))
        }
        "mkdir" => {
            let names = named("mkdir");
            Box::new(move |k| check(unsafe { libc::syscall(libc::SYS_mkdir, names[k as usize].as_ptr(), 0o755) }))
        }
        "rmdir" => {
            let names = named("rmdir");
            for n in &names {
                std::fs::create_dir_all(std::ffi::OsStr::from_bytes(n.as_bytes()))?;
            }
            Box::new(move |k| check(unsafe { libc::syscall(libc::SYS_rmdir, names[k as usize].as_ptr()) }))
        }
        "unlink" => {
            let names = named("unlink");
            for n in &names {
                std::fs::write(std::ffi::OsStr::from_bytes(n.as_bytes()), b"")?;
            }
            Box::new(move |k| check(unsafe { libc::syscall(libc::SYS_unlink, names[k as usize].as_ptr()) }))
        }
        "rename" => {
            let names = named("rename");
            std::fs::write(std::ffi::OsStr::from_bytes(names[0].as_bytes()), b"")?;
            // The file's name now: a refused rename leaves it.
            let now = AtomicU64::new(0);
            Box::new(move |k| {
                let from = now.load(Ordering::Relaxed) as usize;
                let r = check(unsafe { libc::syscall(libc::SYS_rename, names[from].as_ptr(), names[k as usize].as_ptr()) });
                if r.is_ok() {
                    now.store(k, Ordering::Relaxed);
                }
                r
            })
        }
        "link" => {
            let (f, names) = (c(&file(dir)?), named("link"));
            Box::new(move |k| check(unsafe { libc::syscall(libc::SYS_link, f.as_ptr(), names[k as usize].as_ptr()) }))
        }
        "symlink" => {
            let (f, names) = (c(&file(dir)?), named("symlink"));
            Box::new(move |k| check(unsafe { libc::syscall(libc::SYS_symlink, f.as_ptr(), names[k as usize].as_ptr()) }))
        }
        "readlink" => {
            let link = dir.join("readlink");
            if !link.exists() {
                std::os::unix::fs::symlink(file(dir)?, &link)?;
            }
            let link = c(&link);
            Box::new(move |_| {
                let mut b = [0u8; 256];
                check(unsafe { libc::syscall(libc::SYS_readlink, link.as_ptr(), b.as_mut_ptr(), b.len()) })
            })
        }
        "fork" => Box::new(|_| {
            let pid = check(unsafe { libc::syscall(libc::SYS_fork) })?;
            if pid == 0 {
                // The child: gone at once, making no call.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
            Ok(0)
        }),
        "kill" => Box::new(|_| check(unsafe { libc::syscall(libc::SYS_kill, libc::getpid(), 0) })),
        // 5 ms asleep: a call whose time is known.
        "nanosleep" => Box::new(|_| {
            let t = libc::timespec { tv_sec: 0, tv_nsec: 5_000_000 };
            check(unsafe { libc::syscall(libc::SYS_nanosleep, &t, 0) })
        }),
        // A child (made by posix_spawn: clone3 or clone, no fork) executes /bin/true.
        "exec" => Box::new(|_| std::process::Command::new("/bin/true").status().map(|s| s.code().unwrap_or(-1) as i64)),
        "socketpair" => Box::new(|_| {
            let mut fds = [0 as libc::c_int; 2];
            check(unsafe { libc::syscall(libc::SYS_socketpair, libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) })?;
            unsafe { libc::close(fds[0]) };
            unsafe { libc::close(fds[1]) };
            Ok(0)
        }),
        "udp-bind" => {
            // A fresh socket for each bind (a bound socket cannot bind again).
            let socks: Vec<RawFd> = (0..=count).map(|_| udp_socket()).collect::<io::Result<_>>()?;
            let addr = sockaddr_loopback(0);
            Box::new(move |k| check(unsafe { libc::syscall(libc::SYS_bind, socks[k as usize], &addr, size_of::<libc::sockaddr_in>()) }))
        }
        "udp-connect" => {
            // A UDP socket may connect again and again; nothing is sent.
            let (to, fd) = (UdpSocket::bind("127.0.0.1:0")?, udp_socket()?);
            let addr = sockaddr_loopback(to.local_addr()?.port());
            std::mem::forget(to);
            Box::new(move |_| check(unsafe { libc::syscall(libc::SYS_connect, fd, &addr, size_of::<libc::sockaddr_in>()) }))
        }
        "listen" => {
            let fd = TcpListener::bind("127.0.0.1:0")?.into_raw_fd();
            Box::new(move |_| check(unsafe { libc::syscall(libc::SYS_listen, fd, 16) }))
        }
        "accept4" => {
            // Every connection waits in the backlog before the first accept.
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let clients: Vec<TcpStream> = (0..count).map(|_| TcpStream::connect(listener.local_addr()?)).collect::<io::Result<_>>()?;
            std::mem::forget(clients);
            let fd = listener.into_raw_fd();
            Box::new(move |_| {
                let r = check(unsafe { libc::syscall(libc::SYS_accept4, fd, 0, 0, libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) })?;
                unsafe { libc::close(r as RawFd) };
                Ok(0)
            })
        }
        "recvfrom" => {
            // Every datagram queued before the first receive.
            let (a, b) = UnixDatagram::pair()?;
            for _ in 0..count {
                a.send(b"x")?;
            }
            std::mem::forget(a);
            let fd = b.into_raw_fd();
            Box::new(move |_| {
                let mut buf = [0u8; 16];
                check(unsafe { libc::syscall(libc::SYS_recvfrom, fd, buf.as_mut_ptr(), buf.len(), libc::MSG_DONTWAIT, 0, 0) })
            })
        }
        "getsockname" | "getpeername" => {
            let (a, b) = UnixStream::pair()?;
            let fd = a.as_raw_fd();
            std::mem::forget((a, b));
            let nr = if call == "getsockname" { libc::SYS_getsockname } else { libc::SYS_getpeername };
            Box::new(move |_| {
                let mut addr = std::mem::MaybeUninit::<libc::sockaddr_un>::uninit();
                let mut len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
                check(unsafe { libc::syscall(nr, fd, addr.as_mut_ptr(), &mut len) })
            })
        }
        "shutdown" => {
            let (a, b) = UnixStream::pair()?;
            let fd = a.as_raw_fd();
            std::mem::forget((a, b));
            Box::new(move |_| check(unsafe { libc::syscall(libc::SYS_shutdown, fd, libc::SHUT_RD) }))
        }
        other => anyhow::bail!("no call {other}"),
    })
}

fn udp_socket() -> io::Result<RawFd> {
    // SAFETY: socket(2) has no pointer arguments.
    check(unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }).map(|fd| fd as RawFd)
}

fn sockaddr_loopback(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    }
}
