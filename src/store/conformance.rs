//! The conformance suite that every [`KeyStore`] runs (feature `test-util`).
//!
//! Call [`run`] from a test of your store. It uses fresh random ids and owners
//! on each call, so it can run again and again against a persistent backend.
//! It panics, with a message naming the broken promise, on the first failure.
//!
//! Among its promises: every field of a [`KeyRecord`] round-trips (the
//! hash *with its algorithm*, limits, times to at least the millisecond,
//! `revoked_at`); `revoke` sets `revoked_at` to the time it is given and
//! keeps the first one when called again; an update never brings a revoked
//! key back; imported keys are found by their hash (and only they), once.
//!
//! # Example
//!
//! ```
//! use keyward::store::{conformance, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! conformance::run(&MemoryStore::new()).await;
//! # }
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{KeyStore, StoreError};
use crate::key::{KeyFormat, KeyGenerator, KeyHasher, KeyId, PepperId, VerificationKey};
use crate::limit::{CreditPolicy, Limits, RatePolicy};
use crate::record::{Environment, KeyRecord, KeyStatus};
use crate::scope::ScopeSet;

/// Runs every check against `store`.
pub async fn run<S: KeyStore + ?Sized>(store: &S) {
    find_returns_what_was_inserted(store).await;
    find_unknown_is_none(store).await;
    insert_refuses_a_taken_id(store).await;
    update_replaces_and_refuses_unknown(store).await;
    revoke_takes_effect_at_once(store).await;
    list_by_owner_is_complete_ordered_and_isolated(store).await;
    restrictions_round_trip(store).await;
    lifecycle_updates_show_on_the_next_find(store).await;
    revoke_keeps_every_other_field(store).await;
    revocation_is_final(store).await;
    revoking_again_keeps_the_first_time(store).await;
    stored_fields_round_trip(store).await;
    imported_keys_are_found_by_hash(store).await;
    a_changed_imported_hash_is_free_again(store).await;
}

async fn a_changed_imported_hash_is_free_again<S: KeyStore + ?Sized>(store: &S) {
    let (first, second) = (
        crate::key::imported_hash(&fresh_owner()),
        crate::key::imported_hash(&fresh_owner()),
    );
    let mut record = fresh_record(&fresh_owner(), epoch(1_700_000_000));
    record.hash = first;
    store
        .insert(record.clone())
        .await
        .expect("insert an import");
    record.hash = second;
    store.update(record.clone()).await.expect("update its hash");
    assert!(
        store
            .find_by_hash(&first)
            .await
            .expect("find_by_hash")
            .is_none(),
        "a hash the record no longer has must find nothing"
    );
    assert_eq!(
        store
            .find_by_hash(&second)
            .await
            .expect("find_by_hash")
            .as_deref(),
        Some(&record),
        "an imported record is found by its new hash"
    );
    // The old hash is free: another record may be imported with it.
    let mut other = fresh_record(&fresh_owner(), epoch(1_700_000_000));
    other.hash = first;
    store
        .insert(other.clone())
        .await
        .expect("a hash given up by an update must be importable again");
    assert_eq!(
        store
            .find_by_hash(&first)
            .await
            .expect("find_by_hash")
            .as_deref(),
        Some(&other)
    );
    // A record that stops being an import gives its hash up too.
    record.hash = fresh_record(&fresh_owner(), epoch(0)).hash;
    store
        .update(record.clone())
        .await
        .expect("update to a key's hash");
    let mut third = fresh_record(&fresh_owner(), epoch(1_700_000_000));
    third.hash = second;
    store
        .insert(third)
        .await
        .expect("a hash given up by a record that is no import any more must be importable again");
}

async fn imported_keys_are_found_by_hash<S: KeyStore + ?Sized>(store: &S) {
    // An imported record: a fresh id, the hash of a whole old key.
    let old_key = fresh_owner(); // random: distinct on every run
    let hash = crate::key::imported_hash(&old_key);
    let mut record = fresh_record(&fresh_owner(), epoch(1_700_000_000))
        .with_scopes("pets:read".parse().expect("valid scope"));
    record.hash = hash;
    store
        .insert(record.clone())
        .await
        .expect("insert an imported record");
    let found = store
        .find_by_hash(&hash)
        .await
        .expect("find_by_hash")
        .expect("an imported record must be found by its hash");
    assert_eq!(*found, record, "find_by_hash must return the whole record");
    assert_eq!(
        store.find(&record.id).await.expect("find").as_deref(),
        Some(&record),
        "an imported record is found by id too"
    );

    // Another key's hash, and the same digest under another algorithm,
    // find nothing.
    let other = crate::key::imported_hash(&fresh_owner());
    assert!(
        store
            .find_by_hash(&other)
            .await
            .expect("find_by_hash")
            .is_none(),
        "an unknown hash must find nothing"
    );
    let plain = crate::key::KeyHash::from_bytes(*hash.as_bytes());
    assert!(
        store
            .find_by_hash(&plain)
            .await
            .expect("find_by_hash")
            .is_none(),
        "only imported hashes are found by hash"
    );
    let api_key = fresh_record(&fresh_owner(), epoch(1_700_000_000));
    store.insert(api_key.clone()).await.expect("insert");
    assert!(
        store
            .find_by_hash(&api_key.hash)
            .await
            .expect("find_by_hash")
            .is_none(),
        "an API key's hash must not find its record"
    );

    // The same old key imported twice: refused.
    let mut twice = fresh_record(&fresh_owner(), epoch(1_700_000_000));
    twice.hash = hash;
    match store.insert(twice.clone()).await {
        Err(StoreError::DuplicateHash) => {}
        other => panic!("a second import of one hash must be DuplicateHash, got {other:?}"),
    }
    assert!(
        store.find(&twice.id).await.expect("find").is_none(),
        "a refused import must store nothing"
    );

    // Revoked, it is still found (and refused by its status).
    store
        .revoke(&record.id, epoch(1_700_000_100))
        .await
        .expect("revoke");
    let found = store
        .find_by_hash(&hash)
        .await
        .expect("find_by_hash")
        .expect("a revoked imported record is still found");
    assert_eq!(found.status, KeyStatus::Revoked);
}

async fn revocation_is_final<S: KeyStore + ?Sized>(store: &S) {
    let record = fresh_record(&fresh_owner(), epoch(1_700_000_000));
    store.insert(record.clone()).await.expect("insert");
    store
        .revoke(&record.id, epoch(1_700_000_100))
        .await
        .expect("revoke");
    // An update built from the record as it was before the revocation (a
    // racing disable or scope change) must not bring the key back.
    let stale = record.clone().with_status(KeyStatus::Disabled);
    match store.update(stale).await {
        Err(StoreError::Revoked(id)) => assert_eq!(id, record.id),
        other => panic!("updating a revoked key must be Revoked, got {other:?}"),
    }
    let found = store.find(&record.id).await.expect("find").expect("found");
    assert_eq!(found.status, KeyStatus::Revoked, "revocation is final");
    assert_eq!(
        found.revoked_at(),
        Some(epoch(1_700_000_100)),
        "a refused update must keep revoked_at"
    );
}

async fn revoking_again_keeps_the_first_time<S: KeyStore + ?Sized>(store: &S) {
    let record = fresh_record(&fresh_owner(), epoch(1_700_000_000));
    store.insert(record.clone()).await.expect("insert");
    store
        .revoke(&record.id, epoch(1_700_000_100))
        .await
        .expect("revoke");
    store
        .revoke(&record.id, epoch(1_700_000_200))
        .await
        .expect("revoking a revoked key must succeed");
    let found = store.find(&record.id).await.expect("find").expect("found");
    assert_eq!(
        found.revoked_at(),
        Some(epoch(1_700_000_100)),
        "revoking again must keep the first revoked_at"
    );
}

/// Every field a record has comes back as it went in: a peppered hash with
/// its algorithm, limits, times with fractions of a second (to the
/// millisecond), a record inserted already revoked (an import), and the
/// verification keys of keys that sign requests, and publishable keys
/// with their allowed origins.
async fn stored_fields_round_trip<S: KeyStore + ?Sized>(store: &S) {
    let limits = Limits::new([
        RatePolicy::new("burst", 5, Duration::from_millis(1500))
            .expect("valid policy")
            .with_burst(2)
            .expect("valid burst")
            .into(),
        CreditPolicy::new("monthly", 10_000)
            .expect("valid policy")
            .with_refill(10_000, Duration::from_secs(30 * 86_400))
            .expect("valid refill")
            .into(),
    ])
    .expect("valid limits");
    let at = |secs: u64, millis: u64| epoch(secs) + Duration::from_millis(millis);
    let peppered = KeyHasher::with_pepper(PepperId::new(7), b"conformance pepper");
    let mut records = Vec::new();
    for hasher in [KeyHasher::sha256(), peppered] {
        let mut record = fresh_record(&fresh_owner(), at(1_700_000_000, 250));
        record.hash = hasher.hash("conformance secret");
        records.push(
            record
                .with_limits(limits.clone())
                .with_expires_at(at(1_800_000_000, 125))
                .with_not_before(at(1_700_000_001, 1)),
        );
    }
    let mut imported = fresh_record(&fresh_owner(), epoch(1_600_000_000))
        .with_status(KeyStatus::Revoked)
        .with_metadata("source", "import");
    imported.set_revoked_at(Some(at(1_650_000_000, 999)));
    records.push(imported);
    // Keys that sign requests: a public key, and a shared secret the store
    // must keep readable.
    for key in [
        VerificationKey::ed25519([0x3b; 32]),
        VerificationKey::hmac_sha256(vec![0xc4; 48]).expect("a 48-byte secret"),
    ] {
        records.push(fresh_record(&fresh_owner(), epoch(1_700_000_000)).with_verification_key(key));
    }
    // A publishable key with its allowed origins, exact and wildcard.
    records.push(
        fresh_record(&fresh_owner(), epoch(1_700_000_000)).with_publishable([
            "https://app.example.com".parse().expect("valid origin"),
            "https://*.example.com:8443".parse().expect("valid origin"),
        ]),
    );
    // Origins on a key that is not publishable.
    let mut with_origins = fresh_record(&fresh_owner(), epoch(1_700_000_000));
    with_origins.set_allowed_origins(["http://localhost:3000".parse().expect("valid origin")]);
    records.push(with_origins);
    for record in records {
        store.insert(record.clone()).await.expect("insert");
        let found = store.find(&record.id).await.expect("find").expect("found");
        assert_eq!(
            found.hash.algorithm(),
            record.hash.algorithm(),
            "the hash's algorithm must be kept"
        );
        assert_eq!(
            *found, record,
            "every field (hash and algorithm, limits, times to the millisecond, revoked_at, verification key, publishable and allowed origins) must round-trip"
        );
        let listed = store.list_by_owner(&record.owner).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(
            *listed[0], record,
            "list_by_owner must return whole records"
        );
    }
}

fn fresh_record(owner: &str, created_at: SystemTime) -> KeyRecord {
    let generator = KeyGenerator::new(KeyFormat::new("conformance").expect("valid prefix"));
    let key = generator.generate().expect("OS randomness");
    KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        owner,
        created_at,
    )
}

fn fresh_owner() -> String {
    let generator = KeyGenerator::new(KeyFormat::new("owner").expect("valid prefix"));
    format!(
        "owner-{}",
        generator.generate().expect("OS randomness").id()
    )
}

fn epoch(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

async fn find_returns_what_was_inserted<S: KeyStore + ?Sized>(store: &S) {
    let record = fresh_record(&fresh_owner(), epoch(1_700_000_000))
        .with_name("conformance")
        .with_scopes(
            "pets:read pets:*"
                .parse::<ScopeSet>()
                .expect("valid scopes"),
        )
        .with_expires_at(epoch(1_800_000_000))
        .with_not_before(epoch(1_700_000_100))
        .with_metadata("team", "core");
    store.insert(record.clone()).await.expect("insert");
    let found = store.find(&record.id).await.expect("find").expect("found");
    assert_eq!(
        *found, record,
        "find must return the inserted record unchanged"
    );
    if let Some(answer) = store.find_immediate(&record.id) {
        let found = answer.expect("find_immediate").expect("found");
        assert_eq!(*found, record, "find_immediate must agree with find");
    }
}

async fn find_unknown_is_none<S: KeyStore + ?Sized>(store: &S) {
    let id = fresh_record("nobody", epoch(0)).id;
    assert!(
        store.find(&id).await.expect("find").is_none(),
        "unknown id must be None"
    );
    if let Some(answer) = store.find_immediate(&id) {
        assert!(answer.expect("find_immediate").is_none());
    }
}

async fn insert_refuses_a_taken_id<S: KeyStore + ?Sized>(store: &S) {
    let record = fresh_record(&fresh_owner(), epoch(1_700_000_000));
    store.insert(record.clone()).await.expect("insert");
    let mut again = record.clone().with_name("impostor");
    again.owner = "someone-else".into();
    match store.insert(again).await {
        Err(StoreError::AlreadyExists(id)) => assert_eq!(id, record.id),
        other => panic!("inserting a taken id must be AlreadyExists, got {other:?}"),
    }
    let found = store.find(&record.id).await.expect("find").expect("found");
    assert_eq!(
        *found, record,
        "a refused insert must not change the record"
    );
}

async fn update_replaces_and_refuses_unknown<S: KeyStore + ?Sized>(store: &S) {
    let record = fresh_record(&fresh_owner(), epoch(1_700_000_000));
    store.insert(record.clone()).await.expect("insert");
    let updated = record
        .clone()
        .with_name("renamed")
        .with_status(KeyStatus::Disabled)
        .with_scopes("usage:read".parse().expect("valid scope"));
    store.update(updated.clone()).await.expect("update");
    let found = store.find(&record.id).await.expect("find").expect("found");
    assert_eq!(*found, updated, "update must replace the whole record");

    let unknown = fresh_record("nobody", epoch(0));
    match store.update(unknown.clone()).await {
        Err(StoreError::NotFound(id)) => assert_eq!(id, unknown.id),
        other => panic!("updating an unknown id must be NotFound, got {other:?}"),
    }
    assert!(
        store.find(&unknown.id).await.expect("find").is_none(),
        "update must not insert"
    );
}

async fn revoke_takes_effect_at_once<S: KeyStore + ?Sized>(store: &S) {
    let record = fresh_record(&fresh_owner(), epoch(1_700_000_000));
    store.insert(record.clone()).await.expect("insert");
    store
        .revoke(&record.id, epoch(1_700_000_500))
        .await
        .expect("revoke");
    let found = store.find(&record.id).await.expect("find").expect("found");
    assert_eq!(
        found.status,
        KeyStatus::Revoked,
        "revoke must show on the next find"
    );
    assert_eq!(
        found.revoked_at(),
        Some(epoch(1_700_000_500)),
        "revoke must set revoked_at to the time it is given"
    );
    assert_eq!(
        found.hash, record.hash,
        "revoke must keep the rest of the record"
    );
    if let Some(answer) = store.find_immediate(&record.id) {
        let found = answer.expect("find_immediate").expect("found");
        assert_eq!(found.status, KeyStatus::Revoked);
    }

    let unknown: KeyId = fresh_record("nobody", epoch(0)).id;
    assert!(
        matches!(store.revoke(&unknown, epoch(0)).await, Err(StoreError::NotFound(id)) if id == unknown),
        "revoking an unknown id must be NotFound"
    );
}

async fn list_by_owner_is_complete_ordered_and_isolated<S: KeyStore + ?Sized>(store: &S) {
    let owner = fresh_owner();
    let other = fresh_owner();
    let newest = fresh_record(&owner, epoch(1_700_000_300));
    let oldest = fresh_record(&owner, epoch(1_700_000_100));
    let middle = fresh_record(&owner, epoch(1_700_000_200));
    let foreign = fresh_record(&other, epoch(1_700_000_150));
    for record in [&newest, &oldest, &middle, &foreign] {
        store.insert((*record).clone()).await.expect("insert");
    }
    let listed: Vec<KeyId> = store
        .list_by_owner(&owner)
        .await
        .expect("list")
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        listed,
        vec![oldest.id, middle.id, newest.id],
        "list_by_owner must return all of the owner's keys, oldest first, and no one else's"
    );
    assert!(store
        .list_by_owner(&fresh_owner())
        .await
        .expect("list")
        .is_empty());
}

async fn restrictions_round_trip<S: KeyStore + ?Sized>(store: &S) {
    let record = fresh_record(&fresh_owner(), epoch(1_700_000_000))
        .with_allowed_networks([
            "10.0.0.0/8".parse().expect("valid network"),
            "2001:db8::/32".parse().expect("valid network"),
        ])
        .with_environment(Environment::Test);
    store.insert(record.clone()).await.expect("insert");
    let found = store.find(&record.id).await.expect("find").expect("found");
    assert_eq!(
        *found, record,
        "allowed networks and environment must be kept as inserted"
    );
}

/// The updates KeyManager makes (disable, enable, new scopes, a rotation's
/// earlier expiry, not-before, limits, name, metadata) each show on the
/// next find and in list_by_owner.
async fn lifecycle_updates_show_on_the_next_find<S: KeyStore + ?Sized>(store: &S) {
    let owner = fresh_owner();
    let record = fresh_record(&owner, epoch(1_700_000_000))
        .with_scopes("pets:read".parse().expect("valid scope"))
        .with_metadata("team", "core");
    store.insert(record.clone()).await.expect("insert");

    let limits = Limits::new([RatePolicy::new("burst", 10, Duration::from_secs(1))
        .expect("valid policy")
        .into()])
    .expect("valid limits");
    let steps: [(&str, KeyRecord); 8] = [
        (
            "status disabled",
            record.clone().with_status(KeyStatus::Disabled),
        ),
        (
            "status active",
            record.clone().with_status(KeyStatus::Active),
        ),
        (
            "scopes",
            record
                .clone()
                .with_scopes("pets:* usage:read".parse().expect("valid scopes")),
        ),
        (
            "expiry",
            record.clone().with_expires_at(epoch(1_700_003_600)),
        ),
        (
            "not-before time",
            record.clone().with_not_before(epoch(1_700_000_060)),
        ),
        ("limits", record.clone().with_limits(limits)),
        ("name", record.clone().with_name("renamed")),
        ("metadata", {
            let mut changed = record.clone();
            changed.set_metadata([("tier".to_owned(), "pro".to_owned())].into());
            changed
        }),
    ];
    for (what, updated) in steps {
        store.update(updated.clone()).await.expect("update");
        let found = store.find(&record.id).await.expect("find").expect("found");
        assert_eq!(
            *found, updated,
            "an update of the {what} must show on the next find"
        );
        if let Some(answer) = store.find_immediate(&record.id) {
            let found = answer.expect("find_immediate").expect("found");
            assert_eq!(*found, updated, "find_immediate must see the {what} update");
        }
        let listed = store.list_by_owner(&owner).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(
            *listed[0], updated,
            "list_by_owner must see the {what} update"
        );
    }
}

async fn revoke_keeps_every_other_field<S: KeyStore + ?Sized>(store: &S) {
    let owner = fresh_owner();
    let record = fresh_record(&owner, epoch(1_700_000_000))
        .with_name("to revoke")
        .with_scopes("pets:read".parse().expect("valid scope"))
        .with_expires_at(epoch(1_800_000_000))
        .with_metadata("team", "core")
        .with_allowed_networks(["192.0.2.0/24".parse().expect("valid network")])
        .with_environment(Environment::Live);
    store.insert(record.clone()).await.expect("insert");
    store
        .revoke(&record.id, epoch(1_700_000_100))
        .await
        .expect("revoke");
    let found = store.find(&record.id).await.expect("find").expect("found");
    let mut expected = record.with_status(KeyStatus::Revoked);
    expected.set_revoked_at(Some(epoch(1_700_000_100)));
    assert_eq!(
        *found, expected,
        "revoke must change the status and revoked_at, and nothing else"
    );
    let listed = store.list_by_owner(&owner).await.expect("list");
    assert_eq!(
        listed.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![KeyStatus::Revoked],
        "list_by_owner must show a revoked key as revoked"
    );
}

/// Checks an [`Invalidation`](super::invalidation::Invalidation): `a` and
/// `b` are two handles on one channel, as two processes would hold them
/// (for an in-process channel, two clones). Each subscription starts with
/// `Connected`; an announcement through either is heard, in order, by every
/// subscription of both, the announcer's own included. Waits at most 10 s
/// for each event (feature `tokio` too).
#[cfg(feature = "tokio")]
pub async fn invalidation<I>(a: &I, b: &I)
where
    I: super::invalidation::Invalidation + ?Sized,
{
    use super::invalidation::{InvalidationEvent, Subscription};

    async fn next(subscription: &mut Subscription, what: &str) -> InvalidationEvent {
        match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the subscription ended while waiting for {what}"),
            Err(_) => panic!("no {what} within 10 s"),
        }
    }

    let mut on_a = a.subscribe();
    let mut on_b = b.subscribe();
    for subscription in [&mut on_a, &mut on_b] {
        assert_eq!(
            next(subscription, "Connected").await,
            InvalidationEvent::Connected,
            "a subscription must start with Connected"
        );
    }
    let first = fresh_record("nobody", epoch(0)).id;
    let second = fresh_record("nobody", epoch(0)).id;
    a.announce(&first).await.expect("announce through a");
    b.announce(&second).await.expect("announce through b");
    for subscription in [&mut on_a, &mut on_b] {
        assert_eq!(
            next(subscription, "the first change").await,
            InvalidationEvent::Changed(first),
            "every subscription hears every announcement, in order"
        );
        assert_eq!(
            next(subscription, "the second change").await,
            InvalidationEvent::Changed(second),
            "every subscription hears every announcement, in order"
        );
    }
}
