//! Read-only globals the loader sets before load (`EbpfLoader::override_global`). They live in
//! `.rodata`, so the verifier sees them as constants and prunes what they switch off.

/// Nonzero when the user asked for a log line per injection (`--log-packets`).
#[unsafe(no_mangle)]
static LOG_PACKETS: u8 = 0;

#[inline(always)]
pub fn log_packets() -> bool {
    // SAFETY: a plain read of an immutable static; volatile so the compiler does not fold the
    // value it saw at build time (the loader rewrites it before the kernel sees the program).
    unsafe { core::ptr::read_volatile(&LOG_PACKETS) != 0 }
}
