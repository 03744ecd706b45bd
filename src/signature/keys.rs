use std::fmt;

use base64ct::{Base64, Encoding};
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::key::{
    random_bytes, GenerateError, InvalidVerificationKey, SharedSecret, VerificationKey,
};

type HmacSha256 = hmac::Hmac<Sha256>;

/// The signature algorithms keyward verifies (RFC 9421 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// EdDSA on edwards25519 (RFC 8032): `ed25519`.
    Ed25519,
    /// HMAC with SHA-256 (RFC 2104): `hmac-sha256`.
    HmacSha256,
}

impl Algorithm {
    /// The name in RFC 9421's registry, as the `alg` parameter carries it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::HmacSha256 => "hmac-sha256",
        }
    }

    /// The algorithm of a verification key, if keyward verifies it.
    pub fn of(key: &VerificationKey) -> Option<Self> {
        match key {
            VerificationKey::Ed25519(_) => Some(Algorithm::Ed25519),
            VerificationKey::HmacSha256(_) => Some(Algorithm::HmacSha256),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The private half that signs requests: an Ed25519 private key, or an
/// HMAC-SHA-256 shared secret. The client keeps it; for Ed25519 the server
/// never sees it.
///
/// Zeroed when dropped; `Debug` shows the algorithm and, for Ed25519, the
/// public key, never the private bytes. Written out (for a file, an
/// environment variable, the `credentials` example) as standard base64 with
/// padding (RFC 4648 §4): of the 32-byte seed for Ed25519 (RFC 8032's
/// private key, what `openssl pkey -outform DER | tail -c 32` gives), of
/// the secret for HMAC.
///
/// # Example
///
/// ```
/// use keyward::signature::{Algorithm, SigningKey};
///
/// let key = SigningKey::generate_ed25519()?;
/// let written = key.expose_base64();
/// let again = SigningKey::ed25519_from_base64(&written)?;
/// assert_eq!(again.verification_key(), key.verification_key());
/// assert_eq!(key.algorithm(), Algorithm::Ed25519);
/// assert!(!format!("{key:?}").contains(written.as_str()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct SigningKey(Inner);

#[derive(Clone)]
enum Inner {
    Ed25519(ed25519_dalek::SigningKey),
    HmacSha256(SharedSecret),
}

/// Why bytes are not a [`SigningKey`]. Says nothing of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidSigningKey {
    /// Not standard base64.
    #[error("a signing key is written in standard base64")]
    Base64,
    /// An Ed25519 seed that is not 32 bytes.
    #[error("an Ed25519 private key is a 32-byte seed")]
    Length,
    /// An HMAC secret of the wrong length.
    #[error(transparent)]
    Secret(#[from] InvalidVerificationKey),
}

impl SigningKey {
    /// A new Ed25519 key pair from the operating system's random number
    /// generator.
    pub fn generate_ed25519() -> Result<Self, GenerateError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        random_bytes(&mut seed[..])?;
        Ok(Self::ed25519_from_seed(&seed))
    }

    /// A new 32-byte HMAC-SHA-256 secret from the operating system's
    /// random number generator.
    pub fn generate_hmac_sha256() -> Result<Self, GenerateError> {
        Ok(Self(Inner::HmacSha256(SharedSecret::generate()?)))
    }

    /// The Ed25519 key whose RFC 8032 private key (seed) is `seed`.
    pub fn ed25519_from_seed(seed: &[u8; 32]) -> Self {
        Self(Inner::Ed25519(ed25519_dalek::SigningKey::from_bytes(seed)))
    }

    /// The Ed25519 key written as base64 of its 32-byte seed.
    pub fn ed25519_from_base64(seed: &str) -> Result<Self, InvalidSigningKey> {
        let bytes =
            Zeroizing::new(Base64::decode_vec(seed.trim()).map_err(|_| InvalidSigningKey::Base64)?);
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| InvalidSigningKey::Length)?,
        );
        Ok(Self::ed25519_from_seed(&seed))
    }

    /// An HMAC-SHA-256 key (32 to 1024 bytes).
    pub fn hmac_sha256(secret: impl Into<Vec<u8>>) -> Result<Self, InvalidSigningKey> {
        Ok(Self(Inner::HmacSha256(SharedSecret::new(secret)?)))
    }

    /// The HMAC-SHA-256 key written as base64.
    pub fn hmac_sha256_from_base64(secret: &str) -> Result<Self, InvalidSigningKey> {
        let bytes = Zeroizing::new(
            Base64::decode_vec(secret.trim()).map_err(|_| InvalidSigningKey::Base64)?,
        );
        Self::hmac_sha256(bytes.as_slice())
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match &self.0 {
            Inner::Ed25519(_) => Algorithm::Ed25519,
            Inner::HmacSha256(_) => Algorithm::HmacSha256,
        }
    }

    /// What the server keeps to verify: the public key (Ed25519) or the
    /// same secret (HMAC).
    pub fn verification_key(&self) -> VerificationKey {
        match &self.0 {
            Inner::Ed25519(key) => VerificationKey::Ed25519(key.verifying_key().to_bytes()),
            Inner::HmacSha256(secret) => VerificationKey::HmacSha256(secret.clone()),
        }
    }

    /// The private key as standard base64 (the Ed25519 seed, or the HMAC
    /// secret), for its owner. Handle with care: never log it.
    pub fn expose_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(match &self.0 {
            Inner::Ed25519(key) => Base64::encode_string(&key.to_bytes()),
            Inner::HmacSha256(secret) => Base64::encode_string(secret.expose()),
        })
    }

    /// Signs `message` (a signature base).
    pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.0 {
            Inner::Ed25519(key) => {
                use ed25519_dalek::Signer as _;
                key.sign(message).to_bytes().to_vec()
            }
            Inner::HmacSha256(secret) => mac(secret.expose(), message)
                .finalize()
                .into_bytes()
                .to_vec(),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Ed25519(key) => f
                .debug_struct("SigningKey")
                .field("algorithm", &"ed25519")
                .field(
                    "public",
                    &VerificationKey::Ed25519(key.verifying_key().to_bytes()),
                )
                .field("private", &"[redacted]")
                .finish(),
            Inner::HmacSha256(_) => f
                .debug_struct("SigningKey")
                .field("algorithm", &"hmac-sha256")
                .field("secret", &"[redacted]")
                .finish(),
        }
    }
}

fn mac(secret: &[u8], message: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed first), so
    // this never fails; an empty MAC would only fail to verify.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| <HmacSha256 as KeyInit>::new(&Default::default()));
    mac.update(message);
    mac
}

/// Checks an Ed25519 public key: a point of the curve, not of small order.
pub(crate) fn ed25519_public_key(
    bytes: &[u8; 32],
) -> Result<ed25519_dalek::VerifyingKey, InvalidVerificationKey> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(bytes)
        .map_err(|_| InvalidVerificationKey::NotAPoint)?;
    // Small-order points verify forged signatures; a non-canonical
    // encoding names a point by a second spelling.
    if key.is_weak() || key.to_edwards().compress().to_bytes() != *bytes {
        return Err(InvalidVerificationKey::NotAPoint);
    }
    Ok(key)
}

/// Whether `signature` is `key`'s signature of `message`.
///
/// Ed25519 is checked strictly (`verify_strict`: no weak keys, no
/// malleable signatures); the HMAC is compared in constant time.
pub(crate) fn verify(key: &VerificationKey, message: &[u8], signature: &[u8]) -> bool {
    match key {
        VerificationKey::Ed25519(public) => {
            let Ok(public) = ed25519_public_key(public) else {
                return false;
            };
            let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
                return false;
            };
            public.verify_strict(message, &signature).is_ok()
        }
        VerificationKey::HmacSha256(secret) => mac(secret.expose(), message)
            .verify_slice(signature)
            .is_ok(),
    }
}

/// The work of one Ed25519 verification, on a key nobody holds: an
/// unknown key id costs what a known one does.
pub(crate) fn verify_dummy(message: &[u8], signature: &[u8]) {
    // The compressed base point: a valid key of full order.
    let mut base_point = [0x66u8; 32];
    base_point[0] = 0x58;
    std::hint::black_box(verify(
        &VerificationKey::Ed25519(base_point),
        message,
        signature,
    ));
}
