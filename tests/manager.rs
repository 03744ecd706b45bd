//! KeyManager: issue, rotate with a grace period, revoke, disable/enable,
//! update scopes — checked through AuthLayer with a fake clock.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::{Request, Response, StatusCode};
use keyward::auth::{AuthLayer, Principal};
use keyward::clock::{Clock, FakeClock};
use keyward::key::{ApiKey, KeyFormat, KeyHasher, KeyId};
use keyward::manager::{IssueOptions, KeyManager, ManagerError};
use keyward::record::{Environment, KeyStatus};
use keyward::reject::{RejectReason, Rejection};
use keyward::store::{KeyStore, MemoryStore};
use keyward::RequireScopes;
use tower::{service_fn, ServiceBuilder, ServiceExt};

struct Fixture {
    format: KeyFormat,
    store: MemoryStore,
    clock: FakeClock,
    manager: KeyManager,
}

fn fixture() -> Fixture {
    let format = KeyFormat::new("sk_live").unwrap();
    let store = MemoryStore::new();
    let clock = FakeClock::default();
    let manager = KeyManager::new(store.clone(), format.clone()).with_clock(clock.clone());
    Fixture {
        format,
        store,
        clock,
        manager,
    }
}

impl Fixture {
    fn auth(&self) -> AuthLayer {
        AuthLayer::new(self.store.clone(), self.format.clone()).clock(self.clock.clone())
    }

    async fn check(&self, key: &ApiKey) -> (StatusCode, Option<RejectReason>) {
        let service = ServiceBuilder::new().layer(self.auth()).service(service_fn(
            |r: Request<String>| async move {
                let who = r.extensions().get::<Principal>().unwrap().key_id();
                Ok::<_, Infallible>(Response::new(who.to_string()))
            },
        ));
        let request = Request::get("/")
            .header("authorization", format!("Bearer {}", key.expose_secret()))
            .body(String::new())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        (
            response.status(),
            response.extensions().get::<Rejection>().map(|r| r.reason()),
        )
    }
}

const OK: (StatusCode, Option<RejectReason>) = (StatusCode::OK, None);

#[tokio::test]
async fn issue_stores_a_hash_and_returns_the_key_once() {
    let f = fixture();
    let issued = f
        .manager
        .issue(
            IssueOptions::new("acme")
                .name("CI")
                .scopes("pets:read pets:write".parse().unwrap())
                .expires_in(Duration::from_secs(3600))
                .metadata("team", "core")
                .environment(Environment::Live)
                .allowed_networks(["10.0.0.0/8".parse().unwrap()]),
        )
        .await
        .unwrap();
    let stored = f.store.find(&issued.record.id).await.unwrap().unwrap();
    assert_eq!(*stored, issued.record);
    assert_eq!(stored.id, issued.key.id());
    assert!(KeyHasher::sha256()
        .hash(issued.key.secret())
        .verify(&stored.hash));
    assert_eq!(&*stored.owner, "acme");
    assert_eq!(&*stored.name, "CI");
    assert_eq!(stored.created_at(), f.clock.now());
    assert_eq!(
        stored.expires_at(),
        Some(f.clock.now() + Duration::from_secs(3600))
    );
    assert_eq!(stored.metadata()["team"], "core");
    assert_eq!(stored.environment(), Some(Environment::Live));
    assert_eq!(stored.allowed_networks().len(), 1);
    // Nothing the manager keeps or prints holds the secret.
    let shown = format!("{issued:?} {:?} {stored:?}", f.manager);
    assert!(!shown.contains(issued.key.secret()));

    let plain = f.manager.issue(IssueOptions::new("acme")).await.unwrap();
    assert_eq!(f.check(&plain.key).await, OK);
    assert_eq!(f.manager.list_by_owner("acme").await.unwrap().len(), 2);
    assert!(f.manager.list_by_owner("nobody").await.unwrap().is_empty());
    assert_eq!(
        f.manager.find(&plain.record.id).await.unwrap().unwrap().id,
        plain.record.id
    );
}

#[tokio::test]
async fn rotated_predecessor_works_inside_the_grace_period_only() {
    let f = fixture();
    let old = f
        .manager
        .issue(
            IssueOptions::new("acme")
                .name("deploy")
                .scopes("pets:*".parse().unwrap())
                .metadata("team", "core")
                .environment(Environment::Live)
                .allowed_networks(["10.0.0.0/8".parse().unwrap()]),
        )
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(100));
    let grace = Duration::from_secs(3600);
    let rotated = f.manager.rotate(&old.record.id, grace).await.unwrap();

    // The successor copies everything but id, hash and creation time.
    let new = &rotated.record;
    assert_ne!(new.id, old.record.id);
    assert_ne!(new.hash, old.record.hash);
    assert_eq!(new.created_at(), f.clock.now());
    assert_eq!(new.owner, old.record.owner);
    assert_eq!(new.name, old.record.name);
    assert_eq!(new.scopes, old.record.scopes);
    assert_eq!(new.metadata(), old.record.metadata());
    assert_eq!(new.environment(), old.record.environment());
    assert_eq!(new.allowed_networks(), old.record.allowed_networks());
    assert_eq!(new.expires_at(), None);
    assert_eq!(new.status, KeyStatus::Active);
    assert_eq!(rotated.previous.expires_at(), Some(f.clock.now() + grace));

    // The keys are restricted to 10.0.0.0/8: call from there.
    let old_key = &old.key;
    let new_key = &rotated.key;
    let net_ok =
        |key: &ApiKey| {
            let key = key.clone();
            let service = ServiceBuilder::new().layer(f.auth()).service(service_fn(
                |_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) },
            ));
            async move {
                let request = Request::get("/")
                    .header("authorization", format!("Bearer {}", key.expose_secret()))
                    .extension(keyward::auth::client::ClientAddr(
                        "10.0.0.1".parse().unwrap(),
                    ))
                    .body(String::new())
                    .unwrap();
                let response = service.oneshot(request).await.unwrap();
                (
                    response.status(),
                    response.extensions().get::<Rejection>().map(|r| r.reason()),
                )
            }
        };
    assert_eq!(net_ok(old_key).await, OK);
    assert_eq!(net_ok(new_key).await, OK);
    f.clock.advance(grace - Duration::from_secs(1));
    assert_eq!(net_ok(old_key).await, OK, "inside the grace period");
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(
        net_ok(old_key).await,
        (StatusCode::UNAUTHORIZED, Some(RejectReason::Expired)),
        "after the grace period"
    );
    assert_eq!(net_ok(new_key).await, OK);
}

#[tokio::test]
async fn rotation_keeps_an_earlier_expiry_and_a_zero_grace_ends_at_once() {
    let f = fixture();
    let soon = f
        .manager
        .issue(IssueOptions::new("acme").expires_in(Duration::from_secs(60)))
        .await
        .unwrap();
    let rotated = f
        .manager
        .rotate(&soon.record.id, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(rotated.previous.expires_at(), soon.record.expires_at());
    // The successor keeps the same absolute expiry: rotation never extends
    // a key's life.
    assert_eq!(rotated.record.expires_at(), soon.record.expires_at());

    // Once expired, a key is not rotated: its successor would be born dead.
    f.clock.advance(Duration::from_secs(60));
    let id = soon.record.id;
    assert!(matches!(
        f.manager.rotate(&id, Duration::from_secs(60)).await,
        Err(ManagerError::Expired(x)) if x == id
    ));

    let other = f.manager.issue(IssueOptions::new("acme")).await.unwrap();
    let rotated = f
        .manager
        .rotate(&other.record.id, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        f.check(&other.key).await,
        (StatusCode::UNAUTHORIZED, Some(RejectReason::Expired))
    );
    assert_eq!(f.check(&rotated.key).await, OK);
}

#[tokio::test]
async fn revoked_key_is_refused_on_the_very_next_request() {
    let f = fixture();
    let issued = f.manager.issue(IssueOptions::new("acme")).await.unwrap();
    assert_eq!(f.check(&issued.key).await, OK);
    f.manager.revoke(&issued.record.id).await.unwrap();
    assert_eq!(
        f.check(&issued.key).await,
        (StatusCode::UNAUTHORIZED, Some(RejectReason::Revoked))
    );
    // Revocation is final.
    let id = issued.record.id;
    assert!(matches!(f.manager.enable(&id).await, Err(ManagerError::Revoked(x)) if x == id));
    assert!(matches!(
        f.manager.disable(&id).await,
        Err(ManagerError::Revoked(_))
    ));
    assert!(matches!(
        f.manager.rotate(&id, Duration::ZERO).await,
        Err(ManagerError::Revoked(_))
    ));
    assert!(matches!(
        f.manager.update_scopes(&id, "a:b".parse().unwrap()).await,
        Err(ManagerError::Revoked(_))
    ));
    assert_eq!(
        f.store.find(&id).await.unwrap().unwrap().status,
        KeyStatus::Revoked
    );
}

#[tokio::test]
async fn disable_enable_and_unknown_ids() {
    let f = fixture();
    let issued = f.manager.issue(IssueOptions::new("acme")).await.unwrap();
    let id = issued.record.id;
    assert_eq!(
        f.manager.disable(&id).await.unwrap().status,
        KeyStatus::Disabled
    );
    assert_eq!(
        f.check(&issued.key).await,
        (StatusCode::UNAUTHORIZED, Some(RejectReason::Disabled))
    );
    assert_eq!(
        f.manager.enable(&id).await.unwrap().status,
        KeyStatus::Active
    );
    assert_eq!(f.check(&issued.key).await, OK);

    let unknown: KeyId = "AAAAAAAAAAAA".parse().unwrap();
    assert!(
        matches!(f.manager.revoke(&unknown).await, Err(ManagerError::NotFound(x)) if x == unknown)
    );
    assert!(matches!(
        f.manager.disable(&unknown).await,
        Err(ManagerError::NotFound(_))
    ));
    assert!(matches!(
        f.manager.rotate(&unknown, Duration::ZERO).await,
        Err(ManagerError::NotFound(_))
    ));
    assert!(f.manager.find(&unknown).await.unwrap().is_none());
    assert!(matches!(
        f.manager
            .issue(IssueOptions::new("acme").expires_in(Duration::MAX))
            .await,
        Err(ManagerError::ExpiryOutOfRange)
    ));
}

#[tokio::test]
async fn update_scopes_changes_what_the_next_request_may_do() {
    let f = fixture();
    let issued = f
        .manager
        .issue(IssueOptions::new("acme").scopes("pets:read".parse().unwrap()))
        .await
        .unwrap();
    let app = Router::new()
        .route(
            "/pets",
            get(|| async { "ok" }).route_layer(RequireScopes::try_all(["pets:write"]).unwrap()),
        )
        .layer(f.auth());
    let send = |app: Router| {
        let key = issued.key.expose_secret().to_owned();
        async move {
            let request = Request::get("/pets")
                .header("x-api-key", key)
                .body(axum::body::Body::empty())
                .unwrap();
            app.oneshot(request).await.unwrap().status()
        }
    };
    assert_eq!(send(app.clone()).await, StatusCode::FORBIDDEN);
    let updated = f
        .manager
        .update_scopes(&issued.record.id, "pets:*".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(updated.scopes.to_string(), "pets:*");
    assert_eq!(send(app).await, StatusCode::OK);
}

#[tokio::test]
async fn works_over_a_shared_dyn_store() {
    let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    let manager = KeyManager::from_shared(Arc::clone(&store), KeyFormat::new("sk_test").unwrap());
    let issued = manager.issue(IssueOptions::new("acme")).await.unwrap();
    assert!(store.find(&issued.record.id).await.unwrap().is_some());
    assert!(Arc::ptr_eq(manager.store(), &store));
}

#[tokio::test]
async fn every_change_is_a_lifecycle_event_with_its_key_and_owner() {
    use keyward::usage::{sink_fn, EventKind, Lifecycle, UsageEvent};
    use std::sync::Mutex;

    let f = fixture();
    let events: Arc<Mutex<Vec<UsageEvent>>> = Arc::default();
    let sink = {
        let events = Arc::clone(&events);
        sink_fn(move |event| events.lock().unwrap().push(event))
    };
    let manager = f.manager.clone().with_events(sink);

    let issued = manager.issue(IssueOptions::new("acme")).await.unwrap();
    let id = issued.record.id;
    manager.disable(&id).await.unwrap();
    manager.enable(&id).await.unwrap();
    let rotated = manager.rotate(&id, Duration::from_secs(60)).await.unwrap();
    manager.revoke(&rotated.record.id).await.unwrap();

    let seen: Vec<(EventKind, KeyId, Option<String>)> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.kind(), e.key_id().unwrap(), e.owner().map(str::to_owned)))
        .collect();
    let acme = Some("acme".to_owned());
    let new = rotated.record.id;
    assert_eq!(
        seen,
        [
            (EventKind::Lifecycle(Lifecycle::Issued), id, acme.clone()),
            (EventKind::Lifecycle(Lifecycle::Disabled), id, acme.clone()),
            (EventKind::Lifecycle(Lifecycle::Enabled), id, acme.clone()),
            (EventKind::Lifecycle(Lifecycle::Rotated), id, acme.clone()),
            (EventKind::Lifecycle(Lifecycle::Issued), new, acme.clone()),
            (EventKind::Lifecycle(Lifecycle::Revoked), new, acme),
        ]
    );
    // Without a sink nothing is recorded and nothing is looked up twice.
    f.manager.revoke(&id).await.unwrap();
    assert_eq!(events.lock().unwrap().len(), 6);
}

/// Each field a tier change or an admin edits has its own operation, its
/// own lifecycle event, and a revoked key refuses them all.
#[tokio::test]
async fn limits_metadata_name_expiry_and_not_before_change_with_their_own_events() {
    use keyward::limit::{Limits, RatePolicy};
    use keyward::usage::{sink_fn, EventKind, Lifecycle, UsageEvent};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    let f = fixture();
    let events: Arc<Mutex<Vec<UsageEvent>>> = Arc::default();
    let sink = {
        let events = Arc::clone(&events);
        sink_fn(move |event| events.lock().unwrap().push(event))
    };
    let manager = f.manager.clone().with_events(sink);
    let issued = manager
        .issue(IssueOptions::new("acme").name("CI"))
        .await
        .unwrap();
    let id = issued.record.id;
    let now = f.clock.now();

    let pro = Limits::new([RatePolicy::new("burst", 100, Duration::from_secs(1))
        .unwrap()
        .into()])
    .unwrap();
    let metadata: BTreeMap<String, String> = [("tier".to_owned(), "pro".to_owned())].into();
    let record = manager.update_limits(&id, pro.clone()).await.unwrap();
    assert_eq!(record.limits, pro);
    let record = manager
        .update_metadata(&id, metadata.clone())
        .await
        .unwrap();
    assert_eq!(record.metadata(), &metadata);
    let record = manager.update_name(&id, "deploy").await.unwrap();
    assert_eq!(&*record.name, "deploy");
    let until = now + Duration::from_secs(3600);
    let record = manager.update_expiry(&id, Some(until)).await.unwrap();
    assert_eq!(record.expires_at(), Some(until));
    let from = now + Duration::from_secs(60);
    let record = manager.update_not_before(&id, Some(from)).await.unwrap();
    assert_eq!(record.not_before(), Some(from));
    let record = manager
        .update_scopes(&id, "pets:read".parse().unwrap())
        .await
        .unwrap();

    // Every change is in the store, all together.
    let stored = f.store.find(&id).await.unwrap().unwrap();
    assert_eq!(*stored, record);
    assert_eq!(
        (stored.limits.clone(), &*stored.name, stored.expires_at()),
        (pro, "deploy", Some(until))
    );
    assert_eq!(stored.metadata(), &metadata);

    // The key answers to its new times: refused before not-before, then
    // accepted, then refused after the expiry; `None` lifts both.
    let key = &issued.key;
    assert_eq!(
        f.check(key).await,
        (StatusCode::UNAUTHORIZED, Some(RejectReason::NotYetValid))
    );
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(f.check(key).await, OK);
    f.clock.advance(Duration::from_secs(3600));
    assert_eq!(
        f.check(key).await,
        (StatusCode::UNAUTHORIZED, Some(RejectReason::Expired))
    );
    manager.update_expiry(&id, None).await.unwrap();
    manager.update_not_before(&id, None).await.unwrap();
    assert_eq!(f.check(key).await, OK);

    let kinds: Vec<EventKind> = events.lock().unwrap().iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            Lifecycle::Issued,
            Lifecycle::LimitsChanged,
            Lifecycle::MetadataChanged,
            Lifecycle::Renamed,
            Lifecycle::ExpiryChanged,
            Lifecycle::NotBeforeChanged,
            Lifecycle::ScopesChanged,
            Lifecycle::ExpiryChanged,
            Lifecycle::NotBeforeChanged,
        ]
        .map(EventKind::Lifecycle)
    );
    let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        names[1..7],
        [
            "limits_changed",
            "metadata_changed",
            "renamed",
            "expiry_changed",
            "not_before_changed",
            "scopes_changed"
        ]
    );
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .all(|e| e.key_id() == Some(id) && e.owner() == Some("acme")));

    // Revoked: every change is refused, nothing is written, no event.
    manager.revoke(&id).await.unwrap();
    let before = events.lock().unwrap().len();
    let revoked = f.store.find(&id).await.unwrap().unwrap();
    assert!(matches!(
        manager.update_limits(&id, Limits::none()).await,
        Err(ManagerError::Revoked(r)) if r == id
    ));
    assert!(matches!(
        manager.update_metadata(&id, BTreeMap::new()).await,
        Err(ManagerError::Revoked(_))
    ));
    assert!(matches!(
        manager.update_name(&id, "back").await,
        Err(ManagerError::Revoked(_))
    ));
    assert!(matches!(
        manager.update_expiry(&id, None).await,
        Err(ManagerError::Revoked(_))
    ));
    assert!(matches!(
        manager.update_not_before(&id, None).await,
        Err(ManagerError::Revoked(_))
    ));
    assert!(matches!(
        manager.update_scopes(&id, "pets:*".parse().unwrap()).await,
        Err(ManagerError::Revoked(_))
    ));
    assert_eq!(*f.store.find(&id).await.unwrap().unwrap(), *revoked);
    assert_eq!(events.lock().unwrap().len(), before);

    // And an unknown id is NotFound.
    let unknown: KeyId = "zzzzzzzzzzzz".parse().unwrap();
    assert!(matches!(
        manager.update_name(&unknown, "x").await,
        Err(ManagerError::NotFound(u)) if u == unknown
    ));
}

/// `revoked_at` is the manager clock's time of the revocation, and stays
/// when the key is revoked again.
#[tokio::test]
async fn revoke_records_when() {
    let f = fixture();
    let issued = f.manager.issue(IssueOptions::new("acme")).await.unwrap();
    let id = issued.record.id;
    f.clock.advance(Duration::from_secs(10));
    let at = f.clock.now();
    f.manager.revoke(&id).await.unwrap();
    f.clock.advance(Duration::from_secs(10));
    f.manager.revoke(&id).await.unwrap();
    let record = f.manager.find(&id).await.unwrap().unwrap();
    assert_eq!(record.revoked_at(), Some(at));
    assert_eq!(
        f.check(&issued.key).await,
        (StatusCode::UNAUTHORIZED, Some(RejectReason::Revoked))
    );
}
