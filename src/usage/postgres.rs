//! Usage in PostgreSQL (feature `postgres`): the exporter and the queries.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::PgPool;

use super::export::{Counters, Retry};
use super::query::{minute_time, reason_index, reason_named, tally, Tally};
use super::{
    ExportStats, TimeRange, UsageCounts, UsageEvent, UsageExporter, UsageQuery, UsageQueryError,
    UsageRow, UsageScope, UsageSource,
};
use crate::key::KeyId;
use crate::postgres::migrate::{self, Migration};
use crate::postgres::{Identifier, InvalidIdentifier, MigrateError, QualifiedName};

/// The tables, created by [`PgUsage::migrate`]. Released migrations never
/// change; a later change is a new one.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "usage events, per-minute rollups, written batches",
    sql: r#"
CREATE TABLE {{events}} (
    at timestamptz NOT NULL,
    kind text NOT NULL,
    key_id text,
    owner text,
    method text,
    route text,
    status smallint,
    outcome text NOT NULL,
    latency_us bigint NOT NULL,
    request_size bigint,
    response_size bigint,
    tags jsonb
);
CREATE INDEX "{{base}}_events_key_at" ON {{events}} (key_id, at);
CREATE INDEX "{{base}}_events_at" ON {{events}} USING brin (at);
CREATE TABLE {{rollups}} (
    key_id text NOT NULL,
    minute timestamptz NOT NULL,
    owner text,
    requests bigint NOT NULL,
    allowed bigint NOT NULL,
    denied bigint NOT NULL,
    unanswered bigint NOT NULL,
    latency_us bigint NOT NULL,
    denied_by jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (key_id, minute)
);
CREATE INDEX "{{base}}_rollups_owner" ON {{rollups}} (owner, minute);
CREATE INDEX "{{base}}_rollups_minute" ON {{rollups}} (minute);
CREATE TABLE {{batches}} (
    id bigint PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);
"#,
}];

/// How long a written batch's id is kept, so that a retry of a batch whose
/// commit was not acknowledged is recognised and skipped.
const BATCH_MEMORY: &str = "1 hour";

/// Usage in PostgreSQL (feature `postgres`): raw events and per-key,
/// per-minute rollups, written by [`PgUsageExporter`] from every process,
/// and read back as a [`UsageSource`].
///
/// Tables, in the schema given to [`new`](PgUsage::new) (created by
/// [`migrate`](PgUsage::migrate), with a migrations table of their own):
///
/// - `keyward_usage_events`: one row an event (requests and the key
///   lifecycle audit trail): time, kind, key id, owner, method, route,
///   status, outcome, latency, body sizes, tags (a JSON object). Never a
///   key, only its public id.
/// - `keyward_usage_rollups`: one row a key and minute: its owner,
///   requests, allowed, denied, unanswered, the latency sum, and the
///   refusals by reason (a JSON object: reason → count).
/// - `keyward_usage_batches`: the ids of the batches written in the last
///   hour, so that a batch retried after a lost acknowledgement is written
///   once.
///
/// Owners: each rollup row stores the owner of its key, taken from the
/// events (the authenticated key's owner); with
/// [`keys_table`](PgUsage::keys_table), a row whose events named none (a
/// key only refused, as revoked or expired) takes the owner
/// from the keys table. Queries by owner read that column, so they need no
/// join, work whatever store holds the keys, and keep a key's usage under
/// the owner it had when it was used, also after the key is deleted.
///
/// ```no_run
/// use std::time::{Duration, SystemTime};
/// use keyward::usage::{BatchingSink, PgUsage, TimeRange, UsageLayer, UsageQuery, UsageSource};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/app").await?;
/// let usage = PgUsage::new(pool, "keyward")?;
/// usage.migrate().await?;
/// let exporter = usage.exporter();
/// let sink = BatchingSink::new(exporter.clone());
/// let layer = UsageLayer::new(sink.clone());
/// // ... serve; `sink.dropped()` and `exporter.stats().dropped` count losses ...
///
/// // A billing job, in any process:
/// let month = TimeRange::last(Duration::from_secs(30 * 86_400), SystemTime::now());
/// let bill = usage.total(&UsageQuery::owner("acme", month)).await?;
/// println!("acme: {} requests", bill.requests);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PgUsage {
    pool: PgPool,
    tables: Arc<Tables>,
}

#[derive(Debug, Clone)]
struct Tables {
    events: QualifiedName,
    rollups: QualifiedName,
    batches: QualifiedName,
    history: QualifiedName,
    keys: Option<QualifiedName>,
}

impl PgUsage {
    /// Usage tables in `schema` of the database behind `pool`.
    pub fn new(pool: PgPool, schema: &str) -> Result<Self, InvalidIdentifier> {
        let schema = Identifier::new(schema)?;
        let table = |name: &str| -> Result<QualifiedName, InvalidIdentifier> {
            Ok(QualifiedName::from_parts(
                schema.clone(),
                Identifier::new(name)?,
            ))
        };
        Ok(Self {
            pool,
            tables: Arc::new(Tables {
                events: table("keyward_usage_events")?,
                rollups: table("keyward_usage_rollups")?,
                batches: table("keyward_usage_batches")?,
                history: table("keyward_usage_migrations")?,
                keys: None,
            }),
        })
    }

    /// The keys table of your [`PgStore`](crate::store::PgStore): pass
    /// [`PgStore::table`](crate::store::PgStore::table). The exporter sets
    /// its `last_used_at` from each batch (at most once a minute a key, so
    /// a busy key does not rewrite its row on every batch), and fills in
    /// rollups' missing owners from its `owner` column; it writes nothing
    /// else there. Another table works if it has those columns and the key
    /// id in `id`.
    ///
    /// ```no_run
    /// use keyward::store::PgStore;
    /// use keyward::usage::PgUsage;
    ///
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let keys = PgStore::new(pool.clone()).with_table("auth", "api_keys")?;
    /// let usage = PgUsage::new(pool, "auth")?.keys_table(keys.table().clone());
    /// # let _ = usage;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn keys_table(mut self, keys: QualifiedName) -> Self {
        Arc::make_mut(&mut self.tables).keys = Some(keys);
        self
    }

    /// Creates or updates the tables. Safe to call from every process at
    /// start-up: a lock makes concurrent calls apply each change once.
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        let t = &*self.tables;
        let vars = vec![
            ("{{events}}", t.events.to_string()),
            ("{{rollups}}", t.rollups.to_string()),
            ("{{batches}}", t.batches.to_string()),
            ("{{base}}", "keyward_usage".to_owned()),
        ];
        migrate::run(&self.pool, &t.history, MIGRATIONS, &vars).await
    }

    /// Deletes raw events that arrived before `events_before` and rollups
    /// of minutes before `rollups_before` (keep rollups longer: they are
    /// small, and bills are made from them); returns how many of each were
    /// deleted. Nothing deletes them otherwise: call it from a periodic
    /// job, in one process.
    pub async fn prune(
        &self,
        events_before: SystemTime,
        rollups_before: SystemTime,
    ) -> Result<(u64, u64), UsageQueryError> {
        let delete = |table: &QualifiedName, column: &str, before: SystemTime| {
            let sql = format!("DELETE FROM {table} WHERE {column} < {}", ts("$1"));
            async move {
                sqlx::query(&sql)
                    .bind(micros(before))
                    .execute(&self.pool)
                    .await
                    .map(|done| done.rows_affected())
                    .map_err(UsageQueryError::backend)
            }
        };
        let events = delete(&self.tables.events, "at", events_before).await?;
        let rollups = delete(&self.tables.rollups, "minute", rollups_before).await?;
        Ok((events, rollups))
    }

    /// An exporter writing into these tables, for a
    /// [`BatchingSink`](super::BatchingSink).
    pub fn exporter(&self) -> PgUsageExporter {
        PgUsageExporter {
            usage: self.clone(),
            retry: Retry::default(),
            copy: false,
            counters: Arc::default(),
            written: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// Writes batches of [`UsageEvent`]s into [`PgUsage`]'s tables: put it
/// behind a [`BatchingSink`](super::BatchingSink).
///
/// Each batch is written in one transaction, and by default in one
/// statement (one round trip): the raw events, the batch's per-key,
/// per-minute counts added to the rollups (`INSERT ... ON CONFLICT DO
/// UPDATE`, in key order so that processes writing the same keys do not
/// deadlock), and the keys' `last_used_at`. A batch is written once: its
/// random id is recorded in the same transaction, and a retry of a batch
/// whose commit went through unacknowledged finds it and stops.
///
/// A failed attempt (an error, or no answer within the
/// [`timeout`](PgUsageExporter::timeout)) is retried a few
/// [`times`](PgUsageExporter::retries), then the batch is dropped and
/// counted ([`stats`](PgUsageExporter::stats)). Meanwhile the sink's
/// bounded buffers fill up and it drops new events (counted in
/// [`BatchingSink::dropped`](super::BatchingSink::dropped)): a database
/// that is down costs usage records, never a request's time.
///
/// Clones share their counters.
#[derive(Clone)]
pub struct PgUsageExporter {
    usage: PgUsage,
    retry: Retry,
    copy: bool,
    counters: Arc<Counters>,
    written: Arc<AtomicU64>,
}

impl PgUsageExporter {
    /// How many times a failed batch is tried again before it is dropped
    /// (default 3).
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.retry.retries = retries;
        self
    }

    /// The limit on each attempt (default five seconds).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.retry.timeout = timeout;
        self
    }

    /// The wait before the first retry, doubled for each next (default
    /// 100 ms).
    #[must_use]
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.retry.backoff = backoff;
        self
    }

    /// Writes the raw events with `COPY` in an explicit transaction (five
    /// round trips a batch) instead of the default single statement with
    /// arrays (one). BENCHMARKS.md compares the two: the same PostgreSQL
    /// CPU at the sink's default batch of 512, about a quarter less with
    /// batches of 2048, and more CPU in this process (text encoding).
    #[must_use]
    pub fn copy_events(mut self, copy: bool) -> Self {
        self.copy = copy;
        self
    }

    /// What this exporter (and its clones) wrote and dropped so far.
    pub fn stats(&self) -> ExportStats {
        self.counters.stats()
    }

    async fn write(&self, batch_id: i64, rows: &Rows) -> Result<(), sqlx::Error> {
        if self.copy {
            self.write_with_copy(batch_id, rows).await
        } else {
            self.write_in_one_statement(batch_id, rows).await
        }
    }

    async fn write_in_one_statement(&self, batch_id: i64, rows: &Rows) -> Result<(), sqlx::Error> {
        let t = &*self.usage.tables;
        let sql = format!(
            "WITH batch AS (
                INSERT INTO {batches} (id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id
            ), events AS (
                {events}
            ), rollups AS (
                {rollups}
            ){used}
            SELECT count(*) FROM batch",
            batches = t.batches,
            events = events_insert(t, 2),
            rollups = rollups_upsert(t, 14),
            used = keys_update(t, 23).map_or(String::new(), |u| format!(", used AS ({u})")),
        );
        let query = sqlx::query_scalar::<_, i64>(&sql).bind(batch_id);
        let query = rows.bind_events(query);
        let query = rows.bind_rollups(query);
        let query = rows.bind_used(query, t.keys.is_some());
        query.fetch_one(&self.usage.pool).await?;
        Ok(())
    }

    async fn write_with_copy(&self, batch_id: i64, rows: &Rows) -> Result<(), sqlx::Error> {
        let t = &*self.usage.tables;
        let mut tx = self.usage.pool.begin().await?;
        let new: Option<i64> = sqlx::query_scalar(&format!(
            "INSERT INTO {} (id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id",
            t.batches
        ))
        .bind(batch_id)
        .fetch_optional(&mut *tx)
        .await?;
        if new.is_none() {
            return Ok(()); // written by an earlier attempt; rolled back on drop
        }
        let mut copy = tx
            .copy_in_raw(&format!("COPY {} ({EVENT_COLUMNS}) FROM STDIN", t.events))
            .await?;
        copy.send(rows.copy_text()).await?;
        copy.finish().await?;
        let sql = format!(
            "WITH batch AS (SELECT 1 AS id), rollups AS ({rollups}){used} SELECT 1",
            rollups = rollups_upsert(t, 1),
            used = keys_update(t, 10).map_or(String::new(), |u| format!(", used AS ({u})")),
        );
        let query = sqlx::query(&sql);
        let query = rows.bind_rollups(query);
        let query = rows.bind_used(query, t.keys.is_some());
        query.execute(&mut *tx).await?;
        tx.commit().await
    }

    /// Forgets the ids of batches older than [`BATCH_MEMORY`], now and then.
    async fn prune_batches(&self) {
        let sql = format!(
            "DELETE FROM {} WHERE at < now() - interval '{BATCH_MEMORY}'",
            self.usage.tables.batches
        );
        if let Err(error) = sqlx::query(&sql).execute(&self.usage.pool).await {
            tracing::debug!(target: "keyward::usage", %error, "pruning usage batch ids failed");
        }
    }
}

const EVENT_COLUMNS: &str = "at, kind, key_id, owner, method, route, status, outcome, \
                             latency_us, request_size, response_size, tags";

/// Microseconds since the epoch (as `$n` of type `int8`) to `timestamptz`,
/// exactly (integer arithmetic).
fn ts(param: &str) -> String {
    format!("(timestamptz 'epoch' + {param} * interval '1 microsecond')")
}

/// The raw events from twelve arrays, `$first` to `$first + 11`, written
/// only if the batch is new.
fn events_insert(t: &Tables, first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    format!(
        "INSERT INTO {events} ({EVENT_COLUMNS})
         SELECT {at}, e.kind, e.key_id, e.owner, e.method, e.route, e.status, e.outcome,
                e.latency_us, e.request_size, e.response_size, e.tags
         FROM unnest({0}::int8[], {1}::text[], {2}::text[], {3}::text[], {4}::text[],
                     {5}::text[], {6}::int2[], {7}::text[], {8}::int8[], {9}::int8[],
                     {10}::int8[], {11}::jsonb[])
              AS e(at, kind, key_id, owner, method, route, status, outcome,
                   latency_us, request_size, response_size, tags)
         WHERE EXISTS (SELECT 1 FROM batch)",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(8),
        p(9),
        p(10),
        p(11),
        events = t.events,
        at = ts("e.at"),
    )
}

/// The batch's counts added to the rollups, from nine arrays `$first` to
/// `$first + 8`, in key and minute order.
fn rollups_upsert(t: &Tables, first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    let (owner, join) = match &t.keys {
        Some(keys) => (
            "coalesce(r.owner, k.owner)",
            format!("LEFT JOIN {keys} k ON k.id = r.key_id"),
        ),
        None => ("r.owner", String::new()),
    };
    format!(
        "INSERT INTO {rollups} AS u
             (key_id, minute, owner, requests, allowed, denied, unanswered, latency_us, denied_by)
         SELECT r.key_id, {minute}, {owner}, r.requests, r.allowed, r.denied, r.unanswered,
                r.latency_us, r.denied_by
         FROM unnest({0}::text[], {1}::int8[], {2}::text[], {3}::int8[], {4}::int8[],
                     {5}::int8[], {6}::int8[], {7}::int8[], {8}::jsonb[])
              AS r(key_id, minute, owner, requests, allowed, denied, unanswered, latency_us,
                   denied_by)
         {join}
         WHERE EXISTS (SELECT 1 FROM batch)
         ORDER BY r.key_id, r.minute
         ON CONFLICT (key_id, minute) DO UPDATE SET
             owner = coalesce(u.owner, excluded.owner),
             requests = u.requests + excluded.requests,
             allowed = u.allowed + excluded.allowed,
             denied = u.denied + excluded.denied,
             unanswered = u.unanswered + excluded.unanswered,
             latency_us = u.latency_us + excluded.latency_us,
             denied_by = CASE WHEN excluded.denied_by = '{{}}'::jsonb THEN u.denied_by ELSE (
                 SELECT jsonb_object_agg(reason, n) FROM (
                     SELECT reason, sum(n::bigint) AS n FROM (
                         SELECT * FROM jsonb_each_text(u.denied_by)
                         UNION ALL SELECT * FROM jsonb_each_text(excluded.denied_by)
                     ) AS both_(reason, n) GROUP BY reason
                 ) AS summed
             ) END",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(8),
        rollups = t.rollups,
        minute = ts("r.minute"),
    )
}

/// The keys' `last_used_at`, from two arrays `$first`, `$first + 1`; `None`
/// without a keys table.
fn keys_update(t: &Tables, first: usize) -> Option<String> {
    let keys = t.keys.as_ref()?;
    Some(format!(
        "UPDATE {keys} k SET last_used_at = {at}
         FROM unnest(${first}::text[], ${second}::int8[]) AS l(id, at)
         WHERE k.id = l.id AND EXISTS (SELECT 1 FROM batch)
           AND (k.last_used_at IS NULL OR k.last_used_at < {at} - interval '1 minute')",
        at = ts("l.at"),
        second = first + 1,
    ))
}

/// A batch as the columns the statements bind.
#[derive(Default)]
struct Rows {
    at: Vec<i64>,
    kind: Vec<&'static str>,
    key_id: Vec<Option<String>>,
    owner: Vec<Option<String>>,
    method: Vec<Option<String>>,
    route: Vec<Option<String>>,
    status: Vec<Option<i16>>,
    outcome: Vec<&'static str>,
    latency_us: Vec<i64>,
    request_size: Vec<Option<i64>>,
    response_size: Vec<Option<i64>>,
    tags: Vec<Option<serde_json::Value>>,
    // The rollups.
    r_key_id: Vec<String>,
    r_minute: Vec<i64>,
    r_owner: Vec<Option<String>>,
    r_requests: Vec<i64>,
    r_allowed: Vec<i64>,
    r_denied: Vec<i64>,
    r_unanswered: Vec<i64>,
    r_latency_us: Vec<i64>,
    r_denied_by: Vec<serde_json::Value>,
    // The keys' last use.
    u_key_id: Vec<String>,
    u_at: Vec<i64>,
}

fn micros(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

type PgArgs = sqlx::postgres::PgArguments;

impl Rows {
    fn new(batch: &[UsageEvent]) -> Self {
        let mut rows = Rows::default();
        for event in batch {
            rows.at.push(micros(event.at()));
            rows.kind.push(event.kind().as_str());
            rows.key_id.push(event.key_id().map(|id| id.to_string()));
            rows.owner.push(event.owner().map(str::to_owned));
            rows.method
                .push(event.method().map(|m| m.as_str().to_owned()));
            rows.route.push(event.route().map(str::to_owned));
            rows.status
                .push(event.status().and_then(|s| i16::try_from(s.as_u16()).ok()));
            rows.outcome.push(event.outcome().as_str());
            rows.latency_us
                .push(i64::try_from(event.latency().as_micros()).unwrap_or(i64::MAX));
            rows.request_size
                .push(event.request_size().and_then(|n| i64::try_from(n).ok()));
            rows.response_size
                .push(event.response_size().and_then(|n| i64::try_from(n).ok()));
            let tags = event.tags();
            rows.tags.push((!tags.is_empty()).then(|| {
                serde_json::Value::Object(
                    tags.iter()
                        .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
                        .collect(),
                )
            }));
        }
        let mut last_used: BTreeMap<KeyId, SystemTime> = BTreeMap::new();
        for ((key_id, secs), tally) in tally(batch, 60) {
            rows.push_rollup(key_id, secs, &tally);
            if let Some(at) = tally.last_at {
                let latest = last_used.entry(key_id).or_insert(at);
                *latest = (*latest).max(at);
            }
        }
        for (key_id, at) in last_used {
            rows.u_key_id.push(key_id.to_string());
            rows.u_at.push(micros(at));
        }
        rows
    }

    fn push_rollup(&mut self, key_id: KeyId, secs: u64, tally: &Tally) {
        self.r_key_id.push(key_id.to_string());
        self.r_minute
            .push(micros(UNIX_EPOCH + Duration::from_secs(secs)));
        self.r_owner.push(tally.owner.as_deref().map(str::to_owned));
        self.r_requests.push(count(tally.requests()));
        self.r_allowed.push(count(tally.allowed));
        self.r_denied.push(count(tally.denied));
        self.r_unanswered.push(count(tally.unanswered));
        self.r_latency_us.push(count(tally.latency_micros));
        self.r_denied_by.push(serde_json::Value::Object(
            tally
                .reasons()
                .map(|(reason, n)| (reason.as_str().to_owned(), n.into()))
                .collect(),
        ));
    }

    fn bind_events<'q, O>(
        &'q self,
        query: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, PgArgs>,
    ) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, PgArgs> {
        query
            .bind(&self.at)
            .bind(&self.kind)
            .bind(&self.key_id)
            .bind(&self.owner)
            .bind(&self.method)
            .bind(&self.route)
            .bind(&self.status)
            .bind(&self.outcome)
            .bind(&self.latency_us)
            .bind(&self.request_size)
            .bind(&self.response_size)
            .bind(&self.tags)
    }

    fn bind_rollups<'q, Q: Bind<'q>>(&'q self, query: Q) -> Q {
        query
            .bind_value(&self.r_key_id)
            .bind_value(&self.r_minute)
            .bind_value(&self.r_owner)
            .bind_value(&self.r_requests)
            .bind_value(&self.r_allowed)
            .bind_value(&self.r_denied)
            .bind_value(&self.r_unanswered)
            .bind_value(&self.r_latency_us)
            .bind_value(&self.r_denied_by)
    }

    fn bind_used<'q, Q: Bind<'q>>(&'q self, query: Q, keys: bool) -> Q {
        if keys {
            query.bind_value(&self.u_key_id).bind_value(&self.u_at)
        } else {
            query
        }
    }

    /// The raw events in `COPY`'s text format.
    fn copy_text(&self) -> Vec<u8> {
        let mut out = String::with_capacity(self.at.len() * 160);
        for i in 0..self.at.len() {
            let at = self.at[i];
            // COPY reads timestamptz as text: seconds with six decimals
            // since the epoch, written as an ISO time with a UTC offset.
            let secs = at.div_euclid(1_000_000);
            let frac = at.rem_euclid(1_000_000);
            out.push_str(&format!("{}.{frac:06}+00\t", iso_seconds(secs)));
            copy_field(&mut out, Some(self.kind[i]));
            copy_field(&mut out, self.key_id[i].as_deref());
            copy_field(&mut out, self.owner[i].as_deref());
            copy_field(&mut out, self.method[i].as_deref());
            copy_field(&mut out, self.route[i].as_deref());
            copy_field(&mut out, self.status[i].map(|s| s.to_string()).as_deref());
            copy_field(&mut out, Some(self.outcome[i]));
            copy_field(&mut out, Some(&self.latency_us[i].to_string()));
            copy_field(
                &mut out,
                self.request_size[i].map(|n| n.to_string()).as_deref(),
            );
            copy_field(
                &mut out,
                self.response_size[i].map(|n| n.to_string()).as_deref(),
            );
            let tags = self.tags[i].as_ref().map(|t| t.to_string());
            copy_field(&mut out, tags.as_deref());
            out.pop(); // the last tab
            out.push('\n');
        }
        out.into_bytes()
    }
}

/// Adds one field of `COPY`'s text format and a tab: `\N` for null,
/// backslashes, tabs, newlines and carriage returns escaped.
fn copy_field(out: &mut String, value: Option<&str>) {
    match value {
        None => out.push_str("\\N"),
        Some(value) => {
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
    }
    out.push('\t');
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of Unix second `secs` (proleptic Gregorian).
fn iso_seconds(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Binding to either kind of sqlx query.
trait Bind<'q>: Sized {
    fn bind_value<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>;
}

impl<'q> Bind<'q> for sqlx::query::Query<'q, sqlx::Postgres, PgArgs> {
    fn bind_value<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        self.bind(value)
    }
}

impl<'q, O> Bind<'q> for sqlx::query::QueryScalar<'q, sqlx::Postgres, O, PgArgs> {
    fn bind_value<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        self.bind(value)
    }
}

/// A random batch id; if the OS's generator fails, the time, the process
/// and a counter (unique enough for the hour the ids are kept).
fn batch_id() -> i64 {
    use rand::TryRng;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 8];
    if rand::rngs::SysRng.try_fill_bytes(&mut bytes).is_ok() {
        return i64::from_ne_bytes(bytes);
    }
    let nanos = micros(SystemTime::now()) as u64;
    let mixed = nanos ^ (u64::from(std::process::id()) << 40) ^ (NEXT.fetch_add(1, Relaxed) << 20);
    i64::from_ne_bytes(mixed.to_ne_bytes())
}

#[async_trait::async_trait]
impl UsageExporter for PgUsageExporter {
    async fn export(&mut self, batch: Vec<UsageEvent>) {
        if batch.is_empty() {
            return;
        }
        let rows = Rows::new(&batch);
        // Random, so that processes never share one; the same for every
        // attempt, so that a retry of a committed batch is recognised.
        let batch_id = batch_id();
        let this = &*self;
        self.retry
            .run(&self.counters, "postgres", batch.len(), || {
                this.write(batch_id, &rows)
            })
            .await;
        if self.written.fetch_add(1, Relaxed) % 1024 == 1023 {
            self.prune_batches().await;
        }
    }
}

#[async_trait::async_trait]
impl UsageSource for PgUsage {
    async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, UsageQueryError> {
        let (first, end) = query.range.minutes();
        if first >= end {
            return Ok(Vec::new());
        }
        let (filter, value) = match &query.scope {
            UsageScope::Key(id) => ("key_id = $4", Some(id.to_string())),
            UsageScope::Owner(owner) => ("owner = $4", Some(owner.clone())),
            UsageScope::All => ("$4::text IS NULL", None),
        };
        let sql = format!(
            "WITH sel AS (
                SELECT key_id, owner, requests, allowed, denied, unanswered, latency_us,
                       denied_by,
                       CASE WHEN $3 = 0 THEN $1
                            ELSE (extract(epoch FROM minute)::int8 / 60 / $3) * $3 END AS bucket
                FROM {rollups}
                WHERE minute >= {start} AND minute < {end}
                  AND {filter} AND ($5::text IS NULL OR key_id > $5)
            ), page AS (
                SELECT DISTINCT key_id FROM sel ORDER BY key_id LIMIT $6
            )
            SELECT key_id, bucket, max(owner), sum(requests)::int8, sum(allowed)::int8,
                   sum(denied)::int8, sum(unanswered)::int8, sum(latency_us)::int8,
                   coalesce(jsonb_agg(denied_by) FILTER (WHERE denied_by <> '{{}}'::jsonb),
                            '[]'::jsonb)
            FROM sel WHERE key_id IN (SELECT key_id FROM page)
            GROUP BY key_id, bucket ORDER BY key_id, bucket",
            rollups = self.tables.rollups,
            start = "(timestamptz 'epoch' + $1 * interval '1 minute')",
            end = "(timestamptz 'epoch' + $2 * interval '1 minute')",
        );
        type Row = (
            String,
            i64,
            Option<String>,
            i64,
            i64,
            i64,
            i64,
            i64,
            serde_json::Value,
        );
        let step = query.step.map_or(0, |s| i64::from(s.as_minutes()));
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(count(first))
            .bind(count(end))
            .bind(step)
            .bind(value)
            .bind(query.after.map(|id| id.to_string()))
            .bind(query.limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
            .fetch_all(&self.pool)
            .await
            .map_err(UsageQueryError::backend)?;
        rows.into_iter()
            .map(|row| {
                let (key_id, bucket, owner, requests, allowed, denied, unanswered, latency, by) =
                    row;
                let key_id: KeyId = key_id.parse().map_err(UsageQueryError::backend)?;
                let bucket = u64::try_from(bucket).unwrap_or(0);
                let period = match query.step {
                    Some(step) => {
                        let (start, next) = step.bucket(bucket);
                        TimeRange::new(minute_time(start), minute_time(next))
                    }
                    None => TimeRange::new(minute_time(first), minute_time(end)),
                };
                let unsigned = |n: i64| u64::try_from(n).unwrap_or(0);
                Ok(UsageRow {
                    key_id,
                    owner,
                    period,
                    counts: UsageCounts {
                        requests: unsigned(requests),
                        allowed: unsigned(allowed),
                        denied: unsigned(denied),
                        unanswered: unsigned(unanswered),
                        denied_by_reason: reasons(&by),
                        total_latency: Duration::from_micros(unsigned(latency)),
                    },
                })
            })
            .collect()
    }
}

/// The refusals by reason from an array of `{reason: count}` objects;
/// reasons this build does not know are left out.
fn reasons(objects: &serde_json::Value) -> Vec<(crate::reject::RejectReason, u64)> {
    let mut sums: BTreeMap<usize, (crate::reject::RejectReason, u64)> = BTreeMap::new();
    let objects = objects.as_array().map(Vec::as_slice).unwrap_or_default();
    for object in objects.iter().filter_map(serde_json::Value::as_object) {
        for (name, n) in object {
            if let (Some(reason), Some(n)) = (reason_named(name), n.as_u64()) {
                sums.entry(reason_index(reason)).or_insert((reason, 0)).1 += n;
            }
        }
    }
    sums.into_values().collect()
}

impl fmt::Debug for PgUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgUsage")
            .field("events", &self.tables.events)
            .field("rollups", &self.tables.rollups)
            .field("keys", &self.tables.keys)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for PgUsageExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgUsageExporter")
            .field("usage", &self.usage)
            .field("retries", &self.retry.retries)
            .field("timeout", &self.retry.timeout)
            .field("copy", &self.copy)
            .field("stats", &self.counters.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_times_are_iso_utc() {
        assert_eq!(iso_seconds(0), "1970-01-01 00:00:00");
        assert_eq!(iso_seconds(1_735_689_600), "2025-01-01 00:00:00");
        assert_eq!(iso_seconds(951_782_400 + 3661), "2000-02-29 01:01:01");
    }

    #[test]
    fn copy_fields_escape_what_copy_reads_specially() {
        let mut out = String::new();
        copy_field(&mut out, Some("a\tb\\c\nd\re'\"%é"));
        copy_field(&mut out, None);
        assert_eq!(out, "a\\tb\\\\c\\nd\\re'\"%é\t\\N\t");
    }
}
