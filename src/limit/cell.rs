//! [`LimitCell`]: the rate state of a key with one rate policy, kept in
//! the key's record by the in-memory store that holds it, so that
//! [`MemoryLimiter`](super::MemoryLimiter) needs no table entry (and no
//! second look-up) for it.

use std::fmt;
#[cfg(feature = "tokio")]
use std::sync::atomic::Ordering;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;

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
    /// The key's state: `keeper` is the [`MemoryLimiter`](super::MemoryLimiter)
    /// that decides on it (0 until one claims it), `tat` its GCRA word.
    Own { keeper: AtomicU32, tat: AtomicU64 },
    /// The key's state is in the record this one replaced (with the same
    /// rate policy), or in that one's holder: never a chain of more than
    /// one link, so a state is never copied and no spend on it is lost,
    /// whichever of the two records a request holds.
    Shared(Arc<KeyRecord>),
}

/// A stored record's state, resolved.
pub(crate) struct CellState<'a> {
    pub(crate) keeper: &'a AtomicU32,
    pub(crate) tat: &'a AtomicU64,
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
                tat: AtomicU64::new(0),
            })
        } else {
            Self::loose()
        }
    }

    /// The cell of a record with `limits` that replaces `previous` in a
    /// store: `previous`'s state when the rate policy is the same (an
    /// update of other fields, a cache refresh), else a fresh one.
    pub(crate) fn successor(previous: &Arc<KeyRecord>, limits: &Limits) -> Self {
        let same = one_rate(limits).is_some_and(|new| one_rate(&previous.limits) == Some(new));
        match &previous.limit_cell.0 {
            _ if !same => Self::for_stored(limits),
            Cell::Own { .. } => Self(Cell::Shared(Arc::clone(previous))),
            Cell::Shared(holder) => Self(Cell::Shared(Arc::clone(holder))),
            Cell::Loose => Self::for_stored(limits),
        }
    }

    /// Whether a store set this cell (the record is the one it keeps).
    #[cfg(feature = "tokio")] // for `CachedStore`
    pub(crate) fn is_stored(&self) -> bool {
        !matches!(self.0, Cell::Loose)
    }

    /// The key's state, wherever it is kept.
    #[inline]
    pub(crate) fn state(&self) -> Option<CellState<'_>> {
        let own = match &self.0 {
            Cell::Loose => return None,
            Cell::Own { .. } => &self.0,
            Cell::Shared(holder) => &holder.limit_cell.0,
        };
        match own {
            Cell::Own { keeper, tat } => Some(CellState { keeper, tat }),
            // A holder is always made `Own` (see `successor`).
            _ => None,
        }
    }

    /// Whether a limiter has spent on the state: dropping it would lose
    /// something (a cache keeps such a record's cell when it drops the
    /// record; see `CachedStore`).
    #[cfg(feature = "tokio")] // for `CachedStore`
    pub(crate) fn is_spent(&self) -> bool {
        self.state().is_some_and(|state| {
            state.keeper.load(Ordering::Relaxed) != 0 && state.tat.load(Ordering::Relaxed) != 0
        })
    }
}

impl LimitCell {
    /// Whether the state, if any, is full again at `now` (nanoseconds
    /// since the epoch): dropping it then loses nothing.
    #[cfg(feature = "tokio")] // for `CachedStore`
    pub(crate) fn is_idle(&self, now: u64) -> bool {
        self.state()
            .is_none_or(|state| state.tat.load(Ordering::Relaxed) <= now)
    }
}

/// The fingerprint of `limits`' policy if it is one rate policy alone.
fn one_rate(limits: &Limits) -> Option<u64> {
    match limits.policies() {
        [policy @ Policy::Rate(_)] => Some(policy.fingerprint()),
        _ => None,
    }
}

impl Default for LimitCell {
    fn default() -> Self {
        Self::loose()
    }
}

/// A copy of a record is another record: it starts without state.
impl Clone for LimitCell {
    fn clone(&self) -> Self {
        Self::loose()
    }
}

/// Not part of what a record says: two records that differ only in their
/// cell are equal.
impl PartialEq for LimitCell {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LimitCell {}

impl fmt::Debug for LimitCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Cell::Loose => "Loose",
            Cell::Own { .. } => "Own",
            Cell::Shared(_) => "Shared",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_is_as_small_as_a_pointer_and_a_word() {
        assert_eq!(std::mem::size_of::<LimitCell>(), 16);
    }
}
