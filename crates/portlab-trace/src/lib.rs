//! # portlab-trace
//!
//! Every connect() on the host, by process and destination, from kernel tracepoints — the
//! failures included, which bcc's `tcpconnect` drops and bpftrace's never sees (it hooks
//! `tcp_connect`, after a port was chosen). No kprobes: four tracepoints, read by one of two
//! routes ([`Route`]): **bpf** ([`bpf`]: a C program built by build.rs with clang, loaded with
//! `aya`, runs the state machine in the kernel and counts in BPF maps that user space reads;
//! nothing is copied per event) or **perf** ([`perf`]: `perf_event_open` per-CPU mmap rings
//! read in Rust, aggregation in user space). [`Route::Auto`] takes bpf when it loads.
//!
//! - `sock:inet_sock_set_state`: `CLOSE → SYN_SENT` starts an attempt (on the caller's thread,
//!   so it names the process); `SYN_SENT → ESTABLISHED` is a success; `SYN_SENT → CLOSE` with
//!   local port 0 is a connect() that found no free ephemeral port (EADDRNOTAVAIL), and the gap
//!   since `CLOSE → SYN_SENT` is the failed port search; `FIN_WAIT* → CLOSE` after we closed
//!   first is a TIME_WAIT entry.
//! - `sock:inet_sk_error_report`: the errno of asynchronous failures (refused, timed out).
//! - `syscalls:sys_enter_connect` / `sys_exit_connect`: synchronous errnos.
//!
//! Main types: [`Tracer`] (started with a [`Filter`], attached when `start` returns, polled
//! with [`Tracer::snapshot`]), [`TraceSnapshot`] (cumulative counters per [`FlowReport`] =
//! (process, destination), failures by errno and [`portlab_load::ErrorClass`], a
//! [`DurationHistogram`] of failed port searches, lost events), [`TraceError`].
//!
//! ```no_run
//! use portlab_trace::{Filter, Tracer};
//!
//! let tracer = Tracer::start(Filter::default())?;
//! // … later, as often as you like:
//! for flow in tracer.snapshot().flows {
//!     println!("{} ({}) → {}: {} failed", flow.pid, flow.comm, flow.destination, flow.failures_total);
//! }
//! let last = tracer.stop();
//! println!("lost {} events", last.lost_events);
//! # Ok::<(), portlab_trace::TraceError>(())
//! ```
//!
//! Needs root, or CAP_BPF + CAP_PERFMON (bpf) / CAP_PERFMON (perf), with read access to
//! tracefs; nothing here prints.
#![warn(missing_docs)]

mod aggregate;
pub mod bpf;
pub mod decode;
pub mod perf;
pub mod procs;
mod report;
pub mod tracefs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde::Serialize;
use std::time::{Duration, Instant};

pub use aggregate::{class_of, DurationHistogram, MAX_FLOWS, PORT_SEARCH_BOUNDS_NS};
pub use report::{
    errno_name, DestinationTotals, ErrnoCount, FlowReport, SocketlessFailures, TraceSnapshot,
};

use aggregate::Aggregator;
use decode::{Event, Layouts};
use perf::{Record, Ring};
use procs::{ProcLookup, Scope};

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The kernel refused (not root, no CAP_PERFMON, or tracefs not readable).
    #[error("permission denied: {0}; run as root or grant CAP_PERFMON and CAP_BPF (and read access to tracefs)")]
    PermissionDenied(String),
    /// tracefs is not mounted and could not be mounted.
    #[error("tracefs is not mounted at /sys/kernel/tracing and mounting it failed")]
    NoTracefs,
    /// A tracepoint this tracer needs does not exist on this kernel.
    #[error("the kernel has no tracepoint {0} (needs Linux 4.16+ with CONFIG_FTRACE_SYSCALLS)")]
    MissingTracepoint(String),
    /// A tracefs format file did not look as expected.
    #[error("unexpected tracepoint format: {0}")]
    Format(String),
    /// perf_event_open, mmap or an ioctl failed.
    #[error("{0}")]
    Perf(String),
    /// A filter was invalid (unreadable namespace file, unknown cgroup).
    #[error("{0}")]
    Filter(String),
    /// The BPF route could not be used (`--route bpf`): not built with clang, refused by the
    /// verifier, or the kernel's tracepoint records differ.
    #[error("BPF route: {0}")]
    Bpf(String),
}

/// How the tracepoints are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// BPF when it loads, else perf (what `start` picks is in [`TraceSnapshot::route`]).
    #[default]
    Auto,
    /// A BPF program counts in kernel maps (bpf/trace.bpf.c); user space reads the maps.
    Bpf,
    /// perf_event_open rings: every event is copied to user space and aggregated there.
    Perf,
}

impl Route {
    /// `bpf`, `perf` or `auto`.
    pub fn name(self) -> &'static str {
        match self {
            Route::Auto => "auto",
            Route::Bpf => "bpf",
            Route::Perf => "perf",
        }
    }
}

/// Whether `syscalls:sys_enter_connect`/`sys_exit_connect` are traced.
///
/// Enabling any syscall tracepoint sends every syscall of every task on the host through the
/// kernel's tracing slow path (`SYSCALL_WORK_SYSCALL_TRACEPOINT`, kernel/entry/common.c):
/// measured on Linux 6.18 ≈ 100 ns more per syscall of every process, ≈ 2 µs per loopback
/// connection of `portlab load` + nginx (≈ 19 syscalls), as much as the BPF programs
/// themselves (docs/trace.md). Without them EADDRNOTAVAIL, refusals and timeouts are still
/// counted exactly, but a bound socket's synchronous failure has no errno (it counts as
/// `abandoned`) and connect() errors without a TCP socket (ENETUNREACH before a port is
/// chosen) are not seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Syscalls {
    /// Off on the BPF route (its counts do not need them), on on the perf route (which also
    /// takes a blocking connect's errno from `sys_exit_connect` when a sample is missing).
    #[default]
    Auto,
    /// Always traced.
    On,
    /// Never traced.
    Off,
}

impl Syscalls {
    /// Whether the syscall tracepoints are attached on `route` (`Bpf` or `Perf`).
    pub fn enabled_on(self, route: Route) -> bool {
        match self {
            Syscalls::On => true,
            Syscalls::Off => false,
            Syscalls::Auto => route == Route::Perf,
        }
    }
}

/// What to count. Everything on the host by default.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only connects to this address and port (also filtered in the kernel by port).
    pub dest: Option<SocketAddr>,
    /// Only this process (thread-group id).
    pub pid: Option<u32>,
    /// Only processes in this cgroup v2 or below (`/sys/fs/cgroup/…` or a path relative to it).
    pub cgroup: Option<PathBuf>,
    /// Only processes in this network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: Option<PathBuf>,
    /// Ring data pages per CPU (power of two); 0 = [`perf::DEFAULT_RING_PAGES`].
    pub ring_pages: usize,
    /// Whether to trace `syscalls:sys_enter_connect`/`sys_exit_connect` ([`Syscalls`]).
    pub syscalls: Syscalls,
    /// Which route to use; [`Route::Auto`] tries BPF first.
    pub route: Route,
}

impl Filter {
    fn scope(&self) -> Result<Scope, TraceError> {
        let netns = match &self.netns {
            Some(p) => Some(procs::netns_inode(p).map_err(|e| {
                TraceError::Filter(format!(
                    "cannot read network namespace {}: {e}",
                    p.display()
                ))
            })?),
            None => None,
        };
        let cgroup = match &self.cgroup {
            Some(p) => Some(procs::cgroup_relative(p).map_err(TraceError::Filter)?),
            None => None,
        };
        Ok(Scope {
            dest: self.dest,
            pid: self.pid,
            netns,
            cgroup,
        })
    }

    /// Kernel-side filters per tracepoint (set_state, error_report, enter, exit): only the
    /// transitions the state machine reads, and the destination port when one is given.
    fn kernel_filters(&self) -> [String; 4] {
        let port = self
            .dest
            .map(|d| format!(" && dport == {}", d.port()))
            .unwrap_or_default();
        [
            format!("protocol == 6 && (newstate == 2 || oldstate == 2 || newstate == 7){port}"),
            format!("error != 0{port}"),
            String::new(),
            String::new(),
        ]
    }
}

/// How often the reader wakes when the rings stay below their wake-up mark.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How often the BPF route's thread reads the maps between snapshots.
const BPF_REFRESH: Duration = Duration::from_secs(1);

struct Shared {
    stop: AtomicBool,
    agg: Mutex<Aggregator>,
    /// The BPF route's maps (None on the perf route).
    bpf: Option<Mutex<bpf::BpfRoute>>,
    route: Route,
    /// Whether the syscall tracepoints are attached.
    syscalls: bool,
    reader_cpu_ns: AtomicU64,
    started: Instant,
    start_ns: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Aggregator> {
        // A panic in the reader leaves counters that are still worth reading.
        self.agg.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self) -> TraceSnapshot {
        self.refresh_bpf(false);
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        let mut snap = report::snapshot(&mut self.lock(), elapsed_ms, self.start_ns);
        snap.reader_cpu_ms = self.reader_cpu_ns.load(Ordering::Relaxed) / 1_000_000;
        snap.route = self.route;
        snap.syscalls = self.syscalls;
        if let Some(bpf) = &self.bpf {
            let route = bpf.lock().unwrap_or_else(|e| e.into_inner());
            let (program, why) = route.set_state_program();
            snap.bpf_set_state_program = Some(program);
            snap.bpf_tp_btf_unavailable = why.map(str::to_string);
        }
        snap
    }

    /// BPF route: copies the kernel maps into the aggregation.
    fn refresh_bpf(&self, flush: bool) {
        if let Some(b) = &self.bpf {
            let mut b = b.lock().unwrap_or_else(|e| e.into_inner());
            if flush {
                b.detach();
            }
            b.refresh(&mut self.lock(), monotonic_ns(), flush);
        }
    }
}

/// A running trace: the tracepoints are attached and a reader thread aggregates their records.
/// Dropping it detaches.
pub struct Tracer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    bpf_unavailable: Option<String>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").finish_non_exhaustive()
    }
}

impl Tracer {
    /// Attaches to the tracepoints on every online CPU and starts counting. When this returns,
    /// every later connect() on the host is seen.
    ///
    /// # Errors
    /// [`TraceError::PermissionDenied`] without root/CAP_PERFMON; a missing tracepoint or
    /// tracefs; an invalid filter.
    pub fn start(filter: Filter) -> Result<Tracer, TraceError> {
        let scope = filter.scope()?;
        let fs = tracefs::TraceFs::open()?;
        let layouts = Layouts::read(&fs)?;
        let mut bpf_unavailable = None;
        if filter.route != Route::Perf {
            match bpf::BpfRoute::start(&filter, &layouts) {
                Ok(route) => {
                    let syscalls = filter.syscalls.enabled_on(Route::Bpf);
                    return Ok(Self::start_bpf(scope, route, syscalls, bpf_unavailable));
                }
                Err(e) if filter.route == Route::Bpf => return Err(e),
                Err(TraceError::Bpf(why)) => bpf_unavailable = Some(why),
                Err(e) => bpf_unavailable = Some(e.to_string()),
            }
        }
        let mut tracer = Self::start_perf(&filter, scope, layouts)?;
        tracer.bpf_unavailable = bpf_unavailable;
        Ok(tracer)
    }

    fn shared(
        scope: Scope,
        bpf: Option<bpf::BpfRoute>,
        syscalls: bool,
        start_ns: u64,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            stop: AtomicBool::new(false),
            agg: Mutex::new(Aggregator::new(scope, ProcLookup::live())),
            route: if bpf.is_some() {
                Route::Bpf
            } else {
                Route::Perf
            },
            bpf: bpf.map(Mutex::new),
            syscalls,
            reader_cpu_ns: AtomicU64::new(0),
            started: Instant::now(),
            start_ns,
        })
    }

    fn start_bpf(
        scope: Scope,
        route: bpf::BpfRoute,
        syscalls: bool,
        note: Option<String>,
    ) -> Tracer {
        let shared = Self::shared(scope, Some(route), syscalls, monotonic_ns());
        let s = Arc::clone(&shared);
        // Reads the maps every second (TIME_WAIT window, sockets whose errno never came) even
        // when nobody asks for snapshots. A failed spawn only loses that; snapshots still read.
        let thread = std::thread::Builder::new()
            .name("portlab-trace".into())
            .spawn(move || {
                while !s.stop.load(Ordering::Relaxed) {
                    s.refresh_bpf(false);
                    s.reader_cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
                    std::thread::park_timeout(BPF_REFRESH);
                }
            })
            .ok();
        Tracer {
            shared,
            thread,
            bpf_unavailable: note,
        }
    }

    fn start_perf(filter: &Filter, scope: Scope, layouts: Layouts) -> Result<Tracer, TraceError> {
        let pages = match filter.ring_pages {
            0 => perf::DEFAULT_RING_PAGES,
            n => n.next_power_of_two(),
        };
        let filters = filter.kernel_filters();
        let filter_refs: Vec<&str> = filters.iter().map(String::as_str).collect();
        let ids = layouts.ids();
        let syscalls = filter.syscalls.enabled_on(Route::Perf);
        let ids = if syscalls { &ids[..] } else { &ids[..2] };
        let mut rings = Vec::new();
        for cpu in perf::online_cpus()? {
            rings.push(perf::open_ring(cpu, ids, &filter_refs, pages)?);
        }
        let start_ns = monotonic_ns();
        for ring in &rings {
            ring.enable()?;
        }
        let shared = Self::shared(scope, None, syscalls, start_ns);
        let reader = Reader {
            rings,
            layouts,
            shared: Arc::clone(&shared),
            batch: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("portlab-trace".into())
            .spawn(move || reader.run())
            .map_err(|e| TraceError::Perf(format!("starting the reader thread: {e}")))?;
        Ok(Tracer {
            shared,
            thread: Some(thread),
            bpf_unavailable: None,
        })
    }

    /// The route in use: [`Route::Bpf`] or [`Route::Perf`].
    pub fn route(&self) -> Route {
        self.shared.route
    }

    /// Whether `sys_enter_connect`/`sys_exit_connect` are traced ([`Syscalls`]).
    pub fn syscalls(&self) -> bool {
        self.shared.syscalls
    }

    /// Why [`Route::Auto`] fell back to perf (None when BPF runs or perf was asked for).
    pub fn bpf_unavailable(&self) -> Option<&str> {
        self.bpf_unavailable.as_deref()
    }

    /// Counters so far (cumulative since `start`). Events of the last ~100 ms are still being
    /// put in order and appear in the next snapshot.
    pub fn snapshot(&self) -> TraceSnapshot {
        self.shared.snapshot()
    }

    /// Detaches, processes everything still in the rings and returns the final counters.
    pub fn stop(mut self) -> TraceSnapshot {
        self.shutdown();
        self.shared.snapshot()
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        // BPF route: detach, then count what is left (once: later calls find nothing waiting).
        self.shared.refresh_bpf(true);
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Reader {
    rings: Vec<Ring>,
    layouts: Layouts,
    shared: Arc<Shared>,
    batch: Vec<Event>,
}

impl Reader {
    fn run(mut self) {
        let mut pollfds: Vec<libc::pollfd> = self
            .rings
            .iter()
            .map(|r| libc::pollfd {
                fd: r.poll_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // Events older than the start of the previous round have been read from every ring.
        let mut previous_round_ns = 0;
        loop {
            let stopping = self.shared.stop.load(Ordering::Relaxed);
            let round_ns = monotonic_ns();
            self.drain_all(if stopping {
                u64::MAX
            } else {
                previous_round_ns
            });
            previous_round_ns = round_ns;
            self.shared
                .reader_cpu_ns
                .store(thread_cpu_ns(), Ordering::Relaxed);
            if stopping {
                return;
            }
            // SAFETY: pollfds is a valid array of the rings' descriptors.
            unsafe {
                libc::poll(
                    pollfds.as_mut_ptr(),
                    pollfds.len() as libc::nfds_t,
                    POLL_INTERVAL.as_millis() as i32,
                )
            };
        }
    }

    fn drain_all(&mut self, watermark_ns: u64) {
        let mut lost = 0;
        let mut throttles = 0;
        let mut comms: Vec<(u32, u32, Vec<u8>)> = Vec::new();
        let layouts = &self.layouts;
        let batch = &mut self.batch;
        for ring in &mut self.rings {
            ring.drain(|rec| match rec {
                Record::Sample {
                    pid,
                    tid,
                    time_ns,
                    raw,
                } => {
                    if let Some(kind) = layouts.decode(raw) {
                        batch.push(Event {
                            time_ns,
                            pid,
                            tid,
                            kind,
                        });
                    }
                }
                Record::Lost(n) => lost += n,
                Record::Throttle => throttles += 1,
                Record::Comm { pid, tid, comm } => comms.push((pid, tid, comm.to_vec())),
            });
        }
        let mut agg = self.shared.lock();
        for (pid, tid, comm) in comms {
            agg.comm(pid, tid, &comm);
        }
        agg.note_processes(&self.batch);
        agg.lost(lost);
        agg.throttles += throttles;
        agg.push(self.batch.drain(..));
        if watermark_ns == u64::MAX {
            agg.flush();
        } else {
            agg.advance(watermark_ns);
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC now, ns (the clock the perf samples are stamped with).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}
