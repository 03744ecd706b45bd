//! [`LimitCell`]: the rate state of a key with one rate policy, kept in
//! the key's record by the in-memory store that holds it, so that
//! [`MemoryLimiter`](super::MemoryLimiter) needs no table entry (and no
//! second look-up) for it.

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use super::gcra::{load_unlocked, LOCKED, MOVED};
use super::{Limits, Policy};
use crate::record::KeyRecord;

/// Where a record keeps its key's rate state. A store that keeps records
/// in memory (`MemoryStore`, `CachedStore`) sets it when it stores a
/// record ([`for_stored`](Self::for_stored)), and hands it on when it
/// replaces the record ([`successor`](Self::successor)); every other
/// record (built by hand, from a token, a clone) is [`Loose`](Cell::Loose),
/// and its key's state stays in the limiter's table.
pub(crate) struct LimitCell(Cell);

enum Cell {
    /// No state here.
    Loose,
    /// The key's state, in the record's own bytes: `keeper` is the
    /// [`MemoryLimiter`](super::MemoryLimiter) that decides on it (0 until
    /// one claims it), `seen` the forget generation of that limiter it
    /// last caught up with, `tat` its GCRA word. Once a record replacing
    /// this one took the state over, `tat` reads [`MOVED`] + a token: the
    /// state is in its own allocation, found in [`MOVED_STATES`] by that
    /// token for as long as this record lives (a request may hold it).
    Own {
        keeper: AtomicU32,
        seen: AtomicU16,
        tat: AtomicU64,
    },
    /// The state of the record this one replaced (with the same rate
    /// policy), moved to its own allocation: shared by every later record
    /// with that policy, never copied, and without keeping the replaced
    /// record (its memory, its secrets) alive.
    Shared(Arc<Words>),
}

/// A state moved out of the record it was made in: the same words.
pub(crate) struct Words {
    keeper: AtomicU32,
    seen: AtomicU16,
    tat: AtomicU64,
}

/// A stored record's state words (a replaced record's `tat` may say
/// that the state moved on: see [`is_moved`]).
pub(crate) struct CellState<'a> {
    pub(crate) keeper: &'a AtomicU32,
    pub(crate) seen: &'a AtomicU16,
    pub(crate) tat: &'a AtomicU64,
}

/// The states that moved out of records still alive, by the token left in
/// their words: an entry goes when its record is dropped. Touched only
/// when a record is replaced, when a replaced one is dropped, and by a
/// request that still holds a replaced one.
static MOVED_STATES: LazyLock<papaya::HashMap<u32, Arc<Words>>> =
    LazyLock::new(papaya::HashMap::new);

static NEXT_TOKEN: AtomicU32 = AtomicU32::new(0);

/// Whether a TAT word says its state moved (see [`Cell::Own`]).
#[inline]
pub(crate) fn is_moved(word: u64) -> bool {
    (MOVED..LOCKED).contains(&word)
}

fn token(word: u64) -> Option<u32> {
    is_moved(word).then(|| (word - MOVED) as u32)
}

fn moved_to(word: u64) -> Option<Arc<Words>> {
    MOVED_STATES.pin().get(&token(word)?).cloned()
}

impl LimitCell {
    /// No state: the limiter's table keeps the key's.
    pub(crate) const fn loose() -> Self {
        Self(Cell::Loose)
    }

    /// The cell of a record a store keeps for the first time (or whose
    /// rate policy changed): a fresh state if the record has one rate
    /// policy alone.
    pub(crate) fn for_stored(limits: &Limits) -> Self {
        if one_rate(limits).is_some() {
            Self(Cell::Own {
                keeper: AtomicU32::new(0),
                seen: AtomicU16::new(0),
                tat: AtomicU64::new(0),
            })
        } else {
            Self::loose()
        }
    }

    /// The cell of a record with `limits` that replaces `previous` in a
    /// store: `previous`'s state when the rate policy is the same (an
    /// update of other fields, a cache refresh), else a fresh one.
    pub(crate) fn successor(previous: &KeyRecord, limits: &Limits) -> Self {
        let same = one_rate(limits).is_some_and(|new| one_rate(&previous.limits) == Some(new));
        match &previous.limit_cell.0 {
            _ if !same => Self::for_stored(limits),
            Cell::Own { keeper, seen, tat } => Self(Cell::Shared(move_out(keeper, seen, tat))),
            Cell::Shared(words) => Self(Cell::Shared(Arc::clone(words))),
            Cell::Loose => Self::for_stored(limits),
        }
    }

    /// Whether a store set this cell (the record is the one it keeps).
    #[cfg(feature = "tokio")] // for `CachedStore`
    pub(crate) fn is_stored(&self) -> bool {
        !matches!(self.0, Cell::Loose)
    }

    /// The key's state as this record holds it. A replaced record's may
    /// have moved (its word says so: see [`is_moved`] and [`moved`](Self::moved)).
    #[inline]
    pub(crate) fn state(&self) -> Option<CellState<'_>> {
        match &self.0 {
            Cell::Loose => None,
            Cell::Own { keeper, seen, tat } => Some(CellState { keeper, seen, tat }),
            Cell::Shared(words) => Some(words.state()),
        }
    }

    /// Where the state of this replaced record went, once it moved.
    #[cold]
    pub(crate) fn moved(&self) -> Option<Arc<Words>> {
        match &self.0 {
            Cell::Own { tat, .. } => moved_to(tat.load(Ordering::Acquire)),
            Cell::Loose | Cell::Shared(_) => None,
        }
    }

    /// `read` of the key's state, wherever it is now.
    #[cfg(feature = "tokio")] // for `CachedStore`
    fn read<T>(&self, read: impl Fn(&CellState<'_>) -> T) -> Option<T> {
        let state = self.state()?;
        if is_moved(state.tat.load(Ordering::Acquire)) {
            if let Some(words) = self.moved() {
                return Some(read(&words.state()));
            }
        }
        Some(read(&state))
    }

    /// Whether a limiter has spent on the state: dropping it would lose
    /// something (a cache keeps such a record's cell when it drops the
    /// record; see `CachedStore`).
    #[cfg(feature = "tokio")] // for `CachedStore`
    pub(crate) fn is_spent(&self) -> bool {
        self.read(|state| {
            state.keeper.load(Ordering::Relaxed) != 0 && state.tat.load(Ordering::Relaxed) != 0
        })
        .unwrap_or(false)
    }

    /// Whether the state, if any, is full again at `now` (nanoseconds
    /// since the epoch): dropping it then loses nothing.
    #[cfg(feature = "tokio")] // for `CachedStore`
    pub(crate) fn is_idle(&self, now: u64) -> bool {
        self.read(|state| state.tat.load(Ordering::Relaxed) <= now)
            .unwrap_or(true)
    }
}

impl Words {
    pub(crate) fn state(&self) -> CellState<'_> {
        CellState {
            keeper: &self.keeper,
            seen: &self.seen,
            tat: &self.tat,
        }
    }
}

/// Moves a record's own state to an allocation of its own, for the
/// record that replaces it, and returns it; a later call (another
/// successor of the same record) finds it there. Exact: one
/// compare-and-swap takes the word's value and leaves the token in its
/// place, so a request holding the replaced record either spent before
/// (and its spend moves with the state) or finds the token and spends on
/// the moved state.
#[cold]
fn move_out(keeper: &AtomicU32, seen: &AtomicU16, tat: &AtomicU64) -> Arc<Words> {
    let mut current = load_unlocked(tat);
    if is_moved(current) {
        return found(current);
    }
    // Held until the value is in: a request that finds the token first
    // waits the few instructions until then.
    let words = Arc::new(Words {
        keeper: AtomicU32::new(0),
        seen: AtomicU16::new(0),
        tat: AtomicU64::new(LOCKED),
    });
    let token = register(&words);
    let sealed = MOVED + u64::from(token);
    loop {
        // Copied on every try: a claim or a catch-up may land meanwhile
        // (one that lands after the last copy is made again on the
        // moved state, by the request that finds it moved).
        let claimed = keeper.load(Ordering::Acquire);
        words.keeper.store(claimed, Ordering::Relaxed);
        words
            .seen
            .store(seen.load(Ordering::Acquire), Ordering::Relaxed);
        match tat.compare_exchange_weak(current, sealed, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                words.tat.store(current, Ordering::Release);
                return words;
            }
            Err(actual) if is_moved(actual) => {
                // Another successor of the record moved it first.
                MOVED_STATES.pin().remove(&token);
                return found(actual);
            }
            Err(LOCKED) => current = load_unlocked(tat),
            Err(actual) => current = actual,
        }
    }
}

/// The state a moved word points to. Always found while the record
/// lives (the caller holds it); were it not, a fresh state (the budget
/// restarts) is all that could be done.
fn found(word: u64) -> Arc<Words> {
    moved_to(word).unwrap_or_else(|| {
        debug_assert!(false, "a moved state outlived its record's token");
        Arc::new(Words {
            keeper: AtomicU32::new(0),
            seen: AtomicU16::new(0),
            tat: AtomicU64::new(0),
        })
    })
}

/// A token for `words` that no living record uses.
fn register(words: &Arc<Words>) -> u32 {
    let states = MOVED_STATES.pin();
    loop {
        // Tokens wrap after 2^32 moves: one still in use is skipped.
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        if states.try_insert(token, Arc::clone(words)).is_ok() {
            return token;
        }
    }
}

/// A moved state is found by its replaced record's token until that
/// record goes.
impl Drop for LimitCell {
    fn drop(&mut self) {
        if let Cell::Own { tat, .. } = &mut self.0 {
            if let Some(token) = token(*tat.get_mut()) {
                MOVED_STATES.pin().remove(&token);
            }
        }
    }
}

/// The fingerprint of `limits`' policy if it is one rate policy alone.
fn one_rate(limits: &Limits) -> Option<u64> {
    match limits.policies() {
        [policy @ Policy::Rate(_)] => Some(policy.fingerprint()),
        _ => None,
    }
}

/// A copy of a record is another record: it starts without state.
impl Clone for LimitCell {
    fn clone(&self) -> Self {
        Self::loose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::key::KeyHash;
    use crate::limit::RatePolicy;

    #[test]
    fn a_cell_is_as_small_as_a_pointer_and_a_word() {
        assert_eq!(std::mem::size_of::<LimitCell>(), 16);
    }

    fn limits() -> Limits {
        let burst = RatePolicy::new("burst", 3, Duration::from_secs(60)).unwrap();
        Limits::new([burst.into()]).unwrap()
    }

    fn replace(previous: &Arc<KeyRecord>) -> Arc<KeyRecord> {
        let cell = LimitCell::successor(previous, &previous.limits);
        Arc::new(KeyRecord::clone(previous).with_limit_cell(cell))
    }

    fn tat(record: &KeyRecord) -> &AtomicU64 {
        record.limit_cell.state().unwrap().tat
    }

    /// A replaced record's state moves to its own allocation, which every
    /// later record of the key shares; the replaced record is then freed,
    /// and with it the way to the moved state.
    #[test]
    fn a_successor_shares_the_state_and_frees_the_record_it_replaced() {
        let id = "abcdefghijkl".parse().unwrap();
        let record = KeyRecord::new(
            id,
            KeyHash::from_bytes([7; 32]),
            "acme",
            std::time::UNIX_EPOCH,
        )
        .with_limits(limits());
        let cell = LimitCell::for_stored(&record.limits);
        let first = Arc::new(record.with_limit_cell(cell));
        tat(&first).store(42, Ordering::Relaxed);

        let second = replace(&first);
        let third = replace(&second);
        // A second successor of the first record (a write that raced):
        // the same state, not another copy.
        let raced = LimitCell::successor(&first, &first.limits);
        let word = tat(&first).load(Ordering::Relaxed);
        assert!(is_moved(word));
        for other in [tat(&third), raced.state().unwrap().tat] {
            assert!(std::ptr::eq(tat(&second), other));
        }
        let moved = first.limit_cell.moved().unwrap();
        assert!(std::ptr::eq(moved.state().tat, tat(&second)));
        assert_eq!(tat(&third).load(Ordering::Relaxed), 42);
        drop(moved);

        assert_eq!(Arc::strong_count(&first), 1, "the successors hold none");
        let weak = Arc::downgrade(&first);
        drop(first);
        assert!(weak.upgrade().is_none());
        assert!(moved_to(word).is_none(), "its token went with it");
        assert_eq!(tat(&third).load(Ordering::Relaxed), 42);
    }
}
