use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Validation};

/// The shortest HMAC secret accepted: 32 bytes, the output size of
/// SHA-256 (RFC 7518 §3.2 asks for at least the hash's size).
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// The longest `kid` accepted, in keys and in tokens.
pub const MAX_KID_LEN: usize = 128;

/// Why a key cannot be used to verify or sign JWTs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtKeyError {
    /// An HMAC secret shorter than [`MIN_HMAC_SECRET_LEN`] bytes.
    #[error("an HMAC secret must be at least {MIN_HMAC_SECRET_LEN} bytes")]
    ShortSecret,
    /// The key is of another family than the algorithm (an RSA key for
    /// `HS256`, say): a key is for one algorithm (RFC 8725 §3.1).
    #[error("the key does not fit the algorithm {0:?}")]
    WrongFamily(Algorithm),
    /// A `kid` that is empty, longer than [`MAX_KID_LEN`] or not visible
    /// ASCII.
    #[error("a key id (kid) is 1 to {MAX_KID_LEN} visible ASCII characters")]
    BadKid,
}

fn check_kid(kid: &str) -> Result<Arc<str>, JwtKeyError> {
    if kid.is_empty() || kid.len() > MAX_KID_LEN || !kid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(JwtKeyError::BadKid);
    }
    Ok(kid.into())
}

fn check_family(algorithm: Algorithm, family: AlgorithmFamily) -> Result<(), JwtKeyError> {
    if algorithm.family() == family {
        Ok(())
    } else {
        Err(JwtKeyError::WrongFamily(algorithm))
    }
}

/// One key that verifies JWTs: its `kid`, the one algorithm it is for, and
/// the key itself (a public key, or an HMAC secret).
///
/// A token is checked with the key its header's `kid` names, and only if
/// its header's `alg` is this key's algorithm: the token never chooses how
/// it is verified (no `none`, no HMAC with an RSA or EC public key as the
/// secret).
#[derive(Clone)]
pub struct JwtKey {
    kid: Arc<str>,
    algorithm: Algorithm,
    key: DecodingKey,
    /// jsonwebtoken's checks for this key's tokens, built once here rather
    /// than on every request (a `Vec` and a `HashSet`).
    validation: Validation,
}

impl JwtKey {
    /// An `HS256` key: a shared secret of at least [`MIN_HMAC_SECRET_LEN`]
    /// bytes. Whoever holds it can mint tokens as well as check them.
    pub fn hs256(kid: &str, secret: &[u8]) -> Result<Self, JwtKeyError> {
        if secret.len() < MIN_HMAC_SECRET_LEN {
            return Err(JwtKeyError::ShortSecret);
        }
        let key = DecodingKey::from_secret(secret).map_err(|_| JwtKeyError::ShortSecret)?;
        Self::new(kid, Algorithm::HS256, key)
    }

    /// A key for `algorithm`, made with any of jsonwebtoken's
    /// [`DecodingKey`] constructors (from a JWK, DER, or RSA / EC / Ed25519
    /// components). The key must be of the algorithm's family.
    ///
    /// If jsonwebtoken has no crypto provider yet (a build where another
    /// crate also enables its `aws_lc_rs` feature), this installs the
    /// RustCrypto one, for the whole process: to use another, install it
    /// before making any key.
    pub fn new(kid: &str, algorithm: Algorithm, key: DecodingKey) -> Result<Self, JwtKeyError> {
        super::ensure_crypto_provider();
        check_family(algorithm, key.family())?;
        if algorithm.family() == AlgorithmFamily::Hmac
            && key
                .try_get_as_bytes()
                .map_or(true, |s| s.len() < MIN_HMAC_SECRET_LEN)
        {
            return Err(JwtKeyError::ShortSecret);
        }
        let mut validation = Validation::new(algorithm);
        // The verifier checks the times itself, on its injected clock, and
        // the audience and issuer with the rest of the claims.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        Ok(Self {
            kid: check_kid(kid)?,
            algorithm,
            key,
            validation,
        })
    }

    /// The key id tokens name in their header's `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    /// jsonwebtoken's checks for this key's tokens: its algorithm only,
    /// no time or audience checks (the verifier makes those).
    pub(crate) fn validation(&self) -> &Validation {
        &self.validation
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The keys a [`JwtVerifier`](super::JwtVerifier) accepts, by `kid`;
/// shared, so keys can be added and withdrawn while the service runs
/// (rotation: add the new key, start signing with it, withdraw the old one
/// once its tokens have expired).
///
/// Cheap to clone: clones share the keys. Reads take no lock.
#[derive(Clone, Default)]
pub struct JwtKeySet {
    /// Each key behind an `Arc`, so a token's look-up hands out the key
    /// without copying its bytes.
    keys: Arc<papaya::HashMap<Arc<str>, Arc<JwtKey>>>,
}

impl JwtKeySet {
    /// An empty set: every token is refused until a key is added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key`, replacing a key of the same `kid`.
    pub fn insert(&self, key: JwtKey) {
        self.keys.pin().insert(Arc::clone(&key.kid), Arc::new(key));
    }

    /// Withdraws the key `kid`: tokens naming it are refused from now on.
    /// Whether there was one.
    pub fn remove(&self, kid: &str) -> bool {
        self.keys.pin().remove(kid).is_some()
    }

    /// The kids of the keys in the set, in no particular order.
    pub fn kids(&self) -> Vec<String> {
        self.keys.pin().keys().map(|kid| kid.to_string()).collect()
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token's `kid`: the one named, or, for a token
    /// without `kid`, the set's only key (none if it holds several).
    pub(crate) fn select(&self, kid: Option<&str>) -> Option<Arc<JwtKey>> {
        let keys = self.keys.pin();
        match kid {
            Some(kid) => keys.get(kid).cloned(),
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }
}

impl FromIterator<JwtKey> for JwtKeySet {
    fn from_iter<I: IntoIterator<Item = JwtKey>>(keys: I) -> Self {
        let set = Self::new();
        for key in keys {
            set.insert(key);
        }
        set
    }
}

impl fmt::Debug for JwtKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.pin().values()).finish()
    }
}

/// The key a [`JwtIssuer`](super::JwtIssuer) signs with: its `kid`, its
/// algorithm, and the private key (or HMAC secret). `Debug` never shows
/// the key.
#[derive(Clone)]
pub struct JwtSigningKey {
    pub(crate) kid: Arc<str>,
    pub(crate) algorithm: Algorithm,
    pub(crate) key: EncodingKey,
}

impl JwtSigningKey {
    /// An `HS256` secret of at least [`MIN_HMAC_SECRET_LEN`] bytes.
    pub fn hs256(kid: &str, secret: &[u8]) -> Result<Self, JwtKeyError> {
        if secret.len() < MIN_HMAC_SECRET_LEN {
            return Err(JwtKeyError::ShortSecret);
        }
        let key = EncodingKey::from_secret(secret).map_err(|_| JwtKeyError::ShortSecret)?;
        Self::new(kid, Algorithm::HS256, key)
    }

    /// A key for `algorithm`, made with any of jsonwebtoken's
    /// [`EncodingKey`] constructors. The key must be of the algorithm's
    /// family. Settles jsonwebtoken's crypto provider as
    /// [`JwtKey::new`] does.
    pub fn new(kid: &str, algorithm: Algorithm, key: EncodingKey) -> Result<Self, JwtKeyError> {
        super::ensure_crypto_provider();
        check_family(algorithm, key.family())?;
        if algorithm.family() == AlgorithmFamily::Hmac && key.as_bytes().len() < MIN_HMAC_SECRET_LEN
        {
            return Err(JwtKeyError::ShortSecret);
        }
        Ok(Self {
            kid: check_kid(kid)?,
            algorithm,
            key,
        })
    }

    /// The key id written into every token's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

impl fmt::Debug for JwtSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_look_up_shares_the_stored_key() {
        let set = JwtKeySet::from_iter([JwtKey::hs256("k1", &[7; 32]).unwrap()]);
        let (a, b) = (set.select(Some("k1")).unwrap(), set.select(None).unwrap());
        // One key, and one set of jsonwebtoken checks, for every token:
        // nothing of either is copied or built per request.
        assert!(Arc::ptr_eq(&a, &b));
        assert!(std::ptr::eq(a.validation(), b.validation()));
        assert_eq!(a.validation().algorithms, [Algorithm::HS256]);
        assert!(!a.validation().validate_exp && !a.validation().validate_aud);
    }
}
