//! RateLimitLayer, MemoryLimiter and the failed-attempt throttle, on a fake
//! clock: through `oneshot` on a `service_fn` and through a real axum Router.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use keyward::auth::{AuthLayer, FailureThrottle};
use keyward::clock::{Clock, FakeClock};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher, KeyId};
use keyward::limit::{
    Cost, CreditPolicy, Decision, LimitError, Limiter, Limits, MemoryLimiter, Policy,
    RateLimitLayer, RatePolicy, Verdict,
};
use keyward::record::KeyRecord;
use keyward::reject::{RejectReason, Rejection};
use keyward::store::{KeyStore, MemoryStore};
use tower::{service_fn, Service, ServiceExt};

struct Fixture {
    format: KeyFormat,
    store: MemoryStore,
    clock: FakeClock,
}

impl Fixture {
    fn new() -> Self {
        Self {
            format: KeyFormat::new("sk_test").unwrap(),
            store: MemoryStore::new(),
            clock: FakeClock::default(),
        }
    }

    async fn key(&self, limits: Limits) -> ApiKey {
        let key = KeyGenerator::new(self.format.clone()).generate().unwrap();
        let record = KeyRecord::new(
            key.id(),
            KeyHasher::sha256().hash(key.secret()),
            "acme",
            self.clock.now(),
        )
        .with_limits(limits);
        self.store.insert(record).await.unwrap();
        key
    }

    fn auth(&self) -> AuthLayer {
        AuthLayer::new(self.store.clone(), self.format.clone()).clock(self.clock.clone())
    }

    fn limiter(&self) -> MemoryLimiter {
        MemoryLimiter::new().with_clock(self.clock.clone())
    }
}

type BoxService = tower::util::BoxCloneService<Request<String>, Response<Bytes>, Infallible>;

fn stack(auth: AuthLayer, limit: RateLimitLayer) -> BoxService {
    let service = tower::ServiceBuilder::new()
        .layer(auth)
        .layer(limit)
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new("ok".to_owned()))
        }));
    tower::util::BoxCloneService::new(service.map_response(|response| {
        response.map(|body| {
            // Bodies here are always ready; collect them synchronously.
            futures_ready(body)
        })
    }))
}

fn futures_ready<B: http_body::Body<Data = Bytes> + Unpin>(body: B) -> Bytes
where
    B::Error: std::fmt::Debug,
{
    let collected = body.collect();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut collected = std::pin::pin!(collected);
    match collected.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(c)) => c.to_bytes(),
        _ => panic!("body not ready"),
    }
}

use std::future::Future as _;

fn with_key(key: &ApiKey) -> Request<String> {
    Request::get("/pets")
        .header("x-api-key", key.expose_secret())
        .body(String::new())
        .unwrap()
}

async fn send(service: &mut BoxService, request: Request<String>) -> Response<Bytes> {
    service.ready().await.unwrap().call(request).await.unwrap()
}

fn rate(name: &str, quota: u32, window_secs: u64) -> Policy {
    RatePolicy::new(name, quota, Duration::from_secs(window_secs))
        .unwrap()
        .into()
}

fn header<'a>(response: &'a Response<Bytes>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

fn reason(response: &Response<Bytes>) -> Option<RejectReason> {
    response
        .extensions()
        .get::<Rejection>()
        .map(Rejection::reason)
}

#[tokio::test]
async fn sixth_request_of_a_five_per_second_burst_waits_for_the_advertised_time() {
    let f = Fixture::new();
    let key = f.key(Limits::new([rate("burst", 5, 1)]).unwrap()).await;
    let mut service = stack(f.auth(), RateLimitLayer::new(f.limiter()));

    for remaining in (0..5).rev() {
        let response = send(&mut service, with_key(&key)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "ratelimit-policy"), r#""burst";q=5;w=1"#);
        assert_eq!(
            header(&response, "ratelimit"),
            format!(r#""burst";r={remaining};t=1"#)
        );
    }

    let sixth = send(&mut service, with_key(&key)).await;
    assert_eq!(sixth.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reason(&sixth), Some(RejectReason::RateLimited));
    assert_eq!(header(&sixth, "ratelimit"), r#""burst";r=0;t=1"#);
    let retry_after: u64 = header(&sixth, "retry-after").parse().unwrap();
    assert_eq!(
        retry_after, 1,
        "one unit comes back after 200 ms: rounded up"
    );
    assert_eq!(header(&sixth, "content-type"), "application/problem+json");
    let body: serde_json::Value = serde_json::from_slice(sixth.body()).unwrap();
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["violated-policies"], serde_json::json!(["burst"]));
    assert!(!String::from_utf8_lossy(sixth.body()).contains(key.expose_secret()));

    f.clock.advance(Duration::from_secs(retry_after));
    let after = send(&mut service, with_key(&key)).await;
    assert_eq!(after.status(), StatusCode::OK);
    assert_eq!(header(&after, "ratelimit"), r#""burst";r=4;t=1"#);
}

#[tokio::test]
async fn retry_after_is_never_earlier_than_t() {
    let f = Fixture::new();
    // One request a minute: the wait is 60 s, not 0 and not 1.
    let key = f.key(Limits::new([rate("minute", 1, 60)]).unwrap()).await;
    let mut service = stack(f.auth(), RateLimitLayer::new(f.limiter()));
    assert_eq!(
        send(&mut service, with_key(&key)).await.status(),
        StatusCode::OK
    );
    f.clock.advance(Duration::from_millis(100));
    let denied = send(&mut service, with_key(&key)).await;
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&denied, "ratelimit"), r#""minute";r=0;t=60"#);
    assert_eq!(header(&denied, "retry-after"), "60");
}

#[tokio::test]
async fn keys_of_different_tiers_are_limited_independently() {
    let f = Fixture::new();
    let free = Limits::new([rate("burst", 2, 1)]).unwrap();
    let pro = Limits::new([rate("burst", 100, 1)]).unwrap();
    let free_a = f.key(free.clone()).await;
    let free_b = f.key(free).await;
    let pro_key = f.key(pro).await;
    let mut service = stack(f.auth(), RateLimitLayer::new(f.limiter()));

    for _ in 0..2 {
        assert_eq!(
            send(&mut service, with_key(&free_a)).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        send(&mut service, with_key(&free_a)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Same tier, own budget.
    assert_eq!(
        send(&mut service, with_key(&free_b)).await.status(),
        StatusCode::OK
    );
    // Another tier, its own quota.
    for i in 0..100 {
        let response = send(&mut service, with_key(&pro_key)).await;
        assert_eq!(response.status(), StatusCode::OK, "pro request {i}");
    }
    let response = send(&mut service, with_key(&pro_key)).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&response, "ratelimit-policy"),
        r#""burst";q=100;w=1"#
    );
}

#[tokio::test]
async fn a_cost_of_three_spends_three_units() {
    let f = Fixture::new();
    let key = f.key(Limits::new([rate("burst", 10, 10)]).unwrap()).await;
    let limiter = f.limiter();
    let mut expensive = stack(f.auth(), RateLimitLayer::new(limiter.clone()).cost(3));
    let mut cheap = stack(f.auth(), RateLimitLayer::new(limiter));

    let response = send(&mut expensive, with_key(&key)).await;
    assert_eq!(header(&response, "ratelimit"), r#""burst";r=7;t=3"#);
    let response = send(&mut cheap, with_key(&key)).await;
    assert_eq!(header(&response, "ratelimit"), r#""burst";r=6;t=4"#);
    // A `Cost` extension from an outer layer wins over the layer's cost.
    let mut request = with_key(&key);
    request.extensions_mut().insert(Cost(5));
    let response = send(&mut cheap, request).await;
    assert_eq!(header(&response, "ratelimit"), r#""burst";r=1;t=9"#);
    // Three more do not fit in one: refused, and nothing is spent.
    let response = send(&mut expensive, with_key(&key)).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let response = send(&mut cheap, with_key(&key)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "ratelimit"), r#""burst";r=0;t=10"#);
}

#[tokio::test]
async fn credits_refill_on_schedule_and_denied_requests_spend_none() {
    let f = Fixture::new();
    let limits = Limits::new([
        CreditPolicy::new("hourly", 3)
            .unwrap()
            .with_refill(3, Duration::from_secs(3600))
            .unwrap()
            .into(),
        rate("burst", 1, 1),
    ])
    .unwrap();
    let key = f.key(limits).await;
    let mut service = stack(f.auth(), RateLimitLayer::new(f.limiter()));

    let first = send(&mut service, with_key(&key)).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        header(&first, "ratelimit-policy"),
        r#""burst";q=1;w=1, "hourly";q=3;w=3600"#
    );
    assert_eq!(
        header(&first, "ratelimit"),
        r#""burst";r=0;t=1, "hourly";r=2;t=3600"#
    );
    // Refused by the rate: the credits are not touched.
    let second = send(&mut service, with_key(&key)).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reason(&second), Some(RejectReason::RateLimited));
    for expected in [1, 0] {
        f.clock.advance(Duration::from_secs(1));
        let response = send(&mut service, with_key(&key)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            header(&response, "ratelimit").ends_with(&format!(r#""hourly";r={expected};t=3598"#))
                || header(&response, "ratelimit")
                    .ends_with(&format!(r#""hourly";r={expected};t=3599"#)),
            "{}",
            header(&response, "ratelimit")
        );
    }
    f.clock.advance(Duration::from_secs(1));
    let exhausted = send(&mut service, with_key(&key)).await;
    assert_eq!(exhausted.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reason(&exhausted), Some(RejectReason::QuotaExhausted));
    let body: serde_json::Value = serde_json::from_slice(exhausted.body()).unwrap();
    assert_eq!(body["violated-policies"], serde_json::json!(["hourly"]));
    // The refill is due an hour after the first request.
    assert_eq!(header(&exhausted, "retry-after"), "3597");

    f.clock.advance(Duration::from_secs(3597));
    let refilled = send(&mut service, with_key(&key)).await;
    assert_eq!(refilled.status(), StatusCode::OK);
    assert!(header(&refilled, "ratelimit").ends_with(r#""hourly";r=2;t=3600"#));
}

#[tokio::test]
async fn a_balance_that_never_refills_says_no_retry_time() {
    let f = Fixture::new();
    let key = f
        .key(Limits::new([CreditPolicy::new("prepaid", 1).unwrap().into()]).unwrap())
        .await;
    let mut service = stack(f.auth(), RateLimitLayer::new(f.limiter()));
    let first = send(&mut service, with_key(&key)).await;
    assert_eq!(header(&first, "ratelimit"), r#""prepaid";r=0"#);
    assert_eq!(header(&first, "ratelimit-policy"), r#""prepaid";q=1"#);
    let second = send(&mut service, with_key(&key)).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn keys_without_limits_pass_without_headers_and_no_principal_is_refused() {
    let f = Fixture::new();
    let key = f.key(Limits::none()).await;
    let mut service = stack(f.auth(), RateLimitLayer::new(f.limiter()));
    let response = send(&mut service, with_key(&key)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("ratelimit").is_none());

    // RateLimitLayer alone (stacked outside AuthLayer by mistake).
    let mut alone = tower::ServiceBuilder::new()
        .layer(RateLimitLayer::new(f.limiter()))
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let response = alone
        .ready()
        .await
        .unwrap()
        .call(with_key(&key))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// A limiter behind a network: answers only asynchronously, or fails.
#[derive(Debug)]
struct Remote {
    inner: MemoryLimiter,
    fail: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("connection refused")]
struct Down;

#[async_trait]
impl Limiter for Remote {
    async fn check(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError> {
        tokio::task::yield_now().await;
        if self.fail {
            return Err(LimitError::backend(Down));
        }
        self.inner.check(id, limits, cost).await
    }
}

#[tokio::test]
async fn an_asynchronous_limiter_decides_the_same() {
    let f = Fixture::new();
    let key = f.key(Limits::new([rate("burst", 1, 1)]).unwrap()).await;
    let remote = Remote {
        inner: f.limiter(),
        fail: false,
    };
    let mut service = stack(f.auth(), RateLimitLayer::new(remote));
    let first = send(&mut service, with_key(&key)).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "ratelimit"), r#""burst";r=0;t=1"#);
    let second = send(&mut service, with_key(&key)).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_failing_limiter_fails_closed_unless_told_otherwise() {
    let f = Fixture::new();
    let key = f.key(Limits::new([rate("burst", 1, 1)]).unwrap()).await;
    let down = || Remote {
        inner: f.limiter(),
        fail: true,
    };
    let mut closed = stack(f.auth(), RateLimitLayer::new(down()));
    let response = send(&mut closed, with_key(&key)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reason(&response), Some(RejectReason::LimiterUnavailable));

    let mut open = stack(
        f.auth(),
        RateLimitLayer::new(down()).insecure_fail_open(true),
    );
    assert_eq!(
        send(&mut open, with_key(&key)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_million_distinct_keys_stay_under_the_bound() {
    let clock = FakeClock::default();
    let limiter = MemoryLimiter::new()
        .with_clock(clock.clone())
        .with_max_keys(10_000);
    let limits = Limits::new([rate("burst", 5, 1)]).unwrap();
    let mut peak = 0;
    for i in 0..1_000_000u32 {
        let id: KeyId = format!("{i:012}").parse().unwrap();
        let decision = limiter.check_immediate(&id, &limits, 1).unwrap().unwrap();
        assert!(decision.is_allowed());
        if i % 1000 == 0 {
            peak = peak.max(limiter.tracked_keys());
            clock.advance(Duration::from_millis(1));
        }
    }
    peak = peak.max(limiter.tracked_keys());
    assert!(peak <= 10_000, "tracked {peak} keys");
    assert!(limiter.tracked_keys() > 0);
}

#[tokio::test]
async fn idle_state_is_dropped() {
    let clock = FakeClock::default();
    let limiter = MemoryLimiter::new()
        .with_clock(clock.clone())
        .with_max_keys(100);
    let limits = Limits::new([rate("burst", 5, 1)]).unwrap();
    for i in 0..100u32 {
        let id: KeyId = format!("{i:012}").parse().unwrap();
        limiter.check(&id, &limits, 1).await.unwrap();
    }
    assert_eq!(limiter.tracked_keys(), 100);
    // A second later every key is full again; the next new key sweeps.
    clock.advance(Duration::from_secs(1));
    let id: KeyId = "newkey000000".parse().unwrap();
    limiter.check(&id, &limits, 1).await.unwrap();
    assert_eq!(limiter.tracked_keys(), 1);
}

fn from(addr: &str, key: &str) -> Request<String> {
    let mut request = Request::get("/pets")
        .header("authorization", format!("Bearer {key}"))
        .body(String::new())
        .unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(addr));
    request
}

#[tokio::test]
async fn guessing_from_one_address_is_throttled_and_others_are_served() {
    let f = Fixture::new();
    let key = f.key(Limits::none()).await;
    let throttle = FailureThrottle::new(5, Duration::from_secs(60)).with_clock(f.clock.clone());
    let auth = f.auth().failure_throttle(throttle.clone());
    let mut service = stack(auth, RateLimitLayer::new(f.limiter()));
    let stranger = KeyGenerator::new(f.format.clone());

    for i in 0..5 {
        // Well-formed keys with unknown ids, and junk.
        let guess = if i % 2 == 0 {
            stranger.generate().unwrap().expose_secret().to_owned()
        } else {
            format!("sk_test_guess{i}")
        };
        let response = send(&mut service, from("203.0.113.9:4000", &guess)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let throttled = send(&mut service, from("203.0.113.9:4001", key.expose_secret())).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reason(&throttled), Some(RejectReason::TooManyFailures));
    assert_eq!(header(&throttled, "retry-after"), "12");

    // Another client, and the same key from elsewhere, are served.
    let other = send(&mut service, from("198.51.100.7:5000", key.expose_secret())).await;
    assert_eq!(other.status(), StatusCode::OK);
    // Requests without a key are not what the throttle counts.
    assert_eq!(throttle.tracked_clients(), 1);

    f.clock.advance(Duration::from_secs(12));
    let later = send(&mut service, from("203.0.113.9:4002", key.expose_secret())).await;
    assert_eq!(later.status(), StatusCode::OK);
}

#[tokio::test]
async fn through_a_real_axum_router() {
    use axum::routing::get;
    let f = Fixture::new();
    let key = f.key(Limits::new([rate("burst", 1, 1)]).unwrap()).await;
    let app = axum::Router::new()
        .route("/pets", get(|| async { "pets" }))
        .layer(RateLimitLayer::new(f.limiter()))
        .layer(f.auth());
    let request = || {
        Request::get("/pets")
            .header("authorization", format!("Bearer {}", key.expose_secret()))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let ok = app.clone().oneshot(request()).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["ratelimit"], r#""burst";r=0;t=1"#);
    let denied = app.oneshot(request()).await.unwrap();
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.headers()["retry-after"], "1");
    let body = denied.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(body["violated-policies"], serde_json::json!(["burst"]));
}

/// Review finding: a window of `u64::MAX` seconds (or 600 years) made
/// GCRA's times saturate, and every request was allowed.
#[tokio::test]
async fn windows_beyond_a_hundred_years_are_refused_and_a_century_still_limits() {
    use keyward::limit::PolicyError;
    for window in [
        Duration::from_secs(u64::MAX),
        Duration::from_secs(600 * 365 * 86_400),
    ] {
        assert_eq!(
            RatePolicy::new("lifetime", 100, window),
            Err(PolicyError::WindowTooLong)
        );
    }
    let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
    let id: KeyId = "abcdefghijkl".parse().unwrap();
    let century = Limits::new([RatePolicy::new("lifetime", 10, RatePolicy::MAX_WINDOW)
        .unwrap()
        .into()])
    .unwrap();
    let allowed = (0..1000)
        .filter(|_| {
            let decision = limiter.check_immediate(&id, &century, 1).unwrap().unwrap();
            decision.is_allowed()
        })
        .count();
    assert_eq!(allowed, 10);
}

/// Review finding: the memory limiter keeps at most 16 states per key, and
/// 17 policies of quota 1 let every request through.
#[tokio::test]
async fn more_than_eight_policies_are_refused() {
    use keyward::limit::PolicyError;
    let policies = |n: usize| (0..n).map(|i| rate(&format!("p{i}"), 1, 3600));
    assert_eq!(
        Limits::new(policies(17)),
        Err(PolicyError::TooManyPolicies { max: 8 })
    );
    assert_eq!(
        Limits::new(policies(9)),
        Err(PolicyError::TooManyPolicies { max: 8 })
    );
    let limits = Limits::new(policies(8)).unwrap();
    let limiter = MemoryLimiter::new().with_clock(FakeClock::default());
    let id: KeyId = "abcdefghijkl".parse().unwrap();
    let allowed = (0..100)
        .filter(|_| {
            let decision = limiter.check_immediate(&id, &limits, 1).unwrap().unwrap();
            decision.is_allowed()
        })
        .count();
    assert_eq!(allowed, 1);
}

/// Answers whatever it is told, however large.
#[derive(Debug)]
struct Boastful(Verdict);

#[async_trait]
impl Limiter for Boastful {
    async fn check(&self, _: &KeyId, limits: &Limits, _: u32) -> Result<Decision, LimitError> {
        Ok(limits.policies().iter().map(|_| self.0).collect())
    }
}

/// `RateLimit` members are structured-field integers (RFC 9651): at most
/// 15 digits, whatever a `Limiter` answers.
#[tokio::test]
async fn ratelimit_numbers_never_exceed_fifteen_digits() {
    let f = Fixture::new();
    let key = f.key(Limits::new([rate("burst", 1, 1)]).unwrap()).await;
    let huge = Boastful(Verdict::allowed(
        u64::MAX,
        Duration::from_secs(u64::MAX / 2),
    ));
    let mut service = stack(f.auth(), RateLimitLayer::new(huge));
    let response = send(&mut service, with_key(&key)).await;
    assert_eq!(response.status(), StatusCode::OK);
    // `r` clamped to 15 digits; `t` kept to 584 years (11 digits).
    assert_eq!(
        header(&response, "ratelimit"),
        r#""burst";r=999999999999999;t=18446744074"#
    );
}

#[allow(dead_code)]
fn _unused(_: SystemTime) {}

/// All of a key's policies in one decision: a request that one policy
/// refuses spends nothing on the others, and the answer lists every
/// policy, the refusing ones as violated.
#[tokio::test]
async fn a_request_refused_by_one_policy_spends_nothing_on_the_others() {
    let f = Fixture::new();
    let limits = Limits::new([
        rate("burst", 2, 1),
        rate("hourly", 100, 3_600),
        CreditPolicy::new("prepaid", 3).unwrap().into(),
    ])
    .unwrap();
    let key = f.key(limits).await;
    let mut service = stack(f.auth(), RateLimitLayer::new(f.limiter()));
    for _ in 0..2 {
        let ok = send(&mut service, with_key(&key)).await;
        assert_eq!(ok.status(), StatusCode::OK);
    }
    for _ in 0..5 {
        let refused = send(&mut service, with_key(&key)).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reason(&refused), Some(RejectReason::RateLimited));
        // Every policy, the others unspent: 98 of the hour, 1 credit.
        assert_eq!(
            header(&refused, "ratelimit"),
            r#""burst";r=0;t=1, "hourly";r=98;t=72, "prepaid";r=1"#
        );
        let body: serde_json::Value = serde_json::from_slice(refused.body()).unwrap();
        assert_eq!(body["violated-policies"], serde_json::json!(["burst"]));
    }
    // A cost the balance cannot pay is refused by it alone: the rates
    // are not spent either.
    f.clock.advance(Duration::from_secs(1));
    let mut request = with_key(&key);
    request.extensions_mut().insert(Cost(2));
    let refused = send(&mut service, request).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reason(&refused), Some(RejectReason::QuotaExhausted));
    assert!(
        refused.headers().get("retry-after").is_none(),
        "never refills"
    );
    assert_eq!(
        header(&refused, "ratelimit"),
        r#""burst";r=2;t=0, "hourly";r=98;t=72, "prepaid";r=1"#
    );
    let ok = send(&mut service, with_key(&key)).await;
    assert_eq!(
        header(&ok, "ratelimit"),
        r#""burst";r=1;t=1, "hourly";r=97;t=108, "prepaid";r=0"#
    );
}

/// Several policies refusing at once are all named; `Retry-After` is the
/// longest of their waits, and the reason that of the longest.
#[tokio::test]
async fn every_refusing_policy_is_named_and_the_longest_wait_is_the_retry() {
    let f = Fixture::new();
    let limits = Limits::new([
        rate("burst", 1, 1),
        rate("minute", 1, 60),
        CreditPolicy::new("hourly", 1)
            .unwrap()
            .with_refill(1, Duration::from_secs(3_600))
            .unwrap()
            .into(),
    ])
    .unwrap();
    let key = f.key(limits).await;
    let mut service = stack(f.auth(), RateLimitLayer::new(f.limiter()));
    assert_eq!(
        send(&mut service, with_key(&key)).await.status(),
        StatusCode::OK
    );
    let refused = send(&mut service, with_key(&key)).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reason(&refused), Some(RejectReason::QuotaExhausted));
    assert_eq!(header(&refused, "retry-after"), "3600");
    let body: serde_json::Value = serde_json::from_slice(refused.body()).unwrap();
    assert_eq!(
        body["violated-policies"],
        serde_json::json!(["burst", "minute", "hourly"])
    );
}

/// Answers one verdict too few.
#[derive(Debug)]
struct Forgetful;

#[keyward::async_trait]
impl Limiter for Forgetful {
    async fn check(&self, _: &KeyId, _: &Limits, _: u32) -> Result<Decision, LimitError> {
        Ok([Verdict::allowed(1, Duration::ZERO)].into_iter().collect())
    }
}

/// A limiter whose answer does not cover every policy is a failed
/// limiter (fail closed), never an allowed request.
#[tokio::test]
async fn an_answer_missing_a_policy_fails_closed() {
    let f = Fixture::new();
    let key = f
        .key(Limits::new([rate("burst", 1, 1), rate("daily", 1, 86_400)]).unwrap())
        .await;
    let mut service = stack(f.auth(), RateLimitLayer::new(Forgetful));
    let response = send(&mut service, with_key(&key)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// Issue 12: a limiter on another store, from the public parts only: the
/// states it keeps, and `Limits::decide` (GCRA and the balance) inside
/// its own transaction. Through the layer it answers as `MemoryLimiter`.
#[derive(Debug)]
struct Elsewhere {
    clock: FakeClock,
    states: std::sync::Mutex<std::collections::HashMap<(KeyId, u64), keyward::limit::PolicyState>>,
}

#[keyward::async_trait]
impl Limiter for Elsewhere {
    async fn check(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError> {
        let now = self
            .clock
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let mut map = self.states.lock().unwrap();
        let mut states: Vec<_> = limits
            .policies()
            .iter()
            .map(|policy| map.get(&(*id, policy.fingerprint())).copied())
            .collect();
        let decision = limits.decide(&mut states, cost, now)?;
        if decision.is_allowed() {
            for (policy, state) in limits.policies().iter().zip(states) {
                if let Some(state) = state {
                    map.insert((*id, policy.fingerprint()), state);
                }
            }
        }
        Ok(decision)
    }
}

#[tokio::test]
async fn a_limiter_on_another_store_answers_as_the_memory_limiter() {
    let f = Fixture::new();
    let limits = Limits::new([
        rate("burst", 3, 1),
        CreditPolicy::new("monthly", 7)
            .unwrap()
            .with_refill(2, Duration::from_secs(5))
            .unwrap()
            .into(),
    ])
    .unwrap();
    let key = f.key(limits).await;
    let elsewhere = Elsewhere {
        clock: f.clock.clone(),
        states: Default::default(),
    };
    let mut theirs = stack(f.auth(), RateLimitLayer::new(elsewhere));
    let mut ours = stack(f.auth(), RateLimitLayer::new(f.limiter()));
    for step in 0..40u64 {
        let cost = 1 + (step % 3) as u32;
        let request = || {
            let mut request = with_key(&key);
            request.extensions_mut().insert(Cost(cost));
            request
        };
        let a = send(&mut theirs, request()).await;
        let b = send(&mut ours, request()).await;
        assert_eq!(a.status(), b.status(), "step {step}");
        assert_eq!(a.headers(), b.headers(), "step {step}");
        f.clock.advance(Duration::from_millis(150 * (step % 4)));
    }
}

/// A key with one rate policy keeps its state in its stored record: an
/// edit that keeps the policy (a rename) hands the state on, so it never
/// resets the budget; a new policy starts full; the limiter's table holds
/// nothing for the key.
#[tokio::test]
async fn an_edit_keeps_the_budget_and_a_new_policy_restarts_it() {
    let f = Fixture::new();
    let key = f.key(Limits::new([rate("burst", 3, 60)]).unwrap()).await;
    let limiter = f.limiter();
    let mut service = stack(f.auth(), RateLimitLayer::new(limiter.clone()));
    assert_eq!(
        send(&mut service, with_key(&key)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut service, with_key(&key)).await.status(),
        StatusCode::OK
    );

    let stored = f.store.find(&key.id()).await.unwrap().unwrap();
    let mut record = KeyRecord::clone(&stored);
    record.name = "renamed".into();
    f.store.update(record.clone()).await.unwrap();
    assert_eq!(
        send(&mut service, with_key(&key)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut service, with_key(&key)).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "not reset"
    );
    assert_eq!(limiter.tracked_keys(), 0, "no table entry");

    record.limits = Limits::new([rate("burst", 2, 60)]).unwrap();
    f.store.update(record).await.unwrap();
    assert_eq!(
        send(&mut service, with_key(&key)).await.status(),
        StatusCode::OK,
        "a new policy starts full"
    );
    assert_eq!(
        send(&mut service, with_key(&key)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut service, with_key(&key)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    f.store.revoke(&key.id(), f.clock.now()).await.unwrap();
    assert_eq!(
        send(&mut service, with_key(&key)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// An edit that keeps the policy frees the record it replaced (its
/// memory, and any secret it held): the budget goes on in a state of its
/// own, which a request still holding the old record spends on too.
#[tokio::test]
async fn an_edit_frees_the_record_it_replaced_and_keeps_the_budget() {
    let f = Fixture::new();
    let key = f.key(Limits::new([rate("burst", 3, 60)]).unwrap()).await;
    let limiter = f.limiter();
    let spend = |record: &std::sync::Arc<KeyRecord>| {
        let principal = keyward::Principal::new(record.clone());
        let decision = limiter.check_principal_immediate(&principal, 1).unwrap();
        decision.unwrap().is_allowed()
    };
    let old = f.store.find(&key.id()).await.unwrap().unwrap();
    assert!(spend(&old));
    let mut record = KeyRecord::clone(&old);
    record.name = "renamed".into();
    f.store.update(record.clone()).await.unwrap();
    assert!(spend(&old), "held across the edit: the same budget");
    // The store's map frees what it replaced in batches (papaya's
    // deferred reclamation): more edits let it.
    for edit in 0..100 {
        record.name = format!("edit {edit}").into();
        f.store.update(record.clone()).await.unwrap();
    }
    assert_eq!(std::sync::Arc::strong_count(&old), 1, "no record holds it");
    let freed = std::sync::Arc::downgrade(&old);
    drop(old);
    assert!(freed.upgrade().is_none());

    let new = f.store.find(&key.id()).await.unwrap().unwrap();
    assert!(spend(&new));
    assert!(!spend(&new), "three spent across the records");
    assert_eq!(limiter.tracked_keys(), 0);
}

fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the in-memory store never waits"),
    }
}

/// Two threads spend on one key, each looking its record up for every
/// request as the request path does, while a third replaces the record
/// over and over (an edit that keeps the policy): never more than the
/// policy passes, whichever record a request holds.
#[test]
fn two_threads_across_record_replaces_never_admit_more_than_the_policy() {
    let limits = Limits::new([rate("burst", 50, 3_600)]).unwrap();
    for round in 0..30u32 {
        let f = Fixture::new();
        let key = ready(f.key(limits.clone()));
        let id = key.id();
        let limiter = f.limiter();
        let allowed = std::sync::atomic::AtomicUsize::new(0);
        let barrier = std::sync::Barrier::new(3);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                let (store, limiter, allowed, barrier) = (&f.store, &limiter, &allowed, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    for _ in 0..100 {
                        let record = store.find_immediate(&id).unwrap().unwrap().unwrap();
                        let principal = keyward::Principal::new(record);
                        let decision = limiter.check_principal_immediate(&principal, 1);
                        if decision.unwrap().unwrap().is_allowed() {
                            allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
            let (store, barrier) = (&f.store, &barrier);
            scope.spawn(move || {
                barrier.wait();
                for i in 0..100 {
                    let current = store.find_immediate(&id).unwrap().unwrap().unwrap();
                    let mut record = KeyRecord::clone(&current);
                    record.name = format!("edit {i}").into();
                    ready(store.update(record)).unwrap();
                }
            });
        });
        let allowed = allowed.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(allowed, 50, "round {round}: {allowed} allowed");
        assert_eq!(limiter.tracked_keys(), 0);
    }
}
