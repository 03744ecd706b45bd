//! A lock-free map of per-key state with a hard bound on its size: what
//! the limiter and the failed-attempt throttle keep their state in.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::saturating_nanos;

/// State that can tell when forgetting it loses nothing.
pub(crate) trait Expiring {
    /// Whether, at `now` (nanoseconds since the epoch), the state is back
    /// to what a fresh one would be.
    fn is_idle(&self, now: u64) -> bool;

    /// Whether a sweep may drop it now. The default: when it is idle.
    /// State that a request makes and then spends on overrides it with
    /// [`forgettable`], so that a sweep between the making and the
    /// spending cannot drop the spend.
    fn is_forgettable(&self, now: u64) -> bool {
        self.is_idle(now)
    }

    /// Told once the map has dropped the state (idle, or evicted).
    fn forgotten(&self) {}
}

/// A time word (nanoseconds since the epoch, 0 until first spent on) that
/// a sweep has seen never spent on: 1 ns after the epoch, so, as a time,
/// long past (the state reads as fresh).
pub(crate) const SWEPT: u64 = 1;

/// For a sweep: whether the state whose time word is `word` (0 until it
/// is first spent on, then a time after which the state is idle) may be
/// forgotten at `now`.
///
/// A state never spent on was just made by a request that is about to
/// spend on it: dropping it then would lose that spend (the request
/// spends on a state no longer in the map, and the next one starts from a
/// fresh state). So the first sweep to see it only marks it
/// ([`SWEPT`]); a later sweep drops it if it is still unspent. A spend
/// racing the mark fails its compare-and-swap and retries.
pub(crate) fn forgettable(word: &AtomicU64, now: u64) -> bool {
    match word.compare_exchange(0, SWEPT, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => false,
        Err(time) => time <= now,
    }
}

/// A papaya map that never holds more than `max` entries: before a new
/// entry goes in, idle entries are swept out (also once per
/// `sweep_every`), and if the map is still full, arbitrary entries go
/// until a tenth of the room is free.
pub(crate) struct BoundedMap<K, V, S> {
    map: papaya::HashMap<K, V, S>,
    max: usize,
    sweep_every: u64,
    last_sweep: AtomicU64,
    /// What the entries are, for the warning when the map is full.
    what: &'static str,
}

impl<K, V, S> BoundedMap<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync,
    V: Expiring + Send + Sync,
    S: BuildHasher + Default,
{
    pub(crate) fn new(max: usize, sweep_every: Duration, what: &'static str) -> Self {
        Self {
            map: papaya::HashMap::builder()
                .hasher(S::default())
                .capacity(max.min(1024))
                // A resize finishes in the inserting call (new keys are
                // the slow path anyway); papaya's default, incremental
                // resizing, leaves half-copied tables that every read of
                // the request path then probes at length.
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            max: max.max(1),
            sweep_every: saturating_nanos(sweep_every),
            what,
            last_sweep: AtomicU64::new(0),
        }
    }

    pub(crate) fn map(&self) -> &papaya::HashMap<K, V, S> {
        &self.map
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Makes room for one more entry. Called only when a key is about to
    /// be added, so the request path of known keys never sweeps.
    pub(crate) fn make_room(&self, now: u64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= self.sweep_every;
        if self.map.len() < self.max && !due {
            return;
        }
        // One sweeper at a time; the others go on (the bound may be
        // overshot by the number of concurrent inserters, no more).
        if self
            .last_sweep
            .compare_exchange(last, now.max(last + 1), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let map = self.map.pin();
        // Collect, then remove: papaya's `retain` copies the whole table.
        let idle: Vec<K> = map
            .iter()
            .filter(|(_, state)| state.is_forgettable(now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &idle {
            // Checked again: a request may have spent on it meanwhile.
            if let Ok(Some((_, state))) = map.remove_if(key, |_, state| state.is_forgettable(now)) {
                state.forgotten();
            }
        }
        let target = self.max - self.max / 10;
        let excess = map.len().saturating_sub(target.min(self.max - 1));
        if excess > 0 && map.len() >= self.max {
            // Spread the victims over the table: evicting a contiguous run
            // of slots leaves papaya a tombstoned region that it rescans.
            let stride = (map.len() / excess).max(1);
            let victims: Vec<K> = map.keys().step_by(stride).take(excess).cloned().collect();
            for key in &victims {
                if let Some(state) = map.remove(key) {
                    state.forgotten();
                }
            }
            tracing::warn!(
                target: "keyward::limit",
                map = self.what,
                evicted = victims.len(),
                max = self.max,
                "bounded map full of active entries; evicted some (raise the bound)"
            );
        }
    }
}
