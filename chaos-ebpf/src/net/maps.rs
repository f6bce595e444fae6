use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use chaos_common::net::{MAX_RULES, NET_ERROR_KINDS, NetCounters, NetError, NetRule};

// Names must equal chaos_common::net::{RULES_MAP, COUNTERS_MAP, ERRORS_MAP}.
#[map]
pub static NET_RULES: Array<NetRule> = Array::with_max_entries(MAX_RULES, 0);

#[map]
pub static NET_COUNTERS: PerCpuArray<NetCounters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

#[map]
pub static NET_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NET_ERROR_KINDS, 0);

/// This CPU's counters of rule `i`, to update in place (per CPU, so no atomics are needed).
#[inline(always)]
pub fn counters(i: u32) -> Option<&'static mut NetCounters> {
    // SAFETY: the pointer comes from a successful lookup in a per-CPU array, is valid for the
    // program's run and is not shared with another CPU; programs do not nest on one CPU for the
    // same hook, so no other reference to this slot exists while we hold this one.
    NET_COUNTERS.get_ptr_mut(i).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn count_error(e: NetError) {
    if let Some(p) = NET_ERRORS.get_ptr_mut(e as u32) {
        // SAFETY: as in `counters`.
        unsafe { *p += 1 };
    }
}
