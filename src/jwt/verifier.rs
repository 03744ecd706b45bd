use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::AUTHORIZATION;
use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use sha2::{Digest, Sha256};

use super::keys::{JwtKeySet, MAX_KID_LEN};
use crate::auth::Principal;
use crate::clock::{Clock, SystemClock};
use crate::credential::{CredentialKind, RequestView, Verification, Verifier};
use crate::key::{KeyHash, KeyId, KEY_ID_LEN};
use crate::limit::Limits;
use crate::record::{Invalidity, KeyRecord};
use crate::reject::{RejectReason, Rejection};
use crate::scope::ScopeSet;
use crate::store::{KeyStore, Lookup};

/// The longest token read (8 KiB); a longer one is refused before any
/// parsing.
pub const DEFAULT_MAX_TOKEN_LEN: usize = 8 * 1024;

/// The default leeway on `exp` and `nbf`: 30 seconds, for clocks that
/// drift apart.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// The longest `sub` accepted (it becomes the owner).
const MAX_SUBJECT_LEN: usize = 1024;

/// Verifies JWT-based keys: tokens the service (or an issuer it trusts)
/// signed; see the [module docs](super).
///
/// Cheap to clone: clones share the store, the keys and the clock.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    store: Arc<dyn KeyStore>,
    keys: JwtKeySet,
    issuer: Box<str>,
    audience: Box<str>,
    clock: Arc<dyn Clock>,
    leeway: Duration,
    max_len: usize,
    require_record: bool,
    limits: Limits,
    /// Cuts a record look-up that takes longer (with the `tokio` feature).
    store_timeout: Option<Duration>,
}

/// A token whose signature and claims were checked; its record (if any)
/// must still be fetched.
struct Checked {
    subject: String,
    scopes: ScopeSet,
    expires_at: SystemTime,
    issued_at: Option<SystemTime>,
    record: Option<KeyId>,
    now: SystemTime,
}

#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(one) => one == audience,
            Audience::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

impl JwtVerifier {
    /// Verifies tokens signed with one of `keys`, whose `iss` is `issuer`
    /// and whose `aud` is (or contains) `audience`, each naming in its
    /// `jti` a record of `store` (see [`require_record`](Self::require_record)).
    pub fn new(store: impl KeyStore, keys: JwtKeySet, issuer: &str, audience: &str) -> Self {
        Self::from_shared(crate::store::shared(store), keys, issuer, audience)
    }

    /// As [`new`](Self::new), with a store shared as `Arc<dyn KeyStore>`.
    pub fn from_shared(
        store: Arc<dyn KeyStore>,
        keys: JwtKeySet,
        issuer: &str,
        audience: &str,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                keys,
                issuer: issuer.into(),
                audience: audience.into(),
                clock: Arc::new(SystemClock),
                leeway: DEFAULT_LEEWAY,
                max_len: DEFAULT_MAX_TOKEN_LEN,
                require_record: true,
                limits: Limits::none(),
                store_timeout: cfg!(feature = "tokio")
                    .then_some(crate::auth::DEFAULT_STORE_TIMEOUT),
            }),
        }
    }

    /// Uses `clock` for `exp`, `nbf` and the records' times (never the
    /// system clock behind it).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        Arc::make_mut(&mut self.inner).clock = crate::clock::shared(clock);
        self
    }

    /// How far the clocks of the issuer and this service may disagree:
    /// a token is accepted until `exp + leeway` and from `nbf - leeway`
    /// (default [`DEFAULT_LEEWAY`]).
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        Arc::make_mut(&mut self.inner).leeway = leeway;
        self
    }

    /// The longest token read (default [`DEFAULT_MAX_TOKEN_LEN`]).
    #[must_use]
    pub fn max_token_len(mut self, max: usize) -> Self {
        Arc::make_mut(&mut self.inner).max_len = max;
        self
    }

    /// Whether every token must name a record of the store in its `jti`
    /// (default `true`).
    ///
    /// - `true`: a token is accepted only if its `jti` is the
    ///   [`KeyId`] of a record that is active and within its validity
    ///   times, owned by the token's `sub` and granting each of the
    ///   token's scopes. Revoking (or disabling) that record refuses the
    ///   token at once, and the record's limits apply.
    ///   [`KeyManager::issue_jwt`](crate::KeyManager::issue_jwt) mints
    ///   such tokens.
    /// - `false`, for tokens of an issuer that knows no keyward store: a
    ///   `jti` that is a key id is still checked against its record as
    ///   above, so such tokens stay revocable; tokens without one are
    ///   accepted on their signature and claims alone, with the
    ///   [`limits`](Self::limits) of this verifier, and can only be
    ///   withdrawn by removing their key from the [`JwtKeySet`] (or by
    ///   waiting for their `exp`). Their principal's key id is derived
    ///   from `iss` and `sub`, so limits and usage count per subject.
    #[must_use]
    pub fn require_record(mut self, require: bool) -> Self {
        Arc::make_mut(&mut self.inner).require_record = require;
        self
    }

    /// The limits of tokens that name no record (see
    /// [`require_record`](Self::require_record)); none by default.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        Arc::make_mut(&mut self.inner).limits = limits;
        self
    }

    /// Cuts a record look-up that takes longer than `timeout` (`None`:
    /// waits as long as the store takes): the request is refused with
    /// `503`, reason [`StoreUnavailable`](RejectReason::StoreUnavailable),
    /// as by [`AuthLayer::store_timeout`](crate::AuthLayer::store_timeout),
    /// whose default ([`DEFAULT_STORE_TIMEOUT`](crate::auth::DEFAULT_STORE_TIMEOUT),
    /// 5 s) it shares. Needs a tokio runtime; without one the look-up is
    /// awaited as it is.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    #[must_use]
    pub fn store_timeout(mut self, timeout: Option<Duration>) -> Self {
        Arc::make_mut(&mut self.inner).store_timeout = timeout;
        self
    }

    /// The key set (add and withdraw keys through it).
    pub fn keys(&self) -> &JwtKeySet {
        &self.inner.keys
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.inner.store
    }

    /// The JWT a request presents in `Authorization: Bearer`, if the
    /// header holds something of a JWT's shape (see
    /// [`looks_like_jwt`](Self::looks_like_jwt)); an API key in the same
    /// header is not one. Only the shape is read, nothing is decoded.
    pub fn bearer(headers: &HeaderMap) -> Option<&str> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let value = values.next()?;
        let bytes = value.as_bytes();
        let scheme_len = bytes.iter().position(|&b| b == b' ')?;
        if !bytes[..scheme_len].eq_ignore_ascii_case(b"bearer") {
            return None;
        }
        let token = value.to_str().ok()?[scheme_len..].trim_matches(' ');
        Self::looks_like_jwt(token).then_some(token)
    }

    /// Whether `token` has a JWS's compact shape: three base64url segments
    /// separated by dots (the third may be empty, as in `alg: none`
    /// tokens, which are then refused). keyward's API keys hold no dot, so
    /// neither is ever taken for the other.
    pub fn looks_like_jwt(token: &str) -> bool {
        let mut segments = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return false;
        };
        let base64url = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        !header.is_empty()
            && !payload.is_empty()
            && base64url(header)
            && base64url(payload)
            && base64url(signature)
    }

    /// Verifies `token`. The future holds no borrow of it.
    pub fn verify(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<Principal, Rejection>> + Send + 'static {
        self.verification(token).outcome()
    }

    /// Verifies `token`: decided at once when the token names no record or
    /// the store answers at once, else after the look-up.
    fn verification(&self, token: &str) -> Verification {
        let checked = match self.check(token) {
            Ok(checked) => checked,
            Err(rejection) => return Verification::Ready(Err(rejection)),
        };
        let Some(id) = checked.record else {
            return Verification::Ready(Ok(self.stateless_principal(checked)));
        };
        // Fail closed: a store that panics answers an error, one that
        // hangs is cut by the timeout.
        if let Some(lookup) = crate::store::find_now(&*self.inner.store, &id) {
            return Verification::Ready(self.finish(checked, id, lookup));
        }
        let this = self.clone();
        Verification::pending(async move {
            let store = &*this.inner.store;
            let lookup = crate::store::find_awaited(store, &id, this.inner.store_timeout).await;
            this.finish(checked, id, lookup)
        })
    }

    /// Size, signature and claims: everything but the record.
    fn check(&self, token: &str) -> Result<Checked, Rejection> {
        let inner = &*self.inner;
        let refuse = |reason: RejectReason, why: &'static str| {
            tracing::info!(target: "keyward::auth", %reason, why, "JWT refused");
            Rejection::new(reason)
        };
        if token.len() > inner.max_len {
            return Err(refuse(RejectReason::MalformedKey, "token too long"));
        }
        if !Self::looks_like_jwt(token) {
            return Err(refuse(RejectReason::MalformedKey, "not a JWT"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| refuse(RejectReason::MalformedKey, "unreadable header"))?;
        if header
            .kid
            .as_ref()
            .is_some_and(|kid| kid.len() > MAX_KID_LEN)
        {
            return Err(refuse(RejectReason::MalformedKey, "kid too long"));
        }
        let Some(key) = inner.keys.select(header.kid.as_deref()) else {
            tracing::info!(
                target: "keyward::auth",
                reason = %RejectReason::UnknownKey,
                kid = header.kid.as_deref().unwrap_or("(none)"),
                "JWT refused: no key for its kid"
            );
            return Err(Rejection::new(RejectReason::UnknownKey));
        };
        // The key's algorithm, never the header's choice alone: a token
        // for another algorithm (`HS256` against an `ES256` key, whose
        // public bytes an attacker may have used as the HMAC secret) is
        // refused before any verification.
        if header.alg != key.algorithm() {
            return Err(refuse(
                RejectReason::BadSignature,
                "algorithm is not the key's",
            ));
        }
        let decoded = jsonwebtoken::decode::<Claims>(token, key.decoding_key(), key.validation());
        let claims = match decoded {
            Ok(data) => data.claims,
            Err(error) => {
                return Err(match error.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidRsaKey(_) => {
                        refuse(RejectReason::BadSignature, "signature does not verify")
                    }
                    _ => refuse(RejectReason::MalformedKey, "unreadable claims"),
                });
            }
        };
        self.check_claims(claims)
    }

    fn check_claims(&self, claims: Claims) -> Result<Checked, Rejection> {
        let inner = &*self.inner;
        let refuse = |reason: RejectReason, why: &'static str| {
            tracing::info!(target: "keyward::auth", %reason, why, "JWT refused");
            Rejection::new(reason)
        };
        let invalid = |why| refuse(RejectReason::InvalidClaims, why);
        if claims.iss.as_deref() != Some(&*inner.issuer) {
            return Err(invalid("wrong or missing issuer"));
        }
        if !claims
            .aud
            .as_ref()
            .is_some_and(|aud| aud.contains(&inner.audience))
        {
            return Err(invalid("wrong or missing audience"));
        }
        let now = inner.clock.now();
        let expires_at = claims
            .exp
            .ok_or_else(|| invalid("no exp"))
            .and_then(|exp| numeric_date(exp).ok_or_else(|| invalid("exp out of range")))?;
        if expires_at
            .checked_add(inner.leeway)
            .is_some_and(|end| now >= end)
        {
            return Err(refuse(RejectReason::Expired, "expired"));
        }
        if let Some(nbf) = claims.nbf {
            let not_before = numeric_date(nbf).ok_or_else(|| invalid("nbf out of range"))?;
            if now
                .checked_add(inner.leeway)
                .is_some_and(|t| t < not_before)
            {
                return Err(refuse(RejectReason::NotYetValid, "not yet valid"));
            }
        }
        let issued_at = match claims.iat {
            Some(iat) => Some(numeric_date(iat).ok_or_else(|| invalid("iat out of range"))?),
            None => None,
        };
        let subject = claims
            .sub
            .filter(|sub| !sub.is_empty() && sub.len() <= MAX_SUBJECT_LEN && !sub.contains('\0'))
            .ok_or_else(|| invalid("missing or unusable sub"))?;
        let scopes = match claims.scope.as_deref() {
            None => ScopeSet::new(),
            Some(scope) => parse_scope(scope).ok_or_else(|| invalid("malformed scope"))?,
        };
        let record = match claims.jti.as_deref().map(str::parse::<KeyId>) {
            Some(Ok(id)) => Some(id),
            Some(Err(_)) | None if inner.require_record => {
                return Err(invalid("jti names no key record"));
            }
            _ => None,
        };
        Ok(Checked {
            subject,
            scopes,
            expires_at,
            issued_at,
            record,
            now,
        })
    }

    /// Checks the record a token's `jti` names.
    fn finish(&self, checked: Checked, id: KeyId, lookup: Lookup) -> Result<Principal, Rejection> {
        let refuse = |reason: RejectReason| {
            tracing::info!(target: "keyward::auth", key_id = %id, %reason, "JWT refused");
            Err(Rejection::new(reason).with_key_id(id))
        };
        let record = match lookup {
            Ok(Some(record)) => record,
            Ok(None) => return refuse(RejectReason::UnknownKey),
            Err(error) => {
                tracing::error!(
                    target: "keyward::auth",
                    key_id = %id,
                    error = &error as &dyn std::error::Error,
                    "key store failed; refusing (fail closed)"
                );
                return refuse(RejectReason::StoreUnavailable);
            }
        };
        // The record's times get the token's leeway: a record that expires
        // with its token must not cut the token's leeway short.
        let leeway = self.inner.leeway;
        let now = checked.now;
        let expired = record
            .expires_at()
            .is_some_and(|at| at.checked_add(leeway).is_some_and(|end| now >= end));
        let early = record
            .not_before()
            .is_some_and(|at| now.checked_add(leeway).is_some_and(|t| t < at));
        match record.validity_at(now) {
            Err(Invalidity::Disabled) => return refuse(RejectReason::Disabled),
            Err(Invalidity::Revoked) => return refuse(RejectReason::Revoked),
            _ if expired => return refuse(RejectReason::Expired),
            _ if early => return refuse(RejectReason::NotYetValid),
            _ => {}
        }
        if *record.owner != *checked.subject
            || !checked
                .scopes
                .iter()
                .all(|scope| record.scopes.grants(scope))
        {
            return refuse(RejectReason::InvalidClaims);
        }
        if record.scopes == checked.scopes {
            return Ok(Principal::with_credential(record, CredentialKind::Jwt));
        }
        // The token may carry fewer scopes than its record: it gets those.
        let mut narrowed = KeyRecord::clone(&record);
        narrowed.scopes = checked.scopes;
        Ok(Principal::with_credential(
            Arc::new(narrowed),
            CredentialKind::Jwt,
        ))
    }

    /// The principal of a token that names no record.
    fn stateless_principal(&self, checked: Checked) -> Principal {
        let inner = &*self.inner;
        let id = derived_key_id(&inner.issuer, &checked.subject);
        let record = KeyRecord::new(
            id,
            // No secret: this record is never stored nor compared against.
            KeyHash::from_bytes([0; 32]),
            checked.subject,
            checked.issued_at.unwrap_or(checked.now),
        )
        .with_scopes(checked.scopes)
        .with_limits(inner.limits.clone())
        .with_expires_at(checked.expires_at)
        .with_metadata("jwt_issuer", inner.issuer.to_string());
        Principal::with_credential(Arc::new(record), CredentialKind::Jwt)
    }
}

/// JWTs in `Authorization: Bearer`, for
/// [`AuthLayer::credential`](crate::AuthLayer::credential): recognised by
/// their three-segment shape (an API key in the same header is not one, and
/// still goes to the API-key path), removed from the request once
/// accepted. A JWT and an API key in one request are two credentials
/// (`400`).
impl Verifier for JwtVerifier {
    fn kind(&self) -> CredentialKind {
        CredentialKind::Jwt
    }

    fn recognises(&self, request: &RequestView<'_>) -> bool {
        Self::bearer(request.headers()).is_some()
    }

    fn verify(&self, request: &RequestView<'_>) -> Verification {
        match Self::bearer(request.headers()) {
            Some(token) => self.verification(token),
            None => Verification::refuse(RejectReason::MissingKey),
        }
    }

    fn strip(&self, headers: &mut HeaderMap, _uri: &mut http::Uri) {
        headers.remove(AUTHORIZATION);
    }
}

/// A NumericDate (seconds since the epoch, possibly fractional) as a time.
fn numeric_date(seconds: f64) -> Option<SystemTime> {
    if !(0.0..=253_402_300_799.0).contains(&seconds) {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(seconds).ok()?)
}

/// `scope`: scope tokens separated by single spaces (RFC 6749 §3.3), each
/// a valid keyward [`Scope`](crate::scope::Scope). `None` if malformed.
fn parse_scope(scope: &str) -> Option<ScopeSet> {
    if scope.is_empty() {
        return Some(ScopeSet::new());
    }
    let tokens: Vec<&str> = scope.split(' ').collect();
    if tokens.iter().any(|t| t.is_empty()) {
        return None;
    }
    ScopeSet::parse(tokens).ok()
}

/// A key id for a subject of an issuer: the same for every token of that
/// subject, so limits and usage count per subject.
fn derived_key_id(issuer: &str, subject: &str) -> KeyId {
    const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let digest = Sha256::new()
        .chain_update(issuer.as_bytes())
        .chain_update([0])
        .chain_update(subject.as_bytes())
        .finalize();
    let mut id = [0u8; KEY_ID_LEN];
    for (out, byte) in id.iter_mut().zip(digest.iter()) {
        *out = BASE62[usize::from(*byte) % BASE62.len()];
    }
    KeyId::from_checked(id)
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("JwtVerifier")
            .field("store", &inner.store)
            .field("keys", &inner.keys)
            .field("issuer", &inner.issuer)
            .field("audience", &inner.audience)
            .field("leeway", &inner.leeway)
            .field("max_len", &inner.max_len)
            .field("require_record", &inner.require_record)
            .field("store_timeout", &inner.store_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(JwtVerifier::looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(JwtVerifier::looks_like_jwt("eyJh.eyJz."));
        assert!(!JwtVerifier::looks_like_jwt("eyJh.eyJz"));
        assert!(!JwtVerifier::looks_like_jwt(".eyJz.c2ln"));
        assert!(!JwtVerifier::looks_like_jwt("a.b.c.d"));
        assert!(!JwtVerifier::looks_like_jwt("a.b+.c"));
        assert!(!JwtVerifier::looks_like_jwt("sk_live_AbCdEf012345xyz"));
    }

    #[test]
    fn scopes_and_dates() {
        assert_eq!(parse_scope("a:b c:d").unwrap().len(), 2);
        assert!(parse_scope("").unwrap().is_empty());
        assert!(parse_scope("a:b  c:d").is_none());
        assert!(parse_scope(" a:b").is_none());
        assert!(parse_scope("a:b ").is_none());
        assert!(numeric_date(-1.0).is_none());
        assert!(numeric_date(1e300).is_none());
        assert_eq!(
            numeric_date(1.5),
            Some(UNIX_EPOCH + Duration::from_millis(1500))
        );
        let a = derived_key_id("iss", "alice");
        assert_eq!(a, derived_key_id("iss", "alice"));
        assert_ne!(a, derived_key_id("iss", "bob"));
        assert_ne!(derived_key_id("is", "salice"), a);
    }
}
