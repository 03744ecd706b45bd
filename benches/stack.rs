//! The full stack against the peers, and how the cost grows with the store.
//!
//! Group `stack` (one `GET` through `tower::ServiceExt` on a trivial
//! `service_fn`):
//!
//! - `bare`: the inner service alone;
//! - `tower_http_bearer`: tower-http's `ValidateRequestHeaderLayer::bearer`
//!   with the right token;
//! - `handwritten_hashmap`: what a user writes by hand: the header looked up
//!   in a `HashMap<String, Arc<_>>`, the result put in the extensions;
//! - `keyward_auth`: `AuthLayer` on a `MemoryStore`, valid key;
//! - `keyward_full`: `UsageLayer` (batching sink) → `AuthLayer` →
//!   `RateLimitLayer` → `RequireScopes`, valid key within its limit;
//! - `keyward_reject_unknown`: the full stack, a well-formed key whose id
//!   is unknown (a `401`).
//!
//! Group `limit_layer` (axum bodies, as `tower_governor` answers only
//! those; the request already carries the caller's `Principal`, as it would
//! behind `AuthLayer`):
//!
//! - `bare`: the inner service alone;
//! - `tower_governor`: `tower_governor`'s `GovernorLayer` keyed by the bearer
//!   token (one quota for every key, governor's keyed store);
//! - `keyward_limit`: `RateLimitLayer` on a `MemoryLimiter` (the key's own
//!   quota from its record, `RateLimit` fields on the answer).
//!
//! Group `store_size`: `keyward_auth` with 1, 1 000, 100 000 and 1 000 000
//! keys in the store; each iteration presents a different key, in an order
//! that jumps around the store (so large stores pay their cache misses).
//!
//! Futures are polled with a no-op waker (every future here is ready at
//! once): the numbers are the layers' cost, not an executor's. The
//! `BatchingSink`'s worker runs on a one-thread tokio runtime beside it.
//!
//! `cargo bench --bench stack`
//!
//! With the `metrics` feature, the layers report to the `metrics` facade:
//! to no recorder by default, or, with `KEYWARD_BENCH_RECORDER=registry`,
//! to a recorder that does per event what an exporter such as
//! metrics-exporter-prometheus does (the key's handle looked up in
//! `metrics-util`'s sharded `Registry`, then an atomic add).

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response, StatusCode};
use keyward::auth::{AuthLayer, Principal};
use keyward::authorize::RequireScopes;
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher};
use keyward::limit::{Limits, MemoryLimiter, RateLimitLayer, RatePolicy};
use keyward::record::KeyRecord;
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{BatchingSink, UsageLayer};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};
use tower_http::validate_request::ValidateRequestHeaderLayer;

use support::{inner, ready, Discard};

/// The hand-written middleware: who the caller is, from a map.
#[derive(Debug)]
struct Client {
    #[allow(dead_code)]
    owner: String,
}

#[derive(Clone)]
struct Handwritten<S> {
    inner: S,
    keys: Arc<HashMap<String, Arc<Client>>>,
}

pin_project_lite::pin_project! {
    #[project = HandwrittenProj]
    enum HandwrittenFuture<F> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response<String>> },
    }
}

impl<F: Future<Output = Result<Response<String>, Infallible>>> Future for HandwrittenFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            HandwrittenProj::Inner { future } => future.poll(cx),
            HandwrittenProj::Refused { response } => Poll::Ready(Ok(response.take().unwrap())),
        }
    }
}

impl<S> Service<Request<String>> for Handwritten<S>
where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible>,
{
    type Response = Response<String>;
    type Error = Infallible;
    type Future = HandwrittenFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<String>) -> Self::Future {
        let client = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .and_then(|key| self.keys.get(key))
            .cloned();
        match client {
            Some(client) => {
                request.extensions_mut().insert(client);
                HandwrittenFuture::Inner {
                    future: self.inner.call(request),
                }
            }
            None => {
                let mut response = Response::new(String::new());
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                HandwrittenFuture::Refused {
                    response: Some(response),
                }
            }
        }
    }
}

/// A quota no benchmark can exhaust.
fn limits() -> Limits {
    Limits::new([RatePolicy::new("burst", u32::MAX, Duration::from_secs(1))
        .unwrap()
        .into()])
    .unwrap()
}

/// A store with `keys` records (all with the same limits and scopes), and
/// the keys.
fn store_with(keys: usize, generator: &KeyGenerator) -> (MemoryStore, Vec<ApiKey>) {
    let store = MemoryStore::with_capacity(keys);
    let hasher = KeyHasher::sha256();
    let limits = limits();
    let scopes: keyward::scope::ScopeSet = "pets:read".parse().unwrap();
    let mut all = Vec::with_capacity(keys);
    for i in 0..keys {
        let key = generator.generate().unwrap();
        let record = KeyRecord::new(
            key.id(),
            hasher.hash(key.secret()),
            format!("owner-{i}"),
            SystemTime::now(),
        )
        .with_scopes(scopes.clone())
        .with_limits(limits.clone());
        ready(store.insert(record)).unwrap();
        all.push(key);
    }
    (store, all)
}

fn run<S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    service: S,
    header: &str,
    expect: StatusCode,
) where
    S: Service<Request<String>, Error = Infallible> + Clone,
    S::Response: StatusOf,
{
    let mut service = service.clone();
    let request = Request::get("/pets")
        .header("authorization", header)
        .body(String::new())
        .unwrap();
    ready(service.ready()).unwrap();
    let status = ready(service.call(request)).unwrap().status_of();
    assert_eq!(status, expect, "{name}");

    group.bench_function(name, |b| {
        b.iter(|| {
            let request = Request::get("/pets")
                .header("authorization", header)
                .body(String::new())
                .unwrap();
            ready(service.ready()).unwrap();
            black_box(ready(service.call(request)).unwrap())
        })
    });
}

trait StatusOf {
    fn status_of(&self) -> StatusCode;
}

impl<B> StatusOf for Response<B> {
    fn status_of(&self) -> StatusCode {
        self.status()
    }
}

/// What an exporter does with each event (see the module docs).
#[cfg(feature = "metrics")]
#[path = "support/recorder.rs"]
mod registry_recorder;

fn stack(c: &mut Criterion) {
    #[cfg(feature = "metrics")]
    registry_recorder::install_if_asked();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let batching = runtime.block_on(async {
        BatchingSink::builder(Discard)
            .capacity(1 << 16)
            .max_batch(1024)
            .spawn()
    });

    let format = KeyFormat::new("sk_live").unwrap();
    let generator = KeyGenerator::new(format.clone());
    let (store, keys) = store_with(1, &generator);
    let key = &keys[0];
    let header = format!("Bearer {}", key.expose_secret());
    let unknown = format!("Bearer {}", generator.generate().unwrap().expose_secret());

    let auth = AuthLayer::new(store, format);
    let full = UsageLayer::new(batching.clone()).layer(
        auth.layer(
            RateLimitLayer::new(MemoryLimiter::new())
                .layer(RequireScopes::all(["pets:read".parse().unwrap()]).layer(service_fn(inner))),
        ),
    );
    let handwritten = Handwritten {
        inner: service_fn(inner),
        keys: Arc::new(HashMap::from([(
            key.expose_secret().to_owned(),
            Arc::new(Client {
                owner: "acme".into(),
            }),
        )])),
    };

    let mut group = c.benchmark_group("stack");
    group.throughput(Throughput::Elements(1));
    run(
        &mut group,
        "bare",
        service_fn(inner),
        &header,
        StatusCode::OK,
    );
    #[allow(deprecated)]
    let bearer = ValidateRequestHeaderLayer::bearer(key.expose_secret());
    run(
        &mut group,
        "tower_http_bearer",
        bearer.layer(service_fn(inner)),
        &header,
        StatusCode::OK,
    );
    run(
        &mut group,
        "handwritten_hashmap",
        handwritten,
        &header,
        StatusCode::OK,
    );
    run(
        &mut group,
        "keyward_auth",
        auth.layer(service_fn(inner)),
        &header,
        StatusCode::OK,
    );
    run(
        &mut group,
        "keyward_full",
        full.clone(),
        &header,
        StatusCode::OK,
    );
    run(
        &mut group,
        "keyward_reject_unknown",
        full,
        &unknown,
        StatusCode::UNAUTHORIZED,
    );
    group.finish();
    eprintln!("batching sink dropped {} events", batching.dropped());
    runtime.block_on(batching.shutdown());
}

async fn inner_axum(
    _: Request<axum::body::Body>,
) -> Result<Response<axum::body::Body>, Infallible> {
    Ok(Response::new(axum::body::Body::empty()))
}

/// What a `tower_governor` user writes to limit per API key: the bearer
/// token as the key.
#[derive(Clone)]
struct BearerToken;

impl KeyExtractor for BearerToken {
    type Key = String;

    fn extract<T>(&self, request: &Request<T>) -> Result<String, GovernorError> {
        request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::to_owned)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

fn run_axum<S, B>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut service: S,
    request: impl Fn() -> Request<axum::body::Body>,
) where
    S: Service<Request<axum::body::Body>, Response = Response<B>, Error = Infallible>,
{
    ready(service.ready()).unwrap();
    let status = ready(service.call(request())).unwrap().status();
    assert_eq!(status, StatusCode::OK, "{name}");
    group.bench_function(name, |b| {
        b.iter(|| {
            ready(service.ready()).unwrap();
            black_box(ready(service.call(request())).unwrap())
        })
    });
}

fn limit_layer(c: &mut Criterion) {
    let format = KeyFormat::new("sk_live").unwrap();
    let generator = KeyGenerator::new(format.clone());
    let key = generator.generate().unwrap();
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "acme",
        SystemTime::now(),
    )
    .with_limits(limits());
    let principal = Principal::new(Arc::new(record));
    let header = format!("Bearer {}", key.expose_secret());

    let governor = GovernorLayer::new(
        GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(u32::MAX)
            .key_extractor(BearerToken)
            .finish()
            .unwrap(),
    );
    let keyward = RateLimitLayer::new(MemoryLimiter::new());

    let mut group = c.benchmark_group("limit_layer");
    group.throughput(Throughput::Elements(1));
    let request = || {
        Request::get("/pets")
            .header("authorization", header.as_str())
            .extension(principal.clone())
            .body(axum::body::Body::empty())
            .unwrap()
    };
    run_axum(&mut group, "bare", service_fn(inner_axum), request);
    run_axum(
        &mut group,
        "tower_governor",
        governor.layer(service_fn(inner_axum)),
        request,
    );
    run_axum(
        &mut group,
        "keyward_limit",
        keyward.layer(service_fn(inner_axum)),
        request,
    );
    group.finish();
}

fn store_size(c: &mut Criterion) {
    let format = KeyFormat::new("sk_live").unwrap();
    let generator = KeyGenerator::new(format.clone());
    let mut group = c.benchmark_group("store_size");
    group.throughput(Throughput::Elements(1));
    for n in [1usize, 1_000, 100_000, 1_000_000] {
        let (store, keys) = store_with(n, &generator);
        let headers: Vec<String> = keys
            .iter()
            .map(|key| format!("Bearer {}", key.expose_secret()))
            .collect();
        drop(keys);
        let mut service = AuthLayer::new(store, format.clone()).layer(service_fn(inner));
        // A stride coprime with n (a large prime, n is a power of ten):
        // consecutive requests land far apart in memory.
        let stride = 7_919 % n.max(1);
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("keyward_auth", n), &n, |b, &n| {
            b.iter(|| {
                i = (i + stride) % n;
                let request = Request::get("/pets")
                    .header("authorization", headers[i].as_str())
                    .body(String::new())
                    .unwrap();
                ready(service.ready()).unwrap();
                black_box(ready(service.call(request)).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, stack, limit_layer, store_size);
criterion_main!(benches);
