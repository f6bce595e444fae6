//! Packet faults: egress decided at TC on the devices of the target's network namespace, from the
//! cgroup of the packet's socket; ingress decided at `cgroup_skb` on the target cgroup, or, to
//! copy or change a received packet, at TC ingress from the cgroup of the socket it is for.

mod cgroup_skb;
mod dns;
mod parse;
mod tc;
mod tc_ingress;

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use chaos_common::{Action, KernelError, MAX_RULES, Rule, feature, has_rule, net::Packet};

use crate::{
    engine::{Segs, decide, model_decides, now_coarse, rule},
    globals::uses,
};

/// Rules walked in line, at most; the rest (a session's later packet rules on a cgroup) in
/// `bpf_loop`, whose body the verifier checks once. Each rule in line is checked again on every
/// path that reaches it: unrolling all 64 made the TC program take half a second to verify here
/// (196,051 instructions processed). How many are walked in line is the loader's choice
/// (`globals::inline_rules`; its measurements are in `chaos-user/src/kernel/mod.rs`).
pub const MAX_INLINE_RULES: u32 = 4;

/// The loader's choice, held to `MAX_INLINE_RULES`: a rule neither in line nor in the loop would be
/// skipped.
#[inline(always)]
fn inline_rules() -> u32 {
    crate::globals::inline_rules().min(MAX_INLINE_RULES)
}

/// What the `bpf_loop` turns share with the program.
#[repr(C)]
struct Walk<'a> {
    mask: u64,
    dir: u8,
    pkt: &'a Packet,
    segs: Segs,
    now: u64,
    /// 1 + the index of the rule that selected the packet; 0: none.
    found: u32,
    action: u32,
    error: u32,
}

/// Rule `i` for the packet: `Ok(true)` when it selected it for a packet action.
#[inline(always)]
fn consider(w: &mut Walk, i: u32) -> Result<bool, KernelError> {
    if !has_rule(w.mask, i) {
        return Ok(false);
    }
    let r = rule(i)?;
    if decide::<true>(i, r, w.now, r.net.matches(w.dir, w.pkt), w.segs)? && Action::from_u32(r.action).is_packet() {
        (w.found, w.action) = (i + 1, r.action);
        return Ok(true);
    }
    Ok(false)
}

/// One `bpf_loop` turn: rule `inline_rules() + index`. Returns 1 to stop.
extern "C" fn walk_turn(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on the stack of `selected`, which outlives the loop; the
    // verifier checks every access through it.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    let i = inline_rules() + index as u32;
    if i >= MAX_RULES || w.mask >> i == 0 {
        return 1;
    }
    match consider(w, i) {
        Ok(true) => 1,
        Ok(false) => 0,
        Err(e) => {
            w.error = e as u32 + 1;
            1
        }
    }
}

/// The first of the rules in `mask` that selects `pkt` (travelling in `dir`, standing for `segs`
/// wire segments) for a packet action, that action, and the rule (its parameters, for the
/// action's arm). Every rule it walks counts the packet. A
/// rule with a loss model that claims the packet decides it alone: its model is stepped here,
/// once, and if it keeps the packet no later rule sees it.
#[inline(always)]
fn selected(mask: u64, dir: u8, pkt: &Packet, segs: Segs) -> Result<Option<(u32, Action, &'static Rule)>, KernelError> {
    let Some((i, action)) = walk(mask, dir, pkt, segs)? else { return Ok(None) };
    let r = rule(i)?;
    if uses(feature::LOSS_MODEL) && r.loss.is_stateful() && !model_decides(i, r, segs)? {
        return Ok(None);
    }
    Ok(Some((i, used(action), r)))
}

/// `a`, or `Action::None` where no rule of the session has it: the arms of the others are then
/// unreachable, and the verifier does not walk them. (User space loads the object for its rules'
/// actions, and refuses to write a rule the object was not loaded for.) One arm per action, each
/// testing its own constant bit: `uses(feature::action(a))` would test a bit the verifier cannot
/// know, and prune nothing.
#[inline(always)]
fn used(a: Action) -> Action {
    let yes = match a {
        Action::NetDrop => uses(feature::action(Action::NetDrop)),
        Action::NetDelay => uses(feature::action(Action::NetDelay)),
        Action::NetDuplicate => uses(feature::action(Action::NetDuplicate)),
        Action::NetCorrupt => uses(feature::action(Action::NetCorrupt)),
        Action::NetShape => uses(feature::action(Action::NetShape)),
        Action::NetPolice => uses(feature::action(Action::NetPolice)),
        Action::NetStall => uses(feature::action(Action::NetStall)),
        Action::NetDns => uses(feature::action(Action::NetDns)),
        Action::SysFail | Action::SysSignal | Action::SysDelay | Action::ProcPause | Action::ProcKill | Action::None => false,
    };
    if yes { a } else { Action::None }
}

/// The first rule in `mask` that claims `pkt`, and its action.
#[inline(always)]
fn walk(mask: u64, dir: u8, pkt: &Packet, segs: Segs) -> Result<Option<(u32, Action)>, KernelError> {
    let mut w = Walk { mask, dir, pkt, segs, now: now_coarse(), found: 0, action: 0, error: 0 };
    let inline = inline_rules();
    let mut i = 0;
    while i < inline && mask >> i != 0 {
        if consider(&mut w, i)? {
            return Ok(Some((i, Action::from_u32(w.action))));
        }
        i += 1;
    }
    if mask >> inline != 0 {
        // SAFETY: `walk_turn` has the callback signature the helper expects, and `w` lives until
        // the helper returns.
        unsafe { bpf_loop(MAX_RULES - inline, walk_turn as *mut c_void, (&raw mut w).cast(), 0) };
        if w.error != 0 {
            return Err(KernelError::RuleLookup);
        }
        if w.found != 0 {
            return Ok(Some((w.found - 1, Action::from_u32(w.action))));
        }
    }
    Ok(None)
}
