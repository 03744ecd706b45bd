//! JWT-based keys (feature `jwt`): tokens that the service, or an issuer
//! it trusts, signed, checked by [`JwtVerifier`] and minted by
//! [`JwtIssuer`] (or [`KeyManager::issue_jwt`](crate::KeyManager::issue_jwt)).
//!
//! A token is accepted when (RFC 8725's advice, in order):
//!
//! 1. it is at most [`DEFAULT_MAX_TOKEN_LEN`] bytes (8 KiB; checked before
//!    anything is decoded) and has a JWS's three-segment shape;
//! 2. its header's `kid` names a key of the verifier's [`JwtKeySet`] (a
//!    token without `kid` is checked with the set's only key, if it has
//!    exactly one), and its header's `alg` is *that key's* algorithm:
//!    `none` is never one, and a token cannot pick HMAC to have a public
//!    key used as its secret (algorithm confusion);
//! 3. its signature verifies (jsonwebtoken, RustCrypto backend);
//! 4. `iss` is the verifier's issuer and `aud` is (or contains) its
//!    audience;
//! 5. `exp` is present and not past, and `nbf`, if present, is reached,
//!    both on the injected [`Clock`](crate::clock::Clock) (never the
//!    system clock: jsonwebtoken's own time checks are off) with a small
//!    [leeway](JwtVerifier::leeway), 30 s by default;
//! 6. `sub` is present: it becomes the [`Principal`](crate::Principal)'s
//!    owner; `scope`, if present, is scopes separated by single spaces,
//!    each a valid [`Scope`](crate::Scope) (anything else refuses the
//!    token, never drops a scope quietly);
//! 7. its `jti` is the [`KeyId`](crate::KeyId) of a record of the
//!    [`KeyStore`](crate::KeyStore) that is active and within its times,
//!    owned by `sub` and granting every scope of the token. This is how
//!    JWTs are revoked like any other key: revoke (or disable) the record
//!    with [`KeyManager::revoke`](crate::KeyManager::revoke), and the
//!    token is refused from the next request on, through every cache that
//!    the store's invalidation reaches. The record also gives the token
//!    its limits, so [`RateLimitLayer`](crate::RateLimitLayer) works
//!    behind it. Tokens of an issuer that knows no keyward store can be
//!    accepted without a record: see
//!    [`JwtVerifier::require_record`](JwtVerifier::require_record).
//!
//! Behind [`AuthLayer`](crate::AuthLayer), add the verifier with
//! [`AuthLayer::credential`](crate::AuthLayer::credential): a JWT is read
//! from `Authorization: Bearer` when it has a JWT's shape (three base64url
//! segments; an API key there still goes to the API-key path), its
//! [`Principal`](crate::Principal) has
//! [`CredentialKind::Jwt`](crate::credential::CredentialKind::Jwt), and a
//! JWT and an API key in one request are refused with `400` (two
//! credentials).
//!
//! ```
//! # use keyward::jwt::{JwtIssuer, JwtKeySet, JwtVerifier};
//! # use keyward::{AuthLayer, KeyFormat, MemoryStore};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let store = MemoryStore::new();
//! # let (_, key) = JwtIssuer::hs256("2025-01", &[42; 32], "https://api.example.com", "api")?;
//! let verifier = JwtVerifier::new(store.clone(), JwtKeySet::from_iter([key]), "https://api.example.com", "api");
//! let layer = AuthLayer::new(store, KeyFormat::new("sk_live")?).credential(verifier);
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! Every refusal is the same `401 invalid_token` as a bad API key; the
//! exact reason ([`RejectReason`](crate::RejectReason)) goes to the
//! [`Rejection`](crate::Rejection) and the logs (target `keyward::auth`),
//! never the token.
//!
//! A JWT is signed, not encrypted: anyone holding one can read its claims.
//! Put no secret in them.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use keyward::clock::FakeClock;
//! use keyward::jwt::{JwtIssuer, JwtKeySet, JwtVerifier};
//! use keyward::manager::IssueOptions;
//! use keyward::{KeyFormat, KeyManager, MemoryStore, RejectReason};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let clock = FakeClock::default();
//! let store = MemoryStore::new();
//! let manager = KeyManager::new(store.clone(), KeyFormat::new("sk_live")?).with_clock(clock.clone());
//!
//! // The service's signing secret (32 random bytes in real life).
//! let (issuer, key) = JwtIssuer::hs256("2025-01", &[42; 32], "https://api.example.com", "api")?;
//! let verifier = JwtVerifier::new(store, JwtKeySet::from_iter([key]), "https://api.example.com", "api")
//!     .clock(clock.clone());
//!
//! // A token backed by a record, valid for an hour.
//! let issued = manager
//!     .issue_jwt(&issuer, IssueOptions::new("acme").scopes("pets:read".parse()?), Duration::from_secs(3600))
//!     .await?;
//! let who = verifier.verify(&issued.token).await?;
//! assert_eq!(who.owner(), "acme");
//! assert_eq!(who.key_id(), issued.record.id);
//!
//! // An hour later (plus the leeway) it has expired.
//! clock.advance(Duration::from_secs(3600 + 30));
//! let refused = verifier.verify(&issued.token).await.unwrap_err();
//! assert_eq!(refused.reason(), RejectReason::Expired);
//!
//! // Revoking its record refuses a token at once.
//! let issued = manager.issue_jwt(&issuer, IssueOptions::new("acme"), Duration::from_secs(3600)).await?;
//! manager.revoke(&issued.record.id).await?;
//! let refused = verifier.verify(&issued.token).await.unwrap_err();
//! assert_eq!(refused.reason(), RejectReason::Revoked);
//! # Ok(())
//! # }
//! ```

mod issuer;
mod keys;
mod verifier;

pub use issuer::{JwtError, JwtIssuer};
pub use keys::{JwtKey, JwtKeyError, JwtKeySet, JwtSigningKey, MAX_KID_LEN, MIN_HMAC_SECRET_LEN};
pub use verifier::{JwtVerifier, DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_LEN};

/// jsonwebtoken's key and algorithm types, to build [`JwtKey`]s and
/// [`JwtSigningKey`]s of every algorithm it knows (RSA, ECDSA, EdDSA, from
/// DER, JWK or components).
pub use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// jsonwebtoken needs a crypto provider. With only its `rust_crypto`
/// feature (keyward's) it has one; if another crate of the build also
/// enables `aws_lc_rs`, it has none until one is installed, and would
/// panic on the first token signed or checked: install RustCrypto's, once,
/// before that. Called by every constructor of a key ([`JwtKey::new`],
/// [`JwtSigningKey::new`]), since nothing signs or verifies without one.
pub(crate) fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use jsonwebtoken::crypto::CryptoProvider;
        if CryptoProvider::try_get_default().is_none() {
            let _ = CryptoProvider::install_default(
                &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
            );
        }
    });
}
