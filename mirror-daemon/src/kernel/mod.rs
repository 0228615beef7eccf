//! The seam in front of the kernel: load the embedded eBPF programs, program their filters, attach
//! them to interfaces and read their counters.
//!
//! Everything that needs privileges lives here. What comes out is a [`RingReader`] of typed
//! segments, a [`Counters`] snapshot and, with run-time statistics on, each program's
//! [`ProgramRuns`]; nothing above this module knows about maps or programs.
//! Dropping a [`KernelCapture`] detaches every program it attached (links are owned), and so does
//! the process dying: the kernel releases links whose last file descriptor closes.
pub mod preflight;

use std::{collections::BTreeMap, fmt, net::IpAddr, os::fd::OwnedFd, path::Path};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode, tc, tc::SchedClassifierLinkId,
        xdp::XdpLinkId,
    },
    util::KernelVersion,
};
use mirror_common::{MAX_PORTS, PORT_BITMAP_WORDS, config, counter};
use tokio::io::unix::AsyncFd;

use crate::capture::ring::{RingReader, register_readable};

/// The compiled kernel programs, embedded at build time (empty when built without them).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror.bpf.o"));

/// What can go wrong between the command line and attached programs.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("this binary was built without the kernel programs: build it with `cargo xtask build`")]
    NotBuilt,
    #[error(
        "loading eBPF programs needs root, or the capabilities CAP_BPF and CAP_NET_ADMIN: run with \
         sudo, or grant them (AmbientCapabilities= in a systemd unit, securityContext in Kubernetes)"
    )]
    NotPrivileged,
    #[error("interface {0} not found; list interfaces with `ip link`")]
    NoInterface(String),
    #[error("no port given: name the model server's port with --port (e.g. --port 8080)")]
    NoPorts,
    #[error("port 0 is not a valid server port: use 1-65535")]
    PortZero,
    #[error("{0} ports given; the kernel filter holds at most {MAX_PORTS}")]
    TooManyPorts(usize),
    #[error("too many server addresses: the kernel filter holds at most {}", mirror_common::MAX_ADDRS)]
    TooManyAddrs,
    #[error(
        "this kernel has no BTF ({0} is missing): shadow mirror needs Linux >= 5.8 built with \
         CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf(String),
    #[error("kernel {0} has no BPF ring buffer: shadow mirror needs Linux >= 5.8")]
    OldKernel(String),
    #[error("ring buffer size {0} must be a power of two of at least 4096 bytes (e.g. 32MiB)")]
    RingSize(u32),
    #[error(
        "interface {0} already has an XDP program attached, and shadow mirror never replaces one: \
         see it with `ip link show dev {0}`; detach it (`ip link set dev {0} xdp off`) only if \
         nothing needs it"
    )]
    XdpBusy(String),
    #[error("load the kernel programs: {0}")]
    Load(#[source] EbpfError),
    #[error("load program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attach {program} to {iface}: {source}")]
    Attach {
        program: &'static str,
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("kernel map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{0} is missing from the embedded kernel object: rebuild with `cargo xtask build`")]
    Missing(&'static str),
    #[error("ring buffer: {0}")]
    Ring(#[source] std::io::Error),
    #[error(
        "--kernel-stats: the kernel refused to turn on BPF run-time statistics, which needs \
         CAP_SYS_ADMIN: run as root, or turn them on for the whole host with `sysctl -w \
         kernel.bpf_stats_enabled=1` (the daemon then reads them), or leave --kernel-stats out"
    )]
    Stats(#[source] std::io::Error),
}

/// How to attach XDP (`--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeChoice {
    /// Driver mode where the interface supports it, generic mode otherwise.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Driver,
    /// Generic (SKB) mode, supported by every interface.
    Generic,
}

/// What to capture, and where.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    pub interfaces: Vec<String>,
    pub ports: Vec<u16>,
    /// Only packets from or to these addresses match, when `filter_addrs` is on.
    pub server_addrs: Vec<IpAddr>,
    /// Select by server address: on with addresses given, and with pod discovery even before any
    /// pod is known (then nothing matches yet).
    pub filter_addrs: bool,
    pub xdp_mode: XdpModeChoice,
    pub ring_bytes: u32,
    /// Keep the kernel's run-time statistics of BPF programs on, and read this daemon's
    /// programs' run time and run count ([`KernelCapture::program_runs`]).
    pub kernel_stats: bool,
}

/// The programs, by the names the kernel object gives them.
pub const PROGRAMS: [&str; 2] = ["mirror_xdp", "mirror_tc"];

/// How long one of this daemon's programs has run and how often, over every interface it is
/// attached to, as the kernel counts while run-time statistics are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramRuns {
    /// `mirror_xdp` (receive side) or `mirror_tc` (transmit side).
    pub program: &'static str,
    pub run_time_ns: u64,
    pub runs: u64,
}

impl ProgramRuns {
    /// Mean nanoseconds per run (0 before the first run).
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 { 0.0 } else { self.run_time_ns as f64 / self.runs as f64 }
    }
}

/// Turns on the kernel's run-time statistics (`BPF_ENABLE_STATS`) for as long as the returned
/// descriptor is open. Without CAP_SYS_ADMIN the kernel refuses; statistics turned on for the
/// whole host (`kernel.bpf_stats_enabled`) then do as well, and `None` is returned.
fn enable_run_time_stats() -> Result<Option<OwnedFd>, KernelError> {
    match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => Ok(Some(fd)),
        Err(err) => {
            let host_wide =
                std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1");
            if host_wide {
                tracing::debug!(error = %err.io_error, "BPF_ENABLE_STATS refused; kernel.bpf_stats_enabled is on");
                Ok(None)
            } else {
                Err(KernelError::Stats(err.io_error))
            }
        }
    }
}

/// Loaded and attached kernel programs. Dropping it detaches them.
pub struct KernelCapture {
    ebpf: Ebpf,
    /// Keeps the kernel log ring alive (see module docs of aya-log); flushed by [`Self::poll_logs`].
    logger: Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    xdp_mode: XdpModeChoice,
    /// Interface → its XDP and TC links, in attach order.
    attached: BTreeMap<String, Attached>,
    /// Whether run-time statistics are read (`--kernel-stats`).
    kernel_stats: bool,
    /// Keeps the statistics on while the daemon runs (`None`: on host-wide, or not asked for).
    _stats_on: Option<OwnedFd>,
}

/// The links that tie the programs to one interface.
#[derive(Debug)]
struct Attached {
    /// The interface's index when attached: a name can come back as a new interface (a pod
    /// re-created with the same veth name), which does not carry the programs.
    ifindex: u32,
    xdp: XdpLinkId,
    tc: SchedClassifierLinkId,
}

impl fmt::Debug for KernelCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelCapture").field("interfaces", &self.attached.keys()).finish()
    }
}

impl KernelCapture {
    /// Checks the environment, loads the programs, sets the filters and attaches to every
    /// interface. Either everything is attached or nothing is (a failure drops what was done).
    pub fn start(cfg: &CaptureConfig) -> Result<(Self, RingReader), KernelError> {
        if OBJECT.is_empty() {
            return Err(KernelError::NotBuilt);
        }
        preflight::check_ports(&cfg.ports)?;
        preflight::check_ring_size(cfg.ring_bytes)?;
        if cfg.server_addrs.len() > mirror_common::MAX_ADDRS as usize {
            return Err(KernelError::TooManyAddrs);
        }
        for iface in &cfg.interfaces {
            preflight::interface_index(iface)?;
        }
        preflight::check_capabilities(preflight::effective_capabilities())?;
        preflight::check_kernel(&preflight::kernel_release(), Path::new("/sys/kernel/btf/vmlinux"))?;
        raise_memlock_limit();
        let stats_on = if cfg.kernel_stats { enable_run_time_stats()? } else { None };

        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", cfg.ring_bytes)
            .load(OBJECT)
            .map_err(KernelError::Load)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => register_readable(logger).ok(),
            Err(err) => {
                tracing::debug!(%err, "kernel log ring not available");
                None
            }
        };

        let mut this = Self {
            ebpf,
            logger,
            xdp_mode: cfg.xdp_mode,
            attached: BTreeMap::new(),
            kernel_stats: cfg.kernel_stats,
            _stats_on: stats_on,
        };
        this.program_filters(cfg)?;
        this.load_programs()?;
        for iface in &cfg.interfaces {
            this.attach(iface)?;
        }

        let events = this.ebpf.take_map("EVENTS").ok_or(KernelError::Missing("EVENTS"))?;
        let ring = RingBuf::try_from(events).map_err(map_error("EVENTS"))?;
        let reader = RingReader::new(ring).map_err(KernelError::Ring)?;
        Ok((this, reader))
    }

    fn program_filters(&mut self, cfg: &CaptureConfig) -> Result<(), KernelError> {
        let mut bitmap = [0u64; PORT_BITMAP_WORDS as usize];
        for &port in &cfg.ports {
            bitmap[usize::from(port >> 6)] |= 1u64 << (port & 63);
        }
        let mut ports: Array<_, u64> = Array::try_from(self.map_mut("PORTS")?).map_err(map_error("PORTS"))?;
        for (i, word) in bitmap.iter().enumerate() {
            if *word != 0 {
                ports.set(i as u32, word, 0).map_err(map_error("PORTS"))?;
            }
        }
        let mut addrs: HashMap<_, [u8; 16], u8> =
            HashMap::try_from(self.map_mut("SERVER_ADDRS")?).map_err(map_error("SERVER_ADDRS"))?;
        for addr in &cfg.server_addrs {
            addrs.insert(address_key(*addr), 1, 0).map_err(map_error("SERVER_ADDRS"))?;
        }
        let flags = if cfg.filter_addrs { config::FILTER_ADDRS } else { 0 };
        let mut config_map: Array<_, u32> =
            Array::try_from(self.map_mut("CONFIG")?).map_err(map_error("CONFIG"))?;
        config_map.set(config::FLAGS, flags, 0).map_err(map_error("CONFIG"))?;
        // Wake the reader when 1/16 of the ring is waiting; below that it polls (RingReader).
        config_map.set(config::WAKEUP_BYTES, cfg.ring_bytes / 16, 0).map_err(map_error("CONFIG"))?;
        Ok(())
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, KernelError> {
        self.ebpf.map_mut(name).ok_or(KernelError::Missing(name))
    }

    fn xdp(&mut self) -> Result<&mut Xdp, KernelError> {
        self.ebpf
            .program_mut("mirror_xdp")
            .ok_or(KernelError::Missing("mirror_xdp"))?
            .try_into()
            .map_err(|source| KernelError::Program { program: "mirror_xdp", source })
    }

    fn tc(&mut self) -> Result<&mut SchedClassifier, KernelError> {
        self.ebpf
            .program_mut("mirror_tc")
            .ok_or(KernelError::Missing("mirror_tc"))?
            .try_into()
            .map_err(|source| KernelError::Program { program: "mirror_tc", source })
    }

    fn load_programs(&mut self) -> Result<(), KernelError> {
        self.xdp()?.load().map_err(|source| KernelError::Program { program: "mirror_xdp", source })?;
        self.tc()?.load().map_err(|source| KernelError::Program { program: "mirror_tc", source })
    }

    /// Attaches both programs to `iface` (XDP for what it receives, TC for what it transmits).
    /// Attaching an interface twice is a no-op; if TC fails, XDP is detached again.
    pub fn attach(&mut self, iface: &str) -> Result<(), KernelError> {
        if self.attached.contains_key(iface) {
            return Ok(());
        }
        let ifindex = preflight::interface_index(iface)?;
        // The transmit side first: from the moment requests are seen, their answers are too (the
        // other order leaves a window in which requests arrive whose responses go by unseen).
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if !tcx {
            // Older kernels attach through the clsact qdisc; it may already exist.
            let _ = tc::qdisc_add_clsact(iface);
        }
        let tc = self.tc()?.attach(iface, TcAttachType::Egress).map_err(|source| KernelError::Attach {
            program: "mirror_tc",
            iface: iface.to_string(),
            source,
        })?;
        tracing::info!(
            interface = %iface,
            via = if tcx { "tcx link" } else { "clsact qdisc" },
            "TC (transmit side) attached"
        );
        let choice = self.xdp_mode;
        let (xdp, mode) = match attach_xdp(self.xdp()?, iface, choice) {
            Ok(attached) => attached,
            Err(err) => {
                let _ = self.tc()?.detach(tc);
                return Err(err);
            }
        };
        tracing::info!(interface = %iface, mode, "XDP (receive side) attached");
        self.attached.insert(iface.to_string(), Attached { ifindex, xdp, tc });
        Ok(())
    }

    /// Detaches both programs from `iface`. An interface that vanished (a pod's veth) has already
    /// lost its programs with it; that is not an error.
    pub fn detach_interface(&mut self, iface: &str) -> Result<(), KernelError> {
        let Some(Attached { ifindex, xdp, tc }) = self.attached.remove(iface) else { return Ok(()) };
        let gone = preflight::interface_index(iface).map_or(true, |now| now != ifindex);
        let xdp_result = self.xdp()?.detach(xdp);
        let tc_result = self.tc()?.detach(tc);
        for (program, result) in [("mirror_xdp", xdp_result), ("mirror_tc", tc_result)] {
            match result {
                Ok(()) => {}
                Err(err) if gone => {
                    tracing::debug!(%err, interface = iface, program, "interface already gone")
                }
                Err(source) => return Err(KernelError::Attach { program, iface: iface.to_string(), source }),
            }
        }
        tracing::info!(interface = %iface, "detached");
        Ok(())
    }

    /// The interfaces the programs are attached to.
    pub fn interfaces(&self) -> Vec<String> {
        self.attached.keys().cloned().collect()
    }

    /// Attached interfaces that are gone, or whose name now belongs to another interface: their
    /// programs went with the old interface. Detach them (and attach again where still wanted).
    pub fn vanished_interfaces(&self) -> Vec<String> {
        self.attached
            .iter()
            .filter(|(name, a)| preflight::interface_index(name).map_or(true, |now| now != a.ifindex))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Replaces the server-address filter. With `filter` on, only packets from or to `addrs`
    /// match (none when `addrs` is empty, e.g. no production pod on this node yet); with it off,
    /// every address on the selected ports matches.
    pub fn set_server_addrs(&mut self, addrs: &[IpAddr], filter: bool) -> Result<(), KernelError> {
        if addrs.len() > mirror_common::MAX_ADDRS as usize {
            return Err(KernelError::TooManyAddrs);
        }
        let wanted: std::collections::HashSet<[u8; 16]> = addrs.iter().map(|a| address_key(*a)).collect();
        let mut map: HashMap<_, [u8; 16], u8> =
            HashMap::try_from(self.map_mut("SERVER_ADDRS")?).map_err(map_error("SERVER_ADDRS"))?;
        let present: Vec<[u8; 16]> = map.keys().filter_map(Result::ok).collect();
        for key in present.iter().filter(|k| !wanted.contains(*k)) {
            map.remove(key).map_err(map_error("SERVER_ADDRS"))?;
        }
        for key in &wanted {
            map.insert(key, 1, 0).map_err(map_error("SERVER_ADDRS"))?;
        }
        let mut config_map: Array<_, u32> =
            Array::try_from(self.map_mut("CONFIG")?).map_err(map_error("CONFIG"))?;
        let flags = if filter { config::FILTER_ADDRS } else { 0 };
        config_map.set(config::FLAGS, flags, 0).map_err(map_error("CONFIG"))
    }

    /// Sets the shed level (`mirror_common::config::SHED_LEVEL`): connections whose bucket is
    /// below it are no longer copied. Takes effect for the next packet.
    pub fn set_shed_level(&mut self, level: u32) -> Result<(), KernelError> {
        let mut config_map: Array<_, u32> =
            Array::try_from(self.map_mut("CONFIG")?).map_err(map_error("CONFIG"))?;
        config_map
            .set(config::SHED_LEVEL, level.min(mirror_common::SHED_BUCKETS), 0)
            .map_err(map_error("CONFIG"))
    }

    /// Sums the kernel's per-CPU counters.
    pub fn counters(&self) -> Result<Counters, KernelError> {
        let map = self.ebpf.map("COUNTERS").ok_or(KernelError::Missing("COUNTERS"))?;
        let counters: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_error("COUNTERS"))?;
        let mut out = Counters::default();
        for (i, slot) in out.values.iter_mut().enumerate() {
            let per_cpu = counters.get(&(i as u32), 0).map_err(map_error("COUNTERS"))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Run time and run count of each program this daemon loaded, read from the programs' own
    /// descriptors (never looked up by name: other daemons load programs of the same names).
    /// Empty unless run-time statistics were asked for.
    pub fn program_runs(&self) -> Result<Vec<ProgramRuns>, KernelError> {
        if !self.kernel_stats {
            return Ok(Vec::new());
        }
        PROGRAMS
            .iter()
            .map(|&program| {
                let info = self
                    .ebpf
                    .program(program)
                    .ok_or(KernelError::Missing(program))?
                    .info()
                    .map_err(|source| KernelError::Program { program, source })?;
                Ok(ProgramRuns {
                    program,
                    run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                    runs: info.run_count(),
                })
            })
            .collect()
    }

    /// Forwards pending kernel log records (aya-log) into the daemon's log. Returns when there are
    /// none; never returns if logging is unavailable (use in `select!`).
    pub async fn poll_logs(&mut self) {
        match self.logger.as_mut() {
            Some(fd) => {
                if let Ok(mut guard) = fd.readable_mut().await {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Detaches everything now (the same happens on drop) and says so in the log.
    pub fn detach(self) {
        let interfaces = self.interfaces();
        drop(self);
        tracing::info!(?interfaces, "detached");
    }
}

fn attach_xdp(
    xdp: &mut Xdp,
    iface: &str,
    choice: XdpModeChoice,
) -> Result<(XdpLinkId, &'static str), KernelError> {
    let attempt = |xdp: &mut Xdp, mode| {
        xdp.attach(iface, mode).map_err(|source| {
            if is_busy(&source) {
                KernelError::XdpBusy(iface.to_string())
            } else {
                KernelError::Attach { program: "mirror_xdp", iface: iface.to_string(), source }
            }
        })
    };
    match choice {
        XdpModeChoice::Driver => attempt(xdp, XdpMode::Driver).map(|id| (id, "driver")),
        XdpModeChoice::Generic => attempt(xdp, XdpMode::Skb).map(|id| (id, "generic")),
        XdpModeChoice::Auto => match attempt(xdp, XdpMode::Driver) {
            Ok(id) => Ok((id, "driver")),
            Err(KernelError::XdpBusy(i)) => Err(KernelError::XdpBusy(i)),
            Err(err) => {
                tracing::debug!(%err, interface = iface, "driver-mode XDP unavailable, using generic mode");
                attempt(xdp, XdpMode::Skb).map(|id| (id, "generic"))
            }
        },
    }
}

/// The kernel answers EBUSY (or EEXIST across modes) when another XDP program holds the interface.
fn is_busy(err: &ProgramError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EBUSY) | Some(libc::EEXIST))
        {
            return true;
        }
        let text = e.to_string();
        if text.contains("EBUSY") || text.contains("Device or resource busy") || text.contains("File exists")
        {
            return true;
        }
        source = e.source();
    }
    false
}

fn map_error(map: &'static str) -> impl Fn(MapError) -> KernelError {
    move |source| KernelError::Map { map, source }
}

/// IPv4 addresses sit in the first 4 bytes of the 16-byte key, as the kernel writes them.
fn address_key(addr: IpAddr) -> [u8; 16] {
    let mut key = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => key[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => key = v6.octets(),
    }
    key
}

/// Older kernels charge BPF memory to RLIMIT_MEMLOCK; newer ones (5.11+) to the cgroup.
fn raise_memlock_limit() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on Linux >= 5.11");
    }
}

/// A snapshot of the kernel counters (`mirror_common::counter`), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; counter::COUNT as usize],
}

impl Counters {
    pub fn get(&self, index: u32) -> u64 {
        self.values[index as usize]
    }

    /// Name → value, in counter order.
    pub fn named(&self) -> BTreeMap<&'static str, u64> {
        counter::NAMES.iter().copied().zip(self.values).collect()
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in counter::NAMES.iter().zip(self.values).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_keys_match_kernel_layout() {
        let v4 = address_key("10.1.2.3".parse().unwrap());
        assert_eq!(&v4[..4], &[10, 1, 2, 3]);
        assert!(v4[4..].iter().all(|&b| b == 0));
        let v6 = address_key("fd00::1".parse().unwrap());
        assert_eq!(v6[0], 0xfd);
        assert_eq!(v6[15], 1);
    }

    #[test]
    fn ns_per_run_is_the_mean() {
        let runs = ProgramRuns { program: "mirror_xdp", run_time_ns: 9_000, runs: 40 };
        assert_eq!(runs.ns_per_run(), 225.0);
        assert_eq!(ProgramRuns { runs: 0, ..runs }.ns_per_run(), 0.0);
    }

    #[test]
    fn counters_display_every_name() {
        let mut c = Counters::default();
        c.values[counter::RINGBUF_FULL as usize] = 3;
        let text = c.to_string();
        assert!(text.contains("ringbuf_full=3"), "{text}");
        assert_eq!(text.split(' ').count(), counter::COUNT as usize);
        assert_eq!(c.named()["ringbuf_full"], 3);
    }
}
