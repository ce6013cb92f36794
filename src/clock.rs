//! The clocks every layer reads: certificate validity, SAS token expiry, DPS and hub
//! timestamps. One place (seconds, and milliseconds where Azure counts them).
//!
//! `now()` and `now_ms()` are the wall clock. A [`Clock`] is a wall clock that can be moved
//! forward: the local cloud keeps one (its "now" for certificate validity, SAS expiry,
//! issuance and timestamps), so expiry and rollover can be tested in seconds, and a simulated
//! device that lives in the same simulated time signs its tokens with the same handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Current Unix time in seconds (UTC).
pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Current Unix time in milliseconds (UTC): for what Azure times to the millisecond (an AMQP
/// message's absolute expiry, a cloud-to-device message's time to live).
pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A wall clock that runs at the real pace but may be moved forward (never back): the
/// simulated "now" of a local cloud and of the devices that live in its time.
///
/// Clones share one offset, so moving one moves them all; waiters on [`Clock::moved`] wake
/// when it moves (a sweeper sleeping until an expiry re-reads the time).
#[derive(Clone, Default)]
pub struct Clock {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    offset_ms: AtomicI64,
    moved: tokio::sync::Notify,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("offset_ms", &self.offset_ms())
            .finish()
    }
}

/// The most a clock may be ahead of the wall clock: a thousand years, far past any X.509 date,
/// so a typo cannot overflow the arithmetic below.
const MAX_OFFSET_MS: i64 = 1000 * 366 * 86_400_000;

impl Clock {
    /// A clock that reads the wall clock (offset zero).
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock `offset_ms` ahead of the wall clock (a stored offset read back).
    /// It may be negative: a start in the past.
    pub fn with_offset_ms(offset_ms: i64) -> crate::error::Result<Self> {
        if offset_ms.unsigned_abs() > MAX_OFFSET_MS as u64 {
            return Err(crate::error::Error::config(
                "the clock's start is more than a thousand years from now",
            ));
        }
        let clock = Self::default();
        clock.shared.offset_ms.store(offset_ms, Ordering::Release);
        Ok(clock)
    }

    /// Now, in Unix seconds.
    pub fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        now_ms() + self.offset_ms()
    }

    /// How far ahead of the wall clock this clock is, in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.shared.offset_ms.load(Ordering::Acquire)
    }

    /// Moves the clock forward by `ms` milliseconds; returns the new offset. Time never runs
    /// backwards: certificates already issued, tokens already judged and operations already
    /// expired stay so.
    pub fn advance_ms(&self, ms: i64) -> crate::error::Result<i64> {
        if ms < 0 {
            return Err(crate::error::Error::config(
                "time only moves forward: the amount to advance must not be negative",
            ));
        }
        let mut current = self.offset_ms();
        loop {
            let next = current
                .checked_add(ms)
                .filter(|n| *n <= MAX_OFFSET_MS)
                .ok_or_else(|| {
                    crate::error::Error::config(
                        "the clock would move more than a thousand years ahead",
                    )
                })?;
            match self.shared.offset_ms.compare_exchange(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.shared.moved.notify_waiters();
                    return Ok(next);
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Resolves the next time the clock is moved (for sleepers that wait for a deadline on
    /// this clock: sleep until the deadline or this, whichever comes first, then look again).
    pub async fn moved(&self) {
        self.shared.moved.notified().await
    }

    /// Whether two handles share one clock.
    pub fn same_as(&self, other: &Clock) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_moves_forward_only_and_its_clones_follow() {
        let clock = Clock::system();
        let twin = clock.clone();
        let before = twin.now();
        assert_eq!(clock.advance_ms(86_400_000).unwrap(), 86_400_000);
        assert!(twin.now() >= before + 86_400);
        assert!(clock.advance_ms(-1).is_err());
        assert!(clock.advance_ms(MAX_OFFSET_MS).is_err());
        assert!(twin.same_as(&clock));
        assert!(!Clock::system().same_as(&clock));
    }

    #[test]
    fn a_start_in_the_past_is_a_negative_offset() {
        let clock = Clock::with_offset_ms(-3_600_000).unwrap();
        assert!(clock.now() <= now() - 3_599);
        assert!(Clock::with_offset_ms(i64::MIN).is_err());
    }

    #[tokio::test]
    async fn moving_the_clock_wakes_its_waiters() {
        let clock = Clock::system();
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.moved().await })
        };
        tokio::task::yield_now().await;
        // notify_waiters only wakes registered waiters: retry until the task is parked.
        for _ in 0..100 {
            clock.advance_ms(1).unwrap();
            if waiter.is_finished() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        waiter.await.unwrap();
    }
}
