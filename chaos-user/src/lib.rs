//! The chaos loader library.

/// The kernel object, built by build.rs and embedded so `chaos` is one file to copy to a host.
pub static KERNEL_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos"));
