//! How much memory a million keys take: the `MemoryStore` records and the
//! `MemoryLimiter` state of each key (one rate policy, decided once the
//! way `RateLimitLayer` does, through the record the store hands out), in
//! bytes per key.
//!
//! ```sh
//! cargo run --release --example memory            # 1 000 000 keys
//! cargo run --release --example memory 100000     # another count
//! cargo run --release --example memory 1000000 shared-owner  # one owner `Arc` for all
//! ```
//!
//! Measured as the growth of the process's resident set (`/proc/self/statm`,
//! Linux only), so it includes the allocator's own overhead: the memory the
//! machine really gives up. (A counting global allocator would need
//! `unsafe`, which this crate forbids in every target.) The keys' ids and
//! hashes are made before the first reading, so they are not counted.

use std::time::{Duration, SystemTime};

use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
use keyward::limit::{Limiter, Limits, MemoryLimiter, RatePolicy};
use keyward::record::KeyRecord;
use keyward::store::{KeyStore, MemoryStore};
use keyward::Principal;

/// Resident bytes of this process.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

fn now_or_never<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the in-memory store never waits"),
    }
}

fn owner(shared: &Option<std::sync::Arc<str>>, i: usize) -> std::sync::Arc<str> {
    match shared {
        Some(owner) => std::sync::Arc::clone(owner),
        None => format!("owner-{i}").into(),
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(1_000_000);
    // Every key its own owner string (one `Arc<str>` each), or one owner
    // shared by all, as a tier's keys made from one `Arc` would.
    let shared_owner: Option<std::sync::Arc<str>> = std::env::args()
        .nth(2)
        .filter(|arg| arg == "shared-owner")
        .map(|_| "acme".into());
    let generator = KeyGenerator::new(KeyFormat::new("sk_live").unwrap());
    let hasher = KeyHasher::sha256();
    let keys: Vec<_> = (0..n)
        .map(|_| {
            let key = generator.generate().unwrap();
            (key.id(), hasher.hash(key.secret()))
        })
        .collect();
    let limits = Limits::new([RatePolicy::new("burst", 100, Duration::from_secs(1))
        .unwrap()
        .into()])
    .unwrap();
    let scopes: keyward::scope::ScopeSet = "pets:read".parse().unwrap();
    let created = SystemTime::now();

    let before = resident();
    let store = MemoryStore::new();
    for (i, (id, hash)) in keys.iter().enumerate() {
        let record = KeyRecord::new(*id, *hash, owner(&shared_owner, i), created)
            .with_scopes(scopes.clone())
            .with_limits(limits.clone());
        now_or_never(store.insert(record)).unwrap();
    }
    let after_store = resident();

    let limiter = MemoryLimiter::new().with_max_keys(n);
    for (id, _) in &keys {
        let record = store.find_immediate(id).unwrap().unwrap().unwrap();
        let principal = Principal::new(record);
        let decision = limiter.check_principal_immediate(&principal, 1);
        assert!(decision.unwrap().unwrap().is_allowed());
    }
    let after_limiter = resident();
    assert_eq!(store.len(), n);
    println!("limiter table entries: {}", limiter.tracked_keys());

    let per_key = |bytes: u64| bytes as f64 / n as f64;
    let store_bytes = after_store.saturating_sub(before);
    let limiter_bytes = after_limiter.saturating_sub(after_store);
    println!("keys: {n}");
    println!(
        "store (records with their rate state, owner strings, map): {:.0} bytes/key",
        per_key(store_bytes)
    );
    println!(
        "limiter state beyond the store:      {:.0} bytes/key",
        per_key(limiter_bytes)
    );
    println!(
        "total:                               {:.0} bytes/key",
        per_key(store_bytes + limiter_bytes)
    );
}
