//! "Any tower service": the layers over a service that is not `Clone`.
//!
//! `UsageLayer`, `RequireScopes` and `MethodScopesLayer` wrap it as it is.
//! `AuthLayer` and `RateLimitLayer` need a `Clone` inner service (they call
//! it after awaiting a store or limiter that cannot answer at once); the
//! documented advice, `tower::buffer::Buffer`, makes one, and this checks
//! that it works on exactly that awaited path. Public API only.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use keyward::authorize::RequireScopes;
use keyward::grpc::MethodScopesLayer;
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher, KeyId};
use keyward::limit::{Decision, LimitError, Limiter, Limits, MemoryLimiter, RatePolicy};
use keyward::record::KeyRecord;
use keyward::reject::{RejectReason, Rejection};
use keyward::store::{KeyStore, Lookup, MemoryStore, StoreError};
use keyward::usage::{AggregatingSink, UsageLayer};
use keyward::{AuthLayer, Principal, RateLimitLayer};
use tower::buffer::BufferLayer;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// A service that owns its state and is not `Clone`: it answers how many
/// requests it has served, so a test sees that one instance served them.
struct Ledger {
    served: u64,
}

impl Service<Request<String>> for Ledger {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        self.served += 1;
        let who = request
            .extensions()
            .get::<Principal>()
            .map_or("nobody", |p| p.owner())
            .to_owned();
        std::future::ready(Ok(Response::new(format!("{who} #{}", self.served))))
    }
}

/// A store that must always be awaited (no `find_immediate`), like a
/// database: the path on which `AuthService` calls its inner service late.
#[derive(Debug)]
struct Remote(MemoryStore);

#[keyward::async_trait]
impl KeyStore for Remote {
    async fn find(&self, id: &KeyId) -> Lookup {
        tokio::task::yield_now().await;
        self.0.find(id).await
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

/// A limiter that must always be awaited (no `check_immediate`).
#[derive(Debug)]
struct RemoteLimiter(MemoryLimiter);

#[keyward::async_trait]
impl Limiter for RemoteLimiter {
    async fn check(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError> {
        tokio::task::yield_now().await;
        self.0.check(id, limits, cost).await
    }
}

async fn key(store: &MemoryStore, format: &KeyFormat, scopes: &str) -> ApiKey {
    let key = KeyGenerator::new(format.clone()).generate().unwrap();
    let limits = Limits::new([RatePolicy::new("burst", 3, Duration::from_secs(60))
        .unwrap()
        .into()])
    .unwrap();
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "acme",
        SystemTime::now(),
    )
    .with_scopes(scopes.parse().unwrap())
    .with_limits(limits);
    store.insert(record).await.unwrap();
    key
}

fn request(key: Option<&ApiKey>, path: &str) -> Request<String> {
    let mut request = Request::post(path);
    if let Some(key) = key {
        request = request.header("x-api-key", key.expose_secret());
    }
    request.body(String::new()).unwrap()
}

fn reason<B>(response: &Response<B>) -> Option<RejectReason> {
    response
        .extensions()
        .get::<Rejection>()
        .map(Rejection::reason)
}

async fn body<B: http_body::Body>(response: Response<B>) -> String
where
    B::Error: std::fmt::Debug,
{
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn auth_and_rate_limit_over_a_buffered_service_that_is_not_clone() {
    let format = KeyFormat::new("sk_test").unwrap();
    let store = MemoryStore::new();
    let reader = key(&store, &format, "pets:read").await;
    let writer = key(&store, &format, "pets:write").await;

    // The advice from the docs: Buffer between the layers that need Clone
    // and the service that is not.
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(Remote(store), format))
        .layer(RateLimitLayer::new(RemoteLimiter(MemoryLimiter::new())))
        .layer(BufferLayer::new(16))
        .layer(RequireScopes::try_all(["pets:write"]).unwrap())
        .service(Ledger { served: 0 });

    // Every answer comes through the awaited store and limiter, and the
    // one `Ledger` behind the buffer serves them all, in turn.
    for n in 1..=3 {
        let response = service
            .clone()
            .oneshot(request(Some(&writer), "/pets"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await, format!("acme #{n}"));
    }
    let limited = service
        .clone()
        .oneshot(request(Some(&writer), "/pets"))
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);

    let refused = service
        .clone()
        .oneshot(request(Some(&reader), "/pets"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(reason(&refused), Some(RejectReason::InsufficientScope));

    let anonymous = service.oneshot(request(None, "/pets")).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn usage_and_scope_layers_wrap_a_service_that_is_not_clone_as_it_is() {
    // No Buffer: these layers never call the inner service after a wait.
    let usage = AggregatingSink::new();
    let recorded = UsageLayer::new(usage.clone()).layer(Ledger { served: 0 });
    let response = recorded.oneshot(request(None, "/pets")).await.unwrap();
    assert_eq!(body(response).await, "nobody #1");
    assert_eq!(usage.anonymous().requests, 1);

    let principal = {
        let format = KeyFormat::new("sk_test").unwrap();
        let key = KeyGenerator::new(format).generate().unwrap();
        let record = KeyRecord::new(
            key.id(),
            KeyHasher::sha256().hash(key.secret()),
            "acme",
            SystemTime::now(),
        )
        .with_scopes("pets:read health:read".parse().unwrap());
        Principal::new(Arc::new(record))
    };
    let with_principal = |path: &str| {
        let mut request = request(None, path);
        request.extensions_mut().insert(principal.clone());
        request
    };

    let mut scoped = RequireScopes::try_all(["pets:read"])
        .unwrap()
        .layer(Ledger { served: 0 });
    let response = scoped
        .ready()
        .await
        .unwrap()
        .call(with_principal("/pets"))
        .await
        .unwrap();
    assert_eq!(body(response).await, "acme #1");
    let mut denied = RequireScopes::try_all(["pets:write"])
        .unwrap()
        .layer(Ledger { served: 0 });
    let response = denied
        .ready()
        .await
        .unwrap()
        .call(with_principal("/pets"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let mut grpc = MethodScopesLayer::new()
        .method(
            "/grpc.health.v1.Health/Check",
            "health:read".parse().unwrap(),
        )
        .unwrap()
        .layer(Ledger { served: 0 });
    let response = grpc
        .ready()
        .await
        .unwrap()
        .call(with_principal("/grpc.health.v1.Health/Check"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = grpc
        .ready()
        .await
        .unwrap()
        .call(with_principal("/grpc.health.v1.Health/Watch"))
        .await
        .unwrap();
    assert_eq!(reason(&response), Some(RejectReason::InsufficientScope));
}
