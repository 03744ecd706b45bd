//! What checking a JWT allocates, counted by dhat's heap profiler in
//! testing mode. One test in this file: dhat runs one profiler at a time
//! in a process.
#![cfg(feature = "jwt")]

use std::time::Duration;

use keyward::jwt::{JwtIssuer, JwtKeySet, JwtVerifier};
use keyward::{MemoryStore, ScopeSet};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// A token's check copies nothing of its key: the bytes it allocates are
/// the same for a 32-byte secret as for a 1 KiB one.
#[test]
fn a_token_check_does_not_copy_its_key() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bytes_per_check = |secret: &[u8]| {
        let (issuer, key) =
            JwtIssuer::hs256("k1", secret, "https://auth.example.com", "api").unwrap();
        let verifier = JwtVerifier::new(
            MemoryStore::new(),
            JwtKeySet::from_iter([key]),
            "https://auth.example.com",
            "api",
        )
        .require_record(false);
        let token = issuer
            .mint("acme", &ScopeSet::new(), Duration::from_secs(60), None)
            .unwrap();
        // Once first: whatever is made on the first check only.
        runtime.block_on(verifier.verify(&token)).unwrap();
        let before = dhat::HeapStats::get();
        for _ in 0..10 {
            runtime.block_on(verifier.verify(&token)).unwrap();
        }
        let after = dhat::HeapStats::get();
        (after.total_bytes - before.total_bytes) / 10
    };
    let short = bytes_per_check(&[7; 32]);
    let long = bytes_per_check(&[7; 1024]);
    assert_eq!(
        short, long,
        "a check allocates {short} bytes with a 32-byte key, {long} with a 1 KiB one"
    );
}
