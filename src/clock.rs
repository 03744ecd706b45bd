//! Time, injected: a [`Clock`] trait with a [`SystemClock`] and a [`FakeClock`].
//!
//! Every decision that depends on time (expiry, not-before, rotation grace
//! periods, rate limits) asks a `Clock`, so that tests move time forward
//! instead of sleeping.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use keyward::clock::{Clock, FakeClock};
//!
//! let clock = FakeClock::new(UNIX_EPOCH + Duration::from_secs(1_000));
//! clock.advance(Duration::from_secs(60));
//! assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(1_060));
//! ```

use std::any::Any;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// A shared clock is a clock: `Arc<dyn Clock>` (what
/// [`Keyward::clock`](crate::Keyward::clock) hands out) can be given to
/// any part that takes `impl Clock`. Parts that keep an `Arc<dyn Clock>`
/// take such an `Arc` as it is, without wrapping it again.
impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> SystemTime {
        (**self).now()
    }
}

/// `clock` as the `Arc<dyn Clock>` the parts keep: an `Arc<dyn Clock>` is
/// shared as it is (a clone of the `Arc`), so that a clock handed from part
/// to part is not wrapped once more each time, which would add a pointer
/// chase and a virtual call to every reading.
pub(crate) fn shared(clock: impl Clock) -> Arc<dyn Clock> {
    match (&clock as &dyn Any).downcast_ref::<Arc<dyn Clock>>() {
        Some(shared) => Arc::clone(shared),
        None => Arc::new(clock),
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// Resolution is one nanosecond; times before the Unix epoch are clamped to
/// it.
#[derive(Debug, Clone)]
pub struct FakeClock {
    nanos_since_epoch: Arc<AtomicU64>,
}

impl FakeClock {
    /// A clock that stands at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            nanos_since_epoch: Arc::new(AtomicU64::new(epoch_nanos(start))),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = saturating_nanos(by);
        // fetch_update cannot fail here: the closure always returns Some.
        let _ = self
            .nanos_since_epoch
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(now.saturating_add(by))
            });
    }

    /// Sets the clock to `to` (which may be earlier than now).
    pub fn set(&self, to: SystemTime) {
        self.nanos_since_epoch
            .store(epoch_nanos(to), Ordering::Release);
    }
}

impl Default for FakeClock {
    /// A clock standing at 2025-01-01T00:00:00Z.
    fn default() -> Self {
        Self::new(UNIX_EPOCH + Duration::from_secs(1_735_689_600))
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.nanos_since_epoch.load(Ordering::Acquire))
    }
}

/// Nanoseconds since the epoch: 0 before it, saturating far after it.
pub(crate) fn epoch_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, saturating_nanos)
}

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
pub(crate) fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whole seconds, rounded up: headers that count seconds must never
/// announce a wait shorter than the real one. Saturating: a `Limiter` may
/// answer a wait of nearly `Duration::MAX`, which rounded up by adding
/// would overflow (and wrap to `0`, "retry now", without overflow checks).
pub(crate) fn whole_seconds(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_clock_is_not_wrapped_again() {
        let clock: Arc<dyn Clock> = Arc::new(FakeClock::default());
        assert!(Arc::ptr_eq(&shared(Arc::clone(&clock)), &clock));
        let fake = FakeClock::default();
        assert_eq!(shared(fake.clone()).now(), fake.now());
    }

    #[test]
    fn clones_share_time() {
        let clock = FakeClock::default();
        let other = clock.clone();
        let start = clock.now();
        other.advance(Duration::from_millis(1500));
        assert_eq!(clock.now(), start + Duration::from_millis(1500));
        clock.set(start);
        assert_eq!(other.now(), start);
    }
}
