//! The BPF route: bpf/trace.bpf.c (compiled by build.rs with clang) runs the connect() state
//! machine of [`crate::aggregate`] in the kernel, on the same four tracepoints, and counts into
//! maps; this module loads it with `aya`, sets the filter as the object's read-only `cfg`
//! global (constants to the verifier, so a filter that is off costs nothing), and reads the
//! maps into an [`Aggregator`] on every refresh. No record per event crosses to user
//! space, so the traced processes pay a map update (≈ 0.1–0.3 µs) instead of perf's sample copy
//! (≈ 1 µs, docs/trace.md).
//!
//! What stays in user space: sockets that left SYN_SENT for CLOSE and got no errno within
//! 50 ms (the process closed them while connecting: `abandoned`) are taken out of the `failed`
//! map here, exactly once (whoever deletes the entry counts it).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader, Pod};

use crate::aggregate::{Aggregator, DurationHistogram, FlowCounters, FlowKey, OVERFLOW_KEY};
use crate::decode::Layouts;
use crate::{Filter, TraceError};

/// The object build.rs compiled; empty when clang was missing at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trace.bpf.o"));

/// How long a socket that left SYN_SENT for CLOSE waits for its errno (as the perf route).
const ERRNO_WAIT_NS: u64 = 50_000_000;

/// Whether this build carries the BPF program (clang was found by build.rs).
pub fn built() -> bool {
    !OBJECT.is_empty()
}

// Map layouts: mirror the structs of bpf/trace.bpf.c field for field.

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Config {
    tgid: u32,
    dport: u16,
    match_daddr: u16,
    daddr: [u8; 16],
    cgroup_id: u64,
    cgroup_level: u32,
    netns: u32,
    syscalls: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct KFlowKey {
    tgid: u32,
    dport: u16,
    pad: u16,
    daddr: [u8; 16],
}

const BUCKETS: usize = crate::PORT_SEARCH_BOUNDS_NS.len() + 1;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct KFlow {
    attempts: u64,
    successes: u64,
    abandoned: u64,
    closed_other: u64,
    pad: u64,
    closed_first: u64,
    closed_by_peer: u64,
    time_wait_entered: u64,
    first_failure_ns: u64,
    search_count: u64,
    search_sum_ns: u64,
    search_max_ns: u64,
    search_buckets: [u64; BUCKETS],
    comm: [u8; 16],
}

/// A flow's slot in the `counters` array (0: the overflow row).
type Slot = u32;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct ErrnoKey {
    slot: Slot,
    err: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Tuple {
    sport: u16,
    dport: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Failed {
    closed_ns: u64,
    slot: Slot,
    no_port: u32,
    tuple: Tuple,
    pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SocketlessKey {
    tgid: u32,
    err: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    events: u64,
    lost: u64,
    flows_overflowed: u64,
}

// SAFETY: plain #[repr(C)] integers and byte arrays, no padding the kernel could leave
// uninitialised that Rust would read as invalid (every bit pattern is valid).
unsafe impl Pod for Config {}
unsafe impl Pod for KFlowKey {}
unsafe impl Pod for KFlow {}
unsafe impl Pod for ErrnoKey {}
unsafe impl Pod for Tuple {}
unsafe impl Pod for Failed {}
unsafe impl Pod for SocketlessKey {}
unsafe impl Pod for Stats {}

/// The loaded program and its maps.
pub(crate) struct BpfRoute {
    /// The programs; dropping it detaches them (the maps stay readable).
    ebpf: Option<Ebpf>,
    /// (tgid, destination) → slot in `counters`.
    flows: BpfHashMap<MapData, KFlowKey, Slot>,
    counters: Array<MapData, KFlow>,
    failures: BpfHashMap<MapData, ErrnoKey, u64>,
    failed: BpfHashMap<MapData, u64, Failed>,
    by_tuple: BpfHashMap<MapData, Tuple, u64>,
    socketless: BpfHashMap<MapData, SocketlessKey, u64>,
    stats: PerCpuArray<MapData, Stats>,
    /// Outcomes counted here (errno never came): per flow slot, abandoned and EADDRNOTAVAIL.
    user_abandoned: HashMap<Slot, u64>,
    user_eaddrnotavail: HashMap<Slot, u64>,
    /// How sock:inet_sock_set_state is read.
    pub(crate) set_state_program: SetStateProgram,
    /// Hits the kernel did not run our programs for, read at the last refresh while attached
    /// (see [`recursion_misses`]).
    missed: u64,
}

/// The program type that reads sock:inet_sock_set_state on the BPF route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SetStateProgram {
    /// `tp_btf/inet_sock_set_state` (BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP): the program
    /// reads the socket through BTF; the kernel builds no tracepoint record.
    TpBtf,
    /// The classic tracepoint program, with why tp_btf was not used.
    Tracepoint(String),
}

/// Set (to anything) to use the classic tracepoint program for inet_sock_set_state even when
/// the tp_btf one loads: for tests of the fallback and for comparing the two.
pub const CLASSIC_ENV: &str = "PORTLAB_TRACE_CLASSIC_TRACEPOINT";

/// Loads and attaches `inet_sock_set_state_btf` against the running kernel's BTF.
fn attach_btf(ebpf: &mut Ebpf) -> Result<(), String> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| format!("reading the kernel's BTF: {e}"))?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut("inet_sock_set_state_btf")
        .ok_or("the BPF object has no program inet_sock_set_state_btf")?
        .try_into()
        .map_err(|e| format!("inet_sock_set_state_btf: {e}"))?;
    prog.load("inet_sock_set_state", &btf)
        .map_err(|e| format!("loading tp_btf/inet_sock_set_state: {e}: {e:?}"))?;
    prog.attach()
        .map_err(|e| format!("attaching tp_btf/inet_sock_set_state: {e}"))?;
    Ok(())
}

impl std::fmt::Debug for BpfRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfRoute").finish_non_exhaustive()
    }
}

fn map_err(what: &str, e: impl std::fmt::Display + std::fmt::Debug) -> TraceError {
    let text = format!("{e}: {e:?}");
    if text.contains("Operation not permitted") || text.contains("Permission denied") {
        TraceError::PermissionDenied(format!("{what}: {text}"))
    } else {
        TraceError::Bpf(format!("{what}: {text}"))
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, TraceError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| TraceError::Bpf(format!("the BPF object has no map {name}")))?;
    T::try_from(map).map_err(|e| map_err(&format!("map {name}"), e))
}

/// The v4-mapped or IPv6 16 bytes the tracepoint stores as `daddr_v6`.
fn v6_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn flow_key(k: &KFlowKey) -> FlowKey {
    if k.tgid == 0 && k.dport == 0 && k.daddr == [0; 16] {
        return OVERFLOW_KEY;
    }
    let ip = Ipv6Addr::from(k.daddr);
    let ip = match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    };
    FlowKey {
        pid: k.tgid,
        dest: SocketAddr::new(ip, k.dport),
    }
}

/// The cgroup id (the inode of its cgroup2 directory) and its depth below the root.
fn cgroup_id(rel: &str) -> Result<(u64, u32), TraceError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| TraceError::Filter(format!("reading /proc/self/mounts: {e}")))?;
    let mount = crate::procs::cgroup2_mount(&mounts)
        .ok_or_else(|| TraceError::Filter("no cgroup v2 file system is mounted".into()))?;
    let dir = format!("{}{rel}", mount.trim_end_matches('/'));
    let ino = std::fs::metadata(&dir)
        .map_err(|e| TraceError::Filter(format!("cannot read cgroup {dir}: {e}")))?
        .ino();
    let level = rel.split('/').filter(|c| !c.is_empty()).count() as u32;
    Ok((ino, level))
}

impl BpfRoute {
    /// Loads the program with the filter as its constants, attaches (the syscall tracepoints
    /// when `filter.syscalls` enables them on this route). Every later connect() is counted
    /// when this returns.
    ///
    /// # Errors
    /// Not built with clang, the kernel's tracepoint records differ from the program's, the
    /// verifier or the kernel refused (EPERM without CAP_BPF/CAP_PERFMON).
    pub(crate) fn start(filter: &Filter, layouts: &Layouts) -> Result<BpfRoute, TraceError> {
        if !built() {
            return Err(TraceError::Bpf(
                "this portlab was built without clang, so without the BPF program".into(),
            ));
        }
        if !layouts.matches_bpf_program() {
            return Err(TraceError::Bpf(
                "this kernel's tracepoint records differ from the BPF program's".into(),
            ));
        }
        let mut config = Config {
            tgid: filter.pid.unwrap_or(0),
            syscalls: u32::from(filter.syscalls.enabled_on(crate::Route::Bpf)),
            ..Config::default()
        };
        if let Some(d) = filter.dest {
            config.dport = d.port();
            config.match_daddr = 1;
            config.daddr = v6_bytes(d.ip());
        }
        if let Some(p) = &filter.cgroup {
            let rel = crate::procs::cgroup_relative(p).map_err(TraceError::Filter)?;
            (config.cgroup_id, config.cgroup_level) = cgroup_id(&rel)?;
        }
        if let Some(p) = &filter.netns {
            let ino = crate::procs::netns_inode(Path::new(p)).map_err(|e| {
                TraceError::Filter(format!(
                    "cannot read network namespace {}: {e}",
                    p.display()
                ))
            })?;
            config.netns = u32::try_from(ino)
                .map_err(|_| TraceError::Filter(format!("namespace inode {ino} above 2^32")))?;
        }

        let mut ebpf = EbpfLoader::new()
            .override_global("cfg", &config, true)
            .load(OBJECT)
            .map_err(|e| map_err("loading the BPF object", e))?;
        let mut flows: BpfHashMap<MapData, KFlowKey, Slot> = take(&mut ebpf, "flows")?;
        // The overflow row (slot 0): always there, so the kernel can count into it when the
        // map is full.
        flows
            .insert(KFlowKey::default(), 0, 0)
            .map_err(|e| map_err("writing the flows map", e))?;
        let route = BpfRoute {
            counters: take(&mut ebpf, "counters")?,
            failures: take(&mut ebpf, "failures")?,
            failed: take(&mut ebpf, "failed")?,
            by_tuple: take(&mut ebpf, "by_tuple")?,
            socketless: take(&mut ebpf, "socketless")?,
            stats: take(&mut ebpf, "stats")?,
            flows,
            ebpf: None,
            user_abandoned: HashMap::new(),
            user_eaddrnotavail: HashMap::new(),
            set_state_program: SetStateProgram::TpBtf,
            missed: 0,
        };
        // sock:inet_sock_set_state (≈ 10 hits per loopback connection): as a BTF raw tracepoint
        // when it loads (no tracepoint record built per hit), else the classic tracepoint.
        let set_state = match std::env::var_os(CLASSIC_ENV) {
            Some(_) => Err(format!("{CLASSIC_ENV} is set")),
            None => attach_btf(&mut ebpf),
        };
        let mut progs = vec![("inet_sk_error_report", "sock")];
        let set_state_program = match set_state {
            Ok(()) => SetStateProgram::TpBtf,
            Err(why) => {
                progs.push(("inet_sock_set_state", "sock"));
                SetStateProgram::Tracepoint(why)
            }
        };
        if filter.syscalls.enabled_on(crate::Route::Bpf) {
            progs.push(("sys_exit_connect", "syscalls"));
            progs.push(("sys_enter_connect", "syscalls"));
        }
        for (name, category) in progs {
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| TraceError::Bpf(format!("the BPF object has no program {name}")))?
                .try_into()
                .map_err(|e| map_err(name, e))?;
            prog.load()
                .map_err(|e| map_err(&format!("loading {name}"), e))?;
            prog.attach(category, name)
                .map_err(|e| map_err(&format!("attaching {category}:{name}"), e))?;
        }
        Ok(BpfRoute {
            ebpf: Some(ebpf),
            set_state_program,
            ..route
        })
    }

    /// How sock:inet_sock_set_state is read: `tp_btf` or `tracepoint`, and why not tp_btf.
    pub(crate) fn set_state_program(&self) -> (&'static str, Option<&str>) {
        match &self.set_state_program {
            SetStateProgram::TpBtf => ("tp_btf", None),
            SetStateProgram::Tracepoint(why) => ("tracepoint", Some(why)),
        }
    }

    /// Detaches the programs; the maps stay readable for the last [`BpfRoute::refresh`].
    pub(crate) fn detach(&mut self) {
        if let Some(ebpf) = &self.ebpf {
            self.missed = recursion_misses(ebpf);
        }
        self.ebpf = None;
    }

    /// Copies the kernel's counters into `agg` (cumulative; replaces the flows' counters).
    /// Sockets waiting for an errno longer than 50 ms (all of them when `flush`) are counted
    /// here: EADDRNOTAVAIL when no port was chosen, else abandoned.
    pub(crate) fn refresh(&mut self, agg: &mut Aggregator, now_ns: u64, flush: bool) {
        self.expire(now_ns, flush);
        if let Some(ebpf) = &self.ebpf {
            self.missed = recursion_misses(ebpf);
        }
        let mut stats = Stats::default();
        if let Ok(per_cpu) = self.stats.get(&0, 0) {
            for s in per_cpu.iter() {
                stats.events += s.events;
                stats.lost += s.lost;
                stats.flows_overflowed += s.flows_overflowed;
            }
        }
        let mut failures: HashMap<Slot, Vec<(i32, u64)>> = HashMap::new();
        for (k, n) in self.failures.iter().flatten() {
            failures.entry(k.slot).or_default().push((k.err, n));
        }
        for (k, n) in &self.user_eaddrnotavail {
            let list = failures.entry(*k).or_default();
            match list.iter_mut().find(|(e, _)| *e == libc::EADDRNOTAVAIL) {
                Some((_, c)) => *c += n,
                None => list.push((libc::EADDRNOTAVAIL, *n)),
            }
        }
        let mut search = DurationHistogram::new();
        let index: Vec<(KFlowKey, Slot)> = self.flows.iter().flatten().collect();
        for (k, slot) in index {
            let Ok(v) = self.counters.get(&slot, 0) else {
                continue;
            };
            let key = flow_key(&k);
            if key == OVERFLOW_KEY && v.attempts == 0 {
                continue;
            }
            let mut failures = failures.remove(&slot).unwrap_or_default();
            let abandoned = v.abandoned + self.user_abandoned.get(&slot).copied().unwrap_or(0);
            // The kernel keeps no gauges (fewer atomics per event): derived from the counters.
            // Maps are read one after the other while the kernel counts, so saturate.
            let failures_total: u64 = failures.iter().map(|&(_, n)| n).sum();
            let in_progress = v
                .attempts
                .saturating_sub(v.successes + failures_total + abandoned);
            let open = v
                .successes
                .saturating_sub(v.closed_first + v.closed_by_peer + v.closed_other);
            failures.sort_by_key(|&(e, _)| e);
            let flow_search = DurationHistogram::from_parts(
                v.search_buckets.to_vec(),
                v.search_count,
                v.search_sum_ns,
                v.search_max_ns,
            );
            search.merge(&flow_search);
            let comm_len = v.comm.iter().position(|&b| b == 0).unwrap_or(v.comm.len());
            agg.set_kernel_flow(
                key,
                FlowCounters {
                    comm: String::from_utf8_lossy(&v.comm[..comm_len]).into_owned(),
                    attempts: v.attempts,
                    successes: v.successes,
                    failures,
                    abandoned,
                    in_progress,
                    open,
                    closed_first: v.closed_first,
                    closed_by_peer: v.closed_by_peer,
                    time_wait_entered: v.time_wait_entered,
                    search: flow_search,
                    first_failure_ns: (v.first_failure_ns != 0).then_some(v.first_failure_ns),
                    ..Default::default()
                },
                now_ns,
            );
        }
        agg.socketless = self
            .socketless
            .iter()
            .flatten()
            .map(|(k, n)| ((k.tgid, k.err), n))
            .collect();
        agg.search = search;
        agg.events = stats.events;
        // Hits the kernel skipped are lost events too: never silently.
        agg.lost_events = stats.lost + self.missed;
        agg.flows_overflowed = stats.flows_overflowed;
        agg.last_event_ns = agg.last_event_ns.max(now_ns);
    }

    fn expire(&mut self, now_ns: u64, flush: bool) {
        let due: Vec<(u64, Failed)> = self
            .failed
            .iter()
            .flatten()
            .filter(|(_, w)| flush || w.closed_ns.saturating_add(ERRNO_WAIT_NS) <= now_ns)
            .collect();
        for (sk, w) in due {
            // Whoever deletes the entry counts the socket: the kernel may just have.
            if self.failed.remove(&sk).is_err() {
                continue;
            }
            if w.no_port != 0 {
                *self.user_eaddrnotavail.entry(w.slot).or_default() += 1;
            } else {
                let _ = self.by_tuple.remove(&w.tuple);
                *self.user_abandoned.entry(w.slot).or_default() += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_like_the_perf_route() {
        let v4: SocketAddr = "10.0.0.5:443".parse().unwrap();
        let k = KFlowKey {
            tgid: 4711,
            dport: 443,
            pad: 0,
            daddr: v6_bytes(v4.ip()),
        };
        assert_eq!(
            flow_key(&k),
            FlowKey {
                pid: 4711,
                dest: v4
            }
        );
        let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        let k6 = KFlowKey {
            tgid: 1,
            dport: 80,
            pad: 0,
            daddr: v6_bytes(v6.ip()),
        };
        assert_eq!(flow_key(&k6).dest, v6);
        assert_eq!(flow_key(&KFlowKey::default()), OVERFLOW_KEY);
    }

    #[test]
    fn map_values_have_the_c_layout() {
        // bpf/trace.bpf.c: struct flow, failed, config, errno_key (aya also checks the sizes
        // against the object's map definitions when it opens a map, and the global's size
        // against its .rodata symbol).
        assert_eq!(std::mem::size_of::<KFlow>(), 27 * 8 + 16);
        assert_eq!(std::mem::size_of::<Failed>(), 56);
        assert_eq!(std::mem::size_of::<Config>(), 48);
        assert_eq!(std::mem::size_of::<ErrnoKey>(), 8);
    }
}

/// Hits of our tracepoints the kernel did not run a program for, summed over the programs:
/// `recursion_misses` of /proc/self/fdinfo/FD (Linux 5.12+). A classic tracepoint program is
/// skipped while another kprobe/tracepoint program runs on the same CPU (`bpf_prog_active`
/// in `trace_call_bpf()`, kernel/trace/bpf_trace.c): an interrupt whose softirq changes a
/// socket's state during a program run, which is how a busy host loses a few of them; a
/// tp_btf program is skipped only when it would nest in itself. 0 when fdinfo has no such
/// line (older kernels) or cannot be read.
fn recursion_misses(ebpf: &Ebpf) -> u64 {
    use std::os::fd::{AsFd, AsRawFd};
    ebpf.programs()
        .filter_map(|(_, p)| p.fd().ok())
        .filter_map(|fd| {
            let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
            std::fs::read_to_string(path).ok()
        })
        .map(|info| fdinfo_recursion_misses(&info))
        .sum()
}

/// The `recursion_misses:` figure of one fdinfo text (0 when absent or malformed).
fn fdinfo_recursion_misses(info: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod fdinfo_tests {
    use super::fdinfo_recursion_misses;

    #[test]
    fn recursion_misses_are_read_from_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t7\nverified_insns:\t120\n";
        assert_eq!(fdinfo_recursion_misses(info), 7);
        assert_eq!(fdinfo_recursion_misses("pos:\t0\n"), 0);
        assert_eq!(fdinfo_recursion_misses("recursion_misses:\tx\n"), 0);
    }
}
