//! [`MemoryLimiter`]: limit state in this process; for each key, the
//! states of its policies, each in its own small allocation.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use papaya::{Compute, Operation};

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

/// The state of one key's policies. Each policy's state lives in its own
/// allocation; the key's entry holds pointers to them. Adding a policy
/// publishes a new list of the same pointers, so a check that borrowed a
/// state from the old list still spends on the state the key keeps: a
/// state is never copied, and no spend is lost.
enum KeyState {
    /// Most keys: one rate policy.
    OneRate(Arc<RateState>),
    /// In the order they were added, oldest first.
    Many(Box<[Slot]>),
}

/// One policy's state, shared by every version of its key's list.
#[derive(Clone)]
enum Slot {
    Rate(Arc<RateState>),
    Credits(Arc<CreditState>),
}

/// Keeps 24 bytes (a 48-byte allocation with its counts) per key and rate
/// policy, not a copy of the policy: the policy comes with every check,
/// and its fingerprint says whether this state was made for it.
struct RateState {
    fingerprint: u64,
    /// A hash of the policy's name: when a key has too many states, one
    /// whose policy a tier change replaced (same name) goes first.
    name: u64,
    /// GCRA's theoretical arrival time, nanoseconds since the epoch; the
    /// policy is full again (and the state forgettable) once it has passed.
    /// 0 until the first spend.
    tat: AtomicU64,
}

struct CreditState {
    fingerprint: u64,
    /// See [`RateState::name`].
    name: u64,
    /// Credits are rarer than rates and change two numbers at once:
    /// held for a few arithmetic steps; only this key's requests wait.
    balance: Mutex<Balance>,
}

#[derive(Debug, Clone, Copy)]
struct Balance {
    credits: u64,
    /// When the last refill step happened (nanoseconds since the epoch).
    refilled_at: u64,
    /// When the balance is full again (`u64::MAX`: never, no refill; 0
    /// until the first debit).
    restored_at: u64,
}

/// A key keeps at most this many states (a tier change adds its new
/// policies beside the old ones). Past it, states go in this order: those
/// of a policy with the new one's name (which the tier change replaced),
/// idle ones, then the oldest rates; never a balance, which would restart
/// full. `Limits` of up to half this many policies always fit with those
/// of the previous tier.
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
        let state = map.get(id);
        // The common case borrows the state from the pinned map.
        if let Some(slot) = state.and_then(|state| state.find(fingerprint)) {
            return slot.decide(policy, cost, now);
        }
        if cost == 0 {
            // Nothing to spend: what a fresh state would say, making none.
            return Ok(fresh_verdict(policy));
        }
        if state.is_none() {
            shared.states.make_room(now);
        }
        let added = Slot::new(policy, fingerprint, now);
        let outcome = map.compute(*id, |entry| match entry {
            Some((_, state)) => match state.find(fingerprint) {
                // Another request of this key added it meanwhile.
                Some(slot) => Operation::Abort(slot),
                None => Operation::Insert(state.with(added.clone(), now)),
            },
            None => Operation::Insert(KeyState::from_slots(vec![added.clone()])),
        });
        let slot = match outcome {
            Compute::Aborted(slot) => slot,
            Compute::Inserted(_, state)
            | Compute::Updated {
                new: (_, state), ..
            } => {
                // `with` always keeps the slot it is given.
                state.find(fingerprint).unwrap_or_else(|| added.as_ref())
            }
            // Never asked for.
            Compute::Removed(..) => added.as_ref(),
        };
        slot.decide(policy, cost, now)
    }
}

/// The verdict of a check of cost 0 on a policy the key has no state for.
fn fresh_verdict(policy: &Policy) -> Verdict {
    match policy {
        Policy::Rate(rate) => Verdict::allowed(u64::from(rate.burst()), Duration::ZERO),
        Policy::Credits(credits) => Verdict::allowed(credits.capacity(), Duration::ZERO),
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

    /// This key's states with `added` (of a policy it has none for) after
    /// them. Idle states that have been used are left out: forgetting them
    /// changes nothing. (A check that borrowed one just then spends on a
    /// state no longer kept: it costs that check's spend, at most once per
    /// request in flight, only when a key back from idle meets a new
    /// policy. Never-used ones stay: the request that made one is about
    /// to spend on it.) Past [`MAX_SLOTS`], states go in the order it
    /// gives; the others are shared, not copied.
    fn with(&self, added: Slot, now: u64) -> KeyState {
        let mut slots: Vec<Slot> = match self {
            KeyState::OneRate(rate) => vec![Slot::Rate(Arc::clone(rate))],
            KeyState::Many(slots) => slots.to_vec(),
        };
        slots.retain(|slot| !(slot.is_used() && slot.is_idle(now)));
        if slots.len() >= MAX_SLOTS {
            slots.retain(|slot| slot.name() != added.name());
        }
        if slots.len() >= MAX_SLOTS {
            slots.retain(|slot| !slot.is_idle(now));
        }
        while slots.len() >= MAX_SLOTS {
            match slots.iter().position(|slot| matches!(slot, Slot::Rate(_))) {
                Some(oldest) => drop(slots.remove(oldest)),
                // Only balances: kept, whatever their number.
                None => break,
            }
        }
        slots.push(added);
        KeyState::from_slots(slots)
    }

    fn from_slots(slots: Vec<Slot>) -> KeyState {
        match <[Slot; 1]>::try_from(slots) {
            Ok([Slot::Rate(rate)]) => KeyState::OneRate(rate),
            Ok(one) => KeyState::Many(Box::new(one)),
            Err(slots) => KeyState::Many(slots.into_boxed_slice()),
        }
    }
}

impl Slot {
    fn new(policy: &Policy, fingerprint: u64, now: u64) -> Self {
        let name = name_hash(policy.name());
        match policy {
            Policy::Rate(_) => Slot::Rate(Arc::new(RateState {
                fingerprint,
                name,
                tat: AtomicU64::new(0),
            })),
            Policy::Credits(credits) => Slot::Credits(Arc::new(CreditState {
                fingerprint,
                name,
                balance: Mutex::new(Balance {
                    credits: credits.capacity(),
                    refilled_at: now,
                    restored_at: 0,
                }),
            })),
        }
    }

    fn fingerprint(&self) -> u64 {
        match self {
            Slot::Rate(rate) => rate.fingerprint,
            Slot::Credits(credits) => credits.fingerprint,
        }
    }

    fn name(&self) -> u64 {
        match self {
            Slot::Rate(rate) => rate.name,
            Slot::Credits(credits) => credits.name,
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

    /// Whether anything was ever spent on this state.
    fn is_used(&self) -> bool {
        match self {
            Slot::Rate(rate) => rate.tat.load(Ordering::Relaxed) != 0,
            Slot::Credits(credits) => credits.balance().restored_at != 0,
        }
    }
}

/// A policy name's hash, made when its state is: the policy itself
/// exposes only its fingerprint, which changes with its parameters.
fn name_hash(name: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish()
}

impl RateState {
    fn is_idle(&self, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= now
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
    let gcra = rate.gcra();
    if cost == 0 {
        // Nothing to spend: what one unit would find, without spending it
        // (GCRA's own arithmetic, on a copy of the state).
        let probe = AtomicU64::new(state.tat.load(Ordering::Acquire));
        let remaining = match gcra.check(&probe, 1, now) {
            Outcome::Allowed { remaining } => remaining.saturating_add(1),
            Outcome::Denied { .. } | Outcome::TooHigh => 0,
        };
        let spent = rate.burst().saturating_sub(remaining);
        return Ok(Verdict::allowed(
            u64::from(remaining),
            gcra.period().saturating_mul(spent),
        ));
    }
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
    use std::sync::atomic::AtomicUsize;
    use std::sync::Barrier;

    use crate::clock::FakeClock;
    use crate::limit::{Limits, RatePolicy};

    #[test]
    fn a_key_state_is_small() {
        // With the 12-byte id, a 40-byte map entry: 48 bytes from malloc
        // (and, for one rate policy, its 48-byte state).
        assert!(std::mem::size_of::<KeyState>() <= 24);
        assert!(std::mem::size_of::<RateState>() <= 24);
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

    fn id() -> KeyId {
        "abcdefghijkl".parse().unwrap()
    }

    fn rate(name: &str, quota: u32, window_secs: u64) -> Policy {
        Policy::from(RatePolicy::new(name, quota, Duration::from_secs(window_secs)).unwrap())
    }

    fn allowed(limiter: &MemoryLimiter, policies: &[Policy]) -> bool {
        policies.iter().all(|policy| {
            limiter
                .check_immediate(&id(), policy, 1)
                .unwrap()
                .unwrap()
                .is_allowed()
        })
    }

    fn slot_count(limiter: &MemoryLimiter) -> usize {
        match limiter.shared.states.map().pin().get(&id()) {
            None => 0,
            Some(KeyState::OneRate(_)) => 1,
            Some(KeyState::Many(slots)) => slots.len(),
        }
    }

    /// The race of a request that borrowed a state while another request
    /// of its key added a policy: its spend still counts.
    #[test]
    fn a_spend_on_a_borrowed_state_counts_after_a_policy_is_added() {
        let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
        let burst = rate("burst", 2, 60);
        let daily = rate("daily", 100, 86_400);
        let now = epoch_nanos(limiter.shared.clock.now());
        assert!(allowed(&limiter, std::slice::from_ref(&burst)));
        let map = limiter.shared.states.map().pin();
        let borrowed = map.get(&id()).unwrap().find(burst.fingerprint()).unwrap();
        // Another request meets "daily" for the first time.
        assert!(allowed(&limiter, &[daily]));
        // The first one, still holding the state it borrowed, spends.
        assert!(borrowed.decide(&burst, 1, now).unwrap().is_allowed());
        assert!(!allowed(&limiter, &[burst]), "a spend was lost");
    }

    /// The same with a state just made (never spent on, so idle): adding
    /// another policy keeps it.
    #[test]
    fn a_state_not_yet_spent_on_survives_a_policy_being_added() {
        let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
        let burst = rate("burst", 1, 60);
        let now = epoch_nanos(limiter.shared.clock.now());
        let map = limiter.shared.states.map().pin();
        map.insert(
            id(),
            KeyState::from_slots(vec![Slot::new(&burst, burst.fingerprint(), now)]),
        );
        let borrowed = map.get(&id()).unwrap().find(burst.fingerprint()).unwrap();
        assert!(allowed(&limiter, &[rate("daily", 100, 86_400)]));
        assert!(borrowed.decide(&burst, 1, now).unwrap().is_allowed());
        assert!(!allowed(&limiter, &[burst]), "a spend was lost");
    }

    #[test]
    fn concurrent_first_requests_of_a_key_never_overshoot() {
        let limits = Limits::new([
            rate("burst", 10, 60),
            rate("daily", 100_000, 86_400),
            CreditPolicy::new("prepaid", 1_000_000).unwrap().into(),
        ])
        .unwrap();
        let threads = 8;
        for round in 0..60u32 {
            let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
            let allowed = AtomicUsize::new(0);
            let barrier = Barrier::new(threads);
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| {
                        barrier.wait();
                        for _ in 0..4 {
                            if self::allowed(&limiter, limits.policies()) {
                                allowed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            let allowed = allowed.load(Ordering::Relaxed);
            assert_eq!(allowed, 10, "burst 10, round {round}: {allowed} allowed");
        }
    }

    #[test]
    fn a_tier_change_at_the_cap_keeps_the_other_policies() {
        let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
        let old: Vec<Policy> = (0..MAX_SLOTS)
            .map(|i| rate(&format!("p{i}"), 50, 86_400))
            .collect();
        assert!(allowed(&limiter, &old));
        // The new tier changes the last policy's quota.
        let mut new = old[..MAX_SLOTS - 1].to_vec();
        new.push(rate(&format!("p{}", MAX_SLOTS - 1), 51, 86_400));
        let passed = (0..100).filter(|_| allowed(&limiter, &new)).count();
        assert_eq!(passed, 49, "quota 50, one spent");
        assert_eq!(slot_count(&limiter), MAX_SLOTS);
    }

    #[test]
    fn past_the_cap_idle_states_go_before_active_ones() {
        let clock = FakeClock::default();
        let limiter = MemoryLimiter::new().with_clock(clock.clone());
        let short: Vec<Policy> = (0..8).map(|i| rate(&format!("s{i}"), 1, 1)).collect();
        let long: Vec<Policy> = (0..8).map(|i| rate(&format!("l{i}"), 1, 3_600)).collect();
        assert!(allowed(&limiter, &short));
        assert!(allowed(&limiter, &long));
        assert_eq!(slot_count(&limiter), MAX_SLOTS);
        clock.advance(Duration::from_secs(2));
        // The short windows are idle now: they go, the hourly ones stay.
        assert!(allowed(&limiter, &[rate("new", 1, 3_600)]));
        assert!(long
            .iter()
            .all(|policy| !allowed(&limiter, std::slice::from_ref(policy))));
    }

    #[test]
    fn past_the_cap_a_balance_is_never_dropped() {
        let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
        // More policies than the cap, checked one by one as a key's
        // successive tiers could leave them (`Limits` itself refuses more
        // than eight): the rates cannot all be kept, the one prepaid credit is.
        let mut policies = vec![Policy::from(CreditPolicy::new("prepaid", 1).unwrap())];
        policies.extend((0..MAX_SLOTS).map(|i| rate(&format!("p{i}"), 1_000, 3_600)));
        let passed = (0..100).filter(|_| allowed(&limiter, &policies)).count();
        assert_eq!(passed, 1, "one prepaid credit");
        assert!(slot_count(&limiter) <= MAX_SLOTS);
    }

    #[test]
    fn cost_zero_reads_the_state_and_makes_none() {
        let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
        let (a, b) = (rate("a", 5, 1), rate("b", 5, 1));
        let credits = Policy::from(CreditPolicy::new("prepaid", 10).unwrap());
        let peek = |policy: &Policy| limiter.check_immediate(&id(), policy, 0).unwrap().unwrap();
        for policy in [&a, &credits] {
            let verdict = peek(policy);
            assert!(verdict.is_allowed());
            assert_eq!(verdict.reset(), Duration::ZERO);
        }
        assert_eq!(peek(&a).remaining(), 5);
        assert_eq!(peek(&credits).remaining(), 10);
        assert_eq!(limiter.tracked_keys(), 0);

        assert!(allowed(
            &limiter,
            &[a.clone(), a.clone(), b.clone(), credits.clone()]
        ));
        let map = limiter.shared.states.map().pin();
        let before: *const KeyState = map.get(&id()).unwrap();
        for _ in 0..10 {
            assert_eq!(peek(&a).remaining(), 3);
            assert_eq!(peek(&a).reset(), Duration::from_millis(400));
            assert_eq!(peek(&b).remaining(), 4);
            assert_eq!(peek(&credits).remaining(), 9);
        }
        let after: *const KeyState = map.get(&id()).unwrap();
        assert_eq!(before, after, "the key's state was rebuilt");
        assert_eq!(slot_count(&limiter), 3);
    }
}
