use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// Recent signatures, so that a captured request cannot be sent again
/// while its `created` time is still inside the verifier's window.
///
/// Only signatures that verified are remembered (an unauthenticated caller
/// creates no entry), each until its window ends. The cache is bounded:
/// when it is full of live entries, the entry whose window ends first is
/// dropped and the cache refuses every signature whose window ends no
/// later than that one's, as stale. A replay is never accepted; under a
/// flood of signed requests, the window shrinks instead. Clones share one
/// cache.
///
/// It protects one process. Behind a load balancer, a captured request
/// could be replayed once to each other replica inside the window: keep the
/// window short, route a key to one replica, or add your own shared check
/// of the `nonce`.
///
/// # Example
///
/// ```
/// use keyward::signature::ReplayCache;
///
/// let cache = ReplayCache::new(10_000);
/// assert_eq!(cache.capacity(), 10_000);
/// assert!(cache.is_empty());
/// ```
#[derive(Clone)]
pub struct ReplayCache {
    inner: Arc<Mutex<State>>,
    capacity: usize,
}

#[derive(Default)]
struct State {
    seen: HashSet<[u8; 32]>,
    /// (end of window in seconds, fingerprint), oldest end first.
    by_end: BTreeSet<(u64, [u8; 32])>,
    /// Signatures whose window ends at or before this are refused: an
    /// entry that ended later than now was dropped to make room.
    floor: u64,
}

/// What the cache says of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Fresh,
    Replayed,
    /// Its window ends no later than that of an entry dropped for room.
    Stale,
}

impl ReplayCache {
    /// The default capacity: 100 000 signatures (some 10 MB).
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// A cache of at most `capacity` signatures (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(State::default())),
            capacity: capacity.max(1),
        }
    }

    /// The most signatures it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many signatures it holds now.
    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers `fingerprint` until `window_end` (seconds since the
    /// epoch), unless it was seen before; forgets what ended by `now`.
    pub(crate) fn admit(&self, fingerprint: [u8; 32], window_end: u64, now: u64) -> Admission {
        let mut state = self.lock();
        while let Some(&(end, old)) = state.by_end.first() {
            if end > now {
                break;
            }
            state.by_end.pop_first();
            state.seen.remove(&old);
        }
        if state.seen.contains(&fingerprint) {
            return Admission::Replayed;
        }
        if window_end <= state.floor {
            return Admission::Stale;
        }
        while state.seen.len() >= self.capacity {
            let Some((end, old)) = state.by_end.pop_first() else {
                break;
            };
            state.seen.remove(&old);
            state.floor = state.floor.max(end);
        }
        if window_end <= state.floor {
            return Admission::Stale;
        }
        state.seen.insert(fingerprint);
        state.by_end.insert((window_end, fingerprint));
        Admission::Fresh
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: each
        // change is a complete insert or remove.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn a_signature_is_admitted_once_until_its_window_ends() {
        let cache = ReplayCache::new(10);
        assert_eq!(cache.admit(print(1), 100, 50), Admission::Fresh);
        assert_eq!(cache.admit(print(1), 100, 60), Admission::Replayed);
        assert_eq!(cache.admit(print(1), 100, 99), Admission::Replayed);
        // Ended: forgotten (the verifier's window check refuses it by then).
        assert_eq!(cache.admit(print(2), 200, 100), Admission::Fresh);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_full_cache_drops_the_oldest_and_refuses_what_could_replay_it() {
        let cache = ReplayCache::new(2);
        assert_eq!(cache.admit(print(1), 110, 0), Admission::Fresh);
        assert_eq!(cache.admit(print(2), 120, 0), Admission::Fresh);
        // Room is made by dropping 1 (ends at 110): from now on nothing
        // ending at or before 110 is accepted, so 1 cannot come back.
        assert_eq!(cache.admit(print(3), 130, 0), Admission::Fresh);
        assert_eq!(cache.admit(print(1), 110, 0), Admission::Stale);
        assert_eq!(cache.admit(print(4), 105, 0), Admission::Stale);
        assert_eq!(cache.admit(print(2), 120, 0), Admission::Replayed);
        assert_eq!(cache.len(), 2);
    }
}
