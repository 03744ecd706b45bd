//! AuthLayer through `tower::ServiceExt::oneshot` on a `service_fn`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use keyward::auth::{AuthLayer, KeySource, Principal, PrincipalSlot};
use keyward::clock::{Clock, FakeClock};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher, KeyId, PepperId};
use keyward::record::{KeyRecord, KeyStatus};
use keyward::reject::{RejectReason, Rejection, Responder};
use keyward::store::{KeyStore, Lookup, MemoryStore, StoreError};
use tower::{service_fn, ServiceExt};

struct Fixture {
    format: KeyFormat,
    store: MemoryStore,
    clock: FakeClock,
    key: ApiKey,
}

async fn fixture() -> Fixture {
    let format = KeyFormat::new("sk_test").unwrap();
    let store = MemoryStore::new();
    let clock = FakeClock::default();
    let key = KeyGenerator::new(format.clone()).generate().unwrap();
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "acme",
        clock.now(),
    )
    .with_scopes("pets:read".parse().unwrap());
    store.insert(record).await.unwrap();
    Fixture {
        format,
        store,
        clock,
        key,
    }
}

/// The inner service answers with what it saw: the owner and whether any
/// credential reached it.
async fn echo(request: Request<String>) -> Result<Response<String>, Infallible> {
    let owner = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.owner().to_owned())
        .unwrap_or_default();
    let leaked = request.headers().contains_key(AUTHORIZATION)
        || request.headers().contains_key("x-api-key")
        || request.uri().query().is_some_and(|q| q.contains("api_key"));
    Ok(Response::new(format!("{owner} leaked={leaked}")))
}

fn layer(f: &Fixture) -> AuthLayer {
    AuthLayer::new(f.store.clone(), f.format.clone()).clock(f.clock.clone())
}

async fn send(layer: AuthLayer, request: Request<String>) -> (Response<()>, String) {
    let service = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(echo));
    let response = service.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes: Bytes = body.collect().await.unwrap().to_bytes();
    (
        Response::from_parts(parts, ()),
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

fn get() -> http::request::Builder {
    Request::get("/pets")
}

fn bearer(key: &str) -> Request<String> {
    get()
        .header(AUTHORIZATION, format!("Bearer {key}"))
        .body(String::new())
        .unwrap()
}

fn reason(response: &Response<()>) -> RejectReason {
    response
        .extensions()
        .get::<Rejection>()
        .expect("a refused response carries its Rejection")
        .reason()
}

fn assert_invalid_token(response: &Response<()>, body: &str) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        r#"Bearer realm="api", error="invalid_token""#
    );
    assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["status"], 401);
    assert_eq!(
        json["detail"],
        "The API key is invalid, expired or revoked."
    );
}

#[tokio::test]
async fn valid_bearer_key_reaches_the_service_without_its_credential() {
    let f = fixture().await;
    // An outer layer's slot receives the principal; the response carries
    // no copy of it.
    let mut request = bearer(f.key.expose_secret());
    let slot = PrincipalSlot::plant(&mut request);
    // A second middleware asking gets the same slot, not a new one that
    // would take the first one's away.
    let same = PrincipalSlot::plant(&mut request);
    let (response, body) = send(layer(&f), request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "acme leaked=false");
    assert_eq!(slot.get().unwrap().key_id(), f.key.id());
    assert_eq!(same.get().map(Principal::key_id), Some(f.key.id()));
    assert!(response.extensions().get::<Principal>().is_none());
    // Without a slot, nothing changes for the service.
    let (response, body) = send(layer(&f), bearer(f.key.expose_secret())).await;
    assert_eq!(
        (response.status(), body.as_str()),
        (StatusCode::OK, "acme leaked=false")
    );
}

#[tokio::test]
async fn valid_x_api_key_is_accepted_and_scheme_is_case_insensitive() {
    let f = fixture().await;
    let request = get()
        .header("x-api-key", f.key.expose_secret())
        .body(String::new())
        .unwrap();
    let (response, body) = send(layer(&f), request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "acme leaked=false");

    let request = get()
        .header(AUTHORIZATION, format!("bEaReR {}", f.key.expose_secret()))
        .body(String::new())
        .unwrap();
    assert_eq!(send(layer(&f), request).await.0.status(), StatusCode::OK);
}

#[tokio::test]
async fn credentials_can_be_kept_for_the_inner_service() {
    let f = fixture().await;
    let (response, body) = send(
        layer(&f).strip_credentials(false),
        bearer(f.key.expose_secret()),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "acme leaked=true");
}

#[tokio::test]
async fn missing_key_is_401_without_error_code() {
    let f = fixture().await;
    let (response, body) = send(layer(&f), get().body(String::new()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        r#"Bearer realm="api""#
    );
    assert_eq!(reason(&response), RejectReason::MissingKey);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["title"], "Unauthorized");
}

#[tokio::test]
async fn malformed_keys_are_401_invalid_token() {
    let f = fixture().await;
    let key = f.key.expose_secret();
    let mut changed = key.to_owned();
    let last = changed.pop().unwrap();
    changed.push(if last == 'a' { 'b' } else { 'a' });
    let cases = [
        changed,
        key[..key.len() - 1].to_owned(),
        key[..20].to_owned(),
        "a".repeat(8 * 1024),
        format!("{key}x"),
        key.replacen("sk_test", "sk_live", 1),
        "not a key".to_owned(),
    ];
    for case in cases {
        let (response, body) = send(layer(&f), bearer(&case)).await;
        assert_invalid_token(&response, &body);
        assert_eq!(reason(&response), RejectReason::MalformedKey);
    }
}

#[tokio::test]
async fn non_ascii_bytes_are_refused() {
    let f = fixture().await;
    for value in [&b"Bearer \xff\xfe\x80"[..], b"Bearer sk_test_\xc3\xa9"] {
        let request = get()
            .header(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap())
            .body(String::new())
            .unwrap();
        let (response, body) = send(layer(&f), request).await;
        assert_invalid_token(&response, &body);
    }
    let request = get()
        .header("x-api-key", HeaderValue::from_bytes(b"\xff").unwrap())
        .body(String::new())
        .unwrap();
    assert_eq!(
        send(layer(&f), request).await.0.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn two_authorization_headers_or_two_keys_are_400() {
    let f = fixture().await;
    let key = f.key.expose_secret();
    let other = KeyGenerator::new(f.format.clone()).generate().unwrap();
    let requests = [
        get()
            .header(AUTHORIZATION, format!("Bearer {key}"))
            .header(AUTHORIZATION, format!("Bearer {key}"))
            .body(String::new())
            .unwrap(),
        get()
            .header(AUTHORIZATION, format!("Bearer {key}"))
            .header("x-api-key", other.expose_secret())
            .body(String::new())
            .unwrap(),
        get()
            .header("x-api-key", key)
            .header("x-api-key", key)
            .body(String::new())
            .unwrap(),
        get()
            .header(AUTHORIZATION, "Bearer ")
            .body(String::new())
            .unwrap(),
    ];
    for request in requests {
        let (response, _) = send(layer(&f), request).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="api", error="invalid_request""#
        );
        assert_eq!(reason(&response), RejectReason::InvalidRequest);
    }
}

#[tokio::test]
async fn query_string_keys_are_ignored_unless_enabled() {
    let f = fixture().await;
    let uri = format!("/pets?api_key={}&page=2", f.key.expose_secret());
    let (response, _) = send(layer(&f), Request::get(&uri).body(String::new()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason(&response), RejectReason::MissingKey);

    let opted_in = layer(&f).sources([KeySource::bearer(), KeySource::insecure_query("api_key")]);
    let (response, body) = send(opted_in, Request::get(&uri).body(String::new()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "acme leaked=false");
}

#[tokio::test]
async fn unknown_id_and_wrong_secret_look_alike_to_the_client() {
    let f = fixture().await;
    let unknown = KeyGenerator::new(f.format.clone()).generate().unwrap();
    let (unknown_response, unknown_body) = send(layer(&f), bearer(unknown.expose_secret())).await;
    assert_invalid_token(&unknown_response, &unknown_body);
    assert_eq!(reason(&unknown_response), RejectReason::UnknownKey);

    // A record for `impostor`'s id that holds another secret's hash.
    let impostor = KeyGenerator::new(f.format.clone()).generate().unwrap();
    let record = KeyRecord::new(
        impostor.id(),
        KeyHasher::sha256().hash(f.key.secret()),
        "acme",
        SystemTime::UNIX_EPOCH,
    );
    f.store.insert(record).await.unwrap();
    let (wrong_response, wrong_body) = send(layer(&f), bearer(impostor.expose_secret())).await;
    assert_invalid_token(&wrong_response, &wrong_body);
    assert_eq!(reason(&wrong_response), RejectReason::WrongSecret);
    assert_eq!(wrong_body, unknown_body);
    assert_eq!(wrong_response.headers(), unknown_response.headers());
}

#[tokio::test]
async fn expiry_status_and_not_before_are_enforced() {
    let f = fixture().await;
    let mut record = KeyRecord::clone(&f.store.find(&f.key.id()).await.unwrap().unwrap());
    let now = f.clock.now();
    record.set_expires_at(Some(now + Duration::from_secs(60)));
    f.store.update(record.clone()).await.unwrap();
    assert_eq!(
        send(layer(&f), bearer(f.key.expose_secret()))
            .await
            .0
            .status(),
        StatusCode::OK
    );

    f.clock.advance(Duration::from_secs(60));
    let (response, body) = send(layer(&f), bearer(f.key.expose_secret())).await;
    assert_invalid_token(&response, &body);
    assert_eq!(reason(&response), RejectReason::Expired);

    record.set_expires_at(None);
    record.set_not_before(Some(now + Duration::from_secs(3600)));
    f.store.update(record.clone()).await.unwrap();
    let (response, _) = send(layer(&f), bearer(f.key.expose_secret())).await;
    assert_eq!(reason(&response), RejectReason::NotYetValid);

    record.set_not_before(None);
    record.status = KeyStatus::Disabled;
    f.store.update(record.clone()).await.unwrap();
    let (response, _) = send(layer(&f), bearer(f.key.expose_secret())).await;
    assert_eq!(reason(&response), RejectReason::Disabled);

    f.store.revoke(&f.key.id(), now).await.unwrap();
    let (response, body) = send(layer(&f), bearer(f.key.expose_secret())).await;
    assert_invalid_token(&response, &body);
    assert_eq!(reason(&response), RejectReason::Revoked);
}

/// A fake clock that counts its readings.
#[derive(Debug, Clone, Default)]
struct CountingClock {
    clock: FakeClock,
    readings: Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingClock {
    fn take(&self) -> usize {
        self.readings.swap(0, std::sync::atomic::Ordering::SeqCst)
    }
}

impl Clock for CountingClock {
    fn now(&self) -> SystemTime {
        self.readings
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.clock.now()
    }
}

/// Every refusal takes the same steps (so that timing does not tell which
/// ids exist or why a key failed): each reads the clock once, and the
/// reason still follows the documented order whatever else is wrong.
#[tokio::test]
async fn every_refusal_reads_the_clock_and_reasons_keep_their_order() {
    let f = fixture().await;
    let clock = CountingClock::default();
    let generator = KeyGenerator::new(f.format.clone());
    let now = clock.now();
    let issue = |edit: fn(KeyRecord, SystemTime) -> KeyRecord| {
        let key = generator.generate().unwrap();
        let record = KeyRecord::new(
            key.id(),
            KeyHasher::sha256().hash(key.secret()),
            "acme",
            now,
        );
        (key, edit(record, now))
    };
    let wrong_secret = |key: &ApiKey| {
        let other = generator.generate().unwrap();
        f.format.key_from_parts(key.id(), other.secret()).unwrap()
    };
    let cases = [
        issue(|r, _| r),
        issue(|r, _| r.with_status(KeyStatus::Revoked)),
        issue(|r, now| r.with_status(KeyStatus::Disabled).with_expires_at(now)),
        issue(|r, now| {
            r.with_expires_at(now)
                .with_not_before(now + Duration::from_secs(1))
        }),
        issue(|r, now| r.with_not_before(now + Duration::from_secs(1))),
    ];
    for (_, record) in &cases {
        f.store.insert(record.clone()).await.unwrap();
    }
    let layer = AuthLayer::new(f.store.clone(), f.format.clone()).clock(clock.clone());
    let refused = |layer: &AuthLayer, key: &ApiKey| {
        let layer = layer.clone();
        let request = bearer(key.expose_secret());
        async move {
            let (response, body) = send(layer, request).await;
            assert_invalid_token(&response, &body);
            reason(&response)
        }
    };
    clock.take();

    // A usable key without validity times does not read the clock.
    let (response, _) = send(layer.clone(), bearer(cases[0].0.expose_secret())).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(clock.take(), 0);

    let unknown = generator.generate().unwrap();
    assert_eq!(refused(&layer, &unknown).await, RejectReason::UnknownKey);
    assert_eq!(clock.take(), 1, "unknown id");
    for ((key, _), right) in cases.iter().zip([
        RejectReason::WrongSecret,
        RejectReason::Revoked,
        RejectReason::Disabled,
        RejectReason::Expired,
        RejectReason::NotYetValid,
    ]) {
        let wrong = wrong_secret(key);
        assert_eq!(refused(&layer, &wrong).await, RejectReason::WrongSecret);
        assert_eq!(clock.take(), 1, "wrong secret, then {right:?}");
        if right != RejectReason::WrongSecret {
            assert_eq!(refused(&layer, key).await, right);
            assert_eq!(clock.take(), 1, "{right:?}");
        }
    }

    // Under a peppered hasher an unknown id is still an unknown key (the
    // stand-in it is checked against uses the hasher's own algorithm),
    // never a pepper the service lacks.
    let peppered = layer.hasher(KeyHasher::with_pepper(PepperId::new(7), b"pepper"));
    assert_eq!(refused(&peppered, &unknown).await, RejectReason::UnknownKey);
}

#[tokio::test]
async fn peppered_hashes_need_the_same_pepper() {
    let f = fixture().await;
    let key = KeyGenerator::new(f.format.clone()).generate().unwrap();
    let pepper = KeyHasher::with_pepper(PepperId::new(1), b"kept in a secret manager");
    let record = KeyRecord::new(
        key.id(),
        pepper.hash(key.secret()),
        "peppered",
        SystemTime::UNIX_EPOCH,
    );
    f.store.insert(record).await.unwrap();

    let (response, body) = send(layer(&f).hasher(pepper), bearer(key.expose_secret())).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "peppered leaked=false");
    // Without the pepper the key cannot be checked: 503, never "invalid".
    let (response, _) = send(layer(&f), bearer(key.expose_secret())).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reason(&response), RejectReason::StoreUnavailable);
    // Another pepper under the same id: a wrong secret, as far as anyone
    // can tell.
    let other = KeyHasher::with_pepper(PepperId::new(1), b"another pepper");
    let (response, _) = send(layer(&f).hasher(other), bearer(key.expose_secret())).await;
    assert_eq!(reason(&response), RejectReason::WrongSecret);
}

/// A store that never answers at once, so the layer awaits `find`.
#[derive(Debug)]
struct AsyncOnly<S>(S);

#[async_trait::async_trait]
impl<S: KeyStore> KeyStore for AsyncOnly<S> {
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

/// A store whose backend is down.
#[derive(Debug)]
struct Down;

#[async_trait::async_trait]
impl KeyStore for Down {
    async fn find(&self, _: &KeyId) -> Lookup {
        Err(StoreError::backend(std::io::Error::other(
            "connection refused",
        )))
    }
    async fn insert(&self, _: KeyRecord) -> Result<(), StoreError> {
        Err(StoreError::backend(std::io::Error::other(
            "connection refused",
        )))
    }
    async fn update(&self, _: KeyRecord) -> Result<(), StoreError> {
        Err(StoreError::backend(std::io::Error::other(
            "connection refused",
        )))
    }
    async fn revoke(&self, _: &KeyId, _: SystemTime) -> Result<(), StoreError> {
        Err(StoreError::backend(std::io::Error::other(
            "connection refused",
        )))
    }
    async fn list_by_owner(&self, _: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        Err(StoreError::backend(std::io::Error::other(
            "connection refused",
        )))
    }
}

#[tokio::test]
async fn stores_that_must_be_awaited_work_the_same() {
    let f = fixture().await;
    let layer = AuthLayer::new(AsyncOnly(f.store.clone()), f.format.clone()).clock(f.clock.clone());
    let mut request = bearer(f.key.expose_secret());
    let slot = PrincipalSlot::plant(&mut request);
    let (response, body) = send(layer.clone(), request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "acme leaked=false");
    assert_eq!(slot.get().map(Principal::key_id), Some(f.key.id()));

    let unknown = KeyGenerator::new(f.format.clone()).generate().unwrap();
    let (response, body) = send(layer, bearer(unknown.expose_secret())).await;
    assert_invalid_token(&response, &body);
    assert_eq!(reason(&response), RejectReason::UnknownKey);
}

#[tokio::test]
async fn a_failing_store_fails_closed_with_503() {
    let f = fixture().await;
    let (response, body) = send(
        AuthLayer::new(Down, f.format.clone()),
        bearer(f.key.expose_secret()),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reason(&response), RejectReason::StoreUnavailable);
    assert!(!body.contains(f.key.secret()));
    assert!(!body.contains("connection refused"));
}

#[tokio::test]
async fn the_rejection_response_is_replaceable() {
    let f = fixture().await;
    let responder = Responder::custom(|rejection| {
        Response::builder()
            .status(rejection.status())
            .body(Bytes::from(format!(
                "nope: {}",
                rejection.status().as_u16()
            )))
            .unwrap()
    });
    let (response, body) = send(layer(&f).responder(responder), bearer("junk")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body, "nope: 401");
    assert_eq!(reason(&response), RejectReason::MalformedKey);
}

#[tokio::test]
async fn refusals_take_at_least_the_floor() {
    let f = fixture().await;
    let floor = keyward::auth::MAX_REFUSAL_FLOOR;
    let unknown = KeyGenerator::new(f.format.clone()).generate().unwrap();
    let other = KeyGenerator::new(f.format.clone()).generate().unwrap();
    let wrong = f.format.key_from_parts(f.key.id(), other.secret()).unwrap();
    let revoked = KeyGenerator::new(f.format.clone()).generate().unwrap();
    let record = KeyRecord::new(
        revoked.id(),
        KeyHasher::sha256().hash(revoked.secret()),
        "acme",
        SystemTime::UNIX_EPOCH,
    )
    .with_status(KeyStatus::Revoked);
    f.store.insert(record).await.unwrap();
    for key in [&unknown, &wrong, &revoked] {
        let started = Instant::now();
        let (response, _) = send(
            layer(&f).refusal_floor(Some(floor)),
            bearer(key.expose_secret()),
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(started.elapsed() >= floor, "{:?}", reason(&response));
    }

    // A longer floor is cut to the longest (no overflow, no thread held
    // for long); the default is 1 µs; `None` turns it off.
    let longest = layer(&f).refusal_floor(Some(Duration::MAX));
    assert_eq!(longest.authenticator().refusal_floor(), Some(floor));
    let (response, _) = send(longest, bearer(unknown.expose_secret())).await;
    assert_eq!(reason(&response), RejectReason::UnknownKey);
    assert_eq!(
        layer(&f).authenticator().refusal_floor(),
        Some(keyward::auth::DEFAULT_REFUSAL_FLOOR)
    );
    let off = layer(&f).refusal_floor(None);
    assert_eq!(off.authenticator().refusal_floor(), None);
}
