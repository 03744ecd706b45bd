use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Header;

use super::keys::{JwtKey, JwtKeyError, JwtSigningKey};
use crate::clock::{Clock, SystemClock};
use crate::key::KeyId;
use crate::scope::ScopeSet;

/// Mints JWTs for a [`JwtVerifier`](super::JwtVerifier) to accept: the
/// service's side (and a client's, if it holds an HMAC secret).
///
/// Every token carries `iss`, `aud`, `sub`, `iat`, `exp`, `scope` (if any)
/// and `jti` (if given), and its key's `kid` and `alg` in the header. Use
/// [`KeyManager::issue_jwt`](crate::KeyManager::issue_jwt) for tokens
/// backed by a record, which can be revoked.
///
/// Cheap to clone. `Debug` never shows the key.
#[derive(Clone)]
pub struct JwtIssuer {
    key: JwtSigningKey,
    issuer: Arc<str>,
    audience: Arc<str>,
    clock: Arc<dyn Clock>,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// The signing key failed (a malformed private key).
    #[error("could not sign the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// The token's expiry lies beyond what a JWT's `exp` can say.
    #[error("the token's lifetime is out of range")]
    LifetimeOutOfRange,
}

#[derive(serde::Serialize)]
struct MintedClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<&'a str>,
}

impl JwtIssuer {
    /// Signs with `key`, as `issuer`, for `audience`.
    pub fn new(key: JwtSigningKey, issuer: &str, audience: &str) -> Self {
        Self {
            key,
            issuer: issuer.into(),
            audience: audience.into(),
            clock: Arc::new(SystemClock),
        }
    }

    /// An `HS256` issuer with a secret of at least 32 bytes, and the
    /// [`JwtKey`] that verifies its tokens (the same secret).
    ///
    /// ```
    /// use keyward::jwt::JwtIssuer;
    ///
    /// let (issuer, key) = JwtIssuer::hs256("k1", &[7; 32], "https://auth.example.com", "api")?;
    /// assert_eq!(key.kid(), "k1");
    /// # let _ = issuer;
    /// # Ok::<(), keyward::jwt::JwtKeyError>(())
    /// ```
    pub fn hs256(
        kid: &str,
        secret: &[u8],
        issuer: &str,
        audience: &str,
    ) -> Result<(Self, JwtKey), JwtKeyError> {
        let signing = JwtSigningKey::hs256(kid, secret)?;
        let verifying = JwtKey::hs256(kid, secret)?;
        Ok((Self::new(signing, issuer, audience), verifying))
    }

    /// Uses `clock` for `iat` and `exp`.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = crate::clock::shared(clock);
        self
    }

    /// The signing key's `kid`.
    pub fn kid(&self) -> &str {
        self.key.kid()
    }

    /// The `iss` of the tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of the tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// A token for `subject` with `scopes`, valid for `lifetime` from now
    /// (by this issuer's clock), naming `record` in its `jti` if given.
    pub fn mint(
        &self,
        subject: &str,
        scopes: &ScopeSet,
        lifetime: Duration,
        record: Option<KeyId>,
    ) -> Result<String, JwtError> {
        self.mint_at(self.clock.now(), subject, scopes, lifetime, record)
    }

    pub(crate) fn mint_at(
        &self,
        now: SystemTime,
        subject: &str,
        scopes: &ScopeSet,
        lifetime: Duration,
        record: Option<KeyId>,
    ) -> Result<String, JwtError> {
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| JwtError::LifetimeOutOfRange)?
            .as_secs();
        let exp = iat
            .checked_add(lifetime.as_secs())
            .filter(|&exp| exp <= 253_402_300_799)
            .ok_or(JwtError::LifetimeOutOfRange)?;
        let claims = MintedClaims {
            iss: &self.issuer,
            aud: &self.audience,
            sub: subject,
            iat,
            exp,
            scope: (!scopes.is_empty()).then(|| scopes.to_string()),
            jti: record.as_ref().map(KeyId::as_str),
        };
        let mut header = Header::new(self.key.algorithm);
        header.kid = Some(self.key.kid.to_string());
        jsonwebtoken::encode(&header, &claims, &self.key.key).map_err(JwtError::Sign)
    }
}

impl fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtIssuer")
            .field("key", &self.key)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}
