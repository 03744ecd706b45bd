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
use std::time::SystemTime;

use ipnet::IpNet;

use crate::auth::origin::AllowedOrigin;
use crate::key::{KeyHash, KeyId, VerificationKey};
use crate::limit::{LimitSlot, Limits};
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
/// Plain data. Build one with [`KeyRecord::new`] and the `with_*` methods;
/// the fields are public for reading and for updates.
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
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
// Declared in the order authentication reads them (repr(C) keeps it): the
// hash, id, status and environment share the allocation's first cache line
// with the Arc's counts, and times and networks come next, so that a look-up
// in a large store touches two lines, not four.
#[repr(C)]
pub struct KeyRecord {
    /// The hash of the key's secret.
    pub hash: KeyHash,
    /// The public key id.
    pub id: KeyId,
    /// Active, disabled or revoked.
    #[cfg_attr(feature = "serde", serde(default))]
    pub status: KeyStatus,
    /// The environment the key belongs to; `None` for any. A service
    /// configured with [`AuthLayer::environment`](crate::AuthLayer::environment)
    /// refuses keys of another environment.
    #[cfg_attr(feature = "serde", serde(default))]
    pub environment: Option<Environment>,
    /// From when on the key is refused; `None` for never.
    #[cfg_attr(
        feature = "serde",
        serde(default, with = "crate::rfc3339::serde::option")
    )]
    pub expires_at: Option<SystemTime>,
    /// Until when the key is refused; `None` for no such time.
    #[cfg_attr(
        feature = "serde",
        serde(default, with = "crate::rfc3339::serde::option")
    )]
    pub not_before: Option<SystemTime>,
    /// The client networks (IPv4 or IPv6 CIDR) the key may be used from;
    /// empty for anywhere. Checked by [`AuthLayer`](crate::AuthLayer)
    /// against the client address (see [`auth::client`](crate::auth::client)).
    #[cfg_attr(feature = "serde", serde(default))]
    pub allowed_networks: Vec<IpNet>,
    /// A publishable key: one meant to sit in a browser or an app, which
    /// identifies the caller for quotas and usage but holds no secret
    /// power. [`AuthLayer`](crate::AuthLayer) accepts it only from one of
    /// its [`allowed_origins`](Self::allowed_origins) (none: from nowhere),
    /// and [`KeyManager`](crate::KeyManager) gives it only the scopes the
    /// service allows publishable keys
    /// ([`KeyManager::with_publishable_scopes`](crate::KeyManager::with_publishable_scopes)).
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_false"))]
    pub publishable: bool,
    /// The origins (`https://app.example.com`, `https://*.example.com`) the
    /// key may be used from, checked by [`AuthLayer`](crate::AuthLayer)
    /// against the request's `Origin` (or `Referer`): see
    /// [`auth::origin`](crate::auth::origin). Empty: any origin, unless the
    /// key is [`publishable`](Self::publishable), which then is refused
    /// everywhere.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Vec::is_empty")
    )]
    pub allowed_origins: Vec<AllowedOrigin>,
    /// What the key may do.
    #[cfg_attr(feature = "serde", serde(default))]
    pub scopes: ScopeSet,
    /// Rate limits and credits, checked by
    /// [`RateLimitLayer`](crate::limit::RateLimitLayer); none by default.
    #[cfg_attr(feature = "serde", serde(default))]
    pub limits: Limits,
    /// The owner: a user, tenant or service account id.
    pub owner: String,
    /// A human name, such as "CI deploy key"; may be empty.
    #[cfg_attr(feature = "serde", serde(default))]
    pub name: String,
    /// When the key was made.
    #[cfg_attr(feature = "serde", serde(with = "crate::rfc3339::serde"))]
    pub created_at: SystemTime,
    /// When the key was revoked: set by [`KeyStore::revoke`](crate::KeyStore::revoke)
    /// (to the first revocation's time; revoking again keeps it). `None`
    /// while the key is not revoked.
    #[cfg_attr(
        feature = "serde",
        serde(default, with = "crate::rfc3339::serde::option")
    )]
    pub revoked_at: Option<SystemTime>,
    /// Free-form labels, handed to the service in the `Principal`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub metadata: BTreeMap<String, String>,
    /// For a key that signs requests (HTTP Message Signatures, feature
    /// `signatures`): the public key (or shared secret) its signatures are
    /// checked with. Such a record's [`hash`](Self::hash) is of a secret
    /// nobody holds, so it is never a bearer key. `None` for API keys.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub verification_key: Option<VerificationKey>,
    /// A [`MemoryLimiter`](crate::limit::MemoryLimiter)'s shortcut to this
    /// key's limit state, planted by its first check: the record travels
    /// with the `Principal` and stays in the store, so later requests find
    /// the state without a second look-up. Not data: never compared,
    /// cloned or stored.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) limit_slot: LimitSlot,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("hash", &self.hash)
            .field("id", &self.id)
            .field("status", &self.status)
            .field("environment", &self.environment)
            .field("expires_at", &self.expires_at)
            .field("not_before", &self.not_before)
            .field("allowed_networks", &self.allowed_networks)
            .field("publishable", &self.publishable)
            .field("allowed_origins", &self.allowed_origins)
            .field("scopes", &self.scopes)
            .field("limits", &self.limits)
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .field("revoked_at", &self.revoked_at)
            .field("metadata", &self.metadata)
            .field("verification_key", &self.verification_key)
            .finish()
    }
}

impl KeyRecord {
    /// An active record with no scopes, no expiry and no metadata.
    pub fn new(id: KeyId, hash: KeyHash, owner: impl Into<String>, created_at: SystemTime) -> Self {
        Self {
            id,
            hash,
            owner: owner.into(),
            name: String::new(),
            scopes: ScopeSet::new(),
            created_at,
            revoked_at: None,
            expires_at: None,
            not_before: None,
            status: KeyStatus::Active,
            metadata: BTreeMap::new(),
            limits: Limits::none(),
            allowed_networks: Vec::new(),
            publishable: false,
            allowed_origins: Vec::new(),
            environment: None,
            verification_key: None,
            limit_slot: LimitSlot::default(),
        }
    }

    /// Sets the key's limits (share one [`Limits`] among a tier's keys).
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the human name.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
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
        self.expires_at = Some(at);
        self
    }

    /// Sets the time before which the key is refused.
    #[must_use]
    pub fn with_not_before(mut self, at: SystemTime) -> Self {
        self.not_before = Some(at);
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
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Restricts the key to client addresses in `networks` (an empty list
    /// allows any address).
    #[must_use]
    pub fn with_allowed_networks(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.allowed_networks = networks.into_iter().collect();
        self
    }

    /// Makes the key publishable, usable from `origins` only (see
    /// [`publishable`](Self::publishable)).
    #[must_use]
    pub fn with_publishable(mut self, origins: impl IntoIterator<Item = AllowedOrigin>) -> Self {
        self.publishable = true;
        self.allowed_origins = origins.into_iter().collect();
        self
    }

    /// Tags the key with an environment.
    #[must_use]
    pub fn with_environment(mut self, environment: Environment) -> Self {
        self.environment = Some(environment);
        self
    }

    /// Makes the record one of a key that signs requests, checked with
    /// `key` (see [`verification_key`](Self::verification_key)).
    #[must_use]
    pub fn with_verification_key(mut self, key: VerificationKey) -> Self {
        self.verification_key = Some(key);
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
        if self.expires_at.is_some_and(|at| now >= at) {
            return Err(Invalidity::Expired);
        }
        if self.not_before.is_some_and(|at| now < at) {
            return Err(Invalidity::NotYetValid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What authentication reads of every record (the hash with its
    /// algorithm, the id, status and environment) fits in one cache line
    /// with the `Arc`'s two counts before it.
    #[test]
    fn the_hot_fields_fit_one_cache_line() {
        use std::mem::{offset_of, size_of};
        let arc_counts = 2 * size_of::<usize>();
        let end = offset_of!(KeyRecord, environment) + size_of::<Option<Environment>>();
        assert!(arc_counts + end <= 64, "{}", arc_counts + end);
        assert!(offset_of!(KeyRecord, id) < offset_of!(KeyRecord, status));
    }
}

#[cfg(feature = "serde")]
#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_false(value: &bool) -> bool {
    !*value
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
