//! Records as stored data (feature `serde`): RFC 3339 times, durations in
//! named units, refills with named fields, hashes that name their
//! algorithm; the shapes of earlier versions still read; a pepper added
//! later locks no key out. Public API only.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward::auth::Authenticator;
use keyward::clock::FakeClock;
use keyward::key::{HashAlgorithm, KeyFormat, KeyGenerator, KeyHash, KeyHasher, PepperId};
use keyward::limit::{CreditPolicy, Limits, RatePolicy};
use keyward::manager::{IssueOptions, KeyManager};
use keyward::record::{Environment, KeyRecord, KeyStatus};
use keyward::reject::RejectReason;
use keyward::store::{KeyStore, Lookup, MemoryStore, StoreError};
use keyward::KeyId;
use serde_json::json;
use support::CapturedLogs;

/// 2025-01-01T12:30:00Z.
fn noon_thirty() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_735_734_600)
}

fn limits() -> Limits {
    Limits::new([
        RatePolicy::new("burst", 5, Duration::from_secs(1))
            .unwrap()
            .into(),
        CreditPolicy::new("monthly", 10_000)
            .unwrap()
            .with_refill(10_000, Duration::from_secs(30 * 86_400))
            .unwrap()
            .into(),
    ])
    .unwrap()
}

fn sample() -> KeyRecord {
    let hasher = KeyHasher::with_pepper(PepperId::new(1), b"from a secret manager");
    let mut record = KeyRecord::new(
        "AbCdEf012345".parse().unwrap(),
        hasher.hash("the secret"),
        "acme",
        noon_thirty() + Duration::from_millis(250),
    )
    .with_name("billing export")
    .with_scopes("pets:read".parse().unwrap())
    .with_expires_at(noon_thirty() + Duration::from_secs(90 * 86_400))
    .with_limits(limits())
    .with_environment(Environment::Live)
    .with_allowed_networks(["10.0.0.0/8".parse().unwrap()])
    .with_metadata("team", "billing");
    record.set_revoked_at(None);
    record
}

#[test]
fn a_record_is_stored_in_shapes_a_dba_can_read() {
    let record = sample();
    let json = serde_json::to_value(&record).unwrap();
    let hex: String = record
        .hash
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        json,
        json!({
            "hash": format!("hmac-sha256:1:{hex}"),
            "id": "AbCdEf012345",
            "status": "active",
            "environment": "live",
            "expires_at": "2025-04-01T12:30:00Z",
            "not_before": null,
            "allowed_networks": ["10.0.0.0/8"],
            "scopes": ["pets:read"],
            "limits": [
                {"rate": {"name": "burst", "quota": 5, "window_ms": 1000, "burst": 5}},
                {"credits": {"name": "monthly", "capacity": 10000,
                             "refill": {"amount": 10000, "interval_ms": 2_592_000_000u64}}}
            ],
            "owner": "acme",
            "name": "billing export",
            "created_at": "2025-01-01T12:30:00.250Z",
            "revoked_at": null,
            "metadata": {"team": "billing"}
        })
    );
    let back: KeyRecord = serde_json::from_value(json).unwrap();
    assert_eq!(back, record);
}

#[test]
fn fractions_of_a_second_are_written_only_when_there_are_some() {
    let mut record = sample();
    for (offset, written) in [
        (Duration::ZERO, "2025-01-01T12:30:00Z"),
        (Duration::from_millis(5), "2025-01-01T12:30:00.005Z"),
        (Duration::from_micros(1_500), "2025-01-01T12:30:00.001500Z"),
        (Duration::from_nanos(7), "2025-01-01T12:30:00.000000007Z"),
    ] {
        record.set_created_at(noon_thirty() + offset);
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["created_at"], written);
        let back: KeyRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back.created_at(), record.created_at(), "{written}");
    }
}

#[test]
fn times_with_an_offset_or_before_1970_read() {
    let mut json = serde_json::to_value(sample()).unwrap();
    json["created_at"] = json!("2025-01-01T14:30:00.250+02:00");
    json["not_before"] = json!("1969-07-20T20:17:40Z");
    json["revoked_at"] = json!("2024-02-29T23:59:59.5-01:00");
    let record: KeyRecord = serde_json::from_value(json).unwrap();
    assert_eq!(record.created_at(), sample().created_at());
    assert_eq!(
        record.not_before(),
        UNIX_EPOCH.checked_sub(Duration::from_secs(14_182_940))
    );
    assert_eq!(
        record.revoked_at(),
        Some(UNIX_EPOCH + Duration::from_millis(1_709_254_799_500))
    );
    // Before 1970 is written as it was read.
    let written = serde_json::to_value(&record).unwrap();
    assert_eq!(written["not_before"], "1969-07-20T20:17:40Z");
    assert_eq!(written["revoked_at"], "2024-03-01T00:59:59.500Z");
}

#[test]
fn bad_times_are_errors_not_panics() {
    for bad in [
        json!("2025-02-29T00:00:00Z"),
        json!("2025-01-01T00:00:60Z"),
        json!("2025-01-01 00:00:00"),
        json!("tomorrow"),
        json!(""),
        json!(1_735_734_600),
        json!({"secs_since_epoch": "x"}),
    ] {
        let mut json = serde_json::to_value(sample()).unwrap();
        json["created_at"] = bad.clone();
        assert!(serde_json::from_value::<KeyRecord>(json).is_err(), "{bad}");
    }
    // Beyond year 9999, a time cannot be written as RFC 3339: an error.
    let mut far = sample();
    far.set_expires_at(Some(UNIX_EPOCH + Duration::from_secs(253_402_300_800)));
    let error = serde_json::to_string(&far).unwrap_err();
    assert!(error.to_string().contains("9999"), "{error}");
}

/// What earlier versions wrote: serde's own shapes for `SystemTime` and
/// `Duration`, the refill as a pair, the hash as bare hex.
#[test]
fn records_written_by_earlier_versions_still_read() {
    let plain = KeyHasher::sha256().hash("the secret");
    let hex: String = plain
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let old = json!({
        "hash": hex,
        "id": "AbCdEf012345",
        "status": "active",
        "environment": null,
        "expires_at": {"secs_since_epoch": 1_743_510_600u64, "nanos_since_epoch": 0},
        "not_before": null,
        "allowed_networks": [],
        "scopes": ["pets:read"],
        "limits": [
            {"rate": {"name": "burst", "quota": 5, "window": {"secs": 1, "nanos": 0}, "burst": 5}},
            {"credits": {"name": "monthly", "capacity": 10000,
                         "refill": [10000, {"secs": 2_592_000u64, "nanos": 0}]}}
        ],
        "owner": "acme",
        "name": "",
        "created_at": {"secs_since_epoch": 1_735_734_600u64, "nanos_since_epoch": 250_000_000},
        "metadata": {}
    });
    let record: KeyRecord = serde_json::from_value(old).unwrap();
    let expected = KeyRecord::new(
        "AbCdEf012345".parse().unwrap(),
        plain,
        "acme",
        noon_thirty() + Duration::from_millis(250),
    )
    .with_scopes("pets:read".parse().unwrap())
    .with_expires_at(noon_thirty() + Duration::from_secs(90 * 86_400))
    .with_limits(limits());
    assert_eq!(record, expected);
    assert_eq!(record.hash.algorithm(), HashAlgorithm::Sha256);
    assert_eq!(record.revoked_at(), None);

    // Written back, it takes the new shapes.
    let json = serde_json::to_value(&record).unwrap();
    assert_eq!(json["hash"], format!("sha256:{hex}"));
    assert_eq!(json["created_at"], "2025-01-01T12:30:00.250Z");
    assert_eq!(json["limits"][0]["rate"]["window_ms"], 1000);
    assert_eq!(
        json["limits"][1]["credits"]["refill"],
        json!({"amount": 10000, "interval_ms": 2_592_000_000u64})
    );
}

#[test]
fn a_hash_is_two_columns_for_a_database() {
    let hash = sample().hash;
    let algorithm: String = hash.algorithm().to_string();
    let bytes: Vec<u8> = hash.as_bytes().to_vec();
    assert_eq!(algorithm, "hmac-sha256:1");
    let rebuilt = KeyHash::new(algorithm.parse().unwrap(), bytes.try_into().unwrap());
    assert_eq!(rebuilt, hash);
    assert_eq!(
        serde_json::from_value::<HashAlgorithm>(json!("sha256")).unwrap(),
        HashAlgorithm::Sha256
    );
    assert!(serde_json::from_value::<KeyHash>(json!("md5:00")).is_err());
}

/// A store that never answers at once: the look-up is awaited.
#[derive(Debug)]
struct AsyncOnly(MemoryStore);

#[async_trait::async_trait]
impl KeyStore for AsyncOnly {
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

/// Keys hashed before a pepper was configured keep working after it is,
/// keys issued after it use it, and rotation moves a key over.
#[tokio::test]
async fn a_pepper_added_later_locks_no_key_out() {
    let format = KeyFormat::new("sk_live").unwrap();
    let store = MemoryStore::new();
    let clock = FakeClock::default();
    let before = KeyManager::new(store.clone(), format.clone()).with_clock(clock.clone());
    let old = before.issue(IssueOptions::new("acme")).await.unwrap();
    assert_eq!(old.record.hash.algorithm(), HashAlgorithm::Sha256);

    let pepper = KeyHasher::with_pepper(PepperId::new(1), b"new pepper");
    let after = before.clone().with_hasher(pepper.clone());
    let new = after.issue(IssueOptions::new("acme")).await.unwrap();
    assert_eq!(
        new.record.hash.algorithm(),
        HashAlgorithm::HmacSha256(PepperId::new(1))
    );

    for authenticator in [
        Authenticator::new(store.clone(), format.clone()),
        Authenticator::new(AsyncOnly(store.clone()), format.clone()),
    ] {
        let authenticator = authenticator
            .with_hasher(pepper.clone())
            .with_clock(clock.clone());
        for key in [&old.key, &new.key] {
            let principal = authenticator
                .authenticate(key.expose_secret())
                .await
                .unwrap();
            assert_eq!(principal.key_id(), key.id());
        }
    }

    // The old key is one to move over; rotating it does.
    assert!(!pepper.is_current(&old.record.hash));
    assert!(pepper.is_current(&new.record.hash));
    let rotated = after.rotate(&old.record.id, Duration::ZERO).await.unwrap();
    assert!(pepper.is_current(&rotated.record.hash));
}

/// A pepper rotated out keeps verifying the keys it made while the hasher
/// still lists it as retired.
#[tokio::test]
async fn a_retired_pepper_still_verifies_its_keys() {
    let format = KeyFormat::new("sk_live").unwrap();
    let store = MemoryStore::new();
    let first = KeyHasher::with_pepper(PepperId::new(1), b"first");
    let manager = KeyManager::new(store.clone(), format.clone()).with_hasher(first);
    let issued = manager.issue(IssueOptions::new("acme")).await.unwrap();

    let rotated_hasher = KeyHasher::with_pepper(PepperId::new(2), b"second")
        .with_retired_pepper(PepperId::new(1), b"first")
        .unwrap();
    let authenticator = Authenticator::new(store, format).with_hasher(rotated_hasher);
    let principal = authenticator
        .authenticate(issued.key.expose_secret())
        .await
        .unwrap();
    assert_eq!(principal.key_id(), issued.record.id);
}

/// A record naming a pepper the service lacks: refused as an unavailable
/// dependency (503, not "invalid key"), with the typed reason in the logs,
/// on both the immediate and the awaited look-up path.
#[tokio::test]
async fn a_record_naming_a_missing_pepper_is_refused_and_logged() {
    let format = KeyFormat::new("sk_live").unwrap();
    let store = MemoryStore::new();
    let key = KeyGenerator::new(format.clone()).generate().unwrap();
    let made_by = KeyHasher::with_pepper(PepperId::new(9), b"lost pepper");
    store
        .insert(KeyRecord::new(
            key.id(),
            made_by.hash(key.secret()),
            "acme",
            UNIX_EPOCH,
        ))
        .await
        .unwrap();

    let (logs, _guard) = CapturedLogs::start();
    for authenticator in [
        Authenticator::new(store.clone(), format.clone()),
        Authenticator::new(AsyncOnly(store.clone()), format.clone()),
    ] {
        let authenticator =
            authenticator.with_hasher(KeyHasher::with_pepper(PepperId::new(1), b"current"));
        let refused = authenticator
            .authenticate(key.expose_secret())
            .await
            .unwrap_err();
        assert_eq!(refused.reason(), RejectReason::StoreUnavailable);
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.key_id(), Some(key.id()));
    }
    let text = logs.text();
    assert!(text.contains("ERROR"), "{text}");
    assert!(text.contains("pepper 9"), "{text}");
    assert!(text.contains(key.id().as_str()), "{text}");
    assert!(!text.contains(key.secret()), "{text}");
}

#[tokio::test]
async fn revoke_keeps_its_time_in_the_record() {
    let store = MemoryStore::new();
    let clock = FakeClock::default();
    let manager = KeyManager::new(store.clone(), KeyFormat::new("sk_live").unwrap())
        .with_clock(clock.clone());
    let issued = manager.issue(IssueOptions::new("acme")).await.unwrap();
    assert_eq!(issued.record.revoked_at(), None);
    clock.advance(Duration::from_secs(90));
    manager.revoke(&issued.record.id).await.unwrap();
    let record = store.find(&issued.record.id).await.unwrap().unwrap();
    assert_eq!(record.status, KeyStatus::Revoked);
    assert_eq!(
        record.revoked_at(),
        Some(keyward::clock::Clock::now(&clock))
    );
    let json = serde_json::to_value(&*record).unwrap();
    assert_eq!(json["revoked_at"], "2025-01-01T00:01:30Z");
}
