//! The metrics the layers report (feature `metrics`), read back from
//! `metrics-util`'s `DebuggingRecorder` installed for this thread only, so
//! that the tests run in parallel. Each test checks every metric that a
//! request moved, names, labels and values, and that nothing else moved.
#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use keyward::auth::client::ClientAddr;
use keyward::auth::origin::AllowedOrigin;
use keyward::auth::{FailureThrottle, Principal};
use keyward::clock::FakeClock;
use keyward::credential::{CredentialKind, RequestView, Verification, Verifier};
use keyward::key::{ApiKey, KeyId, LegacyAlphabet, LegacyFormat};
use keyward::limit::{CreditPolicy, Decision, LimitError, Limiter, Limits, RatePolicy};
use keyward::manager::{IssueOptions, KeyManager};
use keyward::record::KeyStatus;
use keyward::reject::{RejectReason, Rejection};
use keyward::store::{CachedStore, Lookup, StoreError};
use keyward::usage::{BatchingSink, Lifecycle, UsageEvent, UsageExporter, UsageSink};
use keyward::{
    AuthLayer, Environment, KeyFormat, KeyGenerator, KeyHash, KeyHasher, KeyRecord, KeyStore,
    MemoryLimiter, MemoryStore, RateLimitLayer,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use tower::ServiceExt;

/// What moved since the last look: counters by `name{label="value",...}`
/// (labels sorted), and the number of samples of each histogram.
#[derive(Debug, Default, PartialEq)]
struct Moved {
    counters: BTreeMap<String, u64>,
    histograms: BTreeMap<String, usize>,
}

/// A recorder for this thread (the tests run on current-thread runtimes,
/// so every layer and future reports here).
struct Recorded {
    snapshotter: Snapshotter,
    _guard: metrics::LocalRecorderGuard<'static>,
}

impl Recorded {
    fn start() -> Self {
        // Leaked: the guard borrows it for the whole test (a few bytes a test).
        let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
        Self {
            snapshotter: recorder.snapshotter(),
            _guard: metrics::set_default_local_recorder(recorder),
        }
    }

    /// What moved since the last call (the recorder resets on each look).
    fn take(&self) -> Moved {
        let mut moved = Moved::default();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<String> = key
                .labels()
                .map(|label| format!("{}=\"{}\"", label.key(), label.value()))
                .collect();
            labels.sort();
            let name = if labels.is_empty() {
                key.name().to_owned()
            } else {
                format!("{}{{{}}}", key.name(), labels.join(","))
            };
            match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(n)) if n > 0 => {
                    moved.counters.insert(name, n);
                }
                (MetricKind::Histogram, DebugValue::Histogram(samples)) if !samples.is_empty() => {
                    assert!(
                        samples
                            .iter()
                            .all(|s| s.into_inner() >= 0.0 && s.into_inner() < 60.0),
                        "{name}: {samples:?} are not seconds"
                    );
                    moved.histograms.insert(name, samples.len());
                }
                _ => {}
            }
        }
        moved
    }
}

fn counters<const N: usize>(entries: [(&str, u64); N]) -> BTreeMap<String, u64> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn histograms<const N: usize>(entries: [(&str, usize); N]) -> BTreeMap<String, usize> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn only_counters<const N: usize>(entries: [(&str, u64); N]) -> Moved {
    Moved {
        counters: counters(entries),
        histograms: BTreeMap::new(),
    }
}

/// An API key allowed.
const ALLOWED: &str =
    r#"keyward_auth_requests_total{credential="api_key",outcome="allowed",reason="none"}"#;

fn allowed_as(credential: &str) -> String {
    format!(
        r#"keyward_auth_requests_total{{credential="{credential}",outcome="allowed",reason="none"}}"#
    )
}

/// An API key refused.
fn rejected(reason: &str) -> String {
    rejected_as(reason, "api_key")
}

fn rejected_as(reason: &str, credential: &str) -> String {
    format!(
        r#"keyward_auth_requests_total{{credential="{credential}",outcome="rejected",reason="{reason}"}}"#
    )
}

fn format() -> KeyFormat {
    KeyFormat::new("sk_test").unwrap()
}

fn new_key() -> ApiKey {
    KeyGenerator::new(format()).generate().unwrap()
}

fn record_for(key: &ApiKey) -> KeyRecord {
    KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "acme",
        SystemTime::now(),
    )
}

fn app(layer_stack: impl FnOnce(Router) -> Router) -> Router {
    layer_stack(Router::new().route("/", get(|| async { "ok" })))
}

fn request(key: Option<&str>) -> Request<Body> {
    let mut builder = Request::get("/");
    if let Some(key) = key {
        builder = builder.header("x-api-key", key);
    }
    builder.body(Body::empty()).unwrap()
}

async fn status(app: &Router, request: Request<Body>) -> StatusCode {
    app.clone().oneshot(request).await.unwrap().status()
}

fn limits(policies: impl IntoIterator<Item = keyward::limit::Policy>) -> Limits {
    Limits::new(policies).unwrap()
}

#[tokio::test]
async fn an_allowed_request() {
    let recorded = Recorded::start();
    let key = new_key();
    let store = MemoryStore::new();
    let tier = limits([
        RatePolicy::new("burst", 10, Duration::from_secs(1))
            .unwrap()
            .into(),
        RatePolicy::new("daily", 1000, Duration::from_secs(86_400))
            .unwrap()
            .into(),
    ]);
    store
        .insert(record_for(&key).with_limits(tier))
        .await
        .unwrap();
    let app = app(|router| {
        router
            .layer(RateLimitLayer::new(MemoryLimiter::new()))
            .layer(AuthLayer::new(store, format()))
    });
    recorded.take(); // building the stack reports nothing; start clean anyway

    assert_eq!(status(&app, request(Some(key.expose_secret()))).await, 200);
    // The memory store and limiter answer at once: nothing is timed.
    assert_eq!(
        recorded.take(),
        only_counters([
            (ALLOWED, 1),
            (
                r#"keyward_limit_decisions_total{decision="allowed",policy="burst"}"#,
                1
            ),
            (
                r#"keyward_limit_decisions_total{decision="allowed",policy="daily"}"#,
                1
            ),
        ])
    );
}

#[tokio::test]
async fn each_rejection_reason_class_is_counted_by_its_reason() {
    let recorded = Recorded::start();
    let store = MemoryStore::new();
    let clock = FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
    let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);

    let good = new_key();
    store.insert(record_for(&good)).await.unwrap();
    let expired = new_key();
    store
        .insert(record_for(&expired).with_expires_at(at(999_999)))
        .await
        .unwrap();
    let early = new_key();
    store
        .insert(record_for(&early).with_not_before(at(1_000_001)))
        .await
        .unwrap();
    let disabled = new_key();
    store
        .insert(record_for(&disabled).with_status(KeyStatus::Disabled))
        .await
        .unwrap();
    let revoked = new_key();
    store.insert(record_for(&revoked)).await.unwrap();
    store.revoke(&revoked.id(), at(1)).await.unwrap();
    let other_environment = new_key();
    store
        .insert(record_for(&other_environment).with_environment(Environment::Test))
        .await
        .unwrap();
    let unknown = new_key();
    // A record for `impostor`'s id that holds another secret's hash.
    let impostor = new_key();
    store
        .insert(KeyRecord::new(
            impostor.id(),
            KeyHasher::sha256().hash(good.secret()),
            "acme",
            SystemTime::now(),
        ))
        .await
        .unwrap();

    let app = app(|router| {
        router.layer(
            AuthLayer::new(store, format())
                .clock(clock)
                .environment(Environment::Live),
        )
    });

    let two_keys = Request::get("/")
        .header("x-api-key", good.expose_secret())
        .header(
            "authorization",
            format!("Bearer {}", unknown.expose_secret()),
        )
        .body(Body::empty())
        .unwrap();
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (request(None), StatusCode::UNAUTHORIZED, "missing_key"),
        (two_keys, StatusCode::BAD_REQUEST, "invalid_request"),
        (
            request(Some("sk_test_not-a-key")),
            StatusCode::UNAUTHORIZED,
            "malformed_key",
        ),
        (
            request(Some(unknown.expose_secret())),
            StatusCode::UNAUTHORIZED,
            "unknown_key",
        ),
        (
            request(Some(impostor.expose_secret())),
            StatusCode::UNAUTHORIZED,
            "wrong_secret",
        ),
        (
            request(Some(expired.expose_secret())),
            StatusCode::UNAUTHORIZED,
            "expired",
        ),
        (
            request(Some(early.expose_secret())),
            StatusCode::UNAUTHORIZED,
            "not_yet_valid",
        ),
        (
            request(Some(disabled.expose_secret())),
            StatusCode::UNAUTHORIZED,
            "disabled",
        ),
        (
            request(Some(revoked.expose_secret())),
            StatusCode::UNAUTHORIZED,
            "revoked",
        ),
        (
            request(Some(other_environment.expose_secret())),
            StatusCode::FORBIDDEN,
            "restricted",
        ),
    ];
    for (request, expected, reason) in cases {
        assert_eq!(status(&app, request).await, expected, "{reason}");
        // No key, or two: no credential to tell.
        let credential = match reason {
            "missing_key" | "invalid_request" => "none",
            _ => "api_key",
        };
        assert_eq!(
            recorded.take(),
            only_counters([(rejected_as(reason, credential).as_str(), 1)]),
            "{reason}"
        );
    }
    // And the good key still passes, counted as allowed.
    assert_eq!(status(&app, request(Some(good.expose_secret()))).await, 200);
    assert_eq!(recorded.take(), only_counters([(ALLOWED, 1)]));
}

/// A test verifier of `name: good` (anything else in that header is
/// refused), making principals of `kind`, at once or after a yield.
#[derive(Debug)]
struct HeaderVerifier {
    name: &'static str,
    kind: CredentialKind,
    record: Arc<KeyRecord>,
    wait: bool,
}

impl Verifier for HeaderVerifier {
    fn kind(&self) -> CredentialKind {
        self.kind
    }

    fn recognises(&self, request: &RequestView<'_>) -> bool {
        request.headers().contains_key(self.name)
    }

    fn verify(&self, request: &RequestView<'_>) -> Verification {
        let result = match request.headers().get(self.name) {
            Some(value) if value == "good" => Ok(Principal::with_credential(
                Arc::clone(&self.record),
                self.kind,
            )),
            _ => Err(Rejection::new(RejectReason::UnknownKey)),
        };
        if self.wait {
            Verification::pending(async move {
                tokio::task::yield_now().await;
                result
            })
        } else {
            Verification::Ready(result)
        }
    }
}

fn with_header(mut request: Request<Body>, name: &'static str, value: &str) -> Request<Body> {
    request.headers_mut().append(name, value.parse().unwrap());
    request
}

/// 32 hex characters: an imported key's old format.
const OLD_KEY: &str = "9f86d081884c7d659a2feaa0c55ad015";
const OTHER_OLD_KEY: &str = "a3f2b8c1d4e5f60718293a4b5c6d7e8f";

fn old_format() -> LegacyFormat {
    LegacyFormat::new(LegacyAlphabet::Hex, 32).unwrap()
}

#[tokio::test]
async fn each_credential_kind_is_counted_by_its_kind() {
    let recorded = Recorded::start();
    let store = MemoryStore::new();
    let api_key = new_key();
    store.insert(record_for(&api_key)).await.unwrap();
    let origin: AllowedOrigin = "https://app.example.com".parse().unwrap();
    let publishable = new_key();
    store
        .insert(record_for(&publishable).with_publishable([origin.clone()]))
        .await
        .unwrap();
    let revoked_publishable = new_key();
    store
        .insert(record_for(&revoked_publishable).with_publishable([origin]))
        .await
        .unwrap();
    store
        .revoke(&revoked_publishable.id(), SystemTime::now())
        .await
        .unwrap();
    KeyManager::new(store.clone(), format())
        .import_legacy_key(&old_format(), OLD_KEY, IssueOptions::new("acme"))
        .await
        .unwrap();
    let claims = |owner: &str| {
        let id = new_key().id();
        Arc::new(KeyRecord::new(
            id,
            KeyHash::from_bytes([0; 32]),
            owner,
            SystemTime::now(),
        ))
    };
    let app = app(|router| {
        router.layer(
            AuthLayer::new(store, format())
                .imported_keys(old_format())
                .environment(Environment::Live)
                .credential(HeaderVerifier {
                    name: "x-jwt",
                    kind: CredentialKind::Jwt,
                    record: claims("acme"),
                    wait: false,
                })
                // Waits: its outcome is counted by the response future.
                .credential(HeaderVerifier {
                    name: "x-signature",
                    kind: CredentialKind::Signature,
                    record: Arc::new(
                        Arc::unwrap_or_clone(claims("acme")).with_environment(Environment::Test),
                    ),
                    wait: true,
                }),
        )
    });
    recorded.take();

    let from_app = |key: &ApiKey| {
        with_header(
            request(Some(key.expose_secret())),
            "origin",
            "https://app.example.com",
        )
    };
    let two = with_header(request(Some(api_key.expose_secret())), "x-jwt", "good");
    let cases: Vec<(Request<Body>, StatusCode, String)> = vec![
        (
            request(Some(api_key.expose_secret())),
            StatusCode::OK,
            allowed_as("api_key"),
        ),
        (
            from_app(&publishable),
            StatusCode::OK,
            allowed_as("publishable"),
        ),
        // Its secret matched: the record tells it is publishable.
        (
            request(Some(publishable.expose_secret())),
            StatusCode::FORBIDDEN,
            rejected_as("origin_not_allowed", "publishable"),
        ),
        // Refused before its record is trusted: counted as presented.
        (
            from_app(&revoked_publishable),
            StatusCode::UNAUTHORIZED,
            rejected_as("revoked", "api_key"),
        ),
        (
            request(Some(OLD_KEY)),
            StatusCode::OK,
            allowed_as("imported"),
        ),
        (
            request(Some(OTHER_OLD_KEY)),
            StatusCode::UNAUTHORIZED,
            rejected_as("unknown_key", "imported"),
        ),
        (
            request(Some("not-a-key")),
            StatusCode::UNAUTHORIZED,
            rejected_as("malformed_key", "api_key"),
        ),
        (
            with_header(request(None), "x-jwt", "good"),
            StatusCode::OK,
            allowed_as("jwt"),
        ),
        (
            with_header(request(None), "x-jwt", "bad"),
            StatusCode::UNAUTHORIZED,
            rejected_as("unknown_key", "jwt"),
        ),
        // The signature's record is for another environment.
        (
            with_header(request(None), "x-signature", "good"),
            StatusCode::FORBIDDEN,
            rejected_as("restricted", "signature"),
        ),
        (
            with_header(request(None), "x-signature", "bad"),
            StatusCode::UNAUTHORIZED,
            rejected_as("unknown_key", "signature"),
        ),
        (
            two,
            StatusCode::BAD_REQUEST,
            rejected_as("two_credentials", "none"),
        ),
        (
            request(None),
            StatusCode::UNAUTHORIZED,
            rejected_as("missing_key", "none"),
        ),
    ];
    for (request, expected, counted) in cases {
        assert_eq!(status(&app, request).await, expected, "{counted}");
        // (Imported keys are looked up by an awaited, timed, `find_by_hash`.)
        assert_eq!(
            recorded.take().counters,
            counters([(counted.as_str(), 1)]),
            "{counted}"
        );
    }
}

#[tokio::test]
async fn a_throttled_client_is_counted_by_the_kind_it_presents() {
    let recorded = Recorded::start();
    let clock = FakeClock::default();
    let app = app(|router| {
        router.layer(
            AuthLayer::new(MemoryStore::new(), format())
                .imported_keys(old_format())
                .credential(HeaderVerifier {
                    name: "x-jwt",
                    kind: CredentialKind::Jwt,
                    record: Arc::new(record_for(&new_key())),
                    wait: false,
                })
                .failure_throttle(
                    FailureThrottle::new(1, Duration::from_secs(60)).with_clock(clock.clone()),
                ),
        )
    });
    let from_client = |mut request: Request<Body>| {
        request
            .extensions_mut()
            .insert(ClientAddr("192.0.2.7".parse().unwrap()));
        request
    };
    let jwt = || from_client(with_header(request(None), "x-jwt", "bad"));
    assert_eq!(status(&app, jwt()).await, 401);
    assert_eq!(
        recorded.take(),
        only_counters([
            (rejected_as("unknown_key", "jwt").as_str(), 1),
            ("keyward_auth_throttle_blocks_total", 1),
        ])
    );
    for (request, credential) in [
        (jwt(), "jwt"),
        (from_client(request(Some(OLD_KEY))), "imported"),
        (
            from_client(request(Some(new_key().expose_secret()))),
            "api_key",
        ),
    ] {
        assert_eq!(status(&app, request).await, 429, "{credential}");
        assert_eq!(
            recorded.take(),
            only_counters([
                (rejected_as("too_many_failures", credential).as_str(), 1),
                ("keyward_auth_throttle_hits_total", 1),
            ]),
            "{credential}"
        );
    }
}

#[tokio::test]
async fn a_throttled_client() {
    let recorded = Recorded::start();
    let clock = FakeClock::default();
    let app = app(|router| {
        router.layer(
            AuthLayer::new(MemoryStore::new(), format()).failure_throttle(
                FailureThrottle::new(2, Duration::from_secs(60)).with_clock(clock.clone()),
            ),
        )
    });
    let client: IpAddr = "192.0.2.7".parse().unwrap();
    let guess = || {
        let mut request = request(Some(new_key().expose_secret()));
        request.extensions_mut().insert(ClientAddr(client));
        request
    };

    assert_eq!(status(&app, guess()).await, 401);
    assert_eq!(
        recorded.take(),
        only_counters([(rejected("unknown_key").as_str(), 1)])
    );
    // The second refused key puts the client on hold.
    assert_eq!(status(&app, guess()).await, 401);
    assert_eq!(
        recorded.take(),
        only_counters([
            (rejected("unknown_key").as_str(), 1),
            ("keyward_auth_throttle_blocks_total", 1),
        ])
    );
    // Refused before any look-up.
    assert_eq!(status(&app, guess()).await, 429);
    assert_eq!(status(&app, guess()).await, 429);
    assert_eq!(
        recorded.take(),
        only_counters([
            (rejected("too_many_failures").as_str(), 2),
            ("keyward_auth_throttle_hits_total", 2),
        ])
    );
    // Once a failure is forgiven, the client is heard again.
    clock.advance(Duration::from_secs(30));
    assert_eq!(status(&app, guess()).await, 401);
    assert_eq!(
        recorded
            .take()
            .counters
            .get("keyward_auth_throttle_hits_total"),
        None
    );
}

#[tokio::test]
async fn limiter_decisions_are_counted_per_policy() {
    let recorded = Recorded::start();
    let store = MemoryStore::new();
    let free = new_key();
    store
        .insert(
            record_for(&free).with_limits(limits([
                RatePolicy::new("burst", 1, Duration::from_secs(60))
                    .unwrap()
                    .into(),
                RatePolicy::new("daily", 100, Duration::from_secs(86_400))
                    .unwrap()
                    .into(),
            ])),
        )
        .await
        .unwrap();
    let prepaid = new_key();
    store
        .insert(
            record_for(&prepaid)
                .with_limits(limits([CreditPolicy::new("credits", 1).unwrap().into()])),
        )
        .await
        .unwrap();
    let app = app(|router| {
        router
            .layer(RateLimitLayer::new(MemoryLimiter::new()))
            .layer(AuthLayer::new(store, format()))
    });

    assert_eq!(status(&app, request(Some(free.expose_secret()))).await, 200);
    recorded.take();
    // `burst` refuses; `daily` would have allowed it (and spends nothing).
    assert_eq!(status(&app, request(Some(free.expose_secret()))).await, 429);
    assert_eq!(
        recorded.take(),
        only_counters([
            (ALLOWED, 1),
            (
                r#"keyward_limit_decisions_total{decision="denied",policy="burst"}"#,
                1
            ),
            (
                r#"keyward_limit_decisions_total{decision="allowed",policy="daily"}"#,
                1
            ),
        ])
    );

    assert_eq!(
        status(&app, request(Some(prepaid.expose_secret()))).await,
        200
    );
    assert_eq!(
        status(&app, request(Some(prepaid.expose_secret()))).await,
        429
    );
    assert_eq!(
        recorded.take(),
        only_counters([
            (ALLOWED, 2),
            (
                r#"keyward_limit_decisions_total{decision="allowed",policy="credits"}"#,
                1
            ),
            (
                r#"keyward_limit_decisions_total{decision="denied",policy="credits"}"#,
                1
            ),
        ])
    );
}

/// A limiter that always waits (as a remote one does), and fails on demand.
#[derive(Debug, Default)]
struct RemoteLimiter {
    memory: MemoryLimiter,
    failing: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
#[error("connection refused")]
struct Refused;

#[keyward::async_trait]
impl Limiter for RemoteLimiter {
    async fn check(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError> {
        tokio::task::yield_now().await;
        if self.failing.load(Ordering::Relaxed) {
            return Err(LimitError::backend(Refused));
        }
        self.memory.check(id, limits, cost).await
    }
}

#[tokio::test]
async fn awaited_limiter_checks_are_timed_and_failures_counted() {
    let recorded = Recorded::start();
    let key = new_key();
    let store = MemoryStore::new();
    store
        .insert(
            record_for(&key).with_limits(limits([RatePolicy::new(
                "burst",
                10,
                Duration::from_secs(1),
            )
            .unwrap()
            .into()])),
        )
        .await
        .unwrap();
    let limiter = Arc::new(RemoteLimiter::default());
    let app = app(|router| {
        router
            .layer(RateLimitLayer::new(Arc::clone(&limiter)))
            .layer(AuthLayer::new(store, format()))
    });

    assert_eq!(status(&app, request(Some(key.expose_secret()))).await, 200);
    assert_eq!(
        recorded.take(),
        Moved {
            counters: counters([
                (ALLOWED, 1),
                (
                    r#"keyward_limit_decisions_total{decision="allowed",policy="burst"}"#,
                    1
                ),
            ]),
            histograms: histograms([("keyward_limiter_check_duration_seconds", 1)]),
        }
    );

    limiter.failing.store(true, Ordering::Relaxed);
    assert_eq!(status(&app, request(Some(key.expose_secret()))).await, 503);
    assert_eq!(
        recorded.take(),
        Moved {
            counters: counters([(ALLOWED, 1), ("keyward_limiter_errors_total", 1)]),
            histograms: histograms([("keyward_limiter_check_duration_seconds", 1)]),
        }
    );
}

/// A store that must be awaited, and fails on demand with `error`.
#[derive(Debug)]
struct RemoteStore {
    memory: MemoryStore,
    failing: AtomicBool,
    timeout: bool,
}

impl RemoteStore {
    fn new(timeout: bool) -> Self {
        Self {
            memory: MemoryStore::new(),
            failing: AtomicBool::new(false),
            timeout,
        }
    }
}

#[keyward::async_trait]
impl KeyStore for RemoteStore {
    async fn find(&self, id: &KeyId) -> Lookup {
        tokio::task::yield_now().await;
        if self.failing.load(Ordering::Relaxed) {
            return Err(if self.timeout {
                StoreError::Timeout(Duration::from_millis(250))
            } else {
                StoreError::backend(Refused)
            });
        }
        self.memory.find(id).await
    }
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.memory.insert(record).await
    }
    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.memory.update(record).await
    }
    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
        self.memory.revoke(id, at).await
    }
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        self.memory.list_by_owner(owner).await
    }
}

#[tokio::test]
async fn a_store_error_fails_closed_and_is_counted() {
    for (timeout, error) in [(false, "backend"), (true, "timeout")] {
        let recorded = Recorded::start();
        let key = new_key();
        let store = Arc::new(RemoteStore::new(timeout));
        store.insert(record_for(&key)).await.unwrap();
        let app = app(|router| router.layer(AuthLayer::new(Arc::clone(&store), format())));

        assert_eq!(status(&app, request(Some(key.expose_secret()))).await, 200);
        assert_eq!(
            recorded.take(),
            Moved {
                counters: counters([(ALLOWED, 1)]),
                histograms: histograms([("keyward_store_lookup_duration_seconds", 1)]),
            }
        );

        store.failing.store(true, Ordering::Relaxed);
        assert_eq!(status(&app, request(Some(key.expose_secret()))).await, 503);
        assert_eq!(
            recorded.take(),
            Moved {
                counters: counters([
                    (rejected("store_unavailable").as_str(), 1),
                    (
                        format!(r#"keyward_store_errors_total{{error="{error}"}}"#).as_str(),
                        1
                    ),
                ]),
                histograms: histograms([("keyward_store_lookup_duration_seconds", 1)]),
            }
        );
    }
}

#[tokio::test]
async fn cache_hits_misses_and_stale_serves() {
    let recorded = Recorded::start();
    let clock = FakeClock::default();
    let key = new_key();
    let backend = Arc::new(RemoteStore::new(false));
    backend.insert(record_for(&key)).await.unwrap();
    let cache = CachedStore::builder(Arc::clone(&backend))
        .ttl(Duration::from_secs(30))
        .serve_stale_on_error(Duration::from_secs(60))
        .clock(clock.clone())
        .build();
    let app = app(|router| router.layer(AuthLayer::new(cache, format())));

    // A miss: awaited, so timed.
    assert_eq!(status(&app, request(Some(key.expose_secret()))).await, 200);
    assert_eq!(
        recorded.take(),
        Moved {
            counters: counters([
                (ALLOWED, 1),
                (r#"keyward_key_cache_lookups_total{result="miss"}"#, 1),
            ]),
            histograms: histograms([("keyward_store_lookup_duration_seconds", 1)]),
        }
    );
    // A hit: answered at once, not timed.
    assert_eq!(status(&app, request(Some(key.expose_secret()))).await, 200);
    assert_eq!(
        recorded.take(),
        only_counters([
            (ALLOWED, 1),
            (r#"keyward_key_cache_lookups_total{result="hit"}"#, 1),
        ])
    );
    // Expired, and the backend fails: answered from the stale entry.
    clock.advance(Duration::from_secs(31));
    backend.failing.store(true, Ordering::Relaxed);
    assert_eq!(status(&app, request(Some(key.expose_secret()))).await, 200);
    assert_eq!(
        recorded.take(),
        Moved {
            counters: counters([
                (ALLOWED, 1),
                (r#"keyward_key_cache_lookups_total{result="miss"}"#, 1),
                ("keyward_key_cache_stale_served_total", 1),
            ]),
            histograms: histograms([("keyward_store_lookup_duration_seconds", 1)]),
        }
    );
}

/// An exporter that keeps nothing.
struct Discard;

#[keyward::async_trait]
impl UsageExporter for Discard {
    async fn export(&mut self, _: Vec<UsageEvent>) {}
}

#[tokio::test]
async fn dropped_usage_events_are_counted_by_reason() {
    let recorded = Recorded::start();
    let (sink, worker) = BatchingSink::builder(Discard).capacity(1).build();
    let event =
        || UsageEvent::lifecycle(Lifecycle::Issued, new_key().id(), "acme", SystemTime::now());
    // The worker is not running: the second event finds the sink full.
    sink.record(event());
    sink.record(event());
    assert_eq!(
        recorded.take(),
        only_counters([(r#"keyward_usage_events_dropped_total{reason="full"}"#, 1)])
    );
    // A worker dropped unrun loses what was buffered; later events are refused.
    drop(worker);
    sink.record(event());
    assert_eq!(
        recorded.take(),
        only_counters([
            (r#"keyward_usage_events_dropped_total{reason="stopped"}"#, 1),
            (r#"keyward_usage_events_dropped_total{reason="closed"}"#, 1),
        ])
    );
    assert_eq!(sink.dropped(), 3);
}

#[test]
fn describe_gives_every_metric_its_help_and_unit() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        keyward::metrics::describe();
        // Described metrics show in a snapshot once they have a value.
        metrics::with_recorder(|r| {
            let meta = metrics::Metadata::new("test", metrics::Level::INFO, None);
            r.register_histogram(
                &metrics::Key::from_name(keyward::metrics::STORE_LOOKUP_DURATION),
                &meta,
            )
            .record(0.001);
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let (_, unit, help, _) = snapshot
        .iter()
        .find(|(key, ..)| key.key().name() == keyward::metrics::STORE_LOOKUP_DURATION)
        .unwrap();
    assert_eq!(*unit, Some(metrics::Unit::Seconds));
    assert!(help.as_ref().unwrap().contains("look-ups"));
}
