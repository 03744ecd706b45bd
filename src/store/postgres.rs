use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::backend::{Counters, UnreadableRecord, MAX_OWNER_LEN};
use super::{BackendStats, Field, KeyStore, Lookup, StoreError};
use crate::key::{HashAlgorithm, KeyHash, KeyId};
use crate::limit::Limits;
use crate::postgres::migrate::{self, Migration};
use crate::postgres::{InvalidIdentifier, MigrateError, QualifiedName};
use crate::record::{Environment, KeyRecord, KeyStatus};
use crate::scope::ScopeSet;

/// The records table's migrations. Released versions never change.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "keyward key records",
        sql: r#"
CREATE TABLE {{table}} (
    id text PRIMARY KEY CHECK (id ~ '^[0-9A-Za-z]{12}$'),
    hash bytea NOT NULL CHECK (octet_length(hash) = 32),
    hash_algorithm text NOT NULL,
    owner text NOT NULL,
    name text NOT NULL DEFAULT '',
    status text NOT NULL CHECK (status IN ('active', 'disabled', 'revoked')),
    environment text CHECK (environment IN ('live', 'test')),
    scopes text[] NOT NULL DEFAULT '{}',
    allowed_networks inet[] NOT NULL DEFAULT '{}',
    limits jsonb NOT NULL DEFAULT '[]',
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    not_before timestamptz,
    revoked_at timestamptz,
    verification_key text,
    last_used_at timestamptz,
    version bigint NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX "{{table_name}}_owner_idx" ON {{table}} (owner, created_at, id COLLATE "C");
COMMENT ON TABLE {{table}} IS 'keyward API key records: hashes, never keys';
COMMENT ON COLUMN {{table}}.last_used_at IS 'filled by the keyward usage exporter, if any';
"#,
    },
    Migration {
        version: 2,
        description: "imported keys found by hash",
        sql: r#"
CREATE UNIQUE INDEX "{{table_name}}_imported_hash_idx" ON {{table}} (hash)
    WHERE hash_algorithm = 'imported-sha256';
"#,
    },
    Migration {
        version: 3,
        description: "publishable keys and their allowed origins",
        sql: r#"
ALTER TABLE {{table}}
    ADD COLUMN publishable boolean NOT NULL DEFAULT false,
    ADD COLUMN allowed_origins text[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN {{table}}.allowed_origins IS 'origins a key may be used from: https://app.example.com or https://*.example.com';
"#,
    },
];

/// The columns read back, in the order `decode` expects. Times travel as
/// whole microseconds since the epoch (PostgreSQL's own resolution), so no
/// date-time library is needed on either side.
const COLUMNS: &str = "id, hash, hash_algorithm, owner, name, status, environment, \
    scopes, allowed_networks::text[], limits::text, metadata::text, \
    (extract(epoch FROM created_at) * 1000000)::bigint, \
    (extract(epoch FROM expires_at) * 1000000)::bigint, \
    (extract(epoch FROM not_before) * 1000000)::bigint, \
    (extract(epoch FROM revoked_at) * 1000000)::bigint, \
    verification_key, publishable, allowed_origins";

/// A time parameter: microseconds since the epoch, or NULL.
fn time(param: usize) -> String {
    format!("('epoch'::timestamptz + ${param}::bigint * interval '1 microsecond')")
}

/// The statements, made once per store with its table's name.
#[derive(Debug)]
struct Queries {
    find: String,
    insert: String,
    update: String,
    revoke: String,
    list: String,
    find_by_hash: String,
}

impl Queries {
    fn new(table: &QualifiedName) -> Self {
        let values = format!(
            "$2, $3, $4, $5, $6, $7, $8, $9::text[]::inet[], $10::jsonb, $11::jsonb, {}, {}, {}, {}, $16, $17, $18",
            time(12),
            time(13),
            time(14),
            time(15)
        );
        Self {
            find: format!("SELECT {COLUMNS} FROM {table} WHERE id = $1"),
            insert: format!(
                "INSERT INTO {table} (id, hash, hash_algorithm, owner, name, status, environment, \
                 scopes, allowed_networks, limits, metadata, created_at, expires_at, not_before, \
                 revoked_at, verification_key, publishable, allowed_origins) VALUES ($1, {values}) ON CONFLICT (id) DO NOTHING"
            ),
            // One statement: the row is updated only if it is not revoked
            // (PostgreSQL re-checks the condition on the row it locks), and
            // the answer says which of "updated", "revoked" and "missing".
            update: format!(
                "WITH updated AS (UPDATE {table} SET (hash, hash_algorithm, owner, name, status, \
                 environment, scopes, allowed_networks, limits, metadata, created_at, expires_at, \
                 not_before, revoked_at, verification_key, publishable, allowed_origins) = ROW({values}), version = version + 1, \
                 updated_at = now() WHERE id = $1 AND status <> 'revoked' RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM updated), EXISTS (SELECT 1 FROM {table} WHERE id = $1)"
            ),
            revoke: format!(
                "UPDATE {table} SET status = 'revoked', revoked_at = coalesce(revoked_at, {}), \
                 version = version + 1, updated_at = now() WHERE id = $1",
                time(2)
            ),
            list: format!(
                "SELECT {COLUMNS} FROM {table} WHERE owner = $1 ORDER BY created_at, id COLLATE \"C\""
            ),
            // The partial unique index of migration 2 answers it.
            find_by_hash: format!(
                "SELECT {COLUMNS} FROM {table} WHERE hash = $1 AND hash_algorithm = 'imported-sha256'"
            ),
        }
    }
}

/// Key records in PostgreSQL (feature `postgres`), through your own
/// [`PgPool`].
///
/// One table (`public.keyward_keys` unless you [name another](Self::with_table)),
/// made by [`migrate`](Self::migrate): `id text` primary key, `hash bytea`
/// with its `hash_algorithm`, `owner` (indexed with `created_at`),
/// `status`, `environment`, `scopes text[]`, `allowed_networks inet[]`,
/// `limits` and `metadata` as `jsonb`, `verification_key` (for keys that
/// sign requests), `publishable` and `allowed_origins text[]` (for keys
/// meant for browsers, migration 3), a unique index on the hashes of
/// imported keys (migration 2, for [`find_by_hash`](KeyStore::find_by_hash)),
/// times as `timestamptz` (`created_at`,
/// `expires_at`, `not_before`, `revoked_at`, and `last_used_at`, which the
/// usage exporter fills when given this [`table`](Self::table) with
/// [`PgUsage::keys_table`](crate::usage::PgUsage::keys_table)), and a
/// `version` that every write increments.
///
/// - Every call has a [timeout](Self::timeout) (1 s by default); failures
///   and timeouts are [counted](Self::stats) and logged with the key id
///   only. A request whose look-up fails is answered `503`.
/// - `update` refuses a revoked record in the same statement that writes
///   it; `revoke` keeps the first `revoked_at`.
/// - Values travel as bound parameters; the table's name is checked once
///   ([`Identifier`](crate::postgres::Identifier)). An owner longer than
///   1024 bytes, or text holding a NUL character (which PostgreSQL cannot
///   store), is refused with [`StoreError::Unstorable`].
/// - Times are kept to the microsecond, PostgreSQL's resolution.
///
/// Put it behind a [`CachedStore`](super::CachedStore) with a
/// [`PgInvalidation`](super::invalidation::PgInvalidation): hits then never
/// reach the database.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use keyward::store::PgStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
/// let store = PgStore::new(pool)
///     .with_table("auth", "api_keys")?
///     .timeout(Duration::from_millis(300));
/// store.migrate().await?; // at start-up, in every process: idempotent
/// assert_eq!(store.table().to_string(), r#""auth"."api_keys""#);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    table: QualifiedName,
    queries: Arc<Queries>,
    timeout: Duration,
    counters: Arc<Counters>,
}

impl PgStore {
    /// The store in `public.keyward_keys`, with a 1 s timeout.
    pub fn new(pool: PgPool) -> Self {
        let table = QualifiedName::new("public", "keyward_keys").expect("valid names");
        Self {
            pool,
            queries: Arc::new(Queries::new(&table)),
            table,
            timeout: Duration::from_secs(1),
            counters: Arc::default(),
        }
    }

    /// Keeps the records in `schema`.`table` (both checked as
    /// [`Identifier`](crate::postgres::Identifier)s).
    pub fn with_table(mut self, schema: &str, table: &str) -> Result<Self, InvalidIdentifier> {
        self.table = QualifiedName::new(schema, table)?;
        self.queries = Arc::new(Queries::new(&self.table));
        Ok(self)
    }

    /// The longest any call waits (1 s by default), pool checkout
    /// included; past it the call is a [`StoreError::Timeout`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The records table, quoted for SQL: `"schema"."table"`. Give it to
    /// [`PgUsage::keys_table`](crate::usage::PgUsage::keys_table) so that
    /// usage export keeps each key's `last_used_at`.
    pub fn table(&self) -> &QualifiedName {
        &self.table
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Failures and timeouts since the store was made.
    pub fn stats(&self) -> BackendStats {
        self.counters.stats()
    }

    /// Creates the schema and table, or brings them up to date. Idempotent,
    /// and safe when several processes call it at once (an advisory lock);
    /// the applied versions are kept in `<table>_migrations`.
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        migrate::run(
            &self.pool,
            &self.table.sibling("_migrations"),
            MIGRATIONS,
            &migrate::table_vars(&self.table),
        )
        .await
    }

    async fn run<T>(
        &self,
        operation: &'static str,
        id: Option<&KeyId>,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.counters
            .run("postgres", operation, id, self.timeout, call)
            .await
    }

    fn bind_record<'q>(
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        record: &'q KeyRecord,
    ) -> Result<sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>, StoreError>
    {
        check_storable(record)?;
        let limits = serde_json::to_string(&record.limits).map_err(StoreError::backend)?;
        let metadata = serde_json::to_string(record.metadata()).map_err(StoreError::backend)?;
        Ok(query
            .bind(record.id.as_str())
            .bind(record.hash.as_bytes().as_slice())
            .bind(record.hash.algorithm().to_string())
            .bind(&*record.owner)
            .bind(&*record.name)
            .bind(record.status.to_string())
            .bind(record.environment().map(|e| e.as_str()))
            .bind(
                record
                    .scopes
                    .iter()
                    .map(|s| s.as_str().to_owned())
                    .collect::<Vec<_>>(),
            )
            .bind(
                record
                    .allowed_networks()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .bind(limits)
            .bind(metadata)
            .bind(micros(record.created_at()))
            .bind(record.expires_at().map(micros))
            .bind(record.not_before().map(micros))
            .bind(record.revoked_at().map(micros))
            .bind(record.verification_key().map(ToString::to_string))
            .bind(record.publishable())
            .bind(
                record
                    .allowed_origins()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            ))
    }
}

fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

fn check_storable(record: &KeyRecord) -> Result<(), StoreError> {
    if record.owner.len() > MAX_OWNER_LEN || has_nul(&record.owner) {
        return Err(StoreError::Unstorable(Field::Owner));
    }
    if has_nul(&record.name) {
        return Err(StoreError::Unstorable(Field::Name));
    }
    if record
        .metadata()
        .iter()
        .any(|(k, v)| has_nul(k) || has_nul(v))
    {
        return Err(StoreError::Unstorable(Field::Metadata));
    }
    Ok(())
}

/// Microseconds since the epoch (negative before it), saturating.
fn micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}

fn from_micros(micros: i64) -> SystemTime {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

fn decode(row: &PgRow) -> Result<KeyRecord, StoreError> {
    let id: String = row.try_get(0).map_err(StoreError::backend)?;
    let unreadable = |column: &'static str| {
        StoreError::backend(UnreadableRecord {
            id: id.clone(),
            column,
        })
    };
    let key_id: KeyId = id.parse().map_err(|_| unreadable("id"))?;
    let hash: Vec<u8> = row.try_get(1).map_err(StoreError::backend)?;
    let hash: [u8; 32] = hash.try_into().map_err(|_| unreadable("hash"))?;
    let algorithm: String = row.try_get(2).map_err(StoreError::backend)?;
    let algorithm: HashAlgorithm = algorithm
        .parse()
        .map_err(|_| unreadable("hash_algorithm"))?;
    let owner: String = row.try_get(3).map_err(StoreError::backend)?;
    let created: i64 = row.try_get(11).map_err(StoreError::backend)?;
    let mut record = KeyRecord::new(
        key_id,
        KeyHash::new(algorithm, hash),
        owner,
        from_micros(created),
    );
    record.name = row
        .try_get::<String, _>(4)
        .map_err(StoreError::backend)?
        .into();
    let status: String = row.try_get(5).map_err(StoreError::backend)?;
    record.status = match status.as_str() {
        "active" => KeyStatus::Active,
        "disabled" => KeyStatus::Disabled,
        "revoked" => KeyStatus::Revoked,
        _ => return Err(unreadable("status")),
    };
    let environment: Option<String> = row.try_get(6).map_err(StoreError::backend)?;
    record.set_environment(
        environment
            .map(|e| e.parse::<Environment>())
            .transpose()
            .map_err(|_| unreadable("environment"))?,
    );
    let scopes: Vec<String> = row.try_get(7).map_err(StoreError::backend)?;
    record.scopes = ScopeSet::parse(scopes).map_err(|_| unreadable("scopes"))?;
    let networks: Vec<String> = row.try_get(8).map_err(StoreError::backend)?;
    record.set_allowed_networks(
        networks
            .iter()
            .map(|n| n.parse())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| unreadable("allowed_networks"))?,
    );
    let limits: String = row.try_get(9).map_err(StoreError::backend)?;
    record.limits = serde_json::from_str::<Limits>(&limits).map_err(|_| unreadable("limits"))?;
    let metadata: String = row.try_get(10).map_err(StoreError::backend)?;
    record.set_metadata(
        serde_json::from_str::<BTreeMap<String, String>>(&metadata)
            .map_err(|_| unreadable("metadata"))?,
    );
    let time = |index: usize| -> Result<Option<SystemTime>, StoreError> {
        let micros: Option<i64> = row.try_get(index).map_err(StoreError::backend)?;
        Ok(micros.map(from_micros))
    };
    record.set_expires_at(time(12)?);
    record.set_not_before(time(13)?);
    record.set_revoked_at(time(14)?);
    let verification_key: Option<String> = row.try_get(15).map_err(StoreError::backend)?;
    record.set_verification_key(
        verification_key
            .map(|key| key.parse())
            .transpose()
            .map_err(|_| unreadable("verification_key"))?,
    );
    record.set_publishable(row.try_get(16).map_err(StoreError::backend)?);
    let origins: Vec<String> = row.try_get(17).map_err(StoreError::backend)?;
    record.set_allowed_origins(
        origins
            .iter()
            .map(|o| o.parse())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| unreadable("allowed_origins"))?,
    );
    Ok(record)
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("table", &self.table)
            .field("timeout", &self.timeout)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl KeyStore for PgStore {
    async fn find(&self, id: &KeyId) -> Lookup {
        self.run("find", Some(id), async {
            let row = sqlx::query(&self.queries.find)
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::backend)?;
            row.map(|row| decode(&row).map(Arc::new)).transpose()
        })
        .await
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let id = record.id;
        self.run("insert", Some(&id), async {
            let query = Self::bind_record(sqlx::query(&self.queries.insert), &record)?;
            let done = query.execute(&self.pool).await.map_err(|error| {
                // The only unique index besides the primary key (whose
                // conflicts `ON CONFLICT` absorbs): imported hashes.
                match &error {
                    sqlx::Error::Database(db) if db.is_unique_violation() => {
                        StoreError::DuplicateHash
                    }
                    _ => StoreError::backend(error),
                }
            })?;
            if done.rows_affected() == 0 {
                return Err(StoreError::AlreadyExists(id));
            }
            Ok(())
        })
        .await
    }

    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        let id = record.id;
        self.run("update", Some(&id), async {
            let query = Self::bind_record(sqlx::query(&self.queries.update), &record)?;
            let row = query
                .fetch_one(&self.pool)
                .await
                .map_err(StoreError::backend)?;
            let updated: bool = row.try_get(0).map_err(StoreError::backend)?;
            let present: bool = row.try_get(1).map_err(StoreError::backend)?;
            match (updated, present) {
                (true, _) => Ok(()),
                (false, true) => Err(StoreError::Revoked(id)),
                (false, false) => Err(StoreError::NotFound(id)),
            }
        })
        .await
    }

    async fn revoke(&self, id: &KeyId, at: SystemTime) -> Result<(), StoreError> {
        self.run("revoke", Some(id), async {
            let done = sqlx::query(&self.queries.revoke)
                .bind(id.as_str())
                .bind(micros(at))
                .execute(&self.pool)
                .await
                .map_err(StoreError::backend)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(*id));
            }
            Ok(())
        })
        .await
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Lookup {
        if hash.algorithm() != HashAlgorithm::ImportedSha256 {
            return Ok(None);
        }
        self.run("find_by_hash", None, async {
            let row = sqlx::query(&self.queries.find_by_hash)
                .bind(hash.as_bytes().as_slice())
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::backend)?;
            row.map(|row| decode(&row).map(Arc::new)).transpose()
        })
        .await
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        if owner.len() > MAX_OWNER_LEN || has_nul(owner) {
            // No stored record can have this owner.
            return Ok(Vec::new());
        }
        self.run("list_by_owner", None, async {
            let rows = sqlx::query(&self.queries.list)
                .bind(owner)
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::backend)?;
            rows.iter().map(|row| decode(row).map(Arc::new)).collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip_both_sides_of_the_epoch() {
        for m in [0i64, 1, -1, 1_700_000_000_123_456, -86_400_000_001] {
            assert_eq!(micros(from_micros(m)), m);
        }
        assert_eq!(
            micros(UNIX_EPOCH + Duration::from_nanos(1_999)),
            1,
            "truncated to the microsecond"
        );
    }
}
