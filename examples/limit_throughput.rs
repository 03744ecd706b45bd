//! Requests per second of the full stack (usage, auth, rate limit, scopes)
//! with each limiter: `memory` (`MemoryLimiter`), `redis` (`RedisLimiter`,
//! one `EVALSHA` per request) and `incr` (a hand-written fixed window:
//! `INCR` then `EXPIRE`, the limiter users write by hand). With `--info`,
//! Redis' own `INFO commandstats` before and after gives the commands sent
//! per request.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --features redis \
//!     --example limit_throughput -- redis 5 64 --info
//! ```
//!
//! Arguments: limiter (`memory`, `redis`, `incr`), seconds (5),
//! requests in flight (64), then `--info`. Prints `requests/s: N`.
//! Start three at once for three processes (each with its own keys, on
//! the same Redis).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response};
use keyward::auth::AuthLayer;
use keyward::authorize::RequireScopes;
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher, KeyId};
use keyward::limit::{
    Decision, LimitError, Limiter, Limits, MemoryLimiter, Policy, RateLimitLayer, RatePolicy,
    RedisLimiter, Verdict,
};
use keyward::record::KeyRecord;
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{AggregatingSink, UsageLayer};
use redis::aio::ConnectionManager;
use tower::{service_fn, Layer, ServiceExt};

/// A fixed window per policy, as hand-written limiters do it: `INCR` the
/// window's counter, then `EXPIRE` it, two calls, not atomic (a crash
/// between them leaves a counter that never expires).
#[derive(Debug)]
struct IncrExpire {
    connection: ConnectionManager,
}

#[keyward::async_trait]
impl Limiter for IncrExpire {
    async fn check(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut decision = Decision::new();
        for policy in limits.policies() {
            let Policy::Rate(rate) = policy else {
                decision.push(Verdict::allowed(0, Duration::ZERO));
                continue;
            };
            let window = rate.window().as_secs().max(1);
            let key = format!("handwritten:{id}:{}:{}", rate.name(), now / window);
            let mut connection = self.connection.clone();
            let count: u64 = redis::cmd("INCRBY")
                .arg(&key)
                .arg(cost)
                .query_async(&mut connection)
                .await
                .map_err(LimitError::backend)?;
            let _: () = redis::cmd("EXPIRE")
                .arg(&key)
                .arg(window)
                .query_async(&mut connection)
                .await
                .map_err(LimitError::backend)?;
            let quota = u64::from(rate.quota());
            let reset = Duration::from_secs(window - now % window);
            decision.push(if count <= quota {
                Verdict::allowed(quota - count, reset)
            } else {
                Verdict::denied(0, reset)
            });
        }
        Ok(decision)
    }
}

async fn commandstats(connection: &mut ConnectionManager) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "memory".to_owned());
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let in_flight: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let info = args.next().as_deref() == Some("--info");
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut admin = ConnectionManager::new(client.clone()).await.unwrap();
        let limiter: Arc<dyn Limiter> = match which.as_str() {
            "memory" => Arc::new(MemoryLimiter::new()),
            "redis" => Arc::new(
                RedisLimiter::connect(client)
                    .await
                    .unwrap()
                    .with_prefix("kwbench")
                    .unwrap(),
            ),
            "incr" => Arc::new(IncrExpire {
                connection: admin.clone(),
            }),
            other => panic!("unknown limiter {other}: memory, redis or incr"),
        };

        // 1000 keys, each limited to far more than a run sends.
        let format = KeyFormat::new("sk_live").unwrap();
        let generator = KeyGenerator::new(format.clone());
        let store = MemoryStore::new();
        let limits = Limits::new([
            RatePolicy::new("minute", 1_000_000, Duration::from_secs(60))
                .unwrap()
                .into(),
        ])
        .unwrap();
        let mut keys: Vec<ApiKey> = Vec::new();
        for _ in 0..1000 {
            let key = generator.generate().unwrap();
            let record = KeyRecord::new(
                key.id(),
                KeyHasher::sha256().hash(key.secret()),
                "acme",
                SystemTime::now(),
            )
            .with_scopes("pets:read".parse().unwrap())
            .with_limits(limits.clone());
            store.insert(record).await.unwrap();
            keys.push(key);
        }
        let headers: Arc<Vec<String>> = Arc::new(
            keys.iter()
                .map(|key| format!("Bearer {}", key.expose_secret()))
                .collect(),
        );
        let service = UsageLayer::new(AggregatingSink::new()).layer(
            AuthLayer::new(store, format).layer(RateLimitLayer::new(limiter).layer(
                RequireScopes::all(["pets:read".parse().unwrap()]).layer(service_fn(
                    |_: Request<String>| async {
                        Ok::<_, Infallible>(Response::new(String::new()))
                    },
                )),
            )),
        );

        let before = commandstats(&mut admin).await;
        let done = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for task in 0..in_flight {
            let (service, headers) = (service.clone(), Arc::clone(&headers));
            let (done, refused, stop) = (done.clone(), refused.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = task;
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    // A stack that never waits (memory) would never give
                    // the runtime back: yield now and then, in every mode.
                    sent += 1;
                    if sent.is_multiple_of(16) {
                        tokio::task::yield_now().await;
                    }
                    i = (i + 7) % headers.len();
                    let request = Request::get("/pets")
                        .header("authorization", &headers[i])
                        .body(String::new())
                        .unwrap();
                    let response = service.clone().oneshot(request).await.unwrap();
                    if !response.status().is_success() {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let done = done.load(Ordering::Relaxed);
        println!("limiter: {which}, in flight: {in_flight}, seconds: {elapsed:.2}");
        println!(
            "requests: {done}, refused: {}",
            refused.load(Ordering::Relaxed)
        );
        println!("requests/s: {:.0}", done as f64 / elapsed);
        if info {
            let after = commandstats(&mut admin).await;
            let mut total = 0;
            for (name, calls) in &after {
                let delta = calls - before.get(name).copied().unwrap_or(0);
                if delta > 0 && name != "info" {
                    total += delta;
                    println!(
                        "{name}: {delta} calls, {:.3} per request",
                        delta as f64 / done as f64
                    );
                }
            }
            println!("commands per request: {:.3}", total as f64 / done as f64);
        }
    });
}
