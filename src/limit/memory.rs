//! [`MemoryLimiter`]: limit state in this process, one governor GCRA cell
//! per key and policy.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use governor::nanos::Nanos;

use super::bounded::{BoundedMap, Expiring};
use super::time::{gcra_cell, GcraCell};
use super::{CreditPolicy, LimitError, Limiter, Policy, RatePolicy, Verdict};
use crate::clock::{epoch_nanos, saturating_nanos as nanos, Clock, SystemClock};
use crate::key::{KeyId, KeyIdBuildHasher};

/// Limits in this process's memory: for each key that authenticated and
/// each of its policies, a governor GCRA limiter with that key's own quota,
/// and a balance for its credits.
///
/// State is bounded: at most [`max_keys`](Self::with_max_keys) keys are
/// tracked (one million by default); a key's state is dropped once it has
/// fully recovered (forgetting it changes nothing), and if the bound is
/// reached while every key is active, some are forgotten (their budgets
/// restart full) and a warning is logged. Credit balances live as long as
/// the process: for billing-grade balances, use a persistent backend.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use keyward::clock::FakeClock;
/// use keyward::key::KeyId;
/// use keyward::limit::{Limiter, MemoryLimiter, Policy, RatePolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let clock = FakeClock::default();
/// let limiter = MemoryLimiter::new().with_clock(clock.clone());
/// let policy = Policy::from(RatePolicy::new("burst", 2, Duration::from_secs(1))?);
/// let id: KeyId = "abcdefghijkl".parse()?;
///
/// assert!(limiter.check(&id, &policy, 1).await?.is_allowed());
/// assert!(limiter.check(&id, &policy, 1).await?.is_allowed());
/// let third = limiter.check(&id, &policy, 1).await?;
/// assert!(!third.is_allowed());
/// assert_eq!(third.reset(), Duration::from_millis(500));
///
/// clock.advance(Duration::from_millis(500));
/// assert!(limiter.check(&id, &policy, 1).await?.is_allowed());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryLimiter {
    shared: Arc<Shared>,
}

struct Shared {
    states: BoundedMap<KeyId, KeyState, KeyIdBuildHasher>,
    clock: Arc<dyn Clock>,
}

/// The state of one key: a slot per policy it was checked against. The
/// first is held inline: most keys have one policy, and a look-up then
/// follows one pointer less (and the key costs one allocation less).
#[derive(Clone)]
struct KeyState {
    first: Arc<Slot>,
    rest: Box<[Arc<Slot>]>,
}

struct Slot {
    state: SlotState,
    /// Nanoseconds since the epoch at which this slot is back to full.
    restored_at: AtomicU64,
}

/// A policy with its state: the two cannot disagree.
enum SlotState {
    Rate {
        policy: RatePolicy,
        cell: GcraCell,
    },
    Credits {
        policy: CreditPolicy,
        balance: Mutex<Balance>,
    },
}

#[derive(Debug, Clone, Copy)]
struct Balance {
    credits: u64,
    /// When the last refill step happened (nanoseconds since the epoch).
    refilled_at: u64,
}

impl Expiring for KeyState {
    fn is_idle(&self, now: u64) -> bool {
        self.slots()
            .all(|slot| slot.restored_at.load(Ordering::Relaxed) <= now)
    }
}

impl MemoryLimiter {
    /// A limiter on the system clock tracking at most a million keys.
    pub fn new() -> Self {
        Self::build(1_000_000, Arc::new(SystemClock))
    }

    fn build(max_keys: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            shared: Arc::new(Shared {
                states: BoundedMap::new(max_keys, Duration::from_secs(60)),
                clock,
            }),
        }
    }

    /// Tracks at most `max_keys` keys at once (at least one).
    #[must_use]
    pub fn with_max_keys(self, max_keys: usize) -> Self {
        Self::build(max_keys, Arc::clone(&self.shared.clock))
    }

    /// Reads time from `clock` (a [`FakeClock`](crate::clock::FakeClock) in tests).
    #[must_use]
    pub fn with_clock(self, clock: impl Clock) -> Self {
        Self::build(self.shared.states.max(), Arc::new(clock))
    }

    /// How many keys have state now.
    pub fn tracked_keys(&self) -> usize {
        self.shared.states.len()
    }

    /// The most keys tracked at once.
    pub fn max_keys(&self) -> usize {
        self.shared.states.max()
    }

    /// Forgets the state of a key (for example after an operator reset
    /// its budget). Rotation keeps nothing: the successor starts full.
    pub fn forget(&self, id: &KeyId) {
        self.shared.states.map().pin().remove(id);
    }

    fn decide(&self, id: &KeyId, policy: &Policy, cost: u32) -> Result<Verdict, LimitError> {
        let shared = &*self.shared;
        let now = epoch_nanos(shared.clock.now());
        let map = shared.states.map().pin();
        // The common case borrows the slot from the pinned map.
        if let Some(slot) = map.get(id).and_then(|state| state.find(policy)) {
            return slot.decide(cost, now);
        }
        if map.get(id).is_none() {
            shared.states.make_room(now);
        }
        let fresh = Arc::new(Slot::new(policy, &shared.clock, now));
        let state = map.update_or_insert_with(
            *id,
            |state| state.with(policy, &fresh),
            || KeyState {
                first: Arc::clone(&fresh),
                rest: Box::default(),
            },
        );
        // Another thread may have added the slot first: use theirs.
        state.find(policy).unwrap_or(&fresh).decide(cost, now)
    }
}

impl KeyState {
    fn find(&self, policy: &Policy) -> Option<&Arc<Slot>> {
        self.slots().find(|slot| slot.is_for(policy))
    }

    /// This state with `slot` (made for `policy`) added.
    fn with(&self, policy: &Policy, slot: &Arc<Slot>) -> KeyState {
        if self.find(policy).is_some() {
            return self.clone();
        }
        // Policies whose parameters changed (a new tier) are replaced.
        let mut slots = self
            .slots()
            .filter(|s| s.name() != policy.name())
            .cloned()
            .chain(std::iter::once(Arc::clone(slot)));
        // The chain ends with `slot`, so there is a first.
        let first = slots.next().unwrap_or_else(|| Arc::clone(slot));
        KeyState {
            first,
            rest: slots.collect(),
        }
    }

    fn slots(&self) -> impl Iterator<Item = &Arc<Slot>> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }
}

impl Slot {
    fn new(policy: &Policy, clock: &Arc<dyn Clock>, now: u64) -> Self {
        let state = match policy {
            Policy::Rate(rate) => SlotState::Rate {
                policy: rate.clone(),
                cell: gcra_cell(rate.governor_quota(), clock),
            },
            Policy::Credits(credits) => SlotState::Credits {
                policy: credits.clone(),
                balance: Mutex::new(Balance {
                    credits: credits.capacity(),
                    refilled_at: now,
                }),
            },
        };
        Self {
            state,
            restored_at: AtomicU64::new(now),
        }
    }

    fn is_for(&self, policy: &Policy) -> bool {
        match (&self.state, policy) {
            (SlotState::Rate { policy: ours, .. }, Policy::Rate(rate)) => ours == rate,
            (SlotState::Credits { policy: ours, .. }, Policy::Credits(credits)) => ours == credits,
            _ => false,
        }
    }

    fn name(&self) -> &str {
        match &self.state {
            SlotState::Rate { policy, .. } => policy.name(),
            SlotState::Credits { policy, .. } => policy.name(),
        }
    }

    fn decide(&self, cost: u32, now: u64) -> Result<Verdict, LimitError> {
        match &self.state {
            SlotState::Rate { policy, cell } => self.decide_rate(cell, policy, cost, now),
            SlotState::Credits { policy, balance } => {
                self.decide_credits(balance, policy, cost, now)
            }
        }
    }

    fn decide_rate(
        &self,
        cell: &GcraCell,
        rate: &RatePolicy,
        cost: u32,
        now: u64,
    ) -> Result<Verdict, LimitError> {
        let too_high = || LimitError::CostTooHigh {
            policy: rate.name().to_owned(),
            cost,
        };
        let Some(n) = NonZeroU32::new(cost) else {
            return Ok(Verdict::allowed(u64::from(rate.burst()), Duration::ZERO));
        };
        let period = rate.period();
        match cell.check_n(n).map_err(|_| too_high())? {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let spent = rate.burst().saturating_sub(remaining);
                let reset = period.saturating_mul(spent);
                self.restored_at
                    .fetch_max(now.saturating_add(nanos(reset)), Ordering::Relaxed);
                Ok(Verdict::allowed(u64::from(remaining), reset))
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(Nanos::from(now));
                Ok(Verdict::denied(0, wait))
            }
        }
    }

    fn decide_credits(
        &self,
        balance: &Mutex<Balance>,
        credits: &CreditPolicy,
        cost: u32,
        now: u64,
    ) -> Result<Verdict, LimitError> {
        let cost = u64::from(cost);
        if cost > credits.capacity() {
            return Err(LimitError::CostTooHigh {
                policy: credits.name().to_owned(),
                cost: u32::try_from(cost).unwrap_or(u32::MAX),
            });
        }
        // Held for a few arithmetic steps; only this key's requests wait.
        let mut balance = balance.lock().unwrap_or_else(PoisonError::into_inner);
        let refill = credits
            .refill()
            .map(|(amount, every)| (amount, nanos(every).max(1)));
        if let Some((amount, every)) = refill {
            let steps = now.saturating_sub(balance.refilled_at) / every;
            if steps > 0 {
                balance.credits = balance
                    .credits
                    .saturating_add(amount.saturating_mul(steps))
                    .min(credits.capacity());
                balance.refilled_at = balance
                    .refilled_at
                    .saturating_add(steps.saturating_mul(every));
            }
        }
        // Time until `needed` more credits have come back.
        let refilled_at = balance.refilled_at;
        let wait_for = |needed: u64| -> Duration {
            match refill {
                Some((amount, every)) => {
                    let steps = needed.div_ceil(amount);
                    let next = refilled_at.saturating_add(steps.saturating_mul(every));
                    Duration::from_nanos(next.saturating_sub(now))
                }
                None => Duration::MAX,
            }
        };
        if balance.credits < cost {
            let wait = wait_for(cost - balance.credits);
            return Ok(Verdict::denied(balance.credits, wait));
        }
        balance.credits -= cost;
        let missing = credits.capacity() - balance.credits;
        let reset = if missing == 0 {
            Duration::ZERO
        } else {
            wait_for(missing)
        };
        let restored_at = if reset == Duration::MAX {
            u64::MAX
        } else {
            now.saturating_add(nanos(reset))
        };
        self.restored_at.fetch_max(restored_at, Ordering::Relaxed);
        Ok(Verdict::allowed(balance.credits, reset))
    }
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLimiter")
            .field("tracked_keys", &self.tracked_keys())
            .field("max_keys", &self.max_keys())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    async fn check(&self, id: &KeyId, policy: &Policy, cost: u32) -> Result<Verdict, LimitError> {
        self.decide(id, policy, cost)
    }

    fn check_immediate(
        &self,
        id: &KeyId,
        policy: &Policy,
        cost: u32,
    ) -> Option<Result<Verdict, LimitError>> {
        Some(self.decide(id, policy, cost))
    }
}
