//! A loop of requests through one stack, for a profiler.
//!
//! ```sh
//! cargo build --release --example profile
//! valgrind --tool=callgrind target/release/examples/profile full 100000
//! perf record -e cpu-clock -g target/release/examples/profile auth 5000000
//! ```
//!
//! Stacks: `bare`, `auth` (AuthLayer, valid key), `full` (usage with an
//! aggregating sink, auth, rate limit, scopes; valid key), `unknown` (the
//! full stack, a key with an unknown id). Polled with a no-op waker.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use keyward::auth::AuthLayer;
use keyward::authorize::RequireScopes;
use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
use keyward::limit::{Limits, MemoryLimiter, RateLimitLayer, RatePolicy};
use keyward::record::KeyRecord;
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{AggregatingSink, UsageLayer};
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

fn drive<S>(mut service: S, header: &str, n: u64)
where
    S: Service<Request<String>, Error = Infallible>,
{
    for _ in 0..n {
        let request = Request::get("/pets")
            .header("authorization", header)
            .body(String::new())
            .unwrap();
        ready(service.ready()).unwrap();
        black_box(ready(service.call(request)).unwrap());
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "full".to_owned());
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);

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
    let full = UsageLayer::new(AggregatingSink::new()).layer(
        auth.layer(
            RateLimitLayer::new(MemoryLimiter::new())
                .layer(RequireScopes::all(["pets:read".parse().unwrap()]).layer(service_fn(inner))),
        ),
    );
    match which.as_str() {
        "bare" => drive(service_fn(inner), &header, n),
        "auth" => drive(auth.layer(service_fn(inner)), &header, n),
        "full" => drive(full, &header, n),
        "unknown" => drive(full, &unknown, n),
        other => panic!("unknown stack {other}: bare, auth, full or unknown"),
    }
}
