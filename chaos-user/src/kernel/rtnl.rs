//! A small rtnetlink client for TC qdiscs and filters.
//!
//! Every call opens its own `NETLINK_ROUTE` socket, and a netlink socket belongs to the
//! network namespace of the thread that creates it: so every function here acts in the
//! namespace of the calling thread. Errors keep the kernel's errno
//! (`io::Error::raw_os_error`), so callers can test for ENOENT, EEXIST, EPERM.
//!
//! Messages are built and parsed with `netlink-packet-route`'s types; the only raw payload
//! is netem's `struct tc_netem_qopt`, which that crate does not model.

use std::io;
use std::thread;
use std::time::Duration;

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHeader, TcMessage, TcOption, TcStats2};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::sched::{CloneFlags, unshare};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

/// clsact's parents: its ingress and egress hooks (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS/EGRESS)).
pub const CLSACT_INGRESS: u32 = 0xffff_fff2;
pub const CLSACT_EGRESS: u32 = 0xffff_fff3;

/// TC_H_CLSACT (the same value as TC_H_INGRESS): the parent a clsact qdisc is attached to.
const TC_H_CLSACT: u32 = 0xffff_fff1;
/// The handle the kernel gives every clsact/ingress qdisc ("ffff:").
const CLSACT_HANDLE: u32 = 0xffff_0000;
/// TC_H_ROOT: the parent of a device's root qdisc.
const TC_H_ROOT: u32 = 0xffff_ffff;
/// TCA_OPTIONS, for a qdisc whose options the crate does not model (netem).
const TCA_OPTIONS: u16 = 2;
/// `lo` is always ifindex 1 in a new network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// How long one receive may wait: the kernel answers at once, so silence means something broke.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on datagrams read for one request, so no receive loop can run forever.
const MAX_DATAGRAMS: usize = 100_000;
/// The kernel caps dump datagrams at 32 KiB; twice that leaves room to spare.
const RECV_BUF_LEN: usize = 64 * 1024;
/// A dump the kernel marks as interrupted (NLM_F_DUMP_INTR) is retried this many times.
const DUMP_ATTEMPTS: usize = 3;
/// Each request uses a fresh socket, so one sequence number is enough to match answers.
const SEQ: u32 = 1;

/// One TC filter as a dump reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterInfo {
    pub parent: u32,
    /// tcm_info major part.
    pub priority: u16,
    /// tcm_info minor part, as the kernel reports it (the protocol in network byte order,
    /// e.g. ETH_P_ALL is 0x0300 on x86).
    pub protocol: u16,
    pub handle: u32,
    /// TCA_KIND, e.g. "bpf", "u32".
    pub kind: String,
    /// For a "bpf" (cls_bpf) filter: the id of the BPF program attached (TCA_BPF_ID in TCA_OPTIONS).
    /// None for classic-BPF cls_bpf filters, which have no program id.
    pub bpf_prog_id: Option<u32>,
}

/// Every filter in chain 0 on device `ifindex` under `parent` (RTM_GETTFILTER dump).
///
/// A dump reports each classifier instance (one per priority and protocol) first as a
/// "chain head": an entry with handle 0 and no TCA_OPTIONS, which is not a filter and cannot
/// be deleted as one (a delete with handle 0 removes the whole priority). So an entry is kept
/// if its handle is non-zero or it carries options. Note that u32 also reports its hash table
/// (handle "800:", 0x8000_0000) as an entry with options; the kernel refuses to delete that
/// root table (EINVAL) but drops it by itself with the last u32 key of that priority.
///
/// Only chain 0 is listed, because `delete_filter` (which has no chain in `FilterInfo`) can
/// only reach chain 0; `remove_clsact_if_unused` still counts filters in every chain.
pub fn filters(ifindex: u32, parent: u32) -> io::Result<Vec<FilterInfo>> {
    Ok(dump_filters(ifindex, parent)?
        .into_iter()
        .filter(|e| e.chain == 0 && (e.info.handle != 0 || e.has_options))
        .map(|e| e.info)
        .collect())
}

/// Deletes that one filter (RTM_DELTFILTER by ifindex, parent, priority, protocol, handle, kind).
/// A filter that is already gone (also: its qdisc or device is gone) is Ok(()).
///
/// Priority 0 or handle 0 is refused with EINVAL: the kernel reads them as "flush the whole
/// chain" and "delete every filter of this priority", which would destroy other tools' filters.
pub fn delete_filter(ifindex: u32, f: &FilterInfo) -> io::Result<()> {
    if f.priority == 0 || f.handle == 0 {
        return Err(errno(libc::EINVAL));
    }
    let request = RouteNetlinkMessage::DelTrafficFilter(delete_filter_message(ifindex, f)?);
    match ack_request(request, 0) {
        Ok(()) => Ok(()),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) => Ok(()),
            // The kernel says EINVAL ("Parent Qdisc doesn't exists") when the filter's qdisc is
            // gone, and with it the filter; EINVAL for any other reason stays an error.
            Some(libc::EINVAL) if !parent_qdisc_exists(ifindex, f.parent)? => Ok(()),
            _ => Err(e),
        },
    }
}

/// Whether device `ifindex` has a qdisc of `kind` (e.g. "clsact") (RTM_GETQDISC dump filtered by ifindex).
pub fn has_qdisc(ifindex: u32, kind: &str) -> io::Result<bool> {
    Ok(qdiscs(ifindex)?.iter().any(|q| q.kind == kind))
}

/// Adds a clsact qdisc to `ifindex`; Err(EEXIST) if one is there.
pub fn add_clsact(ifindex: u32) -> io::Result<()> {
    let msg = clsact_message(ifindex)?;
    ack_request(
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Removes the clsact qdisc of `ifindex` if no filter of anyone's is attached under either of its
/// hooks; returns whether it removed it. (Deleting a clsact deletes every filter under it, so this
/// check is what keeps the tool from destroying another tool's filters.)
///
/// Any dump entry counts as "in use", chain heads and filters in other chains included.
/// Netlink has no "delete if empty", so a filter added between the check and the delete is lost
/// with the qdisc; that window is a few microseconds.
pub fn remove_clsact_if_unused(ifindex: u32) -> io::Result<bool> {
    if !has_qdisc(ifindex, "clsact")? {
        return Ok(false);
    }
    for parent in [CLSACT_INGRESS, CLSACT_EGRESS] {
        if !dump_filters(ifindex, parent)?.is_empty() {
            return Ok(false);
        }
    }
    // TCA_KIND makes the kernel refuse (EINVAL) if the qdisc at ffff: is a plain "ingress".
    let msg = clsact_message(ifindex)?;
    match ack_request(RouteNetlinkMessage::DelQueueDiscipline(msg), 0) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Adds a root qdisc `kind` ("fq", or "netem" with netem's mandatory options: a struct
/// tc_netem_qopt with limit 1000 and all else zero) to `ifindex`, NLM_F_CREATE|NLM_F_EXCL.
/// Other kinds are sent without options. A kernel without that qdisc answers ENOENT.
pub fn add_root_qdisc(ifindex: u32, kind: &str) -> io::Result<()> {
    let mut msg = TcMessage::with_index(to_index(ifindex)?);
    msg.header.parent = TC_H_ROOT.into();
    msg.attributes.push(TcAttribute::Kind(kind.to_owned()));
    if kind == "netem" {
        msg.attributes.push(TcAttribute::Other(DefaultNla::new(
            TCA_OPTIONS,
            netem_qopt(1000),
        )));
    }
    ack_request(
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// A device's root qdisc: its handle (0 for the qdisc the kernel attached by default: noqueue,
/// pfifo_fast, fq_codel, mq) and kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootQdisc {
    pub handle: u32,
    pub kind: String,
}

/// The root qdisc of `ifindex`, if the dump shows one.
pub fn root_qdisc(ifindex: u32) -> io::Result<Option<RootQdisc>> {
    Ok(qdiscs(ifindex)?.into_iter().find(|q| q.parent == TC_H_ROOT).map(|q| RootQdisc { handle: q.handle, kind: q.kind }))
}

/// sch_fq's settings chaos chooses (TCA_FQ_* attributes, include/uapi/linux/pkt_sched.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FqOptions {
    /// Packets the qdisc holds in all (TCA_FQ_PLIMIT; fq's default 10000).
    pub limit: u32,
    /// Packets one flow may have held (TCA_FQ_FLOW_PLIMIT; default 100).
    pub flow_limit: u32,
    /// Departure times further ahead than this are capped to it, not dropped (TCA_FQ_HORIZON in
    /// µs, default 10 s, with TCA_FQ_HORIZON_DROP 0).
    pub horizon_us: u32,
}

const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
const TCA_FQ_RATE_ENABLE: u16 = 5;
const TCA_FQ_HORIZON: u16 = 14;
const TCA_FQ_HORIZON_DROP: u16 = 15;

/// TCA_OPTIONS of an fq qdisc: nested u32/u8 attributes. Pacing off (TCA_FQ_RATE_ENABLE 0): fq
/// then only honours departure times, and sockets keep the pace they had without it.
fn fq_options(o: &FqOptions) -> Vec<u8> {
    let mut out = Vec::new();
    let mut attr = |kind: u16, value: &[u8]| {
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
    };
    attr(TCA_FQ_PLIMIT, &o.limit.to_ne_bytes());
    attr(TCA_FQ_FLOW_PLIMIT, &o.flow_limit.to_ne_bytes());
    attr(TCA_FQ_RATE_ENABLE, &0u32.to_ne_bytes());
    attr(TCA_FQ_HORIZON, &o.horizon_us.to_ne_bytes());
    attr(TCA_FQ_HORIZON_DROP, &[0u8]);
    out
}

/// Makes fq with `handle` the root qdisc of `ifindex`, in place of whatever is there
/// (NLM_F_CREATE|NLM_F_REPLACE). A kernel without sch_fq answers ENOENT.
pub fn replace_root_fq(ifindex: u32, handle: u32, o: &FqOptions) -> io::Result<()> {
    let mut msg = TcMessage::with_index(to_index(ifindex)?);
    msg.header.parent = TC_H_ROOT.into();
    msg.header.handle = handle.into();
    msg.attributes.push(TcAttribute::Kind("fq".to_owned()));
    msg.attributes.push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, fq_options(o))));
    ack_request(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_REPLACE)
}

/// Makes an mq qdisc with `handle` the root qdisc of multi-queue device `ifindex`
/// (NLM_F_CREATE|NLM_F_REPLACE): the kernel gives each of its transmit queues the default qdisc,
/// at classes `handle`:1.. (see [`qdisc_children`]). A single-queue device answers EOPNOTSUPP.
pub fn replace_root_mq(ifindex: u32, handle: u32) -> io::Result<()> {
    let mut msg = TcMessage::with_index(to_index(ifindex)?);
    msg.header.parent = TC_H_ROOT.into();
    msg.header.handle = handle.into();
    msg.attributes.push(TcAttribute::Kind("mq".to_owned()));
    ack_request(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_REPLACE)
}

/// Makes fq the qdisc of class `parent` of `ifindex` (a transmit queue of an mq root), in place
/// of what is there; the kernel picks its handle.
pub fn replace_child_fq(ifindex: u32, parent: u32, o: &FqOptions) -> io::Result<()> {
    let mut msg = TcMessage::with_index(to_index(ifindex)?);
    msg.header.parent = parent.into();
    msg.attributes.push(TcAttribute::Kind("fq".to_owned()));
    msg.attributes.push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, fq_options(o))));
    ack_request(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_REPLACE)
}

/// A qdisc under a class of another one (an mq root's transmit queues).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildQdisc {
    /// The class it sits under: the parent's major number and the queue's (1-based) minor.
    pub parent: u32,
    pub kind: String,
}

/// The qdiscs directly under qdisc `handle` of `ifindex` (for the kernel's default mq, handle 0:
/// its children sit at classes :1, :2, ...), in class order.
pub fn qdisc_children(ifindex: u32, handle: u32) -> io::Result<Vec<ChildQdisc>> {
    let major = handle & 0xffff_0000;
    let mut kids: Vec<ChildQdisc> = qdiscs(ifindex)?
        .into_iter()
        .filter(|q| q.parent != TC_H_ROOT && q.parent & 0xffff_0000 == major && q.parent & 0xffff != 0)
        .map(|q| ChildQdisc { parent: q.parent, kind: q.kind })
        .collect();
    kids.sort_by_key(|k| k.parent);
    Ok(kids)
}

/// Deletes the root qdisc of `ifindex` if its handle is `handle`; the kernel then attaches the
/// device's default qdisc again. Ok(false): no such qdisc there.
pub fn delete_root_qdisc(ifindex: u32, handle: u32) -> io::Result<bool> {
    if root_qdisc(ifindex)?.is_none_or(|q| q.handle != handle) {
        return Ok(false);
    }
    let mut msg = TcMessage::with_index(to_index(ifindex)?);
    msg.header.parent = TC_H_ROOT.into();
    msg.header.handle = handle.into();
    match ack_request(RouteNetlinkMessage::DelQueueDiscipline(msg), 0) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How many packets qdisc `handle` of `ifindex` holds (its queue statistics), or None when the
/// device has no such qdisc.
pub fn qdisc_queue_len(ifindex: u32, handle: u32) -> io::Result<Option<u32>> {
    Ok(qdiscs(ifindex)?.into_iter().find(|q| q.handle == handle).map(|q| q.qlen))
}

/// Probes whether the kernel can create a root qdisc of `kind` ("fq", "netem"): adds it to `lo`
/// in a throwaway network namespace, made by unshare(CLONE_NEWNET) on a new thread that exits
/// afterwards, so the calling thread never changes namespace and the probe leaves nothing behind.
pub fn try_qdisc(kind: &str) -> io::Result<()> {
    let kind = kind.to_owned();
    thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        add_root_qdisc(LOOPBACK_IFINDEX, &kind)
    })
    .join()
    .map_err(|_| io::Error::other("qdisc probe thread panicked"))?
}

/// The name of device `ifindex` in the calling thread's namespace, if it exists.
pub fn device_name(ifindex: u32) -> Option<String> {
    nix::net::if_::if_indextoname(ifindex)
        .ok()?
        .into_string()
        .ok()
}

// ---- filters and qdiscs as the dumps report them ----

/// One entry of a filter dump, with what `filters` needs to tell filters from chain heads.
#[derive(Debug, PartialEq, Eq)]
struct FilterEntry {
    info: FilterInfo,
    chain: u32,
    has_options: bool,
}

/// Every entry (chain heads and all chains included) under `parent` on `ifindex`.
/// A missing device or parent qdisc gives an empty list (that is what the kernel dumps).
fn dump_filters(ifindex: u32, parent: u32) -> io::Result<Vec<FilterEntry>> {
    let mut msg = TcMessage::with_index(to_index(ifindex)?);
    msg.header.parent = parent.into();
    dump(RouteNetlinkMessage::GetTrafficFilter(msg))?
        .iter()
        .map(|payload| filter_entry(&parse_tc(payload)?))
        .collect()
}

/// Reads one filter dump entry; an entry without TCA_KIND is malformed.
fn filter_entry(msg: &TcMessage) -> io::Result<FilterEntry> {
    let (priority, protocol) = split_info(msg.header.info);
    let mut kind = None;
    let mut chain = 0;
    let mut has_options = false;
    let mut bpf_prog_id = None;
    for attr in &msg.attributes {
        match attr {
            TcAttribute::Kind(k) => kind = Some(k.clone()),
            TcAttribute::Chain(c) => chain = *c,
            TcAttribute::Options(options) => {
                has_options = true;
                for option in options {
                    if let TcOption::Bpf(TcFilterBpfOption::ProgId(id)) = option {
                        bpf_prog_id = Some(*id);
                    }
                }
            }
            _ => {}
        }
    }
    let kind = kind.ok_or_else(|| invalid_data("filter dump entry without TCA_KIND"))?;
    Ok(FilterEntry {
        info: FilterInfo {
            parent: msg.header.parent.into(),
            priority,
            protocol,
            handle: msg.header.handle.into(),
            kind,
            bpf_prog_id,
        },
        chain,
        has_options,
    })
}

/// The RTM_DELTFILTER body for `f`; TCA_KIND makes the kernel check it is the same classifier.
fn delete_filter_message(ifindex: u32, f: &FilterInfo) -> io::Result<TcMessage> {
    let mut msg = TcMessage::with_index(to_index(ifindex)?);
    msg.header.parent = f.parent.into();
    msg.header.handle = f.handle.into();
    msg.header.info = join_info(f.priority, f.protocol);
    msg.attributes.push(TcAttribute::Kind(f.kind.clone()));
    Ok(msg)
}

/// tcm_info of a filter: priority in the upper 16 bits, protocol in the lower 16.
fn split_info(info: u32) -> (u16, u16) {
    ((info >> 16) as u16, (info & 0xffff) as u16)
}

fn join_info(priority: u16, protocol: u16) -> u32 {
    (u32::from(priority) << 16) | u32::from(protocol)
}

/// A qdisc of one device, as the dump reports it.
struct QdiscEntry {
    handle: u32,
    parent: u32,
    kind: String,
    /// Packets it holds (TCA_STATS2's queue statistics, or the older TCA_STATS).
    qlen: u32,
}

/// The qdiscs of `ifindex`. The kernel dumps every device's qdiscs; entries of other devices
/// are skipped by their header alone, so a qdisc the crate cannot parse elsewhere does no harm.
fn qdiscs(ifindex: u32) -> io::Result<Vec<QdiscEntry>> {
    let index = to_index(ifindex)?;
    let mut out = Vec::new();
    // The default qdiscs of an mq's queues are "invisible": dumped only when asked for.
    let mut request = TcMessage::with_index(index);
    request.attributes.push(TcAttribute::DumpInvisible(true));
    for payload in dump(RouteNetlinkMessage::GetQueueDiscipline(request))? {
        let header = TcHeader::parse(&payload).map_err(|e| invalid_data(e.to_string()))?;
        if header.index != index {
            continue;
        }
        let msg = parse_tc(&payload)?;
        let kind = msg.attributes.iter().find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        });
        let kind = kind.ok_or_else(|| invalid_data("qdisc dump entry without TCA_KIND"))?;
        let queue = msg.attributes.iter().find_map(|a| match a {
            TcAttribute::Stats2(stats) => stats.iter().find_map(|s| match s {
                TcStats2::Queue(q) => Some(q.qlen),
                _ => None,
            }),
            _ => None,
        });
        let qlen = queue.or_else(|| msg.attributes.iter().find_map(|a| match a {
            TcAttribute::Stats(s) => Some(s.qlen),
            _ => None,
        }));
        out.push(QdiscEntry {
            handle: msg.header.handle.into(),
            parent: msg.header.parent.into(),
            kind,
            qlen: qlen.unwrap_or(0),
        });
    }
    Ok(out)
}

/// Whether the qdisc that `parent` (a class or hook id) belongs to exists on `ifindex`.
fn parent_qdisc_exists(ifindex: u32, parent: u32) -> io::Result<bool> {
    let major = parent & 0xffff_0000;
    Ok(qdiscs(ifindex)?
        .iter()
        .any(|q| q.handle & 0xffff_0000 == major))
}

/// The clsact qdisc of `ifindex`, as both add and delete name it.
fn clsact_message(ifindex: u32) -> io::Result<TcMessage> {
    let mut msg = TcMessage::with_index(to_index(ifindex)?);
    msg.header.parent = TC_H_CLSACT.into();
    msg.header.handle = CLSACT_HANDLE.into();
    msg.attributes.push(TcAttribute::Kind("clsact".to_owned()));
    Ok(msg)
}

/// struct tc_netem_qopt { latency, limit, loss, gap, duplicate, jitter: u32 } in host byte
/// order: netem requires it as the bare TCA_OPTIONS payload, and the crate has no type for it.
fn netem_qopt(limit: u32) -> Vec<u8> {
    let fields = [0, limit, 0, 0, 0, 0u32];
    fields.iter().flat_map(|f| f.to_ne_bytes()).collect()
}

// ---- the netlink exchange ----

/// Sends a change and waits for the kernel's acknowledgement (or its errno).
fn ack_request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    exchange(msg, NLM_F_ACK | flags).map(|_| ())
}

/// Runs a dump and returns the tcmsg payloads of its answers; retries a dump the kernel
/// marked as interrupted (the list changed while it was being read).
fn dump(msg: RouteNetlinkMessage) -> io::Result<Vec<Vec<u8>>> {
    for _ in 0..DUMP_ATTEMPTS {
        let answer = exchange(msg.clone(), NLM_F_DUMP)?;
        if !answer.interrupted {
            return Ok(answer.payloads);
        }
        log::debug!("rtnetlink dump interrupted, retrying");
    }
    Err(errno(libc::EINTR))
}

struct Answer {
    /// Payloads of the non-control messages, kept raw so callers can skip entries by header.
    payloads: Vec<Vec<u8>>,
    interrupted: bool,
}

/// One request on a fresh socket, answers read until NLMSG_DONE (dump) or the ACK/error.
fn exchange(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Answer> {
    let is_dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let request = encode(msg, NLM_F_REQUEST | flags);

    let socket = Socket::new(NETLINK_ROUTE)?;
    setsockopt(
        &socket,
        sockopt::ReceiveTimeout,
        &TimeVal::from(libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        }),
    )
    .map_err(io::Error::from)?;
    socket.send_to(&request, &SocketAddr::new(0, 0), 0)?;

    let mut answer = Answer {
        payloads: Vec::new(),
        interrupted: false,
    };
    let mut buf = Vec::with_capacity(RECV_BUF_LEN);
    for _ in 0..MAX_DATAGRAMS {
        buf.clear();
        // MSG_TRUNC makes recv return the datagram's real length, so truncation shows.
        let len = match socket.recv(&mut buf, libc::MSG_TRUNC) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "rtnetlink: no answer from the kernel",
                ));
            }
            Err(e) => return Err(e),
        };
        if len > buf.len() {
            return Err(invalid_data(
                "rtnetlink answer larger than the receive buffer",
            ));
        }
        if read_datagram(&buf, is_dump, &mut answer)? {
            return Ok(answer);
        }
    }
    Err(invalid_data("rtnetlink answer did not end"))
}

/// Serializes `msg` as the one request of a fresh socket.
fn encode(msg: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = SEQ;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// Reads the netlink messages of one datagram into `answer`; returns whether the answer is
/// complete. A kernel error becomes Err with the kernel's errno.
fn read_datagram(mut data: &[u8], is_dump: bool, answer: &mut Answer) -> io::Result<bool> {
    while !data.is_empty() {
        let buffer = NetlinkBuffer::new_checked(data).map_err(|e| invalid_data(e.to_string()))?;
        let len = buffer.length() as usize;
        let (message_type, flags, seq) = (
            buffer.message_type(),
            buffer.flags(),
            buffer.sequence_number(),
        );
        // new_checked has checked the length; `get` keeps even a broken check from panicking.
        let message = data
            .get(..len)
            .ok_or_else(|| invalid_data("truncated netlink message"))?;
        let payload = buffer.payload();
        // Messages are padded to 4 bytes; the last one may lack its padding.
        data = data.get(len.next_multiple_of(4)..).unwrap_or(&[]);

        if seq != SEQ {
            log::debug!("rtnetlink: skipping message with sequence number {seq}");
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            answer.interrupted = true;
        }
        // Types below 16 (NLMSG_MIN_TYPE) are netlink's own: done, error/ACK, noop, overrun.
        if message_type >= 16 {
            answer.payloads.push(payload.to_vec());
            continue;
        }
        let control = NetlinkMessage::<RouteNetlinkMessage>::deserialize(message)
            .map_err(|e| invalid_data(e.to_string()))?;
        match control.payload {
            NetlinkPayload::Done(done) if done.code < 0 => {
                return Err(errno(done.code.saturating_neg()));
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => match e.code {
                Some(code) => return Err(errno(code.get().saturating_neg())),
                None if !is_dump => return Ok(true),
                None => {}
            },
            NetlinkPayload::Overrun(_) => return Err(errno(libc::ENOBUFS)),
            _ => {}
        }
    }
    Ok(false)
}

fn parse_tc(payload: &[u8]) -> io::Result<TcMessage> {
    TcMessage::parse(payload).map_err(|e| invalid_data(e.to_string()))
}

fn to_index(ifindex: u32) -> io::Result<i32> {
    i32::try_from(ifindex).map_err(|_| errno(libc::EINVAL))
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;
    use netlink_packet_route::tc::{TcBpfFlags, TcHandle};
    use std::fs::File;
    use std::os::fd::OwnedFd;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// ETH_P_ALL (3) as tcm_info carries it: htons(3).
    const PROTO_ALL: u16 = 0x0300;
    /// ETH_P_IP (0x0800) as tcm_info carries it: htons(0x0800).
    const PROTO_IP: u16 = 0x0008;

    // ---- without a kernel ----

    #[test]
    fn tcm_info_splits_into_priority_and_protocol() {
        assert_eq!(split_info(0x0007_0008), (7, PROTO_IP));
        assert_eq!(split_info(0xc000_0300), (0xc000, PROTO_ALL));
        assert_eq!(join_info(7, PROTO_IP), 0x0007_0008);
        assert_eq!(split_info(join_info(0xffff, 0xffff)), (0xffff, 0xffff));
    }

    #[test]
    fn clsact_parents_match_the_crate_constants() {
        let ingress = TcHandle {
            major: TcHandle::CLSACT.major,
            minor: TcHandle::MIN_INGRESS,
        };
        let egress = TcHandle {
            major: TcHandle::CLSACT.major,
            minor: TcHandle::MIN_EGRESS,
        };
        assert_eq!(u32::from(ingress), CLSACT_INGRESS);
        assert_eq!(u32::from(egress), CLSACT_EGRESS);
        assert_eq!(u32::from(TcHandle::CLSACT), TC_H_CLSACT);
        assert_eq!(u32::from(TcHandle::ROOT), TC_H_ROOT);
    }

    /// Serializes a whole netlink message and parses it back with the crate, as the kernel would read it.
    fn round_trip(msg: RouteNetlinkMessage, flags: u16) -> NetlinkMessage<RouteNetlinkMessage> {
        let bytes = encode(msg, flags);
        NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).expect("parses")
    }

    #[test]
    fn delete_request_round_trips() {
        let f = FilterInfo {
            parent: CLSACT_EGRESS,
            priority: 49152,
            protocol: PROTO_ALL,
            handle: 1,
            kind: "bpf".into(),
            bpf_prog_id: Some(77),
        };
        let msg = delete_filter_message(3, &f).unwrap();
        let back = round_trip(
            RouteNetlinkMessage::DelTrafficFilter(msg),
            NLM_F_REQUEST | NLM_F_ACK,
        );
        assert_eq!(back.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(back.header.sequence_number, SEQ);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelTrafficFilter(tc)) = back.payload
        else {
            panic!("not a DelTrafficFilter: {:?}", back.payload);
        };
        assert_eq!(tc.header.index, 3);
        assert_eq!(u32::from(tc.header.parent), CLSACT_EGRESS);
        assert_eq!(u32::from(tc.header.handle), 1);
        assert_eq!(split_info(tc.header.info), (49152, PROTO_ALL));
        assert_eq!(tc.attributes, vec![TcAttribute::Kind("bpf".into())]);
    }

    #[test]
    fn delete_refuses_priority_or_handle_zero() {
        let f = FilterInfo {
            parent: CLSACT_EGRESS,
            priority: 0,
            protocol: PROTO_ALL,
            handle: 1,
            kind: "bpf".into(),
            bpf_prog_id: None,
        };
        // Refused before any socket is opened, so this needs no kernel.
        assert_eq!(
            delete_filter(1, &f).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        let f = FilterInfo {
            priority: 1,
            handle: 0,
            ..f
        };
        assert_eq!(
            delete_filter(1, &f).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
    }

    /// A filter dump entry as the kernel would send it, serialized with the crate and parsed back.
    fn dumped_entry(handle: u32, attributes: Vec<TcAttribute>) -> FilterEntry {
        let mut msg = TcMessage::with_index(5);
        msg.header.parent = CLSACT_EGRESS.into();
        msg.header.handle = handle.into();
        msg.header.info = join_info(49152, PROTO_ALL);
        msg.attributes = attributes;
        let mut bytes = vec![0; msg.buffer_len()];
        msg.emit(&mut bytes);
        filter_entry(&parse_tc(&bytes).unwrap()).unwrap()
    }

    #[test]
    fn bpf_prog_id_is_read_from_tca_options() {
        let entry = dumped_entry(
            1,
            vec![
                TcAttribute::Kind("bpf".into()),
                TcAttribute::Chain(0),
                TcAttribute::Options(vec![
                    TcOption::Bpf(TcFilterBpfOption::ProgName("chaos_tc".into())),
                    TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
                    TcOption::Bpf(TcFilterBpfOption::ProgId(4242)),
                ]),
            ],
        );
        assert_eq!(
            entry.info,
            FilterInfo {
                parent: CLSACT_EGRESS,
                priority: 49152,
                protocol: PROTO_ALL,
                handle: 1,
                kind: "bpf".into(),
                bpf_prog_id: Some(4242),
            }
        );
        assert!(entry.has_options);
        assert_eq!(entry.chain, 0);
    }

    #[test]
    fn chain_head_is_recognised() {
        let entry = dumped_entry(
            0,
            vec![TcAttribute::Kind("bpf".into()), TcAttribute::Chain(3)],
        );
        assert_eq!(entry.info.handle, 0);
        assert_eq!(entry.info.bpf_prog_id, None);
        assert!(!entry.has_options);
        assert_eq!(entry.chain, 3);
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        // An entry without TCA_KIND.
        let mut msg = TcMessage::with_index(5);
        msg.header.handle = 1.into();
        assert_eq!(
            filter_entry(&msg).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A tcmsg cut short, and a netlink header whose length field lies.
        assert!(parse_tc(&[0u8; 7]).is_err());
        let mut answer = Answer {
            payloads: Vec::new(),
            interrupted: false,
        };
        let mut lying = vec![0u8; 16];
        lying[0] = 200; // nlmsg_len 200 in a 16-byte datagram
        assert_eq!(
            read_datagram(&lying, true, &mut answer).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A bpf TCA_BPF_ID of the wrong size inside a valid message.
        let mut msg = TcMessage::with_index(5);
        msg.attributes = vec![
            TcAttribute::Kind("bpf".into()),
            TcAttribute::Options(vec![TcOption::Bpf(TcFilterBpfOption::Other(
                DefaultNla::new(11, vec![1, 2]),
            ))]),
        ];
        let mut bytes = vec![0; msg.buffer_len()];
        msg.emit(&mut bytes);
        assert!(parse_tc(&bytes).is_err());
    }

    #[test]
    fn kernel_errors_keep_their_errno() {
        // An NLMSG_ERROR carrying -EEXIST, built with the crate.
        let mut header = NetlinkHeader::default();
        header.sequence_number = SEQ;
        let mut error = netlink_packet_core::ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(-libc::EEXIST);
        let mut packet =
            NetlinkMessage::<RouteNetlinkMessage>::new(header, NetlinkPayload::Error(error));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        let mut answer = Answer {
            payloads: Vec::new(),
            interrupted: false,
        };
        let err = read_datagram(&bytes, false, &mut answer).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    }

    #[test]
    fn netem_options_are_a_tc_netem_qopt() {
        let opt = netem_qopt(1000);
        assert_eq!(opt.len(), 24);
        assert_eq!(&opt[4..8], &1000u32.to_ne_bytes());
        assert!(opt[..4].iter().chain(&opt[8..]).all(|b| *b == 0));
    }

    // ---- against the kernel, each test in its own named network namespace ----

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A network namespace made with `ip netns add`, deleted on drop (also when a test fails).
    struct TestNetns {
        name: String,
    }

    impl TestNetns {
        fn new() -> Self {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("h-rtnl-{}-{n}", std::process::id());
            run(&["ip", "netns", "add", &name]);
            TestNetns { name }
        }

        /// Runs `f` on a new thread inside this namespace; the thread exits afterwards, so the
        /// test thread (which libtest may reuse) never changes namespace.
        fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
            let path = format!("/run/netns/{}", self.name);
            thread::scope(|s| {
                s.spawn(|| {
                    let file = File::open(&path).expect("open netns");
                    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        }

        /// Runs a command (e.g. `tc`) inside this namespace and returns its stdout.
        fn exec(&self, args: &[&str]) -> String {
            let mut all = vec!["ip", "netns", "exec", &self.name];
            all.extend_from_slice(args);
            run(&all)
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    fn run(args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("spawn");
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn clsact_add_and_exists() {
        let ns = TestNetns::new();
        ns.run(|| {
            assert!(!has_qdisc(LOOPBACK_IFINDEX, "clsact").unwrap());
            add_clsact(LOOPBACK_IFINDEX).unwrap();
            assert!(has_qdisc(LOOPBACK_IFINDEX, "clsact").unwrap());
            let again = add_clsact(LOOPBACK_IFINDEX).unwrap_err();
            assert_eq!(again.raw_os_error(), Some(libc::EEXIST), "{again}");
            assert_eq!(device_name(LOOPBACK_IFINDEX).as_deref(), Some("lo"));
            // Nothing to list, and an unknown device is an empty dump, not an error.
            assert!(filters(LOOPBACK_IFINDEX, CLSACT_EGRESS).unwrap().is_empty());
            assert!(filters(999, CLSACT_EGRESS).unwrap().is_empty());
            // Nothing under the hooks: removed.
            assert!(remove_clsact_if_unused(LOOPBACK_IFINDEX).unwrap());
            assert!(!has_qdisc(LOOPBACK_IFINDEX, "clsact").unwrap());
            assert!(!remove_clsact_if_unused(LOOPBACK_IFINDEX).unwrap());
        });
    }

    #[test]
    fn a_foreign_u32_filter_keeps_the_clsact() {
        let ns = TestNetns::new();
        ns.run(|| add_clsact(LOOPBACK_IFINDEX).unwrap());
        ns.exec(&[
            "tc", "filter", "add", "dev", "lo", "egress", "prio", "7", "protocol", "ip", "u32",
            "match", "u32", "0", "0",
        ]);
        ns.run(|| {
            let list = filters(LOOPBACK_IFINDEX, CLSACT_EGRESS).unwrap();
            // u32 reports its hash table "800:" and the key "800::800"; no chain head.
            assert!(
                list.iter()
                    .all(|f| f.handle != 0 && f.kind == "u32" && f.priority == 7)
            );
            let key = list
                .iter()
                .find(|f| f.handle == 0x8000_0800)
                .unwrap_or_else(|| panic!("no 800::800 in {list:?}"))
                .clone();
            assert_eq!(key.parent, CLSACT_EGRESS);
            assert_eq!(key.protocol, PROTO_IP);
            assert_eq!(key.bpf_prog_id, None);
            assert!(
                filters(LOOPBACK_IFINDEX, CLSACT_INGRESS)
                    .unwrap()
                    .is_empty()
            );

            assert!(!remove_clsact_if_unused(LOOPBACK_IFINDEX).unwrap());
            assert!(has_qdisc(LOOPBACK_IFINDEX, "clsact").unwrap());

            delete_filter(LOOPBACK_IFINDEX, &key).unwrap();
            assert!(filters(LOOPBACK_IFINDEX, CLSACT_EGRESS).unwrap().is_empty());
            // Already gone: still Ok.
            delete_filter(LOOPBACK_IFINDEX, &key).unwrap();

            assert!(remove_clsact_if_unused(LOOPBACK_IFINDEX).unwrap());
            assert!(!has_qdisc(LOOPBACK_IFINDEX, "clsact").unwrap());
            // Its qdisc gone too (the kernel says EINVAL here): still Ok.
            delete_filter(LOOPBACK_IFINDEX, &key).unwrap();
        });
    }

    #[test]
    fn delete_with_the_wrong_kind_is_an_error() {
        let ns = TestNetns::new();
        ns.run(|| add_clsact(LOOPBACK_IFINDEX).unwrap());
        ns.exec(&[
            "tc", "filter", "add", "dev", "lo", "ingress", "prio", "3", "protocol", "ip", "u32",
            "match", "u32", "0", "0",
        ]);
        ns.run(|| {
            let list = filters(LOOPBACK_IFINDEX, CLSACT_INGRESS).unwrap();
            let mut key = list.into_iter().find(|f| f.handle == 0x8000_0800).unwrap();
            key.kind = "bpf".into();
            let err = delete_filter(LOOPBACK_IFINDEX, &key).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
            assert!(!remove_clsact_if_unused(LOOPBACK_IFINDEX).unwrap());
        });
    }

    #[test]
    fn classic_cls_bpf_filter_is_listed_without_prog_id() {
        let ns = TestNetns::new();
        ns.run(|| add_clsact(LOOPBACK_IFINDEX).unwrap());
        // Classic BPF "ret #0": cls_bpf takes it without an object file; it has no program id.
        ns.exec(&[
            "tc",
            "filter",
            "add",
            "dev",
            "lo",
            "egress",
            "prio",
            "9",
            "handle",
            "5",
            "bpf",
            "bytecode",
            "1,6 0 0 0",
        ]);
        ns.run(|| {
            let list = filters(LOOPBACK_IFINDEX, CLSACT_EGRESS).unwrap();
            assert_eq!(
                list,
                vec![FilterInfo {
                    parent: CLSACT_EGRESS,
                    priority: 9,
                    protocol: PROTO_ALL,
                    handle: 5,
                    kind: "bpf".into(),
                    bpf_prog_id: None,
                }]
            );
            delete_filter(LOOPBACK_IFINDEX, &list[0]).unwrap();
            assert!(remove_clsact_if_unused(LOOPBACK_IFINDEX).unwrap());
        });
    }

    /// A real sched_cls program: the project's own TC floor, from the embedded object.
    fn load_trivial_sched_cls() -> (crate::kernel::Kernel, OwnedFd) {
        use std::os::fd::AsFd;
        let mut kernel = crate::kernel::Kernel::load(false).expect("loading the kernel object");
        let prog: &mut aya::programs::SchedClassifier =
            kernel.ebpf.program_mut("chaos_bench_floor_tc").expect("program").try_into().expect("a classifier");
        prog.load().expect("BPF_PROG_LOAD");
        let fd = prog.fd().expect("loaded").as_fd().try_clone_to_owned().expect("dup");
        (kernel, fd)
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn ebpf_cls_bpf_filter_reports_its_prog_id() {
        use std::os::fd::AsRawFd;
        let ns = TestNetns::new();
        let (_kernel, prog) = load_trivial_sched_cls();
        ns.run(|| {
            add_clsact(LOOPBACK_IFINDEX).unwrap();
            // Attach it the way aya does on kernels without tcx: RTM_NEWTFILTER with TCA_BPF_FD.
            let mut msg = TcMessage::with_index(1);
            msg.header.parent = CLSACT_EGRESS.into();
            msg.header.handle = 1.into();
            msg.header.info = join_info(11, PROTO_ALL);
            msg.attributes = vec![
                TcAttribute::Kind("bpf".into()),
                TcAttribute::Options(vec![
                    TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
                    TcOption::Bpf(TcFilterBpfOption::ProgName("h_rtnl_test".into())),
                    TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
                ]),
            ];
            ack_request(
                RouteNetlinkMessage::NewTrafficFilter(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .unwrap();
        });
        // The id as iproute2 shows it: "... direct-action not_in_hw id 123 name ... tag ...".
        let shown = ns.exec(&["tc", "filter", "show", "dev", "lo", "egress"]);
        let id: u32 = shown
            .split_whitespace()
            .skip_while(|w| *w != "id")
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no id in {shown}"));
        ns.run(|| {
            let list = filters(LOOPBACK_IFINDEX, CLSACT_EGRESS).unwrap();
            assert_eq!(list.len(), 1, "{list:?}");
            assert_eq!(list[0].kind, "bpf");
            assert_eq!((list[0].priority, list[0].handle), (11, 1));
            assert_eq!(list[0].bpf_prog_id, Some(id));
            assert!(!remove_clsact_if_unused(LOOPBACK_IFINDEX).unwrap());
            delete_filter(LOOPBACK_IFINDEX, &list[0]).unwrap();
            assert!(remove_clsact_if_unused(LOOPBACK_IFINDEX).unwrap());
        });
    }

    #[test]
    fn queue_length_is_what_a_qdisc_holds() {
        // tbf at 8 kbit/s sends one 1 kB datagram and holds the next ones: the count chaos
        // waits on before it deletes its fq (fq itself is not on every kernel that runs this).
        let ns = TestNetns::new();
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["tc", "qdisc", "add", "dev", "lo", "root", "handle", "7:", "tbf", "rate", "8kbit", "burst", "1600", "latency", "10s"]);
        let held = ns.run(|| {
            assert_eq!(qdisc_queue_len(LOOPBACK_IFINDEX, 0x7_0000).unwrap(), Some(0), "nothing sent yet");
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for _ in 0..5 {
                socket.send_to(&[0u8; 1000], "127.0.0.1:9").unwrap();
            }
            assert_eq!(qdisc_queue_len(LOOPBACK_IFINDEX, 0x8_0000).unwrap(), None, "no qdisc with that handle");
            qdisc_queue_len(LOOPBACK_IFINDEX, 0x7_0000).unwrap()
        });
        let shown = ns.exec(&["tc", "-s", "qdisc", "show", "dev", "lo"]);
        assert!(held.is_some_and(|n| n >= 3), "held {held:?}; tc says {shown}");
        // chaos's wait for a qdisc to send what it holds, bounded: tbf sends 1 kB/s.
        let t = std::time::Instant::now();
        ns.run(|| crate::session::qdisc::wait_until_sent(LOOPBACK_IFINDEX, "lo", 0x7_0000, Duration::from_secs(20)).unwrap());
        let waited = t.elapsed();
        let after = ns.run(|| qdisc_queue_len(LOOPBACK_IFINDEX, 0x7_0000).unwrap());
        assert_eq!(after, Some(0), "returned after {waited:?} with packets held");
        assert!(waited >= Duration::from_secs(1), "returned after {waited:?}: it did not wait");
        assert!(shown.contains(&format!("{}p", held.unwrap())), "tc says otherwise: {shown}");
    }

    #[test]
    fn an_mq_of_chaos_replaces_the_default_one_and_deleting_it_brings_the_default_back() {
        // ifb with four transmit queues gets the kernel's default mq (handle 0) with a default
        // qdisc on each queue: what chaos finds on a host's multi-queue NIC.
        let ns = TestNetns::new();
        ns.exec(&["ip", "link", "add", "mqtest", "numtxqueues", "4", "type", "ifb"]);
        ns.exec(&["ip", "link", "set", "mqtest", "up"]);
        let ours = 0xc123_0000;
        ns.run(|| {
            let index = nix::net::if_::if_nametoindex("mqtest").unwrap();
            let root = root_qdisc(index).unwrap().unwrap();
            assert_eq!((root.kind.as_str(), root.handle), ("mq", 0));
            let default: Vec<u32> = qdisc_children(index, 0).unwrap().iter().map(|q| q.parent).collect();
            assert_eq!(default, [1, 2, 3, 4]);
            replace_root_mq(index, ours).unwrap();
            assert_eq!(root_qdisc(index).unwrap().unwrap(), RootQdisc { handle: ours, kind: "mq".into() });
            let queues = qdisc_children(index, ours).unwrap();
            assert_eq!(queues.iter().map(|q| q.parent).collect::<Vec<_>>(), [ours | 1, ours | 2, ours | 3, ours | 4], "{queues:?}");
            assert_eq!(qdisc_queue_len(index, ours).unwrap(), Some(0));
            // fq, where the kernel has it, on each queue (this host has no sch_fq: ENOENT).
            let fq = FqOptions { limit: 1000, flow_limit: 100, horizon_us: 10_000_000 };
            match replace_child_fq(index, ours | 2, &fq) {
                Ok(()) => assert_eq!(qdisc_children(index, ours).unwrap()[1].kind, "fq"),
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}"),
            }
            // A single-queue device refuses an mq.
            assert_eq!(replace_root_mq(LOOPBACK_IFINDEX, ours).unwrap_err().raw_os_error(), Some(libc::EOPNOTSUPP));
            assert!(delete_root_qdisc(index, ours).unwrap());
            let back = root_qdisc(index).unwrap().unwrap();
            assert_eq!((back.kind.as_str(), back.handle), ("mq", 0), "the default mq is back");
            assert_eq!(qdisc_children(index, 0).unwrap().len(), 4, "with a qdisc on each queue");
            assert!(!delete_root_qdisc(index, ours).unwrap(), "gone already");
        });
    }

    #[test]
    fn plain_ingress_qdisc_is_not_removed_as_clsact() {
        let ns = TestNetns::new();
        ns.exec(&["tc", "qdisc", "add", "dev", "lo", "ingress"]);
        ns.run(|| {
            assert!(has_qdisc(LOOPBACK_IFINDEX, "ingress").unwrap());
            assert!(!remove_clsact_if_unused(LOOPBACK_IFINDEX).unwrap());
            assert!(has_qdisc(LOOPBACK_IFINDEX, "ingress").unwrap());
            // clsact and ingress share the ffff: slot.
            assert_eq!(
                add_clsact(LOOPBACK_IFINDEX).unwrap_err().raw_os_error(),
                Some(libc::EEXIST)
            );
        });
    }

    #[test]
    fn root_qdisc_probe() {
        // No sch_fq in this kernel (nor netem): "Specified qdisc kind is unknown" is ENOENT.
        let fq = try_qdisc("fq").unwrap_err();
        assert_eq!(fq.raw_os_error(), Some(libc::ENOENT), "{fq}");
        let netem = try_qdisc("netem").unwrap_err();
        assert_eq!(netem.raw_os_error(), Some(libc::ENOENT), "{netem}");
        // pfifo takes no options and is built in.
        try_qdisc("pfifo").unwrap();
        // The probe ran elsewhere: this thread's `lo` has no pfifo.
        assert!(!has_qdisc(LOOPBACK_IFINDEX, "pfifo").unwrap_or(false));
    }

    #[test]
    fn add_root_qdisc_is_exclusive() {
        let ns = TestNetns::new();
        ns.run(|| {
            add_root_qdisc(LOOPBACK_IFINDEX, "pfifo").unwrap();
            assert!(has_qdisc(LOOPBACK_IFINDEX, "pfifo").unwrap());
            let again = add_root_qdisc(LOOPBACK_IFINDEX, "pfifo").unwrap_err();
            assert_eq!(again.raw_os_error(), Some(libc::EEXIST), "{again}");
        });
    }
}
