//! Per-key rate limits and credit quotas, answered in the IETF `RateLimit`
//! fields.
//!
//! Each [`KeyRecord`](crate::KeyRecord) carries [`Limits`]: named
//! [`RatePolicy`]s (a quota per window, with a burst) and at most one
//! [`CreditPolicy`] (a balance that requests spend by their [`Cost`] and
//! that refills on a schedule). Give the same `Limits` to every key of a
//! tier; each key still has its own budget.
//!
//! [`RateLimitLayer`] goes inside [`AuthLayer`](crate::AuthLayer). For each
//! authenticated request it asks the [`Limiter`] for one [`Decision`] on
//! all of the key's policies at once, all or nothing: either every policy
//! allows the request and each is spent, or none is (a request refused by
//! the hourly rate spends no credit and nothing of the per-second rate).
//! It answers:
//!
//! - on every response, `RateLimit-Policy: "burst";q=5;w=1` and
//!   `RateLimit: "burst";r=4;t=1` (draft-ietf-httpapi-ratelimit-headers-10;
//!   one member per policy; `r` what remains, `t` the seconds until the
//!   policy is full again, or, for a policy that refused, until it can
//!   allow the request; the key is never sent);
//! - on a denial, `429` with `Retry-After` equal to the longest `t` of the
//!   refusing policies, rounded up, and a problem body of type
//!   `https://iana.org/assignments/http-problem-types#quota-exceeded`
//!   naming each of them in `violated-policies`;
//! - if the limiter fails, panics or takes longer than its timeout (5 s
//!   by default with the `tokio` feature, see [`RateLimitLayer::timeout`]),
//!   `503` with reason
//!   [`LimiterUnavailable`](crate::RejectReason::LimiterUnavailable) (fail
//!   closed), unless you opted into
//!   [`insecure_fail_open`](RateLimitLayer::insecure_fail_open).
//!
//! [`MemoryLimiter`] keeps the state in this process with GCRA (governor's
//! algorithm), bounded in size. `RedisLimiter` (feature `redis`) shares
//! it between processes: one atomic round trip per request, on the Redis
//! server's clock. Any other backend implements the same
//! [`Limiter`] trait; the arithmetic is public ([`Gcra`],
//! [`Limits::decide`], [`PolicyState`]), so that a backend only stores
//! states and runs the decision in its own transaction.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use axum::{body::Body, routing::get, Router};
//! use http::{Request, StatusCode};
//! use keyward::limit::{Limits, MemoryLimiter, RateLimitLayer, RatePolicy};
//! use keyward::{AuthLayer, KeyFormat, KeyGenerator, KeyHasher, KeyRecord, KeyStore, MemoryStore};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let format = KeyFormat::new("sk_live")?;
//! let key = KeyGenerator::new(format.clone()).generate()?;
//! let free_tier = Limits::new([RatePolicy::new("burst", 2, Duration::from_secs(1))?.into()])?;
//! let store = MemoryStore::new();
//! store
//!     .insert(
//!         KeyRecord::new(key.id(), KeyHasher::sha256().hash(key.secret()), "acme", SystemTime::now())
//!             .with_limits(free_tier),
//!     )
//!     .await?;
//!
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(RateLimitLayer::new(MemoryLimiter::new()))
//!     .layer(AuthLayer::new(store, format)); // the last layer added runs first
//!
//! let request = || {
//!     Request::get("/")
//!         .header("x-api-key", key.expose_secret())
//!         .body(Body::empty())
//!         .unwrap()
//! };
//! let first = app.clone().oneshot(request()).await?;
//! assert_eq!(first.status(), StatusCode::OK);
//! assert_eq!(first.headers()["ratelimit-policy"], r#""burst";q=2;w=1"#);
//! assert_eq!(first.headers()["ratelimit"], r#""burst";r=1;t=1"#);
//!
//! app.clone().oneshot(request()).await?;
//! let third = app.oneshot(request()).await?;
//! assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(third.headers()["retry-after"], "1");
//! # Ok(())
//! # }
//! ```

mod bounded;
mod cell;
mod decide;
mod gcra;
mod layer;
mod limiter;
mod memory;
mod policy;
#[cfg(feature = "redis")]
mod redis;

pub(crate) use bounded::{forgettable, BoundedMap, Expiring};
pub(crate) use cell::LimitCell;
pub use decide::PolicyState;
pub use gcra::{Gcra, GcraOutcome};
pub use layer::{
    Cost, RateLimit, RateLimitLayer, ResponseFuture, DEFAULT_LIMITER_TIMEOUT, RATELIMIT,
    RATELIMIT_POLICY,
};
pub(crate) use limiter::shared as shared_limiter;
pub use limiter::{Decision, LimitError, Limiter, Verdict};
pub use memory::MemoryLimiter;
pub use policy::{CreditPolicy, Limits, Policy, PolicyError, RatePolicy};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{InvalidPrefix, RedisLimiter};
