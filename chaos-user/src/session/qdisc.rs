//! sch_fq for faults that set departure times (`net.delay`). A TC program can stamp a packet
//! with the time it may leave, but only fq, as the device's root qdisc, holds it until then: on
//! any other qdisc the stamp is ignored and the fault would silently do nothing.
//!
//! The decision, per device the session's TC program sits on:
//! - fq already there (someone's own): used as it is, nothing changed.
//! - fq that another live chaos session put there: refused, with that session's id (it goes when
//!   that session ends).
//! - the kernel's default qdisc (handle 0: noqueue on a container's veth and on lo, fq_codel or
//!   pfifo_fast on a single-queue device): replaced by fq, journaled **before** the change with
//!   the handle that proves the fq is this session's; deleting it at the end (or by the guardian,
//!   or the sweep) makes the kernel attach the default again.
//! - the kernel's default mq (a queue per CPU): replaced by an mq of chaos's own with fq on each
//!   queue, journaled the same way; deleting it brings the default mq and its queues back. An mq
//!   whose queues all have fq already is used as it is.
//! - a qdisc someone configured: refused with the reason; chaos does not rebuild another tool's
//!   qdisc tree.
//! - `--keep-qdisc`: anything but fq is refused.

use std::{sync::Arc, time::Duration};

use super::journal::{self, Change, Journal, NetnsRef};
use crate::{
    error::{Error, Result},
    faults::FqNeed,
    kernel::{
        netdev::{self, Netns},
        rtnl,
    },
    unsupported,
};

/// The handles chaos gives the fq qdiscs it adds: `C000:`..`CFFF:`, one per session.
const HANDLE_BASE: u32 = 0xc000_0000;

/// This session's fq handle, from its id.
pub fn handle_for(session_id: &str) -> u32 {
    let h = u32::from_str_radix(session_id, 16).unwrap_or(0);
    HANDLE_BASE | ((h & 0x0fff) << 16)
}

fn chaos_handle(handle: u32) -> bool {
    handle & 0xf000_0000 == HANDLE_BASE && handle & 0xffff == 0
}

/// fq's settings for a delay of up to `max_delay`: a horizon past it (departure times beyond
/// the horizon would be capped), and room for the packets a long delay holds: fq's defaults (100
/// per flow, 10,000 in all) would drop a 2000-packet/s flow delayed by 2 s.
pub fn options_for(max_delay: Duration) -> rtnl::FqOptions {
    let horizon = (max_delay * 2).max(Duration::from_secs(10));
    rtnl::FqOptions { limit: 100_000, flow_limit: 50_000, horizon_us: horizon.as_micros().min(u32::MAX as u128) as u32 }
}

/// Runs inside `ns`: makes sure device `ifindex` has fq as its root qdisc. Returns the journaled
/// change when chaos put it there.
pub fn ensure_fq(journal: &mut Journal, ns: &Arc<Netns>, ifindex: u32, ifname: &str, need: FqNeed, handle: u32) -> Result<Option<Change>> {
    // A device that is down sends nothing (a tunnel's fallback device, sit0 or ip6tnl0, sits
    // down in every namespace): nothing to delay there, nothing to change. One brought up while
    // the session runs gets fq at the session's next refresh (`Attachments::attach_devices`).
    if !netdev::is_up(ifname) {
        return Ok(None);
    }
    let fail = |e: &dyn std::error::Error| Error::Other(anyhow::anyhow!("reading the qdiscs of {ifname}: {e}"));
    let root = rtnl::root_qdisc(ifindex).map_err(|e| fail(&e))?;
    let (kind, current) = root.as_ref().map(|q| (q.kind.as_str(), q.handle)).unwrap_or(("noqueue", 0));
    // fq at the root, or chaos's mq with fq on each queue: another live session's is refused (it
    // goes when that session ends), anything else is used as it is.
    if kind == "fq" || (kind == "mq" && chaos_handle(current)) {
        if chaos_handle(current)
            && current != handle
            && let Some(owner) = owner_of(&journal.record().id, ns.ino, ifindex, current)
        {
            return Err(unsupported!(
                "{ifname}: its {kind} qdisc belongs to chaos session {owner}, and goes when that session ends; put this fault in that session (one fault file), or run it afterwards"
            ));
        }
        return Ok(None);
    }
    let queues = if kind == "mq" { rtnl::qdisc_children(ifindex, current).map_err(|e| fail(&e))? } else { Vec::new() };
    if kind == "mq" && !queues.is_empty() && queues.iter().all(|q| q.kind == "fq") {
        return Ok(None);
    }
    let tc_hint = if kind == "mq" {
        format!("`tc qdisc replace dev {ifname} parent {:x}:N fq` for each queue N in its network namespace", current >> 16)
    } else {
        format!("`tc qdisc replace dev {ifname} root fq` in its network namespace")
    };
    if need.keep_qdisc {
        return Err(unsupported!("{ifname} has root qdisc {kind}, and --keep-qdisc forbids changing it; delays need fq there ({tc_hint})"));
    }
    if current != 0 {
        return Err(unsupported!(
            "{ifname} has root qdisc {kind} {:x}: someone configured it, and chaos does not replace a configured qdisc; delays need fq there ({tc_hint}, or --keep-qdisc once it is)",
            current >> 16
        ));
    }
    let options = options_for(need.max_delay);
    let change = Change::RootFq {
        netns: NetnsRef { ino: ns.ino, path: ns.path.clone() },
        ifindex,
        ifname: ifname.to_string(),
        handle,
        replaced: kind.to_string(),
        hold_ms: u64::from(options.horizon_us).div_ceil(1000),
        queues: queues.len() as u32,
    };
    journal.before(change.clone()).map_err(|e| Error::Other(e.context("writing the session record")))?;
    let put = if kind == "mq" { fq_per_queue(ifindex, ifname, handle, &options) } else { rtnl::replace_root_fq(ifindex, handle, &options) };
    if let Err(e) = put {
        // Deleting chaos's root (none, if the first step failed) brings the default back whole.
        let _ = rtnl::delete_root_qdisc(ifindex, handle);
        let _ = journal.forget(&change);
        return Err(Error::Other(anyhow::anyhow!("putting fq on {ifname}: {e}")));
    }
    super::killpoint::step(|| format!("put fq on {ifname}"));
    Ok(Some(change))
}

/// A device with a queue per CPU (the kernel's default mq) gets fq on each queue, keeping its
/// queues apart: the default mq cannot be deleted (handle 0) and its queues' default qdiscs
/// cannot be put back by handle, so chaos replaces the root with an mq of its own (`handle`),
/// whose queues start with the default qdisc, and puts fq on each. Deleting that mq at the end
/// makes the kernel attach its default mq and queue qdiscs again, as for a root fq. The mq's
/// queue length is its queues' sum, so draining it waits for every queue.
fn fq_per_queue(ifindex: u32, ifname: &str, handle: u32, options: &rtnl::FqOptions) -> std::io::Result<()> {
    rtnl::replace_root_mq(ifindex, handle)?;
    super::killpoint::step(|| format!("put mq on {ifname}"));
    let queues = rtnl::qdisc_children(ifindex, handle)?;
    if queues.is_empty() {
        return Err(std::io::Error::other("the new mq qdisc shows no transmit queue"));
    }
    for q in &queues {
        rtnl::replace_child_fq(ifindex, q.parent, options)?;
    }
    Ok(())
}

/// Runs inside the device's namespace: deletes chaos's fq `handle` from `ifindex` once it has
/// sent what it holds ([`wait_until_sent`]).
pub fn remove_fq(ifindex: u32, ifname: &str, handle: u32, hold: Duration) -> std::io::Result<bool> {
    wait_until_sent(ifindex, ifname, handle, hold)?;
    rtnl::delete_root_qdisc(ifindex, handle)
}

/// Runs inside the device's namespace: returns once chaos's fq `handle` on `ifindex` holds no
/// packet, or after `hold` (fq's horizon: the longest it holds one). Deleting a qdisc drops what
/// it holds, and so does deleting a clsact qdisc (the kernel deactivates the device's queues to
/// graft it, which resets the root qdisc): a packet delayed before the fault ended must still
/// leave, at most its delay later, as the docs promise. Call it once nothing sets new departure
/// times (the rules ended, or the program detached), so the queue only shrinks.
pub fn wait_until_sent(ifindex: u32, ifname: &str, handle: u32, hold: Duration) -> std::io::Result<()> {
    let until = std::time::Instant::now() + hold;
    let mut told = false;
    while let Some(held) = rtnl::qdisc_queue_len(ifindex, handle)?.filter(|&n| n > 0) {
        if std::time::Instant::now() >= until {
            log::warn!("{ifname}: fq still holds {held} packet(s) after {hold:?}; removing it drops them");
            break;
        }
        if !told {
            log::info!("{ifname}: waiting up to {hold:?} for the {held} delayed packet(s) fq holds to leave");
            told = true;
        }
        super::guardian::beat();
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The other live chaos session whose record says it put fq `handle` on that device.
fn owner_of(own_id: &str, netns_ino: u64, ifindex: u32, handle: u32) -> Option<String> {
    let r = journal::live_owner(
        own_id,
        |c| matches!(c, Change::RootFq { netns, ifindex: i, handle: h, .. } if netns.ino == netns_ino && *i == ifindex && *h == handle),
    )?;
    Some(format!("{} (pid {})", r.id, r.pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_handles_are_in_chaos_range_and_recognised() {
        for id in ["00000000", "deadbeef", "0fff0000", "zz"] {
            let h = handle_for(id);
            assert!(chaos_handle(h), "{id}: {h:x}");
            assert_ne!(h >> 16, 0xffff, "never the clsact/ingress major");
        }
        assert_ne!(handle_for("00000001"), handle_for("00000002"));
        assert!(!chaos_handle(0), "the kernel's default qdisc");
        assert!(!chaos_handle(0x0001_0000), "a qdisc someone configured as 1:");
    }

    #[test]
    fn the_horizon_reaches_past_the_delay() {
        assert_eq!(options_for(Duration::from_millis(100)).horizon_us, 10_000_000, "fq's default horizon at least");
        assert_eq!(options_for(Duration::from_secs(30)).horizon_us, 60_000_000);
        assert!(options_for(Duration::from_secs(2)).flow_limit >= 4000, "a 2000/s flow held for 2 s fits");
    }
}
