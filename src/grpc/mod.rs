//! gRPC: refusals in gRPC's own terms, and scopes per gRPC method.
//!
//! The layers of this crate work unchanged around a tonic server
//! (`Server::builder().layer(...)`) and around tonic services mounted in an
//! axum router: they are generic over the request and response bodies, and
//! gRPC metadata are HTTP/2 headers, so `authorization: Bearer <key>` and
//! `x-api-key: <key>` are read exactly as for HTTP. tonic is not a
//! dependency of this crate.
//!
//! # Refusals
//!
//! [`Responder::refuse`](crate::reject::Responder::refuse), through which
//! every layer refuses, looks at the request's [`Protocol`]. A request whose
//! `content-type` is `application/grpc` (or `application/grpc+proto`,
//! `application/grpc;...`), or gRPC-web (`application/grpc-web...`,
//! `application/grpc-web-text...`), is refused with a *trailers-only*
//! response: HTTP `200`, no body, and these headers, which a gRPC client
//! reads as the call's status:
//!
//! | header | value |
//! |---|---|
//! | `content-type` | `application/grpc` (`application/grpc-web+proto`, `application/grpc-web-text+proto` for gRPC-web) |
//! | `grpc-status` | the [`GrpcCode`] of the reason: `16`, `7`, `8` or `14` |
//! | `grpc-message` | a short, percent-encoded sentence: the coarse class, never the key, its id or which way a key was bad |
//! | `retry-after` | for `RESOURCE_EXHAUSTED` with a known delay: whole seconds, rounded up, at least 1 |
//! | `grpc-retry-pushback-ms` | the same delay in milliseconds, rounded up; gRPC clients with a retry policy wait this long before retrying |
//!
//! A client reads the last two as metadata of the error status (tonic:
//! `status.metadata().get("retry-after")`). The [`Rejection`] is in the
//! response's extensions, as for HTTP. A [`Responder::custom`] answers HTTP
//! requests only: a gRPC client cannot read an HTTP error body, so gRPC
//! requests always get the trailers-only form. HTTP requests are answered
//! exactly as before, and a gRPC request is never answered in HTTP form.
//!
//! # Scopes per method
//!
//! tonic has no `route_layer`, so [`MethodScopesLayer`] matches the request
//! path, `/package.Service/Method`, against patterns: a method
//! (`/grpc.health.v1.Health/Check`) or a whole service
//! (`/grpc.health.v1.Health/*`); a method's own pattern wins over its
//! service's. The key (the [`Principal`](crate::Principal) that
//! [`AuthLayer`](crate::AuthLayer) puts into the request) must hold every
//! listed scope, else `PERMISSION_DENIED` (HTTP `403 insufficient_scope`).
//! Methods no pattern matches are refused, unless you opt in with
//! [`MethodScopesLayer::allow_unlisted`]. Without a `Principal` (the layer
//! is not inside `AuthLayer`) every call is refused as `UNAUTHENTICATED`.
//!
//! [`Rejection`]: crate::reject::Rejection
//! [`Responder::custom`]: crate::reject::Responder::custom
//!
//! # Example
//!
//! ```
//! use std::time::SystemTime;
//! use http::{Request, Response, StatusCode};
//! use keyward::grpc::MethodScopesLayer;
//! use keyward::{AuthLayer, KeyFormat, KeyGenerator, KeyHasher, KeyRecord, KeyStore, MemoryStore};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let format = KeyFormat::new("sk_live")?;
//! let key = KeyGenerator::new(format.clone()).generate()?;
//! let store = MemoryStore::new();
//! let record = KeyRecord::new(key.id(), KeyHasher::sha256().hash(key.secret()), "acme", SystemTime::now())
//!     .with_scopes("health:read".parse()?);
//! store.insert(record).await?;
//!
//! let service = ServiceBuilder::new()
//!     .layer(AuthLayer::new(store, format))
//!     .layer(
//!         MethodScopesLayer::new()
//!             .method("/grpc.health.v1.Health/*", "health:read".parse()?)?
//!             .method("/grpc.health.v1.Health/Watch", "health:watch".parse()?)?,
//!     )
//!     .service_fn(|_: Request<String>| async { Ok::<_, std::convert::Infallible>(Response::new(String::new())) });
//!
//! let call = |method: &str, key: Option<&str>| {
//!     let mut request = Request::post(method).header("content-type", "application/grpc");
//!     if let Some(key) = key {
//!         request = request.header("authorization", format!("Bearer {key}"));
//!     }
//!     request.body(String::new()).unwrap()
//! };
//! let grpc_status = |response: &Response<_>| response.headers().get("grpc-status").cloned();
//!
//! // No key: HTTP 200, grpc-status 16 (UNAUTHENTICATED).
//! let response = service.clone().oneshot(call("/grpc.health.v1.Health/Check", None)).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(grpc_status(&response).unwrap(), "16");
//!
//! // The key holds health:read: Check is served, Watch is PERMISSION_DENIED (7).
//! let secret = Some(key.expose_secret());
//! let response = service.clone().oneshot(call("/grpc.health.v1.Health/Check", secret)).await?;
//! assert_eq!(grpc_status(&response), None);
//! let response = service.clone().oneshot(call("/grpc.health.v1.Health/Watch", secret)).await?;
//! assert_eq!(grpc_status(&response).unwrap(), "7");
//! // An unlisted method is refused too.
//! let response = service.oneshot(call("/pets.Pets/List", secret)).await?;
//! assert_eq!(grpc_status(&response).unwrap(), "7");
//! # Ok(())
//! # }
//! ```
//!
//! # With a tonic server
//!
//! ```
//! use keyward::grpc::MethodScopesLayer;
//! use keyward::{AuthLayer, KeyFormat, MemoryStore};
//! use tonic::transport::Server;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (store, format) = (MemoryStore::new(), KeyFormat::new("sk_live")?);
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! let server = Server::builder()
//!     .layer(AuthLayer::new(store, format)) // outermost: authenticates
//!     .layer(
//!         MethodScopesLayer::new() // then checks the method's scopes
//!             .method("/grpc.health.v1.Health/*", "health:read".parse()?)?,
//!     )
//!     .add_service(health)
//!     .serve("127.0.0.1:50051".parse()?);
//! # drop(server); // not served here
//! # Ok(())
//! # }
//! ```

mod layer;
mod method;
mod service;
mod status;

pub use crate::future::ResponseFuture;
pub use layer::MethodScopesLayer;
pub use method::MethodPatternError;
pub use service::MethodScopes;
pub use status::{GrpcCode, Protocol, GRPC_MESSAGE, GRPC_RETRY_PUSHBACK_MS, GRPC_STATUS};

pub(crate) use status::trailers_only;
