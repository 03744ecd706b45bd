//! Leaked-key revocation through GitHub's secret-scanning partner program
//! (feature `secret-scanning`).
//!
//! When one of your keys is pushed to a public repository, gist, issue or
//! npm package, GitHub finds it with the regular expression you registered
//! ([`KeyFormat::regex`](crate::key::KeyFormat::regex)) and `POST`s a
//! JSON array of `{"token", "type", "url", "source"}` to your endpoint,
//! signed with ECDSA P-256/SHA-256 over the raw body: the
//! `Github-Public-Key-Signature` header (base64 DER) made with the key
//! that `Github-Public-Key-Identifier` names. [`SecretScanning`] is that
//! endpoint:
//!
//! 1. a delivery without both headers, signed by a key that is not in your
//!    [`GithubPublicKeys`], wrongly signed, larger than the limit
//!    (1 MiB by default, enforced while reading) or not a JSON array of
//!    reported tokens is refused with a `4xx` problem document, before
//!    any look-up;
//! 2. each reported token that is a well-formed key of the
//!    [`KeyManager`](crate::KeyManager)'s format and whose secret matches
//!    the stored hash is revoked (or disabled: [`LeakAction`]) through the
//!    manager, which records its usual `revoked` / `disabled` event; a
//!    [`Lifecycle::LeakReported`](crate::usage::Lifecycle::LeakReported)
//!    event follows, tagged with the reported `url` and `source`, the
//!    `token_type` and the `action` taken. A key revoked already is left
//!    alone (no second revocation) but still reported and recorded;
//! 3. the answer is GitHub's optional feedback: `[{"token_hash",
//!    "token_type", "label"}]`, `token_hash` being the SHA-256 of the token
//!    (never the token itself), `label` `true_positive` for a key of this
//!    service and `false_positive` for everything else (malformed, unknown
//!    id, wrong secret);
//! 4. if the store fails, the answer is `503`, so that GitHub retries;
//!    never a `false_positive` that was not checked.
//!
//! keyward makes no request of its own: you fetch GitHub's public keys
//! (`GET https://api.github.com/meta/public_keys/secret_scanning`), parse
//! them with [`GithubPublicKeys::from_json`] and refresh them with
//! [`SecretScanning::set_public_keys`], say hourly, or when deliveries are
//! refused as signed by an unknown key (logged as a warning). Nothing here
//! logs or answers a token: only key ids, the token's hash, and the
//! reported url, source and type.
//!
//! Mount it where you registered it: [`SecretScanning::router`] for axum,
//! `Router::route_service(path, scanning)` (it is a tower `Service`), or
//! [`SecretScanning::process`] from any other server. The endpoint must not
//! sit behind [`AuthLayer`](crate::AuthLayer): GitHub presents no key, the
//! signature is its credential.
//!
//! # Example
//!
//! ```
//! use axum::Router;
//! use keyward::key::KeyFormat;
//! use keyward::manager::KeyManager;
//! use keyward::scanning::{GithubPublicKeys, Label, LeakAction, SecretScanning};
//! use keyward::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Fetched by you from GitHub (here: its published keys, abridged).
//! let json = r#"{"public_keys": [{
//!     "key_identifier": "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c",
//!     "key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYAGMWO8XgCamYKMJS6jc/qgvSlAd\nAjPuDPRcXU22YxgBrz+zoN19MzuRyW87qEt9/AmtoNP5GrobzUvQSyJFVw==\n-----END PUBLIC KEY-----\n",
//!     "is_current": true
//! }]}"#;
//! let manager = KeyManager::new(MemoryStore::new(), KeyFormat::new("sk_live")?);
//! let scanning = SecretScanning::new(manager, GithubPublicKeys::from_json(json.as_bytes())?)
//!     .on_leak(LeakAction::Revoke);
//!
//! // Mounted at the URL you registered with GitHub, outside AuthLayer.
//! let app: Router = Router::new().merge(scanning.clone().router("/github/secret-scanning"));
//! # let _ = app;
//!
//! // GitHub's documented sample delivery: signed, but not one of our keys.
//! let labels = scanning
//!     .process(
//!         Some("bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c"),
//!         Some("MEQCIQDaMKqrGnE27S0kgMrEK0eYBmyG0LeZismAEz/BgZyt7AIfXt9fErtRS4XaeSt/AO1RtBY66YcAdjxji410VQV4xg=="),
//!         br#"[{"source":"commit","token":"some_token","type":"some_type","url":"https://example.com/base-repo-url/"}]"#,
//!     )
//!     .await?;
//! assert_eq!(labels[0].label, Label::FalsePositive);
//! assert_eq!(labels[0].token_type, "some_type");
//!
//! // A forged delivery never reaches the store.
//! let forged = scanning.process(
//!     Some("bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c"),
//!     Some("MEQCIQDaMKqrGnE27S0kgMrEK0eYBmyG0LeZismAEz/BgZyt7AIfXt9fErtRS4XaeSt/AO1RtBY66YcAdjxji410VQV4xg=="),
//!     br#"[{"source":"commit","token":"sk_live_forged","type":"some_type","url":""}]"#,
//! );
//! assert_eq!(forged.await.unwrap_err().status(), 403);
//! # Ok(())
//! # }
//! ```

mod keys;
mod service;

pub use keys::{GithubPublicKeys, PublicKeysError, SignatureError};
pub use service::{
    Finding, Label, LeakAction, ResponseFuture, ScanError, SecretScanning, TokenHash, TokenLabel,
    DEFAULT_MAX_BODY_SIZE, KEY_IDENTIFIER_HEADER, SIGNATURE_HEADER,
};
