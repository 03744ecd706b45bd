use rand::rngs::SysRng;
use rand::TryRng;
use zeroize::Zeroizing;

use super::format::BASE62;
use super::{ApiKey, KeyFormat, KeyId, KEY_ID_LEN};

/// Mints new keys of a [`KeyFormat`] from the operating system's random
/// number generator.
///
/// # Example
///
/// ```
/// use keyward::key::{KeyFormat, KeyGenerator};
///
/// let generator = KeyGenerator::new(KeyFormat::new("sk_live")?);
/// let key = generator.generate()?;
/// assert!(key.expose_secret().starts_with("sk_live_"));
/// assert_eq!(key.expose_secret().len(), generator.format().key_len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct KeyGenerator {
    format: KeyFormat,
}

/// The operating system's random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct GenerateError(#[source] rand::rngs::SysError);

impl KeyGenerator {
    /// A generator of keys in `format`.
    pub fn new(format: KeyFormat) -> Self {
        Self { format }
    }

    /// The format of the keys this generator mints.
    pub fn format(&self) -> &KeyFormat {
        &self.format
    }

    /// Mints a new key: a random id and a random secret.
    pub fn generate(&self) -> Result<ApiKey, GenerateError> {
        let mut id = [0u8; KEY_ID_LEN];
        fill_base62(&mut id)?;
        let mut secret = Zeroizing::new(vec![0u8; self.format.secret_len()]);
        fill_base62(&mut secret)?;
        Ok(ApiKey::from_parts(
            &self.format,
            KeyId::from_checked(id),
            &secret,
        ))
    }
}

/// Fills `out` with bytes from the operating system's random number
/// generator (for key pairs and shared secrets).
#[cfg(feature = "signatures")]
pub(crate) fn random_bytes(out: &mut [u8]) -> Result<(), GenerateError> {
    SysRng.try_fill_bytes(out).map_err(GenerateError)
}

/// Fills `out` with uniformly random base62 characters.
fn fill_base62(out: &mut [u8]) -> Result<(), GenerateError> {
    // Rejection sampling: bytes of 248 or more would bias the `% 62`.
    const LIMIT: u8 = 62 * 4;
    let mut pool = Zeroizing::new([0u8; 64]);
    let mut filled = 0;
    while filled < out.len() {
        SysRng
            .try_fill_bytes(&mut pool[..])
            .map_err(GenerateError)?;
        for &byte in pool.iter().filter(|&&b| b < LIMIT) {
            if filled == out.len() {
                break;
            }
            out[filled] = BASE62[usize::from(byte % 62)];
            filled += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_well_formed() {
        let generator = KeyGenerator::new(KeyFormat::new("sk").unwrap());
        let a = generator.generate().unwrap();
        let b = generator.generate().unwrap();
        assert_ne!(a.id(), b.id());
        assert_ne!(a.secret(), b.secret());
        let parsed = generator.format().parse(a.expose_secret()).unwrap();
        assert_eq!(parsed.id(), a.id());
        assert_eq!(parsed.secret(), a.secret());
    }

    #[test]
    fn base62_is_roughly_uniform() {
        let mut counts = [0u32; 62];
        let mut buf = [0u8; 62 * 200];
        fill_base62(&mut buf).unwrap();
        for b in buf {
            let i = BASE62.iter().position(|&c| c == b).unwrap();
            counts[i] += 1;
        }
        // Each character is expected 200 times; a biased mapping would give
        // some characters ~25% more.
        assert!(
            counts.iter().all(|&c| (100..=320).contains(&c)),
            "{counts:?}"
        );
    }
}
