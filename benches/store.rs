//! A look-up that hits: `MemoryStore` against `CachedStore<MemoryStore>`
//! (through `find_immediate`, as `AuthLayer` calls it), with 1 000 and
//! 100 000 keys; and the whole auth path on each.
//!
//! `cargo bench --bench store`

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response};
use keyward::auth::AuthLayer;
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher, KeyId};
use keyward::record::KeyRecord;
use keyward::store::{CachedStore, KeyStore, MemoryStore};
use tower::{service_fn, Layer, Service, ServiceExt};

use support::ready;

async fn inner(_: Request<()>) -> Result<Response<()>, Infallible> {
    Ok(Response::new(()))
}

fn filled(keys: usize, generator: &KeyGenerator) -> (MemoryStore, Vec<KeyId>, ApiKey) {
    let store = MemoryStore::with_capacity(keys);
    let hasher = KeyHasher::sha256();
    let mut ids = Vec::with_capacity(keys);
    let mut last = None;
    for i in 0..keys {
        let key = generator.generate().unwrap();
        let record = KeyRecord::new(
            key.id(),
            hasher.hash(key.secret()),
            format!("owner-{i}"),
            SystemTime::now(),
        );
        ready(store.insert(record)).unwrap();
        ids.push(key.id());
        last = Some(key);
    }
    (store, ids, last.unwrap())
}

fn bench(c: &mut Criterion) {
    let format = KeyFormat::new("sk_live").unwrap();
    let generator = KeyGenerator::new(format.clone());
    // The cache is built in a runtime, as a service builds it: its coarse
    // clock is then refreshed by a task on the runtime's worker.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));

    for keys in [1_000usize, 100_000] {
        let (memory, ids, key) = filled(keys, &generator);
        let cached = CachedStore::builder(memory.clone())
            .capacity(keys * 2)
            .ttl(Duration::from_secs(3600))
            .build();
        // Misses time out on tokio's timer: fill the cache in the runtime.
        runtime.block_on(async {
            for id in &ids {
                cached.find(id).await.unwrap();
            }
        });

        // Ids visited in a fixed scattered order, the same for both.
        let step = 7919 % keys.max(2);
        group.bench_with_input(BenchmarkId::new("memory_hit", keys), &ids, |b, ids| {
            let mut i = 0;
            b.iter(|| {
                i = (i + step) % ids.len();
                black_box(memory.find_immediate(&ids[i]))
            })
        });
        group.bench_with_input(BenchmarkId::new("cached_hit", keys), &ids, |b, ids| {
            let mut i = 0;
            b.iter(|| {
                i = (i + step) % ids.len();
                black_box(cached.find_immediate(&ids[i]))
            })
        });

        let header = format!("Bearer {}", key.expose_secret());
        let on_memory = AuthLayer::new(memory.clone(), format.clone()).layer(service_fn(inner));
        let on_cache = AuthLayer::new(cached.clone(), format.clone()).layer(service_fn(inner));
        group.bench_with_input(
            BenchmarkId::new("auth_memory", keys),
            &header,
            |b, header| {
                let mut service = on_memory.clone();
                b.iter(|| {
                    let request = Request::get("/pets")
                        .header("authorization", header.as_str())
                        .body(())
                        .unwrap();
                    ready(service.ready()).unwrap();
                    black_box(ready(service.call(request)).unwrap())
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("auth_cached", keys),
            &header,
            |b, header| {
                let mut service = on_cache.clone();
                b.iter(|| {
                    let request = Request::get("/pets")
                        .header("authorization", header.as_str())
                        .body(())
                        .unwrap();
                    ready(service.ready()).unwrap();
                    black_box(ready(service.call(request)).unwrap())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
