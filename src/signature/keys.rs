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

    /// Every algorithm keyward verifies.
    pub(crate) const ALL: [Algorithm; 2] = [Algorithm::Ed25519, Algorithm::HmacSha256];

    /// The algorithm `name` (an `alg` parameter) names, if keyward
    /// verifies it; names are compared exactly, as `alg` is checked.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|algorithm| algorithm.as_str() == name)
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
        VerificationKey::Ed25519(public) => verify_ed25519(public, message, signature),
        VerificationKey::HmacSha256(secret) => {
            verify_hmac_sha256(secret.expose(), message, signature)
        }
    }
}

fn verify_ed25519(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    #[cfg(test)]
    work::count(Algorithm::Ed25519);
    let Ok(public) = ed25519_public_key(public) else {
        return false;
    };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    public.verify_strict(message, &signature).is_ok()
}

fn verify_hmac_sha256(secret: &[u8], message: &[u8], signature: &[u8]) -> bool {
    #[cfg(test)]
    work::count(Algorithm::HmacSha256);
    mac(secret, message).verify_slice(signature).is_ok()
}

/// The seed of the Ed25519 key [`verify_dummy`] verifies with; only the
/// tests sign with it.
#[cfg(test)]
const DUMMY_ED25519_SEED: [u8; 32] = [0x2a; 32];

/// The public key of [`DUMMY_ED25519_SEED`]: a valid key of full order,
/// decoded as a stored one is.
const DUMMY_ED25519: [u8; 32] = [
    0x19, 0x7f, 0x6b, 0x23, 0xe1, 0x6c, 0x85, 0x32, 0xc6, 0xab, 0xc8, 0x38, 0xfa, 0xcd, 0x5e, 0xa7,
    0x89, 0xbe, 0x0c, 0x76, 0xb2, 0x92, 0x03, 0x34, 0x03, 0x9b, 0xfa, 0x8b, 0x3d, 0x36, 0x8d, 0x61,
];

/// A 32-byte HMAC-SHA-256 secret, the length keyward issues.
const DUMMY_HMAC_SHA256: [u8; 32] = [0x5c; 32];

/// The work of verifying `signature` of `message` with `algorithm`, on a
/// fixed key, through the same function a real key goes through; the
/// result is thrown away (the request is refused whatever it is). So a
/// refusal that has no key to verify with (an unknown key id, a key of
/// another algorithm, a record without a verification key) costs what a
/// failed verification of a known key of that algorithm does.
pub(crate) fn verify_dummy(algorithm: Algorithm, message: &[u8], signature: &[u8]) {
    #[cfg(test)]
    work::count_dummy(algorithm);
    let verified = match algorithm {
        Algorithm::Ed25519 => verify_ed25519(&DUMMY_ED25519, message, signature),
        Algorithm::HmacSha256 => verify_hmac_sha256(&DUMMY_HMAC_SHA256, message, signature),
    };
    std::hint::black_box(verified);
}

/// Counts, per thread, the verifications each algorithm ran (real or
/// dummy) and the dummies among them, so that tests can tell which work a
/// refusal did without timing it.
#[cfg(test)]
pub(crate) mod work {
    use std::cell::Cell;

    use super::Algorithm;

    thread_local! {
        static VERIFIED: Cell<[usize; 2]> = const { Cell::new([0; 2]) };
        static DUMMIES: Cell<[usize; 2]> = const { Cell::new([0; 2]) };
    }

    fn index(algorithm: Algorithm) -> usize {
        match algorithm {
            Algorithm::Ed25519 => 0,
            Algorithm::HmacSha256 => 1,
        }
    }

    fn bump(cell: &'static std::thread::LocalKey<Cell<[usize; 2]>>, algorithm: Algorithm) {
        cell.with(|cell| {
            let mut counts = cell.get();
            counts[index(algorithm)] += 1;
            cell.set(counts);
        });
    }

    pub(super) fn count(algorithm: Algorithm) {
        bump(&VERIFIED, algorithm);
    }

    pub(super) fn count_dummy(algorithm: Algorithm) {
        bump(&DUMMIES, algorithm);
    }

    /// What this thread ran so far: (verifications, of which dummies), by
    /// algorithm.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub(crate) struct Work {
        pub(crate) ed25519: (usize, usize),
        pub(crate) hmac_sha256: (usize, usize),
    }

    /// Runs `f` and says what verification work it did on this thread.
    pub(crate) fn during(f: impl FnOnce()) -> Work {
        let read = || (VERIFIED.with(Cell::get), DUMMIES.with(Cell::get));
        let (verified, dummies) = read();
        f();
        let (verified_after, dummies_after) = read();
        let of = |i: usize| {
            (
                verified_after[i] - verified[i],
                dummies_after[i] - dummies[i],
            )
        };
        Work {
            ed25519: of(0),
            hmac_sha256: of(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dummy_keys() -> [(Algorithm, SigningKey); 2] {
        [
            (
                Algorithm::Ed25519,
                SigningKey::ed25519_from_seed(&DUMMY_ED25519_SEED),
            ),
            (
                Algorithm::HmacSha256,
                SigningKey::hmac_sha256(DUMMY_HMAC_SHA256.to_vec()).unwrap(),
            ),
        ]
    }

    #[test]
    fn the_dummy_ed25519_key_is_the_seeds_and_a_valid_key() {
        let key = SigningKey::ed25519_from_seed(&DUMMY_ED25519_SEED).verification_key();
        assert_eq!(key, VerificationKey::Ed25519(DUMMY_ED25519));
        assert!(ed25519_public_key(&DUMMY_ED25519).is_ok());
    }

    /// The dummy runs the whole verification, not a short cut: with the
    /// dummy key's own signature it reaches the answer "valid" (which the
    /// caller throws away), and with a wrong one "invalid", through the
    /// same function a stored key of that algorithm goes through.
    #[test]
    fn each_dummy_computes_its_algorithms_verification() {
        let message = b"\"@method\": GET\n\"@signature-params\": ();created=1";
        for (algorithm, key) in dummy_keys() {
            assert_eq!(key.algorithm(), algorithm);
            let good = key.sign(message);
            let mut bad = good.clone();
            bad[0] ^= 1;
            // The same function, on the same key, gives both answers.
            assert!(verify(&key.verification_key(), message, &good));
            assert!(!verify(&key.verification_key(), message, &bad));
            let dummy_key = match algorithm {
                Algorithm::Ed25519 => verify_ed25519(&DUMMY_ED25519, message, &good),
                Algorithm::HmacSha256 => verify_hmac_sha256(&DUMMY_HMAC_SHA256, message, &good),
            };
            assert!(dummy_key, "{algorithm}");

            for signature in [good, bad] {
                let done = work::during(|| verify_dummy(algorithm, message, &signature));
                let expected = (1, 1);
                match algorithm {
                    Algorithm::Ed25519 => assert_eq!(
                        done,
                        work::Work {
                            ed25519: expected,
                            ..Default::default()
                        }
                    ),
                    Algorithm::HmacSha256 => assert_eq!(
                        done,
                        work::Work {
                            hmac_sha256: expected,
                            ..Default::default()
                        }
                    ),
                }
            }
        }
    }

    #[test]
    fn a_real_verification_counts_as_work_not_as_a_dummy() {
        let key = SigningKey::generate_hmac_sha256().unwrap();
        let done = work::during(|| {
            verify(&key.verification_key(), b"message", &[0; 32]);
        });
        assert_eq!(
            done,
            work::Work {
                hmac_sha256: (1, 0),
                ..Default::default()
            }
        );
    }
}
