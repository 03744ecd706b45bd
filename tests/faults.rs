//! Backend faults without touching the shared servers: a TCP proxy owned by
//! the test sits between keyward (store and subscription) and the server,
//! and is cut, stalled and restored. While it is down, keys the cache does
//! not hold get 503 within the timeout, never 401, and the cache does not
//! grow; once restored, service resumes by itself within a second and the
//! cache is cleared once.
#![cfg(all(feature = "postgres", feature = "redis"))]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{routing::get, Router};
use http::{Request, StatusCode};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator};
use keyward::manager::{IssueOptions, KeyManager};
use keyward::store::invalidation::{Invalidation, PgInvalidation, RedisInvalidation};
use keyward::store::{CachedStore, KeyStore, PgStore, RedisStore};
use keyward::AuthLayer;
use support::proxy::FaultProxy;
use support::services::{service_url, unique_name};
use tower::ServiceExt;

/// The request path's budget: the cache's timeout.
const TIMEOUT: Duration = Duration::from_millis(300);
/// What a busy machine may add on top of a timer.
const SLACK: Duration = Duration::from_millis(250);

type Cache = CachedStore<Arc<dyn KeyStore>>;

fn format() -> KeyFormat {
    KeyFormat::new("sk_test").unwrap()
}

async fn status(app: &Router, key: &ApiKey) -> (StatusCode, Duration) {
    let started = Instant::now();
    let response = app
        .clone()
        .oneshot(
            Request::get("/")
                .header("x-api-key", key.expose_secret())
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    (response.status(), started.elapsed())
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The whole scenario, for a cache (reaching its server through `proxy`)
/// and a manager that writes to the server directly.
async fn scenario(name: &str, proxy: &FaultProxy, cache: Cache, manager: KeyManager) {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(AuthLayer::new(cache.clone(), format()));
    wait_for("subscribed", Duration::from_secs(5), || cache.is_trusted()).await;
    let clears = cache.stats().clears;

    let mut cold = Vec::new();
    for _ in 0..4 {
        cold.push(manager.issue(IssueOptions::new("acme")).await.unwrap().key);
    }
    let warm = manager.issue(IssueOptions::new("acme")).await.unwrap().key;
    assert_eq!(status(&app, &warm).await.0, StatusCode::OK);
    let held = cache.len();

    for (fault, stalled) in [("cut", false), ("stall", true)] {
        if stalled {
            proxy.stall();
        } else {
            proxy.cut();
        }
        let mut slowest = Duration::ZERO;
        for key in &cold {
            let (status, took) = status(&app, key).await;
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{name}, {fault}: an uncached key is 503, never 401"
            );
            assert!(
                took <= TIMEOUT + SLACK,
                "{name}, {fault}: answered after {took:?}, past the {TIMEOUT:?} timeout"
            );
            slowest = slowest.max(took);
        }
        // The cached key: served or refused for want of the store, never 401.
        let (warm_status, _) = status(&app, &warm).await;
        assert!(
            matches!(
                warm_status,
                StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE
            ),
            "{name}, {fault}: a cached key got {warm_status}"
        );
        // Well-formed keys nobody issued: refused, and nothing kept for them.
        // (Concurrent: each may wait for the timeout.)
        let generator = KeyGenerator::new(format());
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let (app, key) = (app.clone(), generator.generate().unwrap());
            requests.spawn(async move { status(&app, &key).await });
        }
        while let Some(answer) = requests.join_next().await {
            let (status, took) = answer.unwrap();
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}, {fault}");
            assert!(took <= TIMEOUT + SLACK * 2, "{name}, {fault}: {took:?}");
        }
        assert!(
            cache.len() <= held,
            "{name}, {fault}: the cache grew from {held} to {} entries while the store was down",
            cache.len()
        );
        println!("{name}: {fault}: 503 for uncached keys, slowest {slowest:?}");
    }

    proxy.restore();
    let restored = Instant::now();
    loop {
        let (status, _) = status(&app, &cold[0]).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            restored.elapsed() <= Duration::from_secs(1),
            "{name}: not serving again within 1 s of the restore"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let serving = restored.elapsed();
    wait_for("subscribed again", Duration::from_secs(1), || {
        cache.is_trusted()
    })
    .await;
    let subscribed = restored.elapsed();
    for key in &cold {
        assert_eq!(status(&app, key).await.0, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cache.stats().clears,
        clears + 1,
        "{name}: the cache is cleared once after the outage"
    );
    let stats = cache.stats();
    println!(
        "{name}: serving again {serving:?} and subscribed again {subscribed:?} after the restore; \
         {} timeouts, {} errors, {} disconnects",
        stats.timeouts, stats.errors, stats.disconnects
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_stall_restore() {
    let Some(url) = service_url("DATABASE_URL", "postgres_cut_stall_restore") else {
        return;
    };
    let schema = unique_name("kw_fault");
    let direct = PgStore::new(sqlx::PgPool::connect(&url).await.unwrap())
        .with_table(&schema, "keys")
        .unwrap();
    direct.migrate().await.unwrap();
    let channel = unique_name("kw_fault");

    let proxy = FaultProxy::for_url(&url).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(TIMEOUT)
        .connect(&proxy.url(&url))
        .await
        .unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(
        PgStore::new(pool.clone())
            .with_table(&schema, "keys")
            .unwrap()
            .timeout(TIMEOUT),
    );
    let invalidation: Arc<dyn Invalidation> = Arc::new(
        PgInvalidation::new(pool)
            .channel(&channel)
            .unwrap()
            .timeout(Duration::from_millis(200)),
    );
    let cache = CachedStore::builder(store)
        .timeout(TIMEOUT)
        .invalidation(invalidation)
        .build();
    let manager = KeyManager::new(direct.clone(), format());
    scenario("PostgreSQL", &proxy, cache, manager).await;

    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(direct.pool())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_stall_restore() {
    let Some(url) = service_url("REDIS_URL", "redis_cut_stall_restore") else {
        return;
    };
    let prefix = unique_name("kw_fault");
    let client = redis::Client::open(url.as_str()).unwrap();
    let direct_connection = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    let direct = RedisStore::new(direct_connection.clone())
        .with_prefix(&prefix)
        .unwrap();

    let proxy = FaultProxy::for_url(&url).await;
    let proxied = redis::Client::open(proxy.url(&url).as_str()).unwrap();
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(200)))
        .set_response_timeout(Some(Duration::from_millis(200)))
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200));
    let connection = redis::aio::ConnectionManager::new_with_config(proxied.clone(), config)
        .await
        .unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(
        RedisStore::new(connection)
            .with_prefix(&prefix)
            .unwrap()
            .timeout(TIMEOUT),
    );
    let invalidation: Arc<dyn Invalidation> = Arc::new(
        RedisInvalidation::new(proxied, format!("{prefix}:invalidate"))
            .timeout(Duration::from_millis(200)),
    );
    let cache = CachedStore::builder(store)
        .timeout(TIMEOUT)
        .invalidation(invalidation)
        .build();
    let manager = KeyManager::new(direct, format());
    scenario("Redis", &proxy, cache, manager).await;

    let mut connection = direct_connection;
    let names: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    if !names.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(names)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
}
