//! Each dependency on the request path fails with its own reason: a key
//! store that fails is `StoreUnavailable`, a limiter that fails is
//! `LimiterUnavailable`. Both answer 503 (gRPC: UNAVAILABLE), and the usage
//! records and logs tell them apart. Through the whole stack, on a real
//! axum `Router`, with the public API only.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher, KeyId};
use keyward::limit::{Decision, LimitError, Limiter, Limits, MemoryLimiter, RatePolicy};
use keyward::record::KeyRecord;
use keyward::reject::{RejectReason, Rejection};
use keyward::store::{KeyStore, Lookup, MemoryStore, StoreError};
use keyward::usage::{AggregatingSink, TracingSink, UsageLayer};
use keyward::{AuthLayer, RateLimitLayer};
use support::CapturedLogs;
use tower::{ServiceBuilder, ServiceExt};

#[derive(Debug, thiserror::Error)]
#[error("connection refused")]
struct Refused;

/// A key store whose look-ups fail (its backend is down).
#[derive(Debug)]
struct DownStore;

#[keyward::async_trait]
impl KeyStore for DownStore {
    async fn find(&self, _: &KeyId) -> Lookup {
        Err(StoreError::backend(Refused))
    }
    async fn insert(&self, _: KeyRecord) -> Result<(), StoreError> {
        Err(StoreError::backend(Refused))
    }
    async fn update(&self, _: KeyRecord) -> Result<(), StoreError> {
        Err(StoreError::backend(Refused))
    }
    async fn revoke(&self, _: &KeyId, _: SystemTime) -> Result<(), StoreError> {
        Err(StoreError::backend(Refused))
    }
    async fn list_by_owner(&self, _: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        Err(StoreError::backend(Refused))
    }
}

/// A limiter whose backend is down.
#[derive(Debug)]
struct DownLimiter;

#[keyward::async_trait]
impl Limiter for DownLimiter {
    async fn check(&self, _: &KeyId, _: &Limits, _: u32) -> Result<Decision, LimitError> {
        Err(LimitError::backend(Refused))
    }
}

struct Fixture {
    format: KeyFormat,
    store: MemoryStore,
    key: ApiKey,
}

impl Fixture {
    async fn new() -> Self {
        let format = KeyFormat::new("sk_test").unwrap();
        let key = KeyGenerator::new(format.clone()).generate().unwrap();
        let limits = Limits::new([RatePolicy::new("burst", 5, Duration::from_secs(1))
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
        Self { format, store, key }
    }

    /// The whole stack: usage outermost, then auth, then limits.
    fn app(&self, store: impl KeyStore, limiter: impl Limiter, usage: AggregatingSink) -> Router {
        Router::new().route("/pets", get(|| async { "[]" })).layer(
            ServiceBuilder::new()
                .layer(UsageLayer::new((usage, TracingSink::info())))
                .layer(AuthLayer::new(store, self.format.clone()))
                .layer(RateLimitLayer::new(limiter)),
        )
    }

    fn request(&self, grpc: bool) -> Request<Body> {
        let mut request = Request::get("/pets").header("x-api-key", self.key.expose_secret());
        if grpc {
            request = request.header("content-type", "application/grpc");
        }
        request.body(Body::empty()).unwrap()
    }
}

fn reason<B>(response: &Response<B>) -> RejectReason {
    response
        .extensions()
        .get::<Rejection>()
        .expect("a refusal carries its Rejection")
        .reason()
}

async fn body_json(response: Response<Body>) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_failing_store_and_a_failing_limiter_answer_503_with_different_reasons() {
    let f = Fixture::new().await;
    let usage = AggregatingSink::new();
    let store_down = f.app(DownStore, MemoryLimiter::new(), usage.clone());
    let limiter_down = f.app(f.store.clone(), DownLimiter, usage.clone());

    let (logs, _guard) = CapturedLogs::start();
    let by_store = store_down.oneshot(f.request(false)).await.unwrap();
    let by_limiter = limiter_down
        .clone()
        .oneshot(f.request(false))
        .await
        .unwrap();

    assert_eq!(by_store.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(by_limiter.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reason(&by_store), RejectReason::StoreUnavailable);
    assert_eq!(reason(&by_limiter), RejectReason::LimiterUnavailable);

    // The problem bodies are both 503s and say what could not be checked,
    // never the backend's own error.
    let (store_body, limiter_body) = (body_json(by_store).await, body_json(by_limiter).await);
    assert_eq!(store_body["status"], 503);
    assert_eq!(limiter_body["status"], 503);
    assert_ne!(store_body["detail"], limiter_body["detail"]);
    for body in [&store_body, &limiter_body] {
        assert!(!body.to_string().contains("connection refused"), "{body}");
        assert!(!body.to_string().contains(f.key.secret()), "{body}");
    }

    // The usage records count them apart: the limiter's refusal against the
    // key (it had authenticated), the store's where no record was found.
    let key = usage.get(&f.key.id()).expect("the key authenticated once");
    assert_eq!(
        key.denied_by_reason,
        [(RejectReason::LimiterUnavailable, 1)]
    );
    let all: Vec<_> = usage
        .snapshot()
        .into_iter()
        .chain([usage.anonymous()])
        .flat_map(|u| u.denied_by_reason)
        .collect();
    assert!(
        all.contains(&(RejectReason::StoreUnavailable, 1)),
        "{all:?}"
    );
    assert!(
        all.contains(&(RejectReason::LimiterUnavailable, 1)),
        "{all:?}"
    );

    // And so do the logs: the usage line names each reason.
    let text = logs.text();
    assert!(text.contains("store_unavailable"), "{text}");
    assert!(text.contains("limiter_unavailable"), "{text}");
    assert!(text.contains("limiter failed"), "{text}");
    assert!(!text.contains(f.key.secret()));
}

#[tokio::test]
async fn both_are_unavailable_to_grpc_clients() {
    let f = Fixture::new().await;
    let usage = AggregatingSink::new();
    for app in [
        f.app(DownStore, MemoryLimiter::new(), usage.clone()),
        f.app(f.store.clone(), DownLimiter, usage.clone()),
    ] {
        let response = app.oneshot(f.request(true)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "trailers-only");
        assert_eq!(response.headers()["grpc-status"], "14");
    }
}

#[test]
fn the_reasons_are_distinct_everywhere_they_are_named() {
    let (store, limiter) = (
        RejectReason::StoreUnavailable,
        RejectReason::LimiterUnavailable,
    );
    assert_ne!(store.as_str(), limiter.as_str());
    assert_eq!(limiter.as_str(), "limiter_unavailable");
    assert_eq!(limiter.to_string(), "limiter_unavailable");
    assert_eq!(limiter.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!limiter.is_invalid_key());
    // `ALL` lists both, each at its own index, so per-reason counters keep
    // them apart.
    assert_eq!(RejectReason::ALL[store as usize], store);
    assert_eq!(RejectReason::ALL[limiter as usize], limiter);
    assert_eq!(
        keyward::grpc::GrpcCode::for_reason(limiter),
        keyward::grpc::GrpcCode::Unavailable
    );
}
