//! [`KeyRecord`]: what a store keeps about a key (never the key itself).
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
//! use keyward::record::{KeyRecord, KeyStatus};
//!
//! let key = KeyGenerator::new(KeyFormat::new("sk_live")?).generate()?;
//! let now = SystemTime::now();
//! let record = KeyRecord::new(key.id(), KeyHasher::sha256().hash(key.secret()), "acme", now)
//!     .with_name("billing export")
//!     .with_scopes("invoices:read".parse()?)
//!     .with_expires_at(now + Duration::from_secs(90 * 86_400));
//!
//! assert_eq!(record.status, KeyStatus::Active);
//! assert!(record.is_valid_at(now));
//! assert!(!record.is_valid_at(now + Duration::from_secs(91 * 86_400)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::auth::origin::AllowedOrigin;
use crate::key::{KeyHash, KeyId, VerificationKey};
use crate::limit::{LimitCell, Limits};
use crate::scope::ScopeSet;

/// Whether a key may be used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum KeyStatus {
    /// In use.
    #[default]
    Active,
    /// Switched off for now; may be enabled again.
    Disabled,
    /// Withdrawn for good.
    Revoked,
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyStatus::Active => "active",
            KeyStatus::Disabled => "disabled",
            KeyStatus::Revoked => "revoked",
        })
    }
}

/// Everything a store keeps about one key: its id, the hash of its secret,
/// who owns it, what it may do and when.
///
/// Plain data. Build one with [`KeyRecord::new`] and the `with_*` methods.
/// The fields every key has are public, for reading and for updates, but
/// for its two times, kept in 12 bytes each to the nanosecond and read and
/// set through methods ([`created_at`](Self::created_at),
/// [`expires_at`](Self::expires_at), [`set_expires_at`](Self::set_expires_at));
/// the ones few keys set (environment, not-before, allowed networks,
/// revocation time, metadata, verification key) are boxed together, read
/// and set through methods ([`metadata`](Self::metadata),
/// [`set_revoked_at`](Self::set_revoked_at), ...), so that the many keys
/// without them stay small.
///
/// # As stored data (feature `serde`)
///
/// Shapes meant for a JSON column or a document store, readable and
/// queryable by people who never saw the Rust types:
///
/// ```json
/// {
///   "hash": "hmac-sha256:1:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
///   "id": "AbCdEf012345",
///   "status": "active",
///   "environment": "live",
///   "expires_at": "2025-04-01T00:00:00Z",
///   "not_before": null,
///   "allowed_networks": ["10.0.0.0/8"],
///   "scopes": ["pets:read"],
///   "limits": [
///     {"rate": {"name": "burst", "quota": 5, "window_ms": 1000, "burst": 5}},
///     {"credits": {"name": "monthly", "capacity": 10000,
///                  "refill": {"amount": 10000, "interval_ms": 2592000000}}}
///   ],
///   "owner": "acme",
///   "name": "billing export",
///   "created_at": "2025-01-01T12:30:00.250Z",
///   "revoked_at": null,
///   "metadata": {"team": "billing"}
/// }
/// ```
///
/// - Times are RFC 3339 in UTC, with fractional seconds only when not
///   zero; any offset (`+02:00`) is accepted on input. Years 0000 to 9999.
/// - The hash names its algorithm (see [`KeyHash`]).
/// - A publishable key (one meant for browsers) also has `"publishable":
///   true` and `"allowed_origins": ["https://app.example.com",
///   "https://*.example.com"]`; other keys have neither field (absent
///   means `false` and `[]`).
/// - A key that signs requests also has `"verification_key":
///   "ed25519:<hex>"` (or `"hmac-sha256:<hex>"`, a secret: see
///   [`VerificationKey`]); API keys have no such field.
/// - Durations are integers with their unit in the name (`window_ms`,
///   `interval_ms`).
/// - Deserialization goes through the same checks as the constructors
///   (scopes, networks, policies): bad data is an error, never a record
///   that misbehaves later.
/// - Earlier versions' shapes still read: times as
///   `{"secs_since_epoch": .., "nanos_since_epoch": ..}`, a policy's
///   `"window": {"secs": .., "nanos": ..}`, a refill as the pair
///   `[amount, {"secs": .., "nanos": ..}]`, a hash as bare hex (plain
///   SHA-256); fields added since (`revoked_at`) default to `null`.
#[derive(Clone)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(from = "stored::Stored"))]
#[non_exhaustive]
// Compact: what most keys have inline, what few have (networks, metadata,
// not-before, environment, revocation time, verification key) in one
// boxed part, absent for most keys. Declared in the order authentication
// reads the fields (repr(C) keeps it): the hash, id and status share the
// allocation's first cache line with the Arc's counts.
#[repr(C)]
pub struct KeyRecord {
    /// The hash of the key's secret.
    pub hash: KeyHash,
    /// The public key id.
    pub id: KeyId,
    /// Active, disabled or revoked.
    pub status: KeyStatus,
    /// See [`created_at`](Self::created_at): 12 bytes each, to the
    /// nanosecond, where a `SystemTime` takes 16.
    created: Stamp,
    /// See [`expires_at`](Self::expires_at).
    expires: Option<Stamp>,
    /// The key's rate state (one rate policy), when an in-memory store
    /// keeps the record: the record travels with the `Principal`, so
    /// [`MemoryLimiter`](crate::limit::MemoryLimiter) decides on it without
    /// a look-up of its own. Not data: never compared, cloned or stored.
    pub(crate) limit_cell: LimitCell,
    /// What the key may do (shared, not copied, between records that
    /// clone one set).
    pub scopes: ScopeSet,
    /// Rate limits and credits, checked by
    /// [`RateLimitLayer`](crate::limit::RateLimitLayer); none by default.
    pub limits: Limits,
    /// The owner: a user, tenant or service account id (shared, not
    /// copied, between records that clone one `Arc`).
    pub owner: Arc<str>,
    /// A human name, such as "CI deploy key"; may be empty (then without
    /// an allocation).
    pub name: Box<str>,
    /// The fields few keys set; `None` while all are at their defaults.
    rare: Option<Box<Rare>>,
}

/// A point in time as `SystemTime` holds it (seconds from the epoch,
/// either side, and nanoseconds), in 12 bytes aligned to 4.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    secs_low: u32,
    secs_high: i32,
    /// The nanoseconds plus one, so that `Option<Stamp>` is 12 bytes too.
    nanos: std::num::NonZeroU32,
}

impl Stamp {
    fn new(at: SystemTime) -> Self {
        let (secs, nanos) = match at.duration_since(std::time::UNIX_EPOCH) {
            Ok(since) => (since.as_secs() as i64, since.subsec_nanos()),
            Err(before) => {
                let before = before.duration();
                // Exact for every time `SystemTime` holds, 2^63 s before too.
                let secs = (before.as_secs() as i64).wrapping_neg();
                match before.subsec_nanos() {
                    0 => (secs, 0),
                    nanos => (secs - 1, 1_000_000_000 - nanos),
                }
            }
        };
        Self {
            secs_low: secs as u32,
            secs_high: (secs >> 32) as i32,
            nanos: std::num::NonZeroU32::MIN.saturating_add(nanos),
        }
    }

    fn get(self) -> SystemTime {
        let secs = (i64::from(self.secs_high) << 32) | i64::from(self.secs_low);
        let nanos = std::time::Duration::from_nanos(u64::from(self.nanos.get() - 1));
        let whole = std::time::Duration::from_secs(secs.unsigned_abs());
        let at = if secs >= 0 {
            std::time::UNIX_EPOCH.checked_add(whole)
        } else {
            std::time::UNIX_EPOCH.checked_sub(whole)
        };
        // Made from a `SystemTime`, so it is one again.
        at.and_then(|at| at.checked_add(nanos))
            .unwrap_or(std::time::UNIX_EPOCH)
    }
}

/// The fields of a [`KeyRecord`] that few keys set, boxed together.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Rare {
    environment: Option<Environment>,
    not_before: Option<SystemTime>,
    allowed_networks: Vec<IpNet>,
    revoked_at: Option<SystemTime>,
    metadata: BTreeMap<String, String>,
    verification_key: Option<VerificationKey>,
    publishable: bool,
    allowed_origins: Vec<AllowedOrigin>,
}

/// What a record without rare fields reads.
static NO_RARE: Rare = Rare {
    environment: None,
    not_before: None,
    allowed_networks: Vec::new(),
    revoked_at: None,
    metadata: BTreeMap::new(),
    verification_key: None,
    publishable: false,
    allowed_origins: Vec::new(),
};

impl PartialEq for KeyRecord {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.id == other.id
            && self.status == other.status
            && self.expires == other.expires
            && self.scopes == other.scopes
            && self.limits == other.limits
            && self.owner == other.owner
            && self.name == other.name
            && self.created == other.created
            && self.rare() == other.rare()
    }
}

impl Eq for KeyRecord {}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rare = self.rare();
        f.debug_struct("KeyRecord")
            .field("hash", &self.hash)
            .field("id", &self.id)
            .field("status", &self.status)
            .field("environment", &rare.environment)
            .field("expires_at", &self.expires_at())
            .field("not_before", &rare.not_before)
            .field("allowed_networks", &rare.allowed_networks)
            .field("publishable", &rare.publishable)
            .field("allowed_origins", &rare.allowed_origins)
            .field("scopes", &self.scopes)
            .field("limits", &self.limits)
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("created_at", &self.created_at())
            .field("revoked_at", &rare.revoked_at)
            .field("metadata", &rare.metadata)
            .field("verification_key", &rare.verification_key)
            .finish()
    }
}

impl KeyRecord {
    /// An active record with no scopes, no expiry and no metadata.
    pub fn new(
        id: KeyId,
        hash: KeyHash,
        owner: impl Into<Arc<str>>,
        created_at: SystemTime,
    ) -> Self {
        Self {
            id,
            hash,
            owner: owner.into(),
            name: Box::default(),
            scopes: ScopeSet::new(),
            created: Stamp::new(created_at),
            expires: None,
            status: KeyStatus::Active,
            limits: Limits::none(),
            rare: None,
            limit_cell: LimitCell::loose(),
        }
    }

    /// This record with `cell` (a store that keeps it sets where its
    /// key's rate state is).
    pub(crate) fn with_limit_cell(mut self, cell: LimitCell) -> Self {
        self.limit_cell = cell;
        self
    }

    fn rare(&self) -> &Rare {
        self.rare.as_deref().unwrap_or(&NO_RARE)
    }

    /// Changes the rare fields; a record whose rare fields are all back
    /// to their defaults drops the box.
    fn set_rare(&mut self, change: impl FnOnce(&mut Rare)) {
        let mut rare = self.rare.take().unwrap_or_default();
        change(&mut rare);
        if *rare != NO_RARE {
            self.rare = Some(rare);
        }
    }

    /// The environment the key belongs to; `None` for any. A service
    /// configured with [`AuthLayer::environment`](crate::AuthLayer::environment)
    /// refuses keys of another environment.
    pub fn environment(&self) -> Option<Environment> {
        self.rare().environment
    }

    /// Until when the key is refused; `None` for no such time.
    pub fn not_before(&self) -> Option<SystemTime> {
        self.rare.as_ref().and_then(|rare| rare.not_before)
    }

    /// The client networks (IPv4 or IPv6 CIDR) the key may be used from;
    /// empty for anywhere. Checked by [`AuthLayer`](crate::AuthLayer)
    /// against the client address (see [`auth::client`](crate::auth::client)).
    pub fn allowed_networks(&self) -> &[IpNet] {
        &self.rare().allowed_networks
    }

    /// When the key was revoked: set by [`KeyStore::revoke`](crate::KeyStore::revoke)
    /// (to the first revocation's time; revoking again keeps it). `None`
    /// while the key is not revoked.
    pub fn revoked_at(&self) -> Option<SystemTime> {
        self.rare().revoked_at
    }

    /// Free-form labels, handed to the service in the `Principal`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.rare().metadata
    }

    /// For a key that signs requests (HTTP Message Signatures, feature
    /// `signatures`): the public key (or shared secret) its signatures are
    /// checked with. Such a record's [`hash`](Self::hash) is of a secret
    /// nobody holds, so it is never a bearer key. `None` for API keys.
    pub fn verification_key(&self) -> Option<&VerificationKey> {
        self.rare().verification_key.as_ref()
    }

    /// Whether this is a publishable key: one meant to sit in a browser or
    /// an app, which identifies the caller for quotas and usage but holds
    /// no secret power. [`AuthLayer`](crate::AuthLayer) accepts it only
    /// from one of its [`allowed_origins`](Self::allowed_origins) (none:
    /// from nowhere), and [`KeyManager`](crate::KeyManager) gives it only
    /// the scopes the service allows publishable keys
    /// ([`KeyManager::with_publishable_scopes`](crate::KeyManager::with_publishable_scopes)).
    pub fn publishable(&self) -> bool {
        self.rare().publishable
    }

    /// The origins (`https://app.example.com`, `https://*.example.com`) the
    /// key may be used from, checked by [`AuthLayer`](crate::AuthLayer)
    /// against the request's `Origin` (or `Referer`): see
    /// [`auth::origin`](crate::auth::origin). Empty: any origin, unless the
    /// key is [`publishable`](Self::publishable), which then is refused
    /// everywhere.
    pub fn allowed_origins(&self) -> &[AllowedOrigin] {
        &self.rare().allowed_origins
    }

    /// Whether the request's origin must be checked: a publishable key, or
    /// one with allowed origins. (No read beyond the record for most keys.)
    pub(crate) fn checks_origin(&self) -> bool {
        self.rare
            .as_ref()
            .is_some_and(|rare| rare.publishable || !rare.allowed_origins.is_empty())
    }

    /// Marks the key publishable or not (see [`publishable`](Self::publishable)).
    pub fn set_publishable(&mut self, publishable: bool) {
        self.set_rare(|rare| rare.publishable = publishable);
    }

    /// Replaces the allowed origins (see [`allowed_origins`](Self::allowed_origins)).
    pub fn set_allowed_origins(&mut self, origins: impl IntoIterator<Item = AllowedOrigin>) {
        let origins = origins.into_iter().collect();
        self.set_rare(|rare| rare.allowed_origins = origins);
    }

    /// Makes the key publishable, usable from `origins` only (see
    /// [`publishable`](Self::publishable)).
    #[must_use]
    pub fn with_publishable(mut self, origins: impl IntoIterator<Item = AllowedOrigin>) -> Self {
        self.set_publishable(true);
        self.set_allowed_origins(origins);
        self
    }

    /// Sets or clears the environment (see [`environment`](Self::environment)).
    pub fn set_environment(&mut self, environment: Option<Environment>) {
        self.set_rare(|rare| rare.environment = environment);
    }

    /// Sets or clears the not-before time (see [`not_before`](Self::not_before)).
    pub fn set_not_before(&mut self, at: Option<SystemTime>) {
        self.set_rare(|rare| rare.not_before = at);
    }

    /// Replaces the allowed networks (an empty list allows any address).
    pub fn set_allowed_networks(&mut self, networks: impl IntoIterator<Item = IpNet>) {
        let networks = networks.into_iter().collect();
        self.set_rare(|rare| rare.allowed_networks = networks);
    }

    /// Sets or clears the revocation time (see [`revoked_at`](Self::revoked_at)).
    pub fn set_revoked_at(&mut self, at: Option<SystemTime>) {
        self.set_rare(|rare| rare.revoked_at = at);
    }

    /// Replaces the metadata.
    pub fn set_metadata(&mut self, metadata: BTreeMap<String, String>) {
        self.set_rare(|rare| rare.metadata = metadata);
    }

    /// Sets or clears the verification key (see
    /// [`verification_key`](Self::verification_key)).
    pub fn set_verification_key(&mut self, key: Option<VerificationKey>) {
        self.set_rare(|rare| rare.verification_key = key);
    }

    /// Sets the key's limits (share one [`Limits`] among a tier's keys).
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the human name.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<Box<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the scopes.
    #[must_use]
    pub fn with_scopes(mut self, scopes: ScopeSet) -> Self {
        self.scopes = scopes;
        self
    }

    /// Sets the expiry time.
    #[must_use]
    pub fn with_expires_at(mut self, at: SystemTime) -> Self {
        self.set_expires_at(Some(at));
        self
    }

    /// When the key was made.
    pub fn created_at(&self) -> SystemTime {
        self.created.get()
    }

    /// Sets when the key was made.
    pub fn set_created_at(&mut self, at: SystemTime) {
        self.created = Stamp::new(at);
    }

    /// From when on the key is refused; `None` for never.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires.map(Stamp::get)
    }

    /// Sets or clears the expiry time (see [`expires_at`](Self::expires_at)).
    pub fn set_expires_at(&mut self, at: Option<SystemTime>) {
        self.expires = at.map(Stamp::new);
    }

    /// Whether the key has an expiry time (no conversion of it).
    pub(crate) fn expires(&self) -> bool {
        self.expires.is_some()
    }

    /// Sets the time before which the key is refused.
    #[must_use]
    pub fn with_not_before(mut self, at: SystemTime) -> Self {
        self.set_not_before(Some(at));
        self
    }

    /// Sets the status.
    #[must_use]
    pub fn with_status(mut self, status: KeyStatus) -> Self {
        self.status = status;
        self
    }

    /// Adds one metadata entry.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_rare(|rare| {
            rare.metadata.insert(key.into(), value.into());
        });
        self
    }

    /// Restricts the key to client addresses in `networks` (an empty list
    /// allows any address).
    #[must_use]
    pub fn with_allowed_networks(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.set_allowed_networks(networks);
        self
    }

    /// Tags the key with an environment.
    #[must_use]
    pub fn with_environment(mut self, environment: Environment) -> Self {
        self.set_environment(Some(environment));
        self
    }

    /// Makes the record one of a key that signs requests, checked with
    /// `key` (see [`verification_key`](Self::verification_key)).
    #[must_use]
    pub fn with_verification_key(mut self, key: VerificationKey) -> Self {
        self.set_verification_key(Some(key));
        self
    }

    /// Whether `now` falls between `not_before` and `expires_at` and the
    /// status is active.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.validity_at(now).is_ok()
    }

    /// The first reason the key is not usable at `now`, if any.
    pub fn validity_at(&self, now: SystemTime) -> Result<(), Invalidity> {
        match self.status {
            KeyStatus::Active => {}
            KeyStatus::Disabled => return Err(Invalidity::Disabled),
            KeyStatus::Revoked => return Err(Invalidity::Revoked),
        }
        if self.expires_at().is_some_and(|at| now >= at) {
            return Err(Invalidity::Expired);
        }
        if self.not_before().is_some_and(|at| now < at) {
            return Err(Invalidity::NotYetValid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What authentication reads of every record (the hash with its
    /// algorithm, the id and status) fits in one cache line with the
    /// `Arc`'s two counts before it.
    #[test]
    fn the_hot_fields_fit_one_cache_line() {
        use std::mem::{offset_of, size_of};
        let arc_counts = 2 * size_of::<usize>();
        let end = offset_of!(KeyRecord, status) + size_of::<KeyStatus>();
        assert!(arc_counts + end <= 64, "{}", arc_counts + end);
        assert!(offset_of!(KeyRecord, id) < offset_of!(KeyRecord, status));
    }

    /// A record without rare fields stays small: its `Arc` allocation
    /// (with the two counts) in a 176-byte block, rate state included, not
    /// the 320 of a record with every field inline.
    #[test]
    fn a_record_is_compact() {
        assert!(
            std::mem::size_of::<KeyRecord>() + 16 <= 168,
            "{}",
            std::mem::size_of::<KeyRecord>()
        );
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 12);
    }

    /// Times keep `SystemTime`'s every nanosecond, on either side of the
    /// epoch, through the compact form.
    #[test]
    fn times_keep_their_nanoseconds() {
        use std::time::{Duration, UNIX_EPOCH};
        let times = [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_733_500_000, 123_456_789),
            UNIX_EPOCH + Duration::new(253_402_300_799, 999_999_999),
            UNIX_EPOCH - Duration::new(0, 1),
            UNIX_EPOCH - Duration::new(62_167_219_200, 500_000_000),
            UNIX_EPOCH + Duration::new(u64::from(u32::MAX) + 7, 1),
        ];
        let id = "abcdefghijkl".parse().unwrap();
        let hash = KeyHash::from_bytes([1; 32]);
        for at in times {
            let mut record = KeyRecord::new(id, hash, "acme", at).with_expires_at(at);
            assert_eq!(record.created_at(), at);
            assert_eq!(record.expires_at(), Some(at));
            record.set_expires_at(None);
            assert_eq!(record.expires_at(), None);
        }
    }

    #[test]
    fn rare_fields_set_and_cleared_compare_as_never_set() {
        let id = "abcdefghijkl".parse().unwrap();
        let hash = KeyHash::from_bytes([1; 32]);
        let plain = KeyRecord::new(id, hash, "acme", std::time::UNIX_EPOCH);
        let mut touched = plain.clone();
        touched.set_not_before(Some(std::time::UNIX_EPOCH));
        assert_ne!(plain, touched);
        assert_eq!(touched.not_before(), Some(std::time::UNIX_EPOCH));
        touched.set_not_before(None);
        assert_eq!(plain, touched);
        assert!(plain.metadata().is_empty() && plain.allowed_networks().is_empty());
    }
}

/// The stored shape (see [`KeyRecord`]): every field by name, in the
/// order the earlier, flat record wrote them.
#[cfg(feature = "serde")]
mod stored {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::SystemTime;

    use ipnet::IpNet;
    use serde::{Deserialize, Serialize, Serializer};

    use super::{Environment, KeyRecord, KeyStatus, Rare};
    use crate::auth::origin::AllowedOrigin;
    use crate::key::{KeyHash, KeyId, VerificationKey};
    use crate::limit::{LimitCell, Limits};
    use crate::scope::ScopeSet;

    #[derive(Deserialize)]
    pub(super) struct Stored {
        hash: KeyHash,
        id: KeyId,
        #[serde(default)]
        status: KeyStatus,
        #[serde(default)]
        environment: Option<Environment>,
        #[serde(default, with = "crate::rfc3339::serde::option")]
        expires_at: Option<SystemTime>,
        #[serde(default, with = "crate::rfc3339::serde::option")]
        not_before: Option<SystemTime>,
        #[serde(default)]
        allowed_networks: Vec<IpNet>,
        #[serde(default)]
        scopes: ScopeSet,
        #[serde(default)]
        limits: Limits,
        owner: Arc<str>,
        #[serde(default)]
        name: Box<str>,
        #[serde(with = "crate::rfc3339::serde")]
        created_at: SystemTime,
        #[serde(default, with = "crate::rfc3339::serde::option")]
        revoked_at: Option<SystemTime>,
        #[serde(default)]
        metadata: BTreeMap<String, String>,
        #[serde(default)]
        verification_key: Option<VerificationKey>,
        #[serde(default)]
        publishable: bool,
        #[serde(default)]
        allowed_origins: Vec<AllowedOrigin>,
    }

    #[derive(Serialize)]
    struct StoredRef<'a> {
        hash: &'a KeyHash,
        id: &'a KeyId,
        status: KeyStatus,
        environment: Option<Environment>,
        #[serde(with = "crate::rfc3339::serde::option")]
        expires_at: Option<SystemTime>,
        #[serde(with = "crate::rfc3339::serde::option")]
        not_before: Option<SystemTime>,
        allowed_networks: &'a [IpNet],
        scopes: &'a ScopeSet,
        limits: &'a Limits,
        owner: &'a str,
        name: &'a str,
        #[serde(with = "crate::rfc3339::serde")]
        created_at: SystemTime,
        #[serde(with = "crate::rfc3339::serde::option")]
        revoked_at: Option<SystemTime>,
        metadata: &'a BTreeMap<String, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        verification_key: Option<&'a VerificationKey>,
        #[serde(skip_serializing_if = "is_false")]
        publishable: bool,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        allowed_origins: &'a [AllowedOrigin],
    }

    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
    fn is_false(value: &bool) -> bool {
        !*value
    }

    impl From<Stored> for KeyRecord {
        fn from(stored: Stored) -> Self {
            let rare = Rare {
                environment: stored.environment,
                not_before: stored.not_before,
                allowed_networks: stored.allowed_networks,
                revoked_at: stored.revoked_at,
                metadata: stored.metadata,
                verification_key: stored.verification_key,
                publishable: stored.publishable,
                allowed_origins: stored.allowed_origins,
            };
            KeyRecord {
                hash: stored.hash,
                id: stored.id,
                status: stored.status,
                created: super::Stamp::new(stored.created_at),
                expires: stored.expires_at.map(super::Stamp::new),
                limit_cell: LimitCell::loose(),
                scopes: stored.scopes,
                limits: stored.limits,
                owner: stored.owner,
                name: stored.name,
                rare: (rare != Rare::default()).then(|| Box::new(rare)),
            }
        }
    }

    impl Serialize for KeyRecord {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let rare = self.rare();
            StoredRef {
                hash: &self.hash,
                id: &self.id,
                status: self.status,
                environment: rare.environment,
                expires_at: self.expires_at(),
                not_before: rare.not_before,
                allowed_networks: &rare.allowed_networks,
                scopes: &self.scopes,
                limits: &self.limits,
                owner: &self.owner,
                name: &self.name,
                created_at: self.created_at(),
                revoked_at: rare.revoked_at,
                metadata: &rare.metadata,
                verification_key: rare.verification_key.as_ref(),
                publishable: rare.publishable,
                allowed_origins: &rare.allowed_origins,
            }
            .serialize(serializer)
        }
    }
}

/// Why a record is not usable at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Invalidity {
    /// Past `expires_at`.
    Expired,
    /// Before `not_before`.
    NotYetValid,
    /// Status disabled.
    Disabled,
    /// Status revoked.
    Revoked,
}

/// The environment a key or a service belongs to, in the manner of
/// Stripe's `sk_live` / `sk_test` keys: a service refuses keys of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Environment {
    /// Production.
    Live,
    /// Testing, development, sandboxes.
    Test,
}

impl Environment {
    /// `"live"` or `"test"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not an [`Environment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an environment is \"live\" or \"test\"")]
pub struct InvalidEnvironment;

impl std::str::FromStr for Environment {
    type Err = InvalidEnvironment;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "live" => Ok(Environment::Live),
            "test" => Ok(Environment::Test),
            _ => Err(InvalidEnvironment),
        }
    }
}
