//! Where records live: the [`KeyStore`] trait and [`MemoryStore`], the
//! embedded default.
//!
//! A store keeps [`KeyRecord`]s, which hold hashes, never keys. The request
//! path calls only [`find`](KeyStore::find) (or
//! [`find_immediate`](KeyStore::find_immediate)); the rest is for
//! management. Every store implementation runs the same conformance suite,
//! [`conformance::run`] (feature `test-util`).
//!
//! Across processes, put a shared store (`PgStore`, `RedisStore`) behind a
//! `CachedStore` (feature `tokio`) with an [`invalidation`] channel in each
//! process: hits stay in memory, and a change made anywhere is announced
//! and dropped from every cache.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, SystemTime};
//! use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
//! use keyward::record::KeyRecord;
//! use keyward::store::{KeyStore, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
//! let key = KeyGenerator::new(KeyFormat::new("sk_live")?).generate()?;
//! let hash = KeyHasher::sha256().hash(key.secret());
//! store.insert(KeyRecord::new(key.id(), hash, "acme", SystemTime::now())).await?;
//!
//! let found = store.find(&key.id()).await?.expect("just inserted");
//! assert_eq!(&*found.owner, "acme");
//! assert_eq!(store.list_by_owner("acme").await?.len(), 1);
//! # Ok(())
//! # }
//! ```

#[cfg(any(feature = "postgres", feature = "redis"))]
mod backend;
#[cfg(feature = "tokio")]
mod cache;
#[cfg(feature = "test-util")]
pub mod conformance;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod invalidation;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use cache::{CacheStats, CachedStore, CachedStoreBuilder};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PgStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{InvalidRedisPrefix, RedisStore};

use crate::key::{KeyHash, KeyId};
use crate::record::KeyRecord;

/// The error type of [`KeyStore`] operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No record has this id.
    #[error("no key with id {0}")]
    NotFound(KeyId),
    /// A record with this id exists already.
    #[error("a key with id {0} exists already")]
    AlreadyExists(KeyId),
    /// The key is revoked, and revocation is final: the record cannot be
    /// updated any more.
    #[error("key {0} is revoked")]
    Revoked(KeyId),
    /// The backend failed (connection, serialization, a refused query).
    #[error("key store backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend did not answer within this time.
    #[error("key store did not answer within {0:?}")]
    Timeout(Duration),
    /// A value cannot be stored as given (an owner or name longer than
    /// the backend allows, a text with a NUL character for PostgreSQL).
    #[error("the key store cannot store this {0}")]
    Unstorable(Field),
    /// An imported key with the same hash is stored already (see
    /// [`KeyStore::find_by_hash`]).
    #[error("an imported key with this hash exists already")]
    DuplicateHash,
    /// The store cannot do this (a store that does not implement
    /// [`KeyStore::find_by_hash`]).
    #[error("the key store does not support {0}")]
    Unsupported(&'static str),
}

/// The failures of a store on a shared server (`PgStore`, `RedisStore`),
/// counted since it was made: read them with its `stats()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BackendStats {
    /// Calls that failed (connection lost, a refused query).
    pub errors: u64,
    /// Calls that took longer than the store's timeout.
    pub timeouts: u64,
}

/// A field of a record, as named in [`StoreError::Unstorable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// [`KeyRecord::owner`].
    Owner,
    /// [`KeyRecord::name`].
    Name,
    /// [`KeyRecord::metadata`].
    Metadata,
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Field::Owner => "owner",
            Field::Name => "name",
            Field::Metadata => "metadata",
        })
    }
}

impl StoreError {
    /// Wraps a backend's own error.
    pub fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(error))
    }

    /// One error handed to several waiters (a cache's single flight).
    #[cfg(feature = "tokio")]
    pub(crate) fn shared(error: Arc<StoreError>) -> Self {
        match &*error {
            StoreError::Timeout(after) => StoreError::Timeout(*after),
            _ => StoreError::Backend(Box::new(SharedError(error))),
        }
    }

    /// The error itself if no one else holds it, else a shared copy.
    #[cfg(feature = "tokio")]
    pub(crate) fn unshare(error: Arc<StoreError>) -> Self {
        Arc::try_unwrap(error).unwrap_or_else(Self::shared)
    }
}

/// A backend error that several look-ups waited on; its source is the
/// original.
#[cfg(feature = "tokio")]
#[derive(Debug, thiserror::Error)]
#[error("key store backend failed")]
struct SharedError(#[source] Arc<StoreError>);

/// The answer of a look-up: the record, if the id is known.
pub type Lookup = Result<Option<Arc<KeyRecord>>, StoreError>;

/// A place where [`KeyRecord`]s are kept, looked up by [`KeyId`].
///
/// Implementations are shared as `Arc<dyn KeyStore>`. Records come back as
/// `Arc<KeyRecord>` so that a store holding them in memory hands them out
/// without copying.
///
/// # Implementing this trait
///
/// The trait is declared with [`async_trait`](macro@crate::async_trait): put
/// `#[keyward::async_trait]` on your `impl` too (keyward re-exports it, so
/// you need no `async-trait` dependency of your own) and write the methods
/// as `async fn`. Without the attribute they fail to compile with E0195
/// ("lifetime parameters or bounds on method do not match the trait
/// declaration"): the attribute turned the trait's `async fn`s into plain
/// functions, with lifetimes of their own, that return a boxed `Send`
/// future, and an `async fn` in the impl has another signature until the
/// same attribute rewrites it.
///
/// What the request path and [`KeyManager`](crate::KeyManager) rely on:
///
/// - wrap your backend's errors with [`StoreError::backend`] (the request
///   is then refused with `503`, reason
///   [`StoreUnavailable`](crate::RejectReason::StoreUnavailable); the error
///   is logged, never sent);
/// - answer `NotFound`, `AlreadyExists` and `Revoked` as each method says,
///   and make [`update`](KeyStore::update)'s check and write one atomic
///   step;
/// - implement [`find_immediate`](KeyStore::find_immediate) only if you
///   can answer from memory (a cache);
/// - run [`conformance::run`] (feature `test-util`) in your tests: it
///   checks all of the above.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use std::time::SystemTime;
/// use keyward::key::{KeyHash, KeyId};
/// use keyward::record::KeyRecord;
/// use keyward::store::{KeyStore, Lookup, MemoryStore, StoreError};
///
/// /// Counts the look-ups of the store behind it (your database client
/// /// would stand where the `MemoryStore` is).
/// #[derive(Debug, Default)]
/// struct Counted {
///     backend: MemoryStore,
///     lookups: AtomicU64,
/// }
///
/// #[keyward::async_trait]
/// impl KeyStore for Counted {
///     async fn find(&self, id: &KeyId) -> Lookup {
///         self.lookups.fetch_add(1, Ordering::Relaxed);
///         self.backend.find(id).await
///     }
///     async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
///         self.backend.insert(record).await
///     }
///     async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
///         self.backend.update(record).await
///     }
///     async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
///         self.backend.revoke(id, at).await
///     }
///     async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
///         self.backend.list_by_owner(owner).await
///     }
///     async fn find_by_hash(&self, hash: &KeyHash) -> Lookup {
///         self.backend.find_by_hash(hash).await
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = Counted::default();
/// keyward::store::conformance::run(&store).await; // every store's promises
/// assert!(store.lookups.load(Ordering::Relaxed) > 0);
/// let shared: Arc<dyn KeyStore> = Arc::new(store); // what AuthLayer and KeyManager take
/// # let _ = shared;
/// # }
/// ```
#[async_trait::async_trait]
pub trait KeyStore: Debug + Send + Sync + 'static {
    /// Finds the record with this id; `Ok(None)` when there is none.
    async fn find(&self, id: &KeyId) -> Lookup;

    /// Answers [`find`](KeyStore::find) without waiting, when the answer is
    /// at hand (an in-memory store, a cache hit): `Some(answer)`.
    ///
    /// The default, `None`, makes the caller await `find`. Stores that
    /// answer here let the request path skip a boxed future entirely.
    fn find_immediate(&self, id: &KeyId) -> Option<Lookup> {
        let _ = id;
        None
    }

    /// Adds a new record; [`StoreError::AlreadyExists`] if its id is taken.
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError>;

    /// Replaces the record with the same id; [`StoreError::NotFound`] if
    /// there is none, and [`StoreError::Revoked`] (changing nothing) if the
    /// stored record is revoked: the check and the write are one atomic
    /// step, so an update that raced a revocation cannot undo it.
    async fn update(&self, record: KeyRecord) -> Result<(), StoreError>;

    /// Marks the key revoked, effective for the next look-up, and sets its
    /// [`revoked_at`](KeyRecord::revoked_at) to `at`, changing nothing
    /// else; [`StoreError::NotFound`] if there is none. Revoking a revoked
    /// key succeeds and keeps the first `revoked_at`.
    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<(), StoreError>;

    /// Every record of `owner`, oldest first (ties broken by id).
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError>;

    /// Finds the record of an imported key by its hash (algorithm
    /// [`ImportedSha256`](crate::key::HashAlgorithm::ImportedSha256): the
    /// SHA-256 of the whole old key, see
    /// [`LegacyFormat`](crate::key::LegacyFormat)); `Ok(None)` when there
    /// is none. Only imported records are found by hash (a hash of another
    /// algorithm finds nothing: other keys are found by id), revoked ones
    /// included. [`insert`](Self::insert) refuses a second imported record
    /// with the same hash ([`StoreError::DuplicateHash`]).
    ///
    /// The look-up takes the hash of the whole presented key as its index,
    /// so its timing (an index walk, a hash-table probe) depends only on a
    /// digest the caller could compute for any guess, and tells nothing of
    /// a stored key: steering a digest toward a stored one needs a
    /// SHA-256 preimage.
    ///
    /// The default answers [`StoreError::Unsupported`], so that imported
    /// keys on a store that cannot find them are refused with `503` and an
    /// error in the logs, never silently as unknown. `MemoryStore`,
    /// `CachedStore`, `PgStore` and `RedisStore` implement it.
    async fn find_by_hash(&self, hash: &KeyHash) -> Lookup {
        let _ = hash;
        Err(StoreError::Unsupported("find_by_hash"))
    }
}

/// `store` as the `Arc<dyn KeyStore>` the parts keep: an `Arc<dyn
/// KeyStore>` is shared as it is, not wrapped again (which would add a
/// pointer chase and a virtual call to every look-up).
pub(crate) fn shared(store: impl KeyStore) -> Arc<dyn KeyStore> {
    match (&store as &dyn std::any::Any).downcast_ref::<Arc<dyn KeyStore>>() {
        Some(shared) => Arc::clone(shared),
        None => Arc::new(store),
    }
}

/// [`KeyStore::find_immediate`] on the request path: a store that panics
/// answers an error (the request is refused, `503`), never a panic in the
/// service.
#[inline]
pub(crate) fn find_now(store: &dyn KeyStore, id: &KeyId) -> Option<Lookup> {
    crate::unwind::call("key store", || store.find_immediate(id))
        .unwrap_or_else(|panicked| Some(Err(StoreError::backend(panicked))))
}

/// A look-up on the request path that the store could not answer at once,
/// timed with the `metrics` feature. (One that answers at once, from
/// memory, costs less than the clock reads that would time it.)
///
/// Fails closed: a store that panics answers an error (the request is
/// refused, `503`), never a panic in the service, and one that takes
/// longer than `timeout` answers [`StoreError::Timeout`] (not timed).
pub(crate) async fn find_awaited(
    store: &dyn KeyStore,
    id: &KeyId,
    timeout: Option<std::time::Duration>,
) -> Lookup {
    awaited(store.find(id), timeout).await
}

/// [`find_awaited`] for any look-up of the request path (by id, by hash).
pub(crate) async fn awaited(
    lookup: impl Future<Output = Lookup>,
    timeout: Option<std::time::Duration>,
) -> Lookup {
    let timed = async {
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let lookup = crate::unwind::CatchUnwind::new("key store", lookup)
            .await
            .unwrap_or_else(|panicked| Err(StoreError::backend(panicked)));
        #[cfg(feature = "metrics")]
        crate::metrics::store_lookup(started.elapsed());
        lookup
    };
    crate::unwind::within(timeout, timed, |limit| Err(StoreError::Timeout(limit))).await
}

#[async_trait::async_trait]
impl<T: KeyStore + ?Sized> KeyStore for Arc<T> {
    async fn find(&self, id: &KeyId) -> Lookup {
        (**self).find(id).await
    }

    fn find_immediate(&self, id: &KeyId) -> Option<Lookup> {
        (**self).find_immediate(id)
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        (**self).insert(record).await
    }

    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        (**self).update(record).await
    }

    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
        (**self).revoke(id, at).await
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        (**self).list_by_owner(owner).await
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Lookup {
        (**self).find_by_hash(hash).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_store_is_not_wrapped_again() {
        let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
        assert!(Arc::ptr_eq(&shared(Arc::clone(&store)), &store));
    }
}
