//! fmod_ret programs, loaded by hand.
//!
//! aya 0.14 has no fmod_ret program type, and its object parser rejects `fmod_ret/` sections, so
//! the program is compiled into an `lsm/` section (which aya parses and chaos never loads as LSM)
//! and loaded here: read the section's instructions from the ELF, point its map references
//! at the maps aya already created, `BPF_PROG_LOAD` it as `BPF_MODIFY_RETURN` against the target
//! function's BTF id, and attach it with `BPF_RAW_TRACEPOINT_OPEN`, which returns a link fd: the
//! kernel detaches it when the last fd closes, SIGKILL included.
//!
//! Only what chaos's own programs need is supported: map references (`R_BPF_INSN_64` against a
//! map symbol). A relocation of any other kind, or a call to another function, is refused.

use std::{
    collections::HashMap,
    ffi::c_void,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use aya::Btf;
use aya_obj::btf::BtfKind;
use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_MODIFY_RETURN: u32 = 26;
const BPF_LD_IMM64: u8 = 0x18;
const BPF_CALL: u8 = 0x85;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_PSEUDO_CALL: u8 = 1;
const INSN: usize = 8;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (uapi, stable), up to `attach_btf_obj_fd`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<ProgLoadAttr>() == 120);

/// A loaded and attached fmod_ret program. Dropping it detaches and unloads.
#[derive(Debug)]
pub struct FmodRet {
    _prog: OwnedFd,
    _link: OwnedFd,
    pub prog_id: u32,
    pub link_id: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FmodRetError {
    #[error("the kernel object has no section {0}")]
    NoSection(String),
    #[error("the program in {section} has an unsupported relocation or call at instruction {insn}")]
    Unsupported { section: String, insn: usize },
    #[error("the program refers to map {0}, which was not created")]
    NoMap(String),
    #[error("no function {0} in the kernel's BTF")]
    NoFunction(String),
    #[error("reading the kernel object: {0}")]
    Object(#[from] object::Error),
    #[error("BPF_PROG_LOAD (fmod_ret on {target}): {err}")]
    Load { target: String, err: io::Error },
    #[error("attaching fmod_ret to {target}: {err}")]
    Attach { target: String, err: io::Error },
}

impl FmodRetError {
    /// The errno behind a load or attach refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            FmodRetError::Load { err, .. } | FmodRetError::Attach { err, .. } => err.raw_os_error(),
            _ => None,
        }
    }
}

/// The instructions of `section`, with map references resolved to `maps` (name → fd).
pub fn instructions(object: &[u8], section: &str, maps: &HashMap<String, RawFd>) -> Result<Vec<u8>, FmodRetError> {
    let file = object::File::parse(object)?;
    let sec = file.section_by_name(section).ok_or_else(|| FmodRetError::NoSection(section.into()))?;
    let mut insns = sec.data()?.to_vec();
    let unsupported = |at: usize| FmodRetError::Unsupported { section: section.into(), insn: at / INSN };
    for (offset, reloc) in sec.relocations() {
        let at = offset as usize;
        let RelocationTarget::Symbol(idx) = reloc.target() else { return Err(unsupported(at)) };
        let name = file.symbol_by_index(idx)?.name()?.to_string();
        let fd = *maps.get(&name).ok_or(FmodRetError::NoMap(name))?;
        if insns.get(at) != Some(&BPF_LD_IMM64) || at + 2 * INSN > insns.len() {
            return Err(unsupported(at));
        }
        insns[at + 1] = (insns[at + 1] & 0x0f) | (BPF_PSEUDO_MAP_FD << 4);
        insns[at + 4..at + 8].copy_from_slice(&fd.to_le_bytes());
        insns[at + INSN + 4..at + INSN + 8].copy_from_slice(&0i32.to_le_bytes());
    }
    for at in (0..insns.len()).step_by(INSN) {
        if insns[at] == BPF_CALL && insns[at + 1] >> 4 == BPF_PSEUDO_CALL {
            return Err(unsupported(at));
        }
    }
    Ok(insns)
}

fn bpf(cmd: libc::c_long, attr: *mut c_void, size: usize) -> io::Result<RawFd> {
    // SAFETY: `attr` points to a live, initialised attribute struct of `size` bytes that the
    // kernel reads (and for info queries writes within the buffers it names).
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as RawFd) }
}

fn load(insns: &[u8], btf_id: u32, target: &str, log: Option<&mut Vec<u8>>) -> Result<OwnedFd, FmodRetError> {
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..14].copy_from_slice(b"chaos_fmod_ret");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_TRACING,
        insn_cnt: (insns.len() / INSN) as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_MODIFY_RETURN,
        attach_btf_id: btf_id,
        ..Default::default()
    };
    if let Some(buf) = log {
        attr.log_level = 1;
        attr.log_size = buf.len() as u32;
        attr.log_buf = buf.as_mut_ptr() as u64;
    }
    match bpf(BPF_PROG_LOAD, (&raw mut attr).cast(), std::mem::size_of::<ProgLoadAttr>()) {
        // SAFETY: a new fd the kernel just returned, owned by nobody else.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(err) => Err(FmodRetError::Load { target: target.into(), err }),
    }
}

/// The kernel id of a BPF program or link fd (the second u32 of both info structs).
fn id_of(fd: BorrowedFd) -> u32 {
    let mut info = [0u32; 32];
    #[repr(C)]
    struct InfoAttr {
        fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr { fd: fd.as_raw_fd() as u32, info_len: 128, info: info.as_mut_ptr() as u64 };
    match bpf(BPF_OBJ_GET_INFO_BY_FD, (&raw mut attr).cast(), std::mem::size_of::<InfoAttr>()) {
        Ok(_) => info[1],
        Err(_) => 0,
    }
}

/// Loads `section` of `object` as fmod_ret on kernel function `target` and attaches it.
pub fn attach(object: &[u8], section: &str, maps: &HashMap<String, RawFd>, target: &str, btf: &Btf) -> Result<FmodRet, FmodRetError> {
    let insns = instructions(object, section, maps)?;
    let btf_id = btf.id_by_type_name_kind(target, BtfKind::Func).map_err(|_| FmodRetError::NoFunction(target.into()))?;
    let prog = match load(&insns, btf_id, target, None) {
        Ok(fd) => fd,
        Err(first) => {
            // Again with the verifier's log, for RUST_LOG=debug.
            let mut buf = vec![0u8; 1 << 16];
            let _ = load(&insns, btf_id, target, Some(&mut buf));
            let log = String::from_utf8_lossy(&buf).trim_end_matches('\0').to_string();
            log::debug!("verifier log for fmod_ret on {target}:\n{log}");
            return Err(first);
        }
    };
    #[repr(C)]
    struct RawTpAttr {
        name: u64,
        prog_fd: u32,
        _pad: u32,
    }
    // A null name attaches a tracing program to the function it was loaded for.
    let mut attr = RawTpAttr { name: 0, prog_fd: prog.as_raw_fd() as u32, _pad: 0 };
    let link = bpf(BPF_RAW_TRACEPOINT_OPEN, (&raw mut attr).cast(), std::mem::size_of::<RawTpAttr>())
        .map_err(|err| FmodRetError::Attach { target: target.into(), err })?;
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    let link = unsafe { OwnedFd::from_raw_fd(link) };
    let (prog_id, link_id) = (id_of(prog.as_fd()), id_of(link.as_fd()));
    Ok(FmodRet { _prog: prog, _link: link, prog_id, link_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both fmod_ret programs of the embedded object must be loadable by this loader: only map
    /// references, no call to another function (a zeroed struct on the stack once became a call
    /// to `memset`, which only the 6.1 lanes' probe noticed).
    #[test]
    fn the_embedded_fmod_ret_programs_need_only_their_maps() {
        let file = object::File::parse(crate::KERNEL_OBJECT).expect("the embedded object parses");
        let maps_section = file.section_by_name("maps").expect("a maps section").index();
        let maps: HashMap<String, RawFd> = file
            .symbols()
            // Named maps only, as aya creates them: a reference through the section's own
            // (nameless) symbol is a map this loader cannot find (a private `static` map did it).
            .filter(|s| s.section_index() == Some(maps_section) && s.name().is_ok_and(|n| !n.is_empty()))
            .enumerate()
            .map(|(i, s)| (s.name().expect("a name").to_string(), 1000 + i as RawFd))
            .collect();
        for section in [chaos_common::sys::FMOD_RET_SYSCALL_SECTION, chaos_common::sys::FMOD_RET_FILE_OPEN_SECTION] {
            let insns = instructions(crate::KERNEL_OBJECT, section, &maps).unwrap_or_else(|e| panic!("{section}: {e}"));
            assert!(insns.len() > 10 * INSN, "{section} has a program");
        }
    }
}
