//! PgStore against the server in DATABASE_URL (skipped, saying so, without
//! it): the conformance suite, alone and behind a CachedStore; migrations
//! from several processes at once; hostile input.
#![cfg(feature = "postgres")]

mod support;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keyward::key::{KeyFormat, KeyGenerator, KeyHasher, KeyId};
use keyward::postgres::MigrateError;
use keyward::record::KeyRecord;
use keyward::store::invalidation::PgInvalidation;
use keyward::store::{conformance, CachedStore, Field, KeyStore, PgStore, StoreError};
use support::services::{service_url, unique_name};

/// A store in a schema of its own; dropped by `cleanup`.
async fn store(url: &str) -> PgStore {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .expect("DATABASE_URL is set, so PostgreSQL must answer");
    let store = PgStore::new(pool)
        .with_table(&unique_name("kw_pg"), "keys")
        .unwrap()
        .timeout(Duration::from_secs(5));
    store.migrate().await.expect("migrate");
    store
}

async fn cleanup(store: &PgStore) {
    sqlx::query(&format!("DROP SCHEMA {} CASCADE", store.table().schema()))
        .execute(store.pool())
        .await
        .unwrap();
}

fn record(owner: &str) -> KeyRecord {
    let key = KeyGenerator::new(KeyFormat::new("sk_test").unwrap())
        .generate()
        .unwrap();
    KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        owner,
        // Whole milliseconds: PostgreSQL keeps microseconds.
        UNIX_EPOCH + Duration::from_millis(1_765_000_000_123),
    )
}

#[tokio::test]
async fn pg_store_conforms() {
    let Some(url) = service_url("DATABASE_URL", "pg_store_conforms") else {
        return;
    };
    let store = store(&url).await;
    conformance::run(&store).await;
    conformance::run(&store).await; // again, on the same table
    let dynamic: Arc<dyn KeyStore> = Arc::new(store.clone());
    conformance::run(&dynamic).await;
    assert_eq!(store.stats().errors, 0);
    cleanup(&store).await;
}

#[tokio::test]
async fn cached_pg_store_conforms() {
    let Some(url) = service_url("DATABASE_URL", "cached_pg_store_conforms") else {
        return;
    };
    let store = store(&url).await;
    let cached = CachedStore::builder(store.clone())
        .invalidation(
            PgInvalidation::new(store.pool().clone())
                .channel(&unique_name("kw_pg"))
                .unwrap(),
        )
        .build();
    conformance::run(&cached).await;
    cleanup(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_many_processes_at_once_apply_once() {
    let Some(url) = service_url("DATABASE_URL", "migrations_from_many_processes_at_once") else {
        return;
    };
    let first = store(&url).await;
    let schema = first.table().schema().as_str().to_owned();
    cleanup(&first).await;
    // Five "processes", each with its own pool, start at once on a fresh schema.
    let mut starts = Vec::new();
    for _ in 0..5 {
        let url = url.clone();
        let schema = schema.clone();
        starts.push(tokio::spawn(async move {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let store = PgStore::new(pool).with_table(&schema, "keys").unwrap();
            store.migrate().await.map(|()| store)
        }));
    }
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.unwrap().expect("every migrate succeeds"));
    }
    let applied: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".\"keys_migrations\""
    ))
    .fetch_one(stores[0].pool())
    .await
    .unwrap();
    assert_eq!(
        applied, 3,
        "each migration (the table; imported keys' hashes; publishable keys) applied once"
    );
    let inserted = record("acme");
    stores[0].insert(inserted.clone()).await.unwrap();
    assert_eq!(
        *stores[4].find(&inserted.id).await.unwrap().unwrap(),
        inserted
    );
    cleanup(&stores[0]).await;
}

#[tokio::test]
async fn hostile_owners_names_and_metadata_are_data_not_sql() {
    let Some(url) = service_url("DATABASE_URL", "hostile_input_is_data_not_sql") else {
        return;
    };
    let store = store(&url).await;
    let hostile = [
        "'; DROP TABLE keys; --",
        "o'brien",
        "\"quoted\"",
        "100%",
        "_under_",
        "%_%",
        "back\\slash",
        "ünïcødé 🔑",
        "$1",
        &"x".repeat(1024),
    ];
    for owner in hostile {
        let record = record(owner).with_name(owner).with_metadata(owner, owner);
        store.insert(record.clone()).await.unwrap();
        assert_eq!(*store.find(&record.id).await.unwrap().unwrap(), record);
        let listed = store.list_by_owner(owner).await.unwrap();
        assert_eq!(
            listed.len(),
            1,
            "LIKE wildcards and quotes match only themselves: {owner}"
        );
        assert_eq!(listed[0].id, record.id);
    }
    // Patterns are not patterns.
    assert!(store.list_by_owner("%").await.unwrap().is_empty());
    assert!(store.list_by_owner("_").await.unwrap().is_empty());

    // What PostgreSQL cannot keep is a typed error, and nothing is stored.
    let too_long = record(&"x".repeat(1025));
    assert!(matches!(
        store.insert(too_long.clone()).await,
        Err(StoreError::Unstorable(Field::Owner))
    ));
    assert!(store.find(&too_long.id).await.unwrap().is_none());
    assert!(matches!(
        store.insert(record("nul\0owner")).await,
        Err(StoreError::Unstorable(Field::Owner))
    ));
    assert!(matches!(
        store.insert(record("a").with_name("nul\0")).await,
        Err(StoreError::Unstorable(Field::Name))
    ));
    assert!(matches!(
        store.insert(record("a").with_metadata("k", "\0")).await,
        Err(StoreError::Unstorable(Field::Metadata))
    ));
    assert!(store.list_by_owner("nul\0owner").await.unwrap().is_empty());
    assert!(store
        .list_by_owner(&"y".repeat(100_000))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.stats().errors, 0, "no query failed on the way");

    // The table is still there and whole.
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", store.table()))
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(count, hostile.len() as i64);
    cleanup(&store).await;
}

#[tokio::test]
async fn table_names_are_checked_before_any_sql() {
    let Some(url) = service_url("DATABASE_URL", "table_names_are_checked") else {
        return;
    };
    let pool = sqlx::PgPool::connect_lazy(&url).unwrap();
    for (schema, table) in [
        ("public", "keys\"; DROP TABLE x; --"),
        ("Public", "keys"),
        ("public", ""),
        ("a b", "keys"),
    ] {
        assert!(PgStore::new(pool.clone())
            .with_table(schema, table)
            .is_err());
    }
    let _ = KeyId::try_from("abcdefABCDEF").unwrap();
}

#[tokio::test]
async fn an_edited_row_is_an_error_never_a_record() {
    let Some(url) = service_url("DATABASE_URL", "an_edited_row_is_an_error") else {
        return;
    };
    let store = store(&url).await;
    let record = record("acme");
    store.insert(record.clone()).await.unwrap();
    sqlx::query(&format!(
        "UPDATE {} SET scopes = ARRAY['not a scope'] WHERE id = $1",
        store.table()
    ))
    .bind(record.id.as_str())
    .execute(store.pool())
    .await
    .unwrap();
    let error = store.find(&record.id).await.unwrap_err();
    assert!(matches!(error, StoreError::Backend(_)));
    let source = std::error::Error::source(&error).unwrap().to_string();
    assert!(source.contains("scopes"), "{source}");
    assert!(
        !source.contains("not a scope"),
        "never the contents: {source}"
    );
    let _ = MigrateError::Changed { version: 1 }.to_string();
    cleanup(&store).await;
}

#[tokio::test]
async fn signing_keys_keep_their_verification_key() {
    let Some(url) = service_url("DATABASE_URL", "signing_keys_keep_their_verification_key") else {
        return;
    };
    let store = store(&url).await;
    for key in [
        keyward::key::VerificationKey::ed25519([7; 32]),
        keyward::key::VerificationKey::hmac_sha256(vec![9; 32]).unwrap(),
    ] {
        let record = record("acme").with_verification_key(key);
        store.insert(record.clone()).await.unwrap();
        assert_eq!(*store.find(&record.id).await.unwrap().unwrap(), record);
    }
    cleanup(&store).await;
}
