use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Principal;
use crate::clock::{Clock, SystemClock};
use crate::credential::CredentialKind;
use crate::key::{
    imported_hash, HashAlgorithm, KeyFormat, KeyHash, KeyHasher, KeyId, LegacyFormat,
    MAX_SECRET_LEN,
};
use crate::record::{KeyRecord, KeyStatus};
use crate::reject::{RejectReason, Rejection};
use crate::store::{KeyStore, Lookup};

/// How long a request waits for the key store by default (with the
/// `tokio` feature): see [`Authenticator::with_store_timeout`].
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// The least time a refusal takes by default, from the look-up on: see
/// [`Authenticator::with_refusal_floor`].
pub const DEFAULT_REFUSAL_FLOOR: Duration = Duration::from_micros(1);

/// The longest refusal floor: a longer one is cut to this (a refusal
/// spins its thread until the floor).
pub const MAX_REFUSAL_FLOOR: Duration = Duration::from_micros(100);

/// How many stand-in records unknown ids are checked against.
const STAND_INS: usize = 1024;

/// What an unknown id is checked against: a record that no secret matches
/// (its hash is not the hash of any known input), by the hasher's current
/// algorithm, active, without validity times; beside an id to compare, as
/// a map's entry holds its key beside its value.
///
/// There are many (about 230 KiB, made once per `Authenticator` and shared
/// by its clones), each in its own allocations, and an id always meets the
/// same one: an unknown id touches memory about as cold or as warm as a
/// known id would (a first request meets a cold record, a repeated one a
/// warm one). SECURITY.md reports what a timing test still finds.
struct StandIn {
    id: KeyId,
    record: Arc<KeyRecord>,
}

fn stand_ins(hasher: &KeyHasher) -> Arc<[Box<StandIn>]> {
    let hash = KeyHash::new(hasher.algorithm(), [0x5a; 32]);
    let id = KeyId::from_checked(*b"000000000000");
    (0..STAND_INS)
        .map(|_| {
            Box::new(StandIn {
                id,
                record: Arc::new(KeyRecord::new(id, hash, "", std::time::UNIX_EPOCH)),
            })
        })
        .collect()
}

/// The stand-in an id meets: ids are random, so a few of their bytes
/// spread them evenly.
fn stand_in_slot(id: &KeyId) -> usize {
    let [a, b, c, d, e, f, g, h, ..] = *id.as_bytes();
    let spread = u64::from_le_bytes([a, b, c, d, e, f, g, h]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (spread >> 54) as usize % STAND_INS
}

/// How far past its floor a refusal may wait, at random: many reads of the
/// clock (about 25 ns each).
const FLOOR_SPREAD_NANOS: u64 = 512;

/// Spins until `deadline` and a random part of [`FLOOR_SPREAD_NANOS`] after
/// it: a refusal's floor is shorter than any sleep the system offers, and
/// must not yield the thread.
///
/// Why at random: the loop ends at the first clock read past its
/// deadline, and the reads come a fixed period apart from where the check
/// ended, so without it a check that ends a nanosecond later would still
/// end its wait about a nanosecond later. Past a deadline spread over
/// many periods, where the reads fall hardly depends on where the check
/// ended (what is left is about a period over the spread, 5 %, of the
/// difference). No pause hint in the loop: it would make the period
/// longer (25 → 40–50 ns on the project's machine), the remainder larger.
#[inline(never)]
fn wait_until(deadline: Instant) {
    #[cfg(test)]
    tests::WAITS.with(|waits| waits.set(waits.get() + 1));
    let deadline = deadline + Duration::from_nanos(spread() % FLOOR_SPREAD_NANOS);
    while Instant::now() < deadline {}
}

/// A random number for [`wait_until`] from a per-thread generator
/// (splitmix64, seeded from std's random hash keys): it need not be
/// secret, only independent of the check's timing.
fn spread() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE.with(|state| {
        let mut seed = state.get();
        if seed == 0 {
            seed = RandomState::new().build_hasher().finish();
        }
        let seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(seed);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// Logs a refused API key: its id and the reason, never the key.
fn log_refusal(rejection: &Rejection) {
    let reason = rejection.reason();
    match rejection.key_id() {
        Some(key_id) => {
            tracing::info!(target: "keyward::auth", %key_id, %reason, "API key refused");
        }
        None => tracing::info!(target: "keyward::auth", %reason, "API key refused"),
    }
}

/// The reasons a key is refused, in the order they are reported: bit `i`
/// of the failures in [`Authenticator::check`] stands for `REFUSALS[i]`.
const REFUSALS: [RejectReason; 6] = [
    RejectReason::UnknownKey,
    RejectReason::WrongSecret,
    RejectReason::Disabled,
    RejectReason::Revoked,
    RejectReason::Expired,
    RejectReason::NotYetValid,
];

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
    /// Cuts a look-up that takes longer (with the `tokio` feature).
    store_timeout: Option<Duration>,
    stand_ins: Arc<[Box<StandIn>]>,
    /// The least time a refused look-up and check take.
    refusal_floor: Option<Duration>,
    /// The old format of imported keys, if they are accepted.
    imported: Option<Arc<LegacyFormat>>,
}

/// The first half of a check: either decided, or waiting for a store.
pub(crate) enum Begun {
    Done(Result<Principal, Rejection>),
    Lookup(Pending),
}

/// A key whose record must still be fetched.
pub(crate) enum Pending {
    /// A keyward key that parsed: the secret is kept (inline, wiped on
    /// drop) to be hashed by the algorithm the record names.
    Key { id: KeyId, secret: SecretCopy },
    /// An imported key, by its hash.
    Imported { hash: KeyHash },
}

impl Begun {
    /// The kind the key was presented as, before its record is trusted:
    /// an imported key when it is looked up by its hash, else an API key
    /// (a publishable key has the same format; its record tells).
    pub(crate) fn presented_kind(&self) -> CredentialKind {
        match self {
            Begun::Lookup(Pending::Imported { .. }) => CredentialKind::Imported,
            _ => CredentialKind::ApiKey,
        }
    }
}

/// A copy of a presented secret (base62, so ASCII), zeroed on drop.
pub(crate) struct SecretCopy {
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
        let hasher = KeyHasher::sha256();
        Self {
            store: crate::store::shared(store),
            format,
            stand_ins: stand_ins(&hasher),
            hasher,
            clock: Arc::new(SystemClock),
            store_timeout: cfg!(feature = "tokio").then_some(DEFAULT_STORE_TIMEOUT),
            refusal_floor: Some(DEFAULT_REFUSAL_FLOOR),
            imported: None,
        }
    }

    /// Also accepts imported keys of the old `format`: a presented value
    /// that is no key of this authenticator's format but matches `format`
    /// is looked up by the SHA-256 of the whole value
    /// ([`KeyStore::find_by_hash`]) and, if an imported record (made by
    /// [`KeyManager::import_legacy`](crate::KeyManager::import_legacy))
    /// has that hash, authenticates as it, with kind
    /// [`Imported`](CredentialKind::Imported). Off by default.
    ///
    /// The look-up is by the hash of the whole key, so no comparison on
    /// the request path depends on the secret's bytes (see
    /// [`KeyStore::find_by_hash`]); the record found is then compared with
    /// the hash in constant time all the same. Only formats of at least
    /// [`MIN_LEGACY_BITS`](crate::key::MIN_LEGACY_BITS) bits exist.
    #[must_use]
    pub fn with_imported_keys(mut self, format: LegacyFormat) -> Self {
        self.imported = Some(Arc::new(format));
        self
    }

    /// The old format of imported keys, if they are accepted.
    pub fn imported_keys(&self) -> Option<&LegacyFormat> {
        self.imported.as_deref()
    }

    /// Refuses a request whose look-up takes longer than `timeout`
    /// ([`DEFAULT_STORE_TIMEOUT`], 5 s, unless set): `503`, reason
    /// [`StoreUnavailable`](RejectReason::StoreUnavailable), logged as
    /// [`StoreError::Timeout`](crate::store::StoreError::Timeout). `None` waits as long as the store does.
    ///
    /// The timer is tokio's: a look-up awaited outside a tokio runtime is
    /// not cut, and the runtime must have its timers enabled. A store
    /// that answers at once ([`KeyStore::find_immediate`]) is never
    /// timed. Set a remote store's own timeout shorter than this one, so
    /// that it gives up (and counts) first.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    #[must_use]
    pub fn with_store_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// How long a look-up may take (see
    /// [`with_store_timeout`](Self::with_store_timeout)); `None` without
    /// the `tokio` feature.
    pub fn store_timeout(&self) -> Option<Duration> {
        self.store_timeout
    }

    /// Uses `hasher` to verify secrets. Each record is verified by the
    /// algorithm its hash names; a hash naming a pepper `hasher` lacks is
    /// refused (`503`, logged as [`UnknownPepper`](crate::key::UnknownPepper)).
    #[must_use]
    pub fn with_hasher(mut self, hasher: KeyHasher) -> Self {
        self.stand_ins = stand_ins(&hasher);
        self.hasher = hasher;
        self
    }

    /// Makes a refused key take at least `floor` from its look-up on
    /// ([`DEFAULT_REFUSAL_FLOOR`], 1 µs, unless set), and up to 512 ns
    /// more at random, when the store answers at once
    /// ([`KeyStore::find_immediate`]). `None` turns it off; a floor
    /// longer than [`MAX_REFUSAL_FLOOR`] (100 µs) is cut to it.
    ///
    /// The check takes the same steps for every refusal, but a known id
    /// reads memory of its own where an unknown one reads a stand-in, and
    /// the two differ by a few nanoseconds (SECURITY.md, "Timing"): the
    /// floor hides that, so timing tells no one which ids exist. It costs
    /// a clock read on every look-up, and a refusal spins its thread for
    /// the rest of the floor. A store that must be awaited is not padded:
    /// its own round trip varies by far more.
    #[must_use]
    pub fn with_refusal_floor(mut self, floor: Option<Duration>) -> Self {
        self.refusal_floor = floor.map(|floor| floor.min(MAX_REFUSAL_FLOOR));
        self
    }

    /// The least time a refusal takes (see
    /// [`with_refusal_floor`](Self::with_refusal_floor)).
    pub fn refusal_floor(&self) -> Option<Duration> {
        self.refusal_floor
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
                // Not a keyward key; perhaps an imported one (rare: off
                // the valid keys' path).
                if self.matches_imported(presented) {
                    let hash = imported_hash(presented);
                    return Begun::Lookup(Pending::Imported { hash });
                }
                tracing::info!(target: "keyward::auth", %error, "API key refused: malformed");
                return Begun::Done(Err(Rejection::new(RejectReason::MalformedKey)));
            }
        };
        let id = parsed.id();
        let started = self.refusal_floor.map(|floor| (Instant::now(), floor));
        // A store that panics fails this request (503), never the service.
        match crate::store::find_now(&*self.store, &id) {
            Some(lookup) => {
                let checked = self.check(id, parsed.secret(), lookup);
                if let Err(rejection) = &checked {
                    if let Some((started, floor)) = started {
                        wait_until(started + floor);
                    }
                    // After the floor: a subscriber may take longer than
                    // the floor to write a line, which would leave the
                    // floor nothing to pad.
                    log_refusal(rejection);
                }
                Begun::Done(checked)
            }
            None => Begun::Lookup(Pending::Key {
                id,
                secret: SecretCopy::new(parsed.secret()),
            }),
        }
    }

    /// Looks the record of a parsed key up (awaiting the store), then
    /// checks it. Fails closed: a store that panics answers an error, one
    /// that takes longer than the timeout [`StoreError::Timeout`](crate::store::StoreError::Timeout).
    pub(crate) async fn complete(&self, pending: Pending) -> Result<Principal, Rejection> {
        match pending {
            Pending::Key { id, secret } => {
                let lookup =
                    crate::store::find_awaited(&*self.store, &id, self.store_timeout).await;
                let checked = self.check(id, secret.as_str(), lookup);
                if let Err(rejection) = &checked {
                    log_refusal(rejection);
                }
                checked
            }
            Pending::Imported { hash } => {
                let find = self.store.find_by_hash(&hash);
                let lookup = crate::store::awaited(find, self.store_timeout).await;
                self.check_imported(&hash, lookup)
            }
        }
    }

    /// Checks the record an imported key's hash found.
    fn check_imported(&self, hash: &KeyHash, lookup: Lookup) -> Result<Principal, Rejection> {
        let record = match lookup {
            Ok(Some(record)) => record,
            Ok(None) => {
                tracing::info!(target: "keyward::auth", "imported key refused: unknown");
                return Err(Rejection::new(RejectReason::UnknownKey));
            }
            Err(error) => {
                #[cfg(feature = "metrics")]
                crate::metrics::store_error(&error);
                tracing::error!(
                    target: "keyward::auth",
                    error = &error as &dyn std::error::Error,
                    "key store failed on an imported key; refusing (fail closed)"
                );
                return Err(Rejection::new(RejectReason::StoreUnavailable));
            }
        };
        let id = record.id;
        let refuse = |reason: RejectReason| {
            tracing::info!(target: "keyward::auth", key_id = %id, %reason, "imported key refused");
            Err(Rejection::new(reason).with_key_id(id))
        };
        // The store looked the digest up; compare it all the same, in
        // constant time, algorithm included.
        if !record.hash.verify(hash) {
            return refuse(RejectReason::WrongSecret);
        }
        match record.validity_at(self.clock.now()) {
            Ok(()) => Ok(Principal::with_credential(record, CredentialKind::Imported)),
            Err(invalidity) => refuse(invalidity.into()),
        }
    }

    /// Whether `presented` looks like an API key of this authenticator
    /// (it begins with the format's prefix and `_`): how
    /// [`AuthLayer`](super::AuthLayer) tells an API key from another
    /// credential in the same place (a JWT in `Authorization: Bearer`).
    /// No parsing, no checksum: a key that looks like one and is malformed
    /// is still an API key, refused as such.
    pub fn recognises(&self, presented: &str) -> bool {
        let prefix = self.format.prefix();
        (presented.len() > prefix.len()
            && presented.as_bytes()[prefix.len()] == b'_'
            && presented.starts_with(prefix))
            || self.matches_imported(presented)
    }

    /// Whether `presented` has the old format of imported keys, if they
    /// are accepted: a value that is no key of this format and has it is
    /// looked up as an imported key.
    fn matches_imported(&self, presented: &str) -> bool {
        self.imported
            .as_ref()
            .is_some_and(|format| format.matches(presented))
    }

    /// The kind `presented` counts as before it is looked up (for the
    /// metrics of a request refused early): what [`begin`](Self::begin)
    /// would take it for.
    pub(crate) fn presented_kind(&self, presented: &str) -> CredentialKind {
        if self.matches_imported(presented) && self.format.parse(presented).is_err() {
            CredentialKind::Imported
        } else {
            CredentialKind::ApiKey
        }
    }

    /// Hashes the secret (once, whatever the answer), compares it with the
    /// record's hash and checks the record.
    ///
    /// Every refusal takes the same steps, so that timing tells neither
    /// which ids exist nor why a key was refused: an unknown id is checked
    /// against a stand-in record (see [`StandIn`]: the same id compare,
    /// reference count, hash and hash compare as a known one), the
    /// record's status and times are checked whatever the secret (the
    /// clock is read for every refusal), and the reason is picked from a
    /// mask of failures rather than by early returns. Only a usable key
    /// without validity times skips reading the clock.
    ///
    /// It does not log the refusal: its caller does, once the refusal
    /// floor has passed ([`log_refusal`]).
    fn check(&self, id: KeyId, secret: &str, lookup: Lookup) -> Result<Principal, Rejection> {
        let refuse = |reason: RejectReason| Err(Rejection::new(reason).with_key_id(id));
        let found = match lookup {
            Ok(found) => found,
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
        let known = found.is_some();
        let slot = stand_in_slot(&id);
        let record = found.unwrap_or_else(|| {
            let stand_in = &self.stand_ins[slot];
            // As a map compares the id it found with the one asked for.
            std::hint::black_box(stand_in.id == id);
            Arc::clone(&stand_in.record)
        });
        let matched = match self.hasher.verify(secret, &record.hash) {
            Ok(matched) => matched,
            Err(error) => {
                // The service's configuration, not the client: answered as
                // an unavailable dependency (503), never as a bad key. (Not
                // for the stand-in: it uses the hasher's own algorithm.)
                tracing::error!(
                    target: "keyward::auth",
                    key_id = %id,
                    error = &error as &dyn std::error::Error,
                    "cannot verify the key: its hash names a pepper this service lacks; refusing"
                );
                return refuse(RejectReason::StoreUnavailable);
            }
        };
        let active = record.status == KeyStatus::Active;
        // An imported record is found by its hash, never by its id: refused
        // here as a wrong secret, after the same hash and compare.
        let imported = record.hash.algorithm() == HashAlgorithm::ImportedSha256;
        let timed = record.expires() | record.not_before().is_some();
        let now = if timed | !(known & matched & active & !imported) {
            self.clock.now()
        } else {
            std::time::UNIX_EPOCH
        };
        let expired = record.expires_at().is_some_and(|at| now >= at);
        let early = record.not_before().is_some_and(|at| now < at);
        // Non-short-circuit operators: every condition is evaluated.
        let failures = u32::from(!known)
            | u32::from(!matched | imported) << 1
            | u32::from(record.status == KeyStatus::Disabled) << 2
            | u32::from(record.status == KeyStatus::Revoked) << 3
            | u32::from(expired) << 4
            | u32::from(early) << 5;
        if failures == 0 {
            let kind = if record.publishable() {
                CredentialKind::Publishable
            } else {
                CredentialKind::ApiKey
            };
            return Ok(Principal::with_credential(record, kind));
        }
        let first = failures.trailing_zeros() as usize;
        refuse(
            REFUSALS
                .get(first)
                .copied()
                .unwrap_or(RejectReason::WrongSecret),
        )
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("store", &self.store)
            .field("format", &self.format)
            .field("hasher", &self.hasher)
            .field("clock", &self.clock)
            .field("store_timeout", &self.store_timeout)
            .field("refusal_floor", &self.refusal_floor)
            .field("imported", &self.imported)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyGenerator;
    use crate::store::{MemoryStore, StoreError};

    thread_local! {
        /// How many times this thread waited for a refusal floor.
        pub(super) static WAITS: Cell<u32> = const { Cell::new(0) };
    }

    fn waits() -> u32 {
        WAITS.with(Cell::get)
    }

    /// A store that answers only after a wait (never at once).
    #[derive(Debug)]
    struct Awaited(MemoryStore);

    #[async_trait::async_trait]
    impl KeyStore for Awaited {
        async fn find(&self, id: &KeyId) -> Lookup {
            self.0.find(id).await
        }
        async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
            self.0.insert(record).await
        }
        async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
            self.0.update(record).await
        }
        async fn revoke(&self, id: &KeyId, at: std::time::SystemTime) -> Result<(), StoreError> {
            self.0.revoke(id, at).await
        }
        async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
            self.0.list_by_owner(owner).await
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_a_refusal_after_an_immediate_look_up_waits() {
        let format = KeyFormat::new("sk_test").unwrap();
        let generator = KeyGenerator::new(format.clone());
        let (key, unknown) = (generator.generate().unwrap(), generator.generate().unwrap());
        let store = MemoryStore::new();
        let hash = KeyHasher::sha256().hash(key.secret());
        let record = KeyRecord::new(key.id(), hash, "acme", std::time::UNIX_EPOCH);
        store.insert(record).await.unwrap();
        let auth = Authenticator::new(store.clone(), format.clone());

        let before = waits();
        assert!(auth.authenticate(key.expose_secret()).await.is_ok());
        assert!(auth.authenticate("sk_test_malformed").await.is_err());
        assert_eq!(waits(), before, "a good key and a malformed one never wait");
        assert!(auth.authenticate(unknown.expose_secret()).await.is_err());
        assert_eq!(waits(), before + 1, "a refusal after an immediate look-up");

        let awaited = Authenticator::new(Awaited(store), format);
        assert!(awaited.authenticate(unknown.expose_secret()).await.is_err());
        let off = auth.clone().with_refusal_floor(None);
        assert!(off.authenticate(unknown.expose_secret()).await.is_err());
        assert_eq!(waits(), before + 1, "an awaited look-up, or no floor");
    }

    #[test]
    fn a_refusals_wait_is_spread_over_the_whole_range() {
        // Where a wait ends must not follow where the check ended: the
        // spreads drawn cover the range, each part about evenly.
        let mut quarters = [0u32; 4];
        for _ in 0..4_000 {
            let nanos = spread() % FLOOR_SPREAD_NANOS;
            quarters[(nanos * 4 / FLOOR_SPREAD_NANOS) as usize] += 1;
        }
        assert!(
            quarters.iter().all(|&n| (800..1_200).contains(&n)),
            "{quarters:?}"
        );
        // Another thread draws its own sequence.
        let here: Vec<u64> = (0..4).map(|_| spread()).collect();
        let there = std::thread::spawn(|| (0..4).map(|_| spread()).collect::<Vec<u64>>());
        assert_ne!(here, there.join().unwrap());
    }

    #[test]
    fn a_wait_ends_no_earlier_than_its_deadline() {
        let deadline = Instant::now() + Duration::from_micros(50);
        wait_until(deadline);
        assert!(Instant::now() >= deadline);
    }
}
