//! The chaos kernel programs. One object, embedded in the `chaos` binary; each session loads it
//! once, so its maps (rules, targets, counters) belong to that session alone.
//!
//! Layout: `engine` (the maps and the counted decision every hook shares), then one module per
//! hook family. Each program is a thin entry point that calls a `try_*` function; failures are
//! counted in an error map, never swallowed.
#![no_std]
#![no_main]
// Atomic adds on map values (engine.rs): the BPF target has no stable atomic read-modify-write.
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "core::intrinsics::atomic_xadd, see engine.rs")]

mod engine;
mod globals;
mod net;
mod observe;
mod probe;
mod sys;

/// GPL-compatible, so GPL-only helpers and program types (LSM, tracing) can be used.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here, so this never runs.
    loop {}
}
