//! What portlab's io_uring event loops share — the load engine's (`engine/uring.rs`) and the
//! TCP forwarder's (`portlab-serve`'s `uring_proxy.rs`): one `io_uring_enter` per loop pass
//! that submits the pass's entries and waits for completions.

use std::io;
use std::time::Duration;

use io_uring::{squeue, types, IoUring};

/// Pushes `pending` into `ring`'s submission queue (submitting early whenever the queue is
/// full) and empties it, then submits and waits up to `wait` for `want` completions. With
/// `min_wait_us` > 0 (`IORING_FEAT_MIN_TIMEOUT`, Linux 6.12) the wait returns once that many µs
/// have passed with at least one completion, which batches wake-ups; with 0 it returns at the
/// first completion when `want` is 1. A timeout, a signal or a full completion queue is not an
/// error (`ETIME`, `EINTR`, `EBUSY`, `EAGAIN`): the caller reaps what is there.
///
/// # Errors
/// Any other `io_uring_enter(2)` error.
///
/// # Safety
/// Every buffer, address and timespec an entry of `pending` points to must stay valid, and not
/// be touched by the caller, until that entry's completion has been reaped.
pub unsafe fn submit_and_wait(
    ring: &mut IoUring,
    pending: &mut Vec<squeue::Entry>,
    wait: Duration,
    want: usize,
    min_wait_us: u32,
) -> io::Result<()> {
    let mut i = 0;
    while i < pending.len() {
        {
            let mut sq = ring.submission();
            while i < pending.len() {
                // SAFETY: the caller keeps what the entry points to alive until its completion.
                if unsafe { sq.push(&pending[i]) }.is_err() {
                    break;
                }
                i += 1;
            }
        }
        if i < pending.len() {
            ring.submit()?;
        }
    }
    pending.clear();
    let ts = types::Timespec::from(wait);
    let mut args = types::SubmitArgs::new().timespec(&ts);
    if min_wait_us > 0 {
        args = args.min_wait_usec(min_wait_us);
    }
    match ring.submitter().submit_with_args(want, &args) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}
