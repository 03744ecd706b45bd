//! Publishable keys: accepted only from their allowed origins (Origin, then
//! Referer), refused with a 403 a browser can read otherwise; their scopes
//! limited by the service's allow-list when issued and when changed.

use std::convert::Infallible;

use axum::routing::get;
use axum::Router;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use keyward::auth::origin::AllowedOrigin;
use keyward::auth::{AuthLayer, Principal};
use keyward::clock::FakeClock;
use keyward::key::{ApiKey, KeyFormat};
use keyward::manager::{IssueOptions, KeyManager, ManagerError};
use keyward::reject::{RejectReason, Rejection};
use keyward::store::MemoryStore;
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn origin(s: &str) -> AllowedOrigin {
    s.parse().unwrap()
}

struct Fixture {
    manager: KeyManager,
    store: MemoryStore,
    clock: FakeClock,
}

impl Fixture {
    fn new() -> Self {
        let store = MemoryStore::new();
        let clock = FakeClock::default();
        let manager = KeyManager::new(store.clone(), KeyFormat::new("pk_live").unwrap())
            .with_clock(clock.clone())
            .with_publishable_scopes("catalog:read search:*".parse().unwrap());
        Self {
            manager,
            store,
            clock,
        }
    }

    async fn publishable(&self, origins: &[&str]) -> ApiKey {
        self.manager
            .issue(
                IssueOptions::new("shop")
                    .scopes("catalog:read".parse().unwrap())
                    .publishable(origins.iter().map(|o| origin(o))),
            )
            .await
            .unwrap()
            .key
    }

    fn auth(&self) -> AuthLayer {
        AuthLayer::new(self.store.clone(), self.manager.format().clone()).clock(self.clock.clone())
    }
}

async fn echo(request: Request<String>) -> Result<Response<String>, Infallible> {
    let owner = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.owner().to_owned())
        .unwrap_or_default();
    Ok(Response::new(owner))
}

/// The status, the rejection reason and the response's
/// `Access-Control-Allow-Origin`, for a request with these headers.
async fn send(
    auth: AuthLayer,
    key: &ApiKey,
    headers: &[(&str, &str)],
) -> (StatusCode, Option<RejectReason>, Option<String>) {
    let service = ServiceBuilder::new().layer(auth).service(service_fn(echo));
    let mut request = Request::get("/products").header("x-api-key", key.expose_secret());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = service
        .oneshot(request.body(String::new()).unwrap())
        .await
        .unwrap();
    (
        response.status(),
        response.extensions().get::<Rejection>().map(|r| r.reason()),
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned()),
    )
}

#[tokio::test]
async fn allowed_origins_pass_and_others_are_refused_with_403() {
    let f = Fixture::new();
    let key = f
        .publishable(&["https://shop.example.com", "https://*.cdn.example.net"])
        .await;
    let ok = |headers: &'static [(&'static str, &'static str)]| {
        let (auth, key) = (f.auth(), key.clone());
        async move { send(auth, &key, headers).await }
    };

    for allowed in [
        &[("origin", "https://shop.example.com")][..],
        &[("origin", "https://SHOP.example.com:443")],
        &[("origin", "https://a.cdn.example.net")],
        &[("origin", "https://eu.a.cdn.example.net")],
        // No Origin: the Referer's origin counts.
        &[("referer", "https://shop.example.com/cart?item=7")],
    ] {
        assert_eq!(ok(allowed).await.0, StatusCode::OK, "{allowed:?}");
    }

    let refused: &[&[(&str, &str)]] = &[
        &[],
        &[("origin", "null")],
        &[("origin", "")],
        &[("origin", "https://evil.example.org")],
        &[("origin", "http://shop.example.com")],
        &[("origin", "https://shop.example.com:8443")],
        &[("origin", "https://shop.example.com.evil.io")],
        &[("origin", "https://evilshop.example.com")],
        &[("origin", "https://cdn.example.net")],
        &[("origin", "https://a.cdn.example.net.evil.io")],
        &[("origin", "https://evilcdn.example.net")],
        &[("origin", "https://shop.example.com/")],
        &[
            ("origin", "https://shop.example.com"),
            ("origin", "https://shop.example.com"),
        ],
        // A null (or wrong) Origin is not rescued by a good Referer.
        &[("origin", "null"), ("referer", "https://shop.example.com/")],
        &[
            ("origin", "https://evil.example.org"),
            ("referer", "https://shop.example.com/"),
        ],
        &[(
            "referer",
            "https://evil.example.org/https://shop.example.com/",
        )],
        &[("referer", "https://shop.example.com@evil.example.org/")],
        &[("referer", "/relative/page")],
    ];
    for headers in refused {
        let (status, reason, _) = send(f.auth(), &key, headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(reason, Some(RejectReason::OriginNotAllowed), "{headers:?}");
    }
}

#[tokio::test]
async fn refusals_carry_cors_headers_and_a_useful_body() {
    let f = Fixture::new();
    let key = f.publishable(&["https://shop.example.com"]).await;
    let service = ServiceBuilder::new()
        .layer(f.auth())
        .service(service_fn(echo));
    let request = Request::get("/products")
        .header("x-api-key", key.expose_secret())
        .header("origin", "https://evil.example.org")
        .body(String::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let headers = response.headers().clone();
    // The page that sent it may read the refusal (and only that page).
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://evil.example.org"
    );
    assert_eq!(headers["vary"], "origin");
    assert!(!headers.contains_key("access-control-allow-credentials"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["status"], 403);
    let detail = json["detail"].as_str().unwrap();
    assert!(detail.contains("Origin"), "{detail}");
    // An unknown key from a browser: the 401 is readable too.
    let unknown = f.manager.format().clone();
    let stranger = keyward::KeyGenerator::new(unknown).generate().unwrap();
    let (status, _, allow) = send(
        f.auth(),
        &stranger,
        &[("origin", "https://shop.example.com")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(allow.as_deref(), Some("https://shop.example.com"));
    // A null origin is not echoed.
    let (status, _, allow) = send(f.auth(), &key, &[("origin", "null")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(allow, None);
}

#[tokio::test]
async fn secret_keys_ignore_origins_and_a_publishable_key_without_origins_is_refused() {
    let f = Fixture::new();
    let secret = f
        .manager
        .issue(IssueOptions::new("backend").scopes("keys:admin".parse().unwrap()))
        .await
        .unwrap();
    let (status, _, _) = send(f.auth(), &secret.key, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(f.auth(), &secret.key, &[("origin", "null")]).await;
    assert_eq!(status, StatusCode::OK);

    // A record written past the manager, publishable with no origin:
    // refused everywhere.
    let key = f.publishable(&["https://shop.example.com"]).await;
    let mut record = (*f.manager.find(&key.id()).await.unwrap().unwrap()).clone();
    record.set_allowed_origins([]);
    keyward::KeyStore::update(&f.store, record).await.unwrap();
    let (status, reason, _) = send(f.auth(), &key, &[("origin", "https://shop.example.com")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(reason, Some(RejectReason::OriginNotAllowed));
}

#[tokio::test]
async fn scope_allow_list_is_enforced_at_issue_and_on_change() {
    let f = Fixture::new();
    let shop = || IssueOptions::new("shop").publishable([origin("https://shop.example.com")]);
    for scopes in [
        "keys:admin",
        "catalog:read keys:admin",
        "catalog:*",
        "search:*",
    ] {
        let asked = scopes.parse().unwrap();
        let result = f.manager.issue(shop().scopes(asked)).await;
        let allowed = scopes == "search:*";
        assert_eq!(result.is_ok(), allowed, "{scopes}");
        if !allowed {
            assert!(
                matches!(result, Err(ManagerError::ScopeNotPublishable(_))),
                "{scopes}: {result:?}"
            );
        }
    }
    let issued = f
        .manager
        .issue(shop().scopes("catalog:read search:query".parse().unwrap()))
        .await
        .unwrap();
    assert!(issued.record.publishable());
    assert_eq!(
        f.manager.list_by_owner("shop").await.unwrap().len(),
        2,
        "refused issues stored nothing"
    );
    // Issued with no origin: refused.
    let none = f
        .manager
        .issue(IssueOptions::new("shop").publishable([]))
        .await;
    assert!(matches!(none, Err(ManagerError::NoAllowedOrigins)));

    // Scope changes are held to the same list.
    let id = issued.record.id;
    let escalate = f
        .manager
        .update_scopes(&id, "catalog:read keys:admin".parse().unwrap())
        .await;
    match escalate {
        Err(ManagerError::ScopeNotPublishable(scope)) => assert_eq!(scope.as_str(), "keys:admin"),
        other => panic!("expected ScopeNotPublishable, got {other:?}"),
    }
    let record = f.manager.find(&id).await.unwrap().unwrap();
    assert_eq!(record.scopes.to_string(), "catalog:read search:query");
    f.manager
        .update_scopes(&id, "search:suggest".parse().unwrap())
        .await
        .unwrap();
    // Origins can be replaced, never emptied.
    assert!(matches!(
        f.manager.update_allowed_origins(&id, []).await,
        Err(ManagerError::NoAllowedOrigins)
    ));
    let moved = f
        .manager
        .update_allowed_origins(&id, [origin("https://new.example.com")])
        .await
        .unwrap();
    assert_eq!(
        moved.allowed_origins(),
        vec![origin("https://new.example.com")]
    );
    // Rotation keeps the flag and the origins.
    let rotated = f
        .manager
        .rotate(&id, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert!(rotated.record.publishable());
    assert_eq!(rotated.record.allowed_origins(), moved.allowed_origins());
    // Secret keys are not limited by the list.
    f.manager
        .issue(IssueOptions::new("backend").scopes("keys:admin".parse().unwrap()))
        .await
        .unwrap();
}

#[tokio::test]
async fn through_an_axum_router() {
    let f = Fixture::new();
    let key = f.publishable(&["https://*.example.com"]).await;
    let app = Router::new()
        .route(
            "/whoami",
            get(|who: Principal| async move { format!("{} {}", who.owner(), who.credential()) }),
        )
        .layer(f.auth());
    let call = |origin: Option<&'static str>| {
        let app = app.clone();
        let key = key.clone();
        async move {
            let mut request = Request::get("/whoami")
                .header("authorization", format!("Bearer {}", key.expose_secret()));
            if let Some(origin) = origin {
                request = request.header("origin", origin);
            }
            let response = app
                .oneshot(request.body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    assert_eq!(
        call(Some("https://app.example.com")).await,
        (StatusCode::OK, "shop publishable".to_owned())
    );
    assert_eq!(
        call(Some("https://example.com")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(Some("https://example.com.evil.io")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(call(None).await.0, StatusCode::FORBIDDEN);
}

#[cfg(feature = "serde")]
#[test]
fn stored_shape_is_readable() {
    let record = keyward::KeyRecord::new(
        "AbCdEf012345".parse().unwrap(),
        keyward::KeyHasher::sha256().hash("x"),
        "shop",
        std::time::UNIX_EPOCH,
    )
    .with_publishable([
        origin("https://shop.example.com"),
        origin("https://*.example.com:8443"),
    ]);
    let json = serde_json::to_value(&record).unwrap();
    assert_eq!(json["publishable"], true);
    assert_eq!(
        json["allowed_origins"],
        serde_json::json!(["https://shop.example.com", "https://*.example.com:8443"])
    );
    let back: keyward::KeyRecord = serde_json::from_value(json).unwrap();
    assert_eq!(back, record);
    // Secret keys carry neither field; a bad origin in storage is an error.
    let plain = serde_json::to_value(keyward::KeyRecord::new(
        "AbCdEf012345".parse().unwrap(),
        keyward::KeyHasher::sha256().hash("x"),
        "shop",
        std::time::UNIX_EPOCH,
    ))
    .unwrap();
    assert!(plain.get("publishable").is_none() && plain.get("allowed_origins").is_none());
    let mut bad = serde_json::to_value(&record).unwrap();
    bad["allowed_origins"] = serde_json::json!(["https://example.com.evil.io/x"]);
    assert!(serde_json::from_value::<keyward::KeyRecord>(bad).is_err());
}

/// A store where another writer changes a record right after each read
/// (the change is set with `after_next_find`): a manager's read and its
/// write are then of different records.
#[derive(Debug, Default)]
struct Racing {
    inner: MemoryStore,
    change: std::sync::Mutex<Option<keyward::KeyRecord>>,
}

impl Racing {
    fn after_next_find(&self, record: keyward::KeyRecord) {
        *self.change.lock().unwrap() = Some(record);
    }
}

#[keyward::async_trait]
impl keyward::KeyStore for Racing {
    async fn find(&self, id: &keyward::KeyId) -> keyward::store::Lookup {
        let found = self.inner.find(id).await;
        let change = self.change.lock().unwrap().take();
        if let Some(record) = change {
            self.inner.update(record).await.unwrap();
        }
        found
    }
    async fn insert(&self, record: keyward::KeyRecord) -> Result<(), keyward::store::StoreError> {
        self.inner.insert(record).await
    }
    async fn update(&self, record: keyward::KeyRecord) -> Result<(), keyward::store::StoreError> {
        self.inner.update(record).await
    }
    async fn revoke(
        &self,
        id: &keyward::KeyId,
        at: std::time::SystemTime,
    ) -> Result<(), keyward::store::StoreError> {
        self.inner.revoke(id, at).await
    }
    async fn list_by_owner(
        &self,
        owner: &str,
    ) -> Result<Vec<std::sync::Arc<keyward::KeyRecord>>, keyward::store::StoreError> {
        self.inner.list_by_owner(owner).await
    }
}

#[tokio::test]
async fn the_publishable_rules_hold_for_the_record_written_when_a_change_races() {
    use keyward::KeyStore as _;
    let store = std::sync::Arc::new(Racing::default());
    let manager = KeyManager::new(store.clone(), KeyFormat::new("pk_live").unwrap())
        .with_publishable_scopes("catalog:read".parse().unwrap());
    let secret = manager
        .issue(IssueOptions::new("shop").scopes("catalog:read".parse().unwrap()))
        .await
        .unwrap()
        .record;
    let made_publishable = secret
        .clone()
        .with_publishable([origin("https://shop.example.com")]);

    // A secret key made publishable by another writer while its scopes
    // change: whatever wins, no publishable key ends with `keys:admin`.
    store.after_next_find(made_publishable.clone());
    let changed = manager
        .update_scopes(&secret.id, "keys:admin".parse().unwrap())
        .await;
    let stored = store.find(&secret.id).await.unwrap().unwrap();
    assert!(
        !(stored.publishable() && stored.scopes.iter().any(|s| s.as_str() == "keys:admin")),
        "a publishable key was given keys:admin ({changed:?})"
    );

    // The same for origins: no publishable key ends without one.
    store.inner.update(secret.clone()).await.unwrap();
    store.after_next_find(made_publishable);
    let changed = manager.update_allowed_origins(&secret.id, []).await;
    let stored = store.find(&secret.id).await.unwrap().unwrap();
    assert!(
        !(stored.publishable() && stored.allowed_origins().is_empty()),
        "a publishable key was left without origins ({changed:?})"
    );
}
