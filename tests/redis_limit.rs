//! `RedisLimiter` against the shared Redis (`REDIS_URL`; skipped when it is
//! unset): governor's arithmetic on generated cases, exactness across OS
//! processes, the local refusal cache, and faults through a proxy the test
//! owns. Each test uses its own key prefix and deletes its keys.
#![cfg(feature = "redis")]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use http::{Request, StatusCode};
use keyward::auth::AuthLayer;
use keyward::clock::FakeClock;
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher, KeyId};
use keyward::limit::{
    CreditPolicy, Decision, Limiter, Limits, Policy, RateLimitLayer, RatePolicy, RedisLimiter,
};
use keyward::record::KeyRecord;
use keyward::reject::{RejectReason, Rejection};
use keyward::store::{KeyStore, MemoryStore};
use proptest::prelude::*;
use redis::aio::ConnectionManager;
use support::limit_model::{case, observed, Case, Model};
use support::proxy::FaultProxy;
use support::services::{service_url, unique_name};
use tower::{service_fn, ServiceExt};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

async fn connection(url: &str) -> ConnectionManager {
    let client = redis::Client::open(url).expect("REDIS_URL");
    ConnectionManager::new(client)
        .await
        .expect("REDIS_URL is set but Redis does not answer")
}

/// Deletes every key under `prefix`.
async fn clean(connection: &mut ConnectionManager, prefix: &str) {
    let pattern = format!("{{{prefix}:*");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(connection)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(connection)
            .await
            .unwrap();
    }
}

fn id(n: u32) -> KeyId {
    format!("key{n:09}").parse().unwrap()
}

fn rate(name: &str, quota: u32, window_secs: u64) -> Policy {
    RatePolicy::new(name, quota, Duration::from_secs(window_secs))
        .unwrap()
        .into()
}

// ---------------------------------------------------------------------
// Governor's arithmetic, on Redis (time injected: test builds only)

fn run_case(url: &str, case: &Case) -> Result<(), TestCaseError> {
    runtime().block_on(async {
        let mut connection = connection(url).await;
        let prefix = unique_name("kwprop");
        let clock = FakeClock::default();
        let limiter = RedisLimiter::with_test_clock(connection.clone(), clock.clone())
            .with_prefix(&prefix)
            .unwrap()
            // Every request to Redis: the cache answers refusals from
            // what Redis said, not what the model would say now.
            .with_denial_cache(0);
        let limits = case.limits();
        let mut model = Model::new(&case.specs);
        let mut now = 0;
        let mut result = Ok(());
        for (step, &(advance, cost)) in case.steps.iter().enumerate() {
            now += advance;
            clock.advance(Duration::from_micros(advance));
            let theirs = limiter.check(&id(1), &limits, cost).await;
            let expected = model.decide(now, cost);
            if observed(&theirs, &case.specs) != expected {
                result = Err(TestCaseError::fail(format!(
                    "step {step} (cost {cost}): Redis {theirs:?}, expected {expected:?}"
                )));
                break;
            }
        }
        clean(&mut connection, &prefix).await;
        result
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn one_rate_decides_as_governor_on_redis(case in case(1)) {
        let Some(url) = redis_url("one_rate_decides_as_governor_on_redis") else {
            return Ok(());
        };
        let mut case = case;
        case.specs.truncate(1);
        run_case(&url, &case)?;
    }

    #[test]
    fn all_policies_at_once_on_redis(case in case(3)) {
        let Some(url) = redis_url("all_policies_at_once_on_redis") else {
            return Ok(());
        };
        run_case(&url, &case)?;
    }
}

/// The skip line once per test, not once per generated case.
fn redis_url(test: &str) -> Option<String> {
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let mut warned = WARNED.lock().unwrap();
            if !warned.iter().any(|t| t == test) {
                warned.push(test.to_owned());
                service_url("REDIS_URL", test);
            }
            None
        }
    }
}

// ---------------------------------------------------------------------
// Exactness across OS processes

const CHILD: &str = "KEYWARD_REDIS_LIMIT_CHILD";

fn exact_limits() -> [Limits; 3] {
    [
        // 50 per 10 s, burst 50.
        Limits::new([rate("per-ten-seconds", 50, 10)]).unwrap(),
        // 100 credits, never refilled (and a rate no test reaches).
        Limits::new([
            rate("generous", 100_000, 1),
            CreditPolicy::new("prepaid", 100).unwrap().into(),
        ])
        .unwrap(),
        // 5 units an hour and 100 credits, costs of 1 to 3 on both:
        // refusals by the rate spend no credit.
        Limits::new([
            rate("hourly", 5, 3_600),
            CreditPolicy::new("prepaid", 100).unwrap().into(),
        ])
        .unwrap(),
    ]
}

/// A child process: connects, says `ready`, waits for `go` on stdin, then
/// hammers the three keys at once and prints what it was allowed.
#[test]
fn child() {
    let Ok(prefix) = std::env::var(CHILD) else {
        return; // not a child: nothing to do
    };
    let url = std::env::var("REDIS_URL").unwrap();
    runtime().block_on(async move {
        let client = redis::Client::open(url).unwrap();
        let limiter = RedisLimiter::connect(client)
            .await
            .unwrap()
            .with_prefix(&prefix)
            .unwrap()
            .with_timeout(Duration::from_secs(5));
        // Load the script before the start, like a server that served.
        let [rate, ..] = exact_limits();
        let _ = limiter.check(&id(99), &rate, 0).await.unwrap();
        println!("ready");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        let started = unix_micros();
        let mut tasks = Vec::new();
        for task in 0..24u32 {
            let limiter = limiter.clone();
            let limits = exact_limits();
            tasks.push(tokio::spawn(async move {
                let [rate, credits, mixed] = &limits;
                let (mut allowed, mut spent, mut mixed_allowed, mut mixed_spent) = (0, 0, 0, 0);
                for i in 0..8u32 {
                    let cost = 1 + (task + i) % 3;
                    let ids = [id(1), id(2), id(3)];
                    let (a, b, c) = tokio::join!(
                        limiter.check(&ids[0], rate, 1),
                        limiter.check(&ids[1], credits, cost),
                        limiter.check(&ids[2], mixed, cost),
                    );
                    allowed += u32::from(a.unwrap().is_allowed());
                    if b.unwrap().is_allowed() {
                        spent += cost;
                    }
                    if c.unwrap().is_allowed() {
                        mixed_allowed += 1;
                        mixed_spent += cost;
                    }
                }
                (allowed, spent, mixed_allowed, mixed_spent)
            }));
        }
        let mut totals = (0, 0, 0, 0);
        for task in tasks {
            let (a, b, c, d) = task.await.unwrap();
            totals = (totals.0 + a, totals.1 + b, totals.2 + c, totals.3 + d);
        }
        let ended = unix_micros();
        println!(
            "result {} {} {} {} {started} {ended}",
            totals.0, totals.1, totals.2, totals.3
        );
    });
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[test]
fn three_processes_share_one_exact_budget() {
    let Some(url) = service_url("REDIS_URL", "three_processes_share_one_exact_budget") else {
        return;
    };
    let prefix = unique_name("kwexact");
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "child", "--nocapture", "--test-threads=1"])
                .env(CHILD, &prefix)
                .env("REDIS_URL", &url)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outputs: Vec<_> = children
        .iter_mut()
        .map(|child| BufReader::new(child.stdout.take().unwrap()))
        .collect();
    // Every child connected and loaded the script: go, all at once.
    for output in &mut outputs {
        let mut line = String::new();
        // The harness prints `test child ... ` first, on the same line.
        while !line.trim_end().ends_with("ready") {
            line.clear();
            assert!(output.read_line(&mut line).unwrap() > 0, "a child died");
        }
    }
    for child in &mut children {
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let mut totals = [0u64; 4];
    let (mut first, mut last) = (u64::MAX, 0);
    for (child, output) in children.iter_mut().zip(outputs) {
        // Read to the end: the child's harness writes after the result.
        let lines: Vec<String> = output.lines().map(Result::unwrap).collect();
        let line = lines
            .iter()
            .find(|line| line.starts_with("result "))
            .expect("a child printed no result");
        let numbers: Vec<u64> = line[7..].split(' ').map(|n| n.parse().unwrap()).collect();
        for (total, n) in totals.iter_mut().zip(&numbers) {
            *total += n;
        }
        first = first.min(numbers[4]);
        last = last.max(numbers[5]);
        assert!(child.wait().unwrap().success());
    }
    let [allowed, spent, mixed_allowed, mixed_spent] = totals;
    // A unit of the 50 per 10 s comes back every 200 ms: a run longer
    // than that (a very busy machine) may rightly allow one more each.
    let units_back = (last - first) / 200_000;
    assert!(
        (50..=50 + units_back).contains(&allowed),
        "{allowed} allowed over {} ms",
        (last - first) / 1000
    );
    if units_back == 0 {
        assert_eq!(allowed, 50);
    }
    assert!((98..=100).contains(&spent), "{spent} credits of 100 spent");
    assert!((3..=5).contains(&mixed_spent), "{mixed_spent} of 5 an hour");
    assert!(mixed_allowed >= 2);

    // What Redis holds agrees with what the processes were told.
    runtime().block_on(async {
        let mut connection = connection(&url).await;
        let limiter = RedisLimiter::new(connection.clone())
            .with_prefix(&prefix)
            .unwrap();
        let [_, credits, mixed] = exact_limits();
        let left = limiter.check(&id(2), &credits, 0).await.unwrap();
        assert_eq!(left.verdicts()[1].remaining(), 100 - spent);
        let left = limiter.check(&id(3), &mixed, 0).await.unwrap();
        assert_eq!(left.verdicts()[0].remaining(), 5 - mixed_spent);
        // Refused by the rate, the credits were not touched.
        assert_eq!(left.verdicts()[1].remaining(), 100 - mixed_spent);
        clean(&mut connection, &prefix).await;
    });
}

// ---------------------------------------------------------------------
// State keys, the refusal cache, faults

#[tokio::test]
async fn state_keys_are_hash_tagged_expire_and_never_hold_the_secret() {
    let Some(url) = service_url("REDIS_URL", "state_keys_are_hash_tagged") else {
        return;
    };
    let mut connection = connection(&url).await;
    let prefix = unique_name("kwkeys");
    let limiter = RedisLimiter::new(connection.clone())
        .with_prefix(&prefix)
        .unwrap();
    let limits = Limits::new([
        rate("burst", 5, 1),
        CreditPolicy::new("monthly", 10)
            .unwrap()
            .with_refill(10, Duration::from_secs(60))
            .unwrap()
            .into(),
    ])
    .unwrap();
    let key = KeyGenerator::new(KeyFormat::new("sk_test").unwrap())
        .generate()
        .unwrap();
    assert!(limiter
        .check(&key.id(), &limits, 1)
        .await
        .unwrap()
        .is_allowed());
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}:*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for name in &keys {
        assert!(
            name.starts_with(&format!("{{{prefix}:{}}}:", key.id())),
            "{name}"
        );
        assert!(!name.contains(key.expose_secret()));
        let ttl: i64 = redis::cmd("PTTL")
            .arg(name)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 61_000, "{name}: {ttl} ms");
    }
    clean(&mut connection, &prefix).await;
    assert!(format!("{limiter:?}").contains(&prefix));
}

async fn limited_key(store: &MemoryStore, format: &KeyFormat, limits: Limits) -> ApiKey {
    let key = KeyGenerator::new(format.clone()).generate().unwrap();
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "acme",
        SystemTime::now(),
    )
    .with_limits(limits);
    store.insert(record).await.unwrap();
    key
}

fn app(
    store: &MemoryStore,
    format: &KeyFormat,
    limiter: RedisLimiter,
) -> impl tower::Service<
    Request<String>,
    Response = http::Response<impl http_body::Body>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    tower::ServiceBuilder::new()
        .layer(AuthLayer::new(store.clone(), format.clone()))
        .layer(RateLimitLayer::new(limiter))
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new("ok".to_owned()))
        }))
}

fn request(key: &ApiKey) -> Request<String> {
    Request::get("/")
        .header("x-api-key", key.expose_secret())
        .body(String::new())
        .unwrap()
}

fn reason<B>(response: &http::Response<B>) -> Option<RejectReason> {
    response
        .extensions()
        .get::<Rejection>()
        .map(Rejection::reason)
}

/// A key Redis refused is refused locally until its retry time, with
/// the fields counted down: here even with Redis cut off.
#[tokio::test]
async fn a_refused_key_is_refused_locally_until_its_retry_time() {
    let Some(url) = service_url("REDIS_URL", "a_refused_key_is_refused_locally") else {
        return;
    };
    let proxy = FaultProxy::for_url(&url).await;
    let connection = connection(&proxy.url(&url)).await;
    let prefix = unique_name("kwdeny");
    let limiter = RedisLimiter::new(connection).with_prefix(&prefix).unwrap();
    let (store, format) = (MemoryStore::new(), KeyFormat::new("sk_test").unwrap());
    let key = limited_key(
        &store,
        &format,
        Limits::new([rate("minute", 1, 60)]).unwrap(),
    )
    .await;
    let app = app(&store, &format, limiter.clone());
    assert_eq!(
        app.clone().oneshot(request(&key)).await.unwrap().status(),
        StatusCode::OK
    );
    let refused = app.clone().oneshot(request(&key)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["ratelimit"], r#""minute";r=0;t=60"#);
    proxy.cut();
    for _ in 0..100 {
        let refused = app.clone().oneshot(request(&key)).await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reason(&refused), Some(RejectReason::RateLimited));
        let t: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((59..=60).contains(&t));
    }
    // Another key still needs Redis, which is cut: fail closed.
    let other = limited_key(
        &store,
        &format,
        Limits::new([rate("minute", 1, 60)]).unwrap(),
    )
    .await;
    let failed = app.oneshot(request(&other)).await.unwrap();
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reason(&failed), Some(RejectReason::LimiterUnavailable));
    proxy.restore();
    let mut connection = self::connection(&url).await;
    clean(&mut connection, &prefix).await;
}

/// Cut and stalled Redis: 503 within the timeout; restored: shared
/// decisions again within a second.
#[tokio::test]
async fn redis_down_fails_closed_within_the_timeout_and_recovers() {
    let Some(url) = service_url("REDIS_URL", "redis_down_fails_closed") else {
        return;
    };
    let proxy = FaultProxy::for_url(&url).await;
    let timeout = Duration::from_millis(200);
    let client = redis::Client::open(proxy.url(&url)).unwrap();
    let prefix = unique_name("kwdown");
    let limiter = RedisLimiter::connect(client)
        .await
        .unwrap()
        .with_prefix(&prefix)
        .unwrap()
        .with_timeout(timeout);
    let (store, format) = (MemoryStore::new(), KeyFormat::new("sk_test").unwrap());
    let key = limited_key(
        &store,
        &format,
        Limits::new([rate("burst", 1_000, 1)]).unwrap(),
    )
    .await;
    let app = app(&store, &format, limiter);
    assert_eq!(
        app.clone().oneshot(request(&key)).await.unwrap().status(),
        StatusCode::OK
    );
    for fault in ["cut", "stall"] {
        match fault {
            "cut" => proxy.cut(),
            _ => proxy.stall(),
        }
        for _ in 0..3 {
            let started = Instant::now();
            let response = app.clone().oneshot(request(&key)).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{fault}"
            );
            assert_eq!(reason(&response), Some(RejectReason::LimiterUnavailable));
            let took = started.elapsed();
            assert!(
                took < timeout + Duration::from_millis(300),
                "{fault}: {took:?}"
            );
        }
        proxy.restore();
        let restored = Instant::now();
        loop {
            let response = app.clone().oneshot(request(&key)).await.unwrap();
            if response.status() == StatusCode::OK {
                break;
            }
            assert!(
                restored.elapsed() < Duration::from_secs(1),
                "{fault}: still {} a second after the restore",
                response.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut connection = connection(&url).await;
    clean(&mut connection, &prefix).await;
}

/// With the fallback on: local decisions on a share of the quota while
/// Redis is cut, counted; shared ones again within a second of the
/// restore.
#[tokio::test]
async fn the_local_fallback_decides_on_a_share_and_returns_to_redis() {
    let Some(url) = service_url("REDIS_URL", "the_local_fallback") else {
        return;
    };
    let proxy = FaultProxy::for_url(&url).await;
    let client = redis::Client::open(proxy.url(&url)).unwrap();
    let prefix = unique_name("kwfallback");
    let limiter = RedisLimiter::connect(client)
        .await
        .unwrap()
        .with_prefix(&prefix)
        .unwrap()
        .fallback_to_local(0.5);
    let (store, format) = (MemoryStore::new(), KeyFormat::new("sk_test").unwrap());
    let key = limited_key(
        &store,
        &format,
        Limits::new([rate("minute", 4, 60)]).unwrap(),
    )
    .await;
    let app = app(&store, &format, limiter.clone());
    assert_eq!(
        app.clone().oneshot(request(&key)).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(limiter.degraded_decisions(), 0);
    proxy.cut();
    // Half of the 4 a minute, locally.
    let statuses: Vec<StatusCode> = {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(app.clone().oneshot(request(&key)).await.unwrap().status());
        }
        statuses
    };
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(limiter.degraded_decisions(), 3);
    proxy.restore();
    let restored = Instant::now();
    let mut connection = connection(&url).await;
    // Back on Redis: its state (one of 4 spent) decides again.
    loop {
        let degraded = limiter.degraded_decisions();
        let response = app.clone().oneshot(request(&key)).await.unwrap();
        if limiter.degraded_decisions() == degraded {
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["ratelimit"], r#""minute";r=2;t=30"#);
            break;
        }
        assert!(
            restored.elapsed() < Duration::from_secs(1),
            "still local a second after the restore"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clean(&mut connection, &prefix).await;
}

/// A cost no policy can ever allow is refused without asking Redis.
#[tokio::test]
async fn a_cost_beyond_the_burst_is_refused_without_a_round_trip() {
    let Some(url) = service_url("REDIS_URL", "a_cost_beyond_the_burst") else {
        return;
    };
    let limiter = RedisLimiter::new(connection(&url).await);
    let limits = Limits::new([rate("burst", 2, 1)]).unwrap();
    let result = limiter.check_immediate(&id(1), &limits, 3).unwrap();
    assert!(matches!(
        result,
        Err(keyward::limit::LimitError::CostTooHigh { cost: 3, .. })
    ));
    let empty: Decision = limiter.check(&id(1), &Limits::none(), 1).await.unwrap();
    assert!(empty.is_allowed() && empty.is_empty());
}
