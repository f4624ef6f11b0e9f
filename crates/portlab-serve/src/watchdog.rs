//! Coarse per-request deadlines without a tokio timer per request.
//!
//! A tokio timer registered while no other timer is pending makes the runtime wake its driver
//! (an eventfd write and an extra epoll round) — on the proxy's hot path that is one more
//! syscall per request. Instead one task ticks every `resolution` and wakes every waiter through
//! a [`Notify`]; a waiter checks its own deadline on each tick. Deadlines are therefore met
//! within one `resolution` late.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

/// The shared coarse clock.
#[derive(Debug)]
pub(crate) struct Watchdog {
    notify: Notify,
    resolution: Duration,
}

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

impl Watchdog {
    /// A clock ticking every `resolution` (at least 1 ms).
    pub(crate) fn new(resolution: Duration) -> Self {
        Watchdog {
            notify: Notify::new(),
            resolution: resolution.max(Duration::from_millis(1)),
        }
    }

    /// Ticks forever; run it as a task next to the users of [`Watchdog::deadline`].
    pub(crate) async fn run(&self) {
        let mut ticker = tokio::time::interval(self.resolution);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            self.notify.notify_waiters();
        }
    }

    /// Runs `fut` until it completes or the first tick at or after `deadline`.
    pub(crate) async fn deadline<F: Future>(
        &self,
        deadline: Instant,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        tokio::pin!(fut);
        loop {
            let tick = self.notify.notified();
            tokio::select! {
                biased;
                out = &mut fut => return Ok(out),
                () = tick => {
                    if Instant::now() >= deadline {
                        return Err(Elapsed);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadline_passes_or_future_wins() {
        let dog = std::sync::Arc::new(Watchdog::new(Duration::from_millis(5)));
        let ticker = tokio::spawn({
            let dog = std::sync::Arc::clone(&dog);
            async move { dog.run().await }
        });
        let late = Instant::now() + Duration::from_millis(30);
        assert_eq!(
            dog.deadline(late, std::future::pending::<()>()).await,
            Err(Elapsed)
        );
        assert!(Instant::now() >= late);
        assert_eq!(
            dog.deadline(Instant::now() + Duration::from_secs(5), async { 7 })
                .await,
            Ok(7)
        );
        ticker.abort();
    }
}
