//! Every store runs the one conformance suite.

use std::sync::Arc;

use keyward::store::{conformance, KeyStore, MemoryStore};

#[tokio::test]
async fn memory_store_conforms() {
    conformance::run(&MemoryStore::new()).await;
}

#[tokio::test]
async fn shared_dyn_store_conforms() {
    let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::with_capacity(16));
    conformance::run(&store).await;
}

/// Says which shared-server test files a build without their features
/// leaves out (`cargo test --all-features` runs them).
#[cfg(not(all(feature = "postgres", feature = "redis")))]
#[test]
fn shared_server_tests_need_their_features() {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped tests/postgres.rs, tests/redis.rs, tests/invalidation.rs, tests/processes.rs \
         and tests/faults.rs: features postgres and redis are off (cargo test --all-features)"
    );
}
