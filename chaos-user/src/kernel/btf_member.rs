//! Where a member lies in a kernel struct, from the kernel's BTF: what a program needs where it
//! passes the address of a member to a helper the verifier checks by type (`bpf_d_path` takes
//! `&file->f_path`), since aya has no CO-RE relocations for Rust programs and aya-obj does not
//! expose struct members. Only what that needs is read: the type section's records, skipped by
//! kind, and the string section for names (the format: the kernel's Documentation/bpf/btf.rst).

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The bytes each kind of type record has after its 12-byte common part, given its `vlen`.
fn trailing(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        // INT, VAR, DECL_TAG: one u32.
        1 | 14 | 17 => 4,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        // ARRAY: element type, index type, count.
        3 => 12,
        // STRUCT, UNION (name, type, offset), DATASEC (type, offset, size), ENUM64 (name, lo, hi).
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM (name, value), FUNC_PROTO (name, type).
        6 | 13 => 8 * vlen,
        _ => return None,
    })
}

/// The byte offset of `member` in `struct strukt`, from raw BTF (little-endian, as the kernel
/// writes it on x86_64), or None if the BTF does not have both. A member inside an anonymous
/// struct or union counts (6.12's `struct file` keeps `f_path` in one).
pub fn member_offset(btf: &[u8], strukt: &str, member: &str) -> Option<u32> {
    member_offsets(btf, &[(strukt, member)]).pop().flatten()
}

/// [`member_offset`] of each `(struct, member)`, the BTF indexed once (it is megabytes).
pub fn member_offsets(btf: &[u8], wanted: &[(&str, &str)]) -> Vec<Option<u32>> {
    member_bits(btf, wanted).into_iter().map(|m| m.and_then(MemberBits::bytes)).collect()
}

/// Where a member lies, in bits from the struct's start; `bits` is a bitfield's width, 0 for a
/// whole member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberBits {
    pub offset: u32,
    pub bits: u32,
}

impl MemberBits {
    /// The byte offset of a whole member that starts on a byte.
    fn bytes(self) -> Option<u32> {
        (self.bits == 0 && self.offset.is_multiple_of(8)).then_some(self.offset / 8)
    }
}

/// Where each `(struct, member)` lies, bitfields included, the BTF indexed once.
pub fn member_bits(btf: &[u8], wanted: &[(&str, &str)]) -> Vec<Option<MemberBits>> {
    let Some(types) = indexed(btf) else { return vec![None; wanted.len()] };
    wanted
        .iter()
        .map(|(strukt, member)| {
            let id = (1..types.at.len()).find(|&id| types.kind(id) == Some((KIND_STRUCT, true)) && types.name_of(id) == Some(strukt.as_bytes()))?;
            types.find(id, member.as_bytes(), 0)
        })
        .collect()
}

/// The type section of raw BTF (little-endian, as the kernel writes it on x86_64), indexed.
fn indexed(btf: &[u8]) -> Option<Types<'_>> {
    if u16::from_le_bytes(btf.get(0..2)?.try_into().ok()?) != BTF_MAGIC {
        return None;
    }
    let hdr_len = u32_at(btf, 4)? as usize;
    let (type_off, type_len) = (u32_at(btf, 8)? as usize, u32_at(btf, 12)? as usize);
    let (str_off, str_len) = (u32_at(btf, 16)? as usize, u32_at(btf, 20)? as usize);
    Types {
        types: btf.get(hdr_len + type_off..hdr_len + type_off + type_len)?,
        strings: btf.get(hdr_len + str_off..hdr_len + str_off + str_len)?,
        at: Vec::new(),
    }
    .indexed()
}

/// The type section, with where each type's record starts (by id; id 0 is void).
struct Types<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    at: Vec<usize>,
}

impl Types<'_> {
    fn indexed(mut self) -> Option<Self> {
        self.at.push(0);
        let mut at = 0;
        while at + 12 <= self.types.len() {
            self.at.push(at);
            let info = u32_at(self.types, at + 4)?;
            at += 12 + trailing((info >> 24) & 0x1f, (info & 0xffff) as usize)?;
        }
        Some(self)
    }

    fn name(&self, off: u32) -> Option<&[u8]> {
        let s = self.strings.get(off as usize..)?;
        Some(&s[..s.iter().position(|&b| b == 0)?])
    }

    fn name_of(&self, id: usize) -> Option<&[u8]> {
        self.name(u32_at(self.types, *self.at.get(id)?)?)
    }

    /// The kind of type `id`, and whether it is a struct or union with members.
    fn kind(&self, id: usize) -> Option<(u32, bool)> {
        let info = u32_at(self.types, *self.at.get(id)? + 4)?;
        Some(((info >> 24) & 0x1f, info & 0xffff > 0))
    }

    /// Where `member` lies in the struct or union `id`, which starts at bit `base`.
    fn find(&self, id: usize, member: &[u8], base: u32) -> Option<MemberBits> {
        let at = *self.at.get(id)?;
        let info = u32_at(self.types, at + 4)?;
        let bitfields = info >> 31 == 1;
        for m in 0..(info & 0xffff) as usize {
            let rec = at + 12 + 12 * m;
            let (name_off, ty, offset) = (u32_at(self.types, rec)?, u32_at(self.types, rec + 4)? as usize, u32_at(self.types, rec + 8)?);
            // With the kind flag, the offset's low 24 bits are the bit offset and its high 8 the
            // bitfield's width (0 for a whole member).
            let (bits, width) = if bitfields { (offset & 0x00ff_ffff, offset >> 24) } else { (offset, 0) };
            let here = base + bits;
            if name_off == 0 && matches!(self.kind(ty), Some((KIND_STRUCT | KIND_UNION, _))) {
                if let Some(found) = self.find(ty, member, here) {
                    return Some(found);
                }
            } else if self.name(name_off)? == member {
                return Some(MemberBits { offset: here, bits: width });
            }
        }
        None
    }
}

/// Where the programs' kernel struct members lie in the running kernel (its BTF,
/// `super::vmlinux_btf_bytes`): `f_path` in `struct file`, `tgid` in `struct task_struct`.
pub fn program_offsets() -> ProgramOffsets {
    let Ok(btf) = super::vmlinux_btf_bytes() else { return ProgramOffsets::default() };
    let wanted = [
        ("file", "f_path"),
        ("task_struct", "tgid"),
        ("sock", "sk_cgrp_data"),
        ("sock_cgroup_data", "cgroup"),
        ("cgroup", "kn"),
        ("kernfs_node", "id"),
        ("cgroup", "level"),
        ("cgroup", "ancestors"),
        ("cgroup", "ancestor_ids"),
        ("sk_buff", "ip_summed"),
    ];
    let found = member_bits(btf, &wanted);
    let bytes: Vec<Option<u32>> = found.iter().map(|m| m.and_then(MemberBits::bytes)).collect();
    match (&bytes[..], found.last()) {
        (&[f_path, tgid, sk_cgrp_data, cgroup, kn, id, level, ancestors, ancestor_ids, _], Some(ip_summed)) => ProgramOffsets {
            // Two bits within one byte, as every kernel since 2.6 has it.
            skb_ip_summed: ip_summed.filter(|m| m.bits == 2 && m.offset % 8 <= 6).map(|m| m.offset),
            f_path,
            tgid,
            sock_cgroup: (|| {
                let (array, ids) = match (ancestors, ancestor_ids) {
                    (Some(a), _) => (a, 0),
                    (None, Some(a)) => (a, 1),
                    (None, None) => return None,
                };
                Some([sk_cgrp_data? + cgroup?, kn?, id?, level?, array, ids])
            })(),
        },
        _ => ProgramOffsets::default(),
    }
}

/// Where the programs read the kernel's structs (see the globals in `chaos-ebpf/src/globals.rs`).
#[derive(Debug, Default)]
pub struct ProgramOffsets {
    /// `file.f_path`.
    pub f_path: Option<u32>,
    /// `task_struct.tgid`.
    pub tgid: Option<u32>,
    /// A socket's cgroup (`chaos_common::SOCK_CGROUP_OFFSET_GLOBALS`, in that order): before
    /// 5.15 `sock_cgroup_data` has no `cgroup` member.
    pub sock_cgroup: Option<[u32; 6]>,
    /// The bit offset of `sk_buff.ip_summed` (two bits: whether the checksum is computed, to be
    /// computed by the device, or checked), for the corrupt fault's count of what a checksum
    /// will not catch.
    pub skb_ip_summed: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with an int, `struct pair { int a; union { int b; }; }` (b at byte 4) and
    /// `struct flags { int x:3; int y:2; }` (y at bit 3).
    fn pair() -> Vec<u8> {
        let strings = b"\0int\0pair\0a\0b\0flags\0x\0y\0";
        let mut types = Vec::new();
        let mut word = |w: u32| types.extend_from_slice(&w.to_le_bytes());
        // [1] int: name "int", kind INT, size 4, encoding.
        word(1);
        word(1 << 24);
        word(4);
        word(32);
        // [2] struct pair: a, then an anonymous union [3] at byte 4.
        word(5);
        word((4 << 24) | 2);
        word(8);
        for (name, ty, bits) in [(10, 1, 0), (0, 3, 32)] {
            word(name);
            word(ty);
            word(bits);
        }
        // [3] union { int b; }.
        word(0);
        word((5 << 24) | 1);
        word(4);
        for w in [12, 1, 0] {
            word(w);
        }
        // [4] struct flags, with the kind flag: each member's offset holds its width above bit 24.
        word(14);
        word((1 << 31) | (4 << 24) | 2);
        word(1);
        for (name, ty, bits) in [(20, 1, 3 << 24), (22, 1, (2 << 24) | 3)] {
            word(name);
            word(ty);
            word(bits);
        }
        let mut btf = Vec::new();
        btf.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        btf.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            btf.extend_from_slice(&w.to_le_bytes());
        }
        btf.extend_from_slice(&types);
        btf.extend_from_slice(strings);
        btf
    }

    #[test]
    fn a_member_is_found_by_struct_and_name() {
        let btf = pair();
        assert_eq!(member_offset(&btf, "pair", "b"), Some(4), "inside the anonymous union at 4");
        assert_eq!(member_offset(&btf, "pair", "a"), Some(0));
        assert_eq!(member_offset(&btf, "pair", "c"), None);
        assert_eq!(member_offset(&btf, "file", "f_path"), None);
        assert_eq!(member_offset(&btf[..20], "pair", "b"), None, "a cut blob is no answer");
        assert_eq!(member_bits(&btf, &[("flags", "y"), ("pair", "b")]), [Some(MemberBits { offset: 3, bits: 2 }), Some(MemberBits { offset: 32, bits: 0 })]);
        assert_eq!(member_offset(&btf, "flags", "x"), None, "a bitfield has no byte offset");
    }

    #[test]
    fn the_running_kernel_has_file_f_path_task_tgid_and_a_sockets_cgroup() {
        // Every kernel chaos runs on has BTF; f_path sits well inside struct file, tgid far into
        // task_struct (after its scheduling state).
        let o = program_offsets();
        let (Some(f_path), Some(tgid)) = (o.f_path, o.tgid) else { panic!("no struct file f_path or task_struct tgid in /sys/kernel/btf/vmlinux") };
        assert!(f_path > 0 && f_path < 512 && f_path % 8 == 0, "{f_path}");
        assert!(tgid > 512 && tgid < 8192 && tgid % 4 == 0, "{tgid}");
        // Pointers at 8-byte boundaries; a cgroup's parent in its first member (its css).
        let [sock, kn, id, level, ancestors, ids] = o.sock_cgroup.expect("no sock.sk_cgrp_data.cgroup and the cgroup members in the BTF");
        assert!(sock > 64 && sock % 8 == 0 && kn % 8 == 0 && id % 8 == 0 && level % 4 == 0, "{:?}", o.sock_cgroup);
        // The array of ancestors ends struct cgroup, past its level; this host (6.18) has cgroups.
        assert!(ancestors > level && ancestors % 8 == 0 && ids == 0, "{:?}", o.sock_cgroup);
        // ip_summed: two bits past the skb's list links and its socket and device pointers.
        let ip_summed = o.skb_ip_summed.expect("no sk_buff.ip_summed of two bits in the BTF");
        assert!(ip_summed > 8 * 64 && ip_summed < 8 * 256, "{ip_summed}");
    }
}
