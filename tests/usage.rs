//! UsageLayer and its sinks: one event per request with the right outcome,
//! through `oneshot` on a `service_fn` and through a real `axum::Router`.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use keyward::auth::{AuthLayer, Principal};
use keyward::clock::{Clock, FakeClock};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher, KeyId};
use keyward::record::{KeyRecord, KeyStatus};
use keyward::reject::{RejectReason, Rejection, Responder};
use keyward::store::{KeyStore, Lookup, MemoryStore, StoreError};
use keyward::usage::{
    sink_fn, AggregatingSink, BatchingSink, EventKind, Lifecycle, Outcome, TracingSink, UsageEvent,
    UsageExporter, UsageLayer, UsageSink, UsageTags,
};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

use support::CapturedLogs;

/// Collects every event recorded.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<UsageEvent>>>);

impl Collected {
    fn sink(&self) -> impl UsageSink + Clone {
        let events = Arc::clone(&self.0);
        Arc::new(sink_fn(move |event| events.lock().unwrap().push(event)))
    }
    fn take(&self) -> Vec<UsageEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    fn requests(events: &[UsageEvent]) -> Vec<&UsageEvent> {
        events
            .iter()
            .filter(|e| e.kind() == EventKind::Request)
            .collect()
    }
}

/// An inner layer standing in for the scope and limit layers: it refuses
/// with the reason named in `x-refuse`, against the authenticated key.
#[derive(Clone)]
struct Refuse<S>(S);

impl<S> Service<Request<String>> for Refuse<S>
where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        let reason = match request.headers().get("x-refuse").map(|v| v.as_bytes()) {
            Some(b"insufficient_scope") => Some(RejectReason::InsufficientScope),
            Some(b"rate_limited") => Some(RejectReason::RateLimited),
            Some(b"quota_exhausted") => Some(RejectReason::QuotaExhausted),
            Some(b"restricted") => Some(RejectReason::Restricted),
            _ => None,
        };
        match reason {
            Some(reason) => {
                let id = request.extensions().get::<Principal>().unwrap().key_id();
                let mut rejection = Rejection::new(reason).with_key_id(id);
                if reason == RejectReason::RateLimited {
                    rejection = rejection.with_retry_after(Duration::from_millis(300));
                }
                let response = Responder::default()
                    .refuse(request.headers(), rejection)
                    .map(|b| String::from_utf8(b.to_vec()).unwrap());
                Box::pin(async move { Ok(response) })
            }
            None => Box::pin(self.0.call(request)),
        }
    }
}

struct Fixture {
    format: KeyFormat,
    store: MemoryStore,
    clock: FakeClock,
    good: ApiKey,
    expired: ApiKey,
    not_yet: ApiKey,
    disabled: ApiKey,
    revoked: ApiKey,
    wrong: ApiKey,
    unknown: ApiKey,
}

async fn fixture() -> Fixture {
    let format = KeyFormat::new("sk_test").unwrap();
    let generator = KeyGenerator::new(format.clone());
    let store = MemoryStore::new();
    let clock = FakeClock::default();
    let now = clock.now();
    let hasher = KeyHasher::sha256();
    let mut keys = Vec::new();
    for _ in 0..7 {
        keys.push(generator.generate().unwrap());
    }
    let record = |key: &ApiKey, owner: &str| {
        KeyRecord::new(key.id(), hasher.hash(key.secret()), owner, now)
            .with_scopes("pets:read".parse().unwrap())
    };
    let hour = Duration::from_secs(3600);
    let records = [
        record(&keys[0], "acme"),
        record(&keys[1], "old").with_expires_at(now - hour),
        record(&keys[2], "later").with_not_before(now + hour),
        record(&keys[3], "off").with_status(KeyStatus::Disabled),
        record(&keys[4], "gone").with_status(KeyStatus::Revoked),
        // Its id, another key's hash: presenting keys[5] is a wrong secret.
        KeyRecord::new(keys[5].id(), hasher.hash(keys[6].secret()), "wrong", now),
    ];
    for record in records {
        store.insert(record).await.unwrap();
    }
    let mut keys = keys.into_iter();
    let mut next = || keys.next().unwrap();
    Fixture {
        format: format.clone(),
        store,
        clock,
        good: next(),
        expired: next(),
        not_yet: next(),
        disabled: next(),
        revoked: next(),
        wrong: next(),
        unknown: generator.generate().unwrap(),
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

fn stack<K: UsageSink>(
    f: &Fixture,
    sink: K,
    store: impl KeyStore,
) -> impl Service<
    Request<String>,
    Response = Response<keyward::body::ResponseBody<String>>,
    Error = Infallible,
> + Clone {
    ServiceBuilder::new()
        .layer(UsageLayer::new(sink).clock(f.clock.clone()))
        .layer(AuthLayer::new(store, f.format.clone()).clock(f.clock.clone()))
        .layer(tower::layer::layer_fn(Refuse))
        .service(service_fn(echo))
}

fn bearer(key: &ApiKey) -> String {
    format!("Bearer {}", key.expose_secret())
}

/// A store whose backend is down.
#[derive(Debug)]
struct Down;

#[async_trait::async_trait]
impl KeyStore for Down {
    async fn find(&self, _: &KeyId) -> Lookup {
        Err(StoreError::backend(std::io::Error::other("down")))
    }
    async fn insert(&self, _: KeyRecord) -> Result<(), StoreError> {
        Err(StoreError::backend(std::io::Error::other("down")))
    }
    async fn update(&self, _: KeyRecord) -> Result<(), StoreError> {
        Err(StoreError::backend(std::io::Error::other("down")))
    }
    async fn revoke(&self, _: &KeyId, _: SystemTime) -> Result<(), StoreError> {
        Err(StoreError::backend(std::io::Error::other("down")))
    }
    async fn list_by_owner(&self, _: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        Err(StoreError::backend(std::io::Error::other("down")))
    }
}

#[tokio::test]
async fn one_event_per_request_with_the_right_outcome() {
    let f = fixture().await;
    let collected = Collected::default();
    let aggregate = AggregatingSink::new();
    let service = stack(&f, (collected.sink(), aggregate.clone()), f.store.clone());
    let down = stack(&f, (collected.sink(), aggregate.clone()), Down);

    type Case<'a> = (
        Vec<(&'static str, String)>,
        StatusCode,
        Outcome,
        Option<&'a ApiKey>,
        Option<&'static str>,
    );
    let refused = |r| Outcome::Refused(r);
    let good = Some(&f.good);
    let acme = Some("acme");
    let cases: Vec<Case> = vec![
        (
            vec![("authorization", bearer(&f.good))],
            StatusCode::OK,
            Outcome::Allowed,
            good,
            acme,
        ),
        (
            vec![],
            StatusCode::UNAUTHORIZED,
            refused(RejectReason::MissingKey),
            None,
            None,
        ),
        (
            vec![("x-api-key", "sk_test_nonsense".into())],
            StatusCode::UNAUTHORIZED,
            refused(RejectReason::MalformedKey),
            None,
            None,
        ),
        (
            vec![
                ("authorization", bearer(&f.good)),
                ("x-api-key", f.unknown.expose_secret().into()),
            ],
            StatusCode::BAD_REQUEST,
            refused(RejectReason::InvalidRequest),
            None,
            None,
        ),
        (
            vec![("authorization", bearer(&f.unknown))],
            StatusCode::UNAUTHORIZED,
            refused(RejectReason::UnknownKey),
            Some(&f.unknown),
            None,
        ),
        (
            vec![("authorization", bearer(&f.wrong))],
            StatusCode::UNAUTHORIZED,
            refused(RejectReason::WrongSecret),
            Some(&f.wrong),
            None,
        ),
        (
            vec![("authorization", bearer(&f.expired))],
            StatusCode::UNAUTHORIZED,
            refused(RejectReason::Expired),
            Some(&f.expired),
            None,
        ),
        (
            vec![("authorization", bearer(&f.not_yet))],
            StatusCode::UNAUTHORIZED,
            refused(RejectReason::NotYetValid),
            Some(&f.not_yet),
            None,
        ),
        (
            vec![("authorization", bearer(&f.disabled))],
            StatusCode::UNAUTHORIZED,
            refused(RejectReason::Disabled),
            Some(&f.disabled),
            None,
        ),
        (
            vec![("authorization", bearer(&f.revoked))],
            StatusCode::UNAUTHORIZED,
            refused(RejectReason::Revoked),
            Some(&f.revoked),
            None,
        ),
        (
            vec![
                ("authorization", bearer(&f.good)),
                ("x-refuse", "insufficient_scope".into()),
            ],
            StatusCode::FORBIDDEN,
            refused(RejectReason::InsufficientScope),
            good,
            acme,
        ),
        (
            vec![
                ("authorization", bearer(&f.good)),
                ("x-refuse", "restricted".into()),
            ],
            StatusCode::FORBIDDEN,
            refused(RejectReason::Restricted),
            good,
            acme,
        ),
        (
            vec![
                ("authorization", bearer(&f.good)),
                ("x-refuse", "rate_limited".into()),
            ],
            StatusCode::TOO_MANY_REQUESTS,
            refused(RejectReason::RateLimited),
            good,
            acme,
        ),
        (
            vec![
                ("authorization", bearer(&f.good)),
                ("x-refuse", "quota_exhausted".into()),
            ],
            StatusCode::TOO_MANY_REQUESTS,
            refused(RejectReason::QuotaExhausted),
            good,
            acme,
        ),
    ];

    for (headers, status, outcome, key, owner) in &cases {
        let mut request = Request::get("/pets?page=2");
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let response = service
            .clone()
            .oneshot(request.body(String::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), *status, "{outcome:?}");
        let events = collected.take();
        let requests = Collected::requests(&events);
        assert_eq!(requests.len(), 1, "{outcome:?}: {events:?}");
        let event = requests[0];
        assert_eq!(event.outcome(), *outcome);
        assert_eq!(event.status(), Some(*status));
        assert_eq!(event.key_id(), key.map(|k| k.id()), "{outcome:?}");
        assert_eq!(event.owner(), *owner, "{outcome:?}");
        assert_eq!(event.authenticated(), owner.is_some());
        assert_eq!(event.route(), Some("/pets"));
        assert_eq!(event.method(), Some(&http::Method::GET));
        assert_eq!(event.at(), f.clock.now());
        let lifecycle: Vec<_> = events.iter().map(|e| e.kind()).collect();
        match outcome {
            Outcome::Refused(RejectReason::Expired) => assert_eq!(
                lifecycle,
                [
                    EventKind::Lifecycle(Lifecycle::ExpiredOnUse),
                    EventKind::Request
                ]
            ),
            _ if *status == StatusCode::OK => assert_eq!(
                lifecycle,
                [
                    EventKind::Lifecycle(Lifecycle::FirstUsed),
                    EventKind::Request
                ]
            ),
            _ => assert_eq!(lifecycle, [EventKind::Request], "{outcome:?}"),
        }
    }

    let request = Request::get("/pets")
        .header("authorization", bearer(&f.good))
        .body(String::new())
        .unwrap();
    let response = down.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let events = collected.take();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].outcome(),
        Outcome::Refused(RejectReason::StoreUnavailable)
    );
    assert_eq!(events[0].key_id(), Some(f.good.id()));

    // The aggregate counted denied requests against the key that made them,
    // and made-up ids nowhere but in the anonymous bucket.
    let usage = aggregate.get(&f.good.id()).unwrap();
    assert_eq!(usage.owner.as_deref(), Some("acme"));
    assert_eq!((usage.requests, usage.allowed, usage.denied), (5, 1, 4));
    assert_eq!(usage.denied_for(RejectReason::RateLimited), 1);
    assert_eq!(usage.denied_for(RejectReason::InsufficientScope), 1);
    assert_eq!(usage.statuses.success, 1);
    assert_eq!(usage.statuses.client_error, 4);
    assert_eq!(usage.last_used, Some(f.clock.now()));
    for key in [&f.expired, &f.not_yet, &f.disabled, &f.revoked] {
        let usage = aggregate.get(&key.id()).unwrap();
        assert_eq!((usage.requests, usage.denied), (1, 1));
    }
    // A wrong secret is recorded as an unknown id is: not against the key
    // it names, or the sink's timing would tell which ids exist.
    assert!(aggregate.get(&f.unknown.id()).is_none());
    assert!(aggregate.get(&f.wrong.id()).is_none());
    let anonymous = aggregate.anonymous();
    // missing, malformed, invalid request, unknown id, wrong secret, store down.
    assert_eq!((anonymous.requests, anonymous.denied), (6, 6));
    assert_eq!(anonymous.denied_for(RejectReason::UnknownKey), 1);
    assert_eq!(anonymous.denied_for(RejectReason::WrongSecret), 1);
    assert_eq!(aggregate.snapshot().len(), 5);
}

#[tokio::test]
async fn first_use_is_reported_once_and_can_be_turned_off() {
    let f = fixture().await;
    let collected = Collected::default();
    for capacity in [None, Some(0)] {
        let mut layer = UsageLayer::new(collected.sink());
        if let Some(capacity) = capacity {
            layer = layer.first_used_capacity(capacity);
        }
        let service = ServiceBuilder::new()
            .layer(layer)
            .layer(AuthLayer::new(f.store.clone(), f.format.clone()).clock(f.clock.clone()))
            .service(service_fn(echo));
        for _ in 0..3 {
            let request = Request::get("/me")
                .header("x-api-key", f.good.expose_secret())
                .body(String::new())
                .unwrap();
            service.clone().oneshot(request).await.unwrap();
        }
        let events = collected.take();
        let first_used: Vec<_> = events
            .iter()
            .filter(|e| e.kind() == EventKind::Lifecycle(Lifecycle::FirstUsed))
            .collect();
        assert_eq!(first_used.len(), usize::from(capacity.is_none()));
        if let Some(event) = first_used.first() {
            assert_eq!(event.key_id(), Some(f.good.id()));
            assert_eq!(event.owner(), Some("acme"));
        }
        assert_eq!(Collected::requests(&events).len(), 3);
    }
}

#[tokio::test]
async fn latency_sizes_tags_and_route_without_query() {
    let f = fixture().await;
    let collected = Collected::default();
    let clock = f.clock.clone();
    let service = ServiceBuilder::new()
        .layer(UsageLayer::new(collected.sink()).clock(f.clock.clone()))
        .layer(AuthLayer::new(f.store.clone(), f.format.clone()).clock(f.clock.clone()))
        .service(service_fn(move |request: Request<String>| {
            let clock = clock.clone();
            async move {
                clock.advance(Duration::from_millis(250));
                let mut response = Response::new(format!("got {}", request.body()));
                response
                    .extensions_mut()
                    .insert(UsageTags::new().with("handler", "pets"));
                Ok::<_, Infallible>(response)
            }
        }));
    let start = f.clock.now();
    let mut request = Request::post(format!("/pets?api_key={}", f.good.expose_secret()))
        .header("authorization", bearer(&f.good))
        .body(String::from("hello"))
        .unwrap();
    request
        .extensions_mut()
        .insert(UsageTags::new().with("plan", "pro"));
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let events = collected.take();
    let event = Collected::requests(&events)[0];
    assert_eq!(event.at(), start);
    assert_eq!(event.latency(), Duration::from_millis(250));
    assert_eq!(event.request_size(), Some(5));
    assert_eq!(event.response_size(), Some(9));
    assert_eq!(event.route(), Some("/pets"));
    assert_eq!(event.method(), Some(&http::Method::POST));
    let tags: Vec<_> = event.tags().iter().collect();
    assert_eq!(tags, [("plan", "pro"), ("handler", "pets")]);
    let debug = format!("{events:?}");
    assert!(!debug.contains(f.good.secret()), "{debug}");
    assert!(debug.contains(f.good.id().as_str()));
}

fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test]
async fn failed_and_cancelled_requests_are_recorded_too() {
    let collected = Collected::default();
    let mut failing =
        UsageLayer::new(collected.sink()).layer(service_fn(|_: Request<String>| async {
            Err::<Response<String>, _>(std::io::Error::other("boom"))
        }));
    let result = failing
        .call(Request::get("/x").body(String::new()).unwrap())
        .await;
    assert!(result.is_err());
    let events = collected.take();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome(), Outcome::Failed);
    assert_eq!(events[0].status(), None);

    let mut stuck = UsageLayer::new(collected.sink()).layer(service_fn(|_: Request<String>| {
        std::future::pending::<Result<Response<String>, Infallible>>()
    }));
    let mut future = Box::pin(stuck.call(Request::get("/slow").body(String::new()).unwrap()));
    assert!(poll_once(future.as_mut()).is_pending());
    assert!(collected.take().is_empty());
    drop(future);
    let events = collected.take();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome(), Outcome::Cancelled);
    assert_eq!(events[0].route(), Some("/slow"));
}

/// An exporter that never returns.
struct Stuck(Arc<Mutex<usize>>);

#[async_trait::async_trait]
impl UsageExporter for Stuck {
    async fn export(&mut self, batch: Vec<UsageEvent>) {
        *self.0.lock().unwrap() += batch.len();
        std::future::pending::<()>().await;
    }
}

/// An exporter that keeps every batch.
#[derive(Clone, Default)]
struct Keep(Arc<Mutex<Vec<Vec<UsageEvent>>>>);

#[async_trait::async_trait]
impl UsageExporter for Keep {
    async fn export(&mut self, batch: Vec<UsageEvent>) {
        self.0.lock().unwrap().push(batch);
    }
}

impl Keep {
    fn events(&self) -> usize {
        self.0.lock().unwrap().iter().map(Vec::len).sum()
    }
}

fn plain_service<K: UsageSink>(
    sink: K,
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone {
    UsageLayer::new(sink).layer(service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    }))
}

#[tokio::test]
async fn a_stuck_exporter_never_delays_a_request_and_drops_are_counted() {
    let exported = Arc::new(Mutex::new(0));
    let sink = BatchingSink::builder(Stuck(Arc::clone(&exported)))
        .capacity(4)
        .max_batch(1)
        .spawn();
    let service = plain_service(sink.clone());
    for round in 0..2 {
        for _ in 0..20 {
            let request = Request::get("/").body(String::new()).unwrap();
            // Ready at once: nothing on the request path waits for the sink.
            let mut future = Box::pin(service.clone().oneshot(request));
            match poll_once(future.as_mut()) {
                Poll::Ready(response) => assert_eq!(response.unwrap().status(), StatusCode::OK),
                Poll::Pending => panic!("a request waited for the usage sink"),
            }
        }
        if round == 0 {
            // Let the worker take one event and get stuck exporting it.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(*exported.lock().unwrap(), 1);
        }
    }
    // One event is stuck in the exporter, at most four wait in the queue.
    assert_eq!(sink.queued(), 4);
    assert_eq!(sink.dropped(), 40 - 1 - 4);
}

#[tokio::test]
async fn flush_delivers_every_event_and_shutdown_drains() {
    let keep = Keep::default();
    let sink = BatchingSink::builder(keep.clone())
        .capacity(1024)
        .max_batch(10)
        .interval(Duration::from_secs(3600))
        .spawn();
    let service = plain_service(sink.clone());
    for _ in 0..105 {
        let request = Request::get("/").body(String::new()).unwrap();
        service.clone().oneshot(request).await.unwrap();
    }
    sink.flush().await;
    assert_eq!(keep.events(), 105);
    assert!(keep.0.lock().unwrap().iter().all(|b| b.len() <= 10));
    assert_eq!(sink.dropped(), 0);

    for _ in 0..7 {
        let request = Request::get("/").body(String::new()).unwrap();
        service.clone().oneshot(request).await.unwrap();
    }
    sink.shutdown().await;
    assert_eq!(keep.events(), 112);
    // After shutdown, events are dropped and counted, requests still served.
    let request = Request::get("/").body(String::new()).unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sink.dropped(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_many_threads_all_arrive_each_thread_in_order() {
    let keep = Keep::default();
    let sink = BatchingSink::builder(keep.clone())
        .capacity(100_000)
        .max_batch(64)
        .interval(Duration::from_secs(3600))
        .spawn();
    let id: KeyId = "abcdefABCDEF".parse().unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for i in 0..5_000u64 {
                    // The timestamp says which thread and in what order.
                    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(thread * 1_000_000 + i);
                    sink.record(UsageEvent::lifecycle(Lifecycle::Issued, id, "acme", at));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    sink.flush().await;
    assert_eq!(sink.dropped(), 0);
    assert_eq!(sink.queued(), 0);
    let batches = keep.0.lock().unwrap().clone();
    assert!(batches.iter().all(|b| b.len() <= 64));
    let mut last = [None; 4];
    for event in batches.iter().flatten() {
        let secs = event
            .at()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (thread, i) = ((secs / 1_000_000) as usize, secs % 1_000_000);
        assert!(last[thread].is_none_or(|before| before < i), "out of order");
        last[thread] = Some(i);
    }
    assert_eq!(last, [Some(4_999); 4]);
}

#[tokio::test]
async fn dropping_the_last_sink_exports_what_is_left_and_stops_the_worker() {
    let keep = Keep::default();
    let (sink, worker) = BatchingSink::builder(keep.clone())
        .max_batch(100)
        .interval(Duration::from_secs(3600))
        .build();
    let worker = tokio::spawn(worker);
    let service = plain_service(sink.clone());
    for _ in 0..3 {
        let request = Request::get("/").body(String::new()).unwrap();
        service.clone().oneshot(request).await.unwrap();
    }
    drop((sink, service));
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the worker stops")
        .unwrap();
    assert_eq!(keep.events(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_is_exported_after_the_interval() {
    let keep = Keep::default();
    let (sink, worker) = BatchingSink::builder(keep.clone())
        .max_batch(100)
        .interval(Duration::from_secs(1))
        .build();
    tokio::spawn(worker);
    let service = plain_service(sink.clone());
    for _ in 0..3 {
        let request = Request::get("/").body(String::new()).unwrap();
        service.clone().oneshot(request).await.unwrap();
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(keep.events(), 0);
    tokio::time::advance(Duration::from_millis(1001)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(keep.events(), 3);
    assert_eq!(keep.0.lock().unwrap().len(), 1);
}

fn issued() -> UsageEvent {
    let id: KeyId = "abcdefABCDEF".parse().unwrap();
    UsageEvent::lifecycle(Lifecycle::Issued, id, "acme", SystemTime::now())
}

/// Fails the test instead of hanging it.
async fn within_a_second<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(1), future)
        .await
        .unwrap_or_else(|_| panic!("{what} hangs"))
}

#[tokio::test]
async fn a_worker_dropped_before_it_ran_stops_the_sink() {
    let keep = Keep::default();
    let (sink, worker) = BatchingSink::builder(keep.clone()).build();
    sink.record(issued());
    drop(worker);
    // What it held is counted, and later events are refused and counted.
    assert_eq!(sink.dropped(), 1);
    sink.record(issued());
    assert_eq!(sink.dropped(), 2);
    assert_eq!(sink.queued(), 0);
    within_a_second("flush", sink.flush()).await;
    within_a_second("shutdown", sink.shutdown()).await;
    assert_eq!(keep.events(), 0);
}

#[test]
fn a_runtime_dropped_before_the_worker_ran_stops_the_sink() {
    let keep = Keep::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let sink = {
        let _entered = runtime.enter();
        BatchingSink::builder(keep.clone()).spawn()
    };
    sink.record(issued());
    // The spawned worker never ran; shutting the runtime down drops it.
    drop(runtime);
    assert_eq!(sink.dropped(), 1);
    sink.record(issued());
    assert_eq!(sink.dropped(), 2);
    let other = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    other.block_on(async {
        within_a_second("flush", sink.flush()).await;
        within_a_second("shutdown", sink.shutdown()).await;
    });
    assert_eq!(keep.events(), 0);
}

#[tokio::test]
async fn a_batch_lost_mid_export_is_counted_and_flush_returns() {
    let exported = Arc::new(Mutex::new(0));
    let (sink, worker) = BatchingSink::builder(Stuck(Arc::clone(&exported)))
        .capacity(8)
        .max_batch(2)
        .build();
    let worker = tokio::spawn(worker);
    for _ in 0..3 {
        sink.record(issued());
    }
    let flush = tokio::spawn({
        let sink = sink.clone();
        async move { sink.flush().await }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // Two events are in the exporter's hands, one waits.
    assert_eq!(*exported.lock().unwrap(), 2);
    assert_eq!(sink.queued(), 1);
    assert_eq!(sink.dropped(), 0);
    // The runtime drops the worker mid-export (as at shutdown).
    worker.abort();
    assert!(worker.await.unwrap_err().is_cancelled());
    assert_eq!(sink.dropped(), 3);
    within_a_second("flush", flush).await.unwrap();
    within_a_second("shutdown", sink.shutdown()).await;
}

/// An exporter that panics.
struct Panics;

#[async_trait::async_trait]
impl UsageExporter for Panics {
    async fn export(&mut self, _: Vec<UsageEvent>) {
        panic!("exporter failed (expected by the test)");
    }
}

#[tokio::test]
async fn a_panicking_exporter_counts_its_batch_as_dropped() {
    let (sink, worker) = BatchingSink::builder(Panics).max_batch(2).build();
    let worker = tokio::spawn(worker);
    for _ in 0..3 {
        sink.record(issued());
    }
    within_a_second("flush", sink.flush()).await;
    assert!(worker.await.unwrap_err().is_panic());
    assert_eq!(sink.dropped(), 3);
    sink.record(issued());
    assert_eq!(sink.dropped(), 4);
}

/// A `max_batch` as large as the capacity: the sink exports before it is
/// full instead of waiting for a batch it can never hold (reviewer's probe).
#[tokio::test(start_paused = true)]
async fn a_batch_as_large_as_the_capacity_is_exported_before_the_sink_fills() {
    let keep = Keep::default();
    let sink = BatchingSink::builder(keep.clone())
        .capacity(100)
        .max_batch(100)
        .interval(Duration::from_secs(3600))
        .spawn();
    for _ in 0..1000 {
        sink.record(issued());
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink.dropped() < 100, "dropped {}", sink.dropped());
    assert!(keep.events() >= 900, "exported {}", keep.events());
    assert!(keep.0.lock().unwrap().iter().all(|b| b.len() <= 100));
}

/// The same from several threads: no single stripe reaches its share.
/// Paced by the sink, not by the clock: each thread waits while more
/// events wait than a worker woken by their number leaves behind. With an
/// interval of an hour only such a wake exports, so a worker that is not
/// woken stops the threads, and the test fails at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_as_large_as_the_capacity_from_many_threads() {
    let keep = Keep::default();
    let sink = BatchingSink::builder(keep.clone())
        .capacity(100)
        .max_batch(100)
        .interval(Duration::from_secs(3600))
        .spawn();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for _ in 0..250 {
                    // Half the capacity (50) is a batch here: above 60
                    // waiting, a size wake is due.
                    wait_until("the worker exports what waits", || sink.queued() < 60);
                    sink.record(issued());
                }
            })
        })
        .collect();
    // Joined off the runtime's threads, which the worker needs.
    tokio::task::spawn_blocking(move || {
        for thread in threads {
            thread.join().unwrap();
        }
    })
    .await
    .unwrap();
    sink.flush().await;
    assert_eq!(sink.dropped(), 0);
    assert_eq!(keep.events(), 1000);
}

/// Waits on another thread's progress, without a fixed sleep; panics after
/// ten seconds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::yield_now();
    }
}

/// Room is reserved a grant at a time, so the sink counts half its capacity
/// (a batch here) before that many events are recorded: woken then, the
/// worker exports what it holds, and does not wait for the interval.
#[tokio::test(start_paused = true)]
async fn a_size_wake_exports_all_the_worker_holds() {
    let keep = Keep::default();
    let sink = BatchingSink::builder(keep.clone())
        .capacity(4000)
        .max_batch(4000)
        .interval(Duration::from_secs(3600))
        .spawn();
    // One fewer than the 2 000 that make a batch: only the count of room
    // reserved, which is ahead of the events, reaches it.
    for _ in 0..1999 {
        sink.record(issued());
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(keep.events() > 0, "nothing exported before the interval");
    assert!(keep.0.lock().unwrap().iter().all(|b| b.len() <= 4000));
    assert_eq!(sink.dropped(), 0);
    sink.flush().await;
    assert_eq!(keep.events(), 1999);
}

#[tokio::test]
async fn tracing_sink_logs_ids_and_never_a_secret() {
    let (captured, _guard) = CapturedLogs::start();

    let f = fixture().await;
    let service = stack(&f, TracingSink::info(), f.store.clone());
    let keys = [&f.good, &f.expired, &f.revoked, &f.wrong, &f.unknown];
    for key in keys {
        for uri in [
            "/pets".to_owned(),
            format!("/pets?api_key={}", key.expose_secret()),
        ] {
            let request = Request::get(uri)
                .header("authorization", bearer(key))
                .header("x-refuse", "rate_limited")
                .body(String::new())
                .unwrap();
            service.clone().oneshot(request).await.unwrap();
        }
        let request = Request::get(format!("/pets?api_key={}", key.expose_secret()))
            .body(String::new())
            .unwrap();
        service.clone().oneshot(request).await.unwrap();
    }

    let logs = captured.text();
    assert!(logs.contains("keyward::usage"), "{logs}");
    assert!(logs.contains("outcome=\"rate_limited\""), "{logs}");
    assert!(logs.contains("kind=\"first_used\""), "{logs}");
    assert!(logs.contains("kind=\"expired_on_use\""), "{logs}");
    assert!(logs.contains(f.good.id().as_str()), "{logs}");
    for key in keys {
        assert!(!logs.contains(key.secret()), "a secret reached the logs");
        assert!(
            !logs.contains(&key.secret()[..12]),
            "part of a secret reached the logs"
        );
    }
}

#[tokio::test]
async fn axum_router_records_the_matched_route() {
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;

    let f = fixture().await;
    let collected = Collected::default();
    let router = Router::new()
        .route(
            "/pets/{id}",
            get(|p: Principal| async move { p.owner().to_owned() }),
        )
        .layer(AuthLayer::new(f.store.clone(), f.format.clone()));
    let inside = router.clone().layer(UsageLayer::new(collected.sink()));
    let outside = UsageLayer::new(collected.sink()).layer(router);

    let request = || {
        Request::get("/pets/7?verbose=1")
            .header("authorization", bearer(&f.good))
            .body(Body::empty())
            .unwrap()
    };
    let response = inside.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = outside.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let events = collected.take();
    let requests = Collected::requests(&events);
    assert_eq!(requests.len(), 2);
    // Inside the router, the matched route; outside it, the path.
    assert_eq!(requests[0].route(), Some("/pets/{id}"));
    assert_eq!(requests[1].route(), Some("/pets/7"));
    for event in requests {
        assert_eq!(event.key_id(), Some(f.good.id()));
        assert_eq!(event.owner(), Some("acme"));
        assert_eq!(event.outcome(), Outcome::Allowed);
        assert_eq!(event.response_size(), Some(4));
    }
}

#[test]
fn lifecycle_events_from_key_management() {
    let collected = Collected::default();
    let sink = collected.sink();
    let id: KeyId = "abcdefABCDEF".parse().unwrap();
    let at = FakeClock::default().now();
    for lifecycle in [
        Lifecycle::Issued,
        Lifecycle::Rotated,
        Lifecycle::Revoked,
        Lifecycle::Disabled,
        Lifecycle::Enabled,
    ] {
        sink.record(UsageEvent::lifecycle(lifecycle, id, "acme", at));
    }
    let events = collected.take();
    let names: Vec<_> = events.iter().map(|e| e.kind().as_str()).collect();
    assert_eq!(
        names,
        ["issued", "rotated", "revoked", "disabled", "enabled"]
    );
    assert!(events.iter().all(|e| e.key_id() == Some(id)
        && e.owner() == Some("acme")
        && e.at() == at
        && e.route().is_none()));
    // The aggregate counts requests only.
    let aggregate = AggregatingSink::new();
    for event in events {
        aggregate.record(event);
    }
    assert!(aggregate.snapshot().is_empty());
    assert_eq!(aggregate.anonymous().requests, 0);
}

#[test]
fn a_shared_dyn_sink_works() {
    let aggregate = AggregatingSink::new();
    let shared: Arc<dyn UsageSink> = Arc::new(aggregate.clone());
    let service = plain_service(shared);
    let request = Request::get("/").body(String::new()).unwrap();
    let response = tokio_test_block_on(service.oneshot(request)).unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let anonymous = aggregate.anonymous();
    assert_eq!((anonymous.requests, anonymous.allowed), (1, 1));
    assert_eq!(anonymous.statuses.success, 1);
}

fn tokio_test_block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

proptest::proptest! {
    /// The recorded route is the path: never the query, whatever it holds.
    #[test]
    fn the_route_never_holds_the_query(
        path in "(/[a-zA-Z0-9._~-]{0,12}){1,4}",
        query in "[a-zA-Z0-9=&_%.-]{0,60}",
    ) {
        let collected = Collected::default();
        let service = plain_service(collected.sink());
        let uri = format!("{path}?{query}");
        let request = Request::get(uri.as_str()).body(String::new()).unwrap();
        tokio_test_block_on(service.oneshot(request)).unwrap();
        let events = collected.take();
        proptest::prop_assert_eq!(events.len(), 1);
        proptest::prop_assert_eq!(events[0].route(), Some(path.as_str()));
    }
}

/// The real stack of the issue: usage → auth → limit → scopes → handler,
/// each refusal recorded once, with its exact reason, against its key.
#[tokio::test]
async fn the_real_stack_records_one_event_per_request_with_its_outcome() {
    use keyward::limit::{CreditPolicy, Limits, MemoryLimiter, RateLimitLayer, RatePolicy};
    use keyward::RequireScopes;

    let format = KeyFormat::new("sk_test").unwrap();
    let store = MemoryStore::new();
    let clock = FakeClock::default();
    let generator = KeyGenerator::new(format.clone());
    let hasher = KeyHasher::sha256();
    let mint = |limits: Limits| {
        let key = generator.generate().unwrap();
        let record = KeyRecord::new(key.id(), hasher.hash(key.secret()), "acme", clock.now())
            .with_scopes("pets:read".parse().unwrap())
            .with_limits(limits);
        (key, record)
    };
    let (rated, record) = mint(
        Limits::new([RatePolicy::new("burst", 1, Duration::from_secs(60))
            .unwrap()
            .into()])
        .unwrap(),
    );
    store.insert(record).await.unwrap();
    let (prepaid, record) =
        mint(Limits::new([CreditPolicy::new("prepaid", 1).unwrap().into()]).unwrap());
    store.insert(record).await.unwrap();

    let collected = Collected::default();
    let service = ServiceBuilder::new()
        .layer(UsageLayer::new(collected.sink()).clock(clock.clone()))
        .layer(AuthLayer::new(store.clone(), format.clone()).clock(clock.clone()))
        .layer(RateLimitLayer::new(
            MemoryLimiter::new().with_clock(clock.clone()),
        ))
        .layer(RequireScopes::try_any(["pets:read", "pets:write"]).unwrap())
        .service(service_fn(|request: Request<String>| async move {
            let status = if request.uri().path() == "/write" {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::OK
            };
            let mut response = Response::new(String::new());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }));
    let writer_only = ServiceBuilder::new()
        .layer(UsageLayer::new(collected.sink()).clock(clock.clone()))
        .layer(AuthLayer::new(store.clone(), format.clone()).clock(clock.clone()))
        .layer(RateLimitLayer::new(
            MemoryLimiter::new().with_clock(clock.clone()),
        ))
        .layer(RequireScopes::try_all(["pets:write"]).unwrap())
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));

    let get = |key: Option<&ApiKey>| {
        let mut builder = Request::get("/pets?secret=no");
        if let Some(key) = key {
            builder = builder.header("x-api-key", key.expose_secret());
        }
        builder.body(String::new()).unwrap()
    };
    let mut cases: Vec<(Response<_>, Outcome, Option<KeyId>)> = Vec::new();
    let unknown = generator.generate().unwrap();
    cases.push((
        service.clone().oneshot(get(Some(&rated))).await.unwrap(),
        Outcome::Allowed,
        Some(rated.id()),
    ));
    cases.push((
        service.clone().oneshot(get(Some(&rated))).await.unwrap(),
        Outcome::Refused(RejectReason::RateLimited),
        Some(rated.id()),
    ));
    cases.push((
        service.clone().oneshot(get(Some(&prepaid))).await.unwrap(),
        Outcome::Allowed,
        Some(prepaid.id()),
    ));
    cases.push((
        service.clone().oneshot(get(Some(&prepaid))).await.unwrap(),
        Outcome::Refused(RejectReason::QuotaExhausted),
        Some(prepaid.id()),
    ));
    clock.advance(Duration::from_secs(60));
    cases.push((
        writer_only
            .clone()
            .oneshot(get(Some(&rated)))
            .await
            .unwrap(),
        Outcome::Refused(RejectReason::InsufficientScope),
        Some(rated.id()),
    ));
    cases.push((
        service.clone().oneshot(get(None)).await.unwrap(),
        Outcome::Refused(RejectReason::MissingKey),
        None,
    ));
    cases.push((
        service.clone().oneshot(get(Some(&unknown))).await.unwrap(),
        Outcome::Refused(RejectReason::UnknownKey),
        None,
    ));

    let events = collected.take();
    let requests = Collected::requests(&events);
    assert_eq!(requests.len(), cases.len(), "one event per request");
    for ((response, outcome, key_id), event) in cases.iter().zip(&requests) {
        assert_eq!(event.outcome(), *outcome);
        assert_eq!(event.status(), Some(response.status()));
        if key_id.is_some() {
            assert_eq!(
                event.key_id(),
                *key_id,
                "{outcome:?} is counted against its key"
            );
        }
        assert_eq!(event.route(), Some("/pets"));
    }
    for event in &events {
        let debug = format!("{event:?}");
        for key in [&rated, &prepaid, &unknown] {
            assert!(!debug.contains(key.expose_secret()));
        }
    }
}
