//! Small, self-contained traffic programs for the demo and the tests (`chaos workload ...`,
//! hidden from help). Each prints one JSON object on stdout when done (rr-client: one per
//! interval) and `ready` on stderr once its socket is bound. Loops are bounded in count and time.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::mpsc,
    time::{Duration, Instant},
};

mod dns;
mod http_client;
mod http_service;
mod raw_calls;
mod retry_client;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Args, Debug)]
pub struct WorkloadArgs {
    #[command(subcommand)]
    pub kind: Workload,
}

#[derive(Subcommand, Debug)]
pub enum Workload {
    /// Make every x86_64 syscall once, each denied by a seccomp filter (nothing is done), for
    /// strace to classify (`strace-sets`).
    EverySyscall,
    /// Learn strace's syscall sets from the strace at --strace (JSON; --rust: the source of
    /// `faults/syscall_sets.rs`).
    StraceSets {
        #[arg(long, default_value = "strace")]
        strace: std::path::PathBuf,
        #[arg(long)]
        rust: bool,
    },
    /// Count UDP datagrams until stdin closes (the sender is done) and none arrives for --idle.
    UdpSink {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        idle: Duration,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        max: Duration,
        /// Read each datagram's skb->mark (SO_RCVMARK, Linux 5.19+) and count datagrams by mark.
        #[arg(long)]
        marks: bool,
        /// Read each datagram's ECN field (IP_RECVTOS, IPV6_RECVTCLASS) and count those marked
        /// Congestion Experienced.
        #[arg(long)]
        ecn: bool,
    },
    /// Send --count datagrams at --rate per second.
    UdpSend(UdpSendArgs),
    /// Accept one TCP connection and read it to the end.
    TcpSink {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        max: Duration,
    },
    /// Send --bytes over one TCP connection; report the retransmissions TCP_INFO counted.
    TcpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        max: Duration,
    },
    /// Answer each 32-byte request on a new TCP connection with 32 bytes.
    RrServer {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        max: Duration,
    },
    /// Make one syscall --count times in each of --threads threads: open (and close) a file,
    /// fsync it, connect to --to (a new TCP socket each time), socket (a UDP socket, closed),
    /// bind (a new UDP socket to 127.0.0.1:0), sendto (--to, from one unconnected UDP socket),
    /// getsockopt/setsockopt (on one UDP socket), write (a byte to --path, or to /dev/null),
    /// getppid. Counts the results by errno and the values successful calls returned, and lists
    /// which calls (from 1, per thread) failed.
    SyscallLoop {
        /// The call; those of `raw_calls::NAMES` are raw syscalls acting on objects made in the
        /// directory --path before the first call.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(
            ["open", "fsync", "connect", "socket", "bind", "sendto", "getsockopt", "setsockopt", "write", "getppid"].iter().chain(raw_calls::NAMES)))]
        call: String,
        /// Wait for a line on stdin before the first call (so a fault can start after this
        /// process has already executed: an LSM file_open fault would otherwise fail its exec).
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        path: Option<std::path::PathBuf>,
        #[arg(long)]
        to: Option<SocketAddr>,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        threads: u32,
        /// Also print how long each call took ("took_ns", the first 1000 calls of each thread).
        #[arg(long)]
        timings: bool,
        /// Make the calls in the main thread, which made nothing since its setup (a new thread's
        /// C library maps memory for its first allocation: an mmap a test would count).
        #[arg(long, conflicts_with = "threads")]
        same_thread: bool,
        /// Make the calls with this directory as the process's root (chroot): --path names a file
        /// as seen from inside, as a container sees its own.
        #[arg(long, value_name = "DIR")]
        chroot: Option<std::path::PathBuf>,
    },
    /// Answer DNS queries (A and AAAA, with documentation addresses) until stdin closes; count
    /// them by name.
    DnsServer {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        max: Duration,
    },
    /// Resolve --name --count times through glibc's getaddrinfo; count the outcomes.
    Resolve {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Use this file as /etc/resolv.conf (in a mount namespace of this process's own).
        #[arg(long)]
        resolv_conf: Option<std::path::PathBuf>,
    },
    /// Per-packet kernel time of chaos's programs beside the floors (`cargo xtask bench`).
    PacketTime {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 100_000)]
        packets: u64,
    },
    /// An HTTP service answering GET /, optionally calling an rr-server upstream per request with
    /// a timeout, a fallback and a circuit breaker (the experiments' services).
    HttpService(http_service::HttpServiceArgs),
    /// Users of an HTTP service: --workers each GET --url, wait for the answer, pause --every.
    HttpClient(http_client::HttpClientArgs),
    /// Clients of an rr-server that retry by a policy (immediate, backoff, breaker): the
    /// retry-storm experiment's.
    RetryClient(retry_client::RetryClientArgs),
    /// Make requests to an rr-server at --rate per second; print a JSON line per --interval.
    RrClient {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Args, Debug)]
pub struct UdpSendArgs {
    #[arg(long)]
    to: SocketAddr,
    /// Send from this local port (the receiver's remote port: what an ingress rule's --port
    /// matches); any free one by default.
    #[arg(long, default_value_t = 0)]
    from_port: u16,
    #[arg(long)]
    count: u64,
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Payload bytes (above the MTU, the kernel sends IP fragments).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Set SO_MARK on the socket: every datagram leaves with this skb->mark.
    #[arg(long)]
    mark: Option<u32>,
    /// IPv6: put a destination-options extension header in every datagram (IPV6_DSTOPTS).
    #[arg(long)]
    dstopts: bool,
    /// Run on this CPU only.
    #[arg(long)]
    cpu: Option<usize>,
    /// The TOS byte (IPv4) or traffic class (IPv6) of every datagram, e.g. 2 for ECT(0).
    #[arg(long)]
    tos: Option<u8>,
    /// SO_SNDBUF of the socket (the kernel doubles it): how much of what it sent may still be
    /// on the machine, charged to it, before a send waits.
    #[arg(long, value_name = "BYTES")]
    sndbuf: Option<u32>,
    /// Never wait for room in the send buffer: a send that would is counted as an error (EAGAIN).
    #[arg(long)]
    nonblocking: bool,
}

pub fn run(args: WorkloadArgs) -> Result<()> {
    match args.kind {
        Workload::UdpSink { bind, idle, max, marks, ecn } => udp_sink(bind, idle, max, marks, ecn),
        Workload::UdpSend(a) => udp_send(&a),
        Workload::TcpSink { bind, max } => tcp_sink(bind, max),
        Workload::TcpSend { to, bytes, max } => tcp_send(to, bytes, max),
        Workload::RrServer { bind, max } => rr_server(bind, max),
        Workload::HttpService(a) => http_service::run(a),
        Workload::RetryClient(a) => retry_client::run(a),
        Workload::HttpClient(a) => http_client::run(a),
        Workload::RrClient { to, rate, duration, interval, timeout } => rr_client(to, rate, duration, interval, timeout),
        Workload::DnsServer { bind, max } => dns::server(bind, max),
        Workload::Resolve { name, count, resolv_conf } => dns::resolve(&name, count, resolv_conf.as_deref()),
        Workload::PacketTime { rounds, packets } => crate::bench::run(rounds, packets),
        Workload::EverySyscall => crate::strace_sets::call_every_syscall(),
        Workload::StraceSets { strace, rust } => strace_sets(&strace, rust),
        Workload::SyscallLoop { call, path, to, count, wait, threads, timings, same_thread, chroot } => {
            if let Some(root) = chroot {
                std::os::unix::fs::chroot(&root).with_context(|| format!("chroot {}", root.display()))?;
                std::env::set_current_dir("/")?;
            }
            syscall_loop(&call, path.as_deref(), to, count, wait, if same_thread { 0 } else { threads }, timings)
        }
    }
}

fn strace_sets(strace: &std::path::Path, rust: bool) -> Result<()> {
    let strace = which::which(strace).with_context(|| format!("no {} on PATH", strace.display()))?;
    let sets = crate::strace_sets::learn(&strace)?;
    if rust {
        let version = std::process::Command::new(&strace).arg("-V").output()?;
        let version = String::from_utf8_lossy(&version.stdout).lines().next().unwrap_or("strace").replace(" -- version", "");
        print!("{}", crate::strace_sets::rust_source(&sets, &version));
    } else {
        println!("{}", json!(sets.into_iter().collect::<std::collections::BTreeMap<_, _>>()));
    }
    Ok(())
}

/// The calls `syscall-loop` makes: what each needs made once, and one call.
enum LoopCall {
    Open(std::path::PathBuf),
    Fsync(std::fs::File),
    Connect(SocketAddr),
    Socket,
    Bind,
    SendTo(UdpSocket, SocketAddr),
    Getsockopt(UdpSocket),
    Setsockopt(UdpSocket),
    Write(std::fs::File),
    Getppid,
    Raw(raw_calls::Call),
}

impl LoopCall {
    fn new(call: &str, path: Option<&std::path::Path>, to: Option<SocketAddr>, count: u64) -> Result<LoopCall> {
        let need = |what: &str| anyhow::anyhow!("--call {call} needs {what}");
        let udp = || UdpSocket::bind("127.0.0.1:0");
        Ok(match call {
            "open" => LoopCall::Open(path.ok_or_else(|| need("--path"))?.to_path_buf()),
            "fsync" => LoopCall::Fsync(std::fs::OpenOptions::new().append(true).create(true).open(path.ok_or_else(|| need("--path"))?)?),
            "connect" => LoopCall::Connect(to.ok_or_else(|| need("--to"))?),
            "socket" => LoopCall::Socket,
            "bind" => LoopCall::Bind,
            "sendto" => LoopCall::SendTo(udp()?, to.ok_or_else(|| need("--to"))?),
            "getsockopt" => LoopCall::Getsockopt(udp()?),
            "setsockopt" => LoopCall::Setsockopt(udp()?),
            "getppid" => LoopCall::Getppid,
            // /dev/null is opened, never created: were it missing, root would make it a plain file.
            "write" => LoopCall::Write(std::fs::OpenOptions::new().append(true).create(path.is_some()).open(path.unwrap_or("/dev/null".as_ref()))?),
            raw => LoopCall::Raw(raw_calls::prepare(raw, path.ok_or_else(|| need("--path (a directory)"))?, count)?),
        })
    }

    /// The `n`-th call (from 1): what it returned (0 where the call's value says nothing), or its
    /// error.
    fn once(&self, n: u64) -> std::io::Result<i64> {
        use nix::sys::socket::{self, sockopt};
        fn io<T>(r: nix::Result<T>) -> std::io::Result<i64> {
            r.map(|_| 0).map_err(std::io::Error::from)
        }
        match self {
            LoopCall::Open(path) => std::fs::File::open(path).map(|_| 0),
            LoopCall::Fsync(f) => f.sync_all().map(|_| 0),
            // Closed with a reset (linger 0), not a FIN: a connection closed normally leaves its
            // port in TIME_WAIT for a minute, and the thousands a loop leaves slowed the loops
            // measured after it, chaos's among them.
            LoopCall::Connect(to) => TcpStream::connect_timeout(to, Duration::from_secs(5))
                .and_then(|s| io(socket::setsockopt(&s, sockopt::Linger, &libc::linger { l_onoff: 1, l_linger: 0 }))),
            LoopCall::Socket => io(socket::socket(socket::AddressFamily::Inet, socket::SockType::Datagram, socket::SockFlag::SOCK_CLOEXEC, None)),
            LoopCall::Bind => UdpSocket::bind("127.0.0.1:0").map(|_| 0),
            LoopCall::SendTo(sock, to) => sock.send_to(b"x", to).map(|n| n as i64),
            LoopCall::Getsockopt(sock) => io(socket::getsockopt(sock, sockopt::SockType)),
            LoopCall::Setsockopt(sock) => io(socket::setsockopt(sock, sockopt::ReuseAddr, &true)),
            LoopCall::Write(f) => (&*f).write(b"x").map(|n| n as i64),
            // SAFETY: getppid(2) has no preconditions and cannot fail; called directly, so a
            // replaced return value is seen as is.
            LoopCall::Getppid => Ok(unsafe { libc::syscall(libc::SYS_getppid) }),
            LoopCall::Raw(call) => call(n),
        }
    }
}

/// One thread's calls: how many succeeded, errors by errno, which calls failed (the first 1000),
/// values returned (100 at most) and how long each call took (the first 1000, with timings).
type Outcomes = (u64, std::collections::BTreeMap<i32, u64>, Vec<u64>, std::collections::BTreeMap<i64, u64>, Vec<u64>);

fn calls(call: &LoopCall, count: u64, timings: bool) -> Outcomes {
    let (mut ok, mut errors, mut failed_at) = (0u64, std::collections::BTreeMap::<i32, u64>::new(), Vec::new());
    let mut values = std::collections::BTreeMap::<i64, u64>::new();
    let mut took = Vec::new();
    for n in 1..=count {
        let t0 = Instant::now();
        let outcome = call.once(n);
        if timings && n <= 1000 {
            took.push(t0.elapsed().as_nanos() as u64);
        }
        match outcome {
            Ok(v) => {
                ok += 1;
                if values.len() < 100 {
                    *values.entry(v).or_default() += 1;
                }
            }
            Err(e) => {
                *errors.entry(e.raw_os_error().unwrap_or(-1)).or_default() += 1;
                if n <= 1000 {
                    failed_at.push(n);
                }
            }
        }
    }
    (ok, errors, failed_at, values, took)
}

/// Runs one syscall --count times in each of `threads` threads (0: in this one); prints {"calls", "ok",
/// "errors": {errno: n}, "failed_at": [[call numbers] per thread] (the first 1000 calls of each),
/// "secs"}, and with `timings` "took_ns": [[ns per call] per thread] (the first 1000 calls).
fn syscall_loop(call: &str, path: Option<&std::path::Path>, to: Option<SocketAddr>, count: u64, wait: bool, threads: u32, timings: bool) -> Result<()> {
    let call = LoopCall::new(call, path, to, count)?;
    if wait {
        ready();
        std::io::stdin().read_line(&mut String::new())?;
    }
    let start = Instant::now();
    // 0 threads: the calls are made by this one.
    let per_thread: Vec<Outcomes> = if threads == 0 {
        vec![calls(&call, count, timings)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| calls(&call, count, timings))).collect();
            handles.into_iter().map(|h| h.join().expect("a syscall-loop thread panicked")).collect()
        })
    };
    let ok: u64 = per_thread.iter().map(|t| t.0).sum();
    let mut errors = std::collections::BTreeMap::<i32, u64>::new();
    let mut values = std::collections::BTreeMap::<i64, u64>::new();
    for (_, e, _, vals, _) in &per_thread {
        for (k, v) in e {
            *errors.entry(*k).or_default() += v;
        }
        for (k, v) in vals {
            *values.entry(*k).or_default() += v;
        }
    }
    let failed_at: Vec<&Vec<u64>> = per_thread.iter().map(|t| &t.2).collect();
    let mut out =
        json!({"calls": count * threads.max(1) as u64, "ok": ok, "errors": errors, "values": values, "failed_at": failed_at, "secs": start.elapsed().as_secs_f64()});
    if timings {
        out["took_ns"] = json!(per_thread.iter().map(|t| &t.4).collect::<Vec<_>>());
    }
    println!("{out}");
    Ok(())
}

pub(crate) fn ready() {
    eprintln!("ready");
}

/// `Udp: ... RcvbufErrors ...` from /proc/net/snmp of this process's network namespace.
fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// SO_RCVMARK (Linux 5.19+): a received datagram's skb->mark comes as an SO_MARK control message.
const SO_RCVMARK: libc::c_int = 75;

/// Receives one datagram; with `marks`, also its skb->mark; with `ecn`, its ECN bits. Returns
/// (bytes, mark, ecn).
fn recv_with_meta(sock: &UdpSocket, buf: &mut [u8], marks: bool, ecn: bool) -> std::io::Result<(usize, Option<u32>, Option<u8>)> {
    if !marks && !ecn {
        return sock.recv_from(buf).map(|(n, _)| (n, None, None));
    }
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(u32, i32);
    let msg = nix::sys::socket::recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), nix::sys::socket::MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let (mut mark, mut tos) = (None, None);
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        match c {
            nix::sys::socket::ControlMessageOwned::Unknown(u)
                if u.cmsg_header.cmsg_level == libc::SOL_SOCKET && u.cmsg_header.cmsg_type == libc::SO_MARK && u.data_bytes.len() >= 4 =>
            {
                mark = Some(u32::from_ne_bytes([u.data_bytes[0], u.data_bytes[1], u.data_bytes[2], u.data_bytes[3]]));
            }
            nix::sys::socket::ControlMessageOwned::Ipv4Tos(t) => tos = Some(t & 0b11),
            nix::sys::socket::ControlMessageOwned::Ipv6TClass(t) => tos = Some(t as u8 & 0b11),
            _ => {}
        }
    }
    Ok((msg.bytes, mark, tos))
}

fn udp_sink(bind: SocketAddr, idle: Duration, max: Duration, marks: bool, ecn: bool) -> Result<()> {
    let sock = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
    set_rcvbuf(&sock, 8 << 20);
    if marks {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads an int from a valid pointer for the given length.
        if unsafe { libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_RCVMARK, (&raw const on).cast(), 4) } != 0 {
            anyhow::bail!("SO_RCVMARK: {}", std::io::Error::last_os_error());
        }
    }
    if ecn {
        if bind.is_ipv4() {
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpRecvTos, &true)?;
        } else {
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv6RecvTClass, &true)?;
        }
    }
    let mut ce = 0u64;
    let mut by_mark = std::collections::BTreeMap::<u32, u64>::new();
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    // Whoever started us closes our stdin once the sender has finished; a loss of any size then
    // ends the count after --idle of quiet, instead of guessing when the last packet is due.
    let sender_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = sender_done.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let errors_before = udp_rcvbuf_errors();
    ready();
    let start = Instant::now();
    let (mut received, mut buf, mut quiet_since) = (0u64, vec![0u8; 65536], Instant::now());
    let mut stamps = Stamps::default();
    while start.elapsed() < max {
        match recv_with_meta(&sock, &mut buf, marks, ecn) {
            Ok((n, mark, bits)) => {
                received += 1;
                if bits == Some(0b11) {
                    ce += 1;
                }
                stamps.add(&buf[..n], monotonic_ns());
                if let Some(m) = mark {
                    *by_mark.entry(m).or_default() += 1;
                }
                quiet_since = Instant::now();
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if sender_done.load(std::sync::atomic::Ordering::SeqCst) && quiet_since.elapsed() >= idle {
                    break;
                }
            }
            Err(e) => return Err(e.into()),
        }
        if !sender_done.load(std::sync::atomic::Ordering::SeqCst) {
            quiet_since = Instant::now();
        }
    }
    let mut out = json!({"received": received, "rcvbuf_errors": udp_rcvbuf_errors() - errors_before, "marks": by_mark, "ce": ce});
    if let (Some(o), serde_json::Value::Object(more)) = (out.as_object_mut(), stamps.json()) {
        o.extend(more);
    }
    println!("{out}");
    Ok(())
}

fn set_rcvbuf(sock: &UdpSocket, bytes: i32) {
    // SAFETY: setsockopt reads an int from a valid pointer for the given length.
    unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&raw const bytes).cast(), 4);
    }
}

fn udp_send(a: &UdpSendArgs) -> Result<()> {
    let (to, count, rate) = (a.to, a.count, a.rate);
    if let Some(cpu) = a.cpu {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {cpu}"))?;
    }
    let bind = SocketAddr::new(if to.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() }, a.from_port);
    let sock = UdpSocket::bind(bind)?;
    let setopt = |level: libc::c_int, name: libc::c_int, val: &[u8]| -> Result<()> {
        // SAFETY: setsockopt reads `val.len()` bytes from a valid slice.
        let r = unsafe { libc::setsockopt(sock.as_raw_fd(), level, name, val.as_ptr().cast(), val.len() as libc::socklen_t) };
        if r != 0 {
            anyhow::bail!("setsockopt({level}, {name}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    };
    if let Some(mark) = a.mark {
        setopt(libc::SOL_SOCKET, libc::SO_MARK, &mark.to_ne_bytes())?;
    }
    if let Some(bytes) = a.sndbuf {
        setopt(libc::SOL_SOCKET, libc::SO_SNDBUF, &(bytes as libc::c_int).to_ne_bytes())?;
    }
    sock.set_nonblocking(a.nonblocking)?;
    if let Some(tos) = a.tos {
        if to.is_ipv4() {
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv4Tos, &(tos as i32))?;
        } else {
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv6TClass, &(tos as i32))?;
        }
    }
    if a.dstopts {
        // An 8-byte destination-options header holding one PadN option (type 1, 4 bytes of
        // padding); the kernel fills in the next-header field.
        setopt(libc::IPPROTO_IPV6, libc::IPV6_DSTOPTS, &[0, 0, 1, 4, 0, 0, 0, 0])?;
    }
    let mut payload = vec![0x5au8; a.size];
    let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = Instant::now();
    let (mut sent, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
    for i in 0..count {
        // Paced against the start, so a slow iteration does not slow the rest.
        let due = start + gap * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        stamp(&mut payload, i);
        match sock.send_to(&payload, to) {
            Ok(_) => sent += 1,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    println!("{}", json!({"sent": sent, "errors": errors, "first_error": first_error, "secs": start.elapsed().as_secs_f64()}));
    Ok(())
}

/// CLOCK_MONOTONIC now, in ns: the same clock in every network namespace of the machine, so a
/// receiver can tell how long a datagram was under way.
fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// A datagram of at least 16 bytes carries its sequence number, its send time (CLOCK_MONOTONIC
/// ns) and then a pattern derived from the sequence number, so the receiver can count
/// duplicates, reordering, delay and corrupted bytes.
fn stamp(payload: &mut [u8], seq: u64) {
    if payload.len() < 16 {
        return;
    }
    let now = monotonic_ns();
    payload[..8].copy_from_slice(&seq.to_le_bytes());
    payload[8..16].copy_from_slice(&now.to_le_bytes());
    let h = header_hash(seq, now);
    for (i, b) in payload[16..].iter_mut().enumerate() {
        *b = pattern(h, i);
    }
}

/// Mixes the header into the pattern, so a flipped bit in the sequence number or the send time
/// shows as a wrong pattern too (multiplying by an odd constant moves a flipped bit only upwards;
/// the pattern uses every byte of the result).
fn header_hash(seq: u64, sent: u64) -> u64 {
    seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ sent
}

fn pattern(h: u64, i: usize) -> u8 {
    ((h >> ((i % 8) * 8)) as u8) ^ (i as u8)
}

/// What the stamped datagrams a sink received say (see [`stamp`]).
#[derive(Default)]
struct Stamps {
    seen: std::collections::HashSet<u64>,
    duplicates: u64,
    reordered: u64,
    corrupted: u64,
    highest: Option<u64>,
    delays_ns: Vec<u64>,
    /// When the first and the last intact datagram arrived (CLOCK_MONOTONIC ns).
    first_arrival: Option<u64>,
    last_arrival: u64,
}

impl Stamps {
    fn add(&mut self, d: &[u8], now_ns: u64) {
        if d.len() < 16 {
            return;
        }
        let seq = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
        let sent = u64::from_le_bytes(d[8..16].try_into().expect("8 bytes"));
        let h = header_hash(seq, sent);
        let intact = d[16..].iter().enumerate().all(|(i, &b)| b == pattern(h, i)) && sent <= now_ns;
        if !intact {
            self.corrupted += 1;
            return;
        }
        if !self.seen.insert(seq) {
            self.duplicates += 1;
            return;
        }
        if self.highest.is_some_and(|h| seq < h) {
            self.reordered += 1;
        }
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        self.delays_ns.push(now_ns - sent);
        self.first_arrival.get_or_insert(now_ns);
        self.last_arrival = now_ns;
    }

    fn json(&mut self) -> serde_json::Value {
        self.delays_ns.sort_unstable();
        let q = |p: f64| -> f64 {
            if self.delays_ns.is_empty() {
                return 0.0;
            }
            let i = ((self.delays_ns.len() - 1) as f64 * p).round() as usize;
            self.delays_ns[i] as f64 / 1e6
        };
        // Runs of consecutive missing sequence numbers below the highest received: the loss
        // bursts, whatever order the datagrams arrived in.
        let mut seqs: Vec<u64> = self.seen.iter().copied().collect();
        seqs.sort_unstable();
        let mut bursts = 0u64;
        let mut next = 0u64;
        // Which datagrams arrived, as one number (FNV-1a over the sorted sequence numbers): two
        // runs that lost the same datagrams have the same digest.
        let digest = seqs.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, s| (h ^ s).wrapping_mul(0x0000_0100_0000_01b3));
        for s in seqs {
            if s > next {
                bursts += 1;
            }
            next = s + 1;
        }
        json!({
            "unique": self.seen.len(), "duplicates": self.duplicates, "reordered": self.reordered, "received_digest": digest,
            "corrupted": self.corrupted, "loss_bursts": bursts,
            "arrival_span_ms": self.first_arrival.map_or(0.0, |f| (self.last_arrival - f) as f64 / 1e6),
            "delay_ms": {"min": q(0.0), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1.0)},
        })
    }
}

fn tcp_sink(bind: SocketAddr, max: Duration) -> Result<()> {
    let listener = TcpListener::bind(bind).with_context(|| format!("binding {bind}"))?;
    ready();
    let (mut conn, _) = listener.accept()?;
    conn.set_read_timeout(Some(max))?;
    let (mut total, mut buf) = (0u64, vec![0u8; 1 << 16]);
    let start = Instant::now();
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => return Err(e.into()),
        }
        if start.elapsed() > max {
            break;
        }
    }
    println!("{}", json!({"bytes": total}));
    Ok(())
}

/// Total retransmissions of a TCP socket (tcpi_total_retrans).
fn tcp_retransmits(s: &TcpStream) -> u64 {
    // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        if libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len) == 0 {
            info.tcpi_total_retrans as u64
        } else {
            0
        }
    }
}

fn tcp_send(to: SocketAddr, bytes: u64, max: Duration) -> Result<()> {
    let start = Instant::now();
    let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(10)).with_context(|| format!("connecting to {to}"))?;
    conn.set_write_timeout(Some(max))?;
    let chunk = vec![0xa5u8; 1 << 16];
    let mut left = bytes;
    while left > 0 && start.elapsed() < max {
        let n = left.min(chunk.len() as u64) as usize;
        conn.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    // Wait for the peer to close, so every byte was acknowledged before TCP_INFO is read.
    conn.set_read_timeout(Some(max.saturating_sub(start.elapsed()).max(Duration::from_millis(1))))?;
    let _ = conn.read(&mut [0u8; 1]);
    println!(
        "{}",
        json!({"bytes": bytes - left, "retransmits": tcp_retransmits(&conn), "secs": start.elapsed().as_secs_f64()})
    );
    Ok(())
}

const RR_SIZE: usize = 32;

fn rr_server(bind: SocketAddr, max: Duration) -> Result<()> {
    let listener = TcpListener::bind(bind).with_context(|| format!("binding {bind}"))?;
    listener.set_nonblocking(true)?;
    ready();
    let start = Instant::now();
    while start.elapsed() < max {
        match listener.accept() {
            Ok((mut conn, _)) => {
                std::thread::spawn(move || {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; RR_SIZE];
                    if conn.read_exact(&mut buf).is_ok() {
                        let _ = conn.write_all(&buf);
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One request: connect, send, read the answer. The time it took, or the error.
pub(crate) fn rr_once(to: SocketAddr, timeout: Duration) -> std::io::Result<Duration> {
    let start = Instant::now();
    let mut c = TcpStream::connect_timeout(&to, timeout)?;
    let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(1));
    c.set_read_timeout(Some(left))?;
    c.set_write_timeout(Some(left))?;
    c.write_all(&[7u8; RR_SIZE])?;
    let mut buf = [0u8; RR_SIZE];
    c.read_exact(&mut buf)?;
    Ok(start.elapsed())
}

/// One interval's results.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RrInterval {
    pub t: f64,
    pub ok: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The p-th percentile (0..=100) of sorted samples, in ms.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn rr_client(to: SocketAddr, rate: u64, duration: Duration, interval: Duration, timeout: Duration) -> Result<()> {
    const WORKERS: u64 = 8;
    let (tx, rx) = mpsc::channel::<std::io::Result<Duration>>();
    let start = Instant::now();
    let per_worker_gap = Duration::from_secs_f64(WORKERS as f64 / rate.max(1) as f64);
    for w in 0..WORKERS {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut due = start + per_worker_gap.mul_f64(w as f64 / WORKERS as f64);
            while start.elapsed() < duration {
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                due += per_worker_gap;
                if tx.send(rr_once(to, timeout)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut next = start + interval;
    let mut cur = (Vec::new(), 0u64);
    let flush = |samples: &mut Vec<Duration>, errors: &mut u64| {
        samples.sort();
        let line = RrInterval {
            t: start.elapsed().as_secs_f64(),
            ok: samples.len() as u64,
            errors: *errors,
            p50_ms: percentile_ms(samples, 50.0),
            p99_ms: percentile_ms(samples, 99.0),
        };
        println!("{}", serde_json::to_string(&line).expect("serialisable"));
        let _ = std::io::stdout().flush();
        samples.clear();
        *errors = 0;
    };
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Ok(d)) => cur.0.push(d),
            Ok(Err(_)) => cur.1 += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                flush(&mut cur.0, &mut cur.1);
                next += interval;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                flush(&mut cur.0, &mut cur.1);
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_sample() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&s, 50.0), 51.0);
        assert_eq!(percentile_ms(&s, 99.0), 99.0);
        assert_eq!(percentile_ms(&s, 100.0), 100.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }
}
