//! Throughput of the full keyward stack on one thread and on two: does it
//! scale, or is there a global lock?
//!
//! ```sh
//! cargo run --release --example throughput          # 5 rounds of 1 s
//! cargo run --release --example throughput 9 2      # 9 rounds of 2 s
//! cargo run --release --example throughput 5 1 none # without UsageLayer
//! cargo run --release --example throughput 5 1 default # first-use set at its default size
//! ```
//!
//! The stack is the one of `benches/stack.rs`' `keyward_full`:
//! `UsageLayer` (batching sink) → `AuthLayer` → `RateLimitLayer` →
//! `RequireScopes` → a trivial `service_fn`, polled with a no-op waker. The
//! batching sink's worker runs on its own tokio thread (it competes for the
//! same cores). Two workloads: `many` keys (each thread walks through
//! 100 000 keys) and one `hot` key (every request from every thread uses
//! it). Each round runs the threads for a fixed time and counts requests;
//! the median of the rounds is reported.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response, StatusCode};
use keyward::auth::AuthLayer;
use keyward::authorize::RequireScopes;
use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
use keyward::limit::{Limits, MemoryLimiter, RateLimitLayer, RatePolicy};
use keyward::record::KeyRecord;
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{BatchingSink, UsageEvent, UsageExporter, UsageLayer};
use tower::{service_fn, Layer, Service, ServiceExt};

fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

async fn inner(_: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(String::new()))
}

struct Discard;

#[keyward::async_trait]
impl UsageExporter for Discard {
    async fn export(&mut self, batch: Vec<UsageEvent>) {
        black_box(batch);
    }
}

/// Requests per second of `threads` threads running `service` for
/// `duration`, thread `t` presenting `headers[t]` in turn.
fn round<S>(service: &S, headers: &[Vec<String>], threads: usize, duration: Duration) -> f64
where
    S: Service<Request<String>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let mut service = service.clone();
            let headers = headers[t].clone();
            let stop = Arc::clone(&stop);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                let mut count = 0u64;
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        i = (i + 1) % headers.len();
                        let request = Request::get("/pets")
                            .header("authorization", headers[i].as_str())
                            .body(String::new())
                            .unwrap();
                        ready(service.ready()).unwrap();
                        black_box(ready(service.call(request)).unwrap());
                    }
                    count += 64;
                }
                count
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    total as f64 / began.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn measure<S>(
    service: &S,
    many: &[Vec<String>],
    hot: &[Vec<String>],
    rounds: usize,
    duration: Duration,
) where
    S: Service<Request<String>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: StatusOf,
{
    let check = ready(
        service.clone().oneshot(
            Request::get("/pets")
                .header("authorization", many[0][0].as_str())
                .body(String::new())
                .unwrap(),
        ),
    )
    .unwrap();
    assert_eq!(check.status_of(), StatusCode::OK);
    for (name, headers) in [("many keys", many), ("hot key", hot)] {
        // Warm up: every key gets its limiter state (and first-use record).
        for header in headers.iter().flatten() {
            let request = Request::get("/pets")
                .header("authorization", header.as_str())
                .body(String::new())
                .unwrap();
            black_box(ready(service.clone().oneshot(request)).unwrap());
        }
        let mut one = Vec::new();
        let mut two = Vec::new();
        for _ in 0..rounds {
            one.push(round(service, headers, 1, duration));
            two.push(round(service, headers, 2, duration));
        }
        let (one, two) = (median(one), median(two));
        println!(
            "{name:9}: 1 thread {:>9.0} req/s, 2 threads {:>9.0} req/s, ratio {:.2}",
            one,
            two,
            two / one
        );
    }
}

trait StatusOf {
    fn status_of(&self) -> StatusCode;
}

impl<B> StatusOf for Response<B> {
    fn status_of(&self) -> StatusCode {
        self.status()
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let seconds: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let duration = Duration::from_secs_f64(seconds);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let batching = runtime.block_on(async {
        BatchingSink::builder(Discard)
            .capacity(1 << 16)
            .max_batch(1024)
            .spawn()
    });

    let format = KeyFormat::new("sk_live").unwrap();
    let generator = KeyGenerator::new(format.clone());
    let hasher = KeyHasher::sha256();
    let limits = Limits::new([RatePolicy::new("burst", u32::MAX, Duration::from_secs(1))
        .unwrap()
        .into()])
    .unwrap();
    let scopes: keyward::scope::ScopeSet = "pets:read".parse().unwrap();
    let store = MemoryStore::with_capacity(200_000);
    let mut headers = Vec::new();
    for i in 0..200_000 {
        let key = generator.generate().unwrap();
        let record = KeyRecord::new(
            key.id(),
            hasher.hash(key.secret()),
            format!("owner-{i}"),
            SystemTime::now(),
        )
        .with_scopes(scopes.clone())
        .with_limits(limits.clone());
        ready(store.insert(record)).unwrap();
        headers.push(format!("Bearer {}", key.expose_secret()));
    }

    let auth = AuthLayer::new(store, format);
    let scoped = || RequireScopes::all(["pets:read".parse().unwrap()]).layer(service_fn(inner));
    // Many keys: each thread its own 100 000. One hot key: the same one.
    let many = vec![headers[..100_000].to_vec(), headers[100_000..].to_vec()];
    let hot = vec![vec![headers[0].clone()], vec![headers[0].clone()]];
    let sink = std::env::args()
        .nth(3)
        .unwrap_or_else(|| "batching".to_owned());
    if sink == "none" {
        // The same stack without usage recording, to see what the shared
        // usage queue costs when two threads feed it.
        let service = auth.layer(RateLimitLayer::new(MemoryLimiter::new()).layer(scoped()));
        measure(&service, &many, &hot, rounds, duration);
    } else {
        // Two threads present 200 000 distinct keys, more than the default
        // first-use set holds (100 000): it would start over again and again,
        // and every request would insert into it. Size it for the workload,
        // as a service with that many active keys should (BENCHMARKS.md
        // measures the default too: `throughput 5 1 default`).
        let capacity = if sink == "default" { 100_000 } else { 1 << 20 };
        let service = UsageLayer::new(batching.clone())
            .first_used_capacity(capacity)
            .layer(auth.layer(RateLimitLayer::new(MemoryLimiter::new()).layer(scoped())));
        measure(&service, &many, &hot, rounds, duration);
    }
    println!("batching sink dropped {} events", batching.dropped());
    runtime.block_on(batching.shutdown());
}
