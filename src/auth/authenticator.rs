use std::fmt;
use std::hint::black_box;
use std::sync::Arc;

use super::Principal;
use crate::clock::{Clock, SystemClock};
use crate::credential::CredentialKind;
use crate::key::{KeyFormat, KeyHash, KeyHasher, KeyId, MAX_SECRET_LEN};
use crate::record::Invalidity;
use crate::reject::{RejectReason, Rejection};
use crate::store::{KeyStore, Lookup};

/// Compared against when the id is unknown, so that an unknown id costs the
/// same hash and compare as a known one. (Its algorithm need not match:
/// `KeyHash::verify` compares the bytes in full whatever the algorithms.)
const DUMMY_HASH: KeyHash = KeyHash::from_bytes([0x5a; 32]);

/// Checks presented keys against a store: parse, hash, look up, compare in
/// constant time, check status and validity times.
///
/// [`AuthLayer`](super::AuthLayer) uses one; use it directly where there is
/// no tower stack (a WebSocket handshake, a message consumer).
/// It knows no request, so it does not check a key's restrictions (client
/// networks, environment): [`AuthLayer`](super::AuthLayer) does that.
///
/// # Example
///
/// ```
/// use std::time::SystemTime;
/// use keyward::auth::Authenticator;
/// use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
/// use keyward::record::KeyRecord;
/// use keyward::reject::RejectReason;
/// use keyward::store::{KeyStore, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let format = KeyFormat::new("sk_live")?;
/// let key = KeyGenerator::new(format.clone()).generate()?;
/// let store = MemoryStore::new();
/// let hash = KeyHasher::sha256().hash(key.secret());
/// store.insert(KeyRecord::new(key.id(), hash, "acme", SystemTime::now())).await?;
///
/// let auth = Authenticator::new(store, format);
/// assert_eq!(auth.authenticate(key.expose_secret()).await?.owner(), "acme");
/// let refused = auth.authenticate("sk_live_guess").await.unwrap_err();
/// assert_eq!(refused.reason(), RejectReason::MalformedKey);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn KeyStore>,
    format: KeyFormat,
    hasher: KeyHasher,
    clock: Arc<dyn Clock>,
}

/// The first half of a check: either decided, or waiting for a store.
pub(crate) enum Begun {
    Done(Result<Principal, Rejection>),
    Lookup(Pending),
}

/// A key that parsed, whose record must still be fetched: the secret is
/// kept (inline, wiped on drop) to be hashed by the algorithm the record
/// names.
pub(crate) struct Pending {
    pub(crate) id: KeyId,
    secret: SecretCopy,
}

/// A copy of a presented secret (base62, so ASCII), zeroed on drop.
struct SecretCopy {
    len: usize,
    bytes: zeroize::Zeroizing<[u8; MAX_SECRET_LEN]>,
}

impl SecretCopy {
    fn new(secret: &str) -> Self {
        let mut bytes = zeroize::Zeroizing::new([0u8; MAX_SECRET_LEN]);
        // A format's secret is at most MAX_SECRET_LEN characters.
        let len = secret.len().min(MAX_SECRET_LEN);
        bytes[..len].copy_from_slice(&secret.as_bytes()[..len]);
        Self { len, bytes }
    }

    fn as_str(&self) -> &str {
        // A copy of the prefix of a `str` of ASCII characters.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl Authenticator {
    /// Checks keys of `format` against `store`, with plain SHA-256 and the
    /// system clock.
    pub fn new(store: impl KeyStore, format: KeyFormat) -> Self {
        Self {
            store: crate::store::shared(store),
            format,
            hasher: KeyHasher::sha256(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `hasher` to verify secrets. Each record is verified by the
    /// algorithm its hash names; a hash naming a pepper `hasher` lacks is
    /// refused (`503`, logged as [`UnknownPepper`](crate::key::UnknownPepper)).
    #[must_use]
    pub fn with_hasher(mut self, hasher: KeyHasher) -> Self {
        self.hasher = hasher;
        self
    }

    /// Uses `clock` for expiry and not-before checks.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = crate::clock::shared(clock);
        self
    }

    /// The key format.
    pub fn format(&self) -> &KeyFormat {
        &self.format
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Checks a presented key.
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, Rejection> {
        match self.begin(presented) {
            Begun::Done(result) => result,
            Begun::Lookup(pending) => self.complete(pending).await,
        }
    }

    /// Parses, and looks up and checks if the store answers at once.
    pub(crate) fn begin(&self, presented: &str) -> Begun {
        let parsed = match self.format.parse(presented) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::info!(target: "keyward::auth", %error, "API key refused: malformed");
                return Begun::Done(Err(Rejection::new(RejectReason::MalformedKey)));
            }
        };
        let id = parsed.id();
        match self.store.find_immediate(&id) {
            Some(lookup) => Begun::Done(self.check(id, parsed.secret(), lookup)),
            None => Begun::Lookup(Pending {
                id,
                secret: SecretCopy::new(parsed.secret()),
            }),
        }
    }

    /// Looks the record of a parsed key up (awaiting the store), then
    /// checks it.
    pub(crate) async fn complete(&self, pending: Pending) -> Result<Principal, Rejection> {
        let lookup = crate::store::find_awaited(&*self.store, &pending.id).await;
        self.finish(pending, lookup)
    }

    /// Compares and checks the record a look-up returned.
    pub(crate) fn finish(&self, pending: Pending, lookup: Lookup) -> Result<Principal, Rejection> {
        self.check(pending.id, pending.secret.as_str(), lookup)
    }

    /// Whether `presented` looks like an API key of this authenticator
    /// (it begins with the format's prefix and `_`): how
    /// [`AuthLayer`](super::AuthLayer) tells an API key from another
    /// credential in the same place (a JWT in `Authorization: Bearer`).
    /// No parsing, no checksum: a key that looks like one and is malformed
    /// is still an API key, refused as such.
    pub fn recognises(&self, presented: &str) -> bool {
        let prefix = self.format.prefix();
        presented.len() > prefix.len()
            && presented.as_bytes()[prefix.len()] == b'_'
            && presented.starts_with(prefix)
    }

    /// Hashes the secret (once, whatever the answer), compares it with the
    /// record's hash and checks the record.
    fn check(&self, id: KeyId, secret: &str, lookup: Lookup) -> Result<Principal, Rejection> {
        let refuse = |reason: RejectReason| {
            tracing::info!(target: "keyward::auth", key_id = %id, %reason, "API key refused");
            Err(Rejection::new(reason).with_key_id(id))
        };
        let record = match lookup {
            Ok(Some(record)) => record,
            Ok(None) => {
                black_box(self.hasher.hash(secret).verify(&DUMMY_HASH));
                return refuse(RejectReason::UnknownKey);
            }
            Err(error) => {
                #[cfg(feature = "metrics")]
                crate::metrics::store_error(&error);
                tracing::error!(
                    target: "keyward::auth",
                    key_id = %id,
                    error = &error as &dyn std::error::Error,
                    "key store failed; refusing (fail closed)"
                );
                return refuse(RejectReason::StoreUnavailable);
            }
        };
        match self.hasher.verify(secret, &record.hash) {
            Ok(true) => {}
            Ok(false) => return refuse(RejectReason::WrongSecret),
            Err(error) => {
                // The service's configuration, not the client: answered as
                // an unavailable dependency (503), never as a bad key.
                tracing::error!(
                    target: "keyward::auth",
                    key_id = %id,
                    error = &error as &dyn std::error::Error,
                    "cannot verify the key: its hash names a pepper this service lacks; refusing"
                );
                return refuse(RejectReason::StoreUnavailable);
            }
        }
        // The clock is read only when the record has a time to check.
        let now = if record.expires_at.is_some() || record.not_before().is_some() {
            self.clock.now()
        } else {
            std::time::UNIX_EPOCH
        };
        match record.validity_at(now) {
            Ok(()) => {
                let kind = if record.publishable() {
                    CredentialKind::Publishable
                } else {
                    CredentialKind::ApiKey
                };
                Ok(Principal::with_credential(record, kind))
            }
            Err(Invalidity::Expired) => refuse(RejectReason::Expired),
            Err(Invalidity::NotYetValid) => refuse(RejectReason::NotYetValid),
            Err(Invalidity::Disabled) => refuse(RejectReason::Disabled),
            Err(Invalidity::Revoked) => refuse(RejectReason::Revoked),
        }
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("store", &self.store)
            .field("format", &self.format)
            .field("hasher", &self.hasher)
            .field("clock", &self.clock)
            .finish()
    }
}
