//! [`MemoryLimiter`]: limit state in this process; for each key, the
//! states of its policies, each in its own small allocation.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use papaya::{Compute, Operation};

use super::bounded::{forgettable, BoundedMap, Expiring, SWEPT};
use super::cell::{is_moved, CellState};
use super::decide::{self, rate_verdict, unspent_rate};
use super::gcra::{load_unlocked, lock_word};
use super::{
    CreditPolicy, Decision, LimitError, Limiter, Limits, Policy, PolicyState, RatePolicy, Verdict,
};
use crate::auth::Principal;
use crate::clock::{epoch_nanos, saturating_nanos as nanos, Clock, SystemClock};
use crate::key::{KeyId, KeyIdBuildHasher};
use crate::record::KeyRecord;

/// Limits in this process's memory: for each key that authenticated and
/// each of its policies, a GCRA cell (governor's algorithm) with that
/// key's own quota, and a balance for its credits.
///
/// Each request is decided against all of its key's policies at once
/// (see [`Limiter`]): a request that one policy refuses spends nothing on
/// the others, even under concurrent requests of the same key. A key with
/// one rate policy (the common case) is decided by one compare-and-swap
/// on its state; a key with several takes its states' words for the few
/// nanoseconds the arithmetic lasts, always in the same order.
///
/// A key with one rate policy whose record an in-memory store keeps
/// (`MemoryStore`, `CachedStore`) has its state in that record, which the
/// [`Principal`] carries: such a key is decided without a look-up of the
/// limiter's own, and takes no room in its table. The store hands the
/// state on when it replaces the record with one of the same rate policy
/// (an update of other fields, a cache refresh), so an edit never resets
/// a budget; see [`check_principal_immediate`](Limiter::check_principal_immediate)
/// for what differs from a check by key id. The first `MemoryLimiter` to
/// decide a stored record claims its state; another one (a second limiter,
/// or one made after the first was dropped) decides that key in its own
/// table, as for any key.
///
/// State in the table is bounded: at most [`max_keys`](Self::with_max_keys)
/// keys are tracked (one million by default; state kept in stored records
/// is bounded by the store instead, and not counted); a key's state is dropped once it has
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
/// use keyward::limit::{CreditPolicy, Limiter, Limits, MemoryLimiter, RatePolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let clock = FakeClock::default();
/// let limiter = MemoryLimiter::new().with_clock(clock.clone());
/// let limits = Limits::new([
///     RatePolicy::new("burst", 2, Duration::from_secs(1))?.into(),
///     CreditPolicy::new("prepaid", 100)?.into(),
/// ])?;
/// let id: KeyId = "abcdefghijkl".parse()?;
///
/// assert!(limiter.check(&id, &limits, 1).await?.is_allowed());
/// assert!(limiter.check(&id, &limits, 1).await?.is_allowed());
/// let third = limiter.check(&id, &limits, 1).await?;
/// assert!(!third.is_allowed());
/// assert_eq!(third.retry_after(), Some(Duration::from_millis(500)));
/// // Refused by the rate: no credit was spent.
/// assert_eq!(third.verdicts()[1].remaining(), 98);
///
/// clock.advance(Duration::from_millis(500));
/// assert!(limiter.check(&id, &limits, 1).await?.is_allowed());
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
    /// This limiter among all made in the process (never reused, never
    /// 0): a stored record's state is decided on only by the limiter that
    /// claimed it.
    id: u32,
    /// What [`forget`](MemoryLimiter::forget) leaves for states kept in
    /// records, which the limiter cannot reach.
    forgotten: Forgotten,
}

fn next_limiter_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    loop {
        let id = NEXT.fetch_add(1, Ordering::Relaxed) & !TABLE;
        if id != 0 {
            return id;
        }
    }
}

/// In a stored record's keeper word, with the limiter's id: that limiter
/// found the key in its table when it first met the record (a check by
/// key id, or a tier of several policies before), and keeps deciding it
/// there, so that the key has one state.
const TABLE: u32 = 1 << 31;

/// What [`forget`](MemoryLimiter::forget) leaves for states kept in
/// records: a note per id, and a generation that each forget bumps. A
/// record's state keeps the generation it last caught up with, so the
/// request path compares it with this one (one load) and looks for its
/// note only after a forget, once. A note that no state takes (a deleted
/// key's, one decided in the table or by another limiter) goes once the
/// longest window of the policies this limiter keeps in records has
/// passed: the state it was for is full again by then anyway. (The
/// generation is 16 bits, which fit in a record's spare bytes: a state
/// left unchecked across an exact multiple of 65 536 forgets would find
/// its note only after the next one.)
struct Forgotten {
    generation: AtomicU16,
    notes: BoundedMap<KeyId, Note, KeyIdBuildHasher>,
    /// How long (nanoseconds) a state this limiter decides in a record
    /// takes, at most, to be full again.
    longest: AtomicU64,
}

/// An id forgotten, and until when its note can matter.
struct Note {
    until: u64,
}

impl Expiring for Note {
    fn is_idle(&self, now: u64) -> bool {
        self.until <= now
    }
}

impl Forgotten {
    fn new(max_notes: usize) -> Self {
        Self {
            generation: AtomicU16::new(0),
            notes: BoundedMap::new(max_notes, Duration::from_secs(60), "forget notes"),
            longest: AtomicU64::new(0),
        }
    }

    fn note(&self, id: KeyId, now: u64) {
        // Sequentially consistent with `claimed`: a state claimed before
        // this forget has its window counted.
        let until = now.saturating_add(self.longest.load(Ordering::SeqCst));
        self.notes.make_room(now);
        self.notes.map().pin().insert(id, Note { until });
        // After the note: a state that sees the new generation finds it.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// A state this limiter decides on (with `rate`) is claimed.
    fn claimed(&self, rate: &RatePolicy) {
        let gcra = rate.gcra();
        let full_in = gcra.tolerance_nanos().saturating_add(gcra.period_nanos());
        // Only grows: a read spares the shared line a write when it is
        // long enough already (the usual case).
        if self.longest.load(Ordering::SeqCst) < full_in {
            self.longest.fetch_max(full_in, Ordering::SeqCst);
        }
    }

    #[inline]
    fn generation(&self) -> u16 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether `id` has a note that still matters at `now`; takes it.
    fn take(&self, id: &KeyId, now: u64) -> bool {
        let notes = self.notes.map().pin();
        notes.remove(id).is_some_and(|note| note.until > now)
    }
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

/// Keeps 24 bytes (a 40-byte allocation with its counts) per key and rate
/// policy, not a copy of the policy: the policy comes with every check,
/// and its fingerprint says whether this state was made for it.
struct RateState {
    fingerprint: u64,
    /// GCRA's theoretical arrival time, nanoseconds since the epoch; the
    /// policy is full again (and the state forgettable) once it has passed.
    /// 0 until the first spend; [`LOCKED`](super::gcra::LOCKED) while a
    /// check of several policies holds it.
    tat: AtomicU64,
    /// A hash of the policy's name: when a key has too many states, one
    /// whose policy a tier change replaced (same name) goes first.
    name: u32,
}

struct CreditState {
    fingerprint: u64,
    /// See [`RateState::name`].
    name: u32,
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

    fn is_forgettable(&self, now: u64) -> bool {
        match self {
            KeyState::OneRate(rate) => forgettable(&rate.tat, now),
            // Every slot asked (no short cut), so that each fresh one is
            // marked by this sweep.
            KeyState::Many(slots) => slots
                .iter()
                .fold(true, |all, slot| slot.is_forgettable(now) & all),
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
                states: BoundedMap::new(max_keys, Duration::from_secs(60), "limit states"),
                clock,
                id: next_limiter_id(),
                forgotten: Forgotten::new(max_keys),
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
        Self::build(self.shared.states.max(), crate::clock::shared(clock))
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
    /// its budget): its next request starts full. Rotation keeps nothing:
    /// the successor starts full.
    ///
    /// A state kept in the key's stored record is reset by that record's
    /// next check (the limiter does not hold the record); until then the
    /// id waits in a note, which requests of other keys pass with one
    /// compare after their first check since. A note no check takes goes
    /// once the state it was for would be full again anyway. Notes are
    /// bounded like states ([`max_keys`](Self::max_keys)): forgetting more
    /// keys than that within a policy's window makes room by dropping
    /// notes (a warning names the `forget notes`), and those keys keep
    /// what they spent.
    pub fn forget(&self, id: &KeyId) {
        let shared = &*self.shared;
        shared.states.map().pin().remove(id);
        shared.forgotten.note(*id, epoch_nanos(shared.clock.now()));
    }

    /// The decision for the key of `record`: on the state in the record,
    /// when a store keeps it there and this limiter decides on it; else
    /// by key id, in the table.
    #[inline]
    fn decide_record(&self, record: &KeyRecord, cost: u32) -> Result<Decision, LimitError> {
        let limits = &record.limits;
        if let ([Policy::Rate(rate)], Some(cell)) = (limits.policies(), record.limit_cell.state()) {
            match self.decide_cell(record, &cell, rate, cost) {
                InRecord::Decided(verdict) => return Ok(Decision::one(verdict?)),
                InRecord::Moved => return self.decide_moved(record, rate, cost),
                InRecord::ById => {}
            }
        }
        self.decide(&record.id, limits, cost)
    }

    /// The decision on the state in a record, if this limiter decides on
    /// it.
    #[inline]
    fn decide_cell(
        &self,
        record: &KeyRecord,
        cell: &CellState<'_>,
        rate: &RatePolicy,
        cost: u32,
    ) -> InRecord {
        let shared = &*self.shared;
        let keeper = cell.keeper.load(Ordering::Acquire);
        let caught_up = cell.seen.load(Ordering::Acquire) == shared.forgotten.generation();
        if keeper == shared.id || (keeper == 0 && cost > 0 && self.claim(record, cell, rate)) {
            let now = epoch_nanos(shared.clock.now());
            if !caught_up {
                self.catch_up(record, cell, now);
            }
            return match decide_cell_rate(cell.tat, rate, cost, now) {
                Some(verdict) => InRecord::Decided(verdict),
                None => InRecord::Moved,
            };
        }
        if keeper == shared.id | TABLE && !caught_up {
            // Decided in the table, where `forget` reached it: the note
            // has no other use.
            self.catch_up(record, cell, epoch_nanos(shared.clock.now()));
        }
        InRecord::ById
    }

    /// The decision for a replaced record whose state moved on to its
    /// successor (a request that found the record just before).
    #[cold]
    fn decide_moved(
        &self,
        record: &KeyRecord,
        rate: &RatePolicy,
        cost: u32,
    ) -> Result<Decision, LimitError> {
        if let Some(words) = record.limit_cell.moved() {
            // A moved state never moves again.
            if let InRecord::Decided(verdict) = self.decide_cell(record, &words.state(), rate, cost)
            {
                return Ok(Decision::one(verdict?));
            }
        }
        self.decide(&record.id, &record.limits, cost)
    }

    /// The first check of a record's state since a `forget` (of any key):
    /// takes the key's note, if any, and restarts the state. One check per
    /// generation does (the one that moves the state's generation on), so
    /// a forget restarts a state once.
    #[cold]
    fn catch_up(&self, record: &KeyRecord, cell: &CellState<'_>, now: u64) {
        let forgotten = &self.shared.forgotten;
        let generation = forgotten.generation();
        let seen = cell.seen.load(Ordering::Acquire);
        if seen == generation
            || cell
                .seen
                .compare_exchange(seen, generation, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            || !forgotten.take(&record.id, now)
        {
            return;
        }
        if !restart(cell.tat) {
            if let Some(words) = record.limit_cell.moved() {
                restart(words.state().tat);
            }
        }
    }

    /// Claims a stored record's state for this limiter, the first time it
    /// decides the key: unless another limiter claimed it first, or the
    /// key already has a state for this policy in the table (then the
    /// table keeps deciding it, marked so that the next check needs no
    /// look-up to know). Whether this limiter decides on the record's state.
    #[cold]
    fn claim(&self, record: &KeyRecord, cell: &CellState<'_>, rate: &RatePolicy) -> bool {
        let shared = &*self.shared;
        let fingerprint = record.limits.policies()[0].fingerprint();
        let in_table = shared
            .states
            .map()
            .pin()
            .get(&record.id)
            .is_some_and(|state| state.find(fingerprint).is_some());
        let claim = if in_table {
            shared.id | TABLE
        } else {
            shared.forgotten.claimed(rate);
            shared.id
        };
        let keeper =
            match cell
                .keeper
                .compare_exchange(0, claim, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => claim,
                Err(keeper) => keeper,
            };
        keeper == shared.id
    }

    fn decide(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError> {
        match limits.policies() {
            [policy] => Ok(Decision::one(self.decide_one(id, policy, cost)?)),
            [] => Ok(Decision::new()),
            _ => self.decide_many(id, limits, cost),
        }
    }

    /// A key with one policy: its state alone, without taking it.
    #[inline]
    fn decide_one(&self, id: &KeyId, policy: &Policy, cost: u32) -> Result<Verdict, LimitError> {
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
            return Ok(decide::step(policy, None, 0, now)?.0);
        }
        if state.is_none() {
            shared.states.make_room(now);
        }
        let added = [Slot::new(policy, fingerprint, now)];
        let slots = self.add_slots(&map, id, &added, now);
        let slot = slots
            .as_ref()
            .and_then(|state| state.find(fingerprint))
            .unwrap_or_else(|| added[0].as_ref());
        slot.decide(policy, cost, now)
    }

    /// Adds `added` (states of policies the key had none for) to the
    /// key's list, unless another request of the key added them
    /// meanwhile, and returns the key's list.
    fn add_slots<'g>(
        &self,
        map: &'g papaya::HashMapRef<'_, KeyId, KeyState, KeyIdBuildHasher, impl papaya::Guard>,
        id: &KeyId,
        added: &[Slot],
        now: u64,
    ) -> Option<&'g KeyState> {
        let outcome = map.compute(*id, |entry| match entry {
            Some((_, state)) => {
                let missing: Vec<Slot> = added
                    .iter()
                    .filter(|slot| state.find(slot.fingerprint()).is_none())
                    .cloned()
                    .collect();
                if missing.is_empty() {
                    // Another request of this key added them meanwhile.
                    Operation::Abort(())
                } else {
                    Operation::Insert(state.with(missing, now))
                }
            }
            None => Operation::Insert(KeyState::from_slots(added.to_vec())),
        });
        match outcome {
            Compute::Inserted(_, state) => Some(state),
            Compute::Updated {
                new: (_, state), ..
            } => Some(state),
            Compute::Aborted(()) | Compute::Removed(..) => map.get(id),
        }
    }

    /// A key with several policies: their states, taken in the order of
    /// the policies' fingerprints (the same for every request, so none
    /// waits for another in a cycle), decided together, then let go.
    fn decide_many(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError> {
        let shared = &*self.shared;
        let now = epoch_nanos(shared.clock.now());
        let policies = limits.policies();
        let map = shared.states.map().pin();
        let mut state = map.get(id);
        fn find<'a>(state: Option<&'a KeyState>, policy: &Policy) -> Option<SlotRef<'a>> {
            state.and_then(|state| state.find(policy.fingerprint()))
        }
        let added: Vec<Slot>;
        if cost > 0 && policies.iter().any(|policy| find(state, policy).is_none()) {
            if state.is_none() {
                shared.states.make_room(now);
            }
            added = policies
                .iter()
                .filter(|policy| find(state, policy).is_none())
                .map(|policy| Slot::new(policy, policy.fingerprint(), now))
                .collect();
            state = self.add_slots(&map, id, &added, now);
        } else {
            added = Vec::new();
        }
        let mut slots: [Option<SlotRef<'_>>; Limits::MAX_POLICIES] = [None; Limits::MAX_POLICIES];
        for (slot, policy) in slots.iter_mut().zip(policies) {
            let fingerprint = policy.fingerprint();
            *slot = find(state, policy).or_else(|| {
                added
                    .iter()
                    .find(|slot| slot.fingerprint() == fingerprint)
                    .map(Slot::as_ref)
            });
        }
        let slots = &slots[..policies.len()];
        let mut states = [None; Limits::MAX_POLICIES];
        let states = &mut states[..policies.len()];
        if cost == 0 {
            // Read only: each state as it is now, none made.
            for (state, slot) in states.iter_mut().zip(slots) {
                *state = slot.map(SlotRef::read);
            }
            return limits.decide(states, 0, now);
        }
        // Two policies sharing a state (a fingerprint collision) would
        // wait for themselves: refused instead.
        let order = limits.lock_order();
        if order.windows(2).any(|pair| {
            policies[usize::from(pair[0])].fingerprint()
                == policies[usize::from(pair[1])].fingerprint()
        }) {
            return Err(LimitError::backend(KindMismatch));
        }
        let mut credits: Option<(usize, MutexGuard<'_, Balance>)> = None;
        for &i in order {
            let i = usize::from(i);
            states[i] = match slots[i] {
                Some(SlotRef::Rate(rate)) => Some(PolicyState::Rate {
                    tat: lock_word(&rate.tat),
                }),
                Some(SlotRef::Credits(state)) => {
                    let balance = state.balance();
                    let read = PolicyState::Credits {
                        credits: balance.credits,
                        refilled_at: balance.refilled_at,
                    };
                    credits = Some((i, balance));
                    Some(read)
                }
                // Every state was found or made above.
                None => None,
            };
        }
        // Replaces the states with their spent successors only if the
        // request passes; either way they are what to let go with.
        let decision = limits.decide(states, cost, now);
        for (slot, state) in slots.iter().zip(states.iter()) {
            if let (Some(SlotRef::Rate(rate)), Some(PolicyState::Rate { tat })) = (slot, state) {
                rate.tat.store(*tat, Ordering::Release);
            }
        }
        if let (Some((i, mut balance)), Ok(decision)) = (credits, &decision) {
            if let (
                true,
                Some(PolicyState::Credits {
                    credits,
                    refilled_at,
                }),
            ) = (decision.is_allowed(), states[i])
            {
                balance.credits = credits;
                balance.refilled_at = refilled_at;
                balance.restored_at = balance
                    .restored_at
                    .max(restored_at(decision.verdicts()[i].reset(), now));
            }
        }
        decision
    }
}

/// When a balance whose verdict says `reset` is full again.
fn restored_at(reset: Duration, now: u64) -> u64 {
    if reset == Duration::MAX {
        u64::MAX
    } else {
        now.saturating_add(nanos(reset))
    }
}

/// A borrowed slot, whichever way the key holds it.
#[derive(Clone, Copy)]
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

    /// This key's states with `added` (of policies it has none for, with
    /// distinct names) after them. Idle states that have been used are
    /// left out: forgetting them changes nothing. (A check that borrowed
    /// one just then spends on a state no longer kept: it costs that
    /// check's spend, at most once per request in flight, only when a key
    /// back from idle meets a new policy. Never-used ones stay, even once
    /// a sweep marked them: the request that made one is about to spend
    /// on it.) Past
    /// [`MAX_SLOTS`], states go in the order it gives; the others are
    /// shared, not copied.
    fn with(&self, added: Vec<Slot>, now: u64) -> KeyState {
        let mut slots: Vec<Slot> = match self {
            KeyState::OneRate(rate) => vec![Slot::Rate(Arc::clone(rate))],
            KeyState::Many(slots) => slots.to_vec(),
        };
        slots.retain(|slot| !(slot.is_used() && slot.is_idle(now)));
        for added in added {
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
        }
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

    fn name(&self) -> u32 {
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

    /// See [`Expiring::is_forgettable`]: a balance never debited is
    /// marked by a first sweep, forgotten by a later one.
    fn is_forgettable(&self, now: u64) -> bool {
        match self {
            Slot::Rate(rate) => forgettable(&rate.tat, now),
            Slot::Credits(credits) => {
                let mut balance = credits.balance();
                if balance.restored_at == 0 {
                    balance.restored_at = SWEPT;
                    return false;
                }
                balance.restored_at <= now
            }
        }
    }

    /// Whether anything was ever spent on this state. One a sweep only
    /// marked ([`SWEPT`]) was not: the request that made it may still be
    /// about to spend on it.
    fn is_used(&self) -> bool {
        match self {
            Slot::Rate(rate) => rate.tat.load(Ordering::Relaxed) > SWEPT,
            Slot::Credits(credits) => credits.balance().restored_at > SWEPT,
        }
    }
}

/// A policy name's hash, made when its state is: the policy itself
/// exposes only its fingerprint, which changes with its parameters.
fn name_hash(name: &str) -> u32 {
    let mut hasher = std::hash::DefaultHasher::new();
    name.hash(&mut hasher);
    // 32 bits: a collision only changes which state goes first.
    hasher.finish() as u32
}

impl RateState {
    fn is_idle(&self, now: u64) -> bool {
        // A held word (`LOCKED`) is later than any now: never idle.
        self.tat.load(Ordering::Relaxed) <= now
    }
}

impl CreditState {
    fn balance(&self) -> MutexGuard<'_, Balance> {
        self.balance.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SlotRef<'_> {
    /// The state as it is now (waiting for a check that holds it).
    fn read(self) -> PolicyState {
        match self {
            SlotRef::Rate(rate) => PolicyState::Rate {
                tat: load_unlocked(&rate.tat),
            },
            SlotRef::Credits(credits) => {
                let balance = credits.balance();
                PolicyState::Credits {
                    credits: balance.credits,
                    refilled_at: balance.refilled_at,
                }
            }
        }
    }

    #[inline]
    fn decide(self, policy: &Policy, cost: u32, now: u64) -> Result<Verdict, LimitError> {
        match (self, policy) {
            (SlotRef::Rate(state), Policy::Rate(rate)) => decide_rate(&state.tat, rate, cost, now),
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

/// What became of a check on the state in a record.
enum InRecord {
    Decided(Result<Verdict, LimitError>),
    /// Not this limiter's to decide on: by key id, in the table.
    ById,
    /// The record was replaced and its state moved on (see `LimitCell`).
    Moved,
}

/// [`decide_rate`] on the state in a record; `None` if the state moved
/// on. A word that moved reads as a time far ahead, which denies: only a
/// denial looks at the word again, so the allowed path pays nothing.
#[inline]
fn decide_cell_rate(
    tat: &AtomicU64,
    rate: &RatePolicy,
    cost: u32,
    now: u64,
) -> Option<Result<Verdict, LimitError>> {
    if cost == 0 {
        let word = load_unlocked(tat);
        return (!is_moved(word)).then(|| Ok(unspent_rate(rate, word, now)));
    }
    let verdict = decide_rate(tat, rate, cost, now);
    if verdict.as_ref().is_ok_and(Verdict::is_allowed) || !is_moved(tat.load(Ordering::Acquire)) {
        Some(verdict)
    } else {
        None
    }
}

/// Restarts a record's state full; `false` if it moved on meanwhile.
fn restart(tat: &AtomicU64) -> bool {
    let mut current = load_unlocked(tat);
    loop {
        if is_moved(current) {
            return false;
        }
        match tat.compare_exchange_weak(current, 0, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(actual) => current = actual,
        }
    }
}

/// One rate alone: one compare-and-swap on its word.
#[inline]
fn decide_rate(
    tat: &AtomicU64,
    rate: &RatePolicy,
    cost: u32,
    now: u64,
) -> Result<Verdict, LimitError> {
    if cost == 0 {
        return Ok(unspent_rate(rate, load_unlocked(tat), now));
    }
    let gcra = rate.gcra();
    let outcome = gcra.check(tat, cost, now);
    rate_verdict(
        rate,
        outcome,
        || gcra.remaining(load_unlocked(tat), now),
        cost,
    )
}

/// One balance alone, under its mutex.
fn decide_credits(
    state: &CreditState,
    credits: &CreditPolicy,
    cost: u32,
    now: u64,
) -> Result<Verdict, LimitError> {
    let mut balance = state.balance();
    let (verdict, spent) =
        decide::credit_step(credits, balance.credits, balance.refilled_at, cost, now)?;
    if let Some(PolicyState::Credits {
        credits,
        refilled_at,
    }) = spent
    {
        balance.credits = credits;
        balance.refilled_at = refilled_at;
        balance.restored_at = balance.restored_at.max(restored_at(verdict.reset(), now));
    }
    Ok(verdict)
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
    async fn check(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError> {
        self.decide(id, limits, cost)
    }

    fn check_immediate(
        &self,
        id: &KeyId,
        limits: &Limits,
        cost: u32,
    ) -> Option<Result<Decision, LimitError>> {
        Some(self.decide(id, limits, cost))
    }

    fn check_principal_immediate(
        &self,
        principal: &Principal,
        cost: u32,
    ) -> Option<Result<Decision, LimitError>> {
        Some(self.decide_record(principal.record(), cost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Barrier;

    use crate::clock::FakeClock;
    use crate::limit::{LimitCell, Limits, RatePolicy};

    #[test]
    fn a_key_state_is_small() {
        // With the 12-byte id, a 40-byte map entry: 48 bytes from malloc
        // (and, for one rate policy, its 48-byte state).
        assert!(std::mem::size_of::<KeyState>() <= 24);
        assert!(std::mem::size_of::<RateState>() <= 24);
    }

    /// A record no store keeps.
    fn principal(limits: &Limits) -> Principal {
        let hash = crate::key::KeyHash::from_bytes([7; 32]);
        let record =
            KeyRecord::new(id(), hash, "acme", std::time::UNIX_EPOCH).with_limits(limits.clone());
        Principal::new(Arc::new(record))
    }

    /// A record as an in-memory store keeps it.
    fn stored(limits: &Limits) -> Principal {
        let record = principal(limits).record().as_ref().clone();
        let cell = LimitCell::for_stored(&record.limits);
        Principal::new(Arc::new(record.with_limit_cell(cell)))
    }

    fn through(limiter: &MemoryLimiter, principal: &Principal) -> bool {
        let decision = limiter.check_principal_immediate(principal, 1).unwrap();
        decision.unwrap().is_allowed()
    }

    fn by_id(limiter: &MemoryLimiter, limits: &Limits) -> bool {
        let decision = limiter.check_immediate(&id(), limits, 1).unwrap();
        decision.unwrap().is_allowed()
    }

    /// A stored record's key is decided on the record's state: nothing in
    /// the table.
    #[test]
    fn a_stored_record_keeps_its_state_and_the_table_nothing() {
        let limits = Limits::new([rate("burst", 3, 60)]).unwrap();
        let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
        let principal = stored(&limits);
        assert!(through(&limiter, &principal));
        assert_eq!(limiter.tracked_keys(), 0);
        assert!(through(&limiter, &principal));
        assert!(through(&limiter, &principal));
        assert!(!through(&limiter, &principal));
        assert_eq!(limiter.tracked_keys(), 0);
        // A read (cost 0) sees the same state.
        let read = limiter.check_principal_immediate(&principal, 0).unwrap();
        assert_eq!(read.unwrap().verdicts()[0].remaining(), 0);
    }

    /// A record no store keeps (built by hand, from a token) is decided by
    /// key id, on the one state the table keeps for the key.
    #[test]
    fn a_loose_record_shares_the_budget_of_checks_by_id() {
        let limits = Limits::new([rate("burst", 3, 60)]).unwrap();
        let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
        let principal = principal(&limits);
        assert!(through(&limiter, &principal));
        assert!(by_id(&limiter, &limits));
        assert!(through(&limiter, &principal));
        assert!(!through(&limiter, &principal));
        assert!(!by_id(&limiter, &limits));
        assert_eq!(limiter.tracked_keys(), 1);
    }

    /// A key the table already decides (checked by id before, or under a
    /// tier of several policies with the same burst) stays in the table
    /// when its stored record comes: one state, not two.
    #[test]
    fn a_key_already_in_the_table_stays_there() {
        let limits = Limits::new([rate("burst", 3, 60)]).unwrap();
        let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
        assert!(by_id(&limiter, &limits));
        let principal = stored(&limits);
        assert!(through(&limiter, &principal));
        assert!(through(&limiter, &principal));
        assert!(!through(&limiter, &principal));
        assert!(!by_id(&limiter, &limits));
    }

    #[test]
    fn forget_restarts_a_state_kept_in_a_record() {
        let limits = Limits::new([rate("burst", 1, 60)]).unwrap();
        let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
        let principal = stored(&limits);
        assert!(through(&limiter, &principal));
        assert!(!through(&limiter, &principal));
        limiter.forget(&id());
        assert!(through(&limiter, &principal), "restarted full");
        assert!(!through(&limiter, &principal), "once");
        // Forgetting a key whose state is in the table works as before.
        let loose = principal_of(&limits, "zyxwvutsrqpo");
        assert!(through(&limiter, &loose));
        assert!(!through(&limiter, &loose));
        limiter.forget(&"zyxwvutsrqpo".parse().unwrap());
        assert!(through(&limiter, &loose));
    }

    /// Ids never checked through a record again (deleted keys, loose
    /// records, keys of another limiter) leave nothing behind for long,
    /// and nothing on the request path. A stored key's first check after the forgets
    /// catches up once and keeps its budget; its later checks compare two
    /// equal words; the notes go once they cannot matter.
    #[test]
    fn forgetting_ids_never_seen_again_leaves_the_fast_path_as_before() {
        let clock = FakeClock::default();
        let limits = Limits::new([rate("burst", 3, 3_600)]).unwrap();
        let limiter = MemoryLimiter::new().with_clock(clock.clone());
        let principal = stored(&limits);
        assert!(through(&limiter, &principal));
        let forgotten = &limiter.shared.forgotten;
        let numbered = |n: u32| -> KeyId { format!("zz{n:010}").parse().unwrap() };
        for n in 0..10_000 {
            limiter.forget(&numbered(n));
        }
        assert_eq!(forgotten.notes.len(), 10_000);
        let seen = || {
            let cell = principal.record().limit_cell.state().unwrap();
            cell.seen.load(Ordering::Relaxed)
        };
        assert_ne!(seen(), forgotten.generation());
        assert!(through(&limiter, &principal), "not restarted: 2 left");
        assert_eq!(seen(), forgotten.generation(), "caught up: fast path");
        assert!(through(&limiter, &principal));
        assert!(!through(&limiter, &principal), "not restarted");
        assert_eq!(seen(), forgotten.generation());
        assert_eq!(forgotten.notes.len(), 10_000);
        // Past the longest window (an hour) the notes no check took go.
        clock.advance(Duration::from_secs(3_601));
        limiter.forget(&numbered(10_000));
        assert_eq!(forgotten.notes.len(), 1);
        // And a note still restarts its key's state: once.
        while through(&limiter, &principal) {}
        limiter.forget(&id());
        for _ in 0..3 {
            assert!(through(&limiter, &principal));
        }
        assert!(!through(&limiter, &principal), "once");
        assert_eq!(forgotten.notes.len(), 1, "taken");
    }

    /// Requests of a spent key racing its first checks after a forget:
    /// the state restarts once, so exactly one budget passes.
    #[test]
    fn forget_restarts_a_record_state_once_under_contention() {
        let limits = Limits::new([rate("burst", 5, 3_600)]).unwrap();
        for round in 0..30u32 {
            let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
            let principal = stored(&limits);
            while through(&limiter, &principal) {}
            limiter.forget(&id());
            let allowed = AtomicUsize::new(0);
            let barrier = Barrier::new(4);
            std::thread::scope(|scope| {
                for _ in 0..4 {
                    let (limiter, principal) = (&limiter, &principal);
                    let (allowed, barrier) = (&allowed, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        for _ in 0..5 {
                            if through(limiter, principal) {
                                allowed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(allowed.load(Ordering::Relaxed), 5, "round {round}");
        }
    }

    /// A request that holds a record the store has just replaced spends on
    /// the state the successor took over (one budget), and a forget
    /// restarts that state once, whichever record is checked first.
    #[test]
    fn a_replaced_record_spends_on_the_state_its_successor_took_over() {
        let limits = Limits::new([rate("burst", 3, 60)]).unwrap();
        let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
        let old = stored(&limits);
        assert!(through(&limiter, &old));
        let cell = LimitCell::successor(old.record(), &limits);
        let new = Principal::new(Arc::new(
            old.record().as_ref().clone().with_limit_cell(cell),
        ));
        assert!(through(&limiter, &old), "on the moved state");
        assert!(through(&limiter, &new));
        assert!(!through(&limiter, &new));
        assert!(!through(&limiter, &old));
        let read = limiter.check_principal_immediate(&old, 0).unwrap();
        assert_eq!(read.unwrap().verdicts()[0].remaining(), 0);

        limiter.forget(&id());
        assert!(through(&limiter, &old), "restarted");
        assert!(through(&limiter, &new));
        assert!(through(&limiter, &new));
        assert!(!through(&limiter, &new), "once");
        assert!(!through(&limiter, &old));
        assert_eq!(limiter.tracked_keys(), 0);
    }

    /// A record replaced while requests spend on it: one thread holds the
    /// old record throughout, another takes the new one once it exists.
    /// Every spend lands on the one state, before or after it moved.
    #[test]
    fn a_state_moving_on_under_contention_loses_no_spend() {
        let limits = Limits::new([rate("burst", 20, 3_600)]).unwrap();
        for round in 0..100u32 {
            let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
            let old = stored(&limits);
            let new = std::sync::OnceLock::new();
            let allowed = AtomicUsize::new(0);
            let barrier = Barrier::new(3);
            std::thread::scope(|scope| {
                for holds_old in [true, false] {
                    let (limiter, old, new) = (&limiter, &old, &new);
                    let (allowed, barrier) = (&allowed, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        for _ in 0..15 {
                            let principal = if holds_old {
                                old
                            } else {
                                new.get().unwrap_or(old)
                            };
                            if through(limiter, principal) {
                                allowed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                barrier.wait();
                for _ in 0..round % 10 * 50 {
                    std::hint::spin_loop();
                }
                let cell = LimitCell::successor(old.record(), &limits);
                let record = old.record().as_ref().clone().with_limit_cell(cell);
                let _ = new.set(Principal::new(Arc::new(record)));
            });
            assert_eq!(allowed.load(Ordering::Relaxed), 20, "round {round}");
        }
    }

    fn principal_of(limits: &Limits, id: &str) -> Principal {
        let hash = crate::key::KeyHash::from_bytes([7; 32]);
        let record = KeyRecord::new(id.parse().unwrap(), hash, "acme", std::time::UNIX_EPOCH)
            .with_limits(limits.clone());
        Principal::new(Arc::new(record))
    }

    #[test]
    fn another_limiter_keeps_its_own_budget_for_the_same_record() {
        let limits = Limits::new([rate("burst", 1, 60)]).unwrap();
        let first = MemoryLimiter::new().with_clock(FakeClock::default());
        let second = MemoryLimiter::new().with_clock(FakeClock::default());
        for principal in [principal(&limits), stored(&limits)] {
            first.forget(&id());
            second.forget(&id());
            assert!(through(&first, &principal));
            assert!(!through(&first, &principal));
            assert!(through(&second, &principal));
            assert!(!through(&second, &principal));
        }
    }

    /// Requests of one stored record from several threads: exactly the
    /// burst passes.
    #[test]
    fn a_record_state_under_contention() {
        let limits = Limits::new([rate("burst", 20, 60)]).unwrap();
        for round in 0..40u32 {
            let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
            let principal = stored(&limits);
            let allowed = AtomicUsize::new(0);
            let barrier = Barrier::new(4);
            std::thread::scope(|scope| {
                for _ in 0..4 {
                    let (limiter, principal) = (&limiter, &principal);
                    let (allowed, barrier) = (&allowed, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        for _ in 0..10 {
                            if through(limiter, principal) {
                                allowed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(allowed.load(Ordering::Relaxed), 20, "round {round}");
        }
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
        let check = |policy: &Policy| one(&limiter, &id, policy, 1);

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

    /// One policy checked alone (as a key whose `Limits` hold only it).
    fn one(limiter: &MemoryLimiter, id: &KeyId, policy: &Policy, cost: u32) -> Verdict {
        let limits = Limits::new([policy.clone()]).unwrap();
        let decision = limiter.check_immediate(id, &limits, cost).unwrap().unwrap();
        decision.verdicts()[0]
    }

    fn rate(name: &str, quota: u32, window_secs: u64) -> Policy {
        Policy::from(RatePolicy::new(name, quota, Duration::from_secs(window_secs)).unwrap())
    }

    fn allowed(limiter: &MemoryLimiter, policies: &[Policy]) -> bool {
        policies
            .iter()
            .all(|policy| one(limiter, &id(), policy, 1).is_allowed())
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

    /// A state just made, that a sweep marked (never spent on) and kept,
    /// is not taken for a used one when another request of the key adds a
    /// policy: the request that made it still spends on it.
    #[test]
    fn a_state_a_sweep_marked_survives_a_policy_being_added() {
        let credits = Policy::from(CreditPolicy::new("prepaid", 1).unwrap());
        for made in [rate("burst", 1, 60), credits] {
            let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
            let now = epoch_nanos(limiter.shared.clock.now());
            let map = limiter.shared.states.map().pin();
            map.insert(
                id(),
                KeyState::from_slots(vec![Slot::new(&made, made.fingerprint(), now)]),
            );
            let borrowed = map.get(&id()).unwrap().find(made.fingerprint()).unwrap();
            // The first sweep is due at once: it marks the state.
            limiter.shared.states.make_room(now);
            assert!(map.get(&id()).unwrap().is_forgettable(now), "marked");
            assert!(allowed(&limiter, &[rate("daily", 100, 86_400)]));
            assert!(borrowed.decide(&made, 1, now).unwrap().is_allowed());
            assert!(!allowed(&limiter, &[made]), "a spend was lost");
        }
    }

    /// The race behind a flaky `concurrent_first_requests_...`: a sweep
    /// (the first insertion of a limiter sweeps) found the state another
    /// request had just made, idle since never spent on, and dropped it;
    /// that request then spent on a state no longer kept, and the next
    /// one started full. A state never spent on survives its first sweep.
    #[test]
    fn a_sweep_never_drops_a_state_made_for_a_spend_in_flight() {
        let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
        let credits = Policy::from(CreditPolicy::new("prepaid", 1).unwrap());
        let sweeps = [
            vec![rate("burst", 1, 60)],
            vec![rate("burst", 1, 60), credits],
        ];
        for (round, policies) in (1..).zip(sweeps) {
            limiter.forget(&id());
            let now = epoch_nanos(limiter.shared.clock.now());
            let map = limiter.shared.states.map().pin();
            let slots: Vec<Slot> = policies
                .iter()
                .map(|policy| Slot::new(policy, policy.fingerprint(), now))
                .collect();
            map.insert(id(), KeyState::from_slots(slots));
            let state = map.get(&id()).unwrap();
            // A sweep, due then, between the making and the spending.
            limiter
                .shared
                .states
                .make_room(now + round * 61_000_000_000);
            for policy in &policies {
                let borrowed = state.find(policy.fingerprint()).unwrap();
                assert!(borrowed.decide(policy, 1, now).unwrap().is_allowed());
            }
            assert!(!allowed(&limiter, &policies[..1]), "a spend was lost");
            assert_eq!(limiter.tracked_keys(), 1);
        }
        // Never spent on after all: the next sweep forgets it.
        let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
        let now = epoch_nanos(limiter.shared.clock.now());
        let burst = rate("burst", 1, 60);
        let map = limiter.shared.states.map().pin();
        map.insert(
            id(),
            KeyState::from_slots(vec![Slot::new(&burst, burst.fingerprint(), now)]),
        );
        limiter.shared.states.make_room(now + 61_000_000_000);
        assert_eq!(limiter.tracked_keys(), 1, "marked, kept");
        limiter.shared.states.make_room(now + 122_000_000_000);
        assert_eq!(limiter.tracked_keys(), 0, "still unspent: forgotten");
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

    /// All of a key's policies at once, under contention: exactly the
    /// burst passes, and every policy is spent exactly by what passed.
    #[test]
    fn concurrent_requests_spend_every_policy_or_none() {
        let limits = Limits::new([
            rate("burst", 10, 60),
            rate("daily", 100_000, 86_400),
            CreditPolicy::new("prepaid", 1_000_000).unwrap().into(),
        ])
        .unwrap();
        let threads = 8;
        for round in 0..40u32 {
            let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
            let allowed = AtomicUsize::new(0);
            let barrier = Barrier::new(threads);
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| {
                        barrier.wait();
                        for _ in 0..4 {
                            let decision = limiter.check_immediate(&id(), &limits, 1);
                            if decision.unwrap().unwrap().is_allowed() {
                                allowed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(allowed.load(Ordering::Relaxed), 10, "round {round}");
            let peek = limiter.check_immediate(&id(), &limits, 0).unwrap().unwrap();
            let left: Vec<u64> = peek.verdicts().iter().map(Verdict::remaining).collect();
            assert_eq!(left, [0, 99_990, 999_990], "round {round}");
        }
    }

    /// Costs of 1 to 3 against a balance of 25 and a rate that allows
    /// them all: the balance is never overspent, and the rate is spent by
    /// exactly what the balance let through.
    #[test]
    fn a_refused_request_spends_nothing_under_contention() {
        let limits = Limits::new([
            rate("burst", 1_000, 3_600),
            CreditPolicy::new("prepaid", 25).unwrap().into(),
        ])
        .unwrap();
        let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
        let spent = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for thread in 0..6u32 {
                let (limiter, limits, spent) = (&limiter, &limits, &spent);
                scope.spawn(move || {
                    for i in 0..40u32 {
                        let cost = 1 + (thread + i) % 3;
                        let decision = limiter.check_immediate(&id(), limits, cost);
                        if decision.unwrap().unwrap().is_allowed() {
                            spent.fetch_add(cost as usize, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let spent = spent.load(Ordering::Relaxed) as u64;
        assert!((23..=25).contains(&spent), "spent {spent}");
        let peek = limiter.check_immediate(&id(), &limits, 0).unwrap().unwrap();
        assert_eq!(peek.verdicts()[0].remaining(), 1_000 - spent);
        assert_eq!(peek.verdicts()[1].remaining(), 25 - spent);
    }

    /// Requests of one key with one policy (lock-free) and with several
    /// (holding the states) at once, as during a tier change: one budget.
    #[test]
    fn one_policy_and_several_share_one_state() {
        let alone = Limits::new([rate("burst", 20, 60)]).unwrap();
        let together = Limits::new([rate("burst", 20, 60), rate("daily", 1_000, 86_400)]).unwrap();
        for round in 0..40u32 {
            let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
            let allowed = AtomicUsize::new(0);
            let barrier = Barrier::new(4);
            std::thread::scope(|scope| {
                for thread in 0..4 {
                    let limits = if thread % 2 == 0 { &alone } else { &together };
                    let (limiter, allowed, barrier) = (&limiter, &allowed, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        for _ in 0..10 {
                            let decision = limiter.check_immediate(&id(), limits, 1);
                            if decision.unwrap().unwrap().is_allowed() {
                                allowed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(allowed.load(Ordering::Relaxed), 20, "round {round}");
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
        let peek = |policy: &Policy| one(&limiter, &id(), policy, 0);
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
