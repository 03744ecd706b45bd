use std::fmt;
use std::str::FromStr;

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The SHA-256 (or HMAC-SHA-256) of a key's secret: what a store keeps.
///
/// Comparison with [`verify`](KeyHash::verify) takes the same time whatever
/// the inputs. `Display` and `FromStr` use 64 lowercase hex digits; `Debug`
/// shows only the first four bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

/// Why a string is not a [`KeyHash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a key hash is exactly 64 hexadecimal digits")]
pub struct InvalidKeyHash;

impl KeyHash {
    /// A hash from its 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes of the hash.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Compares in constant time, four 64-bit words at once.
    pub fn verify(&self, expected: &KeyHash) -> bool {
        let (a, b) = (self.words(), expected.words());
        (a[0].ct_eq(&b[0]) & a[1].ct_eq(&b[1]) & a[2].ct_eq(&b[2]) & a[3].ct_eq(&b[3])).into()
    }

    fn words(&self) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(self.0.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *word = u64::from_ne_bytes(bytes);
        }
        words
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl FromStr for KeyHash {
    type Err = InvalidKeyHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return Err(InvalidKeyHash);
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(Self(out))
    }
}

fn hex_digit(c: u8) -> Result<u8, InvalidKeyHash> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(InvalidKeyHash),
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Hashes secrets: plain SHA-256, or HMAC-SHA-256 with a server-side pepper.
///
/// The secret's characters are hashed as presented, with no decoding step:
/// a default 43-character secret is one SHA-256 block. Keys carry at least
/// 128 bits of randomness, so a fast hash is the right tool (OWASP ASVS
/// 6.5.2); a slow password hash would cost milliseconds per request and buy
/// nothing. A pepper (kept outside the key store) means a stolen copy of the
/// store is useless without it.
///
/// The same hasher must be used to store hashes and to verify keys.
/// `Debug` never shows the pepper.
///
/// # Example
///
/// ```
/// use keyward::key::KeyHasher;
///
/// let plain = KeyHasher::sha256();
/// let peppered = KeyHasher::with_pepper(b"from-a-secret-manager");
/// assert_ne!(plain.hash("secret"), peppered.hash("secret"));
/// assert!(peppered.hash("secret").verify(&peppered.hash("secret")));
/// ```
#[derive(Clone)]
pub struct KeyHasher {
    // HMAC with the pepper's inner and outer pads already absorbed, so a
    // verification costs two compressions, not four.
    pepper: Option<hmac::Hmac<Sha256>>,
}

impl KeyHasher {
    /// Plain SHA-256 of the secret.
    pub fn sha256() -> Self {
        Self { pepper: None }
    }

    /// HMAC-SHA-256 of the secret keyed with `pepper` (any length; 32
    /// random bytes are plenty).
    pub fn with_pepper(pepper: &[u8]) -> Self {
        // HMAC accepts keys of every length, so this never fails.
        let mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(pepper).ok();
        Self { pepper: mac }
    }

    /// Whether a pepper is in use.
    pub fn is_peppered(&self) -> bool {
        self.pepper.is_some()
    }

    /// The hash of `secret`.
    pub fn hash(&self, secret: &str) -> KeyHash {
        let bytes: [u8; 32] = match &self.pepper {
            None => Sha256::digest(secret.as_bytes()).into(),
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(secret.as_bytes());
                mac.finalize().into_bytes().into()
            }
        };
        KeyHash(bytes)
    }
}

impl Default for KeyHasher {
    fn default() -> Self {
        Self::sha256()
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHasher")
            .field("peppered", &self.is_peppered())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            KeyHasher::sha256().hash("abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hmac_known_answer() {
        // RFC 4231 test case 2.
        assert_eq!(
            KeyHasher::with_pepper(b"Jefe")
                .hash("what do ya want for nothing?")
                .to_string(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verify_and_hex_round_trip() {
        let h = KeyHasher::sha256().hash("x");
        assert!(h.verify(&h));
        let mut other = *h.as_bytes();
        other[31] ^= 1;
        assert!(!h.verify(&KeyHash::from_bytes(other)));
        assert_eq!(h.to_string().parse::<KeyHash>(), Ok(h));
        assert_eq!("zz".parse::<KeyHash>(), Err(InvalidKeyHash));
        assert!(!format!("{h:?}").contains(&h.to_string()));
    }
}
