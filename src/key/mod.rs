//! Key material: the plaintext [`ApiKey`], its public [`KeyId`], the wire
//! [`KeyFormat`], the [`KeyGenerator`] and the [`KeyHasher`]; and the
//! [`VerificationKey`] of keys that sign requests instead.
//!
//! A key is `<prefix>_<id><secret><checksum>` (see [`KeyFormat`]). The id is
//! public and finds the record; only a hash of the secret is stored; the
//! checksum lets a server or a secret scanner refuse junk without a look-up.
//!
//! # Example
//!
//! ```
//! use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
//!
//! let generator = KeyGenerator::new(KeyFormat::new("sk_live")?);
//! let key = generator.generate()?;
//!
//! // What the client gets, once:
//! let plaintext: &str = key.expose_secret();
//! // What the server stores:
//! let hash = KeyHasher::sha256().hash(key.secret());
//!
//! // On a request, the server parses and verifies without the plaintext:
//! let parsed = generator.format().parse(plaintext)?;
//! assert_eq!(parsed.id(), key.id());
//! assert!(KeyHasher::sha256().hash(parsed.secret()).verify(&hash));
//!
//! // Debug and Display never show the secret.
//! assert!(!format!("{key:?} {key}").contains(key.secret()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod format;
mod generator;
mod hash;
mod legacy;
mod verification;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use zeroize::Zeroizing;

pub(crate) use format::MAX_SECRET_LEN;
pub use format::{
    FormatError, KeyFormat, KeyPartsError, ParseError, ParsedKey, CHECKSUM_LEN,
    DEFAULT_SECRET_BITS, KEY_ID_LEN, MAX_PREFIX_LEN, MAX_SECRET_BITS, MIN_SECRET_BITS,
};
#[cfg(feature = "signatures")]
pub(crate) use generator::random_bytes;
pub use generator::{GenerateError, KeyGenerator};
pub use hash::{
    DuplicatePepperId, HashAlgorithm, InvalidHashAlgorithm, InvalidKeyHash, InvalidPepperId,
    KeyHash, KeyHasher, PepperId, UnknownPepper,
};
pub(crate) use legacy::imported_hash;
pub use legacy::{
    LegacyAlphabet, LegacyFormat, LegacyFormatError, MAX_LEGACY_LEN, MIN_LEGACY_BITS,
};
pub use verification::{InvalidVerificationKey, SharedSecret, VerificationKey};

/// The public id of a key: 12 base62 characters, stored inline (`Copy`).
///
/// It is safe to log, to show to users and to use as a database key. Its
/// `Hash` feeds all twelve bytes as two words: ids are public, so there is
/// nothing for a keyed hash to protect (see [`KeyIdBuildHasher`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

/// Why a string is not a [`KeyId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a key id is exactly 12 characters of [0-9A-Za-z]")]
pub struct InvalidKeyId;

impl KeyId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        // Constructed only from checked base62 bytes, so always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The id's characters, unchecked (they are base62 ASCII).
    pub(crate) fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }

    pub(crate) fn from_checked(bytes: [u8; KEY_ID_LEN]) -> Self {
        debug_assert!(bytes.iter().all(u8::is_ascii_alphanumeric));
        Self(bytes)
    }
}

impl FromStr for KeyId {
    type Err = InvalidKeyId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; KEY_ID_LEN] = s.as_bytes().try_into().map_err(|_| InvalidKeyId)?;
        if bytes.iter().all(u8::is_ascii_alphanumeric) {
            Ok(Self(bytes))
        } else {
            Err(InvalidKeyId)
        }
    }
}

impl TryFrom<&str> for KeyId {
    type Error = InvalidKeyId;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl Hash for KeyId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // All twelve bytes count, as two words: ids that share a prefix
        // (imported, sequential) must not share a bucket.
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        let mut tail = [0u8; 4];
        tail.copy_from_slice(&self.0[8..]);
        state.write_u64(u64::from_le_bytes(head));
        state.write_u64(u64::from(u32::from_le_bytes(tail)));
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A `BuildHasher` for maps keyed by [`KeyId`]: one multiply, no SipHash.
///
/// Ids are random and minted by the server; a client can only look ids up,
/// never insert them, so a keyed hash buys nothing on this path.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyIdBuildHasher;

impl std::hash::BuildHasher for KeyIdBuildHasher {
    type Hasher = KeyIdHasher;

    fn build_hasher(&self) -> KeyIdHasher {
        KeyIdHasher(0)
    }
}

/// The hasher made by [`KeyIdBuildHasher`].
#[derive(Debug, Clone, Copy)]
pub struct KeyIdHasher(u64);

impl Hasher for KeyIdHasher {
    fn finish(&self) -> u64 {
        // A multiply carries bits only upwards, so finish with a full
        // avalanche (murmur3's fmix64): every output bit depends on every
        // byte, and ids that differ in one character land far apart.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, word: u64) {
        // Fx-style mixing: spreads the ASCII bytes over all 64 bits, so both
        // the low (bucket) and high (tag) bits vary.
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// A plaintext API key, as handed to its owner once.
///
/// `Debug` and `Display` show only the prefix and the public id; the memory
/// holding the key is zeroed when it is dropped. Use
/// [`expose_secret`](ApiKey::expose_secret) to get the whole string, for
/// example to show it to the user who asked for it.
pub struct ApiKey {
    full: Zeroizing<String>,
    id: KeyId,
    secret_start: usize,
    secret_len: usize,
}

impl ApiKey {
    /// Parses and checks a key of `format`, keeping an owned copy.
    pub fn parse(format: &KeyFormat, key: &str) -> Result<Self, ParseError> {
        let parsed = format.parse(key)?;
        Ok(Self {
            full: Zeroizing::new(key.to_owned()),
            id: parsed.id(),
            secret_start: format.prefix().len() + 1 + KEY_ID_LEN,
            secret_len: format.secret_len(),
        })
    }

    pub(crate) fn from_parts(format: &KeyFormat, id: KeyId, secret: &[u8]) -> Self {
        let mut full = Zeroizing::new(String::new());
        format.write_key(&id, secret, &mut full);
        Self {
            full,
            id,
            secret_start: format.prefix().len() + 1 + KEY_ID_LEN,
            secret_len: format.secret_len(),
        }
    }

    /// The public key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The whole key, as the client must present it. Handle with care: never
    /// log it or store it.
    pub fn expose_secret(&self) -> &str {
        &self.full
    }

    /// The secret part alone: the input to [`KeyHasher::hash`].
    pub fn secret(&self) -> &str {
        &self.full[self.secret_start..self.secret_start + self.secret_len]
    }

    fn prefix(&self) -> &str {
        // The prefix is everything before the `_` that precedes the id.
        &self.full[..self.secret_start - KEY_ID_LEN - 1]
    }
}

impl Clone for ApiKey {
    fn clone(&self) -> Self {
        Self {
            full: self.full.clone(),
            id: self.id,
            secret_start: self.secret_start,
            secret_len: self.secret_len,
        }
    }
}

impl PartialEq for ApiKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.full.as_bytes().ct_eq(other.full.as_bytes()).into()
    }
}

impl Eq for ApiKey {}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("prefix", &self.prefix())
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl fmt::Display for ApiKey {
    /// `<prefix>_<id>…`: enough to recognise a key, never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}…", self.prefix(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_parsing() {
        assert!("abcDEF012345".parse::<KeyId>().is_ok());
        assert_eq!("abcDEF01234".parse::<KeyId>(), Err(InvalidKeyId));
        assert_eq!("abcDEF01234_".parse::<KeyId>(), Err(InvalidKeyId));
        assert_eq!("abcDEF01234é".parse::<KeyId>(), Err(InvalidKeyId));
    }

    #[test]
    fn debug_and_display_hide_the_secret() {
        let generator = KeyGenerator::new(KeyFormat::new("sk_test").unwrap());
        let key = generator.generate().unwrap();
        for shown in [format!("{key:?}"), format!("{key}"), format!("{key:#?}")] {
            assert!(!shown.contains(key.secret()), "{shown}");
            assert!(shown.contains(key.id().as_str()));
            assert!(shown.contains("sk_test"));
        }
    }
}
