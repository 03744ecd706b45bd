//! [`ContentDigestLayer`]: request bodies checked against their
//! `Content-Digest` field (RFC 9530) as they stream (feature `signatures`).
//!
//! A signature (see [`signature`](crate::signature)) covers the
//! `Content-Digest` field, not the body: this layer proves that the body
//! received is the one the field describes. For a request with
//! `Content-Digest: sha-256=:…:` (or `sha-512`), it:
//!
//! 1. refuses a malformed field (`400`) and a `Content-Length` above the
//!    maximum (`413`, default 2 MiB) before the inner service runs;
//! 2. hashes the body as it streams, holding back its last frame until the
//!    body has ended and the digest matches; a mismatch (or a body that
//!    grows past the maximum) ends the body with a
//!    [`ContentDigestError`] instead, so the handler never reads a
//!    tampered body as a good one;
//! 3. leaves a [`DigestStatus`] in the request's extensions, which
//!    signature verification requires (fail closed).
//!
//! Requests without the field pass through unchecked and unlimited (their
//! body type changes to [`DigestBody`], which forwards it as it is).
//!
//! # Stacking order
//!
//! Outside the authentication layer, so that it runs first:
//!
//! ```text
//! UsageLayer → ContentDigestLayer → AuthLayer (signatures) → RateLimitLayer → scopes → handler
//! ```
//!
//! With axum's `Router::layer`, the layer added *last* is the outermost:
//! add `ContentDigestLayer` after the authentication layer. A signed
//! request that reaches verification without passing through this layer is
//! refused with `500` ([`Misconfigured`](crate::RejectReason::Misconfigured))
//! and an error in the logs.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use keyward::content_digest::{ContentDigestError, ContentDigestLayer, DigestBody};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let service = ServiceBuilder::new()
//!     .layer(ContentDigestLayer::new())
//!     .service_fn(|request: Request<DigestBody<Full<Bytes>>>| async move {
//!         // What an extractor does: read the whole body, or fail.
//!         let answer = match request.into_body().collect().await {
//!             Ok(body) => body.to_bytes(),
//!             Err(error) if error.downcast_ref() == Some(&ContentDigestError::Mismatch) => {
//!                 Bytes::from("tampered")
//!             }
//!             Err(_) => Bytes::from("unreadable"),
//!         };
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(answer)))
//!     });
//!
//! // RFC 9530's example: the SHA-256 of `{"hello": "world"}`.
//! let digest = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
//! let good = Request::post("/").header("content-digest", digest)
//!     .body(Full::new(Bytes::from(r#"{"hello": "world"}"#)))?;
//! let body = service.clone().oneshot(good).await?.into_body().collect().await?.to_bytes();
//! assert_eq!(body, r#"{"hello": "world"}"#);
//!
//! let bad = Request::post("/").header("content-digest", digest)
//!     .body(Full::new(Bytes::from(r#"{"hello": "there"}"#)))?;
//! let body = service.oneshot(bad).await?.into_body().collect().await?.to_bytes();
//! assert_eq!(body, "tampered");
//! # Ok(())
//! # }
//! ```

mod body;
mod layer;

pub use body::{BoxError, ContentDigestError, DigestBody};
pub use layer::{
    ContentDigest, ContentDigestLayer, DigestStatus, CONTENT_DIGEST, DEFAULT_MAX_BODY,
};
