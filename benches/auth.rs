//! The auth path on the in-memory store: a valid key, a well-formed key
//! with an unknown id, and a key with a bad checksum, with 1 and 100 000
//! keys in the store. `bare` is the inner service alone. `valid_no_floor`
//! and `unknown_id_no_floor` are the same layer without its refusal floor
//! (`AuthLayer::refusal_floor(None)`): what the floor costs a good key and
//! adds to a refused one.
//!
//! `cargo bench --bench auth`

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response};
use keyward::auth::AuthLayer;
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher};
use keyward::record::KeyRecord;
use keyward::store::{KeyStore, MemoryStore};
use tower::{service_fn, Layer, Service, ServiceExt};

use support::ready;

async fn inner(_: Request<()>) -> Result<Response<()>, Infallible> {
    Ok(Response::new(()))
}

fn store_with(keys: usize, generator: &KeyGenerator) -> (MemoryStore, ApiKey) {
    let store = MemoryStore::with_capacity(keys);
    let hasher = KeyHasher::sha256();
    let mut last = None;
    for i in 0..keys {
        let key = generator.generate().unwrap();
        let record = KeyRecord::new(
            key.id(),
            hasher.hash(key.secret()),
            format!("owner-{i}"),
            SystemTime::now(),
        )
        .with_scopes("pets:read".parse().unwrap());
        ready(store.insert(record)).unwrap();
        last = Some(key);
    }
    (store, last.unwrap())
}

fn bench(c: &mut Criterion) {
    let format = KeyFormat::new("sk_live").unwrap();
    let generator = KeyGenerator::new(format.clone());
    let mut group = c.benchmark_group("auth");
    group.throughput(Throughput::Elements(1));

    group.bench_function("bare", |b| {
        let mut service = service_fn(inner);
        b.iter(|| {
            let request = Request::get("/pets")
                .header("authorization", "Bearer x")
                .body(())
                .unwrap();
            ready(service.ready()).unwrap();
            black_box(ready(service.call(request)).unwrap())
        })
    });

    for keys in [1usize, 100_000] {
        let (store, key) = store_with(keys, &generator);
        let unknown = generator.generate().unwrap();
        let mut bad_checksum = key.expose_secret().to_owned();
        let last = bad_checksum.pop().unwrap();
        bad_checksum.push(if last == 'a' { 'b' } else { 'a' });
        let layer = AuthLayer::new(store, format.clone());
        let service = layer.clone().layer(service_fn(inner));
        // What the refusal floor costs a good key (a clock read) and saves
        // a refused one (the spin), against the same layer without it.
        let without_floor = layer.refusal_floor(None).layer(service_fn(inner));

        for (name, presented, service) in [
            ("valid", key.expose_secret().to_owned(), &service),
            ("unknown_id", unknown.expose_secret().to_owned(), &service),
            ("bad_checksum", bad_checksum, &service),
            (
                "valid_no_floor",
                key.expose_secret().to_owned(),
                &without_floor,
            ),
            (
                "unknown_id_no_floor",
                unknown.expose_secret().to_owned(),
                &without_floor,
            ),
        ] {
            let header = format!("Bearer {presented}");
            group.bench_with_input(BenchmarkId::new(name, keys), &header, |b, header| {
                let mut service = service.clone();
                b.iter(|| {
                    let request = Request::get("/pets")
                        .header("authorization", header.as_str())
                        .body(())
                        .unwrap();
                    ready(service.ready()).unwrap();
                    black_box(ready(service.call(request)).unwrap())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
