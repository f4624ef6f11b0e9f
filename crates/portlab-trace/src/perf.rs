//! perf_event_open on tracepoints: one event per (tracepoint, CPU), all of a CPU's events
//! redirected into one mmap ring (PERF_EVENT_IOC_SET_OUTPUT), read without copying the kernel's
//! bookkeeping: samples (PERF_SAMPLE_TID | TIME | RAW), PERF_RECORD_LOST and PERF_RECORD_COMM.
//! See perf_event_open(2), "MMAP layout".

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};

use perf_event_open_sys as sys;
use sys::bindings;

use crate::TraceError;

/// One record read from a ring.
#[derive(Debug)]
pub enum Record<'a> {
    /// A tracepoint sample.
    Sample {
        /// Process id.
        pid: u32,
        /// Thread id.
        tid: u32,
        /// CLOCK_MONOTONIC, ns.
        time_ns: u64,
        /// The raw tracepoint record.
        raw: &'a [u8],
    },
    /// The kernel dropped this many records: the ring was full.
    Lost(u64),
    /// The kernel throttled the event (more samples per tick than
    /// `kernel.perf_event_max_sample_rate` allows): samples are dropped until it unthrottles.
    Throttle,
    /// A task took a new name (exec or prctl).
    Comm {
        /// Process id.
        pid: u32,
        /// Thread id.
        tid: u32,
        /// New name (up to 16 bytes).
        comm: &'a [u8],
    },
}

/// One CPU's ring with the events writing into it.
#[derive(Debug)]
pub struct Ring {
    /// The event whose buffer is mapped; the others write into it.
    leader: OwnedFd,
    _others: Vec<OwnedFd>,
    base: *mut u8,
    map_len: usize,
    data_size: u64,
    /// Scratch for a record that wraps around the end of the ring.
    scratch: Vec<u8>,
}

// SAFETY: the mapping is owned by the Ring and only touched through &mut self.
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base/map_len come from a successful mmap that nothing else unmaps.
        unsafe {
            libc::munmap(self.base.cast(), self.map_len);
        }
    }
}

/// Ring-buffer data size per CPU, in pages (a power of two).
pub const DEFAULT_RING_PAGES: usize = 256;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

/// Opens `ids` (tracepoint ids) on `cpu`, with the kernel-side filter of each (empty for none),
/// and maps one ring of `pages` data pages.
///
/// # Errors
/// [`TraceError::PermissionDenied`] on EACCES/EPERM, [`TraceError::Perf`] otherwise.
pub fn open_ring(
    cpu: i32,
    ids: &[u16],
    filters: &[&str],
    pages: usize,
) -> Result<Ring, TraceError> {
    let mut fds = Vec::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        let fd = open_tracepoint(id, cpu, i == 0, pages * page_size() / 4)?;
        if let Some(filter) = filters.get(i).filter(|f| !f.is_empty()) {
            set_filter(&fd, filter)?;
        }
        fds.push(fd);
    }
    let leader = fds.remove(0);
    let page = page_size();
    let map_len = page * (pages + 1);
    // SAFETY: mapping a perf fd as the man page describes; the result is checked.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            leader.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(perf_error("mmap of the perf ring", cpu));
    }
    for fd in &fds {
        // SAFETY: both are valid perf fds on the same CPU.
        if unsafe { sys::ioctls::SET_OUTPUT(fd.as_raw_fd(), leader.as_raw_fd()) } != 0 {
            // SAFETY: unmapping what we just mapped.
            unsafe { libc::munmap(base, map_len) };
            return Err(perf_error("PERF_EVENT_IOC_SET_OUTPUT", cpu));
        }
    }
    Ok(Ring {
        leader,
        _others: fds,
        base: base.cast(),
        map_len,
        data_size: (page * pages) as u64,
        scratch: Vec::new(),
    })
}

fn open_tracepoint(
    id: u16,
    cpu: i32,
    leader: bool,
    wakeup_bytes: usize,
) -> Result<OwnedFd, TraceError> {
    let mut attr = bindings::perf_event_attr {
        type_: bindings::PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<bindings::perf_event_attr>() as u32,
        config: u64::from(id),
        sample_type: u64::from(
            bindings::PERF_SAMPLE_TID | bindings::PERF_SAMPLE_TIME | bindings::PERF_SAMPLE_RAW,
        ),
        ..Default::default()
    };
    attr.sample_period = 1;
    attr.set_disabled(1);
    attr.set_use_clockid(1);
    attr.clockid = libc::CLOCK_MONOTONIC;
    // Wake the reader when a quarter of the ring is full; it also polls on a timer.
    attr.set_watermark(1);
    attr.wakeup_watermark = wakeup_bytes as u32;
    if leader {
        // Names of processes that exec while we trace (short-lived connect loops).
        attr.set_comm(1);
        attr.set_comm_exec(1);
    }
    // SAFETY: attr is fully initialised; pid -1 + cpu = every task on that CPU.
    let fd = unsafe {
        sys::perf_event_open(
            &mut attr,
            -1,
            cpu,
            -1,
            libc::c_ulong::from(bindings::PERF_FLAG_FD_CLOEXEC),
        )
    };
    if fd < 0 {
        return Err(perf_error("perf_event_open on a tracepoint", cpu));
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_filter(fd: &OwnedFd, filter: &str) -> Result<(), TraceError> {
    let c = std::ffi::CString::new(filter)
        .map_err(|_| TraceError::Perf(format!("filter '{filter}' contains NUL")))?;
    // SAFETY: the kernel copies the NUL-terminated string.
    if unsafe { sys::ioctls::SET_FILTER(fd.as_raw_fd(), c.as_ptr().cast_mut()) } != 0 {
        return Err(TraceError::Perf(format!(
            "the kernel refused tracepoint filter '{filter}': {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn perf_error(what: &str, cpu: i32) -> TraceError {
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            TraceError::PermissionDenied(format!("{what} (CPU {cpu}): {err}"))
        }
        _ => TraceError::Perf(format!("{what} (CPU {cpu}): {err}")),
    }
}

impl Ring {
    /// Enables every event writing into this ring.
    ///
    /// # Errors
    /// The ioctl's failure.
    pub fn enable(&self) -> Result<(), TraceError> {
        for fd in std::iter::once(&self.leader).chain(&self._others) {
            // SAFETY: valid perf fd.
            if unsafe { sys::ioctls::ENABLE(fd.as_raw_fd(), 0) } != 0 {
                return Err(perf_error("PERF_EVENT_IOC_ENABLE", -1));
            }
        }
        Ok(())
    }

    /// The descriptor to poll(2) for readability.
    pub fn poll_fd(&self) -> i32 {
        self.leader.as_raw_fd()
    }

    fn header(&self) -> *mut bindings::perf_event_mmap_page {
        self.base.cast()
    }

    /// Calls `f` for every record now in the ring, then releases the space to the kernel.
    pub fn drain(&mut self, mut f: impl FnMut(Record<'_>)) {
        let page = page_size();
        // SAFETY: the header page is mapped for the Ring's lifetime; data_head is written by
        // the kernel, so it is read volatile and followed by an acquire fence (perf_event.h:
        // "User-space reading the @data_head value should issue an smp_rmb()").
        let head = unsafe { std::ptr::read_volatile(&(*self.header()).data_head) };
        fence(Ordering::Acquire);
        // SAFETY: as above; data_tail is ours to write.
        let mut tail = unsafe { std::ptr::read_volatile(&(*self.header()).data_tail) };
        // SAFETY: data pages start one page after the header.
        let data = unsafe { self.base.add(page) };
        let size = self.data_size;
        while tail < head {
            let at = (tail % size) as usize;
            let mut hdr = [0u8; 8];
            copy_wrapping(data, size as usize, at, &mut hdr);
            let rec_type = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let rec_size = usize::from(u16::from_ne_bytes([hdr[6], hdr[7]]));
            if rec_size < 8 || (rec_size as u64) > head - tail {
                break; // corrupt or torn; never read past head
            }
            let body_len = rec_size - 8;
            let body_at = (at + 8) % size as usize;
            let body: &[u8] = if body_at + body_len <= size as usize {
                // SAFETY: the record lies inside the mapped data area.
                unsafe { std::slice::from_raw_parts(data.add(body_at), body_len) }
            } else {
                self.scratch.resize(body_len, 0);
                copy_wrapping(data, size as usize, body_at, &mut self.scratch);
                &self.scratch
            };
            if let Some(rec) = parse_record(rec_type, body) {
                f(rec);
            }
            tail += rec_size as u64;
        }
        fence(Ordering::Release);
        // SAFETY: tell the kernel the space up to `tail` is free.
        unsafe { std::ptr::write_volatile(&mut (*self.header()).data_tail, tail) };
    }
}

fn copy_wrapping(data: *const u8, size: usize, at: usize, out: &mut [u8]) {
    let first = out.len().min(size - at);
    // SAFETY: both ranges lie inside the mapped data area of `size` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(data.add(at), out.as_mut_ptr(), first);
        std::ptr::copy_nonoverlapping(data, out.as_mut_ptr().add(first), out.len() - first);
    }
}

/// Parses a record body (after the 8-byte header) by type.
fn parse_record(rec_type: u32, body: &[u8]) -> Option<Record<'_>> {
    let u32_at = |o: usize| {
        body.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let u64_at = |o: usize| {
        body.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    match rec_type {
        bindings::PERF_RECORD_SAMPLE => {
            // sample_type TID | TIME | RAW: u32 pid, u32 tid, u64 time, u32 size, raw[size].
            let raw_len = u32_at(16)? as usize;
            Some(Record::Sample {
                pid: u32_at(0)?,
                tid: u32_at(4)?,
                time_ns: u64_at(8)?,
                raw: body.get(20..20 + raw_len)?,
            })
        }
        // struct { u64 id; u64 lost; }
        bindings::PERF_RECORD_LOST => Some(Record::Lost(u64_at(8)?)),
        bindings::PERF_RECORD_THROTTLE => Some(Record::Throttle),
        bindings::PERF_RECORD_COMM => {
            let name = body.get(8..)?;
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            Some(Record::Comm {
                pid: u32_at(0)?,
                tid: u32_at(4)?,
                comm: &name[..end],
            })
        }
        _ => None,
    }
}

/// Number of possible CPUs (ids 0..n) from /sys/devices/system/cpu/online ("0-1", "0,2-5").
///
/// # Errors
/// The file is unreadable or malformed.
pub fn online_cpus() -> Result<Vec<i32>, TraceError> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map_err(|e| TraceError::Perf(format!("reading /sys/devices/system/cpu/online: {e}")))?;
    parse_cpu_list(&text)
        .ok_or_else(|| TraceError::Perf(format!("cannot read CPU list '{}'", text.trim())))
}

fn parse_cpu_list(text: &str) -> Option<Vec<i32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (i32, i32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0,2-4"), Some(vec![0, 2, 3, 4]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
    }

    #[test]
    fn sample_record_layout() {
        // pid 4711, tid 4712, time 99, raw of 4 bytes (+ 4 bytes of padding).
        let mut body = Vec::new();
        body.extend(4711u32.to_ne_bytes());
        body.extend(4712u32.to_ne_bytes());
        body.extend(99u64.to_ne_bytes());
        body.extend(4u32.to_ne_bytes());
        body.extend([1, 2, 3, 4, 0, 0, 0, 0]);
        match parse_record(bindings::PERF_RECORD_SAMPLE, &body) {
            Some(Record::Sample {
                pid,
                tid,
                time_ns,
                raw,
            }) => {
                assert_eq!(
                    (pid, tid, time_ns, raw),
                    (4711, 4712, 99, &[1u8, 2, 3, 4][..])
                );
            }
            other => panic!("{other:?}"),
        }
        let mut lost = 7u64.to_ne_bytes().to_vec();
        lost.extend(120u64.to_ne_bytes());
        assert!(matches!(
            parse_record(bindings::PERF_RECORD_LOST, &lost),
            Some(Record::Lost(120))
        ));
        assert!(parse_record(bindings::PERF_RECORD_SAMPLE, &body[..10]).is_none());
    }
}
