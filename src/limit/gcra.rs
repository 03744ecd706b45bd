//! GCRA, the generic cell rate algorithm: the decision governor makes,
//! as a pure step over a theoretical arrival time (TAT), and over one
//! `AtomicU64` for the memory limiter.
//!
//! governor keeps its GCRA (`Gcra`, `StateSnapshot::new`) crate-private:
//! the only public way to run it is a whole `RateLimiter`, which owns its
//! state, a copy of the quota, its own clock and a start instant (about
//! 50 bytes per cell, and a second clock read per check). The step itself
//! is a few lines, so it is written here, with governor's exact
//! arithmetic (`test_n_all_and_update`, `remaining_burst_capacity`), over
//! a TAT kept as nanoseconds since the Unix epoch: 0, the initial value,
//! behaves as "full", and so does any TAT not later than now, so a cell is
//! idle (forgettable) when `tat <= now`.
//!
//! Times that would overflow a `u64` are denied, never allowed: saturating
//! them would pin the TAT at `u64::MAX`, where every check passes.
//! Policies keep `t * burst` within 100 years
//! ([`RatePolicy::MAX_WINDOW`](super::RatePolicy::MAX_WINDOW)), so this
//! happens only past the year 2450.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::saturating_nanos;

/// A rate's GCRA parameters, in nanoseconds: `t`, the time one unit takes
/// to come back, and `tau`, the tolerance (`t * (burst - 1)`). A
/// [`RatePolicy`](super::RatePolicy) works them out once
/// ([`RatePolicy::gcra`](super::RatePolicy::gcra)).
///
/// [`step`](Self::step) is the whole algorithm, for a limiter that keeps
/// its state elsewhere (a database, another cache): read the key's TAT
/// (0 if it has none), step, and if the request is allowed store the new
/// TAT, in one transaction with the key's other policies
/// ([`Limits::decide`](super::Limits::decide) does all of a key's
/// policies at once). Times are nanoseconds since the Unix epoch; a TAT
/// not later than now is a full policy, so a state may be dropped then.
///
/// ```
/// use std::time::Duration;
/// use keyward::limit::{Gcra, GcraOutcome};
///
/// let gcra = Gcra::new(Duration::from_millis(200), 2); // 5 a second, burst 2
/// let now = 1_700_000_000_000_000_000u64;
/// let GcraOutcome::Allowed { tat, remaining: 1 } = gcra.step(0, 1, now) else { panic!() };
/// let GcraOutcome::Allowed { tat, remaining: 0 } = gcra.step(tat, 1, now) else { panic!() };
/// // The third waits for one unit to come back.
/// assert_eq!(gcra.step(tat, 1, now), GcraOutcome::Denied { wait: 200_000_000 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gcra {
    t: u64,
    tau: u64,
}

/// What one GCRA step decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GcraOutcome {
    /// Allowed: store `tat`; this many more units could pass at once now.
    Allowed {
        /// The new theoretical arrival time (nanoseconds since the epoch).
        tat: u64,
        /// The units that could still pass at once.
        remaining: u32,
    },
    /// Denied (nothing to store); the request could pass after this many
    /// nanoseconds (`u64::MAX` when the time it could pass does not fit a
    /// `u64`).
    Denied {
        /// Nanoseconds until the request could pass.
        wait: u64,
    },
    /// The cost exceeds the burst: never allowed at once.
    TooHigh,
}

/// A TAT word held by a check that decides several policies at once (see
/// the memory limiter): no valid TAT reaches it, since a step that would
/// is denied as an overflow.
pub(crate) const LOCKED: u64 = u64::MAX;

/// The words from here to just below [`LOCKED`] say that a state kept in
/// a record has moved to its own allocation (see `LimitCell`), and where:
/// no valid TAT reaches them either (the last 4.3 seconds before
/// `u64::MAX` nanoseconds, in the year 2554, are denied as overflows).
pub(crate) const MOVED: u64 = LOCKED - (1 << 32);

impl Gcra {
    /// One unit every `period` (at least a nanosecond), at most `burst`
    /// (at least 1) at once. A `tau` beyond a `u64` saturates, which only
    /// lowers the tolerance: it never allows more.
    pub fn new(period: Duration, burst: u32) -> Self {
        let t = saturating_nanos(period).max(1);
        Self {
            t,
            tau: t.saturating_mul(u64::from(burst.max(1) - 1)),
        }
    }

    /// The time one unit takes to come back.
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.t)
    }

    /// `t`: the period in nanoseconds (at least 1).
    pub fn period_nanos(&self) -> u64 {
        self.t
    }

    /// `tau`: the tolerance in nanoseconds, `t * (burst - 1)`.
    pub fn tolerance_nanos(&self) -> u64 {
        self.tau
    }

    /// The most units allowed at once.
    pub fn burst(&self) -> u32 {
        u32::try_from(self.tau / self.t + 1).unwrap_or(u32::MAX)
    }

    /// One step: spends `cost` units (at least 1) at `now` on a policy
    /// whose TAT is `tat` (0 for a key never seen), if they fit.
    #[inline]
    pub fn step(&self, tat: u64, cost: u32, now: u64) -> GcraOutcome {
        const NEVER: GcraOutcome = GcraOutcome::Denied { wait: u64::MAX };
        let Self { t, tau } = *self;
        // The units beyond the first, as time; beyond a `u64`, beyond `tau`.
        let Some(additional) = t.checked_mul(u64::from(cost.max(1) - 1)) else {
            return GcraOutcome::TooHigh;
        };
        if additional > tau {
            return GcraOutcome::TooHigh;
        }
        let Some(earliest) = tat.checked_add(additional) else {
            return NEVER;
        };
        let earliest = earliest.saturating_sub(tau);
        if now < earliest {
            return GcraOutcome::Denied {
                wait: earliest - now,
            };
        }
        let Some(next) = tat
            .max(now)
            .checked_add(t)
            .and_then(|next| next.checked_add(additional))
            .filter(|&next| next < MOVED)
        else {
            return NEVER;
        };
        // governor's `(now + tau + t - next) / t`, rearranged so that
        // nothing overflows: the check above keeps `next` within
        // `now + t ..= now + tau + t`.
        let remaining = (tau - (next - now - t)) / t;
        GcraOutcome::Allowed {
            tat: next,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        }
    }

    /// The units that could pass at once now, spending nothing.
    #[inline]
    pub fn remaining(&self, tat: u64, now: u64) -> u32 {
        match self.step(tat, 1, now) {
            GcraOutcome::Allowed { remaining, .. } => remaining.saturating_add(1),
            GcraOutcome::Denied { .. } | GcraOutcome::TooHigh => 0,
        }
    }

    /// [`step`](Self::step) on an atomic TAT, retried until it lands;
    /// waits while another check holds the word ([`LOCKED`]).
    #[inline]
    pub(crate) fn check(&self, tat: &AtomicU64, cost: u32, now: u64) -> GcraOutcome {
        let mut current = load_unlocked(tat);
        loop {
            let outcome = self.step(current, cost, now);
            let GcraOutcome::Allowed { tat: next, .. } = outcome else {
                return outcome;
            };
            match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return outcome,
                Err(LOCKED) => current = load_unlocked(tat),
                Err(actual) => current = actual,
            }
        }
    }
}

/// The word's value once no check holds it. Holders decide a few
/// policies in memory and let go: spin briefly, then yield.
pub(crate) fn load_unlocked(word: &AtomicU64) -> u64 {
    let mut spins = 0u32;
    loop {
        let value = word.load(Ordering::Acquire);
        if value != LOCKED {
            return value;
        }
        backoff(&mut spins);
    }
}

/// Takes the word (sets it to [`LOCKED`]) and returns its value.
pub(crate) fn lock_word(word: &AtomicU64) -> u64 {
    let mut spins = 0u32;
    let mut current = word.load(Ordering::Acquire);
    loop {
        if current == LOCKED {
            backoff(&mut spins);
            current = word.load(Ordering::Acquire);
            continue;
        }
        match word.compare_exchange_weak(current, LOCKED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return current,
            Err(actual) => current = actual,
        }
    }
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        // The holder was preempted: let it run.
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    use GcraOutcome as Outcome;

    fn without_tat(outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::Allowed { remaining, .. } => Outcome::Allowed { tat: 0, remaining },
            other => other,
        }
    }

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
                        tat: 0,
                        remaining: snapshot.remaining_burst_capacity(),
                    },
                    Ok(Err(not_until)) => Outcome::Denied {
                        wait: saturating_nanos(not_until.wait_time_from(clock.now())),
                    },
                };
                assert_eq!(
                    without_tat(ours.check(&tat, cost, start + elapsed)),
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
        assert_eq!(
            gcra.check(&tat, 2, now),
            Outcome::Allowed {
                tat: now + 2_000_000_000,
                remaining: 0
            }
        );
        assert_eq!(tat.load(Ordering::Relaxed), now + 2_000_000_000);
        assert_eq!(gcra.check(&tat, 3, now), Outcome::TooHigh);
    }
}
