//! The boundary with the kernel: loading the embedded object once per session, its maps (rules,
//! targets, counters), its programs, and the maps of another session opened by id.

pub mod btf_member;
pub mod config;
pub mod fmod_ret;
pub mod netdev;
pub mod rtnl;

use std::{collections::BTreeMap, io::Write};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{Program, ProgramError},
    util::nr_cpus,
};
use chaos_common::{
    Action, CALL_LOG_MAP, FILE_F_PATH_OFFSET_GLOBAL, FOLLOW_OPEN_FILES_PROGRAM, FOLLOW_TGIDS_MAP, FLOWS_MAP, HOLDS_MAP, INLINE_RULES_GLOBAL, PACKET_FEATURES_GLOBAL, RING_BUFFER_MAPS, SYSCALL_ONLY_MAPS, MAX_FOLLOW_TGIDS, TASK_TGID_OFFSET_GLOBAL, SKB_IP_SUMMED_BIT_GLOBAL, SOCK_CGROUP_KNOWN_GLOBAL, SOCK_CGROUP_OFFSET_GLOBALS, COUNTERS_MAP, SYS_RULES_MAP, Counters, ERRORS_MAP, KERNEL_ERROR_KINDS, KERNEL_ERROR_NAMES, LOG_PACKETS_GLOBAL, RULES_MAP, Rule,
    PRNG_MAP, SESSION_MAP, SessionConfig, TARGETS_MAP, TargetRules, feature,
    loss::Prng,
    net::{DELAY_TABLES_MAP, DelayTable},
    sys::CallRecord,
};
use serde::{Deserialize, Serialize};

use crate::{
    KERNEL_OBJECT,
    error::{Error, Result},
    unsupported,
};

/// One session's copy of the kernel object: its programs and its own maps.
pub struct Kernel {
    pub ebpf: Ebpf,
    /// Forwards the programs' aya-log records to env_logger; flushed by the watch loop.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// The kernel's BTF says where a socket's cgroup lies (what TC ingress reads).
    pub sock_cgroup_known: bool,
    /// What of the packet programs it was loaded with (`Needs::features`).
    packet_features: u64,
}

fn map_error(e: MapError) -> Error {
    Error::Other(e.into())
}

/// The kernel ids of a session's maps: how `chaos status` and `chaos stop` reach a session that
/// another process holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapIds {
    pub rules: u32,
    pub counters: u32,
    pub session: u32,
    pub errors: u32,
}

/// A target's packet rules the packet programs walk in line before `bpf_loop` takes the rest.
/// Set at load, not built in, for the verifier: built in as 1, LLVM's code for it cost 6.1's
/// verifier 350,405 instructions for TC egress. As a load-time value, the instructions the
/// verifier processed for TC egress and cgroup_skb ingress (4 / 2 / 1 / 0 in line): 6.18 70,844
/// and 88,710 / 59,753 and 69,587 / 54,524 and 60,725 / 49,492 and 46,498; Debian 6.12 57,199
/// and 54,850 / 53,862 and 49,202 / 52,449 and 46,922 / 51,269 and 45,141; 6.1 92,522 and
/// 89,134 / 85,625 and 77,822 / 82,820 and 73,744 / 67,864 and 53,689. 0 would call the helper
/// for every packet's first rule; 1 costs no more per packet than 4 (`chaos workload
/// packet-time`).
const INLINE_RULES: u32 = 1;

/// What a session's kernel object is made for. The maps it needs are made in full, the others
/// with a few entries each: nothing its user attaches reads or writes them, and a session's start
/// and memory are spared making them (the syscall faults' call counts alone, 65,536 entries, were
/// a third of a packet session's map memory). And its packet programs keep only the arms of the
/// actions and options its rules use (`chaos_common::feature`): the verifier, most of a
/// session's start, walks nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// The maps of `chaos observe`'s programs.
    pub observe: bool,
    /// What the rules use (`chaos_common::feature` bits): the packet programs' arms, and so which
    /// fault maps are needed.
    pub features: u64,
}

impl Needs {
    pub const ALL: Needs = Needs { observe: true, features: feature::ALL };

    /// What a session of these rules needs (it never attaches `chaos observe`'s programs).
    pub fn of_rules<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> Needs {
        Needs { observe: false, features: rules.into_iter().fold(0, |f, rule| f | feature::of_rule(rule)) }
    }

    fn has(self, action: Action) -> bool {
        self.features & feature::action(action) != 0
    }

    /// The maps to make small, and how small.
    fn unused(self) -> Vec<(&'static str, u32)> {
        let few = |name: &'static str| (name, if RING_BUFFER_MAPS.contains(&name) { page_size() } else { UNUSED_MAP_ENTRIES });
        let mut out = Vec::new();
        if !self.observe {
            out.extend(chaos_common::observe::OBSERVE_ONLY_MAPS.map(few));
        }
        if ![Action::SysFail, Action::SysSignal, Action::SysDelay].into_iter().any(|a| self.has(a)) {
            out.extend(SYSCALL_ONLY_MAPS.map(few));
        }
        if !self.has(Action::NetStall) {
            out.push(few(FLOWS_MAP));
        }
        out
    }
}

/// Entries of a map nothing uses: a few, not one, as an LRU map keeps a free list per CPU.
const UNUSED_MAP_ENTRIES: u32 = 64;

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u32 } else { 4096 }
}

impl Kernel {
    /// Loads the object's maps (programs are loaded one by one, when a fault needs them).
    pub fn load(log_packets: bool) -> Result<Kernel> {
        Kernel::load_with(log_packets, Needs::ALL)
    }

    /// As [`Kernel::load`], with only the maps `needed` made in full.
    pub fn load_with(log_packets: bool, needed: Needs) -> Result<Kernel> {
        raise_memlock();
        let log_flag = log_packets as u8;
        // Without BTF no program that needs it loads (LSM, fmod_ret, tp_btf), whatever this is.
        // aya's loader parses the kernel's BTF when it is made, and chaos does not use that (see
        // below): about 20 ms here that no setting avoids, so it overlaps the offsets' own read.
        let (offsets, mut loader) = std::thread::scope(|s| {
            let loader = s.spawn(EbpfLoader::new);
            let offsets = btf_member::program_offsets();
            (offsets, loader.join().unwrap_or_else(|_| EbpfLoader::new()))
        });
        let (f_path, tgid) = (offsets.f_path.unwrap_or(0), offsets.tgid.unwrap_or(0));
        let sock_cgroup_known = offsets.sock_cgroup.is_some() as u8;
        let sock_cgroup = offsets.sock_cgroup.unwrap_or_default();
        let ip_summed = offsets.skb_ip_summed.unwrap_or(u32::MAX);
        loader.override_global(INLINE_RULES_GLOBAL, &INLINE_RULES, true);
        loader.override_global(PACKET_FEATURES_GLOBAL, &needed.features, true);
        for (name, entries) in needed.unused() {
            loader.map_max_entries(name, entries);
        }
        for (name, offset) in SOCK_CGROUP_OFFSET_GLOBALS.iter().zip(&sock_cgroup) {
            loader.override_global(name, offset, true);
        }
        let mut ebpf = loader
            // The kernel's BTF serves CO-RE relocations, which Rust programs do not have (see
            // `btf_member`): none here. The BTF-typed programs take it at their own load.
            .btf(None)
            .override_global(LOG_PACKETS_GLOBAL, &log_flag, true)
            .override_global(FILE_F_PATH_OFFSET_GLOBAL, &f_path, true)
            .override_global(TASK_TGID_OFFSET_GLOBAL, &tgid, true)
            .override_global(SOCK_CGROUP_KNOWN_GLOBAL, &sock_cgroup_known, true)
            .override_global(SKB_IP_SUMMED_BIT_GLOBAL, &ip_summed, true)
            .load(KERNEL_OBJECT)
            .map_err(|e| {
            log::debug!("loading the kernel object: {e:?}");
            if is_eperm(&e) {
                unsupported!("the kernel refused to create BPF maps (EPERM): run chaos as root, or with CAP_BPF")
            } else {
                Error::Other(anyhow::anyhow!("loading the kernel object failed: {e}"))
            }
        })?;
        let logger = if log_packets || log::log_enabled!(log::Level::Debug) {
            aya_log::EbpfLogger::init(&mut ebpf).map_err(|e| log::debug!("no kernel log channel: {e}")).ok()
        } else {
            None
        };
        // The loader's BTF, parsed on a thread of its own, was freed into that thread's malloc
        // arena, which glibc keeps: 1.8 MB more resident for the rest of the session, measured.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        Ok(Kernel { ebpf, logger, sock_cgroup_known: sock_cgroup_known != 0, packet_features: needed.features })
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf.map_mut(name).ok_or_else(|| Error::Other(anyhow::anyhow!("the embedded kernel object has no map {name}")))
    }

    fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf.map(name).ok_or_else(|| Error::Other(anyhow::anyhow!("the embedded kernel object has no map {name}")))
    }

    pub fn set_rule(&mut self, index: u32, rule: &Rule) -> Result<()> {
        // A rule whose action's arm the programs were loaded without would do nothing, silently.
        let missing = feature::of_rule(rule) & !self.packet_features;
        if missing != 0 {
            return Err(Error::Other(anyhow::anyhow!("internal error: rule {index} uses what its kernel object was loaded without (features {missing:#x})")));
        }
        let mut rules: Array<_, Rule> = Array::try_from(self.map_mut(RULES_MAP)?).map_err(map_error)?;
        rules.set(index, rule, 0).map_err(map_error)
    }

    /// Seeded rule `index`'s generator, the same start on every CPU.
    pub fn set_prng(&mut self, index: u32, p: Prng) -> Result<()> {
        let cpus = nr_cpus().map_err(|(_, e)| Error::Other(anyhow::anyhow!("counting CPUs: {e}")))?;
        let mut prngs: PerCpuArray<_, Prng> = PerCpuArray::try_from(self.map_mut(PRNG_MAP)?).map_err(map_error)?;
        let values = PerCpuValues::try_from(vec![p; cpus]).map_err(|e| Error::Other(anyhow::anyhow!("{e}")))?;
        prngs.set(index, values, 0).map_err(map_error)
    }

    /// The distribution of delay rule `index`'s jitter.
    pub fn set_delay_table(&mut self, index: u32, t: &DelayTable) -> Result<()> {
        let mut tables: HashMap<_, u32, DelayTable> = HashMap::try_from(self.map_mut(DELAY_TABLES_MAP)?).map_err(map_error)?;
        tables.insert(index, t, 0).map_err(map_error)
    }

    pub fn set_target(&mut self, cgroup_id: u64, t: &TargetRules) -> Result<()> {
        let mut targets: HashMap<_, u64, TargetRules> = HashMap::try_from(self.map_mut(TARGETS_MAP)?).map_err(map_error)?;
        targets.insert(cgroup_id, t, 0).map_err(map_error)
    }

    /// Forgets target `cgroup_id` (its rules no longer apply to it).
    pub fn remove_target(&mut self, cgroup_id: u64) -> Result<()> {
        let mut targets: HashMap<_, u64, TargetRules> = HashMap::try_from(self.map_mut(TARGETS_MAP)?).map_err(map_error)?;
        match targets.remove(&cgroup_id) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_error(e)),
        }
    }

    /// The rules written for target `cgroup_id` (None: it is not a target).
    pub fn target(&self, cgroup_id: u64) -> Result<Option<TargetRules>> {
        let targets: HashMap<_, u64, TargetRules> = HashMap::try_from(self.map(TARGETS_MAP)?).map_err(map_error)?;
        match targets.get(&cgroup_id, 0) {
            Ok(t) => Ok(Some(t)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(e)),
        }
    }

    /// Forgets every cgroup's cached rules (the cache and each CPU's last lookup): called once the
    /// targets are written, so a lookup made before (the kernel checks attach this object's TC
    /// program to `lo` for an instant, with no targets) cannot hide a target.
    pub fn forget_cached_targets(&mut self) -> Result<()> {
        let mut cache: HashMap<_, u64, TargetRules> = HashMap::try_from(self.map_mut(chaos_common::TARGET_CACHE_MAP)?).map_err(map_error)?;
        let leaves: Vec<u64> = cache.keys().filter_map(|k| k.ok()).collect();
        for leaf in leaves {
            let _ = cache.remove(&leaf);
        }
        // The per-CPU entry is the eBPF crate's LastLeaf: a leaf id then its rules; zero is "none".
        const LAST_LEAF_SIZE: usize = 8 + std::mem::size_of::<TargetRules>();
        let mut last: aya::maps::PerCpuArray<_, [u8; LAST_LEAF_SIZE]> = aya::maps::PerCpuArray::try_from(self.map_mut(chaos_common::LAST_LEAF_MAP)?).map_err(map_error)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::Other(e.into()))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![[0u8; LAST_LEAF_SIZE]; cpus]).map_err(|e| Error::Other(e.into()))?;
        last.set(0, zeros, 0).map_err(map_error)
    }

    pub fn set_session(&mut self, s: &SessionConfig) -> Result<()> {
        let mut session: Array<_, SessionConfig> = Array::try_from(self.map_mut(SESSION_MAP)?).map_err(map_error)?;
        session.set(0, s, 0).map_err(map_error)
    }

    pub fn session(&self) -> Result<SessionConfig> {
        let session: Array<_, SessionConfig> = Array::try_from(self.map(SESSION_MAP)?).map_err(map_error)?;
        session.get(&0, 0).map_err(map_error)
    }

    /// Rule `index`'s counters, summed over CPUs.
    pub fn counters(&self, index: u32) -> Result<Counters> {
        let per_cpu: PerCpuArray<_, Counters> = PerCpuArray::try_from(self.map(COUNTERS_MAP)?).map_err(map_error)?;
        Ok(sum(&per_cpu.get(&index, 0).map_err(map_error)?))
    }

    /// Sets rule `index`'s counters (on the first CPU; the others' are zeroed): for a fault chaos
    /// does itself (`proc.pause`), so `status`, metrics and the summary read it as any other.
    pub fn set_counters(&mut self, index: u32, c: &Counters) -> Result<()> {
        let mut per_cpu: PerCpuArray<_, Counters> = PerCpuArray::try_from(self.map_mut(COUNTERS_MAP)?).map_err(map_error)?;
        let mut values = vec![Counters::default(); cpus()];
        values[0] = c.to_kernel();
        let values = PerCpuValues::try_from(values).map_err(|e| Error::Other(anyhow::anyhow!("{e}")))?;
        per_cpu.set(index, values, 0).map_err(map_error)
    }

    /// Kernel-side failures by name.
    pub fn errors(&self) -> Result<BTreeMap<String, u64>> {
        errors_of(PerCpuArray::try_from(self.map(ERRORS_MAP)?).map_err(map_error)?)
    }

    pub fn map_ids(&self) -> Result<MapIds> {
        let id = |name| -> Result<u32> {
            let data = match self.map(name)? {
                Map::Array(d) | Map::PerCpuArray(d) | Map::HashMap(d) => d,
                _ => return Err(Error::Other(anyhow::anyhow!("map {name} has an unexpected type"))),
            };
            Ok(data.info().map_err(map_error)?.id())
        };
        Ok(MapIds { rules: id(RULES_MAP)?, counters: id(COUNTERS_MAP)?, session: id(SESSION_MAP)?, errors: id(ERRORS_MAP)? })
    }

    /// The named program, loaded into the kernel if it is not yet. A refusal is reported by
    /// program type, with the verifier log only at debug level.
    pub fn program<'a, T>(&'a mut self, name: &str, kind: &str) -> Result<&'a mut T>
    where
        &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
        T: Loadable + 'a,
    {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| Error::Other(anyhow::anyhow!("the embedded kernel object has no program {name}")))?;
        let prog: &mut T = prog.try_into().map_err(|e| Error::Other(anyhow::anyhow!("program {name}: {e}")))?;
        if !prog.is_loaded() {
            let started = std::time::Instant::now();
            prog.load_it().map_err(|e| load_error(name, kind, e))?;
            log::debug!("loaded {name}: verified in {:?} ({} instructions processed)", started.elapsed(), prog.verified().unwrap_or(0));
        }
        Ok(prog)
    }

    /// Loads the named programs at once, one thread each: the verifier is most of a session's
    /// start (about 150 ms a program here), and it runs on as many CPUs as it is given. A program
    /// that fails to load is left unloaded, so [`Kernel::program`] loads it again and reports why;
    /// one already loaded, or of a type whose load takes arguments, is left as it is.
    pub fn preload(&mut self, names: &[&str]) {
        let mut wanted: Vec<(&str, &mut Program)> = self.ebpf.programs_mut().filter(|(n, p)| names.contains(n) && p.fd().is_err()).collect();
        if wanted.len() < 2 {
            return; // nothing to overlap: the caller's own load costs the same
        }
        std::thread::scope(|s| {
            for (name, prog) in wanted.iter_mut() {
                s.spawn(move || {
                    let started = std::time::Instant::now();
                    fn go(p: &mut impl Loadable) -> Result<u32, ProgramError> {
                        p.load_it().map(|()| p.verified().unwrap_or(0))
                    }
                    let loaded = match prog {
                        Program::CgroupSkb(p) => go(p),
                        Program::SchedClassifier(p) => go(p),
                        Program::CgroupSockAddr(p) => go(p),
                        Program::CgroupSock(p) => go(p),
                        Program::CgroupSockopt(p) => go(p),
                        Program::KProbe(p) => go(p),
                        _ => return,
                    };
                    match loaded {
                        Ok(n) => log::debug!("preloaded {name}: verified in {:?} ({n} instructions processed)", started.elapsed()),
                        Err(e) => log::debug!("preloading {name}: {e} (loaded again where it is needed)"),
                    }
                });
            }
        });
    }

    /// The named program, as its type, not yet loaded (for types whose load takes arguments).
    pub fn get<'a, T>(&'a mut self, name: &str) -> Result<&'a mut T>
    where
        &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
    {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| Error::Other(anyhow::anyhow!("the embedded kernel object has no program {name}")))?
            .try_into()
            .map_err(|e: ProgramError| Error::Other(anyhow::anyhow!("program {name}: {e}")))
    }

    /// Loads the fmod_ret program of ELF `section` by hand (see `fmod_ret.rs`) and attaches it to
    /// kernel function `target`, using this session's maps.
    pub fn fmod_ret(&self, section: &str, target: &str, btf: &aya::Btf) -> std::result::Result<fmod_ret::FmodRet, fmod_ret::FmodRetError> {
        use std::os::fd::{AsFd, AsRawFd};
        let mut maps = std::collections::HashMap::new();
        for (name, map) in self.ebpf.maps() {
            if let Map::Array(m) | Map::PerCpuArray(m) | Map::HashMap(m) | Map::LruHashMap(m) | Map::RingBuf(m) = map {
                maps.insert(name.to_string(), m.fd().as_fd().as_raw_fd());
            }
        }
        fmod_ret::attach(KERNEL_OBJECT, section, &maps, target, btf)
    }

    /// A second handle on the ring buffer of `sys.delay` holds, for the thread that reads it.
    pub fn holds_ring(&self) -> Result<aya::maps::RingBuf<MapData>> {
        let Map::RingBuf(data) = self.map(HOLDS_MAP)? else {
            return Err(Error::Other(anyhow::anyhow!("map {HOLDS_MAP} is not a ring buffer")));
        };
        let own = MapData::from_id(data.info().map_err(map_error)?.id()).map_err(map_error)?;
        aya::maps::RingBuf::try_from(Map::RingBuf(own)).map_err(map_error)
    }

    /// The kernel's id of loaded program `name`.
    pub fn program_info_id(&self, name: &str) -> Option<u32> {
        self.ebpf.program(name)?.info().ok().map(|i| i.id())
    }

    /// Marks cgroup `id` (and its descendants) as observed slot `slot` (`chaos observe`).
    pub fn observe_cgroup(&mut self, id: u64, slot: u32) -> Result<()> {
        let mut map: HashMap<_, u64, u32> = HashMap::try_from(self.map_mut(chaos_common::observe::OBSERVED_MAP)?).map_err(map_error)?;
        map.insert(id, slot + 1, 0).map_err(|e| Error::Other(anyhow::anyhow!("writing the observed cgroups: {e}")))
    }

    /// What the observed cgroups' syscalls did so far: stats by (slot, syscall), and errno counts
    /// by (slot, syscall, errno), each summed over the CPUs.
    pub fn observed(&self) -> Result<crate::observe::Counts> {
        use aya::maps::PerCpuHashMap;
        use chaos_common::observe::{CallStats, OBS_CALLS_MAP, OBS_ERRORS_MAP, ObsErrKey, ObsKey};
        let mut counts = crate::observe::Counts::default();
        let calls: PerCpuHashMap<_, ObsKey, CallStats> = PerCpuHashMap::try_from(self.map(OBS_CALLS_MAP)?).map_err(map_error)?;
        for entry in calls.iter() {
            let (key, per_cpu) = entry.map_err(map_error)?;
            let total = counts.calls.entry(key).or_default();
            for s in per_cpu.iter() {
                total.merge(s);
            }
        }
        let errors: PerCpuHashMap<_, ObsErrKey, u64> = PerCpuHashMap::try_from(self.map(OBS_ERRORS_MAP)?).map_err(map_error)?;
        for entry in errors.iter() {
            let (key, per_cpu) = entry.map_err(map_error)?;
            *counts.errors.entry(key).or_default() += per_cpu.iter().sum::<u64>();
        }
        let net: PerCpuArray<_, chaos_common::observe::NetStats> = PerCpuArray::try_from(self.map(chaos_common::observe::OBS_NET_MAP)?).map_err(map_error)?;
        for slot in 0..chaos_common::observe::MAX_OBSERVED {
            let per_cpu = net.get(&slot, 0).map_err(map_error)?;
            let total = counts.net.entry(slot).or_default();
            for n in per_cpu.iter() {
                total.merge(n);
            }
        }
        Ok(counts)
    }

    /// Follows, for read/write `--path` rules, the files that processes already have open (by
    /// tgid: the rules of their targets) as if the rules had seen them opened: the task_file
    /// iterator walks every open file of the machine once and follows theirs that are under the
    /// rules' prefixes. Call it with the `file_open` program attached, so a file opened meanwhile
    /// is followed by one or the other. Processes beyond [`MAX_FOLLOW_TGIDS`] are left out (logged).
    pub fn follow_open_files(&mut self, tgids: &[(u32, u64)]) -> Result<()> {
        if tgids.len() > MAX_FOLLOW_TGIDS as usize {
            log::warn!("{} processes in the --path rules' targets: the files of the first {MAX_FOLLOW_TGIDS} already open are followed", tgids.len());
        }
        let tgids = &tgids[..tgids.len().min(MAX_FOLLOW_TGIDS as usize)];
        {
            let mut map: HashMap<_, u32, u64> = HashMap::try_from(self.map_mut(FOLLOW_TGIDS_MAP)?).map_err(map_error)?;
            for (tgid, rules) in tgids {
                map.insert(tgid, rules, 0).map_err(|e| Error::Other(anyhow::anyhow!("writing the processes to follow: {e}")))?;
            }
        }
        let prog = self.task_file_iter()?;
        let id = prog.attach().map_err(|e| Error::Other(anyhow::anyhow!("attaching the task_file iterator: {e}")))?;
        let link = prog.take_link(id).map_err(|e| Error::Other(e.into()))?;
        // Reading the iterator runs it; the program writes nothing, so the file reads empty.
        let mut walk = link.into_file().map_err(|e| Error::Other(anyhow::anyhow!("creating the task_file iterator: {e}")))?;
        std::io::copy(&mut walk, &mut std::io::sink()).map_err(|e| Error::Other(anyhow::anyhow!("walking the open files: {e}")))?;
        // Read once: its entries are of no further use.
        let mut map: HashMap<_, u32, u64> = HashMap::try_from(self.map_mut(FOLLOW_TGIDS_MAP)?).map_err(map_error)?;
        for (tgid, _) in tgids {
            let _ = map.remove(tgid);
        }
        Ok(())
    }

    /// The task_file iterator's program ([`Kernel::follow_open_files`]), loaded against the
    /// kernel's BTF if it is not yet.
    pub fn task_file_iter(&mut self) -> Result<&mut aya::programs::Iter> {
        let btf = vmlinux_btf().map_err(|e| unsupported!("the kernel exposes no BTF ({e}); the task_file iterator needs it"))?;
        let prog: &mut aya::programs::Iter = self.get(FOLLOW_OPEN_FILES_PROGRAM)?;
        if prog.fd().is_err() {
            let started = std::time::Instant::now();
            prog.load("task_file", btf).map_err(|e| load_error(FOLLOW_OPEN_FILES_PROGRAM, "task_file iterator", e))?;
            log::debug!("loaded {FOLLOW_OPEN_FILES_PROGRAM}: verified in {:?}", started.elapsed());
        }
        Ok(prog)
    }

    /// Which rules match calls with key `key` ([`chaos_common::sys::SysMatch::rules_key`]).
    pub fn set_sys_rules(&mut self, key: u64, rules: u64) -> Result<()> {
        let mut map: HashMap<_, u64, u64> = HashMap::try_from(self.map_mut(SYS_RULES_MAP)?).map_err(map_error)?;
        map.insert(key, rules, 0).map_err(|e| Error::Other(anyhow::anyhow!("writing the syscall rules: {e}")))
    }

    /// Forwards pending kernel log records, and prints the calls `--log-calls` rules injected.
    pub fn flush_log(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
        let Some(map) = self.ebpf.map_mut(CALL_LOG_MAP) else { return };
        let Ok(mut ring) = aya::maps::RingBuf::try_from(map) else { return };
        let mut err = std::io::stderr().lock();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<CallRecord>() {
                continue;
            }
            // SAFETY: the kernel wrote a CallRecord (repr(C), plain integers) at the item's start.
            let r: CallRecord = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let _ = writeln!(err, "chaos: {}", describe_call(&r));
        }
    }
}

/// "[pid 12 tid 13] socket() = -1 EMFILE (INJECTED, rule 0)", as strace marks injected calls.
pub fn describe_call(r: &CallRecord) -> String {
    let name = match syscalls::Sysno::new(r.nr as usize) {
        Some(s) => s.name().to_string(),
        None => crate::faults::sys::cgroup_call_by_hook(r.hook).map(|c| c.syscalls.join("/")).unwrap_or_else(|| "?".into()),
    };
    let what = match Action::from_u32(r.action) {
        Action::SysSignal => {
            let sig = nix::sys::signal::Signal::try_from(r.signal as i32).map(|s| s.as_str().to_string()).unwrap_or_else(|_| r.signal.to_string());
            format!("{name}() sent {sig}")
        }
        Action::SysDelay => format!("{name}() held (SIGSTOP)"),
        _ if (-4095..0).contains(&r.retval) => {
            let errno = crate::faults::sys::errno_name(-r.retval as i32).unwrap_or_else(|| (-r.retval).to_string());
            format!("{name}() = -1 {errno}")
        }
        _ => format!("{name}() = {}", r.retval),
    };
    format!("[pid {} tid {}] {what} (INJECTED, rule {})", r.pid, r.tid, r.rule)
}

fn sum(per_cpu: &PerCpuValues<Counters>) -> Counters {
    let mut total = Counters::default();
    for c in per_cpu.iter() {
        total.add(c);
    }
    total.from_kernel()
}

fn errors_of<T: std::borrow::Borrow<MapData>>(errors: PerCpuArray<T, u64>) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for (i, name) in KERNEL_ERROR_NAMES.iter().enumerate().take(KERNEL_ERROR_KINDS as usize) {
        let n: u64 = errors.get(&(i as u32), 0).map_err(map_error)?.iter().sum();
        out.insert(name.to_string(), n);
    }
    Ok(out)
}

/// Another session's maps, opened by id (needs CAP_SYS_ADMIN): what `chaos status` reads and
/// `chaos stop` writes. Each map's kernel name is checked, so a reused id is never written to.
pub struct SessionMaps {
    rules: Array<MapData, Rule>,
    counters: PerCpuArray<MapData, Counters>,
    session: Array<MapData, SessionConfig>,
    errors: PerCpuArray<MapData, u64>,
}

impl SessionMaps {
    pub fn open(ids: &MapIds) -> Result<SessionMaps> {
        let open = |id: u32, name: &str| -> Result<MapData> {
            let data = MapData::from_id(id).map_err(|e| {
                if format!("{e:?}").contains("os error 1)") {
                    unsupported!("opening another session's maps needs CAP_SYS_ADMIN ({e})")
                } else {
                    Error::Other(anyhow::anyhow!("map {id} is gone: {e}"))
                }
            })?;
            let info = data.info().map_err(map_error)?;
            if info.name_as_str() != Some(name) {
                return Err(Error::Other(anyhow::anyhow!("map {id} is not a chaos {name} map")));
            }
            Ok(data)
        };
        let err = |e: MapError| Error::Other(e.into());
        Ok(SessionMaps {
            rules: Array::try_from(Map::Array(open(ids.rules, RULES_MAP)?)).map_err(err)?,
            counters: PerCpuArray::try_from(Map::PerCpuArray(open(ids.counters, COUNTERS_MAP)?)).map_err(err)?,
            session: Array::try_from(Map::Array(open(ids.session, SESSION_MAP)?)).map_err(err)?,
            errors: PerCpuArray::try_from(Map::PerCpuArray(open(ids.errors, ERRORS_MAP)?)).map_err(err)?,
        })
    }

    pub fn rule(&self, index: u32) -> Result<Rule> {
        self.rules.get(&index, 0).map_err(map_error)
    }

    pub fn counters(&self, index: u32) -> Result<Counters> {
        Ok(sum(&self.counters.get(&index, 0).map_err(map_error)?))
    }

    pub fn session(&self) -> Result<SessionConfig> {
        self.session.get(&0, 0).map_err(map_error)
    }

    pub fn errors(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for (i, name) in KERNEL_ERROR_NAMES.iter().enumerate() {
            let n: u64 = self.errors.get(&(i as u32), 0).map_err(map_error)?.iter().sum();
            out.insert(name.to_string(), n);
        }
        Ok(out)
    }

    /// Ends the session's faults in the kernel at once (every live rule's deadline becomes `now_ns`)
    /// and asks its process to end (the watch loop sees the flag within a tick).
    pub fn stop(&mut self, rules: u32, now_ns: u64) -> Result<()> {
        let mut s = self.session()?;
        s.stop_requested = 1;
        self.session.set(0, s, 0).map_err(map_error)?;
        for i in 0..rules {
            let mut r = self.rule(i)?;
            if r.deadline_ns > now_ns {
                r.deadline_ns = now_ns;
                self.rules.set(i, r, 0).map_err(map_error)?;
            }
        }
        Ok(())
    }
}

/// The number of possible CPUs (per-CPU maps have one value each).
pub fn cpus() -> usize {
    nr_cpus().unwrap_or(1)
}

/// The program types chaos loads, so `Kernel::program` can load any of them.
pub trait Loadable {
    fn is_loaded(&self) -> bool;
    fn load_it(&mut self) -> Result<(), ProgramError>;
    /// Instructions the verifier processed (5.16+): what makes a load slow.
    fn verified(&self) -> Option<u32>;
}

macro_rules! loadable {
    ($($t:ty),*) => {$(
        impl Loadable for $t {
            fn is_loaded(&self) -> bool { self.fd().is_ok() }
            fn load_it(&mut self) -> Result<(), ProgramError> { self.load() }
            fn verified(&self) -> Option<u32> { self.info().ok()?.verified_instruction_count() }
        }
    )*};
}
loadable!(
    aya::programs::CgroupSkb,
    aya::programs::CgroupSockAddr,
    aya::programs::CgroupSock,
    aya::programs::CgroupSockopt,
    aya::programs::SchedClassifier,
    aya::programs::KProbe,
    aya::programs::SockOps
);

fn load_error(name: &str, kind: &str, e: ProgramError) -> Error {
    if let ProgramError::LoadError { io_error, verifier_log } = &e {
        log::debug!("verifier log for {name}:\n{verifier_log}");
        if io_error.raw_os_error() == Some(libc::EPERM) {
            return unsupported!("this kernel refuses {kind} programs (BPF_PROG_LOAD: EPERM): it lacks the program type, or chaos lacks CAP_BPF/CAP_SYS_ADMIN");
        }
        if io_error.raw_os_error() == Some(libc::EINVAL) {
            return unsupported!("this kernel does not accept the {kind} program {name} (EINVAL); run with RUST_LOG=debug to see the verifier's reason");
        }
        return Error::Other(anyhow::anyhow!(
            "the kernel rejected {kind} program {name}: {io_error}; run with RUST_LOG=debug to see the verifier's reason"
        ));
    }
    Error::Other(anyhow::anyhow!("loading {kind} program {name}: {e}"))
}

fn is_eperm(e: &aya::EbpfError) -> bool {
    format!("{e:?}").contains("PermissionDenied") || format!("{e:?}").contains("os error 1)")
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it (best effort, as root).
fn raise_memlock() {
    let lim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct we pass and has no other effect on memory.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

/// The running kernel's release string.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// CLOCK_MONOTONIC in ns, read through the clock_gettime system call: the kernel's own
/// timekeeping, which `bpf_ktime_get_ns` reads, so a rule's deadline means the same on both sides.
/// The vDSO (what libc's clock_gettime uses) reads the TSC directly; where vCPUs' TSCs disagree with
/// the kernel's clock (measured under qemu TCG) that put deadlines seconds early or late.
/// Whether the kernel has a symbol (`/proc/kallsyms`, read once per process: a syscall set asks
/// for dozens); `None` when it cannot be read.
pub fn kallsyms_has(symbol: &str) -> Option<bool> {
    static SYMBOLS: std::sync::OnceLock<Option<std::collections::HashSet<String>>> = std::sync::OnceLock::new();
    let symbols = SYMBOLS.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
        Some(text.lines().filter_map(|l| l.split_whitespace().nth(2)).map(str::to_string).collect())
    });
    symbols.as_ref().map(|s| s.contains(symbol))
}

pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: the kernel writes one timespec into the valid, exclusively borrowed `ts`.
    let r = unsafe { libc::syscall(libc::SYS_clock_gettime, clock, &mut ts) };
    assert_eq!(r, 0, "clock_gettime cannot fail for a clock every kernel has");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Waits (a tick at most, bounded) until CLOCK_MONOTONIC_COARSE, the packet hooks' clock, has
/// reached `t`: a rule whose window starts at `t` then injects on every packet from now on, so
/// "injecting" is true when chaos says it.
pub fn wait_for_coarse_clock(t: u64) {
    let give_up = std::time::Instant::now() + std::time::Duration::from_millis(100);
    while clock_ns(libc::CLOCK_MONOTONIC_COARSE) < t && std::time::Instant::now() < give_up {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The kernel's own BTF (/sys/kernel/btf/vmlinux), parsed once per process (several MB): the
/// probe, every LSM, fmod_ret and tp_btf attachment, and the backend choice share it.
pub fn vmlinux_btf() -> Result<&'static aya::Btf, String> {
    static BTF: std::sync::OnceLock<Result<aya::Btf, String>> = std::sync::OnceLock::new();
    BTF.get_or_init(|| aya::Btf::parse(vmlinux_btf_bytes()?, object::Endianness::default()).map_err(|e| e.to_string())).as_ref().map_err(Clone::clone)
}

/// The raw bytes of the kernel's BTF, read once per process: aya parses them for attaching, and
/// `btf_member` finds struct members in them.
pub fn vmlinux_btf_bytes() -> Result<&'static [u8], String> {
    static BYTES: std::sync::OnceLock<Result<Vec<u8>, String>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| std::fs::read("/sys/kernel/btf/vmlinux").map_err(|e| format!("reading /sys/kernel/btf/vmlinux: {e}"))).as_deref().map_err(Clone::clone)
}

/// Whether the kernel's BTF describes function `name` (None without BTF). fmod_ret attaches by
/// BTF id, and a zero-argument syscall's `__x64_sys_NAME` is an alias, which has none.
pub fn btf_has_function(name: &str) -> Option<bool> {
    let btf = vmlinux_btf().ok()?;
    Some(btf.id_by_type_name_kind(name, aya_obj::btf::BtfKind::Func).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_makes_small_only_the_maps_none_of_its_faults_use() {
        let small = |actions: &[Action]| {
            let rules: Vec<Rule> = actions.iter().map(|&a| Rule { action: a as u32, ..Default::default() }).collect();
            Needs::of_rules(&rules).unused()
        };
        let packets = small(&[Action::NetDrop, Action::NetDelay]);
        assert!(packets.contains(&(chaos_common::CALLS_MAP, UNUSED_MAP_ENTRIES)) && packets.contains(&(FLOWS_MAP, UNUSED_MAP_ENTRIES)), "{packets:?}");
        assert!(packets.contains(&(CALL_LOG_MAP, page_size())), "a ring buffer keeps one page: {packets:?}");
        assert!(packets.contains(&(chaos_common::observe::OBS_CALLS_MAP, UNUSED_MAP_ENTRIES)), "{packets:?}");
        let both = small(&[Action::SysFail, Action::NetStall]);
        assert_eq!(both.len(), chaos_common::observe::OBSERVE_ONLY_MAPS.len(), "only observe's are small: {both:?}");
        assert!(Needs::ALL.unused().is_empty());
    }

    #[test]
    fn a_rule_is_refused_by_an_object_loaded_without_its_action() {
        let drop = Rule { action: Action::NetDrop as u32, ..Default::default() };
        let mut kernel = Kernel::load_with(false, Needs::of_rules([&drop])).expect("loading the kernel object");
        kernel.set_rule(0, &drop).expect("the rule it was loaded for");
        let delay = Rule { action: Action::NetDelay as u32, ..Default::default() };
        let e = kernel.set_rule(1, &delay).expect_err("a delay rule would do nothing there");
        assert!(e.to_string().contains("internal error: rule 1 uses what its kernel object was loaded without"), "{e}");
        let model = Rule { loss: chaos_common::loss::LossParams::four_state(1, 2, 3, 4, 5), ..drop };
        assert!(kernel.set_rule(2, &model).is_err(), "nor a loss model");
    }
}
