use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use super::backend::{Counters, UnreadableRecord, MAX_OWNER_LEN};
use super::{BackendStats, Field, KeyStore, Lookup, StoreError};
use crate::key::{HashAlgorithm, KeyHash, KeyId};
use crate::record::{KeyRecord, KeyStatus};

/// Adds a record unless its id (or, for an imported key, its hash) is
/// taken. KEYS: record, owner index, imported-hash index. ARGV: JSON,
/// status, revoked_at ('' for none), score, id, '1' if imported.
///
/// An imported record keeps the name of its hash's index in its field
/// `h`, for UPDATE to free it when the hash changes.
static INSERT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
if ARGV[6] == '1' then
  if redis.call('SET', KEYS[3], ARGV[5], 'NX') == false then return 'hash exists' end
  redis.call('HSET', KEYS[1], 'h', KEYS[3])
end
redis.call('HSET', KEYS[1], 'r', ARGV[1], 's', ARGV[2], 'o', KEYS[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'ra', ARGV[3]) end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
return 'ok'
",
    )
});

/// Replaces a record unless it is missing or revoked; moves it between
/// owner indexes if its owner changed, and frees the index of an imported
/// hash it no longer has (named in its field `h`: a key under the same
/// hash tag, so in the same Cluster slot as KEYS). Same KEYS and ARGV as
/// INSERT.
static UPDATE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local status = redis.call('HGET', KEYS[1], 's')
if not status then return 'missing' end
if status == 'revoked' then return 'revoked' end
local old = redis.call('HGET', KEYS[1], 'o')
local old_hash = redis.call('HGET', KEYS[1], 'h')
redis.call('HSET', KEYS[1], 'r', ARGV[1], 's', ARGV[2], 'o', KEYS[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'ra', ARGV[3])
else
  redis.call('HDEL', KEYS[1], 'ra')
end
if old and old ~= KEYS[2] then redis.call('ZREM', old, ARGV[5]) end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'h', KEYS[3])
  redis.call('SET', KEYS[3], ARGV[5], 'NX')
else
  redis.call('HDEL', KEYS[1], 'h')
end
if old_hash and (ARGV[6] ~= '1' or old_hash ~= KEYS[3])
  and redis.call('GET', old_hash) == ARGV[5] then
  redis.call('DEL', old_hash)
end
return 'ok'
",
    )
});

/// The record of the imported key with a hash, in one step: its id from
/// the hash's index, then its fields as `read` gets them (nil if the index
/// names no record). KEYS: imported-hash index. ARGV: the prefix of
/// record names (`{<prefix>}:k:`), so the record read is under the same
/// hash tag, in the same Cluster slot, as KEYS.
static FIND_BY_HASH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local id = redis.call('GET', KEYS[1])
if not id then return false end
local fields = redis.call('HMGET', ARGV[1] .. id, 'r', 's', 'ra')
return {id, fields[1], fields[2], fields[3]}
",
    )
});

/// Marks a record revoked, keeping the first revocation's time. KEYS:
/// record. ARGV: revoked_at.
static REVOKE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
redis.call('HSET', KEYS[1], 's', 'revoked')
redis.call('HSETNX', KEYS[1], 'ra', ARGV[1])
return 'ok'
",
    )
});

/// Why a string cannot prefix keyward's Redis key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a Redis key prefix is 1 to 64 characters of [A-Za-z0-9_:.-]")]
pub struct InvalidRedisPrefix;

/// Key records in Redis (feature `redis`), for services whose only shared
/// server is Redis; on your own multiplexed [`ConnectionManager`].
///
/// Key names, all under one Redis Cluster hash tag so that each script's
/// keys share a slot:
///
/// - `{<prefix>}:k:<key id>`: a hash holding the record as JSON (the
///   shapes of [`KeyRecord`]'s serde form), its status and `revoked_at`
///   (and, for an imported key, the name of its hash's index below);
/// - `{<prefix>}:o:<hex of SHA-256 of the owner>`: a sorted set of the
///   owner's key ids, by creation time;
/// - `{<prefix>}:h:<hex of SHA-256 of an imported key's hash>`: the id of
///   the imported key with that hash (see
///   [`find_by_hash`](KeyStore::find_by_hash)).
///
/// Names carry the public key id or a digest, never a key, a secret, a hash
/// or an owner's raw text. Writes, and the look-up by hash, are Lua
/// scripts, atomic on the server: `update` refuses a revoked record (and
/// frees an imported hash the record gave up), `revoke` is final and keeps
/// the first `revoked_at`, `find_by_hash` is one round trip.
///
/// Every call has a [timeout](Self::timeout) (1 s by default); failures and
/// timeouts are [counted](Self::stats) and logged with the key id only.
///
/// # Example
///
/// ```no_run
/// use keyward::store::RedisStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1/")?;
/// let connection = redis::aio::ConnectionManager::new(client).await?;
/// let store = RedisStore::new(connection).with_prefix("myapp:keys")?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    /// `{<prefix>}:`, the hash tag included.
    namespace: Arc<str>,
    timeout: Duration,
    counters: Arc<Counters>,
}

impl RedisStore {
    /// Records under the prefix `keyward`, with a 1 s timeout.
    pub fn new(connection: ConnectionManager) -> Self {
        Self {
            connection,
            namespace: namespace("keyward"),
            timeout: Duration::from_secs(1),
            counters: Arc::default(),
        }
    }

    /// Puts every key name under `prefix` (1 to 64 of `[A-Za-z0-9_:.-]`).
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self, InvalidRedisPrefix> {
        let valid = (1..=64).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b));
        if !valid {
            return Err(InvalidRedisPrefix);
        }
        self.namespace = namespace(prefix);
        Ok(self)
    }

    /// The longest any call waits (1 s by default); past it the call is a
    /// [`StoreError::Timeout`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Failures and timeouts since the store was made.
    pub fn stats(&self) -> BackendStats {
        self.counters.stats()
    }

    /// The name of the hash that holds the record `id`.
    pub fn record_key(&self, id: &KeyId) -> String {
        format!("{}k:{id}", self.namespace)
    }

    /// The name of the sorted set that lists `owner`'s keys.
    pub fn owner_key(&self, owner: &str) -> String {
        self.digest_key("o:", owner.as_bytes())
    }

    /// `{<prefix>}:` `kind` and the first 16 bytes of the SHA-256 of
    /// `bytes` in hex: a name that carries a digest, never the text.
    fn digest_key(&self, kind: &str, bytes: &[u8]) -> String {
        use std::fmt::Write as _;
        let digest = Sha256::digest(bytes);
        let mut name = String::with_capacity(self.namespace.len() + kind.len() + 32);
        name.push_str(&self.namespace);
        name.push_str(kind);
        for byte in &digest[..16] {
            // Writing to a `String` cannot fail.
            let _ = write!(name, "{byte:02x}");
        }
        name
    }

    async fn run<T>(
        &self,
        operation: &'static str,
        id: Option<&KeyId>,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.counters
            .run("redis", operation, id, self.timeout, call)
            .await
    }

    /// The name of the string that holds the id of the imported key with
    /// this hash: a digest of the hash, never the hash itself.
    pub fn imported_key(&self, hash: &KeyHash) -> String {
        self.digest_key("h:", hash.as_bytes())
    }

    /// Runs INSERT or UPDATE with a record's keys and arguments.
    async fn write(
        &self,
        script: &redis::Script,
        record: &KeyRecord,
    ) -> Result<String, StoreError> {
        if record.owner.len() > MAX_OWNER_LEN {
            return Err(StoreError::Unstorable(Field::Owner));
        }
        let json = serde_json::to_string(record).map_err(StoreError::backend)?;
        let mut connection = self.connection.clone();
        let imported = record.hash.algorithm() == HashAlgorithm::ImportedSha256;
        script
            .key(self.record_key(&record.id))
            .key(self.owner_key(&record.owner))
            .key(self.imported_key(&record.hash))
            .arg(json)
            .arg(record.status.to_string())
            .arg(record.revoked_at().map(nanos).unwrap_or_default())
            .arg(score(record.created_at()))
            .arg(record.id.as_str())
            .arg(if imported { "1" } else { "" })
            .invoke_async(&mut connection)
            .await
            .map_err(StoreError::backend)
    }

    /// Reads the records `ids` (skipping missing ones) in one round trip.
    async fn read(&self, ids: &[KeyId]) -> Result<Vec<KeyRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.record_key(id))
                .arg("r")
                .arg("s")
                .arg("ra");
        }
        let mut connection = self.connection.clone();
        let rows: Vec<(Option<String>, Option<String>, Option<String>)> = pipe
            .query_async(&mut connection)
            .await
            .map_err(StoreError::backend)?;
        let mut records = Vec::with_capacity(rows.len());
        for (id, row) in ids.iter().zip(rows) {
            if let Some(record) = decode(id, row)? {
                records.push(record);
            }
        }
        Ok(records)
    }
}

fn namespace(prefix: &str) -> Arc<str> {
    format!("{{{prefix}}}:").into()
}

fn nanos(time: SystemTime) -> String {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

/// Creation time in microseconds: ordering within an owner's index (ties
/// and sub-microsecond order are settled after reading).
fn score(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_micros() as f64)
}

fn decode(
    id: &KeyId,
    (json, status, revoked_at): (Option<String>, Option<String>, Option<String>),
) -> Result<Option<KeyRecord>, StoreError> {
    let unreadable = |column: &'static str| {
        StoreError::backend(UnreadableRecord {
            id: id.to_string(),
            column,
        })
    };
    let Some(json) = json else {
        return Ok(None);
    };
    let mut record: KeyRecord = serde_json::from_str(&json).map_err(|_| unreadable("record"))?;
    if record.id != *id {
        return Err(unreadable("id"));
    }
    // The status and revocation time are kept beside the JSON, where the
    // revoke script sets them.
    record.status = match status.as_deref() {
        Some("active") => KeyStatus::Active,
        Some("disabled") => KeyStatus::Disabled,
        Some("revoked") => KeyStatus::Revoked,
        _ => return Err(unreadable("status")),
    };
    if let Some(revoked_at) = revoked_at {
        let nanos: u64 = revoked_at.parse().map_err(|_| unreadable("revoked_at"))?;
        record.set_revoked_at(Some(UNIX_EPOCH + Duration::from_nanos(nanos)));
    }
    Ok(Some(record))
}

fn outcome(answer: &str, id: KeyId) -> Result<(), StoreError> {
    match answer {
        "ok" => Ok(()),
        "exists" => Err(StoreError::AlreadyExists(id)),
        "hash exists" => Err(StoreError::DuplicateHash),
        "missing" => Err(StoreError::NotFound(id)),
        "revoked" => Err(StoreError::Revoked(id)),
        _ => Err(StoreError::backend(UnreadableRecord {
            id: id.to_string(),
            column: "script answer",
        })),
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl KeyStore for RedisStore {
    async fn find(&self, id: &KeyId) -> Lookup {
        self.run("find", Some(id), async {
            let mut records = self.read(std::slice::from_ref(id)).await?;
            Ok(records.pop().map(Arc::new))
        })
        .await
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let id = record.id;
        self.run("insert", Some(&id), async {
            outcome(&self.write(&INSERT, &record).await?, id)
        })
        .await
    }

    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        let id = record.id;
        self.run("update", Some(&id), async {
            outcome(&self.write(&UPDATE, &record).await?, id)
        })
        .await
    }

    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
        self.run("revoke", Some(id), async {
            let mut connection = self.connection.clone();
            let answer: String = REVOKE
                .key(self.record_key(id))
                .arg(nanos(at))
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::backend)?;
            outcome(&answer, *id)
        })
        .await
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Lookup {
        if hash.algorithm() != HashAlgorithm::ImportedSha256 {
            return Ok(None);
        }
        self.run("find_by_hash", None, async {
            let mut connection = self.connection.clone();
            // One script: the index and the record it names are read in
            // one atomic step, so no change falls between the two.
            let row: Option<(String, Option<String>, Option<String>, Option<String>)> =
                FIND_BY_HASH
                    .key(self.imported_key(hash))
                    .arg(format!("{}k:", self.namespace))
                    .invoke_async(&mut connection)
                    .await
                    .map_err(StoreError::backend)?;
            let Some((id, json, status, revoked_at)) = row else {
                return Ok(None);
            };
            let Ok(id) = id.parse::<KeyId>() else {
                return Ok(None);
            };
            // The record's own hash decides (an update may have changed it).
            Ok(decode(&id, (json, status, revoked_at))?
                .filter(|record| record.hash == *hash)
                .map(Arc::new))
        })
        .await
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        if owner.len() > MAX_OWNER_LEN {
            return Ok(Vec::new());
        }
        self.run("list_by_owner", None, async {
            let mut connection = self.connection.clone();
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(self.owner_key(owner))
                .arg(0)
                .arg(-1)
                .query_async(&mut connection)
                .await
                .map_err(StoreError::backend)?;
            let ids: Vec<KeyId> = ids.iter().filter_map(|id| id.parse().ok()).collect();
            let mut records: Vec<KeyRecord> = self
                .read(&ids)
                .await?
                .into_iter()
                // Owners whose digests share 128 bits share an index.
                .filter(|record| *record.owner == *owner)
                .collect();
            records.sort_by_key(|record| (record.created_at(), record.id));
            Ok(records.into_iter().map(Arc::new).collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_share_one_hash_tag_and_hold_no_raw_owner() {
        let namespace = namespace("app:keys");
        assert_eq!(&*namespace, "{app:keys}:");
        let id: KeyId = "abcdefABCDEF".parse().unwrap();
        assert_eq!(format!("{namespace}k:{id}"), "{app:keys}:k:abcdefABCDEF");
    }
}
