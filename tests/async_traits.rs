//! A downstream crate implements keyward's async traits with the attribute
//! keyward re-exports (`#[keyward::async_trait]`), never naming the
//! `async-trait` crate: its own `KeyStore`, `UsageSink` and
//! `UsageExporter`, used through `AuthLayer`, `KeyManager`, `UsageLayer`
//! and `BatchingSink` on a real axum `Router`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use keyward::key::{KeyFormat, KeyId};
use keyward::manager::{IssueOptions, KeyManager};
use keyward::record::{KeyRecord, KeyStatus};
use keyward::store::{KeyStore, Lookup, StoreError};
use keyward::usage::{
    BatchingSink, EventKind, Lifecycle, Outcome, UsageEvent, UsageExporter, UsageLayer, UsageSink,
};
use keyward::{AuthLayer, Principal};
use tower::{ServiceBuilder, ServiceExt};

/// A store of its own, over a `HashMap`: every method an `async fn`.
#[derive(Debug, Default)]
struct MapStore {
    records: RwLock<HashMap<KeyId, Arc<KeyRecord>>>,
}

#[keyward::async_trait]
impl KeyStore for MapStore {
    async fn find(&self, id: &KeyId) -> Lookup {
        Ok(self.records.read().unwrap().get(id).cloned())
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let mut records = self.records.write().unwrap();
        if records.contains_key(&record.id) {
            return Err(StoreError::AlreadyExists(record.id));
        }
        records.insert(record.id, Arc::new(record));
        Ok(())
    }

    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        let mut records = self.records.write().unwrap();
        match records.get(&record.id) {
            None => Err(StoreError::NotFound(record.id)),
            Some(old) if old.status == KeyStatus::Revoked => Err(StoreError::Revoked(record.id)),
            Some(_) => {
                records.insert(record.id, Arc::new(record));
                Ok(())
            }
        }
    }

    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
        let mut records = self.records.write().unwrap();
        let record = Arc::make_mut(records.get_mut(id).ok_or(StoreError::NotFound(*id))?);
        if record.status != KeyStatus::Revoked {
            record.status = KeyStatus::Revoked;
            record.set_revoked_at(Some(at));
        }
        Ok(())
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        let mut found: Vec<_> = (self.records.read().unwrap().values())
            .filter(|record| *record.owner == *owner)
            .cloned()
            .collect();
        found.sort_by_key(|record| (record.created_at(), record.id));
        Ok(found)
    }
}

/// A sink of its own, with its own async `flush`.
#[derive(Debug, Default)]
struct Buffered {
    pending: Mutex<Vec<UsageEvent>>,
    delivered: tokio::sync::Mutex<Vec<UsageEvent>>,
}

#[keyward::async_trait]
impl UsageSink for Buffered {
    fn record(&self, event: UsageEvent) {
        self.pending.lock().unwrap().push(event);
    }

    async fn flush(&self) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap());
        tokio::task::yield_now().await; // as if it wrote somewhere
        self.delivered.lock().await.extend(batch);
    }
}

/// An exporter of its own, for `BatchingSink`.
struct Collect(Arc<Mutex<Vec<UsageEvent>>>);

#[keyward::async_trait]
impl UsageExporter for Collect {
    async fn export(&mut self, batch: Vec<UsageEvent>) {
        tokio::task::yield_now().await;
        self.0.lock().unwrap().extend(batch);
    }
}

fn app(store: Arc<MapStore>, format: KeyFormat, sink: impl UsageSink) -> Router {
    Router::new()
        .route(
            "/me",
            get(|who: Principal| async move { who.owner().to_owned() }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(UsageLayer::new(sink))
                .layer(AuthLayer::new(store, format)),
        )
}

fn get_me(key: &str) -> Request<Body> {
    Request::get("/me")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn a_store_and_a_sink_written_with_keyward_async_trait_work_through_the_layers() {
    let format = KeyFormat::new("sk_test").unwrap();
    let store = Arc::new(MapStore::default());
    let sink = Arc::new(Buffered::default());
    let manager =
        KeyManager::new(Arc::clone(&store), format.clone()).with_events(Arc::clone(&sink));
    let app = app(Arc::clone(&store), format, Arc::clone(&sink));

    let issued = manager.issue(IssueOptions::new("acme")).await.unwrap();
    let key = issued.key.expose_secret().to_owned();
    let response = app.clone().oneshot(get_me(&key)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    manager.revoke(&issued.record.id).await.unwrap();
    let response = app.oneshot(get_me(&key)).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Nothing is delivered before the sink's own async flush runs.
    assert!(sink.delivered.lock().await.is_empty());
    sink.flush().await;
    let delivered = sink.delivered.lock().await;
    let kinds: Vec<_> = delivered.iter().map(UsageEvent::kind).collect();
    assert!(
        kinds.contains(&EventKind::Lifecycle(Lifecycle::Issued)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&EventKind::Lifecycle(Lifecycle::Revoked)),
        "{kinds:?}"
    );
    let outcomes: Vec<_> = delivered
        .iter()
        .filter(|event| event.kind() == EventKind::Request)
        .map(UsageEvent::outcome)
        .collect();
    assert_eq!(outcomes.len(), 2);
    assert_eq!(outcomes[0], Outcome::Allowed);
    assert!(matches!(outcomes[1], Outcome::Refused(_)));

    // The store keeps the revocation final, as the trait asks.
    let record = store.find(&issued.record.id).await.unwrap().unwrap();
    assert_eq!(record.status, KeyStatus::Revoked);
    assert!(record.revoked_at().is_some());
    let again = (*record).clone().with_status(KeyStatus::Active);
    assert!(matches!(
        store.update(again).await,
        Err(StoreError::Revoked(_))
    ));
}

#[tokio::test]
async fn an_exporter_written_with_keyward_async_trait_gets_every_batch() {
    let exported = Arc::new(Mutex::new(Vec::new()));
    let sink = BatchingSink::new(Collect(Arc::clone(&exported)));
    let id: KeyId = "abcdefABCDEF".parse().unwrap();
    for _ in 0..3 {
        sink.record(UsageEvent::lifecycle(
            Lifecycle::Issued,
            id,
            "acme",
            SystemTime::now(),
        ));
    }
    sink.shutdown().await;
    assert_eq!(exported.lock().unwrap().len(), 3);
}
