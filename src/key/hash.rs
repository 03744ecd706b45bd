use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Names one pepper among those a service has used, so that stored hashes
/// say which one made them and peppers can be rotated: a number from 0 to
/// 255, raised at each rotation (1, 2, 3 …).
///
/// A number rather than a name keeps [`KeyHash`] (and so every record) two
/// bytes larger than the hash itself. It is not secret; the pepper is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct PepperId(u8);

impl PepperId {
    /// The pepper numbered `id`.
    pub const fn new(id: u8) -> Self {
        Self(id)
    }

    /// The number.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for PepperId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for PepperId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PepperId({})", self.0)
    }
}

impl From<u8> for PepperId {
    fn from(id: u8) -> Self {
        Self(id)
    }
}

/// Why a string is not a [`PepperId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a pepper id is a number from 0 to 255, without leading zeros")]
pub struct InvalidPepperId;

impl FromStr for PepperId {
    type Err = InvalidPepperId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // One spelling per id: "1", never "01" or "+1".
        let canonical = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        if !canonical {
            return Err(InvalidPepperId);
        }
        s.parse::<u8>().map(Self).map_err(|_| InvalidPepperId)
    }
}

/// How a [`KeyHash`] was made: plain SHA-256 of the secret, or HMAC-SHA-256
/// keyed with a server-side pepper, named by its [`PepperId`].
///
/// Written `sha256` or `hmac-sha256:<pepper id>` (`Display`, `FromStr`,
/// serde): the value of an algorithm column next to a 32-byte hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HashAlgorithm {
    /// SHA-256 of the secret.
    Sha256,
    /// HMAC-SHA-256 of the secret, keyed with this pepper.
    HmacSha256(PepperId),
    /// SHA-256 of a whole imported old-format key (see
    /// [`LegacyFormat`](super::LegacyFormat)): such a record is found by
    /// this hash, never by its id, and its kind is
    /// [`Imported`](crate::CredentialKind::Imported).
    ImportedSha256,
}

impl HashAlgorithm {
    /// The pepper, for HMAC.
    pub fn pepper_id(&self) -> Option<PepperId> {
        match self {
            HashAlgorithm::Sha256 | HashAlgorithm::ImportedSha256 => None,
            HashAlgorithm::HmacSha256(id) => Some(*id),
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashAlgorithm::Sha256 => f.write_str("sha256"),
            HashAlgorithm::HmacSha256(id) => write!(f, "hmac-sha256:{id}"),
            HashAlgorithm::ImportedSha256 => f.write_str("imported-sha256"),
        }
    }
}

/// Why a string is not a [`HashAlgorithm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a hash algorithm is \"sha256\", \"hmac-sha256:<pepper id 0-255>\" or \"imported-sha256\"")]
pub struct InvalidHashAlgorithm;

impl FromStr for HashAlgorithm {
    type Err = InvalidHashAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "sha256" {
            return Ok(HashAlgorithm::Sha256);
        }
        if s == "imported-sha256" {
            return Ok(HashAlgorithm::ImportedSha256);
        }
        let id = s.strip_prefix("hmac-sha256:").ok_or(InvalidHashAlgorithm)?;
        id.parse()
            .map(HashAlgorithm::HmacSha256)
            .map_err(|_| InvalidHashAlgorithm)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for HashAlgorithm {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for HashAlgorithm {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The hash of a key's secret, and the [`HashAlgorithm`] that made it: what
/// a store keeps.
///
/// The algorithm travels with the hash, so that a service verifies each
/// record the way it was made: adding a pepper later does not lock out
/// the keys hashed before (see [`KeyHasher`]).
///
/// Comparison with [`verify`](KeyHash::verify) takes the same time whatever
/// the inputs. `Display`, `FromStr` and serde use `sha256:<64 hex digits>`
/// or `hmac-sha256:<pepper id>:<64 hex digits>`, lowercase; a bare
/// `<64 hex digits>`, the form of earlier versions, reads as plain SHA-256.
/// A database can keep the 32 bytes ([`as_bytes`](KeyHash::as_bytes), e.g.
/// in a `bytea`) and the algorithm ([`algorithm`](KeyHash::algorithm), as
/// text) in two columns and rebuild the hash with [`KeyHash::new`].
/// `Debug` shows only the first four bytes.
///
/// ```
/// use keyward::key::{HashAlgorithm, KeyHash, KeyHasher, PepperId};
///
/// let hash = KeyHasher::with_pepper(PepperId::new(1), b"from-a-secret-manager").hash("secret");
/// assert_eq!(hash.algorithm(), HashAlgorithm::HmacSha256(PepperId::new(1)));
/// assert!(hash.to_string().starts_with("hmac-sha256:1:"));
///
/// // Two columns and back.
/// let (algorithm, bytes) = (hash.algorithm().to_string(), *hash.as_bytes());
/// assert_eq!(KeyHash::new(algorithm.parse()?, bytes), hash);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash {
    bytes: [u8; 32],
    algorithm: HashAlgorithm,
}

/// Why a string is not a [`KeyHash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a key hash is \"sha256:<64 hex digits>\", \"hmac-sha256:<pepper id>:<64 hex digits>\", \"imported-sha256:<64 hex digits>\" or 64 hex digits")]
pub struct InvalidKeyHash;

impl KeyHash {
    /// A hash made by `algorithm`, from its 32 bytes.
    pub const fn new(algorithm: HashAlgorithm, bytes: [u8; 32]) -> Self {
        Self { bytes, algorithm }
    }

    /// A plain SHA-256 hash from its 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self::new(HashAlgorithm::Sha256, bytes)
    }

    /// The 32 bytes of the hash.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The algorithm that made the hash.
    pub const fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    /// Whether both are the same algorithm's hash of the same secret. The
    /// bytes are compared in constant time, and always (the algorithms are
    /// not secret): the differences of the four 64-bit words are folded
    /// into one word, without a branch, and that word is compared with zero
    /// by `subtle` (one constant-time compare instead of four).
    pub fn verify(&self, expected: &KeyHash) -> bool {
        let (a, b) = (self.words(), expected.words());
        let differences = (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]);
        let same: bool = differences.ct_eq(&0).into();
        same & (self.algorithm == expected.algorithm)
    }

    fn words(&self) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(self.bytes.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *word = u64::from_ne_bytes(bytes);
        }
        words
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.algorithm)?;
        self.bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyHash({}:{:02x}{:02x}{:02x}{:02x}…)",
            self.algorithm, self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]
        )
    }
}

impl FromStr for KeyHash {
    type Err = InvalidKeyHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The bare form of earlier versions: plain SHA-256.
        let (algorithm, hex) = match s.rsplit_once(':') {
            None => (HashAlgorithm::Sha256, s),
            Some((algorithm, hex)) => (algorithm.parse().map_err(|_| InvalidKeyHash)?, hex),
        };
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return Err(InvalidKeyHash);
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(Self::new(algorithm, bytes))
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

/// A stored hash names a pepper this [`KeyHasher`] does not have: the key
/// cannot be verified (a deployment that lost a pepper, or a record from
/// another service). Not the client's fault, and not a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stored hash was made with pepper {0}, which this service does not have")]
pub struct UnknownPepper(PepperId);

impl UnknownPepper {
    /// The pepper the hash names.
    pub fn pepper_id(&self) -> PepperId {
        self.0
    }
}

/// Two peppers given the same [`PepperId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("pepper id {0} is given twice")]
pub struct DuplicatePepperId(PepperId);

impl DuplicatePepperId {
    /// The id given twice.
    pub fn pepper_id(&self) -> PepperId {
        self.0
    }
}

/// Hashes secrets: plain SHA-256, or HMAC-SHA-256 with a server-side pepper;
/// and verifies secrets against stored [`KeyHash`]es, each by the algorithm
/// that made it.
///
/// The secret's characters are hashed as presented, with no decoding step:
/// a default 43-character secret is one SHA-256 block. Keys carry at least
/// 128 bits of randomness, so a fast hash is the right tool (OWASP ASVS
/// 6.5.2); a slow password hash would cost milliseconds per request and buy
/// nothing. A pepper (kept outside the key store) means a stolen copy of the
/// store is useless without it.
///
/// New hashes are made with the *current* algorithm: plain SHA-256, or the
/// pepper given to [`with_pepper`](KeyHasher::with_pepper). Verification
/// ([`verify`](KeyHasher::verify)) follows the stored hash's own algorithm:
///
/// - plain SHA-256 hashes verify with every hasher;
/// - a hash made with pepper *n* verifies while the hasher has pepper *n*,
///   as its current pepper or as a retired one
///   ([`with_retired_pepper`](KeyHasher::with_retired_pepper));
/// - a hash naming a pepper the hasher lacks is [`UnknownPepper`]: the
///   [`AuthLayer`](crate::AuthLayer) logs it as an error and refuses the
///   request with `503` (fail closed, and without telling a perhaps valid
///   key that it is invalid).
///
/// `Debug` never shows a pepper.
///
/// # Adding or rotating a pepper
///
/// The server never holds a key's secret after issuing it, so a stored hash
/// cannot be re-hashed in place. Instead:
///
/// 1. Deploy the new hasher: `KeyHasher::with_pepper(PepperId::new(2), new)`,
///    with `.with_retired_pepper(PepperId::new(1), old)?` if there was a
///    pepper before. Existing keys keep working; new and rotated keys get
///    the new pepper.
/// 2. Move the old keys over by rotating them
///    ([`KeyManager::rotate`](crate::KeyManager::rotate): the successor is
///    hashed by the manager's hasher), or let them expire. Records still on
///    an old algorithm are those for which
///    [`is_current`](KeyHasher::is_current) is false.
/// 3. When none is left, drop the retired pepper.
///
/// # Example
///
/// ```
/// use keyward::key::{HashAlgorithm, KeyHasher, PepperId};
///
/// let plain = KeyHasher::sha256();
/// let old = plain.hash("secret");
///
/// // A pepper added later: new hashes use it, old ones still verify.
/// let peppered = KeyHasher::with_pepper(PepperId::new(1), b"from-a-secret-manager");
/// let new = peppered.hash("secret");
/// assert_eq!(new.algorithm(), HashAlgorithm::HmacSha256(PepperId::new(1)));
/// assert_eq!(peppered.verify("secret", &old), Ok(true));
/// assert_eq!(peppered.verify("secret", &new), Ok(true));
/// assert_eq!(peppered.verify("guess", &new), Ok(false));
/// assert!(!peppered.is_current(&old));
///
/// // A hasher without pepper 1 cannot verify what it made.
/// assert!(plain.verify("secret", &new).is_err());
/// ```
#[derive(Clone)]
pub struct KeyHasher {
    current: HashAlgorithm,
    // Every pepper this hasher knows, the current one first. HMAC with the
    // pepper's inner and outer pads already absorbed, so a verification
    // costs two compressions, not four.
    peppers: Arc<[Pepper]>,
}

#[derive(Clone)]
struct Pepper {
    id: PepperId,
    mac: hmac::Hmac<Sha256>,
}

impl Pepper {
    fn new(id: PepperId, pepper: &[u8]) -> Self {
        // HMAC's own key preparation (RFC 2104: a key longer than a block
        // is hashed, a shorter one padded with zeros), so that making the
        // MAC cannot fail.
        let mut block = hmac::digest::Key::<hmac::Hmac<Sha256>>::default();
        if pepper.len() > block.len() {
            block[..32].copy_from_slice(&Sha256::digest(pepper));
        } else {
            block[..pepper.len()].copy_from_slice(pepper);
        }
        let mac = <hmac::Hmac<Sha256> as KeyInit>::new(&block);
        zeroize::Zeroize::zeroize(block.as_mut_slice());
        Self { id, mac }
    }
}

impl KeyHasher {
    /// Plain SHA-256 of the secret.
    pub fn sha256() -> Self {
        Self {
            current: HashAlgorithm::Sha256,
            peppers: Arc::new([]),
        }
    }

    /// HMAC-SHA-256 of the secret keyed with `pepper` (any length; 32
    /// random bytes are plenty), named `id` in the hashes it makes.
    pub fn with_pepper(id: PepperId, pepper: &[u8]) -> Self {
        Self {
            current: HashAlgorithm::HmacSha256(id),
            peppers: Arc::new([Pepper::new(id, pepper)]),
        }
    }

    /// Also verifies hashes made with `pepper`, named `id`, without making
    /// new ones with it: a pepper being rotated out. An `id` this hasher
    /// already has is a [`DuplicatePepperId`].
    pub fn with_retired_pepper(
        self,
        id: PepperId,
        pepper: &[u8],
    ) -> Result<Self, DuplicatePepperId> {
        if self.peppers.iter().any(|p| p.id == id) {
            return Err(DuplicatePepperId(id));
        }
        let mut peppers = self.peppers.to_vec();
        peppers.push(Pepper::new(id, pepper));
        Ok(Self {
            current: self.current,
            peppers: peppers.into(),
        })
    }

    /// Whether new hashes are peppered.
    pub fn is_peppered(&self) -> bool {
        self.current != HashAlgorithm::Sha256
    }

    /// The algorithm of new hashes.
    pub fn algorithm(&self) -> HashAlgorithm {
        self.current
    }

    /// The hash of `secret`, by the current algorithm.
    pub fn hash(&self, secret: &str) -> KeyHash {
        match (self.current, self.peppers.first()) {
            (HashAlgorithm::HmacSha256(_), Some(pepper)) => Self::hmac(pepper, secret),
            _ => Self::plain(secret),
        }
    }

    /// The hash of `secret` by `algorithm`, if this hasher has its pepper.
    pub fn hash_as(
        &self,
        algorithm: HashAlgorithm,
        secret: &str,
    ) -> Result<KeyHash, UnknownPepper> {
        match algorithm {
            HashAlgorithm::Sha256 => Ok(Self::plain(secret)),
            HashAlgorithm::ImportedSha256 => Ok(super::legacy::imported_hash(secret)),
            HashAlgorithm::HmacSha256(id) => self
                .peppers
                .iter()
                .find(|p| p.id == id)
                .map(|pepper| Self::hmac(pepper, secret))
                .ok_or(UnknownPepper(id)),
        }
    }

    /// Whether `secret` is the one `stored` was made from, hashing it by
    /// `stored`'s algorithm and comparing in constant time.
    pub fn verify(&self, secret: &str, stored: &KeyHash) -> Result<bool, UnknownPepper> {
        Ok(self.hash_as(stored.algorithm, secret)?.verify(stored))
    }

    /// Whether this hasher can verify hashes made by `algorithm`.
    pub fn can_verify(&self, algorithm: HashAlgorithm) -> bool {
        match algorithm {
            HashAlgorithm::Sha256 | HashAlgorithm::ImportedSha256 => true,
            HashAlgorithm::HmacSha256(id) => self.peppers.iter().any(|p| p.id == id),
        }
    }

    /// Whether `hash` was made by the current algorithm; if not, the key is
    /// one to move over by rotating it (see the type's docs).
    pub fn is_current(&self, hash: &KeyHash) -> bool {
        hash.algorithm == self.current
    }

    fn plain(secret: &str) -> KeyHash {
        KeyHash::new(
            HashAlgorithm::Sha256,
            Sha256::digest(secret.as_bytes()).into(),
        )
    }

    fn hmac(pepper: &Pepper, secret: &str) -> KeyHash {
        let mut mac = pepper.mac.clone();
        mac.update(secret.as_bytes());
        KeyHash::new(
            HashAlgorithm::HmacSha256(pepper.id),
            mac.finalize().into_bytes().into(),
        )
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
            .field("algorithm", &format_args!("{}", self.current))
            .field(
                "peppers",
                &self.peppers.iter().map(|p| p.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: PepperId = PepperId::new(1);

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            KeyHasher::sha256().hash("abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hmac_known_answer() {
        // RFC 4231 test case 2.
        assert_eq!(
            KeyHasher::with_pepper(PepperId::new(7), b"Jefe")
                .hash("what do ya want for nothing?")
                .to_string(),
            "hmac-sha256:7:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_known_answer_for_a_pepper_longer_than_a_block() {
        // RFC 4231 test case 6: a 131-byte key is hashed first.
        assert_eq!(
            KeyHasher::with_pepper(ONE, &[0xaa; 131])
                .hash("Test Using Larger Than Block-Size Key - Hash Key First")
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        // And a key of exactly one block is used as it is.
        let block = [0x0b; 64];
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&block).unwrap();
        mac.update(b"x");
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(
            KeyHasher::with_pepper(ONE, &block).hash("x").as_bytes(),
            &expected
        );
    }

    #[test]
    fn verify_sees_every_bit() {
        let h = KeyHasher::sha256().hash("x");
        for byte in 0..32 {
            for bit in 0..8 {
                let mut other = *h.as_bytes();
                other[byte] ^= 1 << bit;
                assert!(
                    !h.verify(&KeyHash::new(h.algorithm(), other)),
                    "{byte} {bit}"
                );
            }
        }
        assert!(h.verify(&KeyHash::new(h.algorithm(), *h.as_bytes())));
    }

    #[test]
    fn verify_and_text_round_trip() {
        for h in [
            KeyHasher::sha256().hash("x"),
            KeyHasher::with_pepper(PepperId::new(255), b"p").hash("x"),
        ] {
            assert!(h.verify(&h));
            let mut other = *h.as_bytes();
            other[31] ^= 1;
            assert!(!h.verify(&KeyHash::new(h.algorithm(), other)));
            assert_eq!(h.to_string().parse::<KeyHash>(), Ok(h));
            assert!(!format!("{h:?}").contains(&h.to_string()));
        }
        assert_eq!("zz".parse::<KeyHash>(), Err(InvalidKeyHash));
    }

    #[test]
    fn the_same_bytes_by_another_algorithm_do_not_verify() {
        let bytes = *KeyHasher::sha256().hash("x").as_bytes();
        let plain = KeyHash::new(HashAlgorithm::Sha256, bytes);
        let labelled = KeyHash::new(HashAlgorithm::HmacSha256(ONE), bytes);
        assert!(!plain.verify(&labelled));
        assert!(!labelled.verify(&plain));
    }

    #[test]
    fn bare_hex_reads_as_plain_sha256() {
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let hash: KeyHash = hex.parse().unwrap();
        assert_eq!(hash.algorithm(), HashAlgorithm::Sha256);
        assert_eq!(hash, KeyHasher::sha256().hash("abc"));
        assert_eq!(hex.to_uppercase().parse::<KeyHash>(), Ok(hash));
    }

    #[test]
    fn malformed_hashes_and_algorithms_are_refused() {
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        for bad in [
            String::new(),
            format!("{hex}0"),
            hex[1..].to_owned(),
            format!("md5:{hex}"),
            format!("sha256:{}", &hex[2..]),
            format!("sha256::{hex}"),
            format!("hmac-sha256:{hex}"),
            format!("hmac-sha256::{hex}"),
            format!("hmac-sha256:256:{hex}"),
            format!("hmac-sha256:01:{hex}"),
            format!("hmac-sha256:+1:{hex}"),
            format!("hmac-sha256:1:2:{hex}"),
            format!("SHA256:{hex}"),
            format!("sha256:{}g", &hex[1..]),
        ] {
            assert_eq!(bad.parse::<KeyHash>(), Err(InvalidKeyHash), "{bad}");
        }
        for (text, algorithm) in [
            ("sha256", HashAlgorithm::Sha256),
            ("hmac-sha256:0", HashAlgorithm::HmacSha256(PepperId::new(0))),
            (
                "hmac-sha256:255",
                HashAlgorithm::HmacSha256(PepperId::new(255)),
            ),
        ] {
            assert_eq!(text.parse(), Ok(algorithm));
            assert_eq!(algorithm.to_string(), text);
        }
        for bad in [
            "",
            "sha-256",
            "hmac-sha256",
            "hmac-sha256:",
            "hmac-sha256:x",
        ] {
            assert_eq!(
                bad.parse::<HashAlgorithm>(),
                Err(InvalidHashAlgorithm),
                "{bad}"
            );
        }
    }

    #[test]
    fn each_hash_verifies_by_its_own_algorithm() {
        let plain = KeyHasher::sha256();
        let one = KeyHasher::with_pepper(ONE, b"first");
        let two = KeyHasher::with_pepper(PepperId::new(2), b"second")
            .with_retired_pepper(ONE, b"first")
            .unwrap();
        let hashes = [plain.hash("s"), one.hash("s"), two.hash("s")];
        for hash in &hashes {
            assert_eq!(two.verify("s", hash), Ok(true), "{hash:?}");
            assert_eq!(two.verify("t", hash), Ok(false), "{hash:?}");
        }
        assert_eq!(one.verify("s", &hashes[0]), Ok(true));
        assert_eq!(
            one.verify("s", &hashes[2]),
            Err(UnknownPepper(PepperId::new(2)))
        );
        assert_eq!(plain.verify("s", &hashes[1]), Err(UnknownPepper(ONE)));
        assert!(two.is_current(&hashes[2]) && !two.is_current(&hashes[1]));
        assert_eq!(
            two.clone().with_retired_pepper(ONE, b"again").unwrap_err(),
            DuplicatePepperId(ONE)
        );
        // The same pepper under another id makes another hash.
        let renamed = KeyHasher::with_pepper(PepperId::new(3), b"first").hash("s");
        assert_eq!(renamed.as_bytes(), hashes[1].as_bytes());
        assert_eq!(
            two.verify("s", &renamed),
            Err(UnknownPepper(PepperId::new(3)))
        );
    }

    #[test]
    fn debug_never_shows_a_pepper() {
        let hasher = KeyHasher::with_pepper(PepperId::new(2), b"pepper-secret")
            .with_retired_pepper(ONE, b"older-secret")
            .unwrap();
        let shown = format!("{hasher:?}");
        assert_eq!(
            shown,
            "KeyHasher { algorithm: hmac-sha256:2, peppers: [PepperId(2), PepperId(1)] }"
        );
    }

    #[test]
    fn a_hash_is_two_bytes_more_than_its_digest() {
        // The algorithm rides in every record's first cache line.
        assert_eq!(std::mem::size_of::<KeyHash>(), 34);
        assert_eq!(std::mem::align_of::<KeyHash>(), 1);
    }

    #[test]
    fn pepper_ids_have_one_spelling() {
        assert_eq!("0".parse(), Ok(PepperId::new(0)));
        assert_eq!("255".parse(), Ok(PepperId::new(255)));
        for bad in ["", "00", "01", "256", "-1", "+1", " 1", "1 ", "x"] {
            assert_eq!(bad.parse::<PepperId>(), Err(InvalidPepperId), "{bad:?}");
        }
    }
}
