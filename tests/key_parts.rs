//! Keys from known parts: `KeyFormat::key_from_parts` and
//! `KeyGenerator::with_rng`, the test and migration tools. Public API only.

use std::convert::Infallible;
use std::time::SystemTime;

use http::{Request, Response, StatusCode};
use keyward::auth::{AuthLayer, Authenticator, Principal};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher, KeyId, KeyPartsError};
use keyward::record::KeyRecord;
use keyward::reject::{RejectReason, Rejection};
use keyward::store::{KeyStore, MemoryStore};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tower::{service_fn, Layer, ServiceExt};

fn format() -> KeyFormat {
    KeyFormat::new("sk_test").unwrap()
}

fn seeded(seed: u64) -> KeyGenerator {
    KeyGenerator::new(format()).with_rng(StdRng::seed_from_u64(seed))
}

fn strings(generator: &KeyGenerator, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| generator.generate().unwrap().expose_secret().to_owned())
        .collect()
}

#[test]
fn a_seeded_generator_makes_the_same_keys_on_every_run() {
    let first = strings(&seeded(42), 5);
    assert_eq!(first, strings(&seeded(42), 5));
    assert_ne!(first, strings(&seeded(43), 5));
    // Five distinct, well-formed keys.
    for (i, key) in first.iter().enumerate() {
        assert!(format().parse(key).is_ok(), "{key}");
        assert!(!first[..i].contains(key));
    }
}

#[test]
fn clones_of_a_seeded_generator_draw_one_sequence() {
    let generator = seeded(7);
    let clone = generator.clone();
    let mixed = [
        generator.generate().unwrap(),
        clone.generate().unwrap(),
        generator.generate().unwrap(),
    ]
    .map(|key| key.expose_secret().to_owned());
    assert_eq!(mixed.to_vec(), strings(&seeded(7), 3));
    // Debug names the source, never its state or a key.
    let shown = format!("{generator:?}");
    assert!(shown.contains("caller's"), "{shown}");
    assert!(format!("{:?}", KeyGenerator::new(format())).contains("operating system"));
}

#[test]
fn a_key_rebuilt_from_its_parts_is_the_same_key() {
    let key = KeyGenerator::new(format()).generate().unwrap();
    let rebuilt = format().key_from_parts(key.id(), key.secret()).unwrap();
    assert_eq!(rebuilt, key);
    assert_eq!(rebuilt.expose_secret(), key.expose_secret());

    // Fixtures spelled out in a test.
    let id: KeyId = "fixture00001".parse().unwrap();
    let secret = "s".repeat(format().secret_len());
    let fixture = format().key_from_parts(id, &secret).unwrap();
    assert_eq!(fixture.id(), id);
    assert_eq!(fixture.secret(), secret);
    assert_eq!(format().parse(fixture.expose_secret()).unwrap().id(), id);
}

#[test]
fn bad_secrets_are_typed_errors_that_never_echo_the_secret() {
    let id: KeyId = "fixture00001".parse().unwrap();
    let len = format().secret_len();
    let cases = [
        (
            "short".to_owned(),
            KeyPartsError::SecretLength { expected: len },
        ),
        (
            "x".repeat(len + 1),
            KeyPartsError::SecretLength { expected: len },
        ),
        (
            format!("{}-", "x".repeat(len - 1)),
            KeyPartsError::SecretAlphabet,
        ),
        (
            format!("{}_", "x".repeat(len - 1)),
            KeyPartsError::SecretAlphabet,
        ),
        // 43 bytes, but not 43 base62 characters.
        (
            format!("{}é", "x".repeat(len - 2)),
            KeyPartsError::SecretAlphabet,
        ),
    ];
    for (secret, expected) in cases {
        let error = format().key_from_parts(id, &secret).unwrap_err();
        assert_eq!(error, expected, "{secret:?}");
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains(&secret), "{shown}");
        }
    }
}

async fn store_with(key: &ApiKey) -> MemoryStore {
    let store = MemoryStore::new();
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "acme",
        SystemTime::UNIX_EPOCH,
    );
    store.insert(record).await.unwrap();
    store
}

/// The test that needed this: a well-formed key (right prefix, length,
/// checksum, a known id) whose secret is wrong, refused as WrongSecret by a
/// real AuthLayer.
#[tokio::test]
async fn a_well_formed_key_with_a_wrong_secret_is_refused_as_wrong_secret() {
    let key = seeded(1).generate().unwrap();
    let store = store_with(&key).await;
    let wrong = format()
        .key_from_parts(key.id(), &"0".repeat(format().secret_len()))
        .unwrap();
    assert!(format().parse(wrong.expose_secret()).is_ok());

    let service =
        AuthLayer::new(store, format()).layer(service_fn(|r: Request<String>| async move {
            let who = r
                .extensions()
                .get::<Principal>()
                .map(|p| p.key_id().to_string());
            Ok::<_, Infallible>(Response::new(who.unwrap_or_default()))
        }));
    let call = |presented: String| {
        let service = service.clone();
        async move {
            let request = Request::get("/")
                .header("authorization", format!("Bearer {presented}"))
                .body(String::new())
                .unwrap();
            service.oneshot(request).await.unwrap()
        }
    };
    let refused = call(wrong.expose_secret().to_owned()).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let rejection = refused.extensions().get::<Rejection>().unwrap();
    assert_eq!(rejection.reason(), RejectReason::WrongSecret);
    assert_eq!(rejection.key_id(), Some(key.id()));

    let accepted = call(key.expose_secret().to_owned()).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let body = keyward::body::to_bytes(accepted.into_body()).await.unwrap();
    assert_eq!(body, key.id().to_string());
}

/// Migration: the same id and secret under a new prefix verify against
/// the record stored for the old key.
#[tokio::test]
async fn a_key_reissued_under_a_new_prefix_verifies_against_its_old_record() {
    let old_format = KeyFormat::new("sk_old").unwrap();
    let old = KeyGenerator::new(old_format).generate().unwrap();
    let store = store_with(&old).await;
    let new = format().key_from_parts(old.id(), old.secret()).unwrap();
    assert!(new.expose_secret().starts_with("sk_test_"));
    let principal = Authenticator::new(store, format())
        .authenticate(new.expose_secret())
        .await
        .unwrap();
    assert_eq!(principal.key_id(), old.id());
}
