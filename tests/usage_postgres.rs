//! Usage in PostgreSQL: the exporter and the queries. Several OS processes
//! export one burst and the rollups count every request; a database cut
//! off costs usage records (counted), never a request. Needs
//! `DATABASE_URL`; skipped without it.
#![cfg(feature = "postgres")]

mod support;

use std::time::Duration;

use keyward::key::KeyHasher;
use keyward::record::{KeyRecord, KeyStatus};
use keyward::reject::RejectReason;
use keyward::store::{KeyStore, PgStore};
use keyward::usage::{
    conformance, BatchingSink, PgUsage, Step, TimeRange, UsageExporter, UsageQuery, UsageSink,
    UsageSource,
};
use sqlx::postgres::{PgPool, PgPoolOptions};

use support::burst::Burst;
use support::children::{child_orders, run_children};
use support::proxy::FaultProxy;
use support::services::{service_url, unique_name};

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .expect("DATABASE_URL is set, so PostgreSQL must answer")
}

/// A fresh schema with the usage tables; dropped by [`drop_schema`].
async fn fresh(url: &str) -> (PgPool, String, PgUsage) {
    let pool = pool(url).await;
    let schema = unique_name("kw_usage");
    let usage = PgUsage::new(pool.clone(), &schema).unwrap();
    usage.migrate().await.expect("migrate");
    (pool, schema, usage)
}

async fn drop_schema(pool: &PgPool, schema: &str) {
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn pg_usage_conforms_in_one_statement_and_with_copy() {
    let Some(url) = service_url(
        "DATABASE_URL",
        "pg_usage_conforms_in_one_statement_and_with_copy",
    ) else {
        return;
    };
    let (pool, schema, usage) = fresh(&url).await;
    // Migrating again (another process starting) changes nothing.
    usage.migrate().await.unwrap();
    for copy in [false, true] {
        let exporter = usage.exporter().copy_events(copy);
        conformance::run(&usage, |batch| {
            let mut exporter = exporter.clone();
            async move { exporter.export(batch).await }
        })
        .await;
        let stats = exporter.stats();
        assert_eq!(
            (stats.batches, stats.events, stats.dropped),
            (2, 13, 0),
            "{stats:?}"
        );
    }
    // Every event is kept raw, also the ones the rollups leave out.
    let raw: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".keyward_usage_events"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(raw, 26);
    let owners: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT DISTINCT owner FROM \"{schema}\".keyward_usage_events WHERE owner LIKE 'o''wner%'"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        owners.iter().all(|o| o.contains("100% _x_ \\ é ✓")),
        "stored byte for byte: {owners:?}"
    );
    drop_schema(&pool, &schema).await;
}

/// What a child process runs: a burst exported into PostgreSQL, then it
/// waits until everything is written. Does nothing in a normal test run.
#[tokio::test]
async fn child_process_entry() {
    let Some(orders) = child_orders() else { return };
    let (burst, schema) = Burst::from_orders(&orders);
    let url = std::env::var("DATABASE_URL").expect("the parent had DATABASE_URL");
    let usage = PgUsage::new(pool(&url).await, &schema).unwrap();
    usage.migrate().await.unwrap(); // three processes at once: applied once
    let exporter = usage.exporter();
    let sink = BatchingSink::builder(exporter.clone())
        .max_batch(16)
        .spawn();
    burst.run(sink.clone(), 100).await;
    sink.shutdown().await;
    let stats = exporter.stats();
    assert_eq!(
        (sink.dropped(), stats.dropped, stats.events),
        (0, 0, 100),
        "{stats:?}"
    );
}

#[tokio::test]
async fn rollups_count_every_request_of_a_burst_from_three_processes() {
    let Some(url) = service_url(
        "DATABASE_URL",
        "rollups_count_every_request_of_a_burst_from_three_processes",
    ) else {
        return;
    };
    let pool = pool(&url).await;
    let schema = unique_name("kw_usage");
    let burst = Burst::new("o'wner \"%\" ✓");
    run_children("child_process_entry", 3, |_| burst.orders(&schema)).await;

    let usage = PgUsage::new(pool.clone(), &schema).unwrap();
    let minute = TimeRange::new(burst.at, burst.at + Duration::from_secs(1));
    let good = usage
        .total(&UsageQuery::key(burst.good.id(), minute))
        .await
        .unwrap();
    assert_eq!((good.requests, good.allowed, good.denied), (240, 240, 0));
    let revoked = usage
        .total(&UsageQuery::key(burst.revoked.id(), minute))
        .await
        .unwrap();
    assert_eq!(
        (revoked.requests, revoked.denied_for(RejectReason::Revoked)),
        (60, 60)
    );
    // The owner, quotes, `%` and all: the good key's rows name it (the
    // revoked key's events had no authenticated owner, and there is no
    // keys table here to fill it in).
    let owner = usage
        .total(&UsageQuery::owner(&burst.owner, minute))
        .await
        .unwrap();
    assert_eq!(owner.requests, 240);
    let rows = usage
        .query(&UsageQuery::all(minute).step(Step::MINUTE))
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        2,
        "one rollup a key for the one minute: {rows:?}"
    );
    drop_schema(&pool, &schema).await;
}

#[tokio::test]
async fn with_the_database_cut_requests_are_served_and_drops_are_counted() {
    let Some(url) = service_url(
        "DATABASE_URL",
        "with_the_database_cut_requests_are_served_and_drops_are_counted",
    ) else {
        return;
    };
    let (admin, schema, _) = fresh(&url).await;
    let proxy = FaultProxy::for_url(&url).await;
    let usage = PgUsage::new(pool(&proxy.url(&url)).await, &schema).unwrap();
    let exporter = usage
        .exporter()
        .retries(1)
        .backoff(Duration::from_millis(10))
        .timeout(Duration::from_millis(500));
    let sink = BatchingSink::builder(exporter.clone())
        .max_batch(10)
        .capacity(20)
        .spawn();
    let burst = Burst::new("acme");

    proxy.cut();
    let started = tokio::time::Instant::now();
    let (allowed, denied) = burst.run(sink.clone(), 50).await;
    assert_eq!(
        (allowed, denied),
        (40, 10),
        "every request answered as usual"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no request waited on the database"
    );
    sink.flush().await;
    let stats = exporter.stats();
    assert_eq!(stats.events, 0);
    assert_eq!(
        stats.dropped + sink.dropped(),
        50,
        "every event written or counted as dropped: {stats:?}, sink {}",
        sink.dropped()
    );
    assert!(stats.failures >= 2, "each batch tried twice: {stats:?}");

    // Back: the pool reconnects and writing resumes.
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while exporter.stats().events == 0 && tokio::time::Instant::now() < deadline {
        burst.run(sink.clone(), 5).await;
        sink.flush().await;
    }
    let written = exporter.stats().events;
    assert!(written > 0, "written again once the database is back");
    let minute = TimeRange::new(burst.at, burst.at + Duration::from_secs(1));
    let admin_usage = PgUsage::new(admin.clone(), &schema).unwrap();
    let total = admin_usage.total(&UsageQuery::all(minute)).await.unwrap();
    assert_eq!(
        total.requests, written,
        "what was counted as written is in the rollups"
    );
    drop(proxy);
    drop_schema(&admin, &schema).await;
}

#[tokio::test]
async fn with_the_database_hanging_attempts_time_out_and_requests_never_wait() {
    let Some(url) = service_url(
        "DATABASE_URL",
        "with_the_database_hanging_attempts_time_out_and_requests_never_wait",
    ) else {
        return;
    };
    let (admin, schema, _) = fresh(&url).await;
    let proxy = FaultProxy::for_url(&url).await;
    let usage = PgUsage::new(pool(&proxy.url(&url)).await, &schema).unwrap();
    let exporter = usage
        .exporter()
        .retries(1)
        .backoff(Duration::from_millis(10))
        .timeout(Duration::from_millis(200));
    let sink = BatchingSink::builder(exporter.clone())
        .max_batch(10)
        .capacity(20)
        .spawn();
    let burst = Burst::new("acme");

    proxy.stall();
    let started = tokio::time::Instant::now();
    let (allowed, denied) = burst.run(sink.clone(), 50).await;
    assert_eq!(
        (allowed, denied),
        (40, 10),
        "every request answered as usual"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no request waited on the database"
    );
    sink.flush().await;
    let stats = exporter.stats();
    assert_eq!(
        (stats.events, stats.dropped + sink.dropped()),
        (0, 50),
        "each attempt gave up at its timeout; every event counted: {stats:?}"
    );
    proxy.restore();
    drop(proxy);
    drop_schema(&admin, &schema).await;
}

#[tokio::test]
async fn pg_stores_keys_table_gets_last_used_at_and_fills_in_missing_owners() {
    let Some(url) = service_url(
        "DATABASE_URL",
        "pg_stores_keys_table_gets_last_used_at_and_fills_in_missing_owners",
    ) else {
        return;
    };
    let (pool, schema, _) = fresh(&url).await;
    // The real keys table, as `PgStore` makes it, holding the burst's keys.
    let store = PgStore::new(pool.clone())
        .with_table(&schema, "keys")
        .unwrap();
    store.migrate().await.unwrap();
    let burst = Burst::new("o'wner %_ ✓");
    let mut records = Vec::new();
    for (key, status) in [
        (&burst.good, KeyStatus::Active),
        (&burst.revoked, KeyStatus::Revoked),
    ] {
        let hash = KeyHasher::sha256().hash(key.secret());
        let record =
            KeyRecord::new(key.id(), hash, burst.owner.as_str(), burst.at).with_status(status);
        store.insert(record.clone()).await.unwrap();
        records.push(record);
    }
    let usage = PgUsage::new(pool.clone(), &schema)
        .unwrap()
        .keys_table(store.table().clone());
    let exporter = usage.exporter();
    let sink = BatchingSink::new(exporter.clone());
    burst.run(sink.clone(), 10).await;
    sink.shutdown().await;
    assert_eq!(exporter.stats().events, 10);

    let last_used: Vec<(String, Option<i64>)> = sqlx::query_as(&format!(
        "SELECT id, extract(epoch FROM last_used_at)::int8 FROM \"{schema}\".keys"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    let at = burst
        .at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(last_used.len(), 2);
    for (id, used) in last_used {
        assert_eq!(used, Some(at), "{id}: last used when the burst ran");
    }
    // The store reads its records back as they were: the exporter wrote
    // only `last_used_at`.
    for record in &records {
        let found = store.find(&record.id).await.unwrap().expect("stored");
        assert_eq!(*found, *record);
    }
    // The revoked key's requests never authenticated; its owner comes from
    // the keys table, so the owner's total has every request.
    let minute = TimeRange::new(burst.at, burst.at + Duration::from_secs(1));
    let owner = usage
        .total(&UsageQuery::owner(&burst.owner, minute))
        .await
        .unwrap();
    assert_eq!((owner.requests, owner.allowed, owner.denied), (10, 8, 2));
    drop_schema(&pool, &schema).await;
}

#[tokio::test]
async fn prune_deletes_what_is_older_than_asked() {
    let Some(url) = service_url("DATABASE_URL", "prune_deletes_what_is_older_than_asked") else {
        return;
    };
    let (pool, schema, usage) = fresh(&url).await;
    let burst = Burst::new("acme");
    let exporter = usage.exporter();
    let sink = BatchingSink::new(exporter.clone());
    burst.run(sink.clone(), 10).await;
    sink.shutdown().await;
    let minute = TimeRange::new(burst.at, burst.at + Duration::from_secs(1));
    // Events before the burst: nothing to delete.
    let before = burst.at - Duration::from_secs(60);
    assert_eq!(usage.prune(before, before).await.unwrap(), (0, 0));
    // Raw events up to a second after it, rollups kept.
    let after = burst.at + Duration::from_secs(1);
    assert_eq!(usage.prune(after, before).await.unwrap(), (10, 0));
    assert_eq!(
        usage
            .total(&UsageQuery::all(minute))
            .await
            .unwrap()
            .requests,
        10
    );
    // Then the rollups (one a key).
    assert_eq!(usage.prune(after, after).await.unwrap(), (0, 2));
    assert_eq!(
        usage
            .total(&UsageQuery::all(minute))
            .await
            .unwrap()
            .requests,
        0
    );
    drop_schema(&pool, &schema).await;
}

#[tokio::test]
async fn hostile_routes_and_tags_are_stored_as_they_are() {
    let Some(url) = service_url(
        "DATABASE_URL",
        "hostile_routes_and_tags_are_stored_as_they_are",
    ) else {
        return;
    };
    let (pool, schema, usage) = fresh(&url).await;
    let route = "/pets/o'wner%25_%C3%A9\\x";
    let tag = "it's\t100%\n\u{e9}\\ \"quoted\" '); DROP TABLE x; --";
    for copy in [false, true] {
        let exporter = usage.exporter().copy_events(copy);
        let sink = BatchingSink::new(exporter.clone());
        let service = tower::ServiceBuilder::new()
            .layer(keyward::usage::UsageLayer::new(sink.clone()))
            .service(tower::service_fn(|_: http::Request<String>| async {
                let mut response = http::Response::new(String::new());
                response
                    .extensions_mut()
                    .insert(keyward::usage::UsageTags::new().with("note", tag));
                Ok::<_, std::convert::Infallible>(response)
            }));
        let request = http::Request::get(route).body(String::new()).unwrap();
        tower::ServiceExt::oneshot(service, request).await.unwrap();
        sink.shutdown().await;
        assert_eq!(exporter.stats().events, 1, "copy: {copy}");
    }
    let stored: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT route, tags->>'note' FROM \"{schema}\".keyward_usage_events"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 2);
    for (r, t) in stored {
        assert_eq!((r.as_str(), t.as_str()), (route, tag));
    }
    drop_schema(&pool, &schema).await;
}

#[tokio::test]
async fn bad_schema_names_are_refused_before_any_sql() {
    let Some(url) = service_url(
        "DATABASE_URL",
        "bad_schema_names_are_refused_before_any_sql",
    ) else {
        return;
    };
    let pool = pool(&url).await;
    for bad in ["a\"; drop table x; --", "Usage", "%", "é", "a b", ""] {
        assert!(PgUsage::new(pool.clone(), bad).is_err(), "{bad:?}");
    }
}
