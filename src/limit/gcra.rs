//! GCRA over one `AtomicU64`: the decision governor makes, without its
//! per-cell clock and bookkeeping.
//!
//! governor keeps its GCRA (`Gcra`, `StateSnapshot::new`) crate-private:
//! the only public way to run it is a whole `RateLimiter`, which owns its
//! state, a copy of the quota, its own clock and a start instant (about
//! 50 bytes per cell, and a second clock read per check). The step itself
//! is a few lines, so it is written here, with governor's exact
//! arithmetic (`test_n_all_and_update`, `remaining_burst_capacity`), over
//! a theoretical arrival time (TAT) kept as nanoseconds since the Unix
//! epoch: 0, the initial value, behaves as "full", and so does any TAT
//! not later than now, so a cell is idle (forgettable) when `tat <= now`.
//!
//! Times that would overflow a `u64` are denied, never allowed: saturating
//! them would pin the TAT at `u64::MAX`, where every check passes.
//! Policies keep `t * burst` within 100 years
//! ([`RatePolicy::MAX_WINDOW`](super::RatePolicy::MAX_WINDOW)), so this
//! happens only past the year 2450.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::saturating_nanos;

/// A rate's parameters, in nanoseconds: `t`, the time one unit takes to
/// come back, and `tau`, the tolerance (`t * (burst - 1)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Gcra {
    t: u64,
    tau: u64,
}

/// What one check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Allowed; this many more units could pass at once now.
    Allowed { remaining: u32 },
    /// Denied; the request could pass after this many nanoseconds
    /// (`u64::MAX` when the time it could pass does not fit a `u64`).
    Denied { wait: u64 },
    /// The cost exceeds the burst: never allowed at once.
    TooHigh,
}

impl Gcra {
    /// One unit every `period` (at least a nanosecond), at most `burst`
    /// (at least 1) at once. A `tau` beyond a `u64` saturates, which only
    /// lowers the tolerance: it never allows more.
    pub(crate) fn new(period: Duration, burst: u32) -> Self {
        let t = saturating_nanos(period).max(1);
        Self {
            t,
            tau: t.saturating_mul(u64::from(burst.max(1) - 1)),
        }
    }

    /// The time one unit takes to come back.
    pub(crate) fn period(&self) -> Duration {
        Duration::from_nanos(self.t)
    }

    /// Spends `cost` units (at least 1) at `now` (nanoseconds since the
    /// epoch) if they fit, updating `tat`; a denied check changes nothing.
    pub(crate) fn check(&self, tat: &AtomicU64, cost: u32, now: u64) -> Outcome {
        const NEVER: Outcome = Outcome::Denied { wait: u64::MAX };
        let Self { t, tau } = *self;
        // The units beyond the first, as time; beyond a `u64`, beyond `tau`.
        let Some(additional) = t.checked_mul(u64::from(cost.max(1) - 1)) else {
            return Outcome::TooHigh;
        };
        if additional > tau {
            return Outcome::TooHigh;
        }
        let mut current = tat.load(Ordering::Acquire);
        loop {
            let Some(earliest) = current.checked_add(additional) else {
                return NEVER;
            };
            let earliest = earliest.saturating_sub(tau);
            if now < earliest {
                return Outcome::Denied {
                    wait: earliest - now,
                };
            }
            let Some(next) = current
                .max(now)
                .checked_add(t)
                .and_then(|next| next.checked_add(additional))
            else {
                return NEVER;
            };
            match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // governor's `(now + tau + t - next) / t`, rearranged so
                    // that nothing overflows: the check above keeps `next`
                    // within `now + t ..= now + tau + t`.
                    let remaining = (tau - (next - now - t)) / t;
                    return Outcome::Allowed {
                        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                    };
                }
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    use governor::clock::{Clock as _, FakeRelativeClock};
    use governor::middleware::StateInformationMiddleware;
    use governor::{Quota, RateLimiter};

    /// Against governor itself: the same decisions, remaining capacities
    /// and waits, over a run of checks of mixed cost and spacing.
    #[test]
    fn decides_as_governor_does() {
        for (period_ms, burst) in [(200u64, 5u32), (1000, 1), (7, 13), (60_000, 3)] {
            let period = Duration::from_millis(period_ms);
            let quota = Quota::with_period(period)
                .unwrap()
                .allow_burst(NonZeroU32::new(burst).unwrap());
            let clock = FakeRelativeClock::default();
            let theirs = RateLimiter::direct_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>();
            let ours = Gcra::new(period, burst);
            let tat = AtomicU64::new(0);
            let start = 1_000_000_000_000u64;
            let mut elapsed = 0u64;
            for step in 0..500u64 {
                let cost = 1 + (step * 7 % 4) as u32;
                let expected = match theirs.check_n(NonZeroU32::new(cost).unwrap()) {
                    Err(_) => Outcome::TooHigh,
                    Ok(Ok(snapshot)) => Outcome::Allowed {
                        remaining: snapshot.remaining_burst_capacity(),
                    },
                    Ok(Err(not_until)) => Outcome::Denied {
                        wait: saturating_nanos(not_until.wait_time_from(clock.now())),
                    },
                };
                assert_eq!(
                    ours.check(&tat, cost, start + elapsed),
                    expected,
                    "period {period_ms} ms, burst {burst}, step {step}"
                );
                let advance = period_ms * 1_000_000 * (step % 3) / 2 + step % 5;
                clock.advance(Duration::from_nanos(advance));
                elapsed += advance;
            }
        }
    }

    /// Times past `u64::MAX` deny: saturated, they would allow every check.
    #[test]
    fn overflowing_times_deny() {
        let now = 1_800_000_000_000_000_000;
        // A period beyond a `u64` of nanoseconds (the reviewer's
        // `u64::MAX` seconds over a quota of 100).
        let endless = Gcra::new(Duration::from_secs(u64::MAX / 100), 100);
        let tat = AtomicU64::new(0);
        for _ in 0..1000 {
            assert_eq!(
                endless.check(&tat, 1, now),
                Outcome::Denied { wait: u64::MAX }
            );
        }
        assert!(!matches!(
            endless.check(&tat, 2, now),
            Outcome::Allowed { .. }
        ));
        // 600 years for a burst of 10: the TAT fits for 9 requests, then
        // would not.
        let long = Gcra::new(Duration::from_secs(60 * 365 * 86_400), 10);
        let tat = AtomicU64::new(0);
        let allowed = (0..1000)
            .filter(|_| matches!(long.check(&tat, 1, now), Outcome::Allowed { .. }))
            .count();
        assert!(allowed <= 10, "burst 10, {allowed} allowed");
        // A TAT already at the end of time denies too.
        let gcra = Gcra::new(Duration::from_secs(1), 5);
        let tat = AtomicU64::new(u64::MAX - 1);
        assert_eq!(
            gcra.check(&tat, 1, now),
            Outcome::Denied {
                wait: u64::MAX - 1 - 4_000_000_000 - now
            }
        );
        assert_eq!(
            gcra.check(&tat, 1, u64::MAX - 1),
            Outcome::Denied { wait: u64::MAX }
        );
    }

    #[test]
    fn idle_once_the_tat_has_passed() {
        let gcra = Gcra::new(Duration::from_secs(1), 2);
        let tat = AtomicU64::new(0);
        let now = 10_000_000_000;
        assert_eq!(gcra.check(&tat, 2, now), Outcome::Allowed { remaining: 0 });
        assert_eq!(tat.load(Ordering::Relaxed), now + 2_000_000_000);
        assert_eq!(gcra.check(&tat, 3, now), Outcome::TooHigh);
    }
}
