//! A little rtnetlink for qdiscs: creating one in a throwaway namespace for `chaos probe` (does
//! this kernel have sch_fq, netem?), and removing a clsact qdisc that chaos added once nothing is
//! attached to it any more. Every call acts on the calling thread's network namespace.

use std::io;

use nix::sched::{CloneFlags, unshare};

const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;
/// clsact's handle and parent, and the parents of its ingress and egress hooks.
const CLSACT_HANDLE: u32 = 0xffff_0000;
const TC_H_CLSACT: u32 = 0xffff_fff1;
const CLSACT_INGRESS: u32 = 0xffff_fff2;
const CLSACT_EGRESS: u32 = 0xffff_fff3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TC_H_ROOT: u32 = 0xffff_ffff;

/// Appends one netlink attribute, padded to 4 bytes.
fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// A TC request: netlink header, `struct tcmsg`, then attributes.
fn tc_request(kind: u16, flags: u16, ifindex: i32, handle: u32, parent: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    // struct tcmsg: family, pad, pad, ifindex, handle, parent, info
    body.extend_from_slice(&[0u8; 4]);
    body.extend_from_slice(&ifindex.to_ne_bytes());
    body.extend_from_slice(&handle.to_ne_bytes());
    body.extend_from_slice(&parent.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    for (t, payload) in attrs {
        attr(&mut body, *t, payload);
    }
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    msg.extend_from_slice(&body);
    msg
}

/// The RTM_NEWQDISC request: a root qdisc `kind` with raw `options` on `ifindex`.
pub fn new_qdisc_request(ifindex: i32, kind: &str, options: Option<&[u8]>) -> Vec<u8> {
    let mut name = kind.as_bytes().to_vec();
    name.push(0);
    let mut attrs: Vec<(u16, &[u8])> = vec![(TCA_KIND, &name)];
    if let Some(o) = options {
        attrs.push((TCA_OPTIONS, o));
    }
    tc_request(RTM_NEWQDISC, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, ifindex, 0, TC_H_ROOT, &attrs)
}

/// netem's mandatory options (struct tc_netem_qopt): everything zero but the queue limit.
pub fn netem_options() -> Vec<u8> {
    [0u32, 1000, 0, 0, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// Sends one request on a NETLINK_ROUTE socket. For an acknowledged request, `Ok` on the ack and
/// the kernel's error otherwise; for a dump, the types of the messages it returned.
fn rtnetlink(msg: &[u8]) -> io::Result<Vec<u16>> {
    // SAFETY: plain socket syscalls on a descriptor we own and close; buffers are valid for the
    // lengths passed, and every header read is bounds-checked against what recv returned.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let result = (|| {
            if libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut types = Vec::new();
            let mut buf = vec![0u8; 32 << 10];
            // Bounded: a dump of one device's filters ends in a few messages.
            for _ in 0..1000 {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut off = 0usize;
                while off + 16 <= n as usize {
                    let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
                    let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                    match kind {
                        NLMSG_DONE => return Ok(types),
                        NLMSG_ERROR if off + 20 <= n as usize => {
                            let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4 bytes"));
                            return if code == 0 { Ok(types) } else { Err(io::Error::from_raw_os_error(-code)) };
                        }
                        _ => types.push(kind),
                    }
                    if len < 16 {
                        return Err(io::Error::other("malformed netlink answer"));
                    }
                    off += len.next_multiple_of(4);
                }
            }
            Err(io::Error::other("netlink answer did not end"))
        })();
        libc::close(fd);
        result
    }
}

/// Removes the clsact qdisc of device `ifindex` if no TC filter of anyone's is attached to it.
/// Returns whether it was removed.
pub fn remove_clsact_if_unused(ifindex: u32) -> io::Result<bool> {
    let mut filters = 0;
    for parent in [CLSACT_INGRESS, CLSACT_EGRESS] {
        let dump = tc_request(RTM_GETTFILTER, NLM_F_DUMP, ifindex as i32, 0, parent, &[]);
        filters += rtnetlink(&dump)?.iter().filter(|&&t| t == RTM_NEWTFILTER).count();
    }
    if filters > 0 {
        return Ok(false);
    }
    rtnetlink(&tc_request(RTM_DELQDISC, NLM_F_ACK, ifindex as i32, CLSACT_HANDLE, TC_H_CLSACT, &[]))?;
    Ok(true)
}

/// Adds a root qdisc of `kind` to `lo` in a throwaway network namespace. The kernel loads the
/// qdisc's module by itself if it can.
pub fn try_qdisc(kind: &str, options: Option<Vec<u8>>) -> io::Result<()> {
    let kind = kind.to_string();
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        rtnetlink(&new_qdisc_request(1, &kind, options.as_deref())).map(drop)
    })
    .join()
    .map_err(|_| io::Error::other("the probing thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let m = new_qdisc_request(1, "fq", None);
        assert_eq!(m.len(), 16 + 20 + 8, "header, tcmsg, one padded attribute");
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize, m.len());
        assert_eq!(&m[36 + 4..36 + 7], b"fq\0");
        let n = new_qdisc_request(1, "netem", Some(&netem_options()));
        assert_eq!(n.len(), 16 + 20 + 12 + 28);
    }
}
