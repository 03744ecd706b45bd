//! JWT-based keys: every way a token can be bad is refused (with the
//! reason noted for the logs), times are read from the injected clock,
//! keys rotate, and revoking a token's record revokes the token.
#![cfg(feature = "jwt")]

use std::time::{Duration, UNIX_EPOCH};

use base64ct::{Base64UrlUnpadded, Encoding};
use keyward::clock::{Clock, FakeClock};
use keyward::jwt::{
    Algorithm, DecodingKey, EncodingKey, JwtIssuer, JwtKey, JwtKeyError, JwtKeySet, JwtSigningKey,
    JwtVerifier,
};
use keyward::limit::{Limits, RatePolicy};
use keyward::manager::{IssueOptions, KeyManager};
use keyward::reject::RejectReason;
use keyward::store::MemoryStore;
use keyward::{KeyFormat, KeyStore};
use p256::elliptic_curve::Generate;
use p256::pkcs8::EncodePrivateKey;
use rand::rngs::SysRng;
use serde_json::{json, Value};

const SECRET: [u8; 32] = [0x5c; 32];
const ISS: &str = "https://auth.example.com";
const AUD: &str = "pets-api";
const HOUR: Duration = Duration::from_secs(3600);

struct Fixture {
    clock: FakeClock,
    store: MemoryStore,
    manager: KeyManager,
    issuer: JwtIssuer,
    keys: JwtKeySet,
}

impl Fixture {
    fn new() -> Self {
        let clock = FakeClock::new(UNIX_EPOCH + Duration::from_secs(1_750_000_000));
        let store = MemoryStore::new();
        let manager = KeyManager::new(store.clone(), KeyFormat::new("sk_live").unwrap())
            .with_clock(clock.clone());
        let (issuer, key) = JwtIssuer::hs256("k1", &SECRET, ISS, AUD).unwrap();
        Self {
            clock: clock.clone(),
            store,
            manager,
            issuer: issuer.clock(clock),
            keys: JwtKeySet::from_iter([key]),
        }
    }

    fn verifier(&self) -> JwtVerifier {
        JwtVerifier::new(self.store.clone(), self.keys.clone(), ISS, AUD).clock(self.clock.clone())
    }

    async fn issue(&self, scopes: &str) -> keyward::manager::IssuedJwt {
        self.manager
            .issue_jwt(
                &self.issuer,
                IssueOptions::new("acme").scopes(scopes.parse().unwrap()),
                HOUR,
            )
            .await
            .unwrap()
    }

    fn now(&self) -> u64 {
        self.clock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// Claims of a good token for `jti`, to be spoiled one at a time.
    fn claims(&self, jti: &str) -> Value {
        json!({
            "iss": ISS, "aud": AUD, "sub": "acme", "iat": self.now(),
            "exp": self.now() + 3600, "scope": "pets:read", "jti": jti,
        })
    }

    async fn reason(&self, token: &str) -> Option<RejectReason> {
        self.verifier()
            .verify(token)
            .await
            .err()
            .map(|r| r.reason())
    }
}

/// Signs `claims` with HS256 and `secret`, with `kid` in the header.
fn hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

/// A token assembled by hand: any header, any claims, any signature.
fn raw(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        Base64UrlUnpadded::encode_string(header.to_string().as_bytes()),
        Base64UrlUnpadded::encode_string(claims.to_string().as_bytes()),
        signature
    )
}

#[tokio::test]
async fn a_good_token_becomes_the_principal_of_its_record() {
    let f = Fixture::new();
    let limits = Limits::new([RatePolicy::new("burst", 5, Duration::from_secs(1))
        .unwrap()
        .into()])
    .unwrap();
    let issued = f
        .manager
        .issue_jwt(
            &f.issuer,
            IssueOptions::new("acme")
                .scopes("pets:read pets:write".parse().unwrap())
                .limits(limits.clone()),
            HOUR,
        )
        .await
        .unwrap();
    assert!(JwtVerifier::looks_like_jwt(&issued.token));
    assert_eq!(issued.record.expires_at(), Some(f.clock.now() + HOUR));
    let who = f.verifier().verify(&issued.token).await.unwrap();
    assert_eq!(who.owner(), "acme");
    assert_eq!(who.key_id(), issued.record.id);
    assert_eq!(who.scopes().to_string(), "pets:read pets:write");
    assert_eq!(
        who.record().limits,
        limits,
        "the record's limits, for RateLimitLayer"
    );
    // Debug never shows the token.
    assert!(!format!("{issued:?}").contains(&issued.token));

    // A token with fewer scopes than its record gets those only.
    let narrow = hs256(
        &SECRET,
        Some("k1"),
        &f.claims(issued.record.id.as_str())
            .as_object()
            .cloned()
            .map(|mut c| {
                c.insert("scope".into(), json!("pets:read"));
                Value::Object(c)
            })
            .unwrap(),
    );
    let who = f.verifier().verify(&narrow).await.unwrap();
    assert_eq!(who.scopes().to_string(), "pets:read");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let f = Fixture::new();
    let issued = f.issue("pets:read").await;
    let claims = f.claims(issued.record.id.as_str());
    for alg in ["none", "None", "NONE"] {
        for header in [json!({"alg": alg, "kid": "k1"}), json!({"alg": alg})] {
            for signature in ["", "c2ln"] {
                let token = raw(&header, &claims, signature);
                assert_eq!(
                    f.reason(&token).await,
                    Some(RejectReason::MalformedKey),
                    "{header} {signature:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn algorithm_confusion_is_refused() {
    // The verifier knows an ES256 public key; the attacker signs HS256
    // with that public key's bytes as the secret.
    let f = Fixture::new();
    let signer = p256::ecdsa::SigningKey::try_generate_from_rng(&mut SysRng).unwrap();
    let public = signer.verifying_key().to_sec1_bytes();
    let es256 = JwtKey::new("ec", Algorithm::ES256, DecodingKey::from_ec_der(&public)).unwrap();
    let keys = JwtKeySet::from_iter([es256]);
    let verifier = JwtVerifier::new(f.store.clone(), keys, ISS, AUD).clock(f.clock.clone());
    let issued = f.issue("pets:read").await;
    let claims = f.claims(issued.record.id.as_str());

    // The real key's tokens pass.
    let private = signer.to_pkcs8_der().unwrap();
    let signing = JwtSigningKey::new(
        "ec",
        Algorithm::ES256,
        EncodingKey::from_ec_der(private.as_bytes()),
    )
    .unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some("ec".into());
    let genuine = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ec_der(private.as_bytes()),
    )
    .unwrap();
    assert!(verifier.verify(&genuine).await.is_ok());
    assert_eq!(signing.algorithm(), Algorithm::ES256);

    for kid in [Some("ec"), None] {
        let forged = hs256(&public, kid, &claims);
        let refused = verifier.verify(&forged).await.unwrap_err();
        assert_eq!(refused.reason(), RejectReason::BadSignature, "{kid:?}");
    }
    // And a key cannot be registered for an algorithm of another family.
    assert_eq!(
        JwtKey::new("ec", Algorithm::HS256, DecodingKey::from_ec_der(&public)).unwrap_err(),
        JwtKeyError::WrongFamily(Algorithm::HS256)
    );
    assert_eq!(
        JwtKey::hs256("short", &[1; 16]).unwrap_err(),
        JwtKeyError::ShortSecret
    );
}

#[tokio::test]
async fn expiry_and_not_before_use_the_injected_clock_with_leeway() {
    let f = Fixture::new();
    let issued = f.issue("pets:read").await;
    // Exactly at exp + leeway - 1 s: still accepted; at exp + leeway: not.
    f.clock.advance(HOUR + Duration::from_secs(29));
    assert_eq!(f.reason(&issued.token).await, None);
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(f.reason(&issued.token).await, Some(RejectReason::Expired));
    // A smaller leeway refuses earlier.
    let f = Fixture::new();
    let issued = f.issue("pets:read").await;
    f.clock.advance(HOUR);
    let strict = f.verifier().leeway(Duration::ZERO);
    assert_eq!(
        strict.verify(&issued.token).await.unwrap_err().reason(),
        RejectReason::Expired
    );

    // Not yet valid: nbf beyond the leeway is refused, within it accepted.
    let f = Fixture::new();
    let issued = f.issue("pets:read").await;
    let base = f.now();
    let with_nbf = |ahead: u64| {
        let mut claims = f.claims(issued.record.id.as_str());
        claims["nbf"] = json!(base + ahead);
        hs256(&SECRET, Some("k1"), &claims)
    };
    assert_eq!(
        f.reason(&with_nbf(120)).await,
        Some(RejectReason::NotYetValid)
    );
    assert_eq!(
        f.reason(&with_nbf(31)).await,
        Some(RejectReason::NotYetValid)
    );
    assert_eq!(f.reason(&with_nbf(30)).await, None);
    f.clock.advance(Duration::from_secs(100));
    assert_eq!(f.reason(&with_nbf(120)).await, None);

    // A token without exp is refused: a bearer token that never expires.
    let mut claims = f.claims(issued.record.id.as_str());
    claims.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        f.reason(&hs256(&SECRET, Some("k1"), &claims)).await,
        Some(RejectReason::InvalidClaims)
    );
}

#[tokio::test]
async fn wrong_issuer_audience_subject_or_scope_is_refused() {
    let f = Fixture::new();
    let issued = f.issue("pets:read pets:write").await;
    let id = issued.record.id.to_string();
    let spoiled = |field: &str, value: Value| {
        let mut claims = f.claims(&id);
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(field);
        } else {
            claims[field] = value;
        }
        hs256(&SECRET, Some("k1"), &claims)
    };
    let invalid = Some(RejectReason::InvalidClaims);
    for (field, value, expected) in [
        ("iss", json!("https://evil.example.com"), invalid),
        ("iss", Value::Null, invalid),
        ("aud", json!("other-api"), invalid),
        ("aud", json!(["other-api", "more"]), invalid),
        ("aud", Value::Null, invalid),
        ("aud", json!(["other-api", AUD]), None),
        ("sub", json!("mallory"), invalid),
        ("sub", json!(""), invalid),
        ("sub", Value::Null, invalid),
        ("scope", json!("pets:read  pets:write"), invalid),
        ("scope", json!(" pets:read"), invalid),
        ("scope", json!("Pets:Read"), invalid),
        ("scope", json!("pets:read,pets:write"), invalid),
        ("scope", json!("keys:admin"), invalid),
        ("scope", json!("pets:write"), None),
        ("jti", json!("not-a-key-id"), invalid),
        ("jti", Value::Null, invalid),
    ] {
        assert_eq!(
            f.reason(&spoiled(field, value.clone())).await,
            expected,
            "{field}: {value}"
        );
    }
    // A scope of the wrong type does not even parse.
    assert_eq!(
        f.reason(&spoiled("scope", json!(["pets:read"]))).await,
        Some(RejectReason::MalformedKey)
    );
    assert_eq!(
        f.reason(&spoiled("exp", json!("tomorrow"))).await,
        Some(RejectReason::MalformedKey)
    );
}

#[tokio::test]
async fn a_revoked_or_unknown_jti_is_refused() {
    let f = Fixture::new();
    let issued = f.issue("pets:read").await;
    assert_eq!(f.reason(&issued.token).await, None);
    f.manager.disable(&issued.record.id).await.unwrap();
    assert_eq!(f.reason(&issued.token).await, Some(RejectReason::Disabled));
    f.manager.enable(&issued.record.id).await.unwrap();
    f.manager.revoke(&issued.record.id).await.unwrap();
    assert_eq!(f.reason(&issued.token).await, Some(RejectReason::Revoked));

    // A well-signed token naming a record that does not exist.
    let unknown = hs256(&SECRET, Some("k1"), &f.claims("AAAAAAAAAAAA"));
    assert_eq!(f.reason(&unknown).await, Some(RejectReason::UnknownKey));
    // A record of another owner.
    let other = f
        .manager
        .issue_jwt(&f.issuer, IssueOptions::new("someone-else"), HOUR)
        .await
        .unwrap();
    let borrowed = hs256(&SECRET, Some("k1"), &f.claims(other.record.id.as_str()));
    assert_eq!(f.reason(&borrowed).await, Some(RejectReason::InvalidClaims));
}

#[tokio::test]
async fn oversized_and_malformed_tokens_are_refused() {
    let f = Fixture::new();
    let issued = f.issue("pets:read").await;
    let mut claims = f.claims(issued.record.id.as_str());
    claims["padding"] = json!("x".repeat(8 * 1024));
    let big = hs256(&SECRET, Some("k1"), &claims);
    assert!(big.len() > 8 * 1024);
    assert_eq!(f.reason(&big).await, Some(RejectReason::MalformedKey));
    // The same token passes a verifier that allows it: only its size was wrong.
    let roomy = f.verifier().max_token_len(64 * 1024);
    assert!(roomy.verify(&big).await.is_ok());

    let good = issued.token.clone();
    let (head, rest) = good.split_once('.').unwrap();
    let (body, signature) = rest.split_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    for bad in [
        String::new(),
        "a.b".to_owned(),
        format!("{head}.{body}"),
        format!("{head}.{body}.{signature}.x"),
        format!("{head}.{body}.{flipped}{}", &signature[1..]),
        format!(
            "{head}.{}.{signature}",
            Base64UrlUnpadded::encode_string(b"{\"sub\":\"mallory\"}")
        ),
        format!(
            "{}.{body}.{signature}",
            Base64UrlUnpadded::encode_string(b"not json")
        ),
        format!("{head}.{body}.{signature}=="),
    ] {
        assert!(f.reason(&bad).await.is_some(), "{bad}");
    }
    let tampered = format!("{head}.{body}.{flipped}{}", &signature[1..]);
    assert_eq!(f.reason(&tampered).await, Some(RejectReason::BadSignature));
}

#[tokio::test]
async fn keys_rotate_by_kid() {
    let f = Fixture::new();
    let issued_k1 = f.issue("pets:read").await;
    // A second key joins the set; the issuer moves to it.
    let (issuer_k2, key_k2) = JwtIssuer::hs256("k2", &[0x77; 32], ISS, AUD).unwrap();
    f.keys.insert(key_k2);
    let issued_k2 = f
        .manager
        .issue_jwt(&issuer_k2, IssueOptions::new("acme"), HOUR)
        .await
        .unwrap();
    assert_eq!(f.reason(&issued_k1.token).await, None);
    assert_eq!(f.reason(&issued_k2.token).await, None);
    // A token naming an unknown kid, or none while several keys exist.
    let claims = f.claims(issued_k1.record.id.as_str());
    assert_eq!(
        f.reason(&hs256(&SECRET, Some("k9"), &claims)).await,
        Some(RejectReason::UnknownKey)
    );
    assert_eq!(
        f.reason(&hs256(&SECRET, None, &claims)).await,
        Some(RejectReason::UnknownKey)
    );
    // k1 signed with k2's name: the signature does not verify.
    assert_eq!(
        f.reason(&hs256(&SECRET, Some("k2"), &claims)).await,
        Some(RejectReason::BadSignature)
    );
    // The old key is withdrawn: its tokens are refused, the new ones pass.
    assert!(f.keys.remove("k1"));
    assert_eq!(
        f.reason(&issued_k1.token).await,
        Some(RejectReason::UnknownKey)
    );
    assert_eq!(f.reason(&issued_k2.token).await, None);
    assert_eq!(f.keys.kids(), vec!["k2".to_owned()]);
}

#[tokio::test]
async fn tokens_without_records_when_allowed() {
    let f = Fixture::new();
    let limits = Limits::new([RatePolicy::new("jwt", 10, Duration::from_secs(1))
        .unwrap()
        .into()])
    .unwrap();
    let verifier = f.verifier().require_record(false).limits(limits.clone());
    let token = f
        .issuer
        .mint("user-7", &"pets:read".parse().unwrap(), HOUR, None)
        .unwrap();
    // Required by default.
    assert_eq!(f.reason(&token).await, Some(RejectReason::InvalidClaims));
    let who = verifier.verify(&token).await.unwrap();
    assert_eq!(who.owner(), "user-7");
    assert_eq!(who.record().limits, limits);
    // The same subject always has the same key id (limits count per
    // subject); another subject has another.
    let again = f
        .issuer
        .mint("user-7", &Default::default(), HOUR, None)
        .unwrap();
    assert_eq!(
        verifier.verify(&again).await.unwrap().key_id(),
        who.key_id()
    );
    let other = f
        .issuer
        .mint("user-8", &Default::default(), HOUR, None)
        .unwrap();
    assert_ne!(
        verifier.verify(&other).await.unwrap().key_id(),
        who.key_id()
    );
    // A jti naming a record is still checked: revoked is revoked.
    let issued = f.issue("pets:read").await;
    f.manager.revoke(&issued.record.id).await.unwrap();
    assert_eq!(
        verifier.verify(&issued.token).await.unwrap_err().reason(),
        RejectReason::Revoked
    );
    // Times still count.
    f.clock.advance(HOUR + Duration::from_secs(30));
    assert_eq!(
        verifier.verify(&token).await.unwrap_err().reason(),
        RejectReason::Expired
    );
}

#[tokio::test]
async fn the_store_failing_is_503_not_401() {
    // A record-backed token while the store is down: refused as
    // unavailable, never as a bad token.
    #[derive(Debug)]
    struct Down;
    #[keyward::async_trait]
    impl KeyStore for Down {
        async fn find(&self, _: &keyward::KeyId) -> keyward::store::Lookup {
            Err(keyward::store::StoreError::backend(std::io::Error::other(
                "down",
            )))
        }
        async fn insert(&self, _: keyward::KeyRecord) -> Result<(), keyward::store::StoreError> {
            Ok(())
        }
        async fn update(&self, _: keyward::KeyRecord) -> Result<(), keyward::store::StoreError> {
            Ok(())
        }
        async fn revoke(
            &self,
            _: &keyward::KeyId,
            _: std::time::SystemTime,
        ) -> Result<(), keyward::store::StoreError> {
            Ok(())
        }
        async fn list_by_owner(
            &self,
            _: &str,
        ) -> Result<Vec<std::sync::Arc<keyward::KeyRecord>>, keyward::store::StoreError> {
            Ok(Vec::new())
        }
    }
    let f = Fixture::new();
    let issued = f.issue("pets:read").await;
    let verifier = JwtVerifier::new(Down, f.keys.clone(), ISS, AUD).clock(f.clock.clone());
    let refused = verifier.verify(&issued.token).await.unwrap_err();
    assert_eq!(refused.reason(), RejectReason::StoreUnavailable);
    assert_eq!(refused.status(), 503);
}

/// A store that hangs, or panics, while told to; as the `MemoryStore`
/// it wraps otherwise.
#[derive(Debug, Clone)]
struct Faulty {
    inner: MemoryStore,
    fault: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

const FINE: u8 = 0;
const HANG: u8 = 1;
const PANIC: u8 = 2;

#[keyward::async_trait]
impl KeyStore for Faulty {
    async fn find(&self, id: &keyward::KeyId) -> keyward::store::Lookup {
        match self.fault.load(std::sync::atomic::Ordering::SeqCst) {
            HANG => std::future::pending().await,
            _ => self.inner.find(id).await,
        }
    }
    fn find_immediate(&self, id: &keyward::KeyId) -> Option<keyward::store::Lookup> {
        match self.fault.load(std::sync::atomic::Ordering::SeqCst) {
            FINE => self.inner.find_immediate(id),
            PANIC => panic!("store fault injected"),
            _ => None,
        }
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

/// Fail closed: a record look-up that hangs is cut by the timeout (the
/// default, then one set shorter), and one that panics is refused; both
/// `503`, and the service goes on once the store answers again.
#[tokio::test(start_paused = true)]
async fn a_hanging_or_panicking_store_is_503() {
    let f = Fixture::new();
    let issued = f.issue("pets:read").await;
    let store = Faulty {
        inner: f.store.clone(),
        fault: std::sync::Arc::default(),
    };
    let verifier = JwtVerifier::new(store.clone(), f.keys.clone(), ISS, AUD).clock(f.clock.clone());
    let fault = |mode| store.fault.store(mode, std::sync::atomic::Ordering::SeqCst);

    fault(HANG);
    let started = tokio::time::Instant::now();
    let refused = tokio::time::timeout(
        2 * keyward::auth::DEFAULT_STORE_TIMEOUT,
        verifier.verify(&issued.token),
    )
    .await
    .expect("the verifier waited past its timeout")
    .unwrap_err();
    assert_eq!(started.elapsed(), keyward::auth::DEFAULT_STORE_TIMEOUT);
    assert_eq!(refused.reason(), RejectReason::StoreUnavailable);
    assert_eq!(refused.status(), 503);

    let shorter = verifier
        .clone()
        .store_timeout(Some(Duration::from_millis(250)));
    let started = tokio::time::Instant::now();
    let refused = shorter.verify(&issued.token).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(refused.reason(), RejectReason::StoreUnavailable);

    fault(PANIC);
    let refused = verifier.verify(&issued.token).await.unwrap_err();
    assert_eq!(refused.reason(), RejectReason::StoreUnavailable);

    fault(FINE);
    let principal = verifier.verify(&issued.token).await.unwrap();
    assert_eq!(principal.owner(), "acme");
}

#[test]
fn bearer_tokens_are_told_from_api_keys_by_shape() {
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", "Bearer eyJh.eyJz.c2ln".parse().unwrap());
    assert_eq!(JwtVerifier::bearer(&headers), Some("eyJh.eyJz.c2ln"));
    headers.insert("authorization", "bearer  eyJh.eyJz.c2ln ".parse().unwrap());
    assert_eq!(JwtVerifier::bearer(&headers), Some("eyJh.eyJz.c2ln"));
    let key = keyward::KeyGenerator::new(KeyFormat::new("sk_live").unwrap())
        .generate()
        .unwrap();
    headers.insert(
        "authorization",
        format!("Bearer {}", key.expose_secret()).parse().unwrap(),
    );
    assert_eq!(JwtVerifier::bearer(&headers), None);
    headers.insert("authorization", "Basic eyJh.eyJz.c2ln".parse().unwrap());
    assert_eq!(JwtVerifier::bearer(&headers), None);
}

mod through_auth_layer {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use keyward::{AuthLayer, MemoryLimiter, Principal, RateLimitLayer};
    use tower::ServiceExt;

    fn app(f: &Fixture) -> Router {
        let auth = AuthLayer::new(f.store.clone(), f.manager.format().clone())
            .clock(f.clock.clone())
            .credential(f.verifier());
        Router::new()
            .route(
                "/whoami",
                get(|who: Principal, headers: http::HeaderMap| async move {
                    // The credential never reaches the handler.
                    assert!(!headers.contains_key("authorization"));
                    format!("{} {} {}", who.owner(), who.credential(), who.scopes())
                }),
            )
            .layer(RateLimitLayer::new(
                MemoryLimiter::new().with_clock(f.clock.clone()),
            ))
            .layer(auth)
    }

    async fn call(
        app: &Router,
        headers: &[(&str, String)],
    ) -> (StatusCode, http::HeaderMap, String) {
        let mut request = Request::get("/whoami");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = app
            .clone()
            .oneshot(request.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    fn bearer(token: &str) -> (&'static str, String) {
        ("authorization", format!("Bearer {token}"))
    }

    #[tokio::test]
    async fn jwts_and_api_keys_side_by_side() {
        let f = Fixture::new();
        let app = app(&f);
        let jwt = f.issue("pets:read").await;
        let key = f
            .manager
            .issue(IssueOptions::new("keyholder").scopes("pets:write".parse().unwrap()))
            .await
            .unwrap()
            .key;
        let (status, _, body) = call(&app, &[bearer(&jwt.token)]).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "acme jwt pets:read")
        );
        // An API key in the same header still goes to the API-key path.
        let (status, _, body) = call(&app, &[bearer(key.expose_secret())]).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "keyholder api_key pets:write")
        );
        // A JWT and an API key in one request: two credentials.
        let (status, _, _) = call(
            &app,
            &[
                bearer(&jwt.token),
                ("x-api-key", key.expose_secret().to_owned()),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn every_bad_token_is_the_uniform_401() {
        let f = Fixture::new();
        let app = app(&f);
        // The answer to a bad API key: what every bad token must look like.
        let stranger = keyward::KeyGenerator::new(f.manager.format().clone())
            .generate()
            .unwrap();
        let (status, headers, body) = call(&app, &[bearer(stranger.expose_secret())]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let uniform = (status, headers["www-authenticate"].clone(), body);
        assert!(uniform.1.to_str().unwrap().contains("invalid_token"));

        let good = f.issue("pets:read").await;
        let revoked = f.issue("pets:read").await;
        f.manager.revoke(&revoked.record.id).await.unwrap();
        let claims = f.claims(good.record.id.as_str());
        let spoil = |field: &str, value: Value| {
            let mut claims = claims.clone();
            claims[field] = value;
            hs256(&SECRET, Some("k1"), &claims)
        };
        let signer = p256::ecdsa::SigningKey::try_generate_from_rng(&mut SysRng).unwrap();
        let public = signer.verifying_key().to_sec1_bytes();
        f.keys.insert(
            JwtKey::new("ec", Algorithm::ES256, DecodingKey::from_ec_der(&public)).unwrap(),
        );
        let mut big = claims.clone();
        big["padding"] = json!("x".repeat(9000));
        let bad = [
            (
                "alg none",
                raw(&json!({"alg": "none", "kid": "k1"}), &claims, ""),
            ),
            ("confusion", hs256(&public, Some("ec"), &claims)),
            ("expired", spoil("exp", json!(f.now() - 60))),
            ("not yet valid", spoil("nbf", json!(f.now() + 600))),
            ("audience", spoil("aud", json!("other"))),
            ("issuer", spoil("iss", json!("https://evil.example.com"))),
            ("scope", spoil("scope", json!("pets:read  pets:write"))),
            ("unknown kid", hs256(&SECRET, Some("k9"), &claims)),
            ("revoked jti", revoked.token.clone()),
            ("oversized", hs256(&SECRET, Some("k1"), &big)),
        ];
        for (what, token) in bad {
            let (status, headers, body) = call(&app, &[bearer(&token)]).await;
            assert_eq!(
                (status, headers["www-authenticate"].clone(), body),
                uniform,
                "{what}"
            );
        }
        assert_eq!(call(&app, &[bearer(&good.token)]).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn the_records_limits_apply_behind_a_jwt() {
        let f = Fixture::new();
        let app = app(&f);
        let limits = Limits::new([RatePolicy::new("burst", 2, Duration::from_secs(60))
            .unwrap()
            .into()])
        .unwrap();
        let issued = f
            .manager
            .issue_jwt(&f.issuer, IssueOptions::new("acme").limits(limits), HOUR)
            .await
            .unwrap();
        for _ in 0..2 {
            assert_eq!(call(&app, &[bearer(&issued.token)]).await.0, StatusCode::OK);
        }
        let (status, headers, _) = call(&app, &[bearer(&issued.token)]).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(headers.contains_key("retry-after"));
    }
}
