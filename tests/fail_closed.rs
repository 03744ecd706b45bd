//! Fail closed, everywhere: a key store, limiter or usage sink that
//! panics, hangs or fails never lets a request through and never takes the
//! service down. A failing store or limiter is a `503` (the handler never
//! runs), and the next request, once the dependency recovers, is served;
//! a panicking sink loses its events, never the response. Through a real
//! axum `Router` and a `service_fn`, with the public API only; hangs on
//! tokio's paused clock.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, Response, StatusCode};
use keyward::auth::{Authenticator, DEFAULT_STORE_TIMEOUT};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher, KeyId};
use keyward::limit::{
    Decision, LimitError, Limiter, Limits, MemoryLimiter, RatePolicy, DEFAULT_LIMITER_TIMEOUT,
};
use keyward::record::KeyRecord;
use keyward::reject::{RejectReason, Rejection};
use keyward::store::{KeyStore, Lookup, MemoryStore, StoreError};
use keyward::usage::{sink_fn, UsageEvent, UsageLayer};
use keyward::{AuthLayer, RateLimitLayer};
use support::CapturedLogs;
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// How a fake dependency behaves for the next calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Answers as the real one (the in-memory one, at once).
    Fine,
    /// Answers only through its async method, as a remote backend.
    FineAsync,
    /// Panics in its synchronous method.
    PanicAtOnce,
    /// Panics while awaited.
    PanicAsync,
    /// Never answers.
    Hang,
    /// Answers an error.
    Fail,
}

#[derive(Debug, Default)]
struct Switch(AtomicU8);

impl Switch {
    fn set(&self, mode: Mode) {
        self.0.store(mode as u8, Ordering::SeqCst);
    }
    fn get(&self) -> Mode {
        const MODES: [Mode; 6] = [
            Mode::Fine,
            Mode::FineAsync,
            Mode::PanicAtOnce,
            Mode::PanicAsync,
            Mode::Hang,
            Mode::Fail,
        ];
        MODES[usize::from(self.0.load(Ordering::SeqCst))]
    }
}

#[derive(Debug, thiserror::Error)]
#[error("connection refused")]
struct Refused;

/// A `MemoryStore` whose look-ups can be made to fail in every way.
#[derive(Debug, Clone)]
struct FaultyStore {
    inner: MemoryStore,
    mode: Arc<Switch>,
}

#[keyward::async_trait]
impl KeyStore for FaultyStore {
    async fn find(&self, id: &KeyId) -> Lookup {
        match self.mode.get() {
            Mode::PanicAsync => panic!("store fault injected (async)"),
            Mode::Hang => std::future::pending().await,
            Mode::Fail => Err(StoreError::backend(Refused)),
            _ => self.inner.find(id).await,
        }
    }
    fn find_immediate(&self, id: &KeyId) -> Option<Lookup> {
        match self.mode.get() {
            Mode::Fine => self.inner.find_immediate(id),
            Mode::PanicAtOnce => panic!("store fault injected"),
            _ => None,
        }
    }
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.inner.insert(record).await
    }
    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.inner.update(record).await
    }
    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
        self.inner.revoke(id, at).await
    }
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        self.inner.list_by_owner(owner).await
    }
}

/// A `MemoryLimiter` that can be made to fail in every way.
#[derive(Debug, Clone)]
struct FaultyLimiter {
    inner: MemoryLimiter,
    mode: Arc<Switch>,
}

#[keyward::async_trait]
impl Limiter for FaultyLimiter {
    async fn check(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError> {
        match self.mode.get() {
            Mode::PanicAsync => panic!("limiter fault injected (async)"),
            Mode::Hang => std::future::pending().await,
            Mode::Fail => Err(LimitError::backend(Refused)),
            _ => self.inner.check(id, limits, cost).await,
        }
    }
    fn check_immediate(
        &self,
        id: &KeyId,
        limits: &Limits,
        cost: u32,
    ) -> Option<Result<Decision, LimitError>> {
        match self.mode.get() {
            Mode::Fine => self.inner.check_immediate(id, limits, cost),
            Mode::PanicAtOnce => panic!("limiter fault injected"),
            _ => None,
        }
    }
}

struct Fixture {
    format: KeyFormat,
    key: ApiKey,
    store: FaultyStore,
    limiter: FaultyLimiter,
    /// Requests that reached the handler.
    served: Arc<AtomicUsize>,
}

impl Fixture {
    async fn new() -> Self {
        let format = KeyFormat::new("sk_test").unwrap();
        let key = KeyGenerator::new(format.clone()).generate().unwrap();
        let limits = Limits::new([RatePolicy::new("burst", 1_000, Duration::from_secs(1))
            .unwrap()
            .into()])
        .unwrap();
        let record = KeyRecord::new(
            key.id(),
            KeyHasher::sha256().hash(key.secret()),
            "acme",
            SystemTime::now(),
        )
        .with_limits(limits);
        let store = MemoryStore::new();
        store.insert(record).await.unwrap();
        Self {
            format,
            key,
            store: FaultyStore {
                inner: store,
                mode: Arc::default(),
            },
            limiter: FaultyLimiter {
                inner: MemoryLimiter::new(),
                mode: Arc::default(),
            },
            served: Arc::default(),
        }
    }

    /// The whole stack on a router whose handler counts its calls.
    fn app(&self, usage: impl keyward::usage::UsageSink) -> Router {
        let served = Arc::clone(&self.served);
        let handler = move || {
            let served = Arc::clone(&served);
            async move {
                served.fetch_add(1, Ordering::SeqCst);
                "[]"
            }
        };
        Router::new().route("/pets", get(handler)).layer(
            ServiceBuilder::new()
                .layer(UsageLayer::new(usage))
                .layer(AuthLayer::new(self.store.clone(), self.format.clone()))
                .layer(RateLimitLayer::new(self.limiter.clone())),
        )
    }

    fn request(&self) -> Request<Body> {
        Request::get("/pets")
            .header(
                "authorization",
                format!("Bearer {}", self.key.expose_secret()),
            )
            .body(Body::empty())
            .unwrap()
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

fn reason<B>(response: &Response<B>) -> Option<RejectReason> {
    response
        .extensions()
        .get::<Rejection>()
        .map(Rejection::reason)
}

#[tokio::test]
async fn a_store_that_panics_or_fails_is_a_503_and_the_service_goes_on() {
    let f = Fixture::new().await;
    let app = f.app(());
    for (round, mode) in [Mode::PanicAtOnce, Mode::PanicAsync, Mode::Fail]
        .into_iter()
        .enumerate()
    {
        f.store.mode.set(mode);
        let response = app.clone().oneshot(f.request()).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{mode:?}"
        );
        assert_eq!(reason(&response), Some(RejectReason::StoreUnavailable));
        assert_eq!(f.served(), 2 * round, "{mode:?} reached the handler");
        // Recovered: the same service serves the next request.
        for recovered in [Mode::Fine, Mode::FineAsync] {
            f.store.mode.set(recovered);
            let response = app.clone().oneshot(f.request()).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "after {mode:?}");
        }
    }
    assert_eq!(f.served(), 6);
}

#[tokio::test]
async fn a_limiter_that_panics_or_fails_is_a_503_and_the_service_goes_on() {
    let f = Fixture::new().await;
    let app = f.app(());
    for (round, mode) in [Mode::PanicAtOnce, Mode::PanicAsync, Mode::Fail]
        .into_iter()
        .enumerate()
    {
        f.limiter.mode.set(mode);
        let response = app.clone().oneshot(f.request()).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{mode:?}"
        );
        assert_eq!(reason(&response), Some(RejectReason::LimiterUnavailable));
        assert_eq!(f.served(), 2 * round, "{mode:?} reached the handler");
        for recovered in [Mode::Fine, Mode::FineAsync] {
            f.limiter.mode.set(recovered);
            let response = app.clone().oneshot(f.request()).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "after {mode:?}");
        }
    }
    assert_eq!(f.served(), 6);
}

/// A store that never answers is cut by the default timeout (5 s of
/// tokio's paused clock), as is a limiter; a shorter one can be set.
#[tokio::test(start_paused = true)]
async fn a_hanging_store_or_limiter_is_cut_by_the_timeout() {
    let f = Fixture::new().await;
    let app = f.app(());
    f.store.mode.set(Mode::Hang);
    let started = tokio::time::Instant::now();
    let response = app.clone().oneshot(f.request()).await.unwrap();
    assert_eq!(started.elapsed(), DEFAULT_STORE_TIMEOUT);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reason(&response), Some(RejectReason::StoreUnavailable));

    f.store.mode.set(Mode::Fine);
    f.limiter.mode.set(Mode::Hang);
    let started = tokio::time::Instant::now();
    let response = app.clone().oneshot(f.request()).await.unwrap();
    assert_eq!(started.elapsed(), DEFAULT_LIMITER_TIMEOUT);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reason(&response), Some(RejectReason::LimiterUnavailable));
    assert_eq!(f.served(), 0);

    // Set shorter, on a service_fn.
    f.store.mode.set(Mode::Hang);
    let served = Arc::clone(&f.served);
    let service = ServiceBuilder::new()
        .layer(
            AuthLayer::new(f.store.clone(), f.format.clone())
                .store_timeout(Some(Duration::from_millis(250))),
        )
        .layer(RateLimitLayer::new(f.limiter.clone()).timeout(Some(Duration::from_millis(100))))
        .service(service_fn(move |_: Request<Body>| {
            served.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Body::empty())) }
        }));
    let started = tokio::time::Instant::now();
    let response = service.clone().oneshot(f.request()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(reason(&response), Some(RejectReason::StoreUnavailable));
    f.store.mode.set(Mode::FineAsync);
    let started = tokio::time::Instant::now();
    let response = service.clone().oneshot(f.request()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(reason(&response), Some(RejectReason::LimiterUnavailable));
    assert_eq!(f.served(), 0);
    f.limiter.mode.set(Mode::FineAsync);
    let response = service.oneshot(f.request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(f.served(), 1);
}

/// `Authenticator` on its own (no tower stack) fails closed the same way.
#[tokio::test(start_paused = true)]
async fn the_authenticator_alone_fails_closed() {
    let f = Fixture::new().await;
    let authenticator = Authenticator::new(f.store.clone(), f.format.clone());
    assert_eq!(authenticator.store_timeout(), Some(DEFAULT_STORE_TIMEOUT));
    for mode in [Mode::PanicAtOnce, Mode::PanicAsync, Mode::Fail, Mode::Hang] {
        f.store.mode.set(mode);
        let refused = authenticator
            .authenticate(f.key.expose_secret())
            .await
            .unwrap_err();
        assert_eq!(refused.reason(), RejectReason::StoreUnavailable, "{mode:?}");
    }
    f.store.mode.set(Mode::FineAsync);
    let principal = authenticator.authenticate(f.key.expose_secret()).await;
    assert_eq!(principal.unwrap().owner(), "acme");
    // No timeout at all: still waiting after a day.
    f.store.mode.set(Mode::Hang);
    let patient = authenticator.with_store_timeout(None);
    let waited = tokio::time::timeout(
        Duration::from_secs(86_400),
        patient.authenticate(f.key.expose_secret()),
    )
    .await;
    assert!(waited.is_err(), "a look-up without a timeout was cut");
}

/// A sink that panics on every event: every answer still goes out (an
/// allowed request, a refusal, a failed dependency), a request dropped
/// midway does not abort the process, and the panics are logged.
#[tokio::test]
async fn a_panicking_sink_loses_its_events_never_the_response() {
    let (logs, _guard) = CapturedLogs::start();
    let f = Fixture::new().await;
    let app = f.app(sink_fn(|_: UsageEvent| panic!("sink fault injected")));
    let response = app.clone().oneshot(f.request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let anonymous = Request::get("/pets").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(anonymous).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    f.store.mode.set(Mode::Fail);
    let response = app.clone().oneshot(f.request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Cancelled while the store hangs: the sink's panic comes from a drop.
    f.store.mode.set(Mode::Hang);
    let cut = tokio::time::timeout(Duration::from_millis(10), app.clone().oneshot(f.request()));
    assert!(cut.await.is_err(), "the look-up hangs");
    f.store.mode.set(Mode::Fine);
    let response = app.oneshot(f.request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(f.served(), 2);
    let logs = logs.text();
    assert!(
        logs.matches("usage sink panicked").count() >= 5,
        "each lost event is logged:\n{logs}"
    );
}

/// A sink that works is not disturbed by the guard: every event arrives.
#[tokio::test]
async fn a_working_sink_gets_every_event() {
    let f = Fixture::new().await;
    let events = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&events);
    let app = f.app(sink_fn(move |_: UsageEvent| {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    for _ in 0..3 {
        app.clone().oneshot(f.request()).await.unwrap();
    }
    f.store.mode.set(Mode::PanicAtOnce);
    app.oneshot(f.request()).await.unwrap();
    // Four requests, and the key's first use.
    assert_eq!(events.load(Ordering::SeqCst), 5);
}
