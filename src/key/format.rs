//! The wire format of a key: `<prefix>_<key id><secret><checksum>`.

use std::fmt;
use std::sync::Arc;

use super::{ApiKey, KeyId};

/// The characters of a key's body: `0-9`, `A-Z`, `a-z`.
pub(crate) const BASE62: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of the public key id, in base62 characters (about 71 bits).
pub const KEY_ID_LEN: usize = 12;
/// Length of the checksum, in base62 characters (a CRC32 fits in six).
pub const CHECKSUM_LEN: usize = 6;
/// The longest prefix a format accepts.
pub const MAX_PREFIX_LEN: usize = 32;
/// The default strength of a secret, in bits.
pub const DEFAULT_SECRET_BITS: u32 = 256;
/// The weakest secret a format accepts, in bits (OWASP ASVS 11.5.1).
pub const MIN_SECRET_BITS: u32 = 128;
/// The strongest secret a format accepts, in bits.
pub const MAX_SECRET_BITS: u32 = 512;
/// The longest secret, in characters: `MAX_SECRET_BITS` of base62.
pub(crate) const MAX_SECRET_LEN: usize = 86;

/// How keys look on the wire: a prefix, a public id, a secret and a checksum.
///
/// A key is `<prefix>_<id><secret><checksum>`:
///
/// - `prefix`: chosen by you, such as `sk_live`; lowercase ASCII letters,
///   digits and `_`, starting with a letter and not ending with `_`, at most
///   32 characters. It tells people and secret scanners what the string is.
/// - `id`: 12 base62 characters, the public key id used to find the record.
/// - `secret`: base62 characters from the operating system's random number
///   generator; 43 of them (256 bits) by default, at least 22 (128 bits).
/// - `checksum`: the CRC32 of everything before it, as 6 base62 characters,
///   so that a mistyped or random string is refused without a look-up.
///
/// With the defaults and prefix `sk_live` a key is 69 characters long and
/// matches the regular expression given by [`KeyFormat::regex`]:
/// `\bsk_live_[0-9A-Za-z]{61}\b`.
///
/// Cloning is cheap (the prefix is shared).
///
/// # Example
///
/// ```
/// use keyward::key::KeyFormat;
///
/// let format = KeyFormat::new("sk_live")?;
/// assert_eq!(format.key_len(), 69);
/// assert_eq!(format.regex(), r"\bsk_live_[0-9A-Za-z]{61}\b");
/// assert!(format.parse("sk_live_not-a-key").is_err());
/// # Ok::<(), keyward::key::FormatError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct KeyFormat {
    prefix: Arc<str>,
    secret_len: usize,
}

/// Why a prefix or secret strength was refused by [`KeyFormat`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The prefix is empty, too long, or has characters outside `[a-z0-9_]`,
    /// does not start with a letter, or ends with `_`.
    #[error("invalid key prefix: use 1 to 32 of a-z, 0-9 and '_', starting with a letter and not ending with '_'")]
    InvalidPrefix,
    /// The secret strength is outside 128 to 512 bits.
    #[error("secret strength must be between 128 and 512 bits, got {0}")]
    SecretBits(u32),
}

/// Why a presented string is not a key of this format.
///
/// The error never holds any part of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The string does not have the format's exact length.
    #[error("API key has the wrong length")]
    Length,
    /// The string does not start with the format's prefix and `_`.
    #[error("API key has the wrong prefix")]
    Prefix,
    /// The body has a character outside base62.
    #[error("API key has a character outside [0-9A-Za-z]")]
    Alphabet,
    /// The checksum does not match: a typo, a truncated or a made-up key.
    #[error("API key checksum does not match")]
    Checksum,
}

/// Why [`KeyFormat::key_from_parts`] refused a secret.
///
/// The error never holds any part of the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum KeyPartsError {
    /// The secret does not have the format's length
    /// ([`KeyFormat::secret_len`]).
    #[error("the secret must be exactly {expected} characters of [0-9A-Za-z]")]
    SecretLength {
        /// The format's secret length.
        expected: usize,
    },
    /// The secret has a character outside base62.
    #[error("the secret has a character outside [0-9A-Za-z]")]
    SecretAlphabet,
}

/// A key taken apart by [`KeyFormat::parse`], borrowing the presented string.
///
/// `Debug` shows the id, never the secret.
#[derive(Clone, Copy)]
pub struct ParsedKey<'a> {
    id: KeyId,
    secret: &'a str,
}

impl<'a> ParsedKey<'a> {
    /// The public key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The secret part, exactly as presented (this is what gets hashed).
    pub fn secret(&self) -> &'a str {
        self.secret
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl KeyFormat {
    /// A format with the given prefix and a 256-bit secret.
    pub fn new(prefix: &str) -> Result<Self, FormatError> {
        if !valid_prefix(prefix) {
            return Err(FormatError::InvalidPrefix);
        }
        Ok(Self {
            prefix: prefix.into(),
            secret_len: secret_len_for(DEFAULT_SECRET_BITS),
        })
    }

    /// Sets the secret's strength in bits (128 to 512, rounded up to whole
    /// base62 characters).
    pub fn with_secret_bits(mut self, bits: u32) -> Result<Self, FormatError> {
        if !(MIN_SECRET_BITS..=MAX_SECRET_BITS).contains(&bits) {
            return Err(FormatError::SecretBits(bits));
        }
        self.secret_len = secret_len_for(bits);
        Ok(self)
    }

    /// The prefix, without the `_` that follows it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The number of base62 characters in the secret.
    pub fn secret_len(&self) -> usize {
        self.secret_len
    }

    /// The exact length of every key of this format.
    pub fn key_len(&self) -> usize {
        self.prefix.len() + 1 + KEY_ID_LEN + self.secret_len + CHECKSUM_LEN
    }

    /// A regular expression that matches keys of this format, for secret
    /// scanners (GitHub, GitLab, trufflehog, gitleaks).
    pub fn regex(&self) -> String {
        format!(
            r"\b{}_[0-9A-Za-z]{{{}}}\b",
            self.prefix,
            KEY_ID_LEN + self.secret_len + CHECKSUM_LEN
        )
    }

    /// Parses a presented key: exact length, prefix, alphabet and checksum,
    /// in that order, without allocating and without any look-up.
    pub fn parse<'a>(&self, key: &'a str) -> Result<ParsedKey<'a>, ParseError> {
        let bytes = key.as_bytes();
        if bytes.len() != self.key_len() {
            return Err(ParseError::Length);
        }
        let prefix_len = self.prefix.len();
        if &bytes[..prefix_len] != self.prefix.as_bytes() || bytes[prefix_len] != b'_' {
            return Err(ParseError::Prefix);
        }
        let body = &bytes[prefix_len + 1..];
        if !all_base62(body) {
            return Err(ParseError::Alphabet);
        }
        let (signed, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        // The presented checksum, read as a number (its digits are base62,
        // checked above), against the CRC: one multiply-add a digit, where
        // writing the CRC out as digits took a division each.
        if decode_checksum(checksum) != u64::from(crc32fast::hash(signed)) {
            return Err(ParseError::Checksum);
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&body[..KEY_ID_LEN]);
        // All bytes were checked to be ASCII, so these slices fall on
        // character boundaries.
        let secret_start = prefix_len + 1 + KEY_ID_LEN;
        Ok(ParsedKey {
            id: KeyId::from_checked(id),
            secret: &key[secret_start..secret_start + self.secret_len],
        })
    }

    /// The key of this format with this id and secret (the checksum is
    /// computed): **a test and migration tool**, not a way to mint keys —
    /// [`KeyGenerator`](super::KeyGenerator) does that.
    ///
    /// - Tests: fixtures with known keys, and well-formed keys that must
    ///   fail in a given way (a known id with a wrong secret is refused as
    ///   [`WrongSecret`](crate::RejectReason::WrongSecret), past every
    ///   format check).
    /// - Migration: a key whose id and secret you hold, re-issued under
    ///   another prefix (`sk_old_…` to `sk_live_…`): the stored hash is of
    ///   the secret alone, so the record verifies the new string as it did
    ///   the old one.
    ///
    /// The secret must have the format's length and be base62; the id is
    /// checked by its type.
    ///
    /// ```
    /// use keyward::key::{KeyFormat, KeyId, KeyPartsError};
    ///
    /// let format = KeyFormat::new("sk_test")?.with_secret_bits(128)?;
    /// let id: KeyId = "fixture00001".parse()?;
    /// let key = format.key_from_parts(id, "0123456789abcdefABCDEF")?;
    /// assert_eq!(format.parse(key.expose_secret())?.id(), id);
    /// assert_eq!(key.secret(), "0123456789abcdefABCDEF");
    /// assert_eq!(
    ///     format.key_from_parts(id, "too-short").unwrap_err(),
    ///     KeyPartsError::SecretLength { expected: 22 }
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn key_from_parts(&self, id: KeyId, secret: &str) -> Result<ApiKey, KeyPartsError> {
        let bytes = secret.as_bytes();
        if bytes.len() != self.secret_len {
            return Err(KeyPartsError::SecretLength {
                expected: self.secret_len,
            });
        }
        if !all_base62(bytes) {
            return Err(KeyPartsError::SecretAlphabet);
        }
        Ok(ApiKey::from_parts(self, id, bytes))
    }

    /// Writes `<prefix>_<id><secret><checksum>` into `out`.
    pub(crate) fn write_key(&self, id: &KeyId, secret: &[u8], out: &mut String) {
        out.reserve_exact(self.key_len());
        out.push_str(&self.prefix);
        out.push('_');
        out.push_str(id.as_str());
        // The secret is base62, hence ASCII.
        out.extend(secret.iter().map(|&b| b as char));
        let checksum = encode_checksum(crc32fast::hash(out.as_bytes()));
        out.extend(checksum.iter().map(|&b| b as char));
    }
}

impl fmt::Debug for KeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFormat")
            .field("prefix", &self.prefix)
            .field("secret_len", &self.secret_len)
            .finish()
    }
}

fn valid_prefix(prefix: &str) -> bool {
    let bytes = prefix.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_PREFIX_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'_'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

/// Whole base62 characters needed for `bits` bits: ceil(bits / log2(62)).
fn secret_len_for(bits: u32) -> usize {
    (f64::from(bits) / 62f64.log2()).ceil() as usize
}

/// Whether every byte is `0-9`, `A-Z` or `a-z`; without an early exit
/// (a key is short and junk is rare). Sixteen bytes at a time, the last
/// block overlapping the one before when the length is not a multiple of
/// 16: measured (callgrind), about 100 instructions fewer on a 61-byte key
/// body than one loop over the bytes, whose tail went byte by byte.
fn all_base62(bytes: &[u8]) -> bool {
    const BLOCK: usize = 16;
    fn outside(b: u8) -> u8 {
        // `b & 0xdf` folds `a-z` onto `A-Z` and moves no other byte there.
        let digit = b.wrapping_sub(b'0') < 10;
        let letter = (b & 0xdf).wrapping_sub(b'A') < 26;
        u8::from(!(digit | letter))
    }
    fn block(bytes: &[u8; BLOCK]) -> u8 {
        bytes.iter().fold(0, |bad, &b| bad | outside(b))
    }
    let mut bad = 0;
    let mut blocks = bytes.chunks_exact(BLOCK);
    for chunk in &mut blocks {
        if let Ok(chunk) = chunk.try_into() {
            bad |= block(chunk);
        }
    }
    if !blocks.remainder().is_empty() {
        match bytes.len().checked_sub(BLOCK) {
            Some(start) => {
                if let Ok(last) = bytes[start..].try_into() {
                    bad |= block(last);
                }
            }
            None => bad |= bytes.iter().fold(0, |bad, &b| bad | outside(b)),
        }
    }
    bad == 0
}

/// The value of each base62 digit, by its byte (other bytes: 0, never
/// read: the digits are checked first).
const BASE62_VALUES: [u8; 256] = {
    let mut values = [0u8; 256];
    let mut digit = 0;
    while digit < BASE62.len() {
        values[BASE62[digit] as usize] = digit as u8;
        digit += 1;
    }
    values
};

/// Six base62 digits, most significant first, as the number they write
/// (below 62^6, so a `u64`): the inverse of [`encode_checksum`].
fn decode_checksum(digits: &[u8]) -> u64 {
    digits.iter().fold(0, |value, &digit| {
        value * 62 + u64::from(BASE62_VALUES[usize::from(digit)])
    })
}

/// A CRC32 as six base62 digits, most significant first.
fn encode_checksum(mut crc: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for digit in out.iter_mut().rev() {
        *digit = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_lengths() {
        assert_eq!(secret_len_for(128), 22);
        assert_eq!(secret_len_for(256), 43);
        assert_eq!(secret_len_for(512), 86);
        assert_eq!(secret_len_for(MAX_SECRET_BITS), MAX_SECRET_LEN);
    }

    #[test]
    fn prefixes() {
        for good in ["sk", "sk_live", "a", "k2_test_9"] {
            assert!(KeyFormat::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "_sk",
            "sk_",
            "SK",
            "sk-live",
            "1sk",
            "sk live",
            &"a".repeat(33),
        ] {
            assert_eq!(
                KeyFormat::new(bad),
                Err(FormatError::InvalidPrefix),
                "{bad}"
            );
        }
    }

    #[test]
    fn checksum_is_six_digits() {
        assert_eq!(&encode_checksum(0), b"000000");
        assert_eq!(&encode_checksum(61), b"00000z");
        assert_eq!(&encode_checksum(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn secret_bits_bounds() {
        let f = KeyFormat::new("sk").unwrap();
        assert_eq!(
            f.clone().with_secret_bits(127),
            Err(FormatError::SecretBits(127))
        );
        assert_eq!(
            f.clone().with_secret_bits(513),
            Err(FormatError::SecretBits(513))
        );
        assert_eq!(f.with_secret_bits(128).unwrap().secret_len(), 22);
    }

    proptest::proptest! {
        #[test]
        fn base62_check_agrees_with_the_standard_library(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            proptest::prop_assert_eq!(
                all_base62(&bytes),
                bytes.iter().all(u8::is_ascii_alphanumeric)
            );
        }
    }

    proptest::proptest! {
        /// Any length, a bad byte anywhere: the blocks and the overlapping
        /// last block see every byte.
        #[test]
        fn base62_check_sees_every_position(len in 0usize..100, at in 0usize..100, bad in proptest::sample::select(vec![b'-', b'_', b'/', b'@', b'[', b'`', b'{', 0x80, 0xc1, 0xe1, 0])) {
            let mut bytes = vec![b'a'; len];
            proptest::prop_assert!(all_base62(&bytes));
            if len > 0 {
                bytes[at % len] = bad;
                proptest::prop_assert!(!all_base62(&bytes));
            }
        }

        /// Reading six digits back gives the CRC they were written from.
        #[test]
        fn checksums_decode_to_their_crc(crc in proptest::num::u32::ANY) {
            proptest::prop_assert_eq!(decode_checksum(&encode_checksum(crc)), u64::from(crc));
        }
    }

    #[test]
    fn base62_check_covers_every_byte() {
        for b in 0..=u8::MAX {
            assert_eq!(all_base62(&[b]), b.is_ascii_alphanumeric(), "{b:#x}");
        }
    }
}
