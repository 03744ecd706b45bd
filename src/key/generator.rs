use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use rand::rngs::SysRng;
use rand::{CryptoRng, Rng, TryRng};
use zeroize::Zeroizing;

use super::format::BASE62;
use super::{ApiKey, KeyFormat, KeyId, KEY_ID_LEN};

/// Mints new keys of a [`KeyFormat`] from the operating system's random
/// number generator (or, for tests and fixtures, from the RNG given to
/// [`with_rng`](KeyGenerator::with_rng)).
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
#[derive(Clone)]
pub struct KeyGenerator {
    format: KeyFormat,
    /// `None`: the operating system's generator.
    rng: Option<SharedRng>,
}

/// A caller's generator, shared by the clones of a `KeyGenerator` so that
/// they draw one sequence.
type SharedRng = Arc<Mutex<dyn CryptoRng + Send>>;

/// The operating system's random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct GenerateError(#[source] rand::rngs::SysError);

impl KeyGenerator {
    /// A generator of keys in `format`.
    pub fn new(format: KeyFormat) -> Self {
        Self { format, rng: None }
    }

    /// Draws ids and secrets from `rng` instead of the operating system:
    /// **a test and migration tool**. With a seeded generator the keys
    /// are the same on every run — deterministic fixtures, a reproducible
    /// import — and so is anyone's copy of them: never seed a generator
    /// whose keys guard anything real.
    ///
    /// `rng` is any `rand` 0.10 [`CryptoRng`]; clones of this generator
    /// share it and draw one sequence between them.
    ///
    /// ```
    /// use keyward::key::{KeyFormat, KeyGenerator};
    /// use rand::{rngs::StdRng, SeedableRng};
    ///
    /// let format = KeyFormat::new("sk_test")?;
    /// let fixtures = |seed| KeyGenerator::new(format.clone()).with_rng(StdRng::seed_from_u64(seed));
    /// let (a, b) = (fixtures(7).generate()?, fixtures(7).generate()?);
    /// assert_eq!(a.expose_secret(), b.expose_secret());
    /// assert_ne!(a.expose_secret(), fixtures(8).generate()?.expose_secret());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_rng(mut self, rng: impl CryptoRng + Send + 'static) -> Self {
        self.rng = Some(Arc::new(Mutex::new(rng)));
        self
    }

    /// The format of the keys this generator mints.
    pub fn format(&self) -> &KeyFormat {
        &self.format
    }

    /// Mints a new key: a random id and a random secret.
    pub fn generate(&self) -> Result<ApiKey, GenerateError> {
        let mut id = [0u8; KEY_ID_LEN];
        let mut secret = Zeroizing::new(vec![0u8; self.format.secret_len()]);
        self.fill(&mut [&mut id, &mut secret])?;
        Ok(ApiKey::from_parts(
            &self.format,
            KeyId::from_checked(id),
            &secret,
        ))
    }

    /// A random key id alone, for a record whose hash comes from elsewhere
    /// (an imported key): no secret is drawn.
    pub(crate) fn generate_id(&self) -> Result<KeyId, GenerateError> {
        let mut id = [0u8; KEY_ID_LEN];
        self.fill(&mut [&mut id])?;
        Ok(KeyId::from_checked(id))
    }

    /// Fills each of `outs`, in order, with random base62 characters.
    fn fill(&self, outs: &mut [&mut [u8]]) -> Result<(), GenerateError> {
        match &self.rng {
            None => {
                let mut os = |pool: &mut [u8]| SysRng.try_fill_bytes(pool).map_err(GenerateError);
                for out in outs {
                    fill_base62(out, &mut os)?;
                }
            }
            Some(rng) => {
                // A panic while the lock was held left a generator, not
                // broken data: carry on with it.
                let mut rng = rng.lock().unwrap_or_else(PoisonError::into_inner);
                let mut given = |pool: &mut [u8]| {
                    rng.fill_bytes(pool);
                    Ok(())
                };
                for out in outs {
                    fill_base62(out, &mut given)?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for KeyGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyGenerator")
            .field("format", &self.format)
            .field(
                "rng",
                &if self.rng.is_some() {
                    "caller's"
                } else {
                    "operating system"
                },
            )
            .finish()
    }
}

/// Fills `out` with bytes from the operating system's random number
/// generator (for key pairs and shared secrets).
#[cfg(feature = "signatures")]
pub(crate) fn random_bytes(out: &mut [u8]) -> Result<(), GenerateError> {
    SysRng.try_fill_bytes(out).map_err(GenerateError)
}

/// Fills `out` with uniformly random base62 characters, drawing bytes from
/// `random`.
fn fill_base62(
    out: &mut [u8],
    random: &mut dyn FnMut(&mut [u8]) -> Result<(), GenerateError>,
) -> Result<(), GenerateError> {
    // Rejection sampling: bytes of 248 or more would bias the `% 62`.
    const LIMIT: u8 = 62 * 4;
    let mut pool = Zeroizing::new([0u8; 64]);
    let mut filled = 0;
    while filled < out.len() {
        random(&mut pool[..])?;
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
        fill_base62(&mut buf, &mut |pool: &mut [u8]| {
            SysRng.try_fill_bytes(pool).map_err(GenerateError)
        })
        .unwrap();
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
