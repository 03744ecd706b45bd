//! One fake clock, set once on `Keyward`, drives every part: the key's
//! expiry in `AuthLayer`, the rate limit in the built-in `MemoryLimiter`,
//! the timestamps of `UsageLayer`, and `KeyManager`'s creation, rotation and
//! revocation times. Through a real axum `Router`; public API only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, Response, StatusCode};
use keyward::auth::FailureThrottle;
use keyward::clock::{Clock, FakeClock};
use keyward::key::{ApiKey, KeyFormat};
use keyward::limit::{Limits, RatePolicy};
use keyward::manager::IssueOptions;
use keyward::reject::{RejectReason, Rejection};
use keyward::usage::{sink_fn, EventKind, Lifecycle, UsageEvent};
use keyward::{Keyward, MemoryStore};
use tower::{ServiceBuilder, ServiceExt};

fn app(keyward: &Keyward<impl keyward::usage::UsageSink>) -> Router {
    Router::new().route("/pets", get(|| async { "[]" })).layer(
        ServiceBuilder::new()
            .layer(keyward.usage_layer())
            .layer(keyward.auth_layer())
            .layer(keyward.rate_limit_layer()),
    )
}

fn get_pets(key: &ApiKey) -> Request<Body> {
    Request::get("/pets")
        .header("x-api-key", key.expose_secret())
        .body(Body::empty())
        .unwrap()
}

fn reason<B>(response: &Response<B>) -> Option<RejectReason> {
    response
        .extensions()
        .get::<Rejection>()
        .map(Rejection::reason)
}

#[tokio::test]
async fn one_fake_clock_set_once_drives_every_part() {
    // A clock far from the system's time: any part still on the system
    // clock would see keys created decades away and refuse or misdate them.
    let clock = FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000));
    let events = Arc::new(Mutex::new(Vec::<UsageEvent>::new()));
    let recorded = Arc::clone(&events);
    let keyward = Keyward::new(MemoryStore::new(), KeyFormat::new("sk_test").unwrap())
        .with_clock(clock.clone())
        .with_sink(sink_fn(move |event| recorded.lock().unwrap().push(event)));
    let app = app(&keyward);
    let manager = keyward.manager();

    // KeyManager: created and expiring by the fake clock.
    let limits = Limits::new([RatePolicy::new("burst", 1, Duration::from_secs(10))
        .unwrap()
        .into()])
    .unwrap();
    let issued = manager
        .issue(
            IssueOptions::new("acme")
                .limits(limits)
                .expires_in(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(issued.record.created_at(), clock.now());
    assert_eq!(
        issued.record.expires_at(),
        Some(clock.now() + Duration::from_secs(60))
    );

    // AuthLayer accepts a key created at the fake time; the limiter
    // refuses the second request within its 10 s window...
    let first = app.clone().oneshot(get_pets(&issued.key)).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = app.clone().oneshot(get_pets(&issued.key)).await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.headers()["retry-after"], "10");

    // ...and allows it again when the fake clock, not the real one, moved.
    clock.advance(Duration::from_secs(10));
    let third = app.clone().oneshot(get_pets(&issued.key)).await.unwrap();
    assert_eq!(third.status(), StatusCode::OK);

    // The expiry is read on the same clock.
    clock.advance(Duration::from_secs(50));
    let expired = app.clone().oneshot(get_pets(&issued.key)).await.unwrap();
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason(&expired), Some(RejectReason::Expired));

    // Rotation and revocation are dated by it too.
    let fresh = manager.issue(IssueOptions::new("acme")).await.unwrap();
    let rotated = manager
        .rotate(&fresh.record.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        rotated.previous.expires_at(),
        Some(clock.now() + Duration::from_secs(30))
    );
    assert_eq!(rotated.record.created_at(), clock.now());
    manager.revoke(&rotated.record.id).await.unwrap();

    // UsageLayer stamped requests, and KeyManager its lifecycle events, on
    // the fake clock, into the one sink.
    let events = events.lock().unwrap();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let requests: Vec<_> = events
        .iter()
        .filter(|e| e.kind() == EventKind::Request)
        .map(|e| (e.at(), e.latency()))
        .collect();
    assert_eq!(
        requests,
        [
            (start, Duration::ZERO),
            (start, Duration::ZERO),
            (start + Duration::from_secs(10), Duration::ZERO),
            (start + Duration::from_secs(60), Duration::ZERO),
        ]
    );
    let lifecycle: Vec<_> = events
        .iter()
        .filter_map(|e| match e.kind() {
            EventKind::Lifecycle(l) => Some((l, e.at())),
            _ => None,
        })
        .collect();
    let now = start + Duration::from_secs(60);
    assert!(
        lifecycle.contains(&(Lifecycle::Issued, start)),
        "{lifecycle:?}"
    );
    assert!(
        lifecycle.contains(&(Lifecycle::Rotated, now)),
        "{lifecycle:?}"
    );
    assert!(
        lifecycle.contains(&(Lifecycle::Revoked, now)),
        "{lifecycle:?}"
    );
    assert!(
        lifecycle.contains(&(Lifecycle::ExpiredOnUse, now)),
        "{lifecycle:?}"
    );
}

#[tokio::test]
async fn the_shared_clock_reaches_parts_built_outside() {
    let clock = FakeClock::default();
    let keyward = Keyward::new(MemoryStore::new(), KeyFormat::new("sk_test").unwrap())
        .with_clock(clock.clone());
    assert_eq!(keyward.clock().now(), clock.now());

    // A failure throttle takes the stack's clock through its own with_clock.
    let throttle =
        FailureThrottle::new(1, Duration::from_secs(60)).with_clock(Arc::clone(keyward.clock()));
    let app = Router::new()
        .route("/pets", get(|| async { "[]" }))
        .layer(keyward.auth_layer().failure_throttle(throttle));
    let peer = |request: Request<Body>| {
        let mut request = request;
        request.extensions_mut().insert(axum::extract::ConnectInfo(
            "192.0.2.7:5000".parse::<std::net::SocketAddr>().unwrap(),
        ));
        request
    };
    let junk = || {
        peer(
            Request::get("/pets")
                .header("x-api-key", "sk_test_junk")
                .body(Body::empty())
                .unwrap(),
        )
    };
    assert_eq!(
        app.clone().oneshot(junk()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.clone().oneshot(junk()).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        app.oneshot(junk()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn layers_handed_out_twice_share_the_limiter_and_the_per_part_clocks_still_work() {
    let clock = FakeClock::default();
    let keyward = Keyward::new(MemoryStore::new(), KeyFormat::new("sk_test").unwrap())
        .with_clock(clock.clone())
        .with_memory_limiter(|limiter| limiter.with_max_keys(1_000));
    assert_eq!(keyward.memory_limiter().unwrap().max_keys(), 1_000);
    let limits = Limits::new([RatePolicy::new("burst", 1, Duration::from_secs(10))
        .unwrap()
        .into()])
    .unwrap();
    let issued = keyward
        .manager()
        .issue(IssueOptions::new("acme").limits(limits))
        .await
        .unwrap();

    // Two routers, one budget: the key's one request a window is spent.
    let (one, two) = (app(&keyward), app(&keyward.clone()));
    assert_eq!(
        one.oneshot(get_pets(&issued.key)).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        two.clone()
            .oneshot(get_pets(&issued.key))
            .await
            .unwrap()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The configured limiter still follows the stack's clock.
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        two.oneshot(get_pets(&issued.key)).await.unwrap().status(),
        StatusCode::OK
    );
    // The key's state is in its stored record, not in the limiter's table.
    assert_eq!(keyward.memory_limiter().unwrap().tracked_keys(), 0);

    // A layer's own clock setting still overrides, as before.
    let other = FakeClock::new(clock.now() + Duration::from_secs(3_600 * 24 * 365));
    let expiring = keyward
        .manager()
        .issue(IssueOptions::new("acme").expires_in(Duration::from_secs(60)))
        .await
        .unwrap();
    let late = Router::new()
        .route("/pets", get(|| async { "[]" }))
        .layer(keyward.auth_layer().clock(other));
    let response = late.oneshot(get_pets(&expiring.key)).await.unwrap();
    assert_eq!(reason(&response), Some(RejectReason::Expired));
}

#[test]
fn the_parts_share_the_store_and_clock_without_wrapping_them_again() {
    // What the request path reads through: the same allocation, not an
    // `Arc` around the `Arc` (which would add a pointer chase per request).
    let keyward = Keyward::new(MemoryStore::new(), KeyFormat::new("sk_test").unwrap())
        .with_clock(FakeClock::default());
    let auth = keyward.auth_layer();
    let manager = keyward.manager();
    assert!(Arc::ptr_eq(auth.authenticator().store(), keyward.store()));
    assert!(Arc::ptr_eq(manager.store(), keyward.store()));
    assert!(Arc::ptr_eq(auth.authenticator().clock(), keyward.clock()));
    assert!(Arc::ptr_eq(manager.clock(), keyward.clock()));
}
