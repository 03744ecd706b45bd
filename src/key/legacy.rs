//! Imported keys: the old format of keys issued before keyward, accepted
//! by the SHA-256 hash of the whole key.

use std::fmt;

use sha2::{Digest, Sha256};

use super::{HashAlgorithm, KeyHash};

/// The least entropy an imported key format must have: 128 bits (OWASP
/// ASVS 6.5.2 asks at least 112 for a secret kept as a plain hash; keyward
/// asks what its own keys have at least).
pub const MIN_LEGACY_BITS: u32 = 128;

/// The longest imported key accepted, prefix included: 256 characters.
pub const MAX_LEGACY_LEN: usize = 256;

/// The characters of an old key's random part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LegacyAlphabet {
    /// `0-9a-f` or `0-9A-F` (4 bits a character; a key is hashed as
    /// presented, so a client must send it in the case it was issued in).
    Hex,
    /// `0-9A-Za-z` (5.95 bits a character).
    Base62,
    /// `A-Za-z0-9-_` (6 bits a character).
    Base64Url,
}

impl LegacyAlphabet {
    /// Bits of entropy a uniformly random character carries, in
    /// thousandths (exact enough to count whole bits of a key).
    fn millibits(self) -> u64 {
        match self {
            LegacyAlphabet::Hex => 4000,
            LegacyAlphabet::Base62 => 5954, // log2(62) = 5.9542
            LegacyAlphabet::Base64Url => 6000,
        }
    }

    fn contains(self, byte: u8) -> bool {
        match self {
            LegacyAlphabet::Hex => byte.is_ascii_hexdigit(),
            LegacyAlphabet::Base62 => byte.is_ascii_alphanumeric(),
            LegacyAlphabet::Base64Url => {
                byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
            }
        }
    }
}

/// Why a [`LegacyFormat`] is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LegacyFormatError {
    /// The random part holds fewer than [`MIN_LEGACY_BITS`] bits: such keys
    /// can be guessed or brute-forced from their hash, and are not
    /// imported. Reissue them instead.
    #[error(
        "keys of this format hold {0} bits of entropy; at least {MIN_LEGACY_BITS} are required"
    )]
    TooWeak(u32),
    /// The key would be longer than [`MAX_LEGACY_LEN`] characters.
    #[error("keys of this format are longer than {MAX_LEGACY_LEN} characters")]
    TooLong,
    /// The prefix holds characters other than visible ASCII.
    #[error("a prefix is visible ASCII")]
    InvalidPrefix,
}

/// The format of the keys a team issued before keyward ("32 hex
/// characters, no prefix, no id, no checksum"), so that they can be
/// imported by their hash and accepted until they are rotated; see
/// [`KeyManager::import_legacy`](crate::KeyManager::import_legacy).
///
/// Only high-entropy formats qualify: the random part must hold at least
/// [`MIN_LEGACY_BITS`] (128) bits, counted as its length times the bits of
/// its alphabet — which holds only if the old keys were drawn uniformly at
/// random (from a CSPRNG); a format that does not is refused. 32 hex
/// characters are 128 bits; 22 base62 characters 130.
///
/// A presented key is an imported one when it matches the format exactly
/// (prefix, length, alphabet) and is not a keyward key. It is then looked
/// up by the SHA-256 of the whole key, as presented, and the record found is
/// compared with it in constant time.
///
/// # Example
///
/// ```
/// use keyward::key::{LegacyAlphabet, LegacyFormat, LegacyFormatError};
///
/// let old = LegacyFormat::new(LegacyAlphabet::Hex, 32)?;
/// assert_eq!(old.entropy_bits(), 128);
/// assert!(old.matches("0123456789abcdef0123456789abcdef"));
/// assert!(!old.matches("sk_live_0123456789abcdef012345678"));
///
/// // 24 hex characters are 96 bits: refused.
/// assert_eq!(LegacyFormat::new(LegacyAlphabet::Hex, 24).unwrap_err(), LegacyFormatError::TooWeak(96));
/// # Ok::<(), LegacyFormatError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct LegacyFormat {
    alphabet: LegacyAlphabet,
    random_len: usize,
    prefix: Box<str>,
}

impl LegacyFormat {
    /// Keys of `random_len` characters of `alphabet`, without prefix.
    pub fn new(alphabet: LegacyAlphabet, random_len: usize) -> Result<Self, LegacyFormatError> {
        let format = Self {
            alphabet,
            random_len,
            prefix: "".into(),
        };
        format.check()?;
        Ok(format)
    }

    /// Keys that begin with `prefix` (such as `old_`) before their random
    /// part. The prefix adds no entropy.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self, LegacyFormatError> {
        if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(LegacyFormatError::InvalidPrefix);
        }
        self.prefix = prefix.into();
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> Result<(), LegacyFormatError> {
        if self.random_len.saturating_add(self.prefix.len()) > MAX_LEGACY_LEN {
            return Err(LegacyFormatError::TooLong);
        }
        let bits = self.entropy_bits();
        if bits < MIN_LEGACY_BITS {
            return Err(LegacyFormatError::TooWeak(bits));
        }
        Ok(())
    }

    /// The bits of entropy of a key of this format, if drawn uniformly.
    pub fn entropy_bits(&self) -> u32 {
        let millibits = self.random_len as u64 * self.alphabet.millibits();
        u32::try_from(millibits / 1000).unwrap_or(u32::MAX)
    }

    /// The alphabet of the random part.
    pub fn alphabet(&self) -> LegacyAlphabet {
        self.alphabet
    }

    /// The length of the random part.
    pub fn random_len(&self) -> usize {
        self.random_len
    }

    /// The prefix (empty for none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether `key` has this format: prefix, exact length, alphabet. No
    /// allocation, no look-up.
    pub fn matches(&self, key: &str) -> bool {
        key.len() == self.prefix.len() + self.random_len
            && key.starts_with(&*self.prefix)
            && key.as_bytes()[self.prefix.len()..]
                .iter()
                .all(|&b| self.alphabet.contains(b))
    }

    /// The hash an imported key of this format is stored and found by: the
    /// SHA-256 of the whole key, as [`HashAlgorithm::ImportedSha256`].
    /// `None` if `key` does not have this format.
    pub fn hash(&self, key: &str) -> Option<KeyHash> {
        self.matches(key).then(|| imported_hash(key))
    }
}

/// The SHA-256 of the whole key, tagged as imported.
pub(crate) fn imported_hash(key: &str) -> KeyHash {
    KeyHash::new(
        HashAlgorithm::ImportedSha256,
        Sha256::digest(key.as_bytes()).into(),
    )
}

impl fmt::Debug for LegacyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacyFormat")
            .field("alphabet", &self.alphabet)
            .field("random_len", &self.random_len)
            .field("prefix", &self.prefix)
            .field("entropy_bits", &self.entropy_bits())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_is_counted_by_alphabet_and_length() {
        assert_eq!(
            LegacyFormat::new(LegacyAlphabet::Hex, 32)
                .unwrap()
                .entropy_bits(),
            128
        );
        assert_eq!(
            LegacyFormat::new(LegacyAlphabet::Base62, 22)
                .unwrap()
                .entropy_bits(),
            130
        );
        assert_eq!(
            LegacyFormat::new(LegacyAlphabet::Base62, 21).unwrap_err(),
            LegacyFormatError::TooWeak(125)
        );
        assert_eq!(
            LegacyFormat::new(LegacyAlphabet::Base64Url, 300).unwrap_err(),
            LegacyFormatError::TooLong
        );
        assert_eq!(
            LegacyFormat::new(LegacyAlphabet::Hex, 32)
                .unwrap()
                .with_prefix("old key"),
            Err(LegacyFormatError::InvalidPrefix)
        );
    }

    #[test]
    fn matching_is_exact() {
        let format = LegacyFormat::new(LegacyAlphabet::Hex, 32)
            .unwrap()
            .with_prefix("old_")
            .unwrap();
        let key = "old_0123456789abcdef0123456789ABCDEF";
        assert!(format.matches(key));
        assert!(!format.matches(&key[1..]));
        assert!(!format.matches(&format!("{key}0")));
        assert!(!format.matches("old_0123456789abcdef0123456789abcdeg"));
        assert!(!format.matches("new_0123456789abcdef0123456789abcdef"));
        assert!(!format.matches("old_0123456789abcdef0123456789abcdé"));
        let hash = format.hash(key).unwrap();
        assert_eq!(hash.algorithm(), HashAlgorithm::ImportedSha256);
        assert_eq!(
            hash.as_bytes(),
            &<[u8; 32]>::from(Sha256::digest(key.as_bytes()))
        );
        assert_eq!(format.hash("old_short"), None);
    }
}
