//! Signed requests with key pairs: HTTP Message Signatures (RFC 9421)
//! (feature `signatures`).
//!
//! Instead of sending a secret, the client keeps a private key and signs
//! each request; the server keeps only the public key (in the key's
//! [`KeyRecord::verification_key`](crate::KeyRecord::verification_key))
//! and verifies. A captured request proves nothing beyond itself: it
//! cannot be altered (the signature covers the method, authority, path,
//! query and, through `Content-Digest`, the body), it is refused once its
//! `created` time leaves the window, and it cannot be sent twice inside the
//! window (the [`ReplayCache`]).
//!
//! ```text
//! Signature-Input: sig1=("@method" "@authority" "@path" "@query" "content-digest");created=1735689600;nonce="…";keyid="AbCdEf012345";alg="ed25519"
//! Signature: sig1=:<base64 of the signature>:
//! Content-Digest: sha-256=:<base64 of SHA-256(body)>:
//! ```
//!
//! - `keyid` is the keyward [`KeyId`](crate::KeyId) of the key.
//! - Algorithms: `ed25519` (recommended: the server holds nothing that
//!   signs) and `hmac-sha256` (a shared secret, which the store must keep
//!   readable: see [`VerificationKey`](crate::key::VerificationKey)). The
//!   algorithm is the key's; `alg`, if sent, must agree.
//! - [`SignatureVerifier`] checks a request; [`RequestSigner`] and
//!   [`SigningKey`] sign on the client's side;
//!   [`KeyManager::register_public_key`](crate::KeyManager::register_public_key)
//!   and [`KeyManager::issue_key_pair`](crate::KeyManager::issue_key_pair)
//!   make the records.
//! - The body is checked by
//!   [`ContentDigestLayer`](crate::content_digest::ContentDigestLayer),
//!   which must run *outside* the layer that verifies signatures. Without
//!   it every signed request is refused (`500`, fail closed), so a body can
//!   never pass unchecked.
//!
//! [`MessageSignature`] and [`SignatureBase`] are the lower level: the
//! parsed fields and the exact bytes signed, for verifying with keys kept
//! elsewhere.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response};
//! use http_body_util::BodyExt;
//! use keyward::clock::FakeClock;
//! use keyward::content_digest::{ContentDigestLayer, DigestBody};
//! use keyward::manager::IssueOptions;
//! use keyward::signature::{RequestSigner, SignatureVerifier, SigningKey};
//! use keyward::{KeyFormat, KeyManager, MemoryStore};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let clock = FakeClock::default();
//! let store = MemoryStore::new();
//! let manager = KeyManager::new(store.clone(), KeyFormat::new("sk_live")?).with_clock(clock.clone());
//!
//! // The client made a key pair and sends its public half; the private
//! // key never reaches the server.
//! let private = SigningKey::generate_ed25519()?;
//! let record = manager
//!     .register_public_key(private.verification_key(), IssueOptions::new("acme"))
//!     .await?;
//!
//! // Server: the digest layer outside, then the verifier.
//! let verifier = SignatureVerifier::new(store).clock(clock.clone());
//! let service = ServiceBuilder::new()
//!     .layer(ContentDigestLayer::new())
//!     .service_fn(move |request: Request<DigestBody<String>>| {
//!         let verify = verifier.verify(&request);
//!         async move {
//!             let answer = match verify.await {
//!                 Ok(who) => who.owner().to_owned(),
//!                 Err(rejection) => rejection.reason().to_string(),
//!             };
//!             Ok::<_, std::convert::Infallible>(Response::new(answer))
//!         }
//!     });
//!
//! // Client: sign, send.
//! let signer = RequestSigner::new(record.id.as_str(), private).clock(clock);
//! let mut request = Request::post("https://api.example.com/pets").body(String::from("{}"))?;
//! signer.sign(&mut request)?;
//! let response = service.clone().oneshot(request.clone()).await?;
//! assert_eq!(response.into_body().collect().await?.to_bytes(), "acme");
//! // The same request again is a replay.
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.into_body().collect().await?.to_bytes(), "replayed_signature");
//! # Ok(())
//! # }
//! ```

mod base;
mod error;
pub(crate) mod input;
mod keys;
mod replay;
mod signer;
mod verifier;

pub use base::{BaseContext, SignatureBase};
pub use error::{SignError, SignatureError};
pub use input::{
    Component, MessageSignature, SignatureParams, MAX_COMPONENTS, MAX_FIELD_LEN, SIGNATURE,
    SIGNATURE_INPUT,
};
pub use keys::{Algorithm, InvalidSigningKey, SigningKey};
pub use replay::ReplayCache;
pub use signer::RequestSigner;
pub use verifier::{SignatureVerifier, DEFAULT_WINDOW};

pub(crate) use keys::ed25519_public_key;
#[allow(unused_imports)]
pub(crate) use verifier::Prepared;
