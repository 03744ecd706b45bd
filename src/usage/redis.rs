//! Usage counters in Redis (feature `redis`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionLike;

use super::export::{Counters, Retry};
use super::query::{minute_time, reason_named, tally, unix_minute, Tally};
use super::{ExportStats, UsageCounts, UsageEvent, UsageExporter, UsageQueryError};
use crate::clock::{Clock, SystemClock};
use crate::key::KeyId;

/// Adds a key's counts to its minute hash and its day hash, and sets both
/// expiries, in one atomic step. Both keys carry the key id's hash tag, so
/// they live in one Redis Cluster slot.
///
/// KEYS: the minute hash, the day hash. ARGV: the minute's expiry, the
/// day's expiry (Unix seconds), then field and increment pairs.
const ADD: &str = r"
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIREAT', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[2], ARGV[2])
return 1
";

/// Per-key usage counters in Redis, per minute and per day, that every
/// process reads ([`snapshot`](RedisUsage::snapshot)): for dashboards and
/// for limits on usage that must see every replica (feature `redis`).
///
/// It is a [`UsageExporter`]: put it behind a
/// [`BatchingSink`](super::BatchingSink), which hands it batches off the
/// request path. Each batch is added up per key and minute and written in
/// one round trip (a pipeline of one atomic script call per key and
/// minute). A failed batch is retried a few times, then counted as dropped
/// ([`stats`](RedisUsage::stats)); meanwhile the sink's bounded buffers
/// fill and drop new events rather than slow a request.
///
/// Counted like the other usage sinks: request events of keys whose record
/// exists. Redis keys are named from the public key id only, never a
/// secret: `<prefix>{<key id>}:m:<Unix minute>` and
/// `<prefix>{<key id>}:d:<Unix day>`, hashes with the fields `requests`,
/// `allowed`, `denied`, `unanswered`, `latency_us` and `denied:<reason>`.
/// The `{key id}` hash tag keeps a key's counters in one Redis Cluster
/// slot. Minute hashes expire [`minute_retention`](RedisUsage::minute_retention)
/// after their minute (default two hours), day hashes
/// [`day_retention`](RedisUsage::day_retention) after their day (default
/// 35 days).
///
/// A batch whose reply was lost (a connection cut after Redis ran it) is
/// retried and may be counted twice: these counters are for dashboards;
/// billing reads the PostgreSQL rollups, which are written exactly once.
///
/// ```no_run
/// use keyward::usage::{BatchingSink, RedisUsage, UsageLayer};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let redis = redis::aio::ConnectionManager::new(client).await?;
/// let counters = RedisUsage::new(redis).with_prefix("shop:usage:")?;
/// let layer = UsageLayer::new(BatchingSink::new(counters.clone()));
/// // ... later, in any process:
/// let id = "abcdefABCDEF".parse()?;
/// let now = counters.snapshot(&id).await?;
/// println!("{} requests this minute, {} today", now.minute.requests, now.day.requests);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisUsage<C> {
    connection: C,
    prefix: Arc<str>,
    minute_retention: Duration,
    day_retention: Duration,
    retry: Retry,
    clock: Arc<dyn Clock>,
    script: Arc<redis::Script>,
    counters: Arc<Counters>,
}

/// Why a Redis key prefix was refused: longer than 64 bytes, or holding a
/// brace (which would break the per-key hash tag), a space or a control
/// character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a Redis key prefix is at most 64 printable bytes, without braces or spaces")]
#[non_exhaustive]
pub struct InvalidRedisPrefix;

/// One key's counters now, read from Redis by
/// [`RedisUsage::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RedisSnapshot {
    /// The current minute (UTC, by the [`Clock`]).
    #[cfg_attr(feature = "serde", serde(with = "crate::rfc3339::serde"))]
    pub minute_start: SystemTime,
    /// The key's counts in the current minute.
    pub minute: UsageCounts,
    /// The previous minute's counts (a complete minute, for rates).
    pub previous_minute: UsageCounts,
    /// The current day (UTC).
    #[cfg_attr(feature = "serde", serde(with = "crate::rfc3339::serde"))]
    pub day_start: SystemTime,
    /// The key's counts today.
    pub day: UsageCounts,
}

impl<C> RedisUsage<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Counters on `connection` (a `redis::aio::ConnectionManager` or
    /// `MultiplexedConnection`: shared, never one per batch), under the
    /// prefix `keyward:usage:`, retrying a failed batch three times with a
    /// five-second limit on each attempt.
    pub fn new(connection: C) -> Self {
        Self {
            connection,
            prefix: Arc::from("keyward:usage:"),
            minute_retention: Duration::from_secs(2 * 3600),
            day_retention: Duration::from_secs(35 * 86_400),
            retry: Retry::default(),
            clock: Arc::new(SystemClock),
            script: Arc::new(redis::Script::new(ADD)),
            counters: Arc::default(),
        }
    }

    /// Names every Redis key `<prefix>{<key id>}:...`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Result<Self, InvalidRedisPrefix> {
        let prefix = prefix.into();
        let valid = prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
        if !valid {
            return Err(InvalidRedisPrefix);
        }
        self.prefix = prefix.into();
        Ok(self)
    }

    /// How long a minute's counters are kept after the minute (default two
    /// hours).
    #[must_use]
    pub fn minute_retention(mut self, retention: Duration) -> Self {
        self.minute_retention = retention;
        self
    }

    /// How long a day's counters are kept after the day (default 35 days).
    #[must_use]
    pub fn day_retention(mut self, retention: Duration) -> Self {
        self.day_retention = retention;
        self
    }

    /// How many times a failed batch is tried again before it is dropped
    /// (default 3).
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.retry.retries = retries;
        self
    }

    /// The limit on each attempt to write a batch, and on each read
    /// (default five seconds).
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

    /// The clock that tells [`snapshot`](RedisUsage::snapshot) which minute
    /// and day it is now.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = crate::clock::shared(clock);
        self
    }

    /// What this exporter (and its clones) wrote and dropped so far.
    pub fn stats(&self) -> ExportStats {
        self.counters.stats()
    }

    fn minute_key(&self, key_id: &KeyId, minute: u64) -> String {
        format!("{}{{{key_id}}}:m:{minute}", self.prefix)
    }

    fn day_key(&self, key_id: &KeyId, day: u64) -> String {
        format!("{}{{{key_id}}}:d:{day}", self.prefix)
    }

    /// The key's counters in the current minute, the previous one, and
    /// today, in one round trip.
    pub async fn snapshot(&self, key_id: &KeyId) -> Result<RedisSnapshot, UsageQueryError> {
        let now = self.clock.now();
        let minute = unix_minute(now);
        let day = minute / 1440;
        let mut pipe = redis::pipe();
        pipe.hgetall(self.minute_key(key_id, minute))
            .hgetall(self.minute_key(key_id, minute.saturating_sub(1)))
            .hgetall(self.day_key(key_id, day));
        let mut connection = self.connection.clone();
        type Hashes = (
            HashMap<String, u64>,
            HashMap<String, u64>,
            HashMap<String, u64>,
        );
        let (this, previous, today): Hashes =
            tokio::time::timeout(self.retry.timeout, pipe.query_async(&mut connection))
                .await
                .map_err(UsageQueryError::backend)?
                .map_err(UsageQueryError::backend)?;
        Ok(RedisSnapshot {
            minute_start: minute_time(minute),
            minute: counts(&this),
            previous_minute: counts(&previous),
            day_start: minute_time(day * 1440),
            day: counts(&today),
        })
    }

    /// One script call per key and minute, in one pipeline.
    fn pipeline(&self, tallies: &[((KeyId, u64), Tally)], sha: &str) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for ((key_id, secs), tally) in tallies {
            let minute = secs / 60;
            let day = minute / 1440;
            let minute_expiry = (minute + 1) * 60 + self.minute_retention.as_secs();
            let day_expiry = (day + 1) * 86_400 + self.day_retention.as_secs();
            let command = pipe
                .cmd("EVALSHA")
                .arg(sha)
                .arg(2)
                .arg(self.minute_key(key_id, minute))
                .arg(self.day_key(key_id, day))
                .arg(minute_expiry)
                .arg(day_expiry);
            let fields = [
                ("requests", tally.requests()),
                ("allowed", tally.allowed),
                ("denied", tally.denied),
                ("unanswered", tally.unanswered),
                ("latency_us", tally.latency_micros),
            ];
            for (field, n) in fields.into_iter().filter(|(_, n)| *n > 0) {
                command.arg(field).arg(n);
            }
            for (reason, n) in tally.reasons() {
                command.arg(format!("denied:{}", reason.as_str())).arg(n);
            }
            command.ignore();
        }
        pipe
    }

    async fn write(&self, pipe: &redis::Pipeline) -> redis::RedisResult<()> {
        let mut connection = self.connection.clone();
        match pipe.query_async::<()>(&mut connection).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // Redis restarted or its scripts were flushed: load it and
                // go again (every call failed alike, nothing was counted).
                self.script.load_async(&mut connection).await?;
                pipe.query_async::<()>(&mut connection).await
            }
            other => other,
        }
    }
}

/// Counts from a Redis hash (missing fields are 0; unknown ones ignored).
fn counts(hash: &HashMap<String, u64>) -> UsageCounts {
    let get = |field: &str| hash.get(field).copied().unwrap_or(0);
    let mut denied_by_reason: Vec<_> = hash
        .iter()
        .filter_map(|(field, n)| {
            let reason = reason_named(field.strip_prefix("denied:")?)?;
            Some((reason, *n))
        })
        .collect();
    denied_by_reason.sort_by_key(|(r, _)| super::query::reason_index(*r));
    UsageCounts {
        requests: get("requests"),
        allowed: get("allowed"),
        denied: get("denied"),
        unanswered: get("unanswered"),
        denied_by_reason,
        total_latency: Duration::from_micros(get("latency_us")),
    }
}

#[async_trait::async_trait]
impl<C> UsageExporter for RedisUsage<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn export(&mut self, batch: Vec<UsageEvent>) {
        let tallies: Vec<_> = tally(&batch, 60).into_iter().collect();
        if tallies.is_empty() {
            return;
        }
        let pipe = self.pipeline(&tallies, self.script.get_hash());
        let this = &*self;
        self.retry
            .run(&self.counters, "redis", batch.len(), || this.write(&pipe))
            .await;
    }
}

impl<C> fmt::Debug for RedisUsage<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUsage")
            .field("prefix", &self.prefix)
            .field("minute_retention", &self.minute_retention)
            .field("day_retention", &self.day_retention)
            .field("stats", &self.counters.stats())
            .finish_non_exhaustive()
    }
}
