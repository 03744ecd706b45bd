use std::fmt;

use base64ct::{Base64, Encoding};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

/// The longest `Github-Public-Key-Signature` value worth decoding: a DER
/// P-256 signature is at most 72 bytes, 96 in base64.
const MAX_SIGNATURE_LEN: usize = 128;

/// GitHub's secret-scanning public keys, parsed: the keys that sign the
/// webhook's deliveries, by `key_identifier`.
///
/// keyward fetches nothing: fetch GitHub's document yourself (a `GET` of
/// `https://api.github.com/meta/public_keys/secret_scanning`, with a token
/// to avoid GitHub's rate limits), parse it with
/// [`from_json`](Self::from_json), and hand the result to
/// [`SecretScanning::set_public_keys`](super::SecretScanning::set_public_keys)
/// when it changes. Every listed key verifies, current or not, so that
/// deliveries signed just before GitHub rotates its key still pass.
///
/// `Debug` lists the identifiers.
///
/// # Example
///
/// ```
/// use keyward::scanning::GithubPublicKeys;
///
/// let json = r#"{"public_keys": [{
///     "key_identifier": "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c",
///     "key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYAGMWO8XgCamYKMJS6jc/qgvSlAd\nAjPuDPRcXU22YxgBrz+zoN19MzuRyW87qEt9/AmtoNP5GrobzUvQSyJFVw==\n-----END PUBLIC KEY-----\n",
///     "is_current": true
/// }]}"#;
/// let keys = GithubPublicKeys::from_json(json.as_bytes())?;
/// assert_eq!(keys.len(), 1);
/// assert!(keys.contains("bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c"));
///
/// // GitHub's documented sample delivery, as signed by that key.
/// keys.verify(
///     "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c",
///     "MEQCIQDaMKqrGnE27S0kgMrEK0eYBmyG0LeZismAEz/BgZyt7AIfXt9fErtRS4XaeSt/AO1RtBY66YcAdjxji410VQV4xg==",
///     br#"[{"source":"commit","token":"some_token","type":"some_type","url":"https://example.com/base-repo-url/"}]"#,
/// )?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct GithubPublicKeys {
    keys: Vec<PublicKey>,
}

#[derive(Clone)]
struct PublicKey {
    identifier: Box<str>,
    key: VerifyingKey,
    current: bool,
}

#[derive(serde::Deserialize)]
struct Document {
    public_keys: Vec<Entry>,
}

#[derive(serde::Deserialize)]
struct Entry {
    key_identifier: String,
    key: String,
    #[serde(default)]
    is_current: bool,
}

/// Why GitHub's public-keys document was refused by
/// [`GithubPublicKeys::from_json`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublicKeysError {
    /// Not JSON, or not `{"public_keys": [{"key_identifier", "key",
    /// "is_current"}]}`.
    #[error("GitHub's public keys are not JSON of the form {{\"public_keys\": [...]}}")]
    Json(#[source] serde_json::Error),
    /// A key is not a PEM-encoded P-256 public key (SubjectPublicKeyInfo).
    #[error("GitHub public key {key_identifier} is not a PEM-encoded P-256 public key")]
    InvalidKey {
        /// The key's identifier, as listed.
        key_identifier: String,
        /// What the PEM or key decoder said.
        #[source]
        source: p256::pkcs8::spki::Error,
    },
    /// Two keys share an identifier, or an identifier is empty.
    #[error("GitHub's public keys list an empty or repeated key identifier")]
    BadIdentifier,
    /// The document lists no key: every delivery would be refused.
    #[error("GitHub's public keys document lists no key")]
    NoKeys,
}

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The `Github-Public-Key-Identifier` names no key of the set: the
    /// delivery is forged, or GitHub rotated its keys and yours need a
    /// refresh.
    #[error("the Github-Public-Key-Identifier names no known GitHub public key")]
    UnknownKeyIdentifier,
    /// The `Github-Public-Key-Signature` is not a base64 DER ECDSA signature.
    #[error("the Github-Public-Key-Signature is not a base64-encoded DER ECDSA signature")]
    MalformedSignature,
    /// The signature does not verify over the body with the named key.
    #[error("the Github-Public-Key-Signature does not match the payload")]
    BadSignature,
}

impl GithubPublicKeys {
    /// Parses GitHub's public-keys document: `{"public_keys":
    /// [{"key_identifier", "key", "is_current"}]}`, each key a PEM
    /// `PUBLIC KEY` (P-256). Unknown members are ignored. One bad key
    /// refuses the whole document, so that a refresh never silently drops
    /// a key: keep using the previous set then.
    pub fn from_json(json: &[u8]) -> Result<Self, PublicKeysError> {
        let document: Document = serde_json::from_slice(json).map_err(PublicKeysError::Json)?;
        if document.public_keys.is_empty() {
            return Err(PublicKeysError::NoKeys);
        }
        let mut keys: Vec<PublicKey> = Vec::with_capacity(document.public_keys.len());
        for entry in document.public_keys {
            if entry.key_identifier.is_empty()
                || keys.iter().any(|k| *k.identifier == *entry.key_identifier)
            {
                return Err(PublicKeysError::BadIdentifier);
            }
            let key = VerifyingKey::from_public_key_pem(entry.key.trim()).map_err(|source| {
                PublicKeysError::InvalidKey {
                    key_identifier: entry.key_identifier.clone(),
                    source,
                }
            })?;
            keys.push(PublicKey {
                identifier: entry.key_identifier.into(),
                key,
                current: entry.is_current,
            });
        }
        Ok(Self { keys })
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none (never, for a set from
    /// [`from_json`](Self::from_json)).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key has this identifier.
    pub fn contains(&self, key_identifier: &str) -> bool {
        self.find(key_identifier).is_some()
    }

    /// The identifiers, in the document's order.
    pub fn identifiers(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| &*k.identifier)
    }

    /// The identifier GitHub marks `is_current`, if any.
    pub fn current(&self) -> Option<&str> {
        self.keys.iter().find(|k| k.current).map(|k| &*k.identifier)
    }

    /// Checks a delivery: `signature` (the `Github-Public-Key-Signature`
    /// header: base64 of a DER ECDSA P-256/SHA-256 signature) over the raw
    /// `body` bytes, with the key named by `key_identifier` (the
    /// `Github-Public-Key-Identifier` header).
    pub fn verify(
        &self,
        key_identifier: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let key = self
            .find(key_identifier)
            .ok_or(SignatureError::UnknownKeyIdentifier)?;
        let signature = signature.trim();
        if signature.len() > MAX_SIGNATURE_LEN {
            return Err(SignatureError::MalformedSignature);
        }
        let der = Base64::decode_vec(signature).map_err(|_| SignatureError::MalformedSignature)?;
        let signature =
            Signature::from_der(&der).map_err(|_| SignatureError::MalformedSignature)?;
        key.key
            .verify(body, &signature)
            .map_err(|_| SignatureError::BadSignature)
    }

    fn find(&self, key_identifier: &str) -> Option<&PublicKey> {
        // Identifiers are public: no need for a constant-time compare.
        self.keys.iter().find(|k| *k.identifier == *key_identifier)
    }
}

impl fmt::Debug for GithubPublicKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubPublicKeys")
            .field("identifiers", &self.identifiers().collect::<Vec<_>>())
            .field("current", &self.current())
            .finish()
    }
}
