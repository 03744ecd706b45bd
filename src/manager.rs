//! [`KeyManager`]: the key lifecycle over any [`KeyStore`]: issue, rotate,
//! revoke, disable and enable, change scopes, limits, metadata, name,
//! expiry and not-before time, list.
//!
//! - [`issue`](KeyManager::issue) mints a key and stores its record; the
//!   plaintext is in the returned [`IssuedKey`] and nowhere else — hand it
//!   to its owner once.
//! - [`rotate`](KeyManager::rotate) mints a successor that copies every
//!   field of the old record (owner, name, scopes, limits, metadata,
//!   restrictions, expiry), and makes the old key expire after a grace
//!   period you choose, so clients can switch over without downtime.
//! - [`import_legacy`](KeyManager::import_legacy) imports keys issued
//!   before keyward by their hash, for
//!   [`rotate`](KeyManager::rotate) to move their owners to keyward keys.
//! - [`revoke`](KeyManager::revoke) is immediate and final;
//!   [`disable`](KeyManager::disable) / [`enable`](KeyManager::enable) switch
//!   a key off and on again.
//! - [`update_scopes`](KeyManager::update_scopes),
//!   [`update_limits`](KeyManager::update_limits) (a tier change),
//!   [`update_metadata`](KeyManager::update_metadata),
//!   [`update_name`](KeyManager::update_name),
//!   [`update_expiry`](KeyManager::update_expiry) and
//!   [`update_not_before`](KeyManager::update_not_before) change one field
//!   each.
//!
//! Every change is a lifecycle [`UsageEvent`] of its own (see
//! [`KeyManager::with_events`]): the audit trail, which a change made with
//! `store().update(..)` would skip.
//!
//! Times come from the injected [`Clock`]. `issue` and `revoke` are single
//! store operations; the others read the record, change it and write it
//! back with [`KeyStore::update`], and refuse keys that are revoked
//! ([`ManagerError::Revoked`]). Revocation is final even under races: a
//! store refuses to update a revoked record ([`StoreError::Revoked`]), so a
//! `disable` or `rotate` that read the record before a concurrent `revoke`
//! fails instead of bringing the key back. Two other writers changing the
//! *same* key at the same moment may still overwrite each other (the last
//! write wins); serialize management of one key if that matters to you.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use keyward::clock::{Clock, FakeClock};
//! use keyward::key::KeyFormat;
//! use keyward::manager::{IssueOptions, KeyManager};
//! use keyward::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let clock = FakeClock::default();
//! let manager = KeyManager::new(MemoryStore::new(), KeyFormat::new("sk_live")?)
//!     .with_clock(clock.clone());
//!
//! let issued = manager
//!     .issue(IssueOptions::new("acme").name("CI").scopes("pets:read".parse()?))
//!     .await?;
//! println!("your key, shown once: {}", issued.key.expose_secret());
//!
//! // A day's grace: the old key works until then, the new one from now on.
//! let rotated = manager.rotate(&issued.record.id, Duration::from_secs(86_400)).await?;
//! assert_eq!(rotated.record.scopes, issued.record.scopes);
//! assert_eq!(rotated.previous.expires_at(), Some(clock.now() + Duration::from_secs(86_400)));
//!
//! manager.revoke(&rotated.record.id).await?;
//! assert_eq!(manager.list_by_owner("acme").await?.len(), 2);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::auth::origin::AllowedOrigin;
use crate::clock::{Clock, SystemClock};
use crate::key::{
    ApiKey, GenerateError, HashAlgorithm, InvalidVerificationKey, KeyFormat, KeyGenerator,
    KeyHasher, KeyId, LegacyFormat,
};
use crate::limit::Limits;
use crate::record::{Environment, KeyRecord, KeyStatus};
use crate::scope::{Scope, ScopeSet};
use crate::store::{KeyStore, StoreError};
use crate::usage::{Lifecycle, UsageEvent, UsageSink};

/// How many fresh ids [`KeyManager::issue`] tries when an id is taken (with
/// 62^12 ids, a second try is already astronomically unlikely).
const ISSUE_ATTEMPTS: usize = 3;

/// Issues, rotates and revokes keys in a [`KeyStore`]; see the
/// [module docs](self).
///
/// Cheap to clone: clones share the store, clock and hasher.
#[derive(Clone)]
pub struct KeyManager {
    store: Arc<dyn KeyStore>,
    generator: KeyGenerator,
    hasher: KeyHasher,
    clock: Arc<dyn Clock>,
    /// Where lifecycle events go; `None`: nowhere, and no work for them.
    events: Option<Arc<dyn UsageSink>>,
    /// The scopes a publishable key may have.
    publishable_scopes: ScopeSet,
}

/// The error type of [`KeyManager`] operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// No key has this id.
    #[error("no key with id {0}")]
    NotFound(KeyId),
    /// The key is revoked; revocation is final.
    #[error("key {0} is revoked")]
    Revoked(KeyId),
    /// The key has expired: a successor would inherit its expiry and be
    /// born dead, so it is not rotated.
    #[error("key {0} has expired")]
    Expired(KeyId),
    /// A time computed from the options lies beyond what `SystemTime` holds.
    #[error("the requested expiry is out of range")]
    ExpiryOutOfRange,
    /// The store failed.
    #[error("key store failed")]
    Store(#[source] StoreError),
    /// The operating system's random number generator failed.
    #[error("could not generate a key")]
    Generate(#[from] GenerateError),
    /// The key signs requests (it holds a verification key): rotating it
    /// would hand its public key to a bearer key. Register or issue a new
    /// signing key, then revoke this one.
    #[error("key {0} signs requests and is not rotated")]
    SigningKey(KeyId),
    /// The public key to register is not a usable key.
    #[error("invalid verification key")]
    InvalidVerificationKey(#[from] InvalidVerificationKey),
    /// A publishable key was asked for a scope outside the service's
    /// allow-list ([`KeyManager::with_publishable_scopes`]).
    #[error("a publishable key may not have scope {0}")]
    ScopeNotPublishable(Scope),
    /// A publishable key with no allowed origin would be refused
    /// everywhere.
    #[error("a publishable key needs at least one allowed origin")]
    NoAllowedOrigins,
    /// This kind of credential cannot be publishable (a JWT is a bearer
    /// secret).
    #[error("this kind of credential cannot be publishable")]
    NotPublishable,
    /// A JWT could not be minted (feature `jwt`).
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    #[error("could not mint the JWT")]
    Jwt(#[source] crate::jwt::JwtError),
    /// The key to import does not have the old format given.
    #[error("the key to import does not have the format given")]
    NotOfFormat,
    /// A key with this hash was imported already.
    #[error("a key with this hash was imported already")]
    AlreadyImported,
}

impl From<StoreError> for ManagerError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(id) => ManagerError::NotFound(id),
            StoreError::Revoked(id) => ManagerError::Revoked(id),
            StoreError::DuplicateHash => ManagerError::AlreadyImported,
            other => ManagerError::Store(other),
        }
    }
}

/// What [`KeyManager::issue`] makes: owner, scopes, name, times,
/// restrictions, metadata.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use keyward::manager::IssueOptions;
/// use keyward::record::Environment;
///
/// let options = IssueOptions::new("acme")
///     .name("billing export")
///     .scopes("invoices:read".parse()?)
///     .expires_in(Duration::from_secs(90 * 86_400))
///     .allowed_networks(["10.0.0.0/8".parse()?])
///     .environment(Environment::Live)
///     .metadata("team", "billing");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct IssueOptions {
    owner: Arc<str>,
    name: String,
    scopes: ScopeSet,
    expiry: Option<Expiry>,
    not_before: Option<SystemTime>,
    metadata: BTreeMap<String, String>,
    allowed_networks: Vec<IpNet>,
    environment: Option<Environment>,
    limits: Limits,
    publishable: Option<Vec<AllowedOrigin>>,
}

#[derive(Debug, Clone, Copy)]
enum Expiry {
    In(Duration),
    At(SystemTime),
}

impl IssueOptions {
    /// A key for `owner` with no scopes, no expiry and no restrictions.
    pub fn new(owner: impl Into<Arc<str>>) -> Self {
        Self {
            owner: owner.into(),
            name: String::new(),
            scopes: ScopeSet::new(),
            expiry: None,
            not_before: None,
            metadata: BTreeMap::new(),
            allowed_networks: Vec::new(),
            environment: None,
            limits: Limits::none(),
            publishable: None,
        }
    }

    /// A human name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The scopes.
    pub fn scopes(mut self, scopes: ScopeSet) -> Self {
        self.scopes = scopes;
        self
    }

    /// Expires `after` the moment of issue (by the manager's clock).
    pub fn expires_in(mut self, after: Duration) -> Self {
        self.expiry = Some(Expiry::In(after));
        self
    }

    /// Expires at `at`.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expiry = Some(Expiry::At(at));
        self
    }

    /// Refused before `at`.
    pub fn not_before(mut self, at: SystemTime) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Adds one metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Restricts the key to client addresses in `networks`.
    pub fn allowed_networks(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.allowed_networks = networks.into_iter().collect();
        self
    }

    /// The key's rate limits and credits (share one [`Limits`] per tier).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Tags the key with an environment.
    pub fn environment(mut self, environment: Environment) -> Self {
        self.environment = Some(environment);
        self
    }

    /// Makes a publishable key, for a browser or an app, usable from
    /// `origins` only (see [`KeyRecord::publishable`]). Its scopes must lie
    /// within the manager's [publishable
    /// scopes](KeyManager::with_publishable_scopes), and it needs at least
    /// one origin.
    pub fn publishable(mut self, origins: impl IntoIterator<Item = AllowedOrigin>) -> Self {
        self.publishable = Some(origins.into_iter().collect());
        self
    }
}

impl IssueOptions {
    /// The expiry these options ask for, from `now`.
    fn expiry_from(&self, now: SystemTime) -> Result<Option<SystemTime>, ManagerError> {
        match self.expiry {
            None => Ok(None),
            Some(Expiry::At(at)) => Ok(Some(at)),
            Some(Expiry::In(after)) => now
                .checked_add(after)
                .map(Some)
                .ok_or(ManagerError::ExpiryOutOfRange),
        }
    }

    /// The record these options describe.
    fn record(
        &self,
        id: KeyId,
        hash: crate::key::KeyHash,
        now: SystemTime,
        expires_at: Option<SystemTime>,
    ) -> KeyRecord {
        let mut record = KeyRecord::new(id, hash, self.owner.clone(), now)
            .with_name(self.name.clone())
            .with_scopes(self.scopes.clone())
            .with_allowed_networks(self.allowed_networks.iter().copied());
        record.set_expires_at(expires_at);
        record.set_not_before(self.not_before);
        record.set_metadata(self.metadata.clone());
        record.set_environment(self.environment);
        record.limits = self.limits.clone();
        if let Some(origins) = &self.publishable {
            record = record.with_publishable(origins.iter().cloned());
        }
        record
    }
}

/// A freshly issued key: the plaintext, once, and its stored record.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IssuedKey {
    /// The plaintext key, for its owner. It is not stored anywhere.
    pub key: ApiKey,
    /// The record as stored.
    pub record: KeyRecord,
}

/// A freshly issued signing key (feature `signatures`): the private key
/// (or shared secret), once, and the stored record, whose
/// [`id`](KeyRecord::id) is the signatures' `keyid`.
#[cfg(feature = "signatures")]
#[cfg_attr(docsrs, doc(cfg(feature = "signatures")))]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IssuedSigningKey {
    /// The private key, for its owner. It is not stored anywhere (for
    /// HMAC, the store keeps the same secret). `Debug` redacts it.
    pub signing_key: crate::signature::SigningKey,
    /// The record as stored.
    pub record: KeyRecord,
}

/// A freshly minted JWT (feature `jwt`) and the record that backs it: the
/// token's `jti` is the record's id, so revoking the record revokes the
/// token.
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
#[derive(Clone)]
#[non_exhaustive]
pub struct IssuedJwt {
    /// The token, for its holder.
    pub token: String,
    /// The record as stored.
    pub record: KeyRecord,
}

#[cfg(feature = "jwt")]
impl fmt::Debug for IssuedJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedJwt")
            .field("token", &"[redacted]")
            .field("record", &self.record)
            .finish()
    }
}

/// The outcome of [`KeyManager::rotate`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Rotated {
    /// The successor's plaintext key, for its owner.
    pub key: ApiKey,
    /// The successor's record as stored.
    pub record: KeyRecord,
    /// The old key's record as stored, with its new, earlier expiry.
    pub previous: KeyRecord,
}

impl KeyManager {
    /// Manages keys of `format` in `store`, hashed with plain SHA-256, timed
    /// by the system clock.
    pub fn new(store: impl KeyStore, format: KeyFormat) -> Self {
        Self::from_shared(crate::store::shared(store), format)
    }

    /// Manages keys in a store shared as `Arc<dyn KeyStore>`.
    pub fn from_shared(store: Arc<dyn KeyStore>, format: KeyFormat) -> Self {
        Self {
            store,
            generator: KeyGenerator::new(format),
            hasher: KeyHasher::sha256(),
            clock: Arc::new(SystemClock),
            events: None,
            publishable_scopes: ScopeSet::new(),
        }
    }

    /// The scopes a publishable key may be given (none by default): each
    /// scope of a publishable key must be granted by this allow-list (a
    /// `pets:*` here allows `pets:read`), checked when the key is issued
    /// and when its scopes change ([`ManagerError::ScopeNotPublishable`]).
    /// Name only what is harmless in anyone's hands, never `keys:admin`:
    /// a publishable key sits in pages anyone can read.
    ///
    /// ```
    /// use keyward::auth::origin::AllowedOrigin;
    /// use keyward::manager::{IssueOptions, KeyManager, ManagerError};
    /// use keyward::{KeyFormat, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let manager = KeyManager::new(MemoryStore::new(), KeyFormat::new("pk_live")?)
    ///     .with_publishable_scopes("catalog:read search:query".parse()?);
    /// let origin: AllowedOrigin = "https://shop.example.com".parse()?;
    /// let key = manager
    ///     .issue(IssueOptions::new("acme").publishable([origin.clone()]).scopes("catalog:read".parse()?))
    ///     .await?;
    /// assert!(key.record.publishable());
    /// let refused = manager
    ///     .issue(IssueOptions::new("acme").publishable([origin]).scopes("keys:admin".parse()?))
    ///     .await;
    /// assert!(matches!(refused, Err(ManagerError::ScopeNotPublishable(_))));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_publishable_scopes(mut self, scopes: ScopeSet) -> Self {
        self.publishable_scopes = scopes;
        self
    }

    /// The scopes a publishable key may be given.
    pub fn publishable_scopes(&self) -> &ScopeSet {
        &self.publishable_scopes
    }

    /// Refuses a publishable key without origins or with scopes it may
    /// not have.
    fn check_publishable_options(&self, options: &IssueOptions) -> Result<(), ManagerError> {
        match &options.publishable {
            None => Ok(()),
            Some(origins) if origins.is_empty() => Err(ManagerError::NoAllowedOrigins),
            Some(_) => self.check_publishable(&options.scopes),
        }
    }

    /// Refuses scopes a publishable key may not have.
    fn check_publishable(&self, scopes: &ScopeSet) -> Result<(), ManagerError> {
        match scopes
            .iter()
            .find(|scope| !self.publishable_scopes.grants(scope))
        {
            Some(scope) => Err(ManagerError::ScopeNotPublishable(scope.clone())),
            None => Ok(()),
        }
    }

    /// Records every change as a lifecycle [`UsageEvent`] in `sink`, one
    /// [`Lifecycle`] each: issued, rotated, revoked, disabled, enabled,
    /// scopes, limits, metadata, name, expiry or not-before changed. The
    /// audit trail, through the same sinks as request usage.
    #[must_use]
    pub fn with_events(mut self, sink: impl UsageSink) -> Self {
        self.events = Some(Arc::new(sink));
        self
    }

    fn audit(&self, lifecycle: Lifecycle, record: &KeyRecord) {
        if let Some(events) = &self.events {
            events.record(UsageEvent::lifecycle(
                lifecycle,
                record.id,
                Arc::clone(&record.owner),
                self.clock.now(),
            ));
        }
    }

    /// Hands `event` to the sink set with [`with_events`](Self::with_events),
    /// if any: for lifecycle events other modules record about a key.
    #[cfg(feature = "secret-scanning")]
    pub(crate) fn record_event(&self, event: UsageEvent) {
        if let Some(events) = &self.events {
            events.record(event);
        }
    }

    /// Uses `clock` for creation, expiry and revocation times.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = crate::clock::shared(clock);
        self
    }

    /// Hashes new keys with `hasher`: it must be the one the
    /// [`AuthLayer`](crate::AuthLayer) uses.
    #[must_use]
    pub fn with_hasher(mut self, hasher: KeyHasher) -> Self {
        self.hasher = hasher;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The hasher of new keys' secrets (the one the store's hashes were
    /// made with).
    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// The format of the keys this manager mints.
    pub fn format(&self) -> &KeyFormat {
        self.generator.format()
    }

    /// Mints a key and stores its record. The plaintext is returned here
    /// once and kept nowhere.
    pub async fn issue(&self, options: IssueOptions) -> Result<IssuedKey, ManagerError> {
        self.check_publishable_options(&options)?;
        let now = self.clock.now();
        let expires_at = options.expiry_from(now)?;
        self.insert_fresh(|id, hash| options.record(id, hash, now, expires_at))
            .await
            .map(|(key, record)| {
                self.audit(Lifecycle::Issued, &record);
                IssuedKey { key, record }
            })
    }

    /// Stores a record for a key that signs requests (HTTP Message
    /// Signatures; see [`signature`](crate::signature)) with the public key
    /// the client generated: the private key never reaches the server.
    /// The record gets a fresh id (the signatures' `keyid`) and a hash of a
    /// secret nobody holds, so it is no bearer key. Returns the record.
    ///
    /// An Ed25519 key must be a point of the curve and not of small order
    /// ([`InvalidVerificationKey::NotAPoint`]). An HMAC secret the client
    /// chose is accepted too; it is not public, and the store keeps it
    /// readable (see [`VerificationKey`](crate::key::VerificationKey)).
    #[cfg(feature = "signatures")]
    #[cfg_attr(docsrs, doc(cfg(feature = "signatures")))]
    pub async fn register_public_key(
        &self,
        key: crate::key::VerificationKey,
        options: IssueOptions,
    ) -> Result<KeyRecord, ManagerError> {
        if let crate::key::VerificationKey::Ed25519(public) = &key {
            crate::signature::ed25519_public_key(public)?;
        }
        self.check_publishable_options(&options)?;
        let now = self.clock.now();
        let expires_at = options.expiry_from(now)?;
        let (_, record) = self
            .insert_fresh(|id, hash| {
                options
                    .record(id, hash, now, expires_at)
                    .with_verification_key(key.clone())
            })
            .await?;
        self.audit(Lifecycle::Issued, &record);
        Ok(record)
    }

    /// Generates an Ed25519 key pair, stores a record with its public half
    /// (as [`register_public_key`](Self::register_public_key) does) and
    /// returns the private key, once: it is kept nowhere. Prefer letting
    /// the client generate the pair and registering its public key.
    #[cfg(feature = "signatures")]
    #[cfg_attr(docsrs, doc(cfg(feature = "signatures")))]
    pub async fn issue_key_pair(
        &self,
        options: IssueOptions,
    ) -> Result<IssuedSigningKey, ManagerError> {
        let signing_key = crate::signature::SigningKey::generate_ed25519()?;
        let record = self
            .register_public_key(signing_key.verification_key(), options)
            .await?;
        Ok(IssuedSigningKey {
            signing_key,
            record,
        })
    }

    /// Generates a 32-byte HMAC-SHA-256 secret, stores it in a record and
    /// returns it, once, for the client. The store keeps the secret
    /// readable (HMAC needs it to verify): prefer
    /// [`issue_key_pair`](Self::issue_key_pair).
    #[cfg(feature = "signatures")]
    #[cfg_attr(docsrs, doc(cfg(feature = "signatures")))]
    pub async fn issue_shared_secret(
        &self,
        options: IssueOptions,
    ) -> Result<IssuedSigningKey, ManagerError> {
        let signing_key = crate::signature::SigningKey::generate_hmac_sha256()?;
        let record = self
            .register_public_key(signing_key.verification_key(), options)
            .await?;
        Ok(IssuedSigningKey {
            signing_key,
            record,
        })
    }

    /// Mints a JWT with `issuer` for the owner of `options`, with its
    /// scopes, valid for `lifetime`, and stores the record that backs it:
    /// the token's `jti` is the record's id, so that
    /// [`revoke`](Self::revoke) refuses the token at once, and the
    /// record's limits apply to it (see [`jwt`](crate::jwt)). The record
    /// expires with the token (or earlier, if `options` say so), and its
    /// hash is of a secret nobody holds: it is never a bearer key.
    ///
    /// The token's times come from this manager's clock.
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub async fn issue_jwt(
        &self,
        issuer: &crate::jwt::JwtIssuer,
        options: IssueOptions,
        lifetime: Duration,
    ) -> Result<IssuedJwt, ManagerError> {
        if options.publishable.is_some() {
            // A bearer token in a browser is a secret in a page.
            return Err(ManagerError::NotPublishable);
        }
        let now = self.clock.now();
        let token_end = now
            .checked_add(lifetime)
            .ok_or(ManagerError::ExpiryOutOfRange)?;
        let expires_at = match options.expiry_from(now)? {
            Some(at) if at < token_end => at,
            _ => token_end,
        };
        let (_, record) = self
            .insert_fresh(|id, hash| options.record(id, hash, now, Some(expires_at)))
            .await?;
        let token = match issuer.mint_at(
            now,
            &record.owner,
            &record.scopes,
            lifetime,
            Some(record.id),
        ) {
            Ok(token) => token,
            Err(error) => {
                // Leave no record behind for a token nobody received.
                if let Err(cleanup) = self.store.revoke(&record.id, now).await {
                    tracing::error!(
                        target: "keyward::manager",
                        key_id = %record.id,
                        error = &cleanup as &dyn std::error::Error,
                        "minting failed and its record could not be revoked"
                    );
                }
                return Err(ManagerError::Jwt(error));
            }
        };
        self.audit(Lifecycle::Issued, &record);
        Ok(IssuedJwt { token, record })
    }

    /// Imports a key issued before keyward, in the old `format`, by the
    /// SHA-256 `digest` of the whole old key (what a team that kept only
    /// hashes has; [`import_legacy_key`](Self::import_legacy_key) takes the
    /// key itself). The record gets a fresh id, the owner, scopes, limits,
    /// restrictions and times of `options`, and the hash as
    /// [`HashAlgorithm::ImportedSha256`]; the old key is then accepted by an
    /// [`AuthLayer`](crate::AuthLayer) told of the format
    /// ([`imported_keys`](crate::AuthLayer::imported_keys)), with kind
    /// [`Imported`](crate::CredentialKind::Imported).
    ///
    /// `format` must hold at least [`MIN_LEGACY_BITS`](crate::key::MIN_LEGACY_BITS)
    /// bits (a weaker one cannot be made): only high-entropy old keys
    /// qualify. Importing one hash twice is refused
    /// ([`ManagerError::AlreadyImported`]). Move the owner to a keyward key
    /// with [`rotate`](Self::rotate): the successor is a keyward key with
    /// the same owner, scopes and limits, and the old key expires after
    /// the grace period.
    pub async fn import_legacy(
        &self,
        format: &LegacyFormat,
        digest: [u8; 32],
        options: IssueOptions,
    ) -> Result<KeyRecord, ManagerError> {
        self.check_publishable_options(&options)?;
        let hash = crate::key::KeyHash::new(HashAlgorithm::ImportedSha256, digest);
        let now = self.clock.now();
        let expires_at = options.expiry_from(now)?;
        // Only an id is drawn: the record's hash is the old key's, so no
        // secret is generated (nor hashed) for it.
        let ((), record) = self
            .insert_retrying(|| {
                let id = self.generator.generate_id()?;
                Ok(((), options.record(id, hash, now, expires_at)))
            })
            .await?;
        tracing::info!(
            target: "keyward::manager",
            key_id = %record.id,
            entropy_bits = format.entropy_bits(),
            "legacy key imported"
        );
        self.audit(Lifecycle::Issued, &record);
        Ok(record)
    }

    /// [`import_legacy`](Self::import_legacy) with the old key itself,
    /// which must have `format` ([`ManagerError::NotOfFormat`]); only its
    /// hash is stored.
    pub async fn import_legacy_key(
        &self,
        format: &LegacyFormat,
        key: &str,
        options: IssueOptions,
    ) -> Result<KeyRecord, ManagerError> {
        let hash = format.hash(key).ok_or(ManagerError::NotOfFormat)?;
        self.import_legacy(format, *hash.as_bytes(), options).await
    }

    /// Mints a successor to key `id` and lets the old key expire `grace`
    /// from now (or at its own expiry, if that is earlier). A grace of zero
    /// ends the old key at once.
    ///
    /// The successor copies every field of the old record — owner, name,
    /// scopes, limits, metadata, restrictions, status, expiry — except its
    /// id, hash and creation time. Revoked and expired keys cannot be
    /// rotated.
    pub async fn rotate(&self, id: &KeyId, grace: Duration) -> Result<Rotated, ManagerError> {
        let old = self.load(id).await?;
        if old.verification_key().is_some() {
            return Err(ManagerError::SigningKey(*id));
        }
        let now = self.clock.now();
        if old.expires_at().is_some_and(|at| at <= now) {
            return Err(ManagerError::Expired(*id));
        }
        let old_until = now
            .checked_add(grace)
            .ok_or(ManagerError::ExpiryOutOfRange)?;
        let (key, record) = self
            .insert_fresh(|new_id, hash| {
                let mut successor = KeyRecord::clone(&old);
                successor.id = new_id;
                successor.hash = hash;
                successor.set_created_at(now);
                successor
            })
            .await?;
        let mut previous = old.clone();
        previous.set_expires_at(Some(match old.expires_at() {
            Some(at) if at < old_until => at,
            _ => old_until,
        }));
        if let Err(error) = self.store.update(previous.clone()).await {
            // Do not leave a successor whose key nobody received.
            if let Err(cleanup) = self.store.revoke(&record.id, now).await {
                tracing::error!(
                    target: "keyward::manager",
                    key_id = %record.id,
                    error = &cleanup as &dyn std::error::Error,
                    "rotation failed and its successor could not be revoked"
                );
            }
            return Err(error.into());
        }
        tracing::info!(
            target: "keyward::manager",
            key_id = %id,
            successor = %record.id,
            grace_secs = grace.as_secs(),
            "key rotated"
        );
        self.audit(Lifecycle::Rotated, &previous);
        self.audit(Lifecycle::Issued, &record);
        Ok(Rotated {
            key,
            record,
            previous,
        })
    }

    /// Revokes key `id`, effective on the next request. Final.
    pub async fn revoke(&self, id: &KeyId) -> Result<(), ManagerError> {
        self.store.revoke(id, self.clock.now()).await?;
        tracing::info!(target: "keyward::manager", key_id = %id, "key revoked");
        // The store's `revoke` returns no record: read it back for the
        // event's owner, only when someone listens.
        if self.events.is_some() {
            if let Ok(Some(record)) = self.store.find(id).await {
                self.audit(Lifecycle::Revoked, &record);
            }
        }
        Ok(())
    }

    /// Switches key `id` off until [`enable`](Self::enable)d. Returns the
    /// updated record.
    pub async fn disable(&self, id: &KeyId) -> Result<KeyRecord, ManagerError> {
        let record = self
            .modify(id, |record| {
                record.status = KeyStatus::Disabled;
                Ok(())
            })
            .await?;
        self.audit(Lifecycle::Disabled, &record);
        Ok(record)
    }

    /// Switches a disabled key `id` on again. Revoked keys stay revoked
    /// ([`ManagerError::Revoked`]).
    pub async fn enable(&self, id: &KeyId) -> Result<KeyRecord, ManagerError> {
        let record = self
            .modify(id, |record| {
                record.status = KeyStatus::Active;
                Ok(())
            })
            .await?;
        self.audit(Lifecycle::Enabled, &record);
        Ok(record)
    }

    /// Replaces the scopes of key `id`. Returns the updated record.
    pub async fn update_scopes(
        &self,
        id: &KeyId,
        scopes: ScopeSet,
    ) -> Result<KeyRecord, ManagerError> {
        self.change(id, Lifecycle::ScopesChanged, |record| {
            // Checked on the record about to be written, not on an earlier
            // read that a concurrent change may have made stale.
            if record.publishable() {
                self.check_publishable(&scopes)?;
            }
            record.scopes = scopes;
            Ok(())
        })
        .await
    }

    /// Replaces the allowed origins of key `id` (see
    /// [`KeyRecord::allowed_origins`]); a publishable key must keep at
    /// least one ([`ManagerError::NoAllowedOrigins`]). Returns the updated
    /// record.
    pub async fn update_allowed_origins(
        &self,
        id: &KeyId,
        origins: impl IntoIterator<Item = AllowedOrigin>,
    ) -> Result<KeyRecord, ManagerError> {
        let origins: Vec<AllowedOrigin> = origins.into_iter().collect();
        self.change(id, Lifecycle::OriginsChanged, move |record| {
            // On the record about to be written, as for the scopes.
            if record.publishable() && origins.is_empty() {
                return Err(ManagerError::NoAllowedOrigins);
            }
            record.set_allowed_origins(origins);
            Ok(())
        })
        .await
    }

    /// Replaces the limits of key `id`: a move to another tier. A limiter
    /// notices the new policies on the key's next request. Returns the
    /// updated record.
    pub async fn update_limits(
        &self,
        id: &KeyId,
        limits: Limits,
    ) -> Result<KeyRecord, ManagerError> {
        self.change(id, Lifecycle::LimitsChanged, move |record| {
            record.limits = limits;
            Ok(())
        })
        .await
    }

    /// Replaces the metadata of key `id` (all of it: read the record and
    /// extend its map to add one entry). Returns the updated record.
    pub async fn update_metadata(
        &self,
        id: &KeyId,
        metadata: BTreeMap<String, String>,
    ) -> Result<KeyRecord, ManagerError> {
        self.change(id, Lifecycle::MetadataChanged, move |record| {
            record.set_metadata(metadata);
            Ok(())
        })
        .await
    }

    /// Renames key `id`. Returns the updated record.
    pub async fn update_name(
        &self,
        id: &KeyId,
        name: impl Into<String>,
    ) -> Result<KeyRecord, ManagerError> {
        let name = name.into();
        self.change(id, Lifecycle::Renamed, move |record| {
            record.name = name.into();
            Ok(())
        })
        .await
    }

    /// Sets the expiry of key `id`: `Some(at)` to refuse it from `at` on
    /// (a time already past ends it at once), `None` to let it live
    /// indefinitely, also bringing back a key that had expired. Returns
    /// the updated record.
    pub async fn update_expiry(
        &self,
        id: &KeyId,
        expires_at: Option<SystemTime>,
    ) -> Result<KeyRecord, ManagerError> {
        self.change(id, Lifecycle::ExpiryChanged, move |record| {
            record.set_expires_at(expires_at);
            Ok(())
        })
        .await
    }

    /// Sets the time before which key `id` is refused (`None`: no such
    /// time). Returns the updated record.
    pub async fn update_not_before(
        &self,
        id: &KeyId,
        not_before: Option<SystemTime>,
    ) -> Result<KeyRecord, ManagerError> {
        self.change(id, Lifecycle::NotBeforeChanged, move |record| {
            record.set_not_before(not_before);
            Ok(())
        })
        .await
    }

    /// Every key of `owner`, oldest first.
    pub async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, ManagerError> {
        Ok(self.store.list_by_owner(owner).await?)
    }

    /// The record of key `id`, if there is one.
    pub async fn find(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, ManagerError> {
        Ok(self.store.find(id).await?)
    }

    /// The record of a key that is not revoked.
    async fn load(&self, id: &KeyId) -> Result<KeyRecord, ManagerError> {
        let record = self
            .store
            .find(id)
            .await?
            .ok_or(ManagerError::NotFound(*id))?;
        if record.status == KeyStatus::Revoked {
            return Err(ManagerError::Revoked(*id));
        }
        Ok(KeyRecord::clone(&record))
    }

    /// [`modify`](Self::modify), then the change's lifecycle event.
    async fn change(
        &self,
        id: &KeyId,
        lifecycle: Lifecycle,
        change: impl FnOnce(&mut KeyRecord) -> Result<(), ManagerError>,
    ) -> Result<KeyRecord, ManagerError> {
        let record = self.modify(id, change).await?;
        tracing::info!(target: "keyward::manager", key_id = %id, change = %lifecycle, "key changed");
        self.audit(lifecycle, &record);
        Ok(record)
    }

    /// Reads record `id`, applies `change` and writes the result back;
    /// `change` may refuse (its error is returned, nothing is written). A
    /// rule that depends on the record is checked inside `change`, on the
    /// very record that is written.
    async fn modify(
        &self,
        id: &KeyId,
        change: impl FnOnce(&mut KeyRecord) -> Result<(), ManagerError>,
    ) -> Result<KeyRecord, ManagerError> {
        let mut record = self.load(id).await?;
        change(&mut record)?;
        self.store.update(record.clone()).await?;
        Ok(record)
    }

    /// Generates a key, builds its record with `build` and inserts it,
    /// trying a fresh id if the id is taken.
    async fn insert_fresh(
        &self,
        build: impl Fn(KeyId, crate::key::KeyHash) -> KeyRecord,
    ) -> Result<(ApiKey, KeyRecord), ManagerError> {
        self.insert_retrying(|| {
            let key = self.generator.generate()?;
            let record = build(key.id(), self.hasher.hash(key.secret()));
            Ok((key, record))
        })
        .await
    }

    /// Inserts the record `make` builds (with a fresh id each time),
    /// calling it again if the id is taken; returns the record and what
    /// `make` returned with it.
    async fn insert_retrying<T>(
        &self,
        make: impl Fn() -> Result<(T, KeyRecord), ManagerError>,
    ) -> Result<(T, KeyRecord), ManagerError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (made, record) = make()?;
            match self.store.insert(record.clone()).await {
                Ok(()) => return Ok((made, record)),
                Err(StoreError::AlreadyExists(_)) if attempt < ISSUE_ATTEMPTS => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }
}

impl fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("store", &self.store)
            .field("format", self.generator.format())
            .field("hasher", &self.hasher)
            .field("clock", &self.clock)
            .field("events", &self.events)
            .field("publishable_scopes", &self.publishable_scopes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::MemoryStore;

    /// Counts the random bytes drawn (the bytes themselves are a counter:
    /// good enough for ids in a test, and never all refused by the
    /// generator's rejection sampling).
    struct Counting(Arc<AtomicUsize>, u8);

    impl rand::TryRng for Counting {
        type Error = Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Infallible> {
            let mut bytes = [0; 4];
            self.try_fill_bytes(&mut bytes)?;
            Ok(u32::from_le_bytes(bytes))
        }
        fn try_next_u64(&mut self) -> Result<u64, Infallible> {
            let mut bytes = [0; 8];
            self.try_fill_bytes(&mut bytes)?;
            Ok(u64::from_le_bytes(bytes))
        }
        fn try_fill_bytes(&mut self, out: &mut [u8]) -> Result<(), Infallible> {
            self.0.fetch_add(out.len(), Ordering::Relaxed);
            for byte in out {
                self.1 = self.1.wrapping_add(1);
                *byte = self.1;
            }
            Ok(())
        }
    }

    impl rand::TryCryptoRng for Counting {}

    #[tokio::test]
    async fn an_import_draws_an_id_and_no_secret() {
        let drawn = Arc::new(AtomicUsize::new(0));
        let format = KeyFormat::new("sk_test").unwrap();
        let mut manager = KeyManager::new(MemoryStore::new(), format.clone());
        manager.generator = KeyGenerator::new(format).with_rng(Counting(Arc::clone(&drawn), 0));

        manager.issue(IssueOptions::new("acme")).await.unwrap();
        let for_a_key = drawn.swap(0, Ordering::Relaxed);
        let legacy = LegacyFormat::new(crate::key::LegacyAlphabet::Hex, 32).unwrap();
        let record = manager
            .import_legacy(&legacy, [9; 32], IssueOptions::new("acme"))
            .await
            .unwrap();
        let for_an_import = drawn.load(Ordering::Relaxed);
        assert_eq!(record.hash.algorithm(), HashAlgorithm::ImportedSha256);
        assert!(
            for_an_import < for_a_key,
            "an import drew {for_an_import} random bytes, a whole key {for_a_key}"
        );
    }
}
