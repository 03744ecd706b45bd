//! One limiter check: keyward's `MemoryLimiter` (a GCRA cell per key and
//! policy, each key with its own quota) against governor's keyed limiter
//! used directly (one shared quota, a DashMap of cells) — what
//! `tower_governor` runs per request — with 1 and 100 000 active keys.
//!
//! `cargo bench --bench limit`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use keyward::key::{KeyFormat, KeyGenerator, KeyId};
use keyward::limit::{CreditPolicy, Limiter, Limits, MemoryLimiter, RatePolicy};

fn ids(n: usize) -> Vec<KeyId> {
    let generator = KeyGenerator::new(KeyFormat::new("sk_live").unwrap());
    (0..n).map(|_| generator.generate().unwrap().id()).collect()
}

fn bench(c: &mut Criterion) {
    // Quotas no benchmark can exhaust: every check is an allowed one.
    let burst = RatePolicy::new("burst", u32::MAX, Duration::from_secs(1)).unwrap();
    let policy = Limits::new([burst.clone().into()]).unwrap();
    let quota = Quota::per_second(NonZeroU32::MAX);

    let mut group = c.benchmark_group("limit");
    group.throughput(Throughput::Elements(1));
    for keys in [1usize, 100_000] {
        let ids = ids(keys);

        let ours = MemoryLimiter::new();
        for id in &ids {
            ours.check_immediate(id, &policy, 1).unwrap().unwrap();
        }
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("keyward_memory", keys), &ids, |b, ids| {
            b.iter(|| {
                i = (i + 1) % ids.len();
                black_box(ours.check_immediate(&ids[i], &policy, 1))
            })
        });

        let keyed: DefaultKeyedRateLimiter<KeyId> = RateLimiter::keyed(quota);
        for id in &ids {
            let _ = keyed.check_key(id);
        }
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("governor_keyed", keys), &ids, |b, ids| {
            b.iter(|| {
                i = (i + 1) % ids.len();
                black_box(keyed.check_key(&ids[i]))
            })
        });
    }
    // A key with three policies (two rates and a balance), decided at once.
    let three = Limits::new([
        burst.into(),
        RatePolicy::new("daily", u32::MAX, Duration::from_secs(86_400))
            .unwrap()
            .into(),
        CreditPolicy::new("prepaid", CreditPolicy::MAX_CAPACITY)
            .unwrap()
            .into(),
    ])
    .unwrap();
    let ids = ids(1);
    let ours = MemoryLimiter::new();
    group.bench_function("keyward_memory_three_policies/1", |b| {
        b.iter(|| black_box(ours.check_immediate(&ids[0], &three, 1)))
    });
    let direct = RateLimiter::direct(quota);
    group.bench_function("governor_direct/1", |b| {
        b.iter(|| black_box(direct.check()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
