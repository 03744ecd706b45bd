//! Reading usage back through `UsageSource`: the in-memory `RollupSink`
//! runs the conformance suite, and answers a usage page for a real stack.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use keyward::auth::AuthLayer;
use keyward::clock::{Clock, FakeClock};
use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
use keyward::record::{KeyRecord, KeyStatus};
use keyward::reject::RejectReason;
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{
    conformance, RollupSink, Step, TimeRange, UsageLayer, UsageQuery, UsageSink, UsageSource,
};
use tower::{service_fn, ServiceBuilder, ServiceExt};

#[tokio::test]
async fn rollup_sink_conforms() {
    let sink = RollupSink::new();
    conformance::run(&sink, |batch| {
        for event in batch {
            sink.record(event);
        }
        async {}
    })
    .await;
}

#[tokio::test]
async fn a_usage_page_shows_each_keys_last_day_allowed_and_denied_apart() {
    let format = KeyFormat::new("sk_test").unwrap();
    let generator = KeyGenerator::new(format.clone());
    let clock = FakeClock::default();
    let store = MemoryStore::new();
    let (good, revoked) = (generator.generate().unwrap(), generator.generate().unwrap());
    let hash = |k: &keyward::key::ApiKey| KeyHasher::sha256().hash(k.secret());
    store
        .insert(KeyRecord::new(good.id(), hash(&good), "acme", clock.now()))
        .await
        .unwrap();
    store
        .insert(
            KeyRecord::new(revoked.id(), hash(&revoked), "acme", clock.now())
                .with_status(KeyStatus::Revoked),
        )
        .await
        .unwrap();
    let usage = RollupSink::new();
    let service = ServiceBuilder::new()
        .layer(UsageLayer::new(usage.clone()).clock(clock.clone()))
        .layer(AuthLayer::new(store, format).clock(clock.clone()))
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let send = |key: &keyward::key::ApiKey| {
        let request = Request::get("/pets")
            .header("authorization", format!("Bearer {}", key.expose_secret()))
            .body(String::new())
            .unwrap();
        service.clone().oneshot(request)
    };
    let start = clock.now();
    for hour in 0..30 {
        send(&good).await.unwrap();
        if hour % 10 == 0 {
            send(&revoked).await.unwrap();
        }
        clock.advance(Duration::from_secs(3600));
    }
    // The page: the last 24 hours, hour by hour.
    let day = TimeRange::last(Duration::from_secs(24 * 3600), clock.now());
    let rows = usage
        .query(&UsageQuery::owner("acme", day).step(Step::HOUR))
        .await
        .unwrap();
    let good_rows: Vec<_> = rows.iter().filter(|r| r.key_id == good.id()).collect();
    assert_eq!(good_rows.len(), 24, "one bucket an hour for the last day");
    assert!(good_rows
        .iter()
        .all(|r| r.counts.allowed == 1 && r.counts.denied == 0));
    assert!(good_rows[0].period.start() >= start + Duration::from_secs(6 * 3600));
    let revoked_total = usage
        .total(&UsageQuery::key(revoked.id(), day))
        .await
        .unwrap();
    assert_eq!(
        (
            revoked_total.allowed,
            revoked_total.denied_for(RejectReason::Revoked)
        ),
        (0, 2),
        "hours 10 and 20 are in the last day, hour 0 is not"
    );
}

#[tokio::test]
async fn old_minutes_are_let_go_after_the_retention() {
    let sink = RollupSink::with_retention(Duration::from_secs(3600));
    let format = KeyFormat::new("sk_test").unwrap();
    let key = KeyGenerator::new(format.clone()).generate().unwrap();
    let clock = FakeClock::default();
    let store = MemoryStore::new();
    store
        .insert(KeyRecord::new(
            key.id(),
            KeyHasher::sha256().hash(key.secret()),
            "acme",
            clock.now(),
        ))
        .await
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(UsageLayer::new(sink.clone()).clock(clock.clone()))
        .layer(AuthLayer::new(store, format).clock(clock.clone()))
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let start = clock.now();
    for _ in 0..3 {
        let request = Request::get("/")
            .header("x-api-key", key.expose_secret())
            .body(String::new())
            .unwrap();
        service.clone().oneshot(request).await.unwrap();
        clock.advance(Duration::from_secs(45 * 60));
    }
    let everything = TimeRange::new(start, clock.now());
    let kept = sink
        .total(&UsageQuery::key(key.id(), everything))
        .await
        .unwrap();
    assert_eq!(
        kept.requests, 2,
        "the first request is older than an hour before the last"
    );
}

#[tokio::test]
async fn rows_serialize_for_an_admin_api() {
    let sink = RollupSink::new();
    let format = KeyFormat::new("sk_test").unwrap();
    let key = KeyGenerator::new(format.clone()).generate().unwrap();
    let clock = FakeClock::default(); // 2025-01-01T00:00:00Z
    let store = MemoryStore::new();
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "a\"c'me",
        clock.now(),
    )
    .with_status(KeyStatus::Disabled);
    store.insert(record).await.unwrap();
    let service = ServiceBuilder::new()
        .layer(UsageLayer::new(sink.clone()).clock(clock.clone()))
        .layer(AuthLayer::new(store, format).clock(clock.clone()))
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let request = Request::get("/")
        .header("x-api-key", key.expose_secret())
        .body(String::new())
        .unwrap();
    service.oneshot(request).await.unwrap();
    let hour = TimeRange::new(clock.now(), clock.now() + Duration::from_secs(3600));
    let rows = sink
        .query(&UsageQuery::key(key.id(), hour).step(Step::MINUTE))
        .await
        .unwrap();
    let json = serde_json::to_value(&rows).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{
            "key_id": key.id().to_string(),
            "owner": null,
            "period": {"start": "2025-01-01T00:00:00Z", "end": "2025-01-01T00:01:00Z"},
            "counts": {
                "requests": 1, "allowed": 0, "denied": 1, "unanswered": 0,
                "denied_by_reason": {"disabled": 1},
                "total_latency_us": rows[0].counts.total_latency.as_micros() as u64,
            },
        }])
    );
}
