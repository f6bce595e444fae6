//! The chaos kernel programs. One object, embedded in the `chaos` binary; each `chaos` run loads
//! its own copy, so its maps (rules, counters) belong to that run alone.
//!
//! Layout: one module per hook family. Each program is a thin entry point that calls a
//! `try_*` function; failures are counted in an error map, never swallowed.
#![no_std]
#![no_main]

mod globals;
mod net;
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
