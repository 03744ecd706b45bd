//! CachedStore: hits without a future, TTLs, single flight, failures as
//! 503 (never 401), announcements and a lost subscription.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::{routing::get, Router};
use http::{Request, StatusCode};
use keyward::clock::FakeClock;
use keyward::key::{KeyFormat, KeyGenerator, KeyHasher, KeyId};
use keyward::record::KeyRecord;
use keyward::store::invalidation::{Invalidation, LocalInvalidation};
use keyward::store::{conformance, CachedStore, KeyStore, Lookup, MemoryStore, StoreError};
use keyward::{ApiKey, AuthLayer, KeyManager, KeyStatus};
use tokio::sync::Notify;
use tower::ServiceExt;

/// What the test backend does on `find`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Answer,
    Fail,
    Hang,
    /// Waits for `release` before answering.
    Gate,
}

/// A MemoryStore that counts look-ups and can fail, hang or wait.
#[derive(Debug, Clone)]
struct Backend {
    store: MemoryStore,
    finds: Arc<AtomicUsize>,
    mode: Arc<Mutex<Mode>>,
    gate: Arc<Notify>,
}

#[derive(Debug, thiserror::Error)]
#[error("the test backend is down")]
struct Down;

impl Backend {
    fn new() -> Self {
        Self {
            store: MemoryStore::new(),
            finds: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Answer)),
            gate: Arc::default(),
        }
    }
    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
    fn finds(&self) -> usize {
        self.finds.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl KeyStore for Backend {
    async fn find(&self, id: &KeyId) -> Lookup {
        self.finds.fetch_add(1, Ordering::SeqCst);
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Answer => {}
            Mode::Fail => return Err(StoreError::backend(Down)),
            Mode::Hang => std::future::pending::<()>().await,
            Mode::Gate => self.gate.notified().await,
        }
        self.store.find(id).await
    }
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.store.insert(record).await
    }
    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.store.update(record).await
    }
    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
        self.store.revoke(id, at).await
    }
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        self.store.list_by_owner(owner).await
    }
}

fn format() -> KeyFormat {
    KeyFormat::new("sk_test").unwrap()
}

async fn issue(store: &impl KeyStore, clock: &FakeClock) -> (ApiKey, KeyRecord) {
    use keyward::clock::Clock;
    let key = KeyGenerator::new(format()).generate().unwrap();
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "acme",
        clock.now(),
    );
    store.insert(record.clone()).await.unwrap();
    (key, record)
}

fn unknown_id() -> KeyId {
    KeyGenerator::new(format()).generate().unwrap().id()
}

/// Lets the other tasks (the cache's listener) run until `done` holds,
/// for at most 5 s.
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..5000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn cached_store_conforms_over_memory() {
    let store = CachedStore::builder(MemoryStore::new())
        .invalidation(LocalInvalidation::new())
        .build();
    conformance::run(&store).await;
    conformance::run(&CachedStore::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn local_invalidation_conforms() {
    let channel = LocalInvalidation::new();
    conformance::invalidation(&channel, &channel.clone()).await;
}

#[tokio::test]
async fn a_hit_needs_no_future_and_no_backend_query() {
    let clock = FakeClock::default();
    let backend = Backend::new();
    let cache = CachedStore::builder(backend.clone())
        .clock(clock.clone())
        .ttl(Duration::from_secs(60))
        .build();
    let (_, record) = issue(&cache, &clock).await;
    assert!(cache.find_immediate(&record.id).is_none(), "not cached yet");
    assert_eq!(*cache.find(&record.id).await.unwrap().unwrap(), record);
    for _ in 0..10 {
        let hit = cache.find_immediate(&record.id).expect("a hit").unwrap();
        assert_eq!(*hit.unwrap(), record);
    }
    assert_eq!(backend.finds(), 1);

    clock.advance(Duration::from_secs(60));
    assert!(
        cache.find_immediate(&record.id).is_none(),
        "expired after the TTL"
    );
    cache.find(&record.id).await.unwrap();
    assert_eq!(backend.finds(), 2);
}

#[tokio::test]
async fn unknown_ids_are_cached_for_the_shorter_ttl() {
    let clock = FakeClock::default();
    let backend = Backend::new();
    let cache = CachedStore::builder(backend.clone())
        .clock(clock.clone())
        .negative_ttl(Duration::from_secs(2))
        .build();
    let id = unknown_id();
    assert!(cache.find(&id).await.unwrap().is_none());
    assert!(matches!(cache.find_immediate(&id), Some(Ok(None))));
    assert_eq!(backend.finds(), 1);
    clock.advance(Duration::from_secs(2));
    assert!(cache.find_immediate(&id).is_none());

    // A key issued through the cache is not hidden by its earlier "unknown".
    let other = unknown_id();
    assert!(cache.find(&other).await.unwrap().is_none());
    let record = KeyRecord::new(
        other,
        KeyHasher::sha256().hash("x"),
        "acme",
        SystemTime::now(),
    );
    cache.insert(record.clone()).await.unwrap();
    assert_eq!(*cache.find(&other).await.unwrap().unwrap(), record);
}

/// An id the cache holds as unknown is answered at once, and checked
/// against a stand-in record: it is refused as unknown, whatever the
/// secret (a known key's included) and whatever the hasher, and a known id
/// beside it still authenticates.
#[tokio::test]
async fn an_id_cached_as_unknown_is_refused_as_unknown() {
    use keyward::auth::Authenticator;
    use keyward::key::PepperId;
    use keyward::RejectReason;

    let clock = FakeClock::default();
    let backend = Backend::new();
    let cache = CachedStore::builder(backend.clone())
        .clock(clock.clone())
        .build();
    let (key, _) = issue(&cache, &clock).await;
    let generator = KeyGenerator::new(format());
    let unknown = generator.generate().unwrap();
    assert!(cache.find(&unknown.id()).await.unwrap().is_none());
    assert!(cache.find(&key.id()).await.unwrap().is_some());
    let finds = backend.finds();

    let plain = Authenticator::new(cache.clone(), format());
    let peppered = Authenticator::new(cache.clone(), format())
        .with_hasher(KeyHasher::with_pepper(PepperId::new(7), b"pepper"));
    for auth in [&plain, &peppered] {
        let refused = auth
            .authenticate(unknown.expose_secret())
            .await
            .unwrap_err();
        assert_eq!(refused.reason(), RejectReason::UnknownKey);
        // The known key's secret under the unknown id: still unknown.
        let borrowed = format().key_from_parts(unknown.id(), key.secret()).unwrap();
        let refused = auth
            .authenticate(borrowed.expose_secret())
            .await
            .unwrap_err();
        assert_eq!(refused.reason(), RejectReason::UnknownKey);
    }
    assert_eq!(
        plain
            .authenticate(key.expose_secret())
            .await
            .unwrap()
            .key_id(),
        key.id()
    );
    assert_eq!(backend.finds(), finds, "answered from the cache");
    assert!(matches!(
        cache.find_immediate(&unknown.id()),
        Some(Ok(None))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_id_make_one_query() {
    let clock = FakeClock::default();
    let backend = Backend::new();
    let cache = CachedStore::new(backend.clone());
    let (_, record) = issue(&cache, &clock).await;
    backend.set(Mode::Gate);
    let lookups: Vec<_> = (0..16)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.find(&record.id).await })
        })
        .collect();
    until(|| backend.finds() >= 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await; // let the others queue up
    backend.gate.notify_waiters();
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap().unwrap().unwrap().id, record.id);
    }
    assert_eq!(backend.finds(), 1, "one query for sixteen misses");
}

#[tokio::test]
async fn a_dropped_leader_does_not_strand_the_others() {
    let clock = FakeClock::default();
    let backend = Backend::new();
    let cache = CachedStore::new(backend.clone());
    let (_, record) = issue(&cache, &clock).await;
    backend.set(Mode::Gate);
    let leader = tokio::spawn({
        let cache = cache.clone();
        async move { cache.find(&record.id).await }
    });
    until(|| backend.finds() == 1).await;
    let follower = tokio::spawn({
        let cache = cache.clone();
        async move { cache.find(&record.id).await }
    });
    tokio::task::yield_now().await;
    backend.set(Mode::Answer); // for the follower's own query
    leader.abort();
    let _ = leader.await;
    let found = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("the follower asks again")
        .unwrap();
    assert_eq!(found.unwrap().unwrap().id, record.id);
}

#[tokio::test(start_paused = true)]
async fn a_failing_or_hanging_backend_is_an_error_within_the_timeout_never_unknown() {
    let clock = FakeClock::default();
    let backend = Backend::new();
    let cache = CachedStore::builder(backend.clone())
        .timeout(Duration::from_millis(300))
        .build();
    let (key, record) = issue(&cache, &clock).await;

    backend.set(Mode::Fail);
    assert!(matches!(
        cache.find(&record.id).await,
        Err(StoreError::Backend(_))
    ));
    assert!(
        cache.find_immediate(&record.id).is_none(),
        "errors are not cached"
    );

    backend.set(Mode::Hang);
    let started = tokio::time::Instant::now();
    assert!(matches!(
        cache.find(&record.id).await,
        Err(StoreError::Timeout(_))
    ));
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    let stats = cache.stats();
    assert_eq!((stats.errors, stats.timeouts), (1, 1));

    // Through the layer: 503, not 401.
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(AuthLayer::new(cache.clone(), format()));
    let response = app
        .oneshot(
            Request::get("/")
                .header("x-api-key", key.expose_secret())
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn stale_entries_serve_only_when_asked_within_bounds_and_never_revoked() {
    let clock = FakeClock::default();
    let backend = Backend::new();
    let cache = CachedStore::builder(backend.clone())
        .clock(clock.clone())
        .ttl(Duration::from_secs(10))
        .serve_stale_on_error(Duration::from_secs(60))
        .build();
    let (_, record) = issue(&cache, &clock).await;
    let (_, revoked) = issue(&cache, &clock).await;
    backend
        .revoke(&revoked.id, clock_now(&clock))
        .await
        .unwrap();
    cache.find(&record.id).await.unwrap();
    cache.find(&revoked.id).await.unwrap();

    backend.set(Mode::Fail);
    clock.advance(Duration::from_secs(30));
    let stale = cache.find(&record.id).await.expect("served stale");
    assert_eq!(stale.unwrap().id, record.id);
    assert_eq!(cache.stats().stale_served, 1);
    assert!(
        cache.find(&revoked.id).await.is_err(),
        "never a record known to be revoked"
    );
    clock.advance(Duration::from_secs(40)); // 70 s old: past ttl + max_age
    assert!(cache.find(&record.id).await.is_err());

    // Without the option, a failing backend is an error.
    let strict = CachedStore::builder(backend.clone())
        .clock(clock.clone())
        .build();
    backend.set(Mode::Answer);
    strict.find(&record.id).await.unwrap();
    backend.set(Mode::Fail);
    clock.advance(Duration::from_secs(31));
    assert!(strict.find(&record.id).await.is_err());
}

fn clock_now(clock: &FakeClock) -> SystemTime {
    use keyward::clock::Clock;
    clock.now()
}

#[tokio::test]
async fn a_revocation_through_one_cache_reaches_the_other_at_once() {
    let clock = FakeClock::default();
    let shared = MemoryStore::new();
    let channel = LocalInvalidation::new();
    let cache_a = CachedStore::builder(shared.clone())
        .invalidation(channel.clone())
        .build();
    let cache_b = CachedStore::builder(shared.clone())
        .invalidation(channel.clone())
        .ttl(Duration::from_secs(3600))
        .build();
    until(|| cache_a.is_trusted() && cache_b.is_trusted()).await;

    let manager = KeyManager::new(cache_a.clone(), format()).with_clock(clock.clone());
    let issued = manager
        .issue(keyward::manager::IssueOptions::new("acme"))
        .await
        .unwrap();
    let id = issued.record.id;
    assert_eq!(
        cache_b.find(&id).await.unwrap().unwrap().status,
        KeyStatus::Active
    );
    assert!(cache_b.find_immediate(&id).is_some());

    manager.revoke(&id).await.unwrap();
    until(|| cache_b.find_immediate(&id).is_none()).await;
    assert_eq!(
        cache_b.find(&id).await.unwrap().unwrap().status,
        KeyStatus::Revoked
    );
    assert!(cache_b.stats().invalidations >= 2, "issue and revoke heard");
}

#[tokio::test]
async fn a_lost_subscription_shortens_trust_and_reconnecting_clears_once() {
    let clock = FakeClock::default();
    let backend = Backend::new();
    let channel = LocalInvalidation::new();
    let cache = CachedStore::builder(backend.clone())
        .clock(clock.clone())
        .ttl(Duration::from_secs(3600))
        .untrusted_ttl(Duration::from_secs(1))
        .invalidation(channel.clone())
        .build();
    until(|| cache.is_trusted()).await;
    let clears = cache.stats().clears;
    assert_eq!(clears, 1, "cleared when first subscribed");
    let (_, record) = issue(&cache, &clock).await;
    // The cache hears its own announcement too.
    until(|| cache.stats().invalidations == 1).await;
    cache.find(&record.id).await.unwrap();

    channel.disconnect();
    until(|| !cache.is_trusted()).await;
    assert!(cache.find_immediate(&record.id).is_some(), "still fresh");
    clock.advance(Duration::from_secs(1));
    assert!(
        cache.find_immediate(&record.id).is_none(),
        "trusted only for the untrusted TTL while the subscription is down"
    );
    cache.find(&record.id).await.unwrap();
    assert_eq!(cache.stats().disconnects, 1);

    channel.reconnect();
    until(|| cache.is_trusted()).await;
    assert_eq!(
        cache.stats().clears,
        clears + 1,
        "cleared once on reconnecting"
    );
    assert!(cache.is_empty());
    cache.find(&record.id).await.unwrap();
    clock.advance(Duration::from_secs(60));
    assert!(cache.find_immediate(&record.id).is_some(), "full TTL again");
}

#[tokio::test]
async fn before_the_first_subscription_entries_are_trusted_briefly() {
    let clock = FakeClock::default();

    /// An invalidation that never connects.
    #[derive(Debug)]
    struct Never(Mutex<Vec<keyward::store::invalidation::SubscriptionSender>>);
    #[async_trait::async_trait]
    impl Invalidation for Never {
        async fn announce(&self, _: &KeyId) -> Result<(), StoreError> {
            Err(StoreError::backend(Down))
        }
        fn subscribe(&self) -> keyward::store::invalidation::Subscription {
            let (sender, subscription) = keyward::store::invalidation::Subscription::channel();
            self.0.lock().unwrap().push(sender);
            subscription
        }
    }

    let cache = CachedStore::builder(MemoryStore::new())
        .clock(clock.clone())
        .untrusted_ttl(Duration::from_millis(500))
        .invalidation(Never(Mutex::default()))
        .build();
    assert!(!cache.is_trusted());
    let (_, record) = issue(&cache, &clock).await;
    assert_eq!(
        cache.stats().announce_errors,
        1,
        "the write stands; the failed announcement is counted"
    );
    cache.find(&record.id).await.unwrap();
    clock.advance(Duration::from_millis(500));
    assert!(cache.find_immediate(&record.id).is_none());
}

#[tokio::test]
async fn the_cache_stays_within_its_capacity() {
    let clock = FakeClock::default();
    let cache = CachedStore::builder(MemoryStore::new())
        .capacity(50)
        .build();
    for _ in 0..500 {
        let (_, record) = issue(cache.backend(), &clock).await;
        cache.find(&record.id).await.unwrap();
        cache.find(&unknown_id()).await.unwrap();
    }
    assert!(cache.len() <= 51, "{} entries", cache.len());
    assert!(cache.stats().evictions >= 900);
}

#[tokio::test]
async fn debug_shows_no_record_contents() {
    let clock = FakeClock::default();
    let cache = CachedStore::new(MemoryStore::new());
    let (key, record) = issue(&cache, &clock).await;
    cache.find(&record.id).await.unwrap();
    let shown = format!("{cache:?} {:?}", cache.stats());
    assert!(!shown.contains(key.secret()));
    assert!(!shown.contains(&record.hash.to_string()));
}

/// A backend that hands out a new record on every look-up, as a database
/// does (`PgStore`, `RedisStore`); while `gated`, a look-up waits for
/// `gate` after reading.
#[derive(Debug, Clone, Default)]
struct Fresh(
    MemoryStore,
    Arc<Notify>,
    Arc<std::sync::atomic::AtomicBool>,
    Arc<AtomicUsize>,
);

#[async_trait::async_trait]
impl KeyStore for Fresh {
    async fn find(&self, id: &KeyId) -> Lookup {
        let found = self.0.find(id).await?;
        self.3.fetch_add(1, Ordering::SeqCst);
        if self.2.load(Ordering::SeqCst) {
            self.1.notified().await;
        }
        Ok(found.map(|record| Arc::new(KeyRecord::clone(&record))))
    }
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.0.insert(record).await
    }
    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.0.update(record).await
    }
    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
        self.0.revoke(id, at).await
    }
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        self.0.list_by_owner(owner).await
    }
}

/// The rate state of a key with one rate policy lives in the cached
/// record: a refresh (expiry), a write through this cache, a change
/// announced by another process, an eviction and a clear each fetch a new
/// record, and none of them resets the budget; the limiter's table holds
/// nothing for the key.
#[tokio::test]
async fn no_refresh_of_a_record_resets_its_rate_budget() {
    use keyward::limit::{Limiter, Limits, MemoryLimiter, RatePolicy};
    let clock = FakeClock::default();
    let backend = Fresh::default();
    let channel = LocalInvalidation::new();
    let cache = CachedStore::builder(backend.clone())
        .clock(clock.clone())
        .ttl(Duration::from_secs(30))
        .invalidation(channel.clone())
        .build();
    let other = CachedStore::builder(backend.clone())
        .clock(clock.clone())
        .invalidation(channel.clone())
        .build();
    until(|| cache.is_trusted() && other.is_trusted()).await;
    let (_, record) = issue(&backend, &clock).await;
    let limits = Limits::new([RatePolicy::new("hourly", 6, Duration::from_secs(3600))
        .unwrap()
        .into()])
    .unwrap();
    let mut record = record.with_limits(limits);
    backend.update(record.clone()).await.unwrap();
    let id = record.id;

    let limiter = MemoryLimiter::new().with_clock(clock.clone());
    let spend = || async {
        let found = cache.find(&id).await.unwrap().unwrap();
        let principal = keyward::Principal::new(found);
        let decision = limiter.check_principal_immediate(&principal, 1).unwrap();
        decision.unwrap().is_allowed()
    };
    assert!(spend().await);
    clock.advance(Duration::from_secs(31)); // expired: refreshed
    assert!(spend().await);
    record.name = "renamed".into(); // a write through this cache
    cache.update(record.clone()).await.unwrap();
    assert!(spend().await);
    record.name = "again".into(); // a change announced by another process
    other.update(record.clone()).await.unwrap();
    until(|| cache.find_immediate(&id).is_none()).await;
    assert!(spend().await);
    cache.evict(&id);
    assert!(spend().await);
    cache.clear();
    assert!(spend().await);
    assert!(!spend().await, "six an hour, six spent");
    assert_eq!(limiter.tracked_keys(), 0);

    // A new policy starts full.
    record.limits = Limits::new([RatePolicy::new("hourly", 7, Duration::from_secs(3600))
        .unwrap()
        .into()])
    .unwrap();
    cache.update(record).await.unwrap();
    assert!(spend().await);
}

/// A refresh that keeps the policy frees the record it replaced (its
/// memory, and any secret it held): the new record shares a state of its
/// own, which a request still holding the old record spends on too.
#[tokio::test]
async fn a_refresh_frees_the_record_it_replaced_and_keeps_the_budget() {
    use keyward::limit::{Limiter, Limits, MemoryLimiter, RatePolicy};
    let clock = FakeClock::default();
    let backend = Fresh::default();
    let cache = CachedStore::builder(backend.clone())
        .clock(clock.clone())
        .ttl(Duration::from_secs(30))
        .build();
    let (_, record) = issue(&backend, &clock).await;
    let limits = Limits::new([RatePolicy::new("hourly", 3, Duration::from_secs(3600))
        .unwrap()
        .into()])
    .unwrap();
    backend
        .update(record.clone().with_limits(limits))
        .await
        .unwrap();
    let id = record.id;
    let limiter = MemoryLimiter::new().with_clock(clock.clone());
    let spend = |record: &Arc<KeyRecord>| {
        let principal = keyward::Principal::new(record.clone());
        let decision = limiter.check_principal_immediate(&principal, 1).unwrap();
        decision.unwrap().is_allowed()
    };

    let old = cache.find(&id).await.unwrap().unwrap();
    assert!(spend(&old));
    clock.advance(Duration::from_secs(31)); // expired: refreshed
    let new = cache.find(&id).await.unwrap().unwrap();
    assert!(!Arc::ptr_eq(&old, &new));
    assert!(spend(&old), "held across the refresh: the same budget");
    // The cache's map frees the slots it replaced in batches (papaya's
    // deferred reclamation): look-ups of other ids let it.
    for _ in 0..100 {
        cache.find(&unknown_id()).await.unwrap();
    }
    assert_eq!(Arc::strong_count(&old), 1, "the cache holds none");
    let freed = Arc::downgrade(&old);
    drop(old);
    assert!(freed.upgrade().is_none());
    assert!(spend(&new));
    assert!(!spend(&new), "three an hour, three spent");
    assert_eq!(limiter.tracked_keys(), 0);
}

/// A key's change announced while the cache fetches its record: the
/// requests that waited on that fetch spend on its record's state, and the
/// key's next record takes that state on.
#[tokio::test]
async fn a_record_fetched_while_its_key_changes_keeps_its_spends() {
    use keyward::limit::{Limiter, Limits, MemoryLimiter, RatePolicy};
    let clock = FakeClock::default();
    let backend = Fresh::default();
    let cache = CachedStore::builder(backend.clone())
        .clock(clock.clone())
        .build();
    let (_, record) = issue(&backend, &clock).await;
    let limits = Limits::new([RatePolicy::new("hourly", 2, Duration::from_secs(3600))
        .unwrap()
        .into()])
    .unwrap();
    backend
        .update(record.clone().with_limits(limits))
        .await
        .unwrap();
    let id = record.id;
    let limiter = MemoryLimiter::new().with_clock(clock.clone());
    let spend = |record: Arc<KeyRecord>| {
        let principal = keyward::Principal::new(record);
        let decision = limiter.check_principal_immediate(&principal, 1).unwrap();
        decision.unwrap().is_allowed()
    };

    backend.2.store(true, Ordering::SeqCst);
    let fetching = tokio::spawn({
        let cache = cache.clone();
        async move { cache.find(&id).await }
    });
    until(|| backend.3.load(Ordering::SeqCst) == 1).await;
    cache.evict(&id); // the change is announced mid-query
    backend.2.store(false, Ordering::SeqCst);
    backend.1.notify_one();
    let fetched = fetching.await.unwrap().unwrap().unwrap();
    assert!(spend(fetched));
    assert!(spend(cache.find(&id).await.unwrap().unwrap()));
    assert!(
        !spend(cache.find(&id).await.unwrap().unwrap()),
        "two an hour, two spent"
    );
    assert_eq!(backend.3.load(Ordering::SeqCst), 2, "fetched again");
}
