//! API-key authentication for tower, axum and tonic services, added by
//! stacking layers: hashed keys, scopes, expiry and revocation, in-process.
//!
//! # Quick start
//!
//! ```
//! use std::time::SystemTime;
//! use axum::{routing::get, Router};
//! use keyward::{AuthLayer, KeyFormat, KeyGenerator, KeyHasher, KeyRecord, KeyStore, MemoryStore, Principal};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let format = KeyFormat::new("sk_live")?;
//! let key = KeyGenerator::new(format.clone()).generate()?;   // give key.expose_secret() to the client
//! let store = MemoryStore::new();
//! store.insert(KeyRecord::new(key.id(), KeyHasher::sha256().hash(key.secret()), "acme", SystemTime::now())).await?;
//! let app: Router = Router::new()
//!     .route("/me", get(|who: Principal| async move { who.owner().to_owned() }))
//!     .layer(AuthLayer::new(store, format));
//! # Ok(())
//! # }
//! ```
//!
//! # Modules
//!
//! - [`key`]: the key format, generator and hashing;
//! - [`record`] and [`store`]: what is kept about a key, and where;
//! - [`auth`]: [`AuthLayer`] and the [`Principal`] it hands to your service;
//! - [`credential`]: the kinds of credential besides API keys, and the
//!   [`Verifier`](credential::Verifier) trait that plugs one into [`AuthLayer`];
//! - [`scope`]: scopes and wildcard grants;
//! - [`limit`]: per-key rate limits and credits, [`RateLimitLayer`];
//! - [`authorize`]: [`RequireScopes`], the per-route scope check;
//! - [`manager`]: [`KeyManager`]: issue, rotate, revoke, disable keys;
//! - [`reject`]: why a request was refused and how that is answered;
//! - [`stack`]: [`Keyward`], one configuration (store, format, hasher,
//!   clock, limiter, usage sink) that hands out every layer and a
//!   [`KeyManager`] set up alike;
//! - [`clock`]: injected time, for tests that do not sleep;
//! - [`body`]: the response body type of the layers;
//! - [`grpc`]: refusals as gRPC statuses, and scopes per gRPC method.
//! - [`usage`]: usage records and the audit trail ([`UsageLayer`](usage::UsageLayer)).
//! - `scanning` (feature `secret-scanning`): GitHub's secret-scanning
//!   webhook, revoking keys pushed to public repositories.
//! - `signature` and `content_digest` (feature `signatures`): requests
//!   signed with key pairs (HTTP Message Signatures, RFC 9421) and their
//!   bodies checked against `Content-Digest` (RFC 9530).
//! - `jwt` (feature `jwt`): JWT-based keys, verified on the injected
//!   clock with algorithms fixed per key, revocable through the store.
//! - `metrics` (feature `metrics`): the metrics the layers report through
//!   the `metrics` facade, each with its type, labels and meaning.
//! - `postgres` (feature `postgres`): names and migrations shared by the PostgreSQL components.
//!
//! # Implementing keyward's traits
//!
//! The backends are traits: [`KeyStore`], [`Limiter`](limit::Limiter),
//! [`UsageSink`](usage::UsageSink) and `usage::UsageExporter` (feature
//! `tokio`). Their async
//! methods are declared with [`async_trait`](macro@async_trait), which keyward re-exports: put
//! `#[keyward::async_trait]` on your `impl` and write the methods as
//! `async fn`, with no `async-trait` dependency of your own. Without the
//! attribute, an `async fn` in the impl fails with E0195 ("lifetime
//! parameters or bounds on method do not match the trait declaration");
//! each trait's docs have an example.
//!
//! # Feature flags
//!
//! - `axum`: [`Principal`] implements axum's `FromRequestParts`.
//! - `serde`: `Serialize`/`Deserialize` for records, ids, hashes and scopes
//!   (stored shapes: see [`KeyRecord`]); `Serialize` for usage events and
//!   counters, outcomes, rejection reasons and [`Principal`].
//! - `test-util`: [`store::conformance`], the suite every store runs.
//! - `tokio`: [`usage::BatchingSink`], usage exported in batches from a task;
//!   [`store::CachedStore`] and [`store::invalidation`].
//! - `secret-scanning`: `scanning::SecretScanning`, the endpoint for GitHub's
//!   secret-scanning partner program (enables `axum`; adds p256 and serde_json).
//! - `signatures`: `signature` (verify and sign requests: Ed25519 and
//!   HMAC-SHA-256) and `content_digest` (adds ed25519-dalek, sfv and
//!   base64ct).
//! - `jwt`: `jwt` (JWT-based keys: `JwtVerifier`, `JwtIssuer`; adds
//!   jsonwebtoken with its RustCrypto backend, serde and serde_json).
//! - `metrics`: `metrics`, counters and histograms through the `metrics`
//!   facade (any exporter): authentication outcomes by reason and kind
//!   of credential, limiter decisions by policy, throttle hits, store and
//!   limiter latency and errors, cache hits and misses, dropped usage
//!   events. Never a key id or an owner in a label. Without the feature,
//!   none of it is compiled.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
pub mod auth;
pub mod authorize;
pub mod body;
pub mod clock;
#[cfg(feature = "signatures")]
#[cfg_attr(docsrs, doc(cfg(feature = "signatures")))]
pub mod content_digest;
pub mod credential;
mod future;
pub mod grpc;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub mod jwt;
pub mod key;
pub mod limit;
pub mod manager;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
pub mod record;
pub mod reject;
#[cfg(feature = "serde")]
mod rfc3339;
#[cfg(feature = "secret-scanning")]
#[cfg_attr(docsrs, doc(cfg(feature = "secret-scanning")))]
pub mod scanning;
pub mod scope;
#[cfg(feature = "signatures")]
#[cfg_attr(docsrs, doc(cfg(feature = "signatures")))]
pub mod signature;
pub mod stack;
pub mod store;
mod unwind;
pub mod usage;

/// The attribute keyward's async traits are declared with
/// ([`KeyStore`], [`Limiter`](limit::Limiter), [`UsageSink`](usage::UsageSink),
/// `usage::UsageExporter`): put `#[keyward::async_trait]`
/// on your `impl` of them, and you need no `async-trait` dependency of your
/// own. A plain `async fn` in such an impl, without it, fails with E0195.
pub use async_trait::async_trait;
pub use auth::{AuthLayer, Principal};
pub use authorize::RequireScopes;
pub use credential::CredentialKind;
pub use key::{ApiKey, KeyFormat, KeyGenerator, KeyHash, KeyHasher, KeyId};
pub use limit::{Limits, MemoryLimiter, RateLimitLayer};
pub use manager::KeyManager;
pub use record::Environment;
pub use record::{KeyRecord, KeyStatus};
pub use reject::{RejectReason, Rejection};
pub use scope::{Scope, ScopeSet};
pub use stack::Keyward;
pub use store::{KeyStore, MemoryStore};
