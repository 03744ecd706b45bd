use std::fmt;
use std::sync::Arc;

use papaya::{Compute, Operation};
use std::time::SystemTime;

use super::{KeyStore, Lookup, StoreError};
use crate::key::{HashAlgorithm, KeyHash, KeyId, KeyIdBuildHasher};
use crate::limit::LimitCell;
use crate::record::{KeyRecord, KeyStatus};

/// The embedded store: records in a concurrent hash map, in this process.
///
/// Reads take no lock: the map is [`papaya`]'s lock-free table, so look-ups
/// from many threads never wait on each other or on writers. Clones share
/// the same records.
///
/// A key with one rate policy keeps its [`MemoryLimiter`](crate::limit::MemoryLimiter)
/// state in its record here (no entry in the limiter's table). An
/// [`update`](KeyStore::update) that keeps the rate policy hands the
/// state on to the new record, so editing a key's name, scopes or expiry
/// never resets its budget; one that changes the policy starts it full;
/// [`revoke`](KeyStore::revoke) drops it.
#[derive(Clone)]
pub struct MemoryStore {
    records: Arc<papaya::HashMap<KeyId, Arc<KeyRecord>, KeyIdBuildHasher>>,
    /// Imported keys' hashes, to their ids (see `KeyStore::find_by_hash`):
    /// only imported records are indexed, so API keys cost nothing here.
    imported: Arc<papaya::HashMap<[u8; 32], KeyId>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty store with room for `capacity` records.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            records: Arc::new(
                papaya::HashMap::builder()
                    .hasher(KeyIdBuildHasher)
                    .capacity(capacity)
                    // Inserts finish a resize themselves: papaya's default,
                    // incremental resizing, can leave a half-copied table
                    // that every look-up then probes at length.
                    .resize_mode(papaya::ResizeMode::Blocking)
                    .build(),
            ),
            imported: Arc::new(papaya::HashMap::new()),
        }
    }

    /// How many records the store holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn get(&self, id: &KeyId) -> Option<Arc<KeyRecord>> {
        self.records.pin().get(id).cloned()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl KeyStore for MemoryStore {
    async fn find(&self, id: &KeyId) -> Lookup {
        Ok(self.get(id))
    }

    fn find_immediate(&self, id: &KeyId) -> Option<Lookup> {
        Some(Ok(self.get(id)))
    }

    async fn insert(&self, mut record: KeyRecord) -> Result<(), StoreError> {
        let id = record.id;
        record.limit_cell = LimitCell::for_stored(&record.limits);
        let imported = imported_hash(&record);
        if let Some(hash) = imported {
            // The hash first: of two imports of one key, one wins.
            if self.imported.pin().try_insert(hash, id).is_err() {
                return Err(StoreError::DuplicateHash);
            }
        }
        match self.records.pin().try_insert(id, Arc::new(record)) {
            Ok(_) => Ok(()),
            Err(_) => {
                if let Some(hash) = imported {
                    self.imported
                        .pin()
                        .remove_if(&hash, |_, owner| *owner == id)
                        .ok();
                }
                Err(StoreError::AlreadyExists(id))
            }
        }
    }

    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        let id = record.id;
        let records = self.records.pin();
        let outcome = records.compute(id, |current| match current {
            None => Operation::Abort(StoreError::NotFound(id)),
            Some((_, current)) if current.status == KeyStatus::Revoked => {
                Operation::Abort(StoreError::Revoked(id))
            }
            // Made for the record it replaces (papaya may call this again,
            // with another, if a write races it): the rate state goes on.
            Some((_, current)) => Operation::Insert(Arc::new(
                record
                    .clone()
                    .with_limit_cell(LimitCell::successor(current, &record.limits)),
            )),
        });
        let replaced = match outcome {
            Compute::Aborted(error) => return Err(error),
            Compute::Updated { old: (_, old), .. } => old,
            // `compute` only inserts where a record was.
            Compute::Inserted(..) | Compute::Removed(..) => return Ok(()),
        };
        let (before, after) = (imported_hash(replaced), imported_hash(&record));
        let index = self.imported.pin();
        if let Some(hash) = before.filter(|&hash| Some(hash) != after) {
            // A hash the record gave up is free for another import.
            let _ = index.remove_if(&hash, |_, holder| *holder == id);
        }
        if let Some(hash) = after {
            // Indexed if no other key holds the hash; a look-up checks the
            // record's hash anyway.
            let _ = index.try_insert(hash, id);
        }
        Ok(())
    }

    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
        let records = self.records.pin();
        let revoked = records.update(*id, |current| {
            let mut record = KeyRecord::clone(current);
            record.status = KeyStatus::Revoked;
            // The first revocation's time stays: revoking again is a no-op.
            record.set_revoked_at(record.revoked_at().or(Some(at)));
            // A copy starts without a rate state: a revoked key has none.
            Arc::new(record)
        });
        match revoked {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(*id)),
        }
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        let mut records: Vec<_> = self
            .records
            .pin()
            .values()
            .filter(|record| *record.owner == *owner)
            .cloned()
            .collect();
        records.sort_by_key(|record| (record.created_at(), record.id));
        Ok(records)
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Lookup {
        if hash.algorithm() != HashAlgorithm::ImportedSha256 {
            return Ok(None);
        }
        let Some(id) = self.imported.pin().get(hash.as_bytes()).copied() else {
            return Ok(None);
        };
        // The record's own hash decides (an update may have changed it).
        Ok(self.get(&id).filter(|record| record.hash == *hash))
    }
}

/// The hash an imported record is indexed by; none for other records.
fn imported_hash(record: &KeyRecord) -> Option<[u8; 32]> {
    (record.hash.algorithm() == HashAlgorithm::ImportedSha256).then(|| *record.hash.as_bytes())
}
