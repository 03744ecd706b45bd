//! [`RequireScopes`]: refuse requests whose key lacks the scopes a route
//! requires.
//!
//! `RequireScopes::all([...])` admits a key that is granted every listed
//! scope; `RequireScopes::any([...])` one granted at least one of them.
//! Grants follow [`ScopeSet::grants`](crate::scope::ScopeSet::grants), so a
//! key holding `pets:*` passes `RequireScopes::all(["pets:write"])`.
//!
//! A refused request gets `403` with
//! `WWW-Authenticate: Bearer realm="api", error="insufficient_scope", scope="..."`
//! (RFC 6750 §3.1) and a problem+json body naming the scopes: for `all`, the
//! ones the key lacks; for `any`, the alternatives. The typed
//! [`Rejection`](crate::reject::Rejection) (reason
//! [`InsufficientScope`](crate::reject::RejectReason::InsufficientScope),
//! with the key id) rides in the response's extensions.
//!
//! # Stacking order
//!
//! `RequireScopes` reads the [`Principal`](crate::auth::Principal) that
//! [`AuthLayer`](crate::auth::AuthLayer) puts into the request, so it must
//! sit *inside* `AuthLayer`: in axum, `Router::layer(auth)` on the router
//! and `route_layer(RequireScopes::...)` on each route (a layer added later
//! wraps the ones before it, so `.route_layer(scopes).layer(auth)` runs the
//! auth first). With `tower::ServiceBuilder`, list `AuthLayer` first.
//!
//! Stacked the wrong way round there is no `Principal` yet; the layer then
//! answers `401` (reason `MissingKey`), never passes the request on.
//!
//! # Example
//!
//! ```
//! use std::time::SystemTime;
//! use axum::{routing::{get, post}, Router};
//! use http::{Request, StatusCode};
//! use keyward::{AuthLayer, KeyFormat, KeyGenerator, KeyHasher, KeyRecord, KeyStore, MemoryStore, RequireScopes};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let format = KeyFormat::new("sk_live")?;
//! let store = MemoryStore::new();
//! let reader = KeyGenerator::new(format.clone()).generate()?;
//! store.insert(
//!     KeyRecord::new(reader.id(), KeyHasher::sha256().hash(reader.secret()), "acme", SystemTime::now())
//!         .with_scopes("pets:read".parse()?),
//! ).await?;
//!
//! let app = Router::new()
//!     .route("/pets", get(|| async { "[]" }).route_layer(RequireScopes::try_all(["pets:read"])?))
//!     .route("/pets/new", post(|| async { "made" }).route_layer(RequireScopes::try_any(["pets:write", "pets:admin"])?))
//!     .layer(AuthLayer::new(store, format));     // outermost: runs first
//!
//! let bearer = format!("Bearer {}", reader.expose_secret());
//! let read = Request::get("/pets").header("authorization", &bearer).body(axum::body::Body::empty())?;
//! assert_eq!(app.clone().oneshot(read).await?.status(), StatusCode::OK);
//!
//! let write = Request::post("/pets/new").header("authorization", &bearer).body(axum::body::Body::empty())?;
//! let response = app.oneshot(write).await?;
//! assert_eq!(response.status(), StatusCode::FORBIDDEN);
//! assert_eq!(
//!     response.headers()["www-authenticate"],
//!     r#"Bearer realm="api", error="insufficient_scope", scope="pets:admin pets:write""#
//! );
//! # Ok(())
//! # }
//! ```

mod layer;
mod service;

pub use crate::future::ResponseFuture;
pub use layer::RequireScopes;
pub use service::RequireScopesService;
