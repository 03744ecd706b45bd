//! Invalidation over the real servers (DATABASE_URL, REDIS_URL): the
//! conformance suite, and a subscription that loses its connection (cut
//! through a test-owned proxy) says Lost, then Connected once it is back.
#![cfg(all(feature = "postgres", feature = "redis"))]

mod support;

use std::time::{Duration, Instant};

use keyward::key::{KeyFormat, KeyGenerator};
use keyward::store::conformance;
use keyward::store::invalidation::{
    Invalidation, InvalidationEvent, PgInvalidation, RedisInvalidation, Subscription,
};
use support::proxy::FaultProxy;
use support::services::{service_url, unique_name};

async fn pool(url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .expect("DATABASE_URL is set, so PostgreSQL must answer")
}

async fn next(subscription: &mut Subscription, within: Duration) -> Option<InvalidationEvent> {
    tokio::time::timeout(within, subscription.next())
        .await
        .ok()
        .flatten()
}

/// Cut, then restore: Lost, then Connected within a second of the restore,
/// and announcements heard again.
async fn survives_a_cut(
    proxy: &FaultProxy,
    announcer: &dyn Invalidation,
    subscriber: &dyn Invalidation,
) {
    let mut subscription = subscriber.subscribe();
    assert_eq!(
        next(&mut subscription, Duration::from_secs(5)).await,
        Some(InvalidationEvent::Connected)
    );
    proxy.cut();
    assert_eq!(
        next(&mut subscription, Duration::from_secs(5)).await,
        Some(InvalidationEvent::Lost),
        "a cut connection is reported"
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // a few failed reconnects
    proxy.restore();
    let restored = Instant::now();
    assert_eq!(
        next(&mut subscription, Duration::from_secs(5)).await,
        Some(InvalidationEvent::Connected)
    );
    let took = restored.elapsed();
    println!("subscription back {took:?} after the restore");
    assert!(
        took <= Duration::from_secs(1),
        "back within 1 s, took {took:?}"
    );
    let id = KeyGenerator::new(KeyFormat::new("t").unwrap())
        .generate()
        .unwrap()
        .id();
    announcer.announce(&id).await.unwrap();
    assert_eq!(
        next(&mut subscription, Duration::from_secs(5)).await,
        Some(InvalidationEvent::Changed(id))
    );
}

#[tokio::test]
async fn pg_invalidation_conforms() {
    let Some(url) = service_url("DATABASE_URL", "pg_invalidation_conforms") else {
        return;
    };
    let channel = unique_name("kw_inv");
    let a = PgInvalidation::new(pool(&url).await)
        .channel(&channel)
        .unwrap();
    let b = PgInvalidation::new(pool(&url).await)
        .channel(&channel)
        .unwrap();
    conformance::invalidation(&a, &b).await;
}

#[tokio::test]
async fn pg_subscription_survives_a_cut_connection() {
    let Some(url) = service_url("DATABASE_URL", "pg_subscription_survives_a_cut_connection") else {
        return;
    };
    let proxy = FaultProxy::for_url(&url).await;
    let channel = unique_name("kw_inv");
    let announcer = PgInvalidation::new(pool(&url).await)
        .channel(&channel)
        .unwrap();
    let through_proxy = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&proxy.url(&url))
        .unwrap();
    let subscriber = PgInvalidation::new(through_proxy)
        .channel(&channel)
        .unwrap()
        .timeout(Duration::from_millis(300));
    survives_a_cut(&proxy, &announcer, &subscriber).await;
}

#[tokio::test]
async fn redis_invalidation_conforms() {
    let Some(url) = service_url("REDIS_URL", "redis_invalidation_conforms") else {
        return;
    };
    let channel = unique_name("kw_inv");
    let client = redis::Client::open(url.as_str()).unwrap();
    let a = RedisInvalidation::new(client.clone(), channel.clone());
    let b = RedisInvalidation::new(client, channel);
    conformance::invalidation(&a, &b).await;
}

#[tokio::test]
async fn redis_subscription_survives_a_cut_connection() {
    let Some(url) = service_url("REDIS_URL", "redis_subscription_survives_a_cut_connection") else {
        return;
    };
    let proxy = FaultProxy::for_url(&url).await;
    let channel = unique_name("kw_inv");
    let announcer =
        RedisInvalidation::new(redis::Client::open(url.as_str()).unwrap(), channel.clone());
    let subscriber = RedisInvalidation::new(
        redis::Client::open(proxy.url(&url).as_str()).unwrap(),
        channel,
    )
    .timeout(Duration::from_millis(300));
    survives_a_cut(&proxy, &announcer, &subscriber).await;
}

#[tokio::test]
async fn a_stalled_subscription_is_noticed_by_its_heartbeat() {
    let Some(url) = service_url(
        "REDIS_URL",
        "a_stalled_subscription_is_noticed_by_its_heartbeat",
    ) else {
        return;
    };
    let proxy = FaultProxy::for_url(&url).await;
    let subscriber = RedisInvalidation::new(
        redis::Client::open(proxy.url(&url).as_str()).unwrap(),
        unique_name("kw_inv"),
    )
    .heartbeat(Duration::from_millis(200))
    .timeout(Duration::from_millis(200));
    let mut subscription = subscriber.subscribe();
    assert_eq!(
        next(&mut subscription, Duration::from_secs(5)).await,
        Some(InvalidationEvent::Connected)
    );
    proxy.stall();
    assert_eq!(
        next(&mut subscription, Duration::from_secs(2)).await,
        Some(InvalidationEvent::Lost),
        "a silent connection is found out by the heartbeat"
    );
    proxy.restore();
    assert_eq!(
        next(&mut subscription, Duration::from_secs(2)).await,
        Some(InvalidationEvent::Connected)
    );
}
