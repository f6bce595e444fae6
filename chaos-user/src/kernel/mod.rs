//! The boundary with the kernel: loading the embedded object, attaching its programs, and the
//! records that let a later run remove what a killed one left behind.

pub mod config;
pub mod fmod_ret;
pub mod netdev;
pub mod qdisc;
pub mod state;

use aya::{
    Ebpf, EbpfLoader,
    programs::{Program, ProgramError},
};
use chaos_common::{LOG_PACKETS_GLOBAL, net::RUN_TAG_GLOBAL};

use crate::{
    KERNEL_OBJECT,
    error::{Error, Result},
    unsupported,
};

/// One run's copy of the kernel object: its programs and its own maps.
pub struct Kernel {
    pub ebpf: Ebpf,
    /// Forwards the programs' aya-log records to env_logger; flushed by the watch loop.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Kernel {
    /// Loads the object's maps (programs are loaded one by one, when a fault needs them).
    pub fn load(run_tag: u32, log_packets: bool) -> Result<Kernel> {
        raise_memlock();
        let log_flag = log_packets as u8;
        let mut ebpf = EbpfLoader::new()
            .override_global(RUN_TAG_GLOBAL, &run_tag, true)
            .override_global(LOG_PACKETS_GLOBAL, &log_flag, true)
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
        Ok(Kernel { ebpf, logger })
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
            prog.load_it().map_err(|e| load_error(name, kind, e))?;
        }
        Ok(prog)
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

    /// Loads the fmod_ret program by hand (see `fmod_ret.rs`) and attaches it to kernel function
    /// `target`, using this object's syscall-fault maps.
    pub fn fmod_ret(&self, target: &str, btf: &aya::Btf) -> std::result::Result<fmod_ret::FmodRet, fmod_ret::FmodRetError> {
        use std::os::fd::{AsFd, AsRawFd};
        let mut maps = std::collections::HashMap::new();
        for (name, map) in self.ebpf.maps() {
            if let aya::maps::Map::Array(m) | aya::maps::Map::PerCpuArray(m) = map {
                maps.insert(name.to_string(), m.fd().as_fd().as_raw_fd());
            }
        }
        fmod_ret::attach(KERNEL_OBJECT, chaos_common::sys::FMOD_RET_SECTION, &maps, target, btf)
    }

    /// Reads rule `index` of the `Array` map `map`, lets `change` edit it, and writes it back.
    pub fn update_rule<T: aya::Pod>(&mut self, map: &str, index: u32, change: impl FnOnce(&mut T)) -> Result<()> {
        let other = |e: aya::maps::MapError| Error::Other(e.into());
        let map = self.ebpf.map_mut(map).ok_or_else(|| Error::Other(anyhow::anyhow!("the kernel object has no map {map}")))?;
        let mut rules: aya::maps::Array<_, T> = aya::maps::Array::try_from(map).map_err(other)?;
        let mut rule = rules.get(&index, 0).map_err(other)?;
        change(&mut rule);
        rules.set(index, rule, 0).map_err(other)
    }

    /// Forwards pending kernel log records.
    pub fn flush_log(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }
}

/// The program types chaos loads, so `Kernel::program` can load any of them.
pub trait Loadable {
    fn is_loaded(&self) -> bool;
    fn load_it(&mut self) -> Result<(), ProgramError>;
}

macro_rules! loadable {
    ($($t:ty),*) => {$(
        impl Loadable for $t {
            fn is_loaded(&self) -> bool { self.fd().is_ok() }
            fn load_it(&mut self) -> Result<(), ProgramError> { self.load() }
        }
    )*};
}
loadable!(aya::programs::CgroupSkb, aya::programs::SchedClassifier);

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
