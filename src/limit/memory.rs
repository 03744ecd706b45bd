//! [`MemoryLimiter`]: limit state in this process; for each key, one small
//! record holding the state of all its policies.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use super::bounded::{BoundedMap, Expiring};
use super::gcra::Outcome;
use super::{CreditPolicy, LimitError, Limiter, Policy, RatePolicy, Verdict};
use crate::clock::{epoch_nanos, saturating_nanos as nanos, Clock, SystemClock};
use crate::key::{KeyId, KeyIdBuildHasher};

/// Limits in this process's memory: for each key that authenticated and
/// each of its policies, a GCRA cell (governor's algorithm) with that
/// key's own quota, and a balance for its credits.
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

/// The state of one key's policies. Most keys have one rate policy: its
/// state lives in the map's entry itself (no allocation of its own); a
/// key with several policies keeps all of them in one allocation.
enum KeyState {
    OneRate(RateState),
    Many(Box<[Slot]>),
}

/// Keeps 16 bytes per key and rate policy, not a copy of the policy: the
/// policy comes with every check, and its fingerprint says whether this
/// state was made for it.
enum Slot {
    Rate(RateState),
    Credits(CreditState),
}

struct RateState {
    fingerprint: u64,
    /// GCRA's theoretical arrival time, nanoseconds since the epoch; the
    /// policy is full again (and the state forgettable) once it has passed.
    tat: AtomicU64,
}

struct CreditState {
    fingerprint: u64,
    /// Credits are rarer than rates and change two numbers at once:
    /// held for a few arithmetic steps; only this key's requests wait.
    balance: Mutex<Balance>,
}

#[derive(Debug, Clone, Copy)]
struct Balance {
    credits: u64,
    /// When the last refill step happened (nanoseconds since the epoch).
    refilled_at: u64,
    /// When the balance is full again (`u64::MAX`: never, no refill).
    restored_at: u64,
}

/// A key tracks at most this many policies; past it, the oldest states
/// go (a key that changes tiers often keeps only its recent ones).
const MAX_SLOTS: usize = 16;

impl Expiring for KeyState {
    fn is_idle(&self, now: u64) -> bool {
        match self {
            KeyState::OneRate(rate) => rate.is_idle(now),
            KeyState::Many(slots) => slots.iter().all(|slot| slot.is_idle(now)),
        }
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
        let fingerprint = policy.fingerprint();
        let map = shared.states.map().pin();
        // The common case borrows the state from the pinned map.
        if let Some(slot) = map.get(id).and_then(|state| state.find(fingerprint)) {
            return slot.decide(policy, cost, now);
        }
        if map.get(id).is_none() {
            shared.states.make_room(now);
        }
        let state = map.update_or_insert_with(
            *id,
            |state| state.with(Slot::new(policy, fingerprint, now), now),
            || KeyState::from_slots(vec![Slot::new(policy, fingerprint, now)]),
        );
        match state.find(fingerprint) {
            Some(slot) => slot.decide(policy, cost, now),
            // `with` always keeps the slot it is given, so this is not
            // reached; a fresh slot is what a just-evicted key would get.
            None => Slot::new(policy, fingerprint, now)
                .as_ref()
                .decide(policy, cost, now),
        }
    }
}

/// A borrowed slot, whichever way the key holds it.
enum SlotRef<'a> {
    Rate(&'a RateState),
    Credits(&'a CreditState),
}

impl KeyState {
    fn find(&self, fingerprint: u64) -> Option<SlotRef<'_>> {
        match self {
            KeyState::OneRate(rate) => {
                (rate.fingerprint == fingerprint).then_some(SlotRef::Rate(rate))
            }
            KeyState::Many(slots) => slots
                .iter()
                .find(|slot| slot.fingerprint() == fingerprint)
                .map(Slot::as_ref),
        }
    }

    /// This state with `slot` added. States that are idle are left out
    /// (forgetting them changes nothing), and so are, past
    /// [`MAX_SLOTS`], the oldest: a tier that changed leaves its old
    /// policies behind, to be forgotten once idle.
    ///
    /// The others are copied: a check that spends on the old state while
    /// this one is being published is lost. That happens only when a key
    /// meets a policy it has no state for, with another request of that
    /// key in flight, and costs at most those requests.
    fn with(&self, slot: Slot, now: u64) -> KeyState {
        if self.find(slot.fingerprint()).is_some() {
            return self.copy();
        }
        let kept: Vec<Slot> = match self {
            KeyState::OneRate(rate) => (!rate.is_idle(now))
                .then(|| Slot::Rate(rate.copy()))
                .into_iter()
                .collect(),
            KeyState::Many(slots) => slots
                .iter()
                .filter(|slot| !slot.is_idle(now))
                .map(Slot::copy)
                .collect(),
        };
        let skip = kept.len().saturating_sub(MAX_SLOTS - 1);
        let slots: Vec<Slot> = kept
            .into_iter()
            .skip(skip)
            .chain(std::iter::once(slot))
            .collect();
        KeyState::from_slots(slots)
    }

    fn from_slots(slots: Vec<Slot>) -> KeyState {
        match <[Slot; 1]>::try_from(slots) {
            Ok([Slot::Rate(rate)]) => KeyState::OneRate(rate),
            Ok(one) => KeyState::Many(Box::new(one)),
            Err(slots) => KeyState::Many(slots.into_boxed_slice()),
        }
    }

    fn copy(&self) -> KeyState {
        match self {
            KeyState::OneRate(rate) => KeyState::OneRate(rate.copy()),
            KeyState::Many(slots) => KeyState::Many(slots.iter().map(Slot::copy).collect()),
        }
    }
}

impl Slot {
    fn new(policy: &Policy, fingerprint: u64, now: u64) -> Self {
        match policy {
            Policy::Rate(_) => Slot::Rate(RateState {
                fingerprint,
                tat: AtomicU64::new(0),
            }),
            Policy::Credits(credits) => Slot::Credits(CreditState {
                fingerprint,
                balance: Mutex::new(Balance {
                    credits: credits.capacity(),
                    refilled_at: now,
                    restored_at: now,
                }),
            }),
        }
    }

    fn fingerprint(&self) -> u64 {
        match self {
            Slot::Rate(rate) => rate.fingerprint,
            Slot::Credits(credits) => credits.fingerprint,
        }
    }

    fn as_ref(&self) -> SlotRef<'_> {
        match self {
            Slot::Rate(rate) => SlotRef::Rate(rate),
            Slot::Credits(credits) => SlotRef::Credits(credits),
        }
    }

    fn is_idle(&self, now: u64) -> bool {
        match self {
            Slot::Rate(rate) => rate.is_idle(now),
            Slot::Credits(credits) => credits.balance().restored_at <= now,
        }
    }

    fn copy(&self) -> Slot {
        match self {
            Slot::Rate(rate) => Slot::Rate(rate.copy()),
            Slot::Credits(credits) => Slot::Credits(CreditState {
                fingerprint: credits.fingerprint,
                balance: Mutex::new(*credits.balance()),
            }),
        }
    }
}

impl RateState {
    fn is_idle(&self, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= now
    }

    fn copy(&self) -> RateState {
        RateState {
            fingerprint: self.fingerprint,
            tat: AtomicU64::new(self.tat.load(Ordering::Acquire)),
        }
    }
}

impl CreditState {
    fn balance(&self) -> std::sync::MutexGuard<'_, Balance> {
        self.balance.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SlotRef<'_> {
    fn decide(self, policy: &Policy, cost: u32, now: u64) -> Result<Verdict, LimitError> {
        match (self, policy) {
            (SlotRef::Rate(state), Policy::Rate(rate)) => decide_rate(state, rate, cost, now),
            (SlotRef::Credits(state), Policy::Credits(credits)) => {
                decide_credits(state, credits, cost, now)
            }
            // The fingerprint covers the kind: a slot found for a policy
            // is of its kind.
            _ => Err(LimitError::backend(KindMismatch)),
        }
    }
}

/// A slot of one kind was found for a policy of the other (a fingerprint
/// collision: never in practice).
#[derive(Debug, thiserror::Error)]
#[error("limit state of the wrong kind for this policy")]
struct KindMismatch;

fn decide_rate(
    state: &RateState,
    rate: &RatePolicy,
    cost: u32,
    now: u64,
) -> Result<Verdict, LimitError> {
    if cost == 0 {
        return Ok(Verdict::allowed(u64::from(rate.burst()), Duration::ZERO));
    }
    let gcra = rate.gcra();
    match gcra.check(&state.tat, cost, now) {
        Outcome::Allowed { remaining } => {
            let spent = rate.burst().saturating_sub(remaining);
            Ok(Verdict::allowed(
                u64::from(remaining),
                gcra.period().saturating_mul(spent),
            ))
        }
        Outcome::Denied { wait } => Ok(Verdict::denied(0, Duration::from_nanos(wait))),
        Outcome::TooHigh => Err(LimitError::CostTooHigh {
            policy: rate.name().to_owned(),
            cost,
        }),
    }
}

fn decide_credits(
    state: &CreditState,
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
    let mut balance = state.balance();
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
    balance.restored_at = balance.restored_at.max(restored_at);
    Ok(Verdict::allowed(balance.credits, reset))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::limit::RatePolicy;

    #[test]
    fn a_key_with_one_rate_policy_needs_no_allocation_of_its_own() {
        // With the 12-byte id, a 40-byte map entry: 48 bytes from malloc.
        assert!(std::mem::size_of::<KeyState>() <= 24);
    }

    #[test]
    fn a_changed_tier_starts_full_and_other_policies_keep_their_state() {
        let clock = FakeClock::default();
        let limiter = MemoryLimiter::new().with_clock(clock.clone());
        let id: KeyId = "abcdefghijkl".parse().unwrap();
        let rate = |name: &str, quota| {
            Policy::from(RatePolicy::new(name, quota, Duration::from_secs(60)).unwrap())
        };
        let credits = Policy::from(CreditPolicy::new("prepaid", 10).unwrap());
        let check = |policy: &Policy| limiter.check_immediate(&id, policy, 1).unwrap().unwrap();

        assert_eq!(check(&rate("burst", 2)).remaining(), 1);
        assert_eq!(check(&rate("daily", 5)).remaining(), 4);
        assert_eq!(check(&credits).remaining(), 9);
        assert_eq!(check(&rate("burst", 2)).remaining(), 0);
        assert_eq!(check(&rate("daily", 5)).remaining(), 3);
        // A new tier: its burst starts full; the others go on.
        assert_eq!(check(&rate("burst", 3)).remaining(), 2);
        assert_eq!(check(&rate("daily", 5)).remaining(), 2);
        assert_eq!(check(&credits).remaining(), 8);
        assert!(!check(&rate("burst", 2)).is_allowed());
        assert_eq!(limiter.tracked_keys(), 1);

        // Once every rate has recovered, only the balance is remembered.
        clock.advance(Duration::from_secs(60));
        assert_eq!(check(&rate("burst", 4)).remaining(), 3);
        let map = limiter.shared.states.map().pin();
        match map.get(&id) {
            Some(KeyState::Many(slots)) => assert_eq!(slots.len(), 2),
            _ => panic!("expected the balance and the new burst"),
        }
    }
}
