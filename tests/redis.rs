//! RedisStore against the server in REDIS_URL (skipped, saying so, without
//! it): the conformance suite, alone and behind a CachedStore; hostile
//! input; key names that hold no secret and no raw owner.
#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
use keyward::record::KeyRecord;
use keyward::store::invalidation::RedisInvalidation;
use keyward::store::{conformance, CachedStore, Field, KeyStore, RedisStore, StoreError};
use redis::aio::ConnectionManager;
use support::services::{service_url, unique_name};

struct Fixture {
    store: RedisStore,
    connection: ConnectionManager,
    prefix: String,
    client: redis::Client,
}

async fn fixture(url: &str) -> Fixture {
    let client = redis::Client::open(url).unwrap();
    let connection = ConnectionManager::new(client.clone())
        .await
        .expect("REDIS_URL is set, so Redis must answer");
    let prefix = unique_name("kw_redis");
    let store = RedisStore::new(connection.clone())
        .with_prefix(&prefix)
        .unwrap()
        .timeout(Duration::from_secs(5));
    Fixture {
        store,
        connection,
        prefix,
        client,
    }
}

impl Fixture {
    async fn key_names(&self) -> Vec<String> {
        let mut connection = self.connection.clone();
        redis::cmd("KEYS")
            .arg(format!("{{{}}}:*", self.prefix))
            .query_async(&mut connection)
            .await
            .unwrap()
    }

    async fn cleanup(self) {
        let names = self.key_names().await;
        if !names.is_empty() {
            let mut connection = self.connection.clone();
            let _: () = redis::cmd("DEL")
                .arg(names)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
    }
}

fn record(owner: &str) -> KeyRecord {
    let key = KeyGenerator::new(KeyFormat::new("sk_test").unwrap())
        .generate()
        .unwrap();
    KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        owner,
        UNIX_EPOCH + Duration::from_nanos(1_765_000_000_123_456_789),
    )
}

#[tokio::test]
async fn redis_store_conforms() {
    let Some(url) = service_url("REDIS_URL", "redis_store_conforms") else {
        return;
    };
    let fixture = fixture(&url).await;
    conformance::run(&fixture.store).await;
    conformance::run(&fixture.store).await;
    let dynamic: Arc<dyn KeyStore> = Arc::new(fixture.store.clone());
    conformance::run(&dynamic).await;
    assert_eq!(fixture.store.stats().errors, 0);
    fixture.cleanup().await;
}

#[tokio::test]
async fn cached_redis_store_conforms() {
    let Some(url) = service_url("REDIS_URL", "cached_redis_store_conforms") else {
        return;
    };
    let fixture = fixture(&url).await;
    let cached = CachedStore::builder(fixture.store.clone())
        .invalidation(RedisInvalidation::new(
            fixture.client.clone(),
            format!("{}:invalidate", fixture.prefix),
        ))
        .build();
    conformance::run(&cached).await;
    fixture.cleanup().await;
}

#[tokio::test]
async fn hostile_owners_are_data_and_never_key_names() {
    let Some(url) = service_url("REDIS_URL", "hostile_owners_are_data") else {
        return;
    };
    let fixture = fixture(&url).await;
    let store = &fixture.store;
    let hostile = [
        "{other}",
        "a}b{c",
        "*",
        "?",
        "[a-z]",
        "with space",
        "line\nbreak\r\n*3\r\n$3\r\nDEL",
        "nul\0byte",
        "ünïcødé 🔑",
        "'; return redis.call('FLUSHALL') --",
        &"x".repeat(1024),
    ];
    let mut secrets = Vec::new();
    for owner in hostile {
        let key = KeyGenerator::new(KeyFormat::new("sk_test").unwrap())
            .generate()
            .unwrap();
        let mut record = record(owner).with_name(owner).with_metadata(owner, owner);
        record.id = key.id();
        record.hash = KeyHasher::sha256().hash(key.secret());
        secrets.push((key.secret().to_owned(), record.hash.to_string()));
        store.insert(record.clone()).await.unwrap();
        assert_eq!(*store.find(&record.id).await.unwrap().unwrap(), record);
        let listed = store.list_by_owner(owner).await.unwrap();
        assert_eq!(listed.len(), 1, "{owner:?}");
        assert_eq!(*listed[0], record);
    }
    assert!(store.list_by_owner("*").await.unwrap().len() == 1);
    assert!(store.list_by_owner("").await.unwrap().is_empty());
    assert!(matches!(
        store.insert(record(&"x".repeat(1025))).await,
        Err(StoreError::Unstorable(Field::Owner))
    ));
    assert!(store
        .list_by_owner(&"y".repeat(100_000))
        .await
        .unwrap()
        .is_empty());

    let names = fixture.key_names().await;
    assert_eq!(
        names.len(),
        2 * hostile.len(),
        "a record and an index per owner"
    );
    for name in &names {
        for owner in hostile {
            assert!(!name.contains(owner), "a raw owner in a key name: {name:?}");
        }
        for (secret, hash) in &secrets {
            assert!(!name.contains(secret.as_str()) && !name.contains(hash.as_str()));
        }
    }
    fixture.cleanup().await;
}

#[tokio::test]
async fn prefixes_are_checked() {
    let Some(url) = service_url("REDIS_URL", "prefixes_are_checked") else {
        return;
    };
    let fixture = fixture(&url).await;
    for bad in ["", "a b", "{tag}", "a}", "é", &"a".repeat(65)] {
        assert!(fixture.store.clone().with_prefix(bad).is_err(), "{bad:?}");
    }
    fixture.cleanup().await;
}

#[tokio::test]
async fn signing_keys_keep_their_verification_key() {
    let Some(url) = service_url("REDIS_URL", "signing_keys_keep_their_verification_key") else {
        return;
    };
    let fixture = fixture(&url).await;
    let record =
        record("acme").with_verification_key(keyward::key::VerificationKey::ed25519([7; 32]));
    fixture.store.insert(record.clone()).await.unwrap();
    assert_eq!(
        *fixture.store.find(&record.id).await.unwrap().unwrap(),
        record
    );
    fixture.cleanup().await;
}

#[tokio::test]
async fn find_by_hash_is_one_command() {
    use futures_util::StreamExt;
    let Some(url) = service_url("REDIS_URL", "find_by_hash_is_one_command") else {
        return;
    };
    let fixture = fixture(&url).await;
    let mut imported = record("acme");
    imported.hash = keyward::key::LegacyFormat::new(keyward::key::LegacyAlphabet::Hex, 32)
        .unwrap()
        .hash("0123456789abcdef0123456789abcdef")
        .unwrap();
    fixture.store.insert(imported.clone()).await.unwrap();
    // Once first, so that the script is loaded and the look-up watched
    // below is the one every later look-up makes.
    let found = fixture.store.find_by_hash(&imported.hash).await.unwrap();
    assert_eq!(found.as_deref(), Some(&imported));

    let mut monitor = fixture.client.get_async_monitor().await.unwrap();
    let found = fixture.store.find_by_hash(&imported.hash).await.unwrap();
    assert_eq!(found.as_deref(), Some(&imported));
    // The commands this client sent that name this fixture's keys (the
    // server is shared; commands run by a script show as `lua`).
    let mut sent = Vec::new();
    let mut lines = monitor.on_message::<String>();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_millis(300), lines.next()).await
    {
        if line.contains(&fixture.prefix) && !line.contains(" lua]") {
            sent.push(line);
        }
    }
    assert_eq!(
        sent.len(),
        1,
        "find_by_hash must be one round trip, one command: {sent:#?}"
    );
    drop(lines);
    fixture.cleanup().await;
}
