use std::fmt;
use std::hint::black_box;
use std::sync::Arc;

use super::Principal;
use crate::clock::{Clock, SystemClock};
use crate::key::{KeyFormat, KeyHash, KeyHasher, KeyId};
use crate::record::Invalidity;
use crate::reject::{RejectReason, Rejection};
use crate::store::{KeyStore, Lookup};

/// Compared against when the id is unknown, so that an unknown id costs the
/// same hash and compare as a known one.
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

/// A key that parsed and was hashed, whose record must still be fetched.
#[derive(Clone, Copy)]
pub(crate) struct Pending {
    pub(crate) id: KeyId,
    hash: KeyHash,
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

    /// Uses `hasher` (it must be the one that made the stored hashes).
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
            Begun::Lookup(pending) => {
                let lookup = self.store.find(&pending.id).await;
                self.finish(pending, lookup)
            }
        }
    }

    /// Parses and hashes, and looks up if the store answers at once.
    pub(crate) fn begin(&self, presented: &str) -> Begun {
        let parsed = match self.format.parse(presented) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::info!(target: "keyward::auth", %error, "API key refused: malformed");
                return Begun::Done(Err(Rejection::new(RejectReason::MalformedKey)));
            }
        };
        let pending = Pending {
            id: parsed.id(),
            hash: self.hasher.hash(parsed.secret()),
        };
        match self.store.find_immediate(&pending.id) {
            Some(lookup) => Begun::Done(self.finish(pending, lookup)),
            None => Begun::Lookup(pending),
        }
    }

    /// Compares and checks the record a look-up returned.
    pub(crate) fn finish(&self, pending: Pending, lookup: Lookup) -> Result<Principal, Rejection> {
        let id = pending.id;
        let refuse = |reason: RejectReason| {
            tracing::info!(target: "keyward::auth", key_id = %id, %reason, "API key refused");
            Err(Rejection::new(reason).with_key_id(id))
        };
        let record = match lookup {
            Ok(Some(record)) => record,
            Ok(None) => {
                black_box(pending.hash.verify(&DUMMY_HASH));
                return refuse(RejectReason::UnknownKey);
            }
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
        if !pending.hash.verify(&record.hash) {
            return refuse(RejectReason::WrongSecret);
        }
        // The clock is read only when the record has a time to check.
        let now = if record.expires_at.is_some() || record.not_before.is_some() {
            self.clock.now()
        } else {
            std::time::UNIX_EPOCH
        };
        match record.validity_at(now) {
            Ok(()) => Ok(Principal::new(record)),
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
