//! GitHub secret scanning: signed deliveries revoke (or disable) leaked keys
//! and answer GitHub's labels; everything unsigned, forged, oversized or
//! malformed is refused before the store is touched.
#![cfg(feature = "secret-scanning")]

mod support;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::body::Body;
use axum::Router;
use base64ct::{Base64, Encoding};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use keyward::clock::FakeClock;
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher, KeyId};
use keyward::manager::{IssueOptions, KeyManager};
use keyward::record::{KeyRecord, KeyStatus};
use keyward::scanning::{
    Finding, GithubPublicKeys, Label, LeakAction, PublicKeysError, ScanError, SecretScanning,
    SignatureError, TokenHash,
};
use keyward::store::{KeyStore, Lookup, MemoryStore, StoreError};
use keyward::usage::{sink_fn, EventKind, Lifecycle, UsageEvent};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::Generate;
use p256::pkcs8::{EncodePublicKey, LineEnding};
use rand::rngs::SysRng;
use serde_json::{json, Value};
use support::CapturedLogs;
use tower::ServiceExt;

const PATH: &str = "/webhooks/github/secret-scanning";

/// GitHub's published secret-scanning keys (as listed by its meta API).
const GITHUB_KEYS: &str = r#"{
  "public_keys": [
    {
      "key_identifier": "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a",
      "key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq\nkCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==\n-----END PUBLIC KEY-----\n",
      "is_current": false
    },
    {
      "key_identifier": "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c",
      "key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYAGMWO8XgCamYKMJS6jc/qgvSlAd\nAjPuDPRcXU22YxgBrz+zoN19MzuRyW87qEt9/AmtoNP5GrobzUvQSyJFVw==\n-----END PUBLIC KEY-----\n",
      "is_current": true
    }
  ]
}"#;

const TEST_KEY_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A store that counts every call, to prove refused deliveries touch none.
#[derive(Debug, Clone, Default)]
struct CountingStore {
    inner: MemoryStore,
    calls: Arc<AtomicUsize>,
    revokes: Arc<AtomicUsize>,
    fail: bool,
}

impl CountingStore {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn count(&self) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            Err(StoreError::backend(std::io::Error::other(
                "connection refused",
            )))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl KeyStore for CountingStore {
    async fn find(&self, id: &KeyId) -> Lookup {
        self.count()?;
        self.inner.find(id).await
    }
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        // Setting up is not what the tests count.
        self.inner.insert(record).await
    }
    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.count()?;
        self.inner.update(record).await
    }
    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
        self.count()?;
        self.revokes.fetch_add(1, Ordering::SeqCst);
        self.inner.revoke(id, at).await
    }
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        self.count()?;
        self.inner.list_by_owner(owner).await
    }
}

struct Fixture {
    store: CountingStore,
    manager: KeyManager,
    signer: SigningKey,
    events: Arc<Mutex<Vec<UsageEvent>>>,
}

fn fixture() -> Fixture {
    fixture_with(CountingStore::default())
}

fn fixture_with(store: CountingStore) -> Fixture {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink_events = Arc::clone(&events);
    let manager = KeyManager::new(store.clone(), KeyFormat::new("sk_live").unwrap())
        .with_clock(FakeClock::default())
        .with_events(sink_fn(move |e| sink_events.lock().unwrap().push(e)));
    Fixture {
        store,
        manager,
        signer: SigningKey::try_generate_from_rng(&mut SysRng).unwrap(),
        events,
    }
}

fn keys_json(entries: &[(&str, &SigningKey, bool)]) -> String {
    let keys: Vec<Value> = entries
        .iter()
        .map(|(id, signer, current)| {
            json!({
                "key_identifier": id,
                "key": signer.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                "is_current": current,
            })
        })
        .collect();
    json!({ "public_keys": keys }).to_string()
}

fn sign(signer: &SigningKey, body: &[u8]) -> String {
    let signature: Signature = signer.sign(body);
    Base64::encode_string(signature.to_der().as_bytes())
}

impl Fixture {
    fn scanning(&self) -> SecretScanning {
        let keys = keys_json(&[(TEST_KEY_ID, &self.signer, true)]);
        SecretScanning::new(
            self.manager.clone(),
            GithubPublicKeys::from_json(keys.as_bytes()).unwrap(),
        )
    }

    fn app(&self, scanning: SecretScanning) -> Router {
        Router::new().merge(scanning.router(PATH))
    }

    async fn issue(&self) -> ApiKey {
        self.manager
            .issue(IssueOptions::new("acme"))
            .await
            .unwrap()
            .key
    }

    fn signed(&self, body: &str) -> Request<Body> {
        Request::post(PATH)
            .header("content-type", "application/json")
            .header("Github-Public-Key-Identifier", TEST_KEY_ID)
            .header(
                "Github-Public-Key-Signature",
                sign(&self.signer, body.as_bytes()),
            )
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    async fn status(&self, key: &ApiKey) -> KeyStatus {
        self.store
            .inner
            .find(&key.id())
            .await
            .unwrap()
            .unwrap()
            .status
    }

    fn events(&self) -> Vec<UsageEvent> {
        self.events.lock().unwrap().clone()
    }
}

fn report(token: &str, url: &str, source: &str) -> Value {
    json!({ "token": token, "type": "keyward_api_key", "url": url, "source": source })
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String, http::HeaderMap) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap(), headers)
}

fn sha256_hex(token: &str) -> String {
    TokenHash::of(token).to_string()
}

#[tokio::test]
async fn githubs_documented_sample_deliveries_verify_against_its_published_keys() {
    let f = fixture();
    let scanning = SecretScanning::new(
        f.manager.clone(),
        GithubPublicKeys::from_json(GITHUB_KEYS.as_bytes()).unwrap(),
    );
    let app = f.app(scanning);
    // The sample request of GitHub's partner-program documentation, and
    // the older one (no `source`), signed by the previous key.
    let samples = [
        (
            "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c",
            "MEQCIQDaMKqrGnE27S0kgMrEK0eYBmyG0LeZismAEz/BgZyt7AIfXt9fErtRS4XaeSt/AO1RtBY66YcAdjxji410VQV4xg==",
            r#"[{"source":"commit","token":"some_token","type":"some_type","url":"https://example.com/base-repo-url/"}]"#,
        ),
        (
            "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a",
            "MEUCIQDKZokqnCjrRtw0tni+2Ltvl/uiMJ1EGumEsp1BsNr32AIgQY1YXD2nlj+XNfGK4rBfkMJ1JDOQcYXxa2sY8FNkrKc=",
            r#"[{"token":"some_token","type":"some_type","url":"some_url"}]"#,
        ),
    ];
    for (id, signature, body) in samples {
        let request = Request::post(PATH)
            .header("Content-Type", "application/json")
            .header("Github-Public-Key-Identifier", id)
            .header("Github-Public-Key-Signature", signature)
            .body(Body::from(body))
            .unwrap();
        let (status, body, headers) = send(&app, request).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(headers["content-type"], "application/json");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            answer,
            json!([{
                "token_hash": sha256_hex("some_token"),
                "token_type": "some_type",
                "label": "false_positive",
            }])
        );
    }
    // `some_token` is not a key of this format: no look-up at all.
    assert_eq!(f.store.calls(), 0);
}

#[test]
fn token_hash_is_sha256_hex() {
    assert_eq!(
        TokenHash::of("abc").to_string(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn githubs_public_keys_document_parses() {
    let keys = GithubPublicKeys::from_json(GITHUB_KEYS.as_bytes()).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys.current(),
        Some("bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c")
    );
    assert_eq!(
        keys.identifiers().collect::<Vec<_>>(),
        [
            "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a",
            "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c"
        ]
    );
    assert!(format!("{keys:?}").contains("bcb53661"));
}

#[test]
fn bad_public_keys_documents_are_refused() {
    let signer = SigningKey::try_generate_from_rng(&mut SysRng).unwrap();
    assert!(matches!(
        GithubPublicKeys::from_json(b"not json"),
        Err(PublicKeysError::Json(_))
    ));
    assert!(matches!(
        GithubPublicKeys::from_json(br#"{"keys": []}"#),
        Err(PublicKeysError::Json(_))
    ));
    assert!(matches!(
        GithubPublicKeys::from_json(br#"{"public_keys": []}"#),
        Err(PublicKeysError::NoKeys)
    ));
    let bad_pem = json!({"public_keys": [{"key_identifier": "k1", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "is_current": true}]});
    match GithubPublicKeys::from_json(bad_pem.to_string().as_bytes()) {
        Err(error @ PublicKeysError::InvalidKey { .. }) => {
            assert!(error.to_string().contains("k1"));
            assert!(std::error::Error::source(&error).is_some());
        }
        other => panic!("{other:?}"),
    }
    let twice = keys_json(&[("k1", &signer, true), ("k1", &signer, false)]);
    assert!(matches!(
        GithubPublicKeys::from_json(twice.as_bytes()),
        Err(PublicKeysError::BadIdentifier)
    ));
    let empty_id = keys_json(&[("", &signer, true)]);
    assert!(matches!(
        GithubPublicKeys::from_json(empty_id.as_bytes()),
        Err(PublicKeysError::BadIdentifier)
    ));
}

proptest::proptest! {
    #[test]
    fn the_keys_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
        let _ = GithubPublicKeys::from_json(&bytes);
    }

    #[test]
    fn no_made_up_signature_verifies(signature in "[A-Za-z0-9+/=]{0,120}", body in ".{0,64}") {
        let keys = GithubPublicKeys::from_json(GITHUB_KEYS.as_bytes()).unwrap();
        let verdict = keys.verify(
            "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c",
            &signature,
            body.as_bytes(),
        );
        proptest::prop_assert!(verdict.is_err());
    }
}

#[tokio::test]
async fn a_leaked_key_is_revoked_and_recorded_with_its_url_and_source() {
    let f = fixture();
    let app = f.app(f.scanning());
    let key = f.issue().await;
    let url = "https://github.com/octocat/Hello-World/blob/1234/.env";
    let body = json!([report(key.expose_secret(), url, "content")]).to_string();

    let (status, answer, _) = send(&app, f.signed(&body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer,
        json!([{
            "token_hash": sha256_hex(key.expose_secret()),
            "token_type": "keyward_api_key",
            "label": "true_positive",
        }])
    );
    assert_eq!(f.status(&key).await, KeyStatus::Revoked);

    let events = f.events();
    let kinds: Vec<_> = events.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds[1..],
        [
            EventKind::Lifecycle(Lifecycle::Revoked),
            EventKind::Lifecycle(Lifecycle::LeakReported)
        ]
    );
    let leak = &events[2];
    assert_eq!(leak.key_id(), Some(key.id()));
    assert_eq!(leak.owner(), Some("acme"));
    assert_eq!(leak.tags().get("url"), Some(url));
    assert_eq!(leak.tags().get("source"), Some("content"));
    assert_eq!(leak.tags().get("token_type"), Some("keyward_api_key"));
    assert_eq!(leak.tags().get("action"), Some("revoked"));
}

#[tokio::test]
async fn a_mix_of_true_and_false_positives_is_labelled_one_by_one() {
    let f = fixture();
    let scanning = f.scanning();
    let live = f.issue().await;
    let revoked = f.issue().await;
    f.manager.revoke(&revoked.id()).await.unwrap();
    // A well-formed key whose id exists with another secret.
    let impostor = KeyGenerator::new(f.manager.format().clone())
        .generate()
        .unwrap();
    f.store
        .inner
        .insert(KeyRecord::new(
            impostor.id(),
            KeyHasher::sha256().hash("another secret entirely"),
            "globex",
            SystemTime::UNIX_EPOCH,
        ))
        .await
        .unwrap();
    let unknown = KeyGenerator::new(f.manager.format().clone())
        .generate()
        .unwrap();
    let foreign = KeyGenerator::new(KeyFormat::new("sk_test").unwrap())
        .generate()
        .unwrap();
    let mut typo = live.expose_secret().to_owned();
    typo.pop();
    typo.push(if live.expose_secret().ends_with('x') {
        'y'
    } else {
        'x'
    });
    let revokes_before = f.store.revokes.load(Ordering::SeqCst);

    let tokens = [
        live.expose_secret(),
        "NMIfyYncKcRALEXAMPLE",
        revoked.expose_secret(),
        impostor.expose_secret(),
        unknown.expose_secret(),
        foreign.expose_secret(),
        &typo,
        live.expose_secret(), // reported twice: revoked once
    ];
    let body: Vec<Value> = tokens
        .iter()
        .map(|t| report(t, "https://github.com/o/r/blob/1/f", "commit"))
        .collect();
    let body = serde_json::to_vec(&body).unwrap();
    let signature = sign(&f.signer, &body);
    let labels = scanning
        .process(Some(TEST_KEY_ID), Some(&signature), &body)
        .await
        .unwrap();

    let findings: Vec<_> = labels.iter().map(|l| l.finding).collect();
    assert_eq!(
        findings,
        [
            Finding::Revoked(live.id()),
            Finding::NotAKey,
            Finding::AlreadyRevoked(revoked.id()),
            Finding::WrongSecret,
            Finding::UnknownKey,
            Finding::NotAKey,
            Finding::NotAKey,
            Finding::AlreadyRevoked(live.id()),
        ]
    );
    let true_positives: Vec<_> = labels
        .iter()
        .map(|l| l.label == Label::TruePositive)
        .collect();
    assert_eq!(
        true_positives,
        [true, false, true, false, false, false, false, true]
    );
    for (label, token) in labels.iter().zip(tokens) {
        assert_eq!(label.token_hash, TokenHash::of(token));
    }
    // One revocation, for the one live key; the impostor's record is intact.
    assert_eq!(f.store.revokes.load(Ordering::SeqCst) - revokes_before, 1);
    assert_eq!(f.status(&live).await, KeyStatus::Revoked);
    assert_eq!(f.status(&impostor).await, KeyStatus::Active);
    // Every true positive is recorded, the repeat with its action.
    let leaks: Vec<_> = f
        .events()
        .into_iter()
        .filter(|e| e.kind() == EventKind::Lifecycle(Lifecycle::LeakReported))
        .map(|e| {
            (
                e.key_id().unwrap(),
                e.tags().get("action").unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        leaks,
        [
            (live.id(), "revoked".to_owned()),
            (revoked.id(), "already_revoked".to_owned()),
            (live.id(), "already_revoked".to_owned()),
        ]
    );
}

#[tokio::test]
async fn disable_instead_of_revoke_by_configuration() {
    let f = fixture();
    let scanning = f.scanning().on_leak(LeakAction::Disable);
    assert_eq!(scanning.action(), LeakAction::Disable);
    let app = f.app(scanning);
    let key = f.issue().await;
    let revoked = f.issue().await;
    f.manager.revoke(&revoked.id()).await.unwrap();
    let body = json!([
        report(key.expose_secret(), "https://github.com/o/r", "commit"),
        report(revoked.expose_secret(), "", "npm"),
    ])
    .to_string();

    let (status, answer, _) = send(&app, f.signed(&body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let labels: Vec<String> = serde_json::from_str::<Vec<Value>>(&answer)
        .unwrap()
        .iter()
        .map(|l| l["label"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(labels, ["true_positive", "true_positive"]);
    assert_eq!(f.status(&key).await, KeyStatus::Disabled);
    assert_eq!(
        f.status(&revoked).await,
        KeyStatus::Revoked,
        "disable never revives"
    );
    // Disabled, not revoked: the owner can be talked to and the key enabled.
    f.manager.enable(&key.id()).await.unwrap();

    // Reported again while disabled: nothing more is done.
    f.manager.disable(&key.id()).await.unwrap();
    let updates = f.store.calls();
    let body = json!([report(key.expose_secret(), "", "commit")]).to_string();
    let (status, _, _) = send(&app, f.signed(&body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.store.calls() - updates, 1, "one look-up, no write");
    let last = f.events().pop().unwrap();
    assert_eq!(last.kind(), EventKind::Lifecycle(Lifecycle::LeakReported));
    assert_eq!(last.tags().get("action"), Some("already_disabled"));
    // An empty url is not recorded.
    assert_eq!(last.tags().get("url"), None);
}

/// Refused deliveries: status, `reason`, and no store call.
async fn assert_refused(
    f: &Fixture,
    app: &Router,
    request: Request<Body>,
    status: StatusCode,
    reason: &str,
) {
    let (got, body, headers) = send(app, request).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["status"], status.as_u16());
    assert_eq!(problem["reason"], reason);
    assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(f.store.calls(), 0, "a refused delivery touched the store");
}

#[tokio::test]
async fn unsigned_forged_and_malformed_deliveries_never_touch_the_store() {
    let f = fixture();
    let app = f.app(f.scanning());
    let key = f.issue().await;
    let body = json!([report(key.expose_secret(), "https://x", "commit")]).to_string();
    let signature = sign(&f.signer, body.as_bytes());
    let request = |id: Option<&str>, signature: Option<&str>, body: &str| {
        let mut builder = Request::post(PATH).header("content-type", "application/json");
        if let Some(id) = id {
            builder = builder.header("github-public-key-identifier", id);
        }
        if let Some(signature) = signature {
            builder = builder.header("github-public-key-signature", signature);
        }
        builder.body(Body::from(body.to_owned())).unwrap()
    };

    // Missing headers.
    assert_refused(
        &f,
        &app,
        request(None, Some(&signature), &body),
        StatusCode::BAD_REQUEST,
        "missing_key_identifier",
    )
    .await;
    assert_refused(
        &f,
        &app,
        request(Some(TEST_KEY_ID), None, &body),
        StatusCode::BAD_REQUEST,
        "missing_signature",
    )
    .await;
    assert_refused(
        &f,
        &app,
        request(None, None, &body),
        StatusCode::BAD_REQUEST,
        "missing_key_identifier",
    )
    .await;
    assert_refused(
        &f,
        &app,
        request(Some(""), Some(""), &body),
        StatusCode::BAD_REQUEST,
        "missing_key_identifier",
    )
    .await;
    // Unknown key identifier (a right signature by an unlisted key).
    assert_refused(
        &f,
        &app,
        request(Some("ffff"), Some(&signature), &body),
        StatusCode::FORBIDDEN,
        "unknown_key_identifier",
    )
    .await;
    // Signed by another key under our identifier.
    let intruder = SigningKey::try_generate_from_rng(&mut SysRng).unwrap();
    let forged = sign(&intruder, body.as_bytes());
    assert_refused(
        &f,
        &app,
        request(Some(TEST_KEY_ID), Some(&forged), &body),
        StatusCode::FORBIDDEN,
        "bad_signature",
    )
    .await;
    // Our signature, but over another body (one byte changed).
    let tampered = body.replace("commit", "commix");
    assert_refused(
        &f,
        &app,
        request(Some(TEST_KEY_ID), Some(&signature), &tampered),
        StatusCode::FORBIDDEN,
        "bad_signature",
    )
    .await;
    // Whitespace added to the body: the signature is over the raw bytes.
    let spaced = format!("{body}\n");
    assert_refused(
        &f,
        &app,
        request(Some(TEST_KEY_ID), Some(&signature), &spaced),
        StatusCode::FORBIDDEN,
        "bad_signature",
    )
    .await;
    // Not base64, or base64 of something that is not a DER signature.
    assert_refused(
        &f,
        &app,
        request(Some(TEST_KEY_ID), Some("not base64!"), &body),
        StatusCode::BAD_REQUEST,
        "malformed_signature",
    )
    .await;
    assert_refused(
        &f,
        &app,
        request(Some(TEST_KEY_ID), Some("AAAA"), &body),
        StatusCode::BAD_REQUEST,
        "malformed_signature",
    )
    .await;
    // Signed, but not the expected JSON.
    for malformed in [
        "not json".to_owned(),
        json!({"token": key.expose_secret()}).to_string(),
        json!([key.expose_secret()]).to_string(),
        json!([{"type": "t"}]).to_string(),
        format!("[{}", json!({"token": key.expose_secret()})),
    ] {
        let signature = sign(&f.signer, malformed.as_bytes());
        let (status, answer, _) = send(
            &app,
            request(Some(TEST_KEY_ID), Some(&signature), &malformed),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let problem: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(problem["reason"], "malformed_payload");
        // The parser's own message would quote the token: it is not used.
        assert!(!answer.contains(key.secret()), "{answer}");
        assert!(!answer.contains(key.id().as_str()), "{answer}");
    }
    assert_eq!(f.store.calls(), 0);
    assert_eq!(f.status(&key).await, KeyStatus::Active);
}

#[tokio::test]
async fn only_post_is_answered() {
    let f = fixture();
    let app = f.app(f.scanning());
    let request = Request::get(PATH).body(Body::empty()).unwrap();
    let (status, _, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Mounted as a plain service, it says so itself.
    let app: Router = Router::new().route_service(PATH, f.scanning());
    let request = Request::put(PATH).body(Body::empty()).unwrap();
    let (status, body, headers) = send(&app, request).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "POST");
    assert!(body.contains("method_not_allowed"));
    assert_eq!(f.store.calls(), 0);
}

/// A body that yields 1 KiB frames forever, counting them, with no size
/// hint: only a limit enforced while reading stops it.
struct Endless {
    frames: Arc<AtomicUsize>,
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.frames.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b' '; 1024])))))
    }
}

#[tokio::test]
async fn oversized_payloads_are_refused_while_reading() {
    let f = fixture();
    let scanning = f.scanning().max_body_size(4 * 1024);
    let app = f.app(scanning.clone());

    // Declared too large: refused before a single frame is read.
    let frames = Arc::new(AtomicUsize::new(0));
    let request = Request::post(PATH)
        .header("github-public-key-identifier", TEST_KEY_ID)
        .header("github-public-key-signature", "MEQCIA==")
        .header("content-length", "1000000")
        .body(Endless {
            frames: Arc::clone(&frames),
        })
        .unwrap();
    let response = scanning.handle(request).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(frames.load(Ordering::SeqCst), 0);

    // Undeclared and endless: refused once the limit is passed.
    let request = Request::post(PATH)
        .header("github-public-key-identifier", TEST_KEY_ID)
        .header("github-public-key-signature", "MEQCIA==")
        .body(Endless {
            frames: Arc::clone(&frames),
        })
        .unwrap();
    let response = scanning.handle(request).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        frames.load(Ordering::SeqCst),
        5,
        "read 4 KiB and one frame more"
    );
    let problem: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(problem["reason"], "payload_too_large");

    // Through the router, a correctly signed body one byte over the limit.
    let key = f.issue().await;
    let mut body = json!([report(key.expose_secret(), "", "commit")]).to_string();
    body.push_str(&" ".repeat(4 * 1024 + 1 - body.len()));
    let (status, _, _) = send(&app, f.signed(&body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // ... and at the limit exactly, it is handled.
    body.pop();
    let (status, _, _) = send(&app, f.signed(&body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.status(&key).await, KeyStatus::Revoked);

    // The transport-agnostic core applies the same limit.
    let big = vec![b' '; 4 * 1024 + 1];
    let error = scanning
        .process(Some(TEST_KEY_ID), Some(&sign(&f.signer, &big)), &big)
        .await
        .unwrap_err();
    assert!(matches!(error, ScanError::PayloadTooLarge { limit: 4096 }));
}

#[tokio::test]
async fn the_default_limit_is_one_mebibyte() {
    assert_eq!(keyward::scanning::DEFAULT_MAX_BODY_SIZE, 1 << 20);
    let f = fixture();
    let app = f.app(f.scanning());
    let body = format!("[]{}", " ".repeat((1 << 20) - 1));
    let (status, _, _) = send(&app, f.signed(&body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_store_failure_answers_503_so_that_github_retries() {
    let f = fixture();
    let key = f.issue().await;
    // The same keys and signer, over a store that now fails.
    let failing = CountingStore {
        fail: true,
        ..f.store.clone()
    };
    let manager = KeyManager::new(failing, f.manager.format().clone());
    let keys = keys_json(&[(TEST_KEY_ID, &f.signer, true)]);
    let scanning = SecretScanning::new(
        manager,
        GithubPublicKeys::from_json(keys.as_bytes()).unwrap(),
    );
    let app = f.app(scanning);
    let body = json!([
        report("NMIfyYncKcRALEXAMPLE", "", "commit"),
        report(key.expose_secret(), "", "commit"),
    ])
    .to_string();
    let (status, answer, _) = send(&app, f.signed(&body)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!answer.contains("false_positive"), "{answer}");
    let problem: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(problem["reason"], "store_unavailable");
    // Once the store is back, GitHub's retry revokes the key.
    let app = f.app(f.scanning());
    let (status, _, _) = send(&app, f.signed(&body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.status(&key).await, KeyStatus::Revoked);
}

#[tokio::test]
async fn refreshed_public_keys_reach_every_clone() {
    let f = fixture();
    let scanning = f.scanning();
    let app = f.app(scanning.clone());
    let rotated = SigningKey::try_generate_from_rng(&mut SysRng).unwrap();
    let body = "[]";
    let request = |id: &str, signer: &SigningKey| {
        Request::post(PATH)
            .header("github-public-key-identifier", id)
            .header("github-public-key-signature", sign(signer, body.as_bytes()))
            .body(Body::from(body))
            .unwrap()
    };
    assert_eq!(
        send(&app, request("new", &rotated)).await.0,
        StatusCode::FORBIDDEN
    );

    let keys = keys_json(&[(TEST_KEY_ID, &f.signer, false), ("new", &rotated, true)]);
    scanning.set_public_keys(GithubPublicKeys::from_json(keys.as_bytes()).unwrap());
    assert_eq!(scanning.public_keys().current(), Some("new"));
    let (status, answer, _) = send(&app, request("new", &rotated)).await;
    assert_eq!((status, answer.as_str()), (StatusCode::OK, "[]"));
    // The previous key still verifies while it is listed.
    assert_eq!(
        send(&app, request(TEST_KEY_ID, &f.signer)).await.0,
        StatusCode::OK
    );
}

#[test]
fn signature_errors_say_what_is_wrong() {
    let keys = GithubPublicKeys::from_json(GITHUB_KEYS.as_bytes()).unwrap();
    assert_eq!(
        keys.verify("nope", "AAAA", b"[]"),
        Err(SignatureError::UnknownKeyIdentifier)
    );
    let id = "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c";
    assert_eq!(
        keys.verify(id, "AAAA", b"[]"),
        Err(SignatureError::MalformedSignature)
    );
    assert_eq!(
        keys.verify(id, &"A".repeat(400), b"[]"),
        Err(SignatureError::MalformedSignature)
    );
    let other = SigningKey::try_generate_from_rng(&mut SysRng).unwrap();
    assert_eq!(
        keys.verify(id, &sign(&other, b"[]"), b"[]"),
        Err(SignatureError::BadSignature)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn no_token_or_secret_in_any_log_response_or_debug() {
    let (captured, _guard) = CapturedLogs::start();
    let f = fixture();
    let scanning = f.scanning();
    let app = f.app(scanning.clone());
    let leaked = f.issue().await;
    let impostor = KeyGenerator::new(f.manager.format().clone())
        .generate()
        .unwrap();
    f.store
        .inner
        .insert(KeyRecord::new(
            impostor.id(),
            KeyHasher::sha256().hash("x"),
            "globex",
            SystemTime::UNIX_EPOCH,
        ))
        .await
        .unwrap();
    let tokens = [leaked.expose_secret(), impostor.expose_secret()];
    let body = json!([
        report(tokens[0], "https://github.com/o/r/blob/1/.env", "content"),
        report(tokens[1], "https://github.com/o/r/blob/1/.env", "content"),
    ])
    .to_string();

    let mut answers = Vec::new();
    answers.push(send(&app, f.signed(&body)).await.1);
    answers.push(send(&app, f.signed(&body)).await.1); // reported again
    let malformed = json!([tokens[0], tokens[1]]).to_string();
    answers.push(send(&app, f.signed(&malformed)).await.1);
    let unsigned = Request::post(PATH).body(Body::from(body.clone())).unwrap();
    answers.push(send(&app, unsigned).await.1);
    let labels = scanning
        .process(
            Some(TEST_KEY_ID),
            Some(&sign(&f.signer, body.as_bytes())),
            body.as_bytes(),
        )
        .await
        .unwrap();
    let errors = [
        scanning
            .process(
                Some(TEST_KEY_ID),
                Some(&sign(&f.signer, malformed.as_bytes())),
                malformed.as_bytes(),
            )
            .await
            .unwrap_err(),
        scanning
            .process(Some("x"), Some("y"), body.as_bytes())
            .await
            .unwrap_err(),
    ];

    let logs = captured.text();
    assert!(
        logs.contains("leaked key reported by GitHub secret scanning"),
        "{logs}"
    );
    assert!(logs.contains(leaked.id().as_str()), "the key id is logged");
    let shown = [
        logs,
        answers.join("\n"),
        format!("{labels:?} {errors:?} {scanning:?}"),
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        format!("{:?}", f.events()),
    ];
    for text in &shown {
        for token in tokens {
            assert!(!text.contains(token), "a token leaked: {text}");
        }
        assert!(!text.contains(leaked.secret()), "a secret leaked: {text}");
        assert!(!text.contains(impostor.secret()), "a secret leaked: {text}");
    }
}
