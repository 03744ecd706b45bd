//! The credential framework: `AuthLayer::credential` with verifiers of
//! their own, through `oneshot` and a real `axum::Router` — which
//! credential counts, two credentials refused, restrictions and the
//! failure throttle applied to every kind, verifiers that wait, what is
//! stripped.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::routing;
use axum::Router;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use keyward::auth::client::ClientAddr;
use keyward::auth::{AuthLayer, FailureThrottle, Principal};
use keyward::credential::{CredentialKind, RequestView, Verification, Verifier};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher};
use keyward::record::{Environment, KeyRecord};
use keyward::reject::{RejectReason, Rejection};
use keyward::store::{KeyStore, MemoryStore};
use keyward::KeyHash;
use tower::{ServiceBuilder, ServiceExt};

const X_TOKEN: HeaderName = HeaderName::from_static("x-token");

/// A test verifier: `X-Token: good` (or `Authorization: Bearer tok.en.x`,
/// the shape of a JWT) is its record; anything else it recognises is
/// refused. It can answer at once or after a yield, and counts its calls.
#[derive(Debug)]
struct TokenVerifier {
    record: Arc<KeyRecord>,
    kind: CredentialKind,
    wait: bool,
    verified: AtomicUsize,
}

impl TokenVerifier {
    fn new(record: KeyRecord, kind: CredentialKind) -> Self {
        Self {
            record: Arc::new(record),
            kind,
            wait: false,
            verified: AtomicUsize::new(0),
        }
    }

    fn waiting(mut self) -> Self {
        self.wait = true;
        self
    }

    fn token<'a>(request: &RequestView<'a>) -> Option<&'a str> {
        if let Some(value) = request.headers().get(X_TOKEN) {
            return value.to_str().ok();
        }
        let bearer = request.headers().get("authorization")?.to_str().ok()?;
        let token = bearer.strip_prefix("Bearer ")?;
        (token.split('.').count() == 3).then_some(token)
    }
}

impl Verifier for TokenVerifier {
    fn kind(&self) -> CredentialKind {
        self.kind
    }

    fn recognises(&self, request: &RequestView<'_>) -> bool {
        Self::token(request).is_some()
    }

    fn verify(&self, request: &RequestView<'_>) -> Verification {
        self.verified.fetch_add(1, Ordering::Relaxed);
        let result = match Self::token(request) {
            Some("good") | Some("tok.en.x") => Ok(Principal::with_credential(
                Arc::clone(&self.record),
                self.kind,
            )),
            _ => Err(Rejection::new(RejectReason::UnknownKey)),
        };
        if self.wait {
            Verification::pending(async move {
                tokio::task::yield_now().await;
                result
            })
        } else {
            Verification::Ready(result)
        }
    }

    fn strip(&self, headers: &mut HeaderMap, _: &mut Uri) {
        headers.remove(X_TOKEN);
        headers.remove("authorization");
    }
}

/// A verifier of `X-Other` headers, to try two verifiers at once.
#[derive(Debug)]
struct OtherVerifier;

impl Verifier for OtherVerifier {
    fn kind(&self) -> CredentialKind {
        CredentialKind::Publishable
    }

    fn recognises(&self, request: &RequestView<'_>) -> bool {
        request.headers().contains_key("x-other")
    }

    fn verify(&self, _: &RequestView<'_>) -> Verification {
        Verification::refuse(RejectReason::UnknownKey)
    }
}

struct Fixture {
    key: ApiKey,
    store: MemoryStore,
    format: KeyFormat,
}

async fn fixture() -> Fixture {
    let format = KeyFormat::new("sk_live").unwrap();
    let store = MemoryStore::new();
    let key = KeyGenerator::new(format.clone()).generate().unwrap();
    let hash = KeyHasher::sha256().hash(key.secret());
    store
        .insert(KeyRecord::new(
            key.id(),
            hash,
            "keyholder",
            SystemTime::now(),
        ))
        .await
        .unwrap();
    Fixture { key, store, format }
}

fn token_record(owner: &str) -> KeyRecord {
    KeyRecord::new(
        "tokenRecord1".parse().unwrap(),
        KeyHash::from_bytes([7; 32]),
        owner,
        SystemTime::now(),
    )
}

/// What the handler saw: the principal's owner and kind, and the headers
/// that reached it.
async fn call(
    layer: AuthLayer,
    request: Request<String>,
) -> (StatusCode, String, Option<Rejection>) {
    let service =
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|request: Request<String>| async move {
                let who = request.extensions().get::<Principal>().unwrap();
                let seen: Vec<&str> = request.headers().keys().map(|name| name.as_str()).collect();
                let answer = format!("{} {} [{}]", who.owner(), who.credential(), seen.join(","));
                Ok::<_, Infallible>(Response::new(answer))
            });
    let response = service.oneshot(request).await.unwrap();
    let status = response.status();
    let rejection = response.extensions().get::<Rejection>().cloned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        rejection,
    )
}

fn get(headers: &[(&str, &str)]) -> Request<String> {
    let mut builder = Request::get("/");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(String::new()).unwrap()
}

#[tokio::test]
async fn each_credential_alone_is_verified_by_its_own_verifier() {
    let f = fixture().await;
    for wait in [false, true] {
        let mut verifier = TokenVerifier::new(token_record("tokenholder"), CredentialKind::Jwt);
        if wait {
            verifier = verifier.waiting();
        }
        let layer = AuthLayer::new(f.store.clone(), f.format.clone()).credential(verifier);

        let (status, body, _) = call(layer.clone(), get(&[("x-token", "good")])).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "tokenholder jwt []")
        );

        // The API key still works beside it, with its own kind.
        let bearer = format!("Bearer {}", f.key.expose_secret());
        let (status, body, _) = call(layer.clone(), get(&[("authorization", &bearer)])).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "keyholder api_key []")
        );

        // A JWT-shaped bearer is the verifier's, not a malformed API key.
        let (status, body, _) =
            call(layer.clone(), get(&[("authorization", "Bearer tok.en.x")])).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "tokenholder jwt []")
        );

        // A recognised credential that fails is the uniform 401.
        let (status, _, rejection) = call(layer.clone(), get(&[("x-token", "forged")])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(rejection.unwrap().reason(), RejectReason::UnknownKey);

        // Junk in a key source that no verifier recognises is still a
        // malformed API key, and nothing at all is a missing one.
        let (status, _, rejection) =
            call(layer.clone(), get(&[("authorization", "Bearer junk")])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(rejection.unwrap().reason(), RejectReason::MalformedKey);
        let (status, _, rejection) = call(layer, get(&[])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(rejection.unwrap().reason(), RejectReason::MissingKey);
    }
}

#[tokio::test]
async fn two_credentials_are_refused_before_either_is_verified() {
    let f = fixture().await;
    let verifier = Arc::new(TokenVerifier::new(token_record("t"), CredentialKind::Jwt));
    let layer = AuthLayer::new(f.store.clone(), f.format.clone())
        .credential(Arc::clone(&verifier))
        .credential(OtherVerifier);
    let key = f.key.expose_secret();
    let bearer = format!("Bearer {key}");
    for headers in [
        // An API key and another credential, valid or not.
        vec![("x-api-key", key), ("x-token", "good")],
        vec![("authorization", bearer.as_str()), ("x-token", "good")],
        vec![("x-api-key", "sk_live_malformed"), ("x-token", "good")],
        // Two verifiers' credentials.
        vec![("x-token", "good"), ("x-other", "1")],
    ] {
        let (status, _, rejection) = call(layer.clone(), get(&headers)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{headers:?}");
        assert_eq!(rejection.unwrap().reason(), RejectReason::TwoCredentials);
    }
    assert_eq!(verifier.verified.load(Ordering::Relaxed), 0);

    // The answer is RFC 6750's invalid_request.
    let response = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        })
        .oneshot(get(&[("x-token", "good"), ("x-other", "1")]))
        .await
        .unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="api", error="invalid_request""#
    );
}

#[tokio::test]
async fn restrictions_apply_to_every_kind() {
    let f = fixture().await;
    let record = token_record("t")
        .with_environment(Environment::Test)
        .with_allowed_networks(["10.0.0.0/8".parse().unwrap()]);
    let layer = |environment| {
        AuthLayer::new(f.store.clone(), f.format.clone())
            .environment(environment)
            .credential(TokenVerifier::new(
                record.clone(),
                CredentialKind::Signature,
            ))
    };
    let from = |addr: &str| {
        let mut request = get(&[("x-token", "good")]);
        request
            .extensions_mut()
            .insert(ClientAddr(addr.parse().unwrap()));
        request
    };
    let (status, body, _) = call(layer(Environment::Test), from("10.1.2.3")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "t signature []"));

    let (status, _, rejection) = call(layer(Environment::Live), from("10.1.2.3")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(rejection.unwrap().reason(), RejectReason::Restricted);

    let (status, _, rejection) = call(layer(Environment::Test), from("192.0.2.1")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(rejection.unwrap().reason(), RejectReason::Restricted);

    // No client address known: a network-restricted record is refused.
    let (status, _, _) = call(layer(Environment::Test), get(&[("x-token", "good")])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn credentials_are_stripped_by_their_verifier_unless_kept() {
    let f = fixture().await;
    let layer = AuthLayer::new(f.store.clone(), f.format.clone())
        .credential(TokenVerifier::new(token_record("t"), CredentialKind::Jwt));
    let request = get(&[("x-token", "good"), ("x-trace", "1")]);
    let (_, body, _) = call(layer.clone(), request).await;
    assert_eq!(body, "t jwt [x-trace]");

    let kept = layer.strip_credentials(false);
    let (_, body, _) = call(kept, get(&[("x-token", "good")])).await;
    assert_eq!(body, "t jwt [x-token]");
}

#[tokio::test]
async fn the_failure_throttle_counts_every_kind_of_bad_credential() {
    let f = fixture().await;
    let verifier = Arc::new(TokenVerifier::new(token_record("t"), CredentialKind::Jwt));
    let layer = AuthLayer::new(f.store.clone(), f.format.clone())
        .failure_throttle(FailureThrottle::new(3, Duration::from_secs(60)))
        .credential(Arc::clone(&verifier));
    let from_client = |token: &str| {
        let mut request = get(&[("x-token", token)]);
        request
            .extensions_mut()
            .insert(ClientAddr("192.0.2.9".parse().unwrap()));
        request
    };
    for _ in 0..3 {
        let (status, _, _) = call(layer.clone(), from_client("forged")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Blocked now, even with a good credential, and without verifying.
    let (status, _, rejection) = call(layer.clone(), from_client("good")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(rejection.unwrap().reason(), RejectReason::TooManyFailures);
    assert_eq!(verifier.verified.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn every_kind_works_in_an_axum_router() {
    let f = fixture().await;
    let layer = AuthLayer::new(f.store.clone(), f.format.clone())
        .credential(TokenVerifier::new(token_record("tokenholder"), CredentialKind::Jwt).waiting());
    let router: Router = Router::new()
        .route(
            "/whoami",
            routing::get(|who: Principal| async move {
                format!("{} {}", who.owner(), who.credential())
            }),
        )
        .layer(layer);
    let request = |name: &str, value: &str| {
        Request::get("/whoami")
            .header(name, value)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let answer = |response: axum::response::Response| async move {
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let response = router
        .clone()
        .oneshot(request("x-token", "good"))
        .await
        .unwrap();
    assert_eq!(
        answer(response).await,
        (StatusCode::OK, "tokenholder jwt".to_owned())
    );
    let response = router
        .clone()
        .oneshot(request("x-api-key", f.key.expose_secret()))
        .await
        .unwrap();
    assert_eq!(
        answer(response).await,
        (StatusCode::OK, "keyholder api_key".to_owned())
    );
    let response = router.oneshot(request("x-token", "bad")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn a_principal_says_its_kind_and_clones_cheaply() {
    let record = Arc::new(token_record("t"));
    let principal = Principal::with_credential(Arc::clone(&record), CredentialKind::Imported);
    assert_eq!(principal.credential(), CredentialKind::Imported);
    assert_eq!(
        Principal::new(Arc::clone(&record)).credential(),
        CredentialKind::ApiKey
    );
    let clone = principal.clone();
    assert!(Arc::ptr_eq(clone.record(), &record));
    assert_eq!(Arc::strong_count(&record), 3);
    let json = serde_json::to_value(&principal).unwrap();
    assert_eq!(json["credential"], "imported");
}

fn basic(credentials: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

#[tokio::test]
async fn basic_auth_carries_the_key_when_enabled() {
    use keyward::auth::KeySource;
    let f = fixture().await;
    let key = f.key.expose_secret();
    let layer = AuthLayer::new(f.store.clone(), f.format.clone()).sources([
        KeySource::bearer(),
        KeySource::x_api_key(),
        KeySource::basic_user(),
    ]);
    let (status, body, _) = call(
        layer.clone(),
        get(&[("authorization", &basic(&format!("{key}:")))]),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "keyholder api_key []")
    );
    // Bearer on the same header still works.
    let bearer = format!("Bearer {key}");
    let (status, _, _) = call(layer.clone(), get(&[("authorization", &bearer)])).await;
    assert_eq!(status, StatusCode::OK);

    for (credentials, reason) in [
        (
            basic(&format!("{key}:password")),
            RejectReason::MalformedKey,
        ),
        ("Basic %%%".to_owned(), RejectReason::MalformedKey),
        (basic(key), RejectReason::MalformedKey),
        (basic("sk_live_guess:"), RejectReason::MalformedKey),
    ] {
        let (status, _, rejection) =
            call(layer.clone(), get(&[("authorization", &credentials)])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{credentials}");
        assert_eq!(rejection.unwrap().reason(), reason, "{credentials}");
    }

    // Off by default: a Basic header is no key at all.
    let defaults = AuthLayer::new(f.store.clone(), f.format.clone());
    let (status, _, rejection) = call(
        defaults,
        get(&[("authorization", &basic(&format!("{key}:")))]),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(rejection.unwrap().reason(), RejectReason::MissingKey);
}
