use std::fmt;
use std::str::FromStr;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// What a record keeps to check signed requests (HTTP Message Signatures,
/// RFC 9421), instead of a secret's hash: an Ed25519 public key, or an
/// HMAC-SHA-256 shared secret.
///
/// Plain data: the feature `signatures` verifies with it (see
/// `keyward::signature`). A record that holds one has a hash nobody knows
/// the secret of, so it is never usable as a bearer key.
///
/// - **Ed25519** (recommended): the server keeps only the public half; the
///   private key stays with the client, and a leak of the store leaks
///   nothing that signs.
/// - **HMAC-SHA-256**: both sides hold the same secret, and the server must
///   be able to read it back to compute the MAC: the store keeps it *as
///   is*, not hashed. Anyone who reads the store (a backup, a replica, a
///   query) can sign as the key. `Debug` shows none of it and equality is
///   constant-time, but serde writes it out, because a store must keep it.
///
/// With the feature `serde` it reads and writes as a string naming its
/// algorithm: `"ed25519:<64 hex digits>"`, `"hmac-sha256:<hex digits>"`.
///
/// # Example
///
/// ```
/// use keyward::key::VerificationKey;
///
/// let public = VerificationKey::ed25519([7; 32]);
/// assert_eq!(public.algorithm(), "ed25519");
/// let shared = VerificationKey::hmac_sha256(vec![1; 32])?;
/// assert!(!format!("{shared:?}").contains("0101"));
/// assert!(VerificationKey::hmac_sha256(vec![1; 16]).is_err(), "too short");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerificationKey {
    /// An Ed25519 public key, its 32 bytes (RFC 8032).
    Ed25519([u8; 32]),
    /// An HMAC-SHA-256 shared secret.
    HmacSha256(SharedSecret),
}

impl VerificationKey {
    /// An Ed25519 public key from its 32 bytes (checked when a signature
    /// is verified: bytes that are no valid key verify nothing).
    pub fn ed25519(public_key: [u8; 32]) -> Self {
        Self::Ed25519(public_key)
    }

    /// An HMAC-SHA-256 shared secret of at least
    /// [`SharedSecret::MIN_LEN`] bytes.
    pub fn hmac_sha256(secret: impl Into<Vec<u8>>) -> Result<Self, InvalidVerificationKey> {
        SharedSecret::new(secret).map(Self::HmacSha256)
    }

    /// The algorithm's name in RFC 9421's registry: `"ed25519"` or
    /// `"hmac-sha256"`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Ed25519(_) => "ed25519",
            Self::HmacSha256(_) => "hmac-sha256",
        }
    }
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ed25519(public) => write!(f, "Ed25519({})", Hex(public)),
            Self::HmacSha256(secret) => f.debug_tuple("HmacSha256").field(secret).finish(),
        }
    }
}

impl fmt::Display for VerificationKey {
    /// The stored form: `ed25519:<hex>` or `hmac-sha256:<hex>`. It shows
    /// an HMAC secret: never log it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ed25519(public) => write!(f, "ed25519:{}", Hex(public)),
            Self::HmacSha256(secret) => write!(f, "hmac-sha256:{}", Hex(secret.expose())),
        }
    }
}

impl FromStr for VerificationKey {
    type Err = InvalidVerificationKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(hex) = s.strip_prefix("ed25519:") {
            let bytes = Zeroizing::new(from_hex(hex)?);
            let public: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| InvalidVerificationKey::Length)?;
            Ok(Self::Ed25519(public))
        } else if let Some(hex) = s.strip_prefix("hmac-sha256:") {
            Self::hmac_sha256(from_hex(hex)?)
        } else {
            Err(InvalidVerificationKey::Algorithm)
        }
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for VerificationKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Through a zeroized buffer: the text holds an HMAC secret.
        let text = Zeroizing::new(self.to_string());
        serializer.serialize_str(&text)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for VerificationKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An HMAC shared secret: zeroed when dropped, compared in constant time,
/// never shown by `Debug`.
#[derive(Clone)]
pub struct SharedSecret(Zeroizing<Vec<u8>>);

impl SharedSecret {
    /// The shortest secret accepted: 32 bytes (256 bits), the output size
    /// of SHA-256, as RFC 2104 advises.
    pub const MIN_LEN: usize = 32;

    /// The longest secret accepted: 1024 bytes.
    pub const MAX_LEN: usize = 1024;

    /// A secret of `MIN_LEN` to `MAX_LEN` bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, InvalidVerificationKey> {
        let secret = Zeroizing::new(secret.into());
        if (Self::MIN_LEN..=Self::MAX_LEN).contains(&secret.len()) {
            Ok(Self(secret))
        } else {
            Err(InvalidVerificationKey::Length)
        }
    }

    /// A new secret of `MIN_LEN` bytes from the operating system's random
    /// number generator.
    #[cfg(feature = "signatures")]
    pub(crate) fn generate() -> Result<Self, super::GenerateError> {
        let mut secret = Zeroizing::new(vec![0u8; Self::MIN_LEN]);
        super::random_bytes(&mut secret)?;
        Ok(Self(secret))
    }

    /// The secret's bytes. Handle with care: never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq for SharedSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_slice().ct_eq(other.0.as_slice()).into()
    }
}

impl Eq for SharedSecret {}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedSecret([redacted; {}])", self.0.len())
    }
}

/// Why a value is not a [`VerificationKey`]. Says nothing of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidVerificationKey {
    /// Not `ed25519:` or `hmac-sha256:` followed by hex digits.
    #[error("a verification key is \"ed25519:<hex>\" or \"hmac-sha256:<hex>\"")]
    Algorithm,
    /// Not hexadecimal.
    #[error("a verification key's bytes are written in hexadecimal")]
    Hex,
    /// An Ed25519 key that is not 32 bytes, or a shared secret shorter than
    /// 32 or longer than 1024 bytes.
    #[error("an Ed25519 public key is 32 bytes, an HMAC secret 32 to 1024 bytes")]
    Length,
    /// Not a point of Ed25519's curve, or one of its weak (small-order)
    /// points.
    #[error("not a usable Ed25519 public key")]
    NotAPoint,
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

fn from_hex(hex: &str) -> Result<Vec<u8>, InvalidVerificationKey> {
    let hex = hex.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return Err(InvalidVerificationKey::Hex);
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(InvalidVerificationKey::Hex),
    };
    hex.chunks_exact(2)
        .map(|pair| Ok((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips() {
        for key in [
            VerificationKey::ed25519([0xab; 32]),
            VerificationKey::hmac_sha256(vec![0x5c; 48]).unwrap(),
        ] {
            let text = key.to_string();
            assert_eq!(text.parse::<VerificationKey>().unwrap(), key);
        }
        assert_eq!(
            "ed25519:abcd".parse::<VerificationKey>(),
            Err(InvalidVerificationKey::Length)
        );
        assert_eq!(
            "rsa:abcd".parse::<VerificationKey>(),
            Err(InvalidVerificationKey::Algorithm)
        );
        assert_eq!(
            "hmac-sha256:zz".parse::<VerificationKey>(),
            Err(InvalidVerificationKey::Hex)
        );
    }

    #[test]
    fn debug_hides_the_shared_secret() {
        let key = VerificationKey::hmac_sha256(vec![0x5c; 32]).unwrap();
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.contains("5c5c"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
