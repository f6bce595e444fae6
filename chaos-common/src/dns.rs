//! DNS faults (`net.dns`): which queries a rule answers, and the answer's header.
//!
//! The TC egress program reads a query's name (wire form) into a 256-byte buffer, walks its labels
//! ([`label_step`]) and hashes every suffix of it, back to front ([`suffix_step`]). A rule holds the
//! hash and length of its name, computed the same way by user space ([`DnsMatch::for_name`]), so a
//! rule matches in constant time: the suffix of its length must start at a label and have its
//! hash. Rules for many names then cost the kernel no loop per rule (a byte-by-byte comparison
//! per rule made the program too large to verify). The hash is 64-bit FNV-1a over lower-cased
//! bytes: two different names of the same length collide with a chance of about 2^-64.
//! Indices into the buffers are masked to 0..=255, so every access is in bounds for the verifier
//! as well as in fact.

/// A name in wire form fits in 255 bytes (RFC 1035 §2.3.4); the buffers have one byte more so
/// that an index masked with `NAME_MAX - 1` is always inside them.
pub const NAME_MAX: usize = 256;
const MASK: u32 = NAME_MAX as u32 - 1;
/// At most this many labels in a name of 255 bytes (each takes two or more).
const MAX_LABELS: u32 = 128;
/// The longest label (RFC 1035 §2.3.4); a larger length byte starts a compression pointer, which
/// a query's question never has.
const LABEL_MAX: u32 = 63;

/// [`DnsMatch::rcode`] for "no answer at all": the query is lost, the resolver times out.
pub const TIMEOUT: u8 = 0xff;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_REFUSED: u8 = 5;

/// The port DNS servers listen on.
pub const PORT: u16 = 53;
/// The fixed header before the question.
pub const HEADER_LEN: u32 = 12;

/// Which queries a DNS rule answers, and how ([`crate::Rule::dns`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsMatch {
    /// The [`suffix_step`] hash of the name in wire form (length-prefixed labels ending in the
    /// root's zero byte).
    pub hash: u64,
    /// The name's length in wire form; 0: every name.
    pub len: u16,
    /// 1: only names strictly below the name (`*.payments.internal`); 0: the name itself.
    pub below: u8,
    /// The response code of the answer, or [`TIMEOUT`].
    pub rcode: u8,
    pub _pad: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<DnsMatch>() == 16);

impl DnsMatch {
    /// A rule for the name `wire` (wire form, as [`wire_name`] writes it); `below` for `*.NAME`.
    pub fn for_name(wire: &[u8], below: bool, rcode: u8) -> DnsMatch {
        let hash = wire.iter().rev().fold(HASH_START, |h, &b| suffix_step(h, b));
        DnsMatch { hash, len: wire.len() as u16, below: below as u8, rcode, _pad: [0; 4] }
    }

    /// A rule for every name.
    pub fn any(rcode: u8) -> DnsMatch {
        DnsMatch { rcode, ..Default::default() }
    }
}

/// FNV-1a's offset basis and prime (64-bit).
const HASH_START: u64 = 0xcbf2_9ce4_8422_2325;
const HASH_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The hash of a name suffix one byte longer: `hash` is that of the bytes after `byte`. Case
/// does not matter (length bytes, 0-63, are never letters).
#[inline(always)]
pub const fn suffix_step(hash: u64, byte: u8) -> u64 {
    (hash ^ byte.to_ascii_lowercase() as u64).wrapping_mul(HASH_PRIME)
}

/// The hash of the empty suffix, where the back-to-front pass starts.
pub const SUFFIX_START: u64 = HASH_START;

/// `buf[i]`, the index masked into the buffer. `black_box` keeps the mask: the compiler would
/// otherwise drop it where it can prove the index in range (from a comparison the verifier
/// cannot follow, such as `i < start`), and the verifier would refuse the access.
#[inline(always)]
fn at(buf: &[u8; NAME_MAX], i: u32) -> u8 {
    buf[(core::hint::black_box(i) & MASK) as usize]
}

/// A walk over the labels of the query name at the start of a buffer, one [`label_step`] at a
/// time (the kernel drives it with `bpf_loop`, whose body the verifier checks once).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    /// Where labels start: bit `p` set for a label at byte `p`.
    pub starts: [u64; 4],
    /// Where the next label's length byte is.
    pub pos: u32,
    /// The name's length, the root's zero byte included, once the walk found it; 0 until then.
    pub len: u32,
    /// The walk ended on something that is not a plain, complete name (a compression pointer, a
    /// label running past the packet or past 255 bytes).
    pub bad: bool,
}

/// At most this many turns of [`label_step`] walk any name.
pub const MAX_LABEL_STEPS: u32 = MAX_LABELS;

/// One label of the walk over `buf`, of which the first `avail` bytes came from the packet:
/// whether the walk is over (the name's end found, or `bad`).
#[inline(always)]
pub fn label_step(buf: &[u8; NAME_MAX], avail: u32, w: &mut Labels) -> bool {
    if w.pos >= avail || w.pos > MASK - 1 {
        w.bad = true;
        return true;
    }
    let len = at(buf, w.pos) as u32;
    if len == 0 {
        w.len = w.pos + 1;
        return true;
    }
    if len > LABEL_MAX {
        w.bad = true;
        return true;
    }
    w.starts[((w.pos >> 6) & 3) as usize] |= 1 << (w.pos & 63);
    w.pos += len + 1;
    false
}

/// The whole walk (the kernel's `bpf_loop` does the same turns): `None` for a bad name.
pub fn walk_labels(buf: &[u8; NAME_MAX], avail: u32) -> Option<Labels> {
    let mut w = Labels::default();
    let mut turns = 0;
    while turns < MAX_LABEL_STEPS && !label_step(buf, avail, &mut w) {
        turns += 1;
    }
    (w.len != 0 && !w.bad).then_some(w)
}

/// Where rule `m`'s name would start in the walked query name, if it can match there at all: the
/// last `m.len` bytes, at the start of a label (after the first one for `*.NAME`). `Some(0)` when
/// the rule has no name: every name.
#[inline(always)]
pub fn match_start(w: &Labels, m: &DnsMatch) -> Option<u32> {
    let want = m.len as u32;
    if want == 0 {
        return Some(0);
    }
    if w.len < want || w.len > NAME_MAX as u32 {
        return None;
    }
    let start = w.len - want;
    if (m.below != 0) != (start != 0) {
        return None;
    }
    let at_label = (w.starts[((start >> 6) & 3) as usize] >> (start & 63)) & 1 != 0;
    if start != 0 && !at_label {
        return None;
    }
    Some(start)
}

/// Whether the walked query name is one rule `m` answers, given the hash of the name's suffix
/// from byte `start` on, where `start` is [`match_start`]'s answer.
#[inline(always)]
pub const fn suffix_matches(suffix_hash: u64, m: &DnsMatch) -> bool {
    m.len == 0 || suffix_hash == m.hash
}

/// The hashes of every suffix of the `len`-byte name in `buf`, by where it starts (the kernel's
/// `bpf_loop` makes the same steps, a byte a turn, back to front).
pub fn suffix_hashes(buf: &[u8; NAME_MAX], len: u32) -> [u64; NAME_MAX] {
    let mut out = [0u64; NAME_MAX];
    let mut h = SUFFIX_START;
    let mut p = len.min(NAME_MAX as u32);
    while p > 0 {
        p -= 1;
        h = suffix_step(h, at(buf, p));
        out[p as usize] = h;
    }
    out
}

/// Whether the walked query name in `buf` is one rule `m` answers: what the kernel decides, done
/// here in one piece.
pub fn name_matches(buf: &[u8; NAME_MAX], w: &Labels, m: &DnsMatch) -> bool {
    let Some(start) = match_start(w, m) else { return false };
    suffix_matches(suffix_hashes(buf, w.len)[(start & MASK) as usize], m)
}

/// Whether a DNS header's flags and question count are those of a standard query of one question.
#[inline(always)]
pub const fn is_query(flags: u16, questions: u16) -> bool {
    flags & 0x8000 == 0 && (flags >> 11) & 0xf == 0 && questions == 1
}

/// The flags of the answer to a query with `query` flags: a response (QR) from a server that
/// recurses (RA), with the query's opcode, RD and CD kept, and `rcode`.
#[inline(always)]
pub const fn answer_flags(query: u16, rcode: u8) -> u16 {
    0x8000 | (query & 0x7800) | (query & 0x0100) | 0x0080 | (query & 0x0010) | (rcode as u16 & 0xf)
}

/// A name in wire form, lower case, for [`DnsMatch::for_name`]: `None` when it is not a valid DNS name
/// (an empty label, a label over 63 bytes, over 255 bytes in all). "." and "" are the root.
pub fn wire_name(name: &str, out: &mut [u8; NAME_MAX]) -> Option<u16> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut len = 0usize;
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > LABEL_MAX as usize || len + 1 + label.len() > NAME_MAX - 2 {
                return None;
            }
            out[len] = label.len() as u8;
            for (i, b) in label.bytes().enumerate() {
                out[len + 1 + i] = b.to_ascii_lowercase();
            }
            len += 1 + label.len();
        }
    }
    out[len] = 0;
    Some(len as u16 + 1)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{string::String, vec};

    use super::*;

    fn query_name(name: &str) -> ([u8; NAME_MAX], u32) {
        let mut buf = [0u8; NAME_MAX];
        let len = wire_name(name, &mut buf).unwrap() as u32;
        // The bytes after the name (type, class, anything) must not matter.
        if len as usize + 2 <= NAME_MAX {
            buf[len as usize..len as usize + 2].copy_from_slice(&[0, 1]);
        }
        (buf, len)
    }

    fn rule(pattern: &str) -> DnsMatch {
        let (below, name) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let mut wire = [0u8; NAME_MAX];
        let len = wire_name(name, &mut wire).unwrap() as usize;
        DnsMatch::for_name(&wire[..len], below, RCODE_SERVFAIL)
    }

    #[test]
    fn names_in_wire_form() {
        let mut b = [0u8; NAME_MAX];
        assert_eq!(wire_name("Shop.Example.", &mut b), Some(14));
        assert_eq!(&b[..14], b"\x04shop\x07example\x00");
        assert_eq!(wire_name(".", &mut b), Some(1));
        assert_eq!(wire_name("a..b", &mut b), None, "empty label");
        assert_eq!(wire_name(&"x".repeat(64), &mut b), None, "label over 63 bytes");
        let long = vec!["y".repeat(63); 4].join(".");
        assert_eq!(wire_name(&long, &mut b), None, "over 255 bytes");
        let fits = ["y".repeat(63), "y".repeat(63), "y".repeat(63), "y".repeat(61)].join(".");
        assert_eq!(wire_name(&fits, &mut b), Some(255));
    }

    #[test]
    fn name_length_of_well_formed_and_broken_names() {
        let (buf, len) = query_name("api.payments.internal");
        let w = walk_labels(&buf, 200).unwrap();
        assert_eq!(w.len, len);
        assert_eq!(w.starts[0], 1 | 1 << 4 | 1 << 13, "labels start at 0, 4 and 13");
        assert_eq!(walk_labels(&buf, len - 1), None, "the packet ends inside the name");
        let mut ptr = buf;
        ptr[0] = 0xc0;
        assert_eq!(walk_labels(&ptr, 200), None, "a compression pointer");
        let full = [63u8; NAME_MAX];
        assert_eq!(walk_labels(&full, NAME_MAX as u32), None, "labels past 255 bytes");
        let long: String = [&"y".repeat(63), &"y".repeat(63), &"y".repeat(63), &"y".repeat(61)].map(|s| s.as_str()).join(".");
        let (long, long_len) = query_name(&long);
        assert_eq!(walk_labels(&long, NAME_MAX as u32).map(|w| w.len), Some(long_len), "a name of 255 bytes");
    }

    #[test]
    fn exact_and_wildcard_rules() {
        let wild = rule("*.payments.internal");
        let exact = rule("payments.internal");
        for (name, w, e) in [
            ("api.payments.internal", true, false),
            ("a.b.payments.internal", true, false),
            ("API.Payments.INTERNAL.", true, false),
            ("payments.internal", false, true),
            ("xpayments.internal", false, false),
            ("payments.internal.example", false, false),
            ("internal", false, false),
        ] {
            let (buf, len) = query_name(name);
            let walk = walk_labels(&buf, len).unwrap();
            assert_eq!(name_matches(&buf, &walk, &wild), w, "*.payments.internal vs {name}");
            assert_eq!(name_matches(&buf, &walk, &exact), e, "payments.internal vs {name}");
            assert!(name_matches(&buf, &walk, &DnsMatch::any(RCODE_NXDOMAIN)), "no name: every query");
        }
    }

    #[test]
    fn a_suffix_must_start_at_a_label() {
        let m = rule("*.b.c");
        let (buf, len) = query_name("x.b.c");
        assert!(name_matches(&buf, &walk_labels(&buf, len).unwrap(), &m));
        // One label "a\x01b", then "c": the name's last five bytes are those of "b.c" in wire form,
        // but they start inside a label.
        let mut tricky = [0u8; NAME_MAX];
        tricky[..8].copy_from_slice(b"\x03a\x01b\x01c\x00\x00");
        let walk = walk_labels(&tricky, 8).unwrap();
        assert_eq!(walk.len, 7);
        assert!(!name_matches(&tricky, &walk, &m));
    }

    #[test]
    fn answer_header() {
        // A recursive query (RD), AD set by dig: the answer keeps RD, drops AD, sets QR and RA.
        let q = 0x0120;
        assert!(is_query(q, 1));
        assert!(!is_query(q, 2), "two questions");
        assert!(!is_query(0x8180, 1), "a response");
        assert!(!is_query(0x2800, 1), "an UPDATE");
        assert_eq!(answer_flags(q, RCODE_SERVFAIL), 0x8182);
        assert_eq!(answer_flags(q, RCODE_NXDOMAIN), 0x8183);
        assert_eq!(answer_flags(0x0010, RCODE_REFUSED), 0x8095, "CD kept, RD clear");
    }
}
