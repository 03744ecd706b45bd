//! The added cost of `UsageLayer` per request: `bare` is the inner service
//! alone; `noop` records into `()` (the cost of building the event);
//! `aggregate` into an `AggregatingSink`; `batching` into a `BatchingSink`
//! whose worker runs on a tokio thread; `auth` and `usage_auth_batching`
//! compare the authenticated path without and with usage recording.
//!
//! `cargo bench --bench usage`

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::Request;
use keyward::auth::AuthLayer;
use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
use keyward::record::KeyRecord;
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{AggregatingSink, BatchingSink, UsageLayer};
use tower::{service_fn, Layer, Service, ServiceExt};

use support::{inner, ready, Discard};

fn run<S>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    service: S,
    header: &str,
) where
    S: Service<Request<String>, Error = Infallible> + Clone,
{
    c.bench_function(name, |b| {
        let mut service = service.clone();
        b.iter(|| {
            let request = Request::get("/pets")
                .header("authorization", header)
                .body(String::new())
                .unwrap();
            ready(service.ready()).unwrap();
            black_box(ready(service.call(request)).unwrap())
        })
    });
}

fn bench(c: &mut Criterion) {
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
    let key = KeyGenerator::new(format.clone()).generate().unwrap();
    let store = MemoryStore::new();
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "acme",
        SystemTime::now(),
    );
    ready(store.insert(record)).unwrap();
    let auth = AuthLayer::new(store, format);
    let header = format!("Bearer {}", key.expose_secret());

    let mut group = c.benchmark_group("usage");
    group.throughput(Throughput::Elements(1));
    run(&mut group, "bare", service_fn(inner), &header);
    run(
        &mut group,
        "noop",
        UsageLayer::new(()).layer(service_fn(inner)),
        &header,
    );
    run(
        &mut group,
        "aggregate",
        UsageLayer::new(AggregatingSink::new()).layer(service_fn(inner)),
        &header,
    );
    run(
        &mut group,
        "batching",
        UsageLayer::new(batching.clone()).layer(service_fn(inner)),
        &header,
    );
    run(&mut group, "auth", auth.layer(service_fn(inner)), &header);
    run(
        &mut group,
        "usage_auth_batching",
        UsageLayer::new(batching.clone()).layer(auth.layer(service_fn(inner))),
        &header,
    );
    group.finish();
    eprintln!("batching sink dropped {} events", batching.dropped());
    runtime.block_on(batching.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
