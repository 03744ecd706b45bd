use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use papaya::{Compute, Operation};
use tokio::sync::watch;

use super::invalidation::{Invalidation, InvalidationEvent};
use super::{KeyStore, Lookup, StoreError};
use crate::clock::{epoch_nanos, saturating_nanos, Clock, SystemClock};
use crate::key::{KeyHash, KeyId, KeyIdBuildHasher};
use crate::limit::LimitCell;
use crate::record::{KeyRecord, KeyStatus};

/// An in-process cache in front of any [`KeyStore`], itself a `KeyStore`.
///
/// - **Hits** are answered by [`find_immediate`](KeyStore::find_immediate):
///   no future, no lock, one read of a lock-free map and of the time (a
///   copy of the system clock that a task refreshes every 10 ms, when the
///   cache is built in a tokio runtime; an injected [`clock`](CachedStoreBuilder::clock)
///   is read on every hit instead).
/// - **Found** records are kept for [`ttl`](CachedStoreBuilder::ttl), ids
///   that were **not found** for the shorter
///   [`negative_ttl`](CachedStoreBuilder::negative_ttl). The cache holds ids
///   and records (which hold hashes), never a key or a secret. At most
///   [`capacity`](CachedStoreBuilder::capacity) entries: past it, expired
///   entries go first, then arbitrary ones.
/// - **Misses** for one id share one backend query (single flight), and no
///   caller waits longer than [`timeout`](CachedStoreBuilder::timeout).
/// - **Failures are never "unknown key"**: a backend error or timeout is a
///   [`StoreError`], which [`AuthLayer`](crate::AuthLayer) answers with
///   `503`. Opt in to [`serve_stale_on_error`](CachedStoreBuilder::serve_stale_on_error)
///   to answer from an expired entry instead, for a bounded time.
/// - **Writes** (`insert`, `update`, `revoke`) go to the backend, then drop
///   the local entry and are announced through the
///   [`Invalidation`](CachedStoreBuilder::invalidation), if one is set: every
///   process's cache drops its copy when it hears the announcement.
/// - **Losing the subscription** (the announcement channel's connection
///   drops) makes the cache trust what it holds only for
///   [`untrusted_ttl`](CachedStoreBuilder::untrusted_ttl) (1 s by default)
///   until it is back; on reconnecting it clears itself once, since
///   announcements may have been missed meanwhile.
/// - **Rate state**: a key with one rate policy keeps its
///   [`MemoryLimiter`](crate::limit::MemoryLimiter) state in the cached
///   record (as in [`MemoryStore`](super::MemoryStore)). A refresh (an
///   expired entry, an announced change, a write) hands it on to the
///   fetched record when the rate policy is unchanged, so neither resets
///   a budget: a dropped entry whose state was spent on stays as a
///   placeholder, never answered, until the key's record is fetched again.
///   Making room drops unknown ids and unspent states first; a budget is
///   reset only when more keys are in use than the capacity.
///
/// Clones share the same cache. Misses and writes run on tokio's timer:
/// call them within a tokio runtime (hits need none).
///
/// # Example
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
/// use keyward::record::KeyRecord;
/// use keyward::store::invalidation::LocalInvalidation;
/// use keyward::store::{CachedStore, KeyStore, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // In production: PgStore or RedisStore, and PgInvalidation or RedisInvalidation.
/// let store = CachedStore::builder(MemoryStore::new())
///     .ttl(Duration::from_secs(60))
///     .negative_ttl(Duration::from_secs(5))
///     .timeout(Duration::from_millis(500))
///     .invalidation(LocalInvalidation::new())
///     .build();
///
/// let key = KeyGenerator::new(KeyFormat::new("sk_live")?).generate()?;
/// let hash = KeyHasher::sha256().hash(key.secret());
/// store.insert(KeyRecord::new(key.id(), hash, "acme", SystemTime::now())).await?;
///
/// assert!(store.find_immediate(&key.id()).is_none()); // not cached yet: a miss
/// store.find(&key.id()).await?;                      // one backend query
/// assert!(store.find_immediate(&key.id()).is_some()); // a hit from now on
/// # Ok(())
/// # }
/// ```
pub struct CachedStore<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for CachedStore<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Builds a [`CachedStore`]; see its docs.
#[must_use]
pub struct CachedStoreBuilder<S> {
    backend: S,
    config: Config,
    clock: Arc<dyn Clock>,
    /// Whether `clock` is the system's (hits may then read a coarse copy).
    system_clock: bool,
    invalidation: Option<Arc<dyn Invalidation>>,
}

/// How often the coarse clock that hits read is refreshed.
const TICK: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy)]
struct Config {
    ttl: u64,
    negative_ttl: u64,
    untrusted_ttl: u64,
    stale_for: Option<u64>,
    capacity: usize,
    timeout: Duration,
}

/// How the cache has fared: counters since it was built.
///
/// Hits are not counted here: a counter that every request bumps would be
/// the one thing all requests share. (With the `metrics` feature, the
/// exporter counts them, `keyward_key_cache_lookups_total{result="hit"}`:
/// a cost you choose by installing one.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CacheStats {
    /// Look-ups that were not answered from the cache.
    pub misses: u64,
    /// Backend calls that failed (timeouts not included).
    pub errors: u64,
    /// Backend calls (and waits for one) that took longer than the timeout.
    pub timeouts: u64,
    /// Look-ups answered from an expired entry because the backend failed
    /// ([`serve_stale_on_error`](CachedStoreBuilder::serve_stale_on_error)).
    pub stale_served: u64,
    /// Announced changes that dropped an entry (or found none to drop).
    pub invalidations: u64,
    /// Times the whole cache was cleared: once per (re)connection of the
    /// subscription.
    pub clears: u64,
    /// Times the subscription was lost.
    pub disconnects: u64,
    /// Announcements of this process's own writes that failed.
    pub announce_errors: u64,
    /// Entries dropped to stay within the capacity.
    pub evictions: u64,
}

#[derive(Default)]
struct Counters {
    misses: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    stale_served: AtomicU64,
    invalidations: AtomicU64,
    clears: AtomicU64,
    disconnects: AtomicU64,
    announce_errors: AtomicU64,
    evictions: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Inner<S> {
    backend: S,
    map: papaya::HashMap<KeyId, Slot, KeyIdBuildHasher>,
    /// Imported keys' hashes to their ids, once the backend found them by
    /// hash: later look-ups go through the id cache (and its invalidation).
    imported: papaya::HashMap<[u8; 32], KeyId>,
    config: Config,
    clock: Arc<dyn Clock>,
    /// The system clock's time, refreshed every TICK by a task: what hits
    /// read, instead of asking the operating system each time.
    coarse_now: AtomicU64,
    ticking: AtomicBool,
    invalidation: Option<Arc<dyn Invalidation>>,
    /// Whether the subscription is up (always, without an invalidation).
    trusted: AtomicBool,
    sweeping: AtomicBool,
    next_flight: AtomicU64,
    counters: Counters,
}

/// A cached answer, or a query on its way.
#[derive(Clone)]
enum Slot {
    Ready(Entry),
    Pending(Flight),
    /// A record dropped (changed, invalidated, cleared) whose rate state
    /// was spent on: never answered, kept so that the key's next fetched
    /// record takes the state on.
    Gone(Arc<KeyRecord>),
}

#[derive(Clone)]
struct Entry {
    record: Option<Arc<KeyRecord>>,
    /// When it was fetched, in the clock's nanoseconds since the epoch.
    fetched: u64,
}

/// What the one query of a single flight tells those waiting on it.
type Shared = Result<Option<Arc<KeyRecord>>, Arc<StoreError>>;

#[derive(Clone)]
struct Flight {
    id: u64,
    answer: watch::Receiver<Option<Shared>>,
    /// The record the fetched one replaces (an expired or dropped entry's),
    /// whose rate state it takes on.
    previous: Option<Arc<KeyRecord>>,
}

impl<S: KeyStore> CachedStore<S> {
    /// A cache with the defaults in front of `backend`: a 30 s TTL, 5 s for
    /// unknown ids, 100 000 entries, a 1 s timeout, no invalidation across
    /// processes (use [`builder`](Self::builder) to set one).
    pub fn new(backend: S) -> Self {
        Self::builder(backend).build()
    }

    /// Configures a cache in front of `backend`.
    pub fn builder(backend: S) -> CachedStoreBuilder<S> {
        CachedStoreBuilder {
            backend,
            config: Config {
                ttl: saturating_nanos(Duration::from_secs(30)),
                negative_ttl: saturating_nanos(Duration::from_secs(5)),
                untrusted_ttl: saturating_nanos(Duration::from_secs(1)),
                stale_for: None,
                capacity: 100_000,
                timeout: Duration::from_secs(1),
            },
            clock: Arc::new(SystemClock),
            system_clock: true,
            invalidation: None,
        }
    }
}

impl<S: KeyStore> CachedStoreBuilder<S> {
    /// How long a found record is answered from the cache (30 s by
    /// default). With an invalidation, changes show at once anyway; this
    /// bounds what a lost announcement can cost.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = saturating_nanos(ttl);
        self
    }

    /// How long an id that was not found is answered as unknown (5 s by
    /// default). Only ids that pass the key format's checks reach the
    /// cache; the entry holds the id alone.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.config.negative_ttl = saturating_nanos(ttl);
        self
    }

    /// How long entries are trusted while the subscription is down (1 s by
    /// default): a change made elsewhere shows here within this time even
    /// when its announcement is lost.
    pub fn untrusted_ttl(mut self, ttl: Duration) -> Self {
        self.config.untrusted_ttl = saturating_nanos(ttl);
        self
    }

    /// At most this many entries (100 000 by default).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.config.capacity = capacity.max(1);
        self
    }

    /// The longest a look-up or write waits for the backend (1 s by
    /// default); past it the caller gets [`StoreError::Timeout`] (a `503`
    /// for a request). Set the backend's own timeout no longer than this.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Answers from an expired entry when the backend fails, if the entry
    /// expired at most `max_age` ago.
    ///
    /// **This weakens revocation**: while the backend is down, a key keeps
    /// working as it was when last fetched, for up to `ttl + max_age`
    /// after that fetch. Never for a record the cache holds as revoked,
    /// never for an id whose change was announced (announced entries are
    /// dropped, not expired), and never for an unknown id. Off by default:
    /// a failing backend means `503`.
    pub fn serve_stale_on_error(mut self, max_age: Duration) -> Self {
        self.config.stale_for = Some(saturating_nanos(max_age));
        self
    }

    /// Announces this cache's writes through `invalidation` and drops the
    /// entries it hears announced. The cache trusts its entries only for
    /// [`untrusted_ttl`](Self::untrusted_ttl) until the subscription is up.
    pub fn invalidation(mut self, invalidation: impl Invalidation) -> Self {
        self.invalidation = Some(Arc::new(invalidation));
        self
    }

    /// Reads time (for the TTLs) from `clock`.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = crate::clock::shared(clock);
        self.system_clock = false;
        self
    }

    /// The cache.
    ///
    /// # Panics
    ///
    /// With an invalidation set, outside a tokio runtime (like
    /// `tokio::spawn`): the subscription is heard by a task.
    pub fn build(self) -> CachedStore<S> {
        let inner = Arc::new(Inner {
            backend: self.backend,
            map: papaya::HashMap::builder()
                .hasher(KeyIdBuildHasher)
                // As in MemoryStore: no half-copied table for hits to probe.
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            imported: papaya::HashMap::new(),
            config: self.config,
            coarse_now: AtomicU64::new(epoch_nanos(self.clock.now())),
            ticking: AtomicBool::new(false),
            clock: self.clock,
            trusted: AtomicBool::new(self.invalidation.is_none()),
            invalidation: self.invalidation,
            sweeping: AtomicBool::new(false),
            next_flight: AtomicU64::new(0),
            counters: Counters::default(),
        });
        if let Some(invalidation) = &inner.invalidation {
            let subscription = invalidation.subscribe();
            tokio::spawn(listen(Arc::downgrade(&inner), subscription));
        }
        // With the system clock and a runtime at hand, hits read a copy of
        // the time refreshed every 10 ms: reading the clock itself costs as
        // much as the rest of a hit. (TTLs are seconds; 10 ms is noise.)
        // An injected clock is read on every hit, so tests control time.
        if self.system_clock {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                inner.ticking.store(true, Ordering::Release);
                runtime.spawn(tick(Arc::downgrade(&inner)));
            }
        }
        CachedStore { inner }
    }
}

/// Refreshes the coarse clock until the cache is dropped.
async fn tick<S: KeyStore>(cache: Weak<Inner<S>>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        cache
            .coarse_now
            .store(epoch_nanos(cache.clock.now()), Ordering::Relaxed);
    }
}

/// Applies what the subscription hears, until the cache is dropped.
async fn listen<S: KeyStore>(
    cache: Weak<Inner<S>>,
    mut subscription: super::invalidation::Subscription,
) {
    while let Some(event) = subscription.next().await {
        let Some(cache) = cache.upgrade() else {
            return;
        };
        cache.hear(event);
    }
    // The sender is gone for good: nothing will be heard again.
    if let Some(cache) = cache.upgrade() {
        cache.hear(InvalidationEvent::Lost);
    }
}

impl<S: KeyStore> CachedStore<S> {
    /// The store behind the cache.
    pub fn backend(&self) -> &S {
        &self.inner.backend
    }

    /// Counters since the cache was built.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CacheStats {
            misses: read(&c.misses),
            errors: read(&c.errors),
            timeouts: read(&c.timeouts),
            stale_served: read(&c.stale_served),
            invalidations: read(&c.invalidations),
            clears: read(&c.clears),
            disconnects: read(&c.disconnects),
            announce_errors: read(&c.announce_errors),
            evictions: read(&c.evictions),
        }
    }

    /// Whether the cache trusts its entries for their full TTL: it has no
    /// invalidation, or its subscription is up.
    pub fn is_trusted(&self) -> bool {
        self.inner.trusted.load(Ordering::Acquire)
    }

    /// How many entries the cache holds (found, not found, pending, and
    /// dropped records kept for their rate state).
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.inner.map.is_empty()
    }

    /// Drops every entry (the next look-ups ask the backend). Rate state
    /// that requests spent stays, for the records fetched next.
    pub fn clear(&self) {
        self.inner.drop_all();
    }

    /// Drops the entry for `id`, if any (the next look-up asks the
    /// backend). Rate state that requests spent stays, for the record
    /// fetched next.
    pub fn evict(&self, id: &KeyId) {
        self.inner.drop_entry(id);
    }
}

impl<S: KeyStore> Inner<S> {
    fn now(&self) -> u64 {
        epoch_nanos(self.clock.now())
    }

    fn age(&self, entry: &Entry, now: u64) -> u64 {
        now.saturating_sub(entry.fetched)
    }

    fn ttl_of(&self, entry: &Entry) -> u64 {
        let ttl = if entry.record.is_some() {
            self.config.ttl
        } else {
            self.config.negative_ttl
        };
        if self.trusted.load(Ordering::Acquire) {
            ttl
        } else {
            ttl.min(self.config.untrusted_ttl)
        }
    }

    fn is_fresh(&self, entry: &Entry, now: u64) -> bool {
        self.age(entry, now) < self.ttl_of(entry)
    }

    /// The time for a hit: the coarse copy when it is kept, else the clock.
    fn hit_now(&self) -> u64 {
        if self.ticking.load(Ordering::Relaxed) {
            self.coarse_now.load(Ordering::Relaxed)
        } else {
            self.now()
        }
    }

    fn hit(&self, id: &KeyId) -> Option<Option<Arc<KeyRecord>>> {
        let map = self.map.pin();
        match map.get(id) {
            Some(Slot::Ready(entry)) if self.is_fresh(entry, self.hit_now()) => {
                #[cfg(feature = "metrics")]
                crate::metrics::cache_hit();
                Some(entry.record.clone())
            }
            _ => None,
        }
    }

    fn hear(&self, event: InvalidationEvent) {
        match event {
            InvalidationEvent::Changed(id) => {
                bump(&self.counters.invalidations);
                // Drops a pending query too, so that its answer, which
                // may predate the change, is not kept.
                self.drop_entry(&id);
            }
            InvalidationEvent::Connected => {
                // Announcements may have been missed before this point.
                self.drop_all();
                bump(&self.counters.clears);
                self.trusted.store(true, Ordering::Release);
                tracing::info!(
                    target: "keyward::store",
                    "key cache subscribed to invalidations; cleared"
                );
            }
            InvalidationEvent::Lost => {
                if self.trusted.swap(false, Ordering::AcqRel) {
                    bump(&self.counters.disconnects);
                    tracing::warn!(
                        target: "keyward::store",
                        "key cache lost its invalidation subscription; trusting entries briefly until it is back"
                    );
                }
            }
        }
    }

    /// Runs a backend call under the timeout, counting failures.
    async fn call<T>(
        &self,
        what: &'static str,
        id: Option<&KeyId>,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(self.config.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.config.timeout)),
        };
        if let Err(error) = &result {
            self.count_failure(what, id, error);
        }
        result
    }

    fn count_failure(&self, what: &'static str, id: Option<&KeyId>, error: &StoreError) {
        match error {
            StoreError::Timeout(_) => bump(&self.counters.timeouts),
            StoreError::Backend(_) => bump(&self.counters.errors),
            // Answers, not failures.
            _ => return,
        }
        tracing::warn!(
            target: "keyward::store",
            operation = what,
            key_id = id.map(tracing::field::display),
            error = error as &dyn std::error::Error,
            "key store backend failed"
        );
    }

    /// Installs the answer of flight `flight` for `id`, unless the slot was
    /// taken away meanwhile (an announced change, a clear).
    fn settle(&self, id: KeyId, flight: u64, slot: Option<Slot>) {
        let map = self.map.pin();
        let _ = map.compute(id, |current| match current {
            Some((_, current @ Slot::Pending(pending))) if pending.id == flight => match &slot {
                Some(slot) => Operation::Insert(slot.clone()),
                // A failed query keeps what the next one takes on.
                None => current.dropped(),
            },
            // Dropped meanwhile (an announced change): the requests that
            // waited on this query spend on its record's state, so the
            // key's next record takes that state on.
            None => match &slot {
                Some(Slot::Ready(Entry {
                    record: Some(record),
                    ..
                })) if record.limit_cell.is_stored() => {
                    Operation::Insert(Slot::Gone(Arc::clone(record)))
                }
                _ => Operation::Abort(()),
            },
            _ => Operation::Abort(()),
        });
    }

    /// Drops `id`'s entry, or, if its record's rate state was spent on,
    /// leaves the record behind as [`Slot::Gone`].
    fn drop_entry(&self, id: &KeyId) {
        let map = self.map.pin();
        let _ = map.compute(*id, |current| match current {
            Some((_, Slot::Gone(_))) => Operation::Abort(()),
            Some((_, slot)) => slot.dropped(),
            None => Operation::Abort(()),
        });
    }

    /// Drops every entry, keeping spent rate states (see `drop_entry`).
    fn drop_all(&self) {
        let map = self.map.pin();
        let ids: Vec<KeyId> = map.keys().copied().collect();
        drop(map);
        for id in &ids {
            self.drop_entry(id);
        }
    }

    /// Keeps the map within its capacity, down to nine tenths: first what
    /// loses nothing (expired entries and placeholders whose rate state
    /// is not in use), then unknown ids and records whose state is not in
    /// use, and only then records with a budget in use (which then
    /// restarts full: more keys are in use than the capacity). One
    /// sweeper at a time; the cost falls on a miss, never on a hit.
    fn shrink(&self) {
        let capacity = self.config.capacity;
        if self.map.len() <= capacity || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let map = self.map.pin();
        let now = self.now();
        let target = capacity - capacity / 10;
        let mut removed = 0u64;
        let busy = |slot: &Slot| {
            slot.spent_record()
                .is_some_and(|r| !r.limit_cell.is_idle(now))
        };
        // Removes up to `most` entries that `droppable` allows, asked again
        // at the removal: a request may have spent on one since.
        let mut remove = |most: usize, droppable: &dyn Fn(&Slot) -> bool| {
            let ids: Vec<KeyId> = map
                .iter()
                .filter(|(_, slot)| droppable(slot))
                .map(|(id, _)| *id)
                .take(most)
                .collect();
            for id in ids {
                if let Ok(Some(_)) = map.remove_if(&id, |_, slot| droppable(slot)) {
                    removed += 1;
                }
            }
        };
        remove(usize::MAX, &|slot| match slot {
            Slot::Ready(entry) => !self.is_fresh(entry, now) && !busy(slot),
            Slot::Gone(_) => !busy(slot),
            Slot::Pending(_) => false,
        });
        for spend_budgets in [false, true] {
            if map.len() <= target {
                break;
            }
            remove(map.len() - target, &|slot| {
                !matches!(slot, Slot::Pending(_)) && (spend_budgets || !busy(slot))
            });
            if spend_budgets {
                tracing::warn!(
                    target: "keyward::store",
                    capacity,
                    "key cache full of keys in use; dropped some, whose rate budgets restart (raise the capacity)"
                );
            }
        }
        self.counters
            .evictions
            .fetch_add(removed, Ordering::Relaxed);
        self.sweeping.store(false, Ordering::Release);
    }

    async fn miss(&self, id: &KeyId) -> Lookup {
        bump(&self.counters.misses);
        #[cfg(feature = "metrics")]
        crate::metrics::cache_miss();
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        loop {
            match self.join_or_lead(id) {
                Role::Hit(record) => return Ok(record),
                Role::Lead(leader) => return self.lead(id, leader).await,
                Role::Join(mut answer) => {
                    match tokio::time::timeout_at(deadline, answer.wait_for(Option::is_some)).await
                    {
                        Err(_) => {
                            let error = StoreError::Timeout(self.config.timeout);
                            self.count_failure("find", Some(id), &error);
                            return Err(error);
                        }
                        Ok(Ok(shared)) => {
                            return match shared.as_ref() {
                                Some(Ok(record)) => Ok(record.clone()),
                                Some(Err(error)) => Err(StoreError::shared(Arc::clone(error))),
                                None => unreachable!("waited for Some"),
                            };
                        }
                        // The leading caller gave up (its request was
                        // dropped) before an answer: try again.
                        Ok(Err(_)) => continue,
                    }
                }
            }
        }
    }

    fn join_or_lead(&self, id: &KeyId) -> Role {
        let map = self.map.pin();
        let now = self.now();
        let flight = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = watch::channel(None);
        let pending = |previous: Option<&Arc<KeyRecord>>| {
            Slot::Pending(Flight {
                id: flight,
                answer: receiver.clone(),
                previous: previous.cloned(),
            })
        };
        let outcome = map.compute(*id, |current| match current {
            Some((_, Slot::Ready(entry))) if self.is_fresh(entry, now) => {
                Operation::Abort(Role::Hit(entry.record.clone()))
            }
            Some((_, Slot::Pending(other))) => Operation::Abort(Role::Join(other.answer.clone())),
            Some((_, Slot::Ready(stale))) => Operation::Insert(pending(stale.record.as_ref())),
            Some((_, Slot::Gone(record))) => Operation::Insert(pending(Some(record))),
            None => Operation::Insert(pending(None)),
        });
        let previous = match &outcome {
            Compute::Inserted(_, Slot::Pending(flight))
            | Compute::Updated {
                new: (_, Slot::Pending(flight)),
                ..
            } => flight.previous.clone(),
            _ => None,
        };
        match outcome {
            Compute::Aborted(role) => role,
            Compute::Updated {
                old: (_, Slot::Ready(stale)),
                ..
            } => Role::Lead(Leader {
                flight,
                sender,
                stale: Some(stale.clone()),
                previous,
            }),
            _ => Role::Lead(Leader {
                flight,
                sender,
                stale: None,
                previous,
            }),
        }
    }

    async fn lead(&self, id: &KeyId, leader: Leader) -> Lookup {
        // If this request is dropped mid-query, the guard takes the
        // pending slot away, and those waiting on it try again.
        let mut guard = PendingGuard {
            map: &self.map,
            id: *id,
            flight: leader.flight,
            armed: true,
        };
        let result = self.call("find", Some(id), self.backend.find(id)).await;
        guard.armed = false;
        match result {
            Ok(record) => {
                let record = record.map(|record| adopt(record, leader.previous.as_ref()));
                let entry = Entry {
                    record: record.clone(),
                    fetched: self.now(),
                };
                self.settle(*id, leader.flight, Some(Slot::Ready(entry)));
                leader.sender.send_replace(Some(Ok(record.clone())));
                self.shrink();
                Ok(record)
            }
            Err(error) => {
                if let Some(stale) = leader.stale.filter(|stale| self.may_serve_stale(stale)) {
                    bump(&self.counters.stale_served);
                    #[cfg(feature = "metrics")]
                    crate::metrics::cache_stale_served();
                    tracing::warn!(
                        target: "keyward::store",
                        key_id = %id,
                        "key store failed; answering from an expired cache entry (serve_stale_on_error)"
                    );
                    let record = stale.record.clone();
                    self.settle(*id, leader.flight, Some(Slot::Ready(stale)));
                    leader.sender.send_replace(Some(Ok(record.clone())));
                    return Ok(record);
                }
                self.settle(*id, leader.flight, None);
                let error = Arc::new(error);
                leader.sender.send_replace(Some(Err(Arc::clone(&error))));
                Err(StoreError::unshare(error))
            }
        }
    }

    fn may_serve_stale(&self, stale: &Entry) -> bool {
        let Some(stale_for) = self.config.stale_for else {
            return false;
        };
        let Some(record) = &stale.record else {
            return false;
        };
        record.status != KeyStatus::Revoked
            && self.age(stale, self.now()) < self.config.ttl.saturating_add(stale_for)
    }

    async fn write(
        &self,
        what: &'static str,
        id: KeyId,
        call: impl Future<Output = Result<(), StoreError>>,
    ) -> Result<(), StoreError> {
        let result = self.call(what, Some(&id), call).await;
        // Dropped even when the write failed or timed out: it may have
        // happened all the same.
        self.drop_entry(&id);
        if matches!(result, Ok(()) | Err(StoreError::Timeout(_))) {
            self.announce(id).await;
        }
        result
    }

    async fn announce(&self, id: KeyId) {
        let Some(invalidation) = &self.invalidation else {
            return;
        };
        let announced = tokio::time::timeout(self.config.timeout, invalidation.announce(&id)).await;
        let error = match announced {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error,
            Err(_) => StoreError::Timeout(self.config.timeout),
        };
        bump(&self.counters.announce_errors);
        // The write stands; other processes see it within their TTL (or
        // their untrusted TTL, if their subscription dropped too).
        tracing::warn!(
            target: "keyward::store",
            key_id = %id,
            error = &error as &dyn std::error::Error,
            "could not announce a key change to other processes"
        );
    }
}

enum Role {
    Hit(Option<Arc<KeyRecord>>),
    Join(watch::Receiver<Option<Shared>>),
    Lead(Leader),
}

struct Leader {
    flight: u64,
    sender: watch::Sender<Option<Shared>>,
    stale: Option<Entry>,
    /// See [`Flight::previous`].
    previous: Option<Arc<KeyRecord>>,
}

impl Slot {
    /// The record whose rate state a request spent on, if this slot holds
    /// one (a pending query holds the one it replaces).
    fn spent_record(&self) -> Option<&Arc<KeyRecord>> {
        let record = match self {
            Slot::Ready(entry) => entry.record.as_ref(),
            Slot::Pending(flight) => flight.previous.as_ref(),
            Slot::Gone(record) => Some(record),
        };
        record.filter(|record| record.limit_cell.is_spent())
    }

    /// What dropping this slot leaves: the record whose rate state was
    /// spent on, as [`Slot::Gone`], else nothing.
    fn dropped<T>(&self) -> Operation<Slot, T> {
        match self.spent_record() {
            Some(record) => Operation::Insert(Slot::Gone(Arc::clone(record))),
            None => Operation::Remove,
        }
    }
}

/// A fetched record as the cache keeps it: with the rate state of the
/// record it replaces, if the rate policy is the same, else a fresh one.
/// A record the backend itself keeps in memory (a `MemoryStore`'s) has
/// its state already, and is kept as it is.
fn adopt(record: Arc<KeyRecord>, previous: Option<&Arc<KeyRecord>>) -> Arc<KeyRecord> {
    if record.limit_cell.is_stored() {
        return record;
    }
    let cell = match previous {
        Some(previous) => LimitCell::successor(previous, &record.limits),
        None => LimitCell::for_stored(&record.limits),
    };
    if !cell.is_stored() {
        return record;
    }
    let mut record = record;
    match Arc::get_mut(&mut record) {
        Some(unique) => {
            unique.limit_cell = cell;
            record
        }
        None => Arc::new(KeyRecord::clone(&record).with_limit_cell(cell)),
    }
}

struct PendingGuard<'a> {
    map: &'a papaya::HashMap<KeyId, Slot, KeyIdBuildHasher>,
    id: KeyId,
    flight: u64,
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let flight = self.flight;
        let map = self.map.pin();
        let _ = map.compute(self.id, |current| match current {
            Some((_, current @ Slot::Pending(pending))) if pending.id == flight => {
                current.dropped()
            }
            _ => Operation::Abort(()),
        });
    }
}

#[async_trait::async_trait]
impl<S: KeyStore> KeyStore for CachedStore<S> {
    async fn find(&self, id: &KeyId) -> Lookup {
        match self.inner.hit(id) {
            Some(record) => Ok(record),
            None => self.inner.miss(id).await,
        }
    }

    fn find_immediate(&self, id: &KeyId) -> Option<Lookup> {
        self.inner.hit(id).map(Ok)
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let id = record.id;
        let inner = &self.inner;
        inner
            .write("insert", id, inner.backend.insert(record))
            .await
    }

    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        let id = record.id;
        let inner = &self.inner;
        inner
            .write("update", id, inner.backend.update(record))
            .await
    }

    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner
            .write("revoke", *id, inner.backend.revoke(id, at))
            .await
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        let inner = &self.inner;
        inner
            .call("list_by_owner", None, inner.backend.list_by_owner(owner))
            .await
    }

    /// Asks the backend the first time; remembers the hash's id, so that
    /// later look-ups are id look-ups (cached, invalidated like every
    /// record). Unknown hashes are not cached: each one asks the backend
    /// (the failure throttle bounds a guesser).
    async fn find_by_hash(&self, hash: &KeyHash) -> Lookup {
        let inner = &self.inner;
        let known = inner.imported.pin().get(hash.as_bytes()).copied();
        if let Some(id) = known {
            match self.find(&id).await? {
                Some(record) if record.hash == *hash => return Ok(Some(record)),
                // Gone, or its hash changed: ask the backend again.
                _ => {
                    inner.imported.pin().remove(hash.as_bytes());
                }
            }
        }
        let found = inner
            .call("find_by_hash", None, inner.backend.find_by_hash(hash))
            .await?;
        if let Some(record) = &found {
            let imported = inner.imported.pin();
            if imported.len() >= inner.config.capacity {
                // Bounded like the record cache; a forgotten hash only
                // costs one more backend look-up.
                imported.clear();
            }
            imported.insert(*hash.as_bytes(), record.id);
        }
        Ok(found)
    }
}

impl<S: fmt::Debug> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("backend", &self.inner.backend)
            .field("len", &self.inner.map.len())
            .field("trusted", &self.inner.trusted.load(Ordering::Relaxed))
            .field("invalidation", &self.inner.invalidation)
            .finish_non_exhaustive()
    }
}

impl<S: fmt::Debug> fmt::Debug for CachedStoreBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStoreBuilder")
            .field("backend", &self.backend)
            .field("config", &self.config)
            .field("system_clock", &self.system_clock)
            .field("invalidation", &self.invalidation)
            .finish_non_exhaustive()
    }
}
