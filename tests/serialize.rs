//! The outputs as JSON (feature `serde`): `UsageEvent`, `KeyUsage`,
//! `Outcome`, `RejectReason` and `Principal` serialize in stable
//! `snake_case` shapes, and never carry a key, a secret or a hash. Public
//! API only.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use keyward::auth::{AuthLayer, Principal};
use keyward::clock::{Clock, FakeClock};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher, PepperId};
use keyward::record::KeyRecord;
use keyward::reject::RejectReason;
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{
    sink_fn, AggregatingSink, Lifecycle, Outcome, UsageEvent, UsageLayer, UsageTags,
};
use serde_json::{json, Value};
use tower::{service_fn, ServiceBuilder, ServiceExt};

const PEPPER: &[u8] = b"pepper-never-in-output";

struct Fixture {
    key: ApiKey,
    record: KeyRecord,
    store: MemoryStore,
    format: KeyFormat,
    clock: FakeClock,
}

async fn fixture() -> Fixture {
    let format = KeyFormat::new("sk_test").unwrap();
    let key = KeyGenerator::new(format.clone()).generate().unwrap();
    let clock = FakeClock::default();
    let hasher = KeyHasher::with_pepper(PepperId::new(1), PEPPER);
    let record = KeyRecord::new(key.id(), hasher.hash(key.secret()), "acme", clock.now())
        .with_name("CI")
        .with_scopes("pets:read pets:write".parse().unwrap())
        .with_metadata("tier", "pro");
    let store = MemoryStore::new();
    store.insert(record.clone()).await.unwrap();
    Fixture {
        key,
        record,
        store,
        format,
        clock,
    }
}

/// Fails if `json` holds the key, its secret, its hash (either spelling)
/// or the pepper.
fn assert_no_secret(json: &Value, f: &Fixture) {
    let text = json.to_string();
    let hex: String = f
        .record
        .hash
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for secret in [
        f.key.expose_secret(),
        f.key.secret(),
        &hex,
        &f.record.hash.to_string(),
        std::str::from_utf8(PEPPER).unwrap(),
    ] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(!text.contains("hash"), "{text}");
}

/// Requests through UsageLayer and AuthLayer, events collected.
async fn requests(f: &Fixture, presented: &[Option<&str>]) -> (Vec<UsageEvent>, Vec<Principal>) {
    let events: Arc<Mutex<Vec<UsageEvent>>> = Arc::default();
    let sink = {
        let events = Arc::clone(&events);
        sink_fn(move |event| events.lock().unwrap().push(event))
    };
    let principals: Arc<Mutex<Vec<Principal>>> = Arc::default();
    let seen = Arc::clone(&principals);
    let service = ServiceBuilder::new()
        .layer(UsageLayer::new(sink).clock(f.clock.clone()))
        .layer(
            AuthLayer::new(f.store.clone(), f.format.clone())
                .hasher(KeyHasher::with_pepper(PepperId::new(1), PEPPER))
                .clock(f.clock.clone()),
        )
        .service(service_fn(move |r: Request<String>| {
            let seen = Arc::clone(&seen);
            async move {
                if let Some(p) = r.extensions().get::<Principal>() {
                    seen.lock().unwrap().push(p.clone());
                }
                let mut response = Response::new("ok".to_owned());
                response
                    .extensions_mut()
                    .insert(UsageTags::new().with("plan", "free").with("plan", "pro"));
                Ok::<_, Infallible>(response)
            }
        }));
    for key in presented {
        let mut request = Request::get("/pets?page=2");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        service
            .clone()
            .oneshot(request.body(String::new()).unwrap())
            .await
            .unwrap();
    }
    let events = events.lock().unwrap().clone();
    let principals = principals.lock().unwrap().clone();
    (events, principals)
}

#[tokio::test]
async fn a_request_event_is_a_flat_object_without_secrets() {
    let f = fixture().await;
    let wrong = f
        .format
        .key_from_parts(f.key.id(), &"0".repeat(f.format.secret_len()))
        .unwrap();
    let (events, _) = requests(
        &f,
        &[Some(f.key.expose_secret()), Some(wrong.expose_secret())],
    )
    .await;
    let allowed = events
        .iter()
        .find(|e| e.outcome() == Outcome::Allowed && e.kind().as_str() == "request")
        .unwrap();
    let json = serde_json::to_value(allowed).unwrap();
    assert_eq!(
        json,
        json!({
            "kind": "request",
            "at": "2025-01-01T00:00:00Z",
            "key_id": f.key.id().as_str(),
            "owner": "acme",
            "authenticated": true,
            "method": "GET",
            "route": "/pets",
            "status": 200,
            "outcome": "allowed",
            "latency_us": 0,
            "request_size": 0,
            "response_size": 2,
            "tags": {"plan": "pro"},
        })
    );
    assert_no_secret(&json, &f);

    let refused = events
        .iter()
        .find(|e| e.outcome() == Outcome::Refused(RejectReason::WrongSecret))
        .unwrap();
    let json = serde_json::to_value(refused).unwrap();
    assert_eq!(json["outcome"], "wrong_secret");
    assert_eq!(json["status"], 401);
    assert_eq!(json["authenticated"], false);
    assert_eq!(json["owner"], Value::Null);
    assert_eq!(json["key_id"], f.key.id().as_str());
    assert_no_secret(&json, &f);
    assert!(!json.to_string().contains(wrong.secret()));
}

#[test]
fn a_lifecycle_event_names_its_moment() {
    let id = "abcdefABCDEF".parse().unwrap();
    let at = FakeClock::default().now() + Duration::from_millis(1500);
    let event = UsageEvent::lifecycle(Lifecycle::LimitsChanged, id, "acme", at);
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json["kind"], "limits_changed");
    assert_eq!(json["at"], "2025-01-01T00:00:01.500Z");
    assert_eq!(json["key_id"], "abcdefABCDEF");
    assert_eq!(json["owner"], "acme");
    assert_eq!(json["method"], Value::Null);
    assert_eq!(json["tags"], json!({}));
    assert_eq!(
        serde_json::to_value(Lifecycle::FirstUsed).unwrap(),
        "first_used"
    );
}

#[tokio::test]
async fn key_usage_is_counters_with_named_reasons() {
    let f = fixture().await;
    let wrong = f
        .format
        .key_from_parts(f.key.id(), &"0".repeat(f.format.secret_len()))
        .unwrap();
    let aggregate = AggregatingSink::new();
    let (events, _) = requests(
        &f,
        &[
            Some(f.key.expose_secret()),
            Some(wrong.expose_secret()),
            None,
        ],
    )
    .await;
    for event in events {
        keyward::usage::UsageSink::record(&aggregate, event);
    }
    let snapshot = aggregate.snapshot();
    assert_eq!(snapshot.len(), 1);
    let json = serde_json::to_value(&snapshot[0]).unwrap();
    assert_eq!(
        json,
        json!({
            "key_id": f.key.id().as_str(),
            "owner": "acme",
            "requests": 1,
            "allowed": 1,
            "denied": 0,
            "unanswered": 0,
            "denied_by_reason": {},
            "statuses": {"informational": 0, "success": 1, "redirection": 0,
                         "client_error": 0, "server_error": 0},
            "total_latency_us": 0,
            "mean_latency_us": 0,
            "last_used": "2025-01-01T00:00:00Z",
        })
    );
    assert_no_secret(&json, &f);
    let anonymous = serde_json::to_value(aggregate.anonymous()).unwrap();
    assert_eq!(anonymous["key_id"], Value::Null);
    // A wrong secret counts with the unknown ids, not against its key.
    assert_eq!(
        anonymous["denied_by_reason"],
        json!({"missing_key": 1, "wrong_secret": 1})
    );
    assert_eq!(anonymous["statuses"]["client_error"], 2);
}

#[tokio::test]
async fn a_principal_is_who_is_calling_and_nothing_more() {
    let f = fixture().await;
    let (_, principals) = requests(&f, &[Some(f.key.expose_secret())]).await;
    let json = serde_json::to_value(&principals[0]).unwrap();
    assert_eq!(
        json,
        json!({
            "key_id": f.key.id().as_str(),
            "owner": "acme",
            "name": "CI",
            "scopes": ["pets:read", "pets:write"],
            "metadata": {"tier": "pro"},
            "credential": "api_key",
        })
    );
    assert_no_secret(&json, &f);
}

#[test]
fn reasons_and_outcomes_are_their_stable_names() {
    let mut names = BTreeSet::new();
    for reason in RejectReason::ALL {
        let json = serde_json::to_value(reason).unwrap();
        assert_eq!(json, reason.as_str());
        let name = json.as_str().unwrap().to_owned();
        assert!(
            name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{name}"
        );
        assert!(names.insert(name), "{reason:?}");
        assert_eq!(
            serde_json::to_value(Outcome::Refused(reason)).unwrap(),
            reason.as_str()
        );
    }
    for (outcome, name) in [
        (Outcome::Allowed, "allowed"),
        (Outcome::Failed, "failed"),
        (Outcome::Cancelled, "cancelled"),
    ] {
        assert_eq!(serde_json::to_value(outcome).unwrap(), name);
        assert!(!names.contains(name));
    }
}
