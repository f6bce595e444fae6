//! The qemu test lanes (owned by the VM-lane work; see issue 3).
