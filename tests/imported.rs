//! Imported keys: old-format keys accepted by the hash of the whole key,
//! through `AuthLayer`, with owner, scopes, limits and restrictions like
//! any record, and moved to keyward keys by `rotate`.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use keyward::auth::client::ClientAddr;
use keyward::auth::{AuthLayer, Principal};
use keyward::clock::{Clock, FakeClock};
use keyward::key::{KeyFormat, LegacyAlphabet, LegacyFormat, LegacyFormatError};
use keyward::limit::{Limits, RatePolicy};
use keyward::manager::{IssueOptions, KeyManager, ManagerError};
use keyward::reject::{RejectReason, Rejection};
use keyward::store::{CachedStore, KeyStore, MemoryStore, StoreError};
use keyward::{CredentialKind, KeyRecord};
use sha2::{Digest, Sha256};
use tower::{ServiceBuilder, ServiceExt};

/// 32 hex characters: the old format of the issue's example (128 bits).
const OLD_KEY: &str = "9f86d081884c7d659a2feaa0c55ad015";
const OTHER_OLD_KEY: &str = "a3f2b8c1d4e5f60718293a4b5c6d7e8f";

fn old_format() -> LegacyFormat {
    LegacyFormat::new(LegacyAlphabet::Hex, 32).unwrap()
}

fn format() -> KeyFormat {
    KeyFormat::new("sk_live").unwrap()
}

struct Fixture {
    clock: FakeClock,
    store: MemoryStore,
    manager: KeyManager,
    imported: KeyRecord,
}

async fn fixture() -> Fixture {
    let clock = FakeClock::default();
    let store = MemoryStore::new();
    let manager = KeyManager::new(store.clone(), format()).with_clock(clock.clone());
    let limits = Limits::new([RatePolicy::new("burst", 5, Duration::from_secs(1))
        .unwrap()
        .into()])
    .unwrap();
    let imported = manager
        .import_legacy_key(
            &old_format(),
            OLD_KEY,
            IssueOptions::new("acme")
                .name("from the old system")
                .scopes("pets:read".parse().unwrap())
                .limits(limits),
        )
        .await
        .unwrap();
    Fixture {
        clock,
        store,
        manager,
        imported,
    }
}

impl Fixture {
    fn layer(&self) -> AuthLayer {
        AuthLayer::new(self.store.clone(), format())
            .clock(self.clock.clone())
            .imported_keys(old_format())
    }
}

/// The status, the principal the handler saw (owner and kind), and the
/// rejection.
async fn call(
    layer: AuthLayer,
    request: Request<String>,
) -> (StatusCode, Option<Principal>, Option<Rejection>) {
    let response = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|request: Request<String>| async move {
            let who = request.extensions().get::<Principal>().cloned();
            let mut response = Response::new(String::new());
            response.extensions_mut().insert(who);
            Ok::<_, Infallible>(response)
        })
        .oneshot(request)
        .await
        .unwrap();
    let principal = response
        .extensions()
        .get::<Option<Principal>>()
        .cloned()
        .flatten();
    let rejection = response.extensions().get::<Rejection>().cloned();
    (response.status(), principal, rejection)
}

fn with_key(key: &str) -> Request<String> {
    Request::get("/")
        .header("authorization", format!("Bearer {key}"))
        .body(String::new())
        .unwrap()
}

#[tokio::test]
async fn an_imported_key_authenticates_as_its_record() {
    let f = fixture().await;
    // Stored by hash only: the record holds SHA-256 of the whole key.
    assert_eq!(
        f.imported.hash.as_bytes(),
        &<[u8; 32]>::from(Sha256::digest(OLD_KEY.as_bytes()))
    );
    assert!(!format!("{:?}", f.imported).contains(OLD_KEY));

    for request in [
        with_key(OLD_KEY),
        Request::get("/")
            .header("x-api-key", OLD_KEY)
            .body(String::new())
            .unwrap(),
    ] {
        let (status, principal, _) = call(f.layer(), request).await;
        assert_eq!(status, StatusCode::OK);
        let principal = principal.unwrap();
        assert_eq!(principal.credential(), CredentialKind::Imported);
        assert_eq!(principal.owner(), "acme");
        assert_eq!(principal.key_id(), f.imported.id);
        assert_eq!(principal.scopes().to_string(), "pets:read");
        assert_eq!(principal.record().limits, f.imported.limits);
    }
}

#[tokio::test]
async fn other_keys_of_the_old_format_and_junk_are_refused() {
    let f = fixture().await;
    let (status, _, rejection) = call(f.layer(), with_key(OTHER_OLD_KEY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(rejection.unwrap().reason(), RejectReason::UnknownKey);
    // The case it was issued in: a key is hashed as presented.
    let (status, _, _) = call(f.layer(), with_key(&OLD_KEY.to_uppercase())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Not of the old format (one character short): malformed, no look-up.
    let (status, _, rejection) = call(f.layer(), with_key(&OLD_KEY[1..])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(rejection.unwrap().reason(), RejectReason::MalformedKey);
    // A layer that was not told of the old format refuses it as malformed.
    let plain = AuthLayer::new(f.store.clone(), format());
    let (status, _, rejection) = call(plain, with_key(OLD_KEY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(rejection.unwrap().reason(), RejectReason::MalformedKey);
}

#[tokio::test]
async fn an_imported_record_is_never_a_keyward_key() {
    let f = fixture().await;
    // A keyward key naming the imported record's id, with the old key as
    // secret would not even parse; any well-formed secret is refused.
    let secret = "A".repeat(format().secret_len());
    let forged = format().key_from_parts(f.imported.id, &secret).unwrap();
    let (status, _, rejection) = call(f.layer(), with_key(forged.expose_secret())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(rejection.unwrap().reason(), RejectReason::WrongSecret);
}

#[tokio::test]
async fn only_high_entropy_formats_are_imported_and_each_key_once() {
    let f = fixture().await;
    assert_eq!(
        LegacyFormat::new(LegacyAlphabet::Hex, 31).unwrap_err(),
        LegacyFormatError::TooWeak(124)
    );
    assert!(matches!(
        f.manager
            .import_legacy_key(&old_format(), "not hex at all", IssueOptions::new("x"))
            .await,
        Err(ManagerError::NotOfFormat)
    ));
    assert!(matches!(
        f.manager
            .import_legacy_key(&old_format(), OLD_KEY, IssueOptions::new("mallory"))
            .await,
        Err(ManagerError::AlreadyImported)
    ));
    // By its digest, as a team that kept only hashes would.
    let digest: [u8; 32] = Sha256::digest(OTHER_OLD_KEY.as_bytes()).into();
    let record = f
        .manager
        .import_legacy(&old_format(), digest, IssueOptions::new("globex"))
        .await
        .unwrap();
    let (status, principal, _) = call(f.layer(), with_key(OTHER_OLD_KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(principal.unwrap().key_id(), record.id);
}

#[tokio::test]
async fn rotate_moves_the_owner_to_a_keyward_key() {
    let f = fixture().await;
    let rotated = f
        .manager
        .rotate(&f.imported.id, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(&*rotated.record.owner, "acme");
    assert_eq!(rotated.record.scopes, f.imported.scopes);
    assert_eq!(rotated.record.limits, f.imported.limits);
    let (status, principal, _) = call(f.layer(), with_key(rotated.key.expose_secret())).await;
    assert_eq!(status, StatusCode::OK);
    let principal = principal.unwrap();
    assert_eq!(principal.credential(), CredentialKind::ApiKey);
    assert_eq!(principal.owner(), "acme");

    // The old key works through the grace period, then expires.
    let (status, _, _) = call(f.layer(), with_key(OLD_KEY)).await;
    assert_eq!(status, StatusCode::OK);
    f.clock.advance(Duration::from_secs(3600));
    let (status, _, rejection) = call(f.layer(), with_key(OLD_KEY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(rejection.unwrap().reason(), RejectReason::Expired);
    assert!(f.clock.now() > f.imported.created_at());
}

#[tokio::test]
async fn revocation_and_restrictions_apply_to_imported_keys() {
    let f = fixture().await;
    let restricted = f
        .manager
        .import_legacy_key(
            &old_format(),
            OTHER_OLD_KEY,
            IssueOptions::new("initech").allowed_networks(["10.0.0.0/8".parse().unwrap()]),
        )
        .await
        .unwrap();
    let mut from_outside = with_key(OTHER_OLD_KEY);
    from_outside
        .extensions_mut()
        .insert(ClientAddr("192.0.2.1".parse().unwrap()));
    let (status, _, rejection) = call(f.layer(), from_outside).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(rejection.unwrap().reason(), RejectReason::Restricted);
    let mut from_inside = with_key(OTHER_OLD_KEY);
    from_inside
        .extensions_mut()
        .insert(ClientAddr("10.1.1.1".parse().unwrap()));
    assert_eq!(call(f.layer(), from_inside).await.0, StatusCode::OK);

    f.manager.revoke(&restricted.id).await.unwrap();
    f.manager.revoke(&f.imported.id).await.unwrap();
    let (status, _, rejection) = call(f.layer(), with_key(OLD_KEY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(rejection.unwrap().reason(), RejectReason::Revoked);
}

#[tokio::test]
async fn imported_keys_through_a_cache_see_revocation() {
    let f = fixture().await;
    let cached = CachedStore::new(f.store.clone());
    let layer = AuthLayer::new(cached.clone(), format())
        .clock(f.clock.clone())
        .imported_keys(old_format());
    for _ in 0..3 {
        let (status, principal, _) = call(layer.clone(), with_key(OLD_KEY)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(principal.unwrap().credential(), CredentialKind::Imported);
    }
    // Revoked through the cache (which drops its copy): refused at once.
    let manager = KeyManager::new(cached, format()).with_clock(f.clock.clone());
    manager.revoke(&f.imported.id).await.unwrap();
    let (status, _, rejection) = call(layer, with_key(OLD_KEY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(rejection.unwrap().reason(), RejectReason::Revoked);
}

/// A store that cannot find by hash (the trait's default).
#[derive(Debug)]
struct NoHashes(MemoryStore);

#[keyward::async_trait]
impl KeyStore for NoHashes {
    async fn find(&self, id: &keyward::KeyId) -> keyward::store::Lookup {
        self.0.find(id).await
    }
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.0.insert(record).await
    }
    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.0.update(record).await
    }
    async fn revoke(
        &self,
        id: &keyward::KeyId,
        at: std::time::SystemTime,
    ) -> Result<(), StoreError> {
        self.0.revoke(id, at).await
    }
    async fn list_by_owner(
        &self,
        owner: &str,
    ) -> Result<Vec<std::sync::Arc<KeyRecord>>, StoreError> {
        self.0.list_by_owner(owner).await
    }
}

#[tokio::test]
async fn a_store_that_cannot_find_by_hash_fails_closed() {
    let f = fixture().await;
    let layer = AuthLayer::new(NoHashes(f.store.clone()), format()).imported_keys(old_format());
    let (status, _, rejection) = call(layer, with_key(OLD_KEY)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rejection.unwrap().reason(), RejectReason::StoreUnavailable);
}
