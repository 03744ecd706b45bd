//! [`AuthLayer`]: authenticate every request by its API key.
//!
//! For each request the layer:
//!
//! 1. finds the key in the configured [`KeySource`]s (by default
//!    `Authorization: Bearer` and `X-API-Key`), refusing a key sent twice or
//!    two different keys (`400`), and values that are not visible ASCII;
//! 2. parses it — exact length, prefix, alphabet, checksum — with no I/O;
//! 3. looks the record up by its public id and hashes the secret; an unknown
//!    id is checked against a stand-in record instead, through the same
//!    steps, and a refused key takes at least a floor of time from its
//!    look-up on ([`AuthLayer::refusal_floor`]), so that timing does not
//!    tell which ids exist (SECURITY.md, "Timing");
//! 4. compares the hashes in constant time, then checks status, expiry and
//!    not-before against the injected [`Clock`](crate::clock::Clock)
//!    (whatever the secret: every refusal takes the same steps), then
//!    the key's restrictions: its environment against the service's
//!    ([`AuthLayer::environment`]), the client's address against its
//!    allowed networks (see [`client`]), and, for a publishable key or one
//!    with allowed origins, the request's `Origin` (or `Referer`) against
//!    them (see [`origin`]);
//! 5. removes the credential from the request (configurable), inserts the
//!    [`Principal`] into the request's extensions (and into the
//!    [`PrincipalSlot`] an outer layer planted there, if any), and
//!    calls the inner service.
//!
//! Refusals are `Ok` responses (see [`reject`](crate::reject)): `401` with
//! `WWW-Authenticate: Bearer`, the same for every kind of bad key (expired,
//! disabled and revoked included); `403` when a restriction refuses a good
//! key (`403` too, with its own reason, when a key's origin check refuses
//! the request); `503` when the store fails, panics or takes longer than the store
//! timeout (fail closed; 5 s by default with the `tokio` feature, see
//! [`AuthLayer::store_timeout`]). The exact reason goes to the logs
//! (target `keyward::auth`, never the key) and to the [`Rejection`] in the
//! response's extensions.
//!
//! [`Rejection`]: crate::reject::Rejection
//!
//! # The inner service must be `Clone`
//!
//! [`AuthService`] is a `Service` only when the service it wraps is `Clone`
//! (otherwise calls such as `oneshot` fail with E0599, "trait bounds were
//! not satisfied"). A store that cannot answer at once (a database, a cache
//! miss: [`KeyStore::find_immediate`](crate::store::KeyStore::find_immediate)
//! is `None`) is awaited before the inner service is called, so the ready
//! inner service moves into the response future and `AuthService` keeps a
//! fresh clone (tower's clone-and-swap). axum's `Router`, tonic's services
//! and `tower::service_fn` are `Clone`. A service that is not goes behind
//! [`tower::buffer::Buffer`](https://docs.rs/tower/latest/tower/buffer/struct.Buffer.html)
//! (tower's feature `buffer`): one task owns the service, and the `Buffer`
//! handles in front of it are `Clone`. `Buffer` needs a tokio runtime, and
//! its errors are `tower::BoxError`. (`tower::util::BoxCloneService` is no
//! way round: it boxes a service that is `Clone` already.)
//!
//! [`RateLimitLayer`](crate::limit::RateLimitLayer) asks the same, for its
//! limiter; [`UsageLayer`](crate::usage::UsageLayer),
//! [`RequireScopes`](crate::authorize::RequireScopes) and
//! [`MethodScopesLayer`](crate::grpc::MethodScopesLayer) decide before
//! calling the inner service and take any service, `Clone` or not.
//!
//! ```
//! use std::convert::Infallible;
//! use std::task::{Context, Poll};
//! use http::{Request, Response};
//! use keyward::{AuthLayer, KeyFormat, MemoryStore};
//! use tower::buffer::BufferLayer;
//! use tower::{Service, ServiceBuilder};
//!
//! /// A service that owns something it cannot share: not `Clone`.
//! struct Ledger(Vec<String>);
//!
//! impl Service<Request<String>> for Ledger {
//!     type Response = Response<String>;
//!     type Error = Infallible;
//!     type Future = std::future::Ready<Result<Response<String>, Infallible>>;
//!
//!     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
//!         Poll::Ready(Ok(()))
//!     }
//!
//!     fn call(&mut self, request: Request<String>) -> Self::Future {
//!         self.0.push(request.uri().path().to_owned());
//!         std::future::ready(Ok(Response::new(self.0.len().to_string())))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let format = KeyFormat::new("sk_live")?;
//! let service = ServiceBuilder::new()
//!     .layer(AuthLayer::new(MemoryStore::new(), format))
//!     .layer(BufferLayer::new(1024)) // makes `Ledger` Clone; needs a tokio runtime
//!     .service(Ledger(Vec::new()));
//! # let _ = service;
//! # Ok(())
//! # }
//! ```
//!
//! # Example
//!
//! ```
//! use std::time::SystemTime;
//! use http::{Request, Response, StatusCode};
//! use keyward::auth::{AuthLayer, Principal};
//! use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
//! use keyward::record::KeyRecord;
//! use keyward::store::{KeyStore, MemoryStore};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let format = KeyFormat::new("sk_live")?;
//! let key = KeyGenerator::new(format.clone()).generate()?;
//! let store = MemoryStore::new();
//! let hash = KeyHasher::sha256().hash(key.secret());
//! store.insert(KeyRecord::new(key.id(), hash, "acme", SystemTime::now())).await?;
//!
//! let service = ServiceBuilder::new()
//!     .layer(AuthLayer::new(store, format))
//!     .service_fn(|request: Request<String>| async move {
//!         let owner = request.extensions().get::<Principal>().unwrap().owner().to_owned();
//!         Ok::<_, std::convert::Infallible>(Response::new(owner))
//!     });
//!
//! let request = Request::get("/")
//!     .header("authorization", format!("Bearer {}", key.expose_secret()))
//!     .body(String::new())?;
//! let response = service.clone().oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! let response = service.oneshot(Request::get("/").body(String::new())?).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # Ok(())
//! # }
//! ```

mod authenticator;
pub mod client;
mod future;
mod layer;
pub mod origin;
mod principal;
mod service;
mod source;
mod throttle;

pub use authenticator::{
    Authenticator, DEFAULT_REFUSAL_FLOOR, DEFAULT_STORE_TIMEOUT, MAX_REFUSAL_FLOOR,
};
pub use future::ResponseFuture;
pub use layer::AuthLayer;
#[cfg(feature = "axum")]
pub use principal::MissingPrincipal;
pub use principal::{Principal, PrincipalSlot};
pub use service::AuthService;
pub use source::{KeySource, MAX_BASIC_LEN};
pub use throttle::FailureThrottle;
