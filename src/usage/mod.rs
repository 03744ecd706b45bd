//! Usage recording and audit: [`UsageLayer`] turns every request into one
//! [`UsageEvent`] and hands it to a [`UsageSink`].
//!
//! Put the layer outermost, outside [`AuthLayer`](crate::auth::AuthLayer).
//! When the response is ready it records: when the request arrived, the key
//! id and owner (when a key authenticated — also when an inner layer then
//! refused it, because `AuthLayer` puts the [`Principal`] into the response
//! too), method, route (axum's `MatchedPath` when present, else the path
//! without its query string), status, [`Outcome`] (allowed, or the
//! [`RejectReason`](crate::reject::RejectReason) that the refusing layer
//! left in the response's extensions), latency, body sizes when known, and
//! your [`UsageTags`]. It never sees a key: only ids.
//!
//! The same events carry the audit trail ([`Lifecycle`]): the layer emits
//! [`Lifecycle::FirstUsed`] and [`Lifecycle::ExpiredOnUse`]; key management
//! emits issued, rotated, revoked, disabled and enabled through
//! [`UsageEvent::lifecycle`].
//!
//! Sinks, all non-blocking on the request path:
//!
//! - [`AggregatingSink`]: per-key counters in memory, with a
//!   [`snapshot`](AggregatingSink::snapshot) for dashboards and billing;
//! - [`BatchingSink`] (feature `tokio`): bounded per-thread buffers that a
//!   background task hands in batches to your [`UsageExporter`]; drops (and
//!   counts) events rather than slow a request; drains on flush and
//!   shutdown;
//! - [`RollupSink`]: per-key, per-minute counts in memory, that answer
//!   queries by key, owner and time range ([`UsageSource`]);
//! - [`TracingSink`]: one log line an event;
//! - `()`, which discards, [`sink_fn`] for a closure, and `(A, B)` for two.
//!
//! Across processes, behind a `BatchingSink`: `PgUsage` (feature
//! `postgres`) exports raw events and per-minute rollups into PostgreSQL
//! and answers [`UsageSource`] queries over every process's usage;
//! `RedisUsage` (feature `redis`) keeps per-minute and per-day counters in
//! Redis that any process reads.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::SystemTime;
//! use http::{Request, Response};
//! use keyward::auth::AuthLayer;
//! use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
//! use keyward::record::KeyRecord;
//! use keyward::store::{KeyStore, MemoryStore};
//! use keyward::usage::{AggregatingSink, TracingSink, UsageLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let format = KeyFormat::new("sk_live")?;
//! let key = KeyGenerator::new(format.clone()).generate()?;
//! let store = MemoryStore::new();
//! let hash = KeyHasher::sha256().hash(key.secret());
//! store.insert(KeyRecord::new(key.id(), hash, "acme", SystemTime::now())).await?;
//!
//! let usage = AggregatingSink::new();
//! let service = ServiceBuilder::new()
//!     .layer(UsageLayer::new((usage.clone(), TracingSink::info())))
//!     .layer(AuthLayer::new(store, format))
//!     .service(service_fn(|_: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("ok")))
//!     }));
//!
//! let request = Request::get("/pets")
//!     .header("authorization", format!("Bearer {}", key.expose_secret()))
//!     .body(String::new())?;
//! service.clone().oneshot(request).await?;
//! service.oneshot(Request::get("/pets").body(String::new())?).await?; // no key: 401
//!
//! let keys = usage.snapshot();
//! assert_eq!(keys[0].key_id, Some(key.id()));
//! assert_eq!((keys[0].requests, keys[0].allowed), (1, 1));
//! assert_eq!(usage.anonymous().denied, 1);
//! # Ok(())
//! # }
//! ```
//!
//! [`Principal`]: crate::auth::Principal

mod aggregate;
#[cfg(feature = "tokio")]
mod batch;
#[cfg(feature = "test-util")]
pub mod conformance;
mod event;
#[cfg(any(feature = "postgres", feature = "redis"))]
mod export;
mod future;
mod layer;
mod log;
#[cfg(feature = "postgres")]
mod postgres;
mod query;
#[cfg(feature = "redis")]
mod redis;
mod rollup;
mod sink;
mod stripe;

#[cfg(feature = "postgres")]
pub use self::postgres::{PgUsage, PgUsageExporter};
#[cfg(feature = "redis")]
pub use self::redis::{InvalidRedisPrefix, RedisSnapshot, RedisUsage};
pub use aggregate::{AggregatingSink, KeyUsage, StatusClasses};
#[cfg(feature = "tokio")]
pub use batch::{BatchWorker, BatchingSink, BatchingSinkBuilder, UsageExporter};
pub use event::{EventKind, Lifecycle, Outcome, UsageEvent, UsageTags};
#[cfg(any(feature = "postgres", feature = "redis"))]
pub use export::ExportStats;
pub use future::ResponseFuture;
pub use layer::{UsageLayer, UsageService, DEFAULT_FIRST_USED_CAPACITY};
pub use log::TracingSink;
pub use query::{
    Step, TimeRange, UsageCounts, UsageQuery, UsageQueryError, UsageRow, UsageScope, UsageSource,
};
pub use rollup::RollupSink;
pub use sink::{sink_fn, SinkFn, UsageSink};
