//! Coarse deadlines without a tokio timer, and without a shared waiter list, per wait.
//!
//! A tokio timer registered while no other timer is pending makes the runtime wake its driver
//! (an eventfd write and an extra epoll round) — on the proxy's hot path that is one more
//! syscall per request. Instead one task ticks every `resolution`, keeps a coarse clock
//! (milliseconds since the watchdog started at the last tick, one atomic) and wakes the waiters
//! whose deadline passed. Each connection registers one [`DeadlineSlot`] when it starts; a wait
//! arms it with an atomic store and keeps the task's waker in it (one uncontended lock, the
//! waker cloned only when it changed), so a request pays no timer entry and no insertion into
//! or removal from a waiter list shared by every connection (tokio's `Notify`, used before, did
//! both per wait). Deadlines are met within one `resolution` (+ 1 ms) late, never early.

use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

/// The shared coarse clock and the registry of connections' deadline slots.
#[derive(Debug)]
pub(crate) struct Watchdog {
    resolution: Duration,
    started: Instant,
    /// Milliseconds from `started` to the last tick.
    now_ms: AtomicU64,
    slots: Mutex<Vec<Weak<SlotInner>>>,
}

/// One connection's deadline: armed for each wait, checked at each tick.
#[derive(Debug)]
pub(crate) struct DeadlineSlot {
    inner: Arc<SlotInner>,
}

#[derive(Debug, Default)]
struct SlotInner {
    /// The coarse time (ms) at which the current wait fails; 0 while no wait is armed.
    deadline_ms: AtomicU64,
    /// The waiting task.
    waker: Mutex<Option<Waker>>,
}

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// A lock whose holder cannot leave the data inconsistent (a waker, a list of weak pointers).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Watchdog {
    /// A clock ticking every `resolution` (at least 1 ms).
    pub(crate) fn new(resolution: Duration) -> Self {
        Watchdog {
            resolution: resolution.max(Duration::from_millis(1)),
            started: Instant::now(),
            now_ms: AtomicU64::new(0),
            slots: Mutex::new(Vec::new()),
        }
    }

    /// Ticks forever; run it as a task next to the users of [`Watchdog::within`]. Each tick
    /// advances the coarse clock, wakes the expired waits and forgets the slots of finished
    /// connections.
    pub(crate) async fn run(&self) {
        let mut ticker = tokio::time::interval(self.resolution);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            let now = millis(self.started.elapsed());
            self.now_ms.store(now, Ordering::Release);
            lock(&self.slots).retain(|weak| {
                let Some(slot) = weak.upgrade() else {
                    return false;
                };
                let deadline = slot.deadline_ms.load(Ordering::Acquire);
                if deadline != 0 && now >= deadline {
                    if let Some(waker) = lock(&slot.waker).as_ref() {
                        waker.wake_by_ref();
                    }
                }
                true
            });
        }
    }

    /// A slot for one connection's waits (registered until it is dropped).
    pub(crate) fn slot(&self) -> DeadlineSlot {
        let inner = Arc::new(SlotInner::default());
        lock(&self.slots).push(Arc::downgrade(&inner));
        DeadlineSlot { inner }
    }

    /// The deadline `timeout` from now on the watchdog's clock (rounded up to the next ms).
    pub(crate) fn deadline_after(&self, timeout: Duration) -> u64 {
        millis(self.started.elapsed())
            .saturating_add(millis(timeout))
            .saturating_add(1)
    }

    /// Runs `fut` until it completes or the coarse clock reaches `deadline_ms` (from
    /// [`Watchdog::deadline_after`]), whichever comes first; `slot` is the caller's connection's.
    pub(crate) async fn within<F: Future>(
        &self,
        slot: &DeadlineSlot,
        deadline_ms: u64,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        let inner = &slot.inner;
        inner.deadline_ms.store(deadline_ms, Ordering::Release);
        let mut fut = std::pin::pin!(fut);
        let out = poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            {
                let mut waker = lock(&inner.waker);
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
            }
            // After the waker is in place: a tick that advanced the clock before this load
            // is seen here, a later one finds the waker.
            if self.now_ms.load(Ordering::Acquire) >= deadline_ms {
                return Poll::Ready(Err(Elapsed));
            }
            Poll::Pending
        })
        .await;
        inner.deadline_ms.store(0, Ordering::Release);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadline_passes_or_future_wins() {
        let dog = Arc::new(Watchdog::new(Duration::from_millis(5)));
        let ticker = tokio::spawn({
            let dog = Arc::clone(&dog);
            async move { dog.run().await }
        });
        let slot = dog.slot();
        let start = Instant::now();
        let late = dog.deadline_after(Duration::from_millis(30));
        assert_eq!(
            dog.within(&slot, late, std::future::pending::<()>()).await,
            Err(Elapsed)
        );
        assert!(start.elapsed() >= Duration::from_millis(30), "never early");
        let soon = dog.deadline_after(Duration::from_secs(5));
        assert_eq!(dog.within(&slot, soon, async { 7 }).await, Ok(7));
        // The same slot serves the next wait; a dropped slot leaves the registry at a tick.
        let again = dog.deadline_after(Duration::from_millis(10));
        assert_eq!(
            dog.within(&slot, again, std::future::pending::<()>()).await,
            Err(Elapsed)
        );
        drop(slot);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lock(&dog.slots).is_empty() {
            assert!(Instant::now() < deadline, "dropped slot still registered");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ticker.abort();
    }
}
