//! Usage counters in Redis: written by several OS processes, read by
//! another; a Redis that is cut costs counts (counted), never requests.
//! Needs `REDIS_URL`; skipped without it.
#![cfg(feature = "redis")]

mod support;

use std::time::Duration;

use keyward::reject::RejectReason;
use keyward::usage::{BatchingSink, RedisUsage, UsageSink};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use support::burst::Burst;
use support::children::{child_orders, run_children};
use support::proxy::FaultProxy;
use support::services::{service_url, unique_name};

async fn connect(url: &str) -> ConnectionManager {
    let client = redis::Client::open(url).expect("a valid REDIS_URL");
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, config)
        .await
        .expect("REDIS_URL is set, so Redis must answer")
}

/// Deletes every key under `prefix`.
async fn clean(connection: &mut ConnectionManager, prefix: &str) {
    let keys: Vec<String> = connection.keys(format!("{prefix}*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = connection.del(keys).await.unwrap();
    }
}

/// What a child process runs: a burst recorded into Redis, then it waits
/// until everything is written. Does nothing in a normal test run.
#[tokio::test]
async fn child_process_entry() {
    let Some(orders) = child_orders() else { return };
    let (burst, prefix) = Burst::from_orders(&orders);
    let url = std::env::var("REDIS_URL").expect("the parent had REDIS_URL");
    let counters = RedisUsage::new(connect(&url).await)
        .with_prefix(prefix)
        .unwrap();
    let sink = BatchingSink::builder(counters.clone())
        .max_batch(16)
        .spawn();
    burst.run(sink.clone(), 100).await;
    sink.shutdown().await;
    assert_eq!((sink.dropped(), counters.stats().dropped), (0, 0));
    assert_eq!(counters.stats().events, 100);
}

#[tokio::test]
async fn counters_written_by_three_processes_are_read_by_another() {
    let Some(url) = service_url(
        "REDIS_URL",
        "counters_written_by_three_processes_are_read_by_another",
    ) else {
        return;
    };
    let prefix = format!("{}:", unique_name("keyward_test_usage"));
    let burst = Burst::new("o'wner \"%\" ✓");
    run_children("child_process_entry", 3, |_| burst.orders(&prefix)).await;

    let mut connection = connect(&url).await;
    let counters = RedisUsage::new(connection.clone())
        .with_prefix(prefix.as_str())
        .unwrap()
        .clock(keyward::clock::FakeClock::new(burst.at));
    let good = counters.snapshot(&burst.good.id()).await.unwrap();
    assert_eq!((good.minute.requests, good.minute.allowed), (240, 240));
    assert_eq!(good.day.requests, 240, "the day adds up the minutes");
    let revoked = counters.snapshot(&burst.revoked.id()).await.unwrap();
    assert_eq!(
        (
            revoked.minute.denied,
            revoked.minute.denied_for(RejectReason::Revoked)
        ),
        (60, 60)
    );
    assert_eq!(good.previous_minute.requests, 0);

    // Named by the public key id only, in the key's hash tag, with expiries.
    let keys: Vec<String> = connection.keys(format!("{prefix}*")).await.unwrap();
    assert_eq!(
        keys.len(),
        4,
        "a minute and a day hash for each key: {keys:?}"
    );
    for key in &keys {
        let id = key.strip_prefix(&prefix).unwrap();
        assert!(
            id.starts_with(&format!("{{{}}}:", burst.good.id()))
                || id.starts_with(&format!("{{{}}}:", burst.revoked.id())),
            "{key}"
        );
        assert!(!key.contains(burst.good.expose_secret()) && !key.contains("wner"));
        let ttl: i64 = connection.ttl(key).await.unwrap();
        assert!(ttl > 0, "{key} expires");
    }
    clean(&mut connection, &prefix).await;
}

#[tokio::test]
async fn with_redis_cut_requests_are_served_and_drops_are_counted() {
    let Some(url) = service_url(
        "REDIS_URL",
        "with_redis_cut_requests_are_served_and_drops_are_counted",
    ) else {
        return;
    };
    let prefix = format!("{}:", unique_name("keyward_test_usage"));
    let proxy = FaultProxy::for_url(&url).await;
    let counters = RedisUsage::new(connect(&proxy.url(&url)).await)
        .with_prefix(prefix.as_str())
        .unwrap()
        .clock(keyward::clock::FakeClock::new(Burst::new("acme").at))
        .retries(1)
        .backoff(Duration::from_millis(10))
        .timeout(Duration::from_millis(500));
    let sink = BatchingSink::builder(counters.clone())
        .max_batch(10)
        .spawn();
    let burst = Burst::new("acme");

    proxy.cut();
    let (allowed, denied) = burst.run(sink.clone(), 50).await;
    assert_eq!(
        (allowed, denied),
        (40, 10),
        "every request answered as usual"
    );
    sink.flush().await;
    let stats = counters.stats();
    assert_eq!(stats.events, 0);
    assert_eq!(
        stats.dropped + sink.dropped(),
        50,
        "every event written or counted as dropped: {stats:?}"
    );
    assert!(stats.failures >= 2, "each batch tried twice: {stats:?}");

    // Back: counting resumes (the connection manager reconnects).
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        burst.run(sink.clone(), 5).await;
        sink.flush().await;
        if counters.stats().events > 0 || tokio::time::Instant::now() > deadline {
            break;
        }
    }
    assert!(
        counters.stats().events > 0,
        "written again once Redis is back"
    );
    let snapshot = counters.snapshot(&burst.good.id()).await.unwrap();
    assert!(snapshot.minute.requests > 0);
    clean(&mut connect(&url).await, &prefix).await;
}

#[tokio::test]
async fn prefixes_that_would_break_the_hash_tag_are_refused() {
    let Some(url) = service_url(
        "REDIS_URL",
        "prefixes_that_would_break_the_hash_tag_are_refused",
    ) else {
        return;
    };
    let connection = connect(&url).await;
    let long = "p".repeat(65);
    for bad in ["a{b:", "a}b:", "a b:", "tab\t", "é:", long.as_str()] {
        let refused = RedisUsage::new(connection.clone()).with_prefix(bad);
        assert!(refused.is_err(), "{bad:?}");
    }
    assert!(RedisUsage::new(connection)
        .with_prefix("app:usage:")
        .is_ok());
}
