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
