//! Creating a qdisc over rtnetlink, for `chaos probe` (does this kernel have sch_fq, netem?).
//! Done on `lo` of a brand-new network namespace that lives only as long as the probing thread,
//! so nothing on the host is touched.

use std::io;

use nix::sched::{CloneFlags, unshare};

const RTM_NEWQDISC: u16 = 36;
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

/// The RTM_NEWQDISC request: a root qdisc `kind` with raw `options` on `ifindex`.
pub fn new_qdisc_request(ifindex: i32, kind: &str, options: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    // struct tcmsg: family, pad, pad, ifindex, handle, parent, info
    body.extend_from_slice(&[0u8; 4]);
    body.extend_from_slice(&ifindex.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(&TC_H_ROOT.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    let mut name = kind.as_bytes().to_vec();
    name.push(0);
    attr(&mut body, TCA_KIND, &name);
    if let Some(o) = options {
        attr(&mut body, TCA_OPTIONS, o);
    }
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWQDISC.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    msg.extend_from_slice(&body);
    msg
}

/// netem's mandatory options (struct tc_netem_qopt): everything zero but the queue limit.
pub fn netem_options() -> Vec<u8> {
    [0u32, 1000, 0, 0, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// Sends one request on a NETLINK_ROUTE socket and returns the kernel's answer as an io::Error
/// (`Ok` for an ack).
fn rtnetlink(msg: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket syscalls on a descriptor we own and close; buffers are valid for the
    // lengths passed.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let result = (|| {
            if libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = [0u8; 4096];
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 20 {
                return Err(io::Error::last_os_error());
            }
            let kind = u16::from_ne_bytes([buf[4], buf[5]]);
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            match (kind, code) {
                (NLMSG_ERROR, 0) => Ok(()),
                (NLMSG_ERROR, c) => Err(io::Error::from_raw_os_error(-c)),
                _ => Err(io::Error::other("unexpected netlink answer")),
            }
        })();
        libc::close(fd);
        result
    }
}

/// Adds a root qdisc of `kind` to `lo` in a throwaway network namespace. The kernel loads the
/// qdisc's module by itself if it can.
pub fn try_qdisc(kind: &str, options: Option<Vec<u8>>) -> io::Result<()> {
    let kind = kind.to_string();
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        rtnetlink(&new_qdisc_request(1, &kind, options.as_deref()))
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
