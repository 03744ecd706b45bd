//! A loop of requests through one stack, for a profiler.
//!
//! ```sh
//! cargo build --release --example profile
//! valgrind --tool=callgrind target/release/examples/profile full 100000
//! perf record -e cpu-clock -g target/release/examples/profile auth 5000000
//! ```
//!
//! Options after the count (either or both, in any order):
//!
//! - `typical` adds the headers a typical API client sends besides the key
//!   (host, user agent, accept, ...: seven), so that costs that grow with
//!   the number of headers show;
//! - `routed` gives every request an extension before the stack sees it, as
//!   axum's `Router` does before a route's layers run (it inserts the
//!   `OriginalUri` and the path parameters): the request then has its
//!   extension map already, as it has in an axum application.
//!
//! Stacks: `bare`, `auth` (AuthLayer, valid key), `full` (usage with an
//! aggregating sink, auth, rate limit, scopes; valid key), `full_batching`
//! (the same with a `BatchingSink` whose worker runs on a tokio thread and
//! whose exporter only counts; callgrind counts the worker's instructions
//! too), `unknown` (the full stack, a key with an unknown id). Polled with a
//! no-op waker.
//!
//! Built with `--features metrics`, the layers report to the `metrics`
//! facade: to no recorder, or with `KEYWARD_BENCH_RECORDER=registry` to one
//! that does what an exporter does per event (as in `benches/stack.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use keyward::auth::AuthLayer;
use keyward::authorize::RequireScopes;
use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
use keyward::limit::{Limits, MemoryLimiter, RateLimitLayer, RatePolicy};
use keyward::record::KeyRecord;
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{
    AggregatingSink, BatchingSink, UsageEvent, UsageExporter, UsageLayer, UsageSink,
};
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

/// Counts what it is given, and drops it.
struct Count(Arc<AtomicU64>);

#[keyward::async_trait]
impl UsageExporter for Count {
    async fn export(&mut self, batch: Vec<UsageEvent>) {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}

/// What axum's `Router` inserts into a routed request (its `OriginalUri`).
#[derive(Clone)]
struct OriginalUri(#[allow(dead_code)] http::Uri);

/// What a typical API client sends besides its key.
const TYPICAL: [(&str, &str); 7] = [
    ("host", "api.example.com"),
    ("user-agent", "python-requests/2.32.3"),
    ("accept", "application/json"),
    ("accept-encoding", "gzip, deflate"),
    ("connection", "keep-alive"),
    ("content-type", "application/json"),
    ("x-request-id", "0b7c1a4e-5f2d-4c3b-9a8e-6d1f2e3c4b5a"),
];

/// The options after the count.
#[derive(Clone, Copy, Default)]
struct Options {
    typical: bool,
    routed: bool,
}

fn drive<S>(mut service: S, header: &str, n: u64, options: Options)
where
    S: Service<Request<String>, Error = Infallible>,
{
    let others: &[(&str, &str)] = if options.typical { &TYPICAL } else { &[] };
    for _ in 0..n {
        let mut request = Request::get("/pets");
        for (name, value) in others {
            request = request.header(*name, *value);
        }
        let mut request = request
            .header("authorization", header)
            .body(String::new())
            .unwrap();
        if options.routed {
            let uri = OriginalUri(request.uri().clone());
            request.extensions_mut().insert(uri);
        }
        ready(service.ready()).unwrap();
        black_box(ready(service.call(request)).unwrap());
    }
}

/// Usage recording into `sink`, auth, rate limit, scopes.
fn full<K: UsageSink>(
    auth: &AuthLayer,
    sink: K,
) -> impl Service<Request<String>, Error = Infallible> {
    UsageLayer::new(sink).layer(
        auth.layer(
            RateLimitLayer::new(MemoryLimiter::new())
                .layer(RequireScopes::all(["pets:read".parse().unwrap()]).layer(service_fn(inner))),
        ),
    )
}

/// What an exporter such as metrics-exporter-prometheus does per event:
/// the key's handle looked up in a sharded registry, then an atomic add.
#[cfg(feature = "metrics")]
#[path = "../benches/support/recorder.rs"]
mod registry_recorder;

fn main() {
    #[cfg(feature = "metrics")]
    registry_recorder::install_if_asked();
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "full".to_owned());
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let mut options = Options::default();
    for option in args {
        match option.as_str() {
            "typical" => options.typical = true,
            "routed" => options.routed = true,
            other => panic!("unknown option {other}: typical or routed"),
        }
    }

    let format = KeyFormat::new("sk_live").unwrap();
    let generator = KeyGenerator::new(format.clone());
    let key = generator.generate().unwrap();
    let store = MemoryStore::new();
    let limits = Limits::new([RatePolicy::new("burst", u32::MAX, Duration::from_secs(1))
        .unwrap()
        .into()])
    .unwrap();
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "acme",
        SystemTime::now(),
    )
    .with_scopes("pets:read".parse().unwrap())
    .with_limits(limits);
    ready(store.insert(record)).unwrap();
    let header = format!("Bearer {}", key.expose_secret());
    let unknown = format!("Bearer {}", generator.generate().unwrap().expose_secret());
    let auth = AuthLayer::new(store, format);
    match which.as_str() {
        "bare" => drive(service_fn(inner), &header, n, options),
        "auth" => drive(auth.layer(service_fn(inner)), &header, n, options),
        "full" => drive(full(&auth, AggregatingSink::new()), &header, n, options),
        "unknown" => drive(full(&auth, AggregatingSink::new()), &unknown, n, options),
        "full_batching" => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let exported = Arc::new(AtomicU64::new(0));
            let sink = runtime.block_on(async {
                BatchingSink::builder(Count(Arc::clone(&exported)))
                    .capacity(1 << 16)
                    .max_batch(1024)
                    .spawn()
            });
            drive(full(&auth, sink.clone()), &header, n, options);
            runtime.block_on(sink.shutdown());
            let exported = exported.load(Ordering::Relaxed);
            eprintln!("exported {exported}, dropped {}", sink.dropped());
        }
        other => panic!("unknown stack {other}: bare, auth, full, full_batching or unknown"),
    }
}
