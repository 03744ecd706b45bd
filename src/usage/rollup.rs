use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::query::{minute_time, reason_index, unix_minute, Tally};
use super::{
    EventKind, Outcome, TimeRange, UsageCounts, UsageEvent, UsageQuery, UsageQueryError, UsageRow,
    UsageSink, UsageSource,
};
use crate::key::{KeyId, KeyIdBuildHasher};
use crate::reject::RejectReason;

/// Per-key, per-minute usage in memory: a [`UsageSink`] that is also a
/// [`UsageSource`], for one process (a dashboard, an admin API, tests).
///
/// It answers the same queries as the PostgreSQL rollups, over the last
/// [`retention`](RollupSink::with_retention) (25 hours by default: enough
/// for a "last 24 hours" page). Like [`AggregatingSink`](super::AggregatingSink)
/// it counts request events of keys whose record exists, and nothing for
/// made-up key ids; it keeps about 32 bytes a minute in which a key was
/// used (some 46 KB for a key used every minute of a day).
///
/// Recording locks the key's own entry (never a global lock): cheap, but a
/// key hammered from many threads at once contends on it, where
/// `AggregatingSink` does not.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use keyward::usage::{RollupSink, TimeRange, UsageLayer, UsageQuery, UsageSource};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let usage = RollupSink::new();
/// let layer = UsageLayer::new(usage.clone());
/// // ... requests go through the layer ...
/// let hour = TimeRange::last(Duration::from_secs(3600), SystemTime::now());
/// let id = "abcdefABCDEF".parse()?;
/// assert_eq!(usage.total(&UsageQuery::key(id, hour)).await?.requests, 0);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RollupSink {
    inner: Arc<Inner>,
}

struct Inner {
    keys: papaya::HashMap<KeyId, Arc<Mutex<KeyRollups>>, KeyIdBuildHasher>,
    retention_minutes: u64,
}

#[derive(Default)]
struct KeyRollups {
    owner: Option<Arc<str>>,
    /// Ordered by minute, oldest first.
    minutes: VecDeque<Minute>,
}

/// One key's requests in one minute, small: counts past `u32::MAX` a
/// minute saturate.
struct Minute {
    minute: u32,
    allowed: u32,
    denied: u32,
    unanswered: u32,
    latency_micros: u64,
    /// Indexed like [`RejectReason::ALL`]; only once a request was refused.
    denied_by: Option<Box<[u32; RejectReason::ALL.len()]>>,
}

impl Minute {
    fn new(minute: u32) -> Self {
        Self {
            minute,
            allowed: 0,
            denied: 0,
            unanswered: 0,
            latency_micros: 0,
            denied_by: None,
        }
    }

    fn add(&mut self, event: &UsageEvent) {
        let bump = |n: &mut u32| *n = n.saturating_add(1);
        match event.outcome() {
            Outcome::Allowed => bump(&mut self.allowed),
            Outcome::Refused(reason) => {
                bump(&mut self.denied);
                let by = self
                    .denied_by
                    .get_or_insert_with(|| Box::new([0; RejectReason::ALL.len()]));
                if let Some(n) = by.get_mut(reason_index(reason)) {
                    bump(n);
                }
            }
            _ => bump(&mut self.unanswered),
        }
        let micros = u64::try_from(event.latency().as_micros()).unwrap_or(u64::MAX);
        self.latency_micros = self.latency_micros.saturating_add(micros);
    }

    fn add_to(&self, tally: &mut Tally) {
        tally.allowed += u64::from(self.allowed);
        tally.denied += u64::from(self.denied);
        tally.unanswered += u64::from(self.unanswered);
        tally.latency_micros = tally.latency_micros.saturating_add(self.latency_micros);
        if let Some(by) = &self.denied_by {
            for (sum, n) in tally.denied_by.iter_mut().zip(by.iter()) {
                *sum += u64::from(*n);
            }
        }
    }
}

fn lock(rollups: &Mutex<KeyRollups>) -> MutexGuard<'_, KeyRollups> {
    // Every update leaves the entry valid: a panic elsewhere changes nothing.
    rollups.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KeyRollups {
    fn add(&mut self, event: &UsageEvent, retention_minutes: u64) {
        if self.owner.is_none() {
            self.owner = event.owner().map(Into::into);
        }
        let minute = u32::try_from(unix_minute(event.at())).unwrap_or(u32::MAX);
        // Events arrive nearly in order: look from the back.
        let at = self
            .minutes
            .iter()
            .rposition(|m| m.minute <= minute)
            .map_or(0, |i| i + 1);
        if at > 0 && self.minutes[at - 1].minute == minute {
            self.minutes[at - 1].add(event);
        } else {
            let newest = self.minutes.back().map_or(minute, |m| m.minute.max(minute));
            if u64::from(minute) + retention_minutes <= u64::from(newest) {
                return; // older than what is kept
            }
            let mut fresh = Minute::new(minute);
            fresh.add(event);
            self.minutes.insert(at, fresh);
        }
        let newest = self.minutes.back().map_or(0, |m| u64::from(m.minute));
        while self
            .minutes
            .front()
            .is_some_and(|m| u64::from(m.minute) + retention_minutes <= newest)
        {
            self.minutes.pop_front();
        }
    }
}

impl RollupSink {
    /// An empty sink keeping 25 hours.
    pub fn new() -> Self {
        Self::with_retention(Duration::from_secs(25 * 3600))
    }

    /// An empty sink keeping each key's last `retention` (at least a
    /// minute), counted back from its latest request.
    pub fn with_retention(retention: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                keys: papaya::HashMap::builder()
                    .hasher(KeyIdBuildHasher)
                    .resize_mode(papaya::ResizeMode::Blocking)
                    .build(),
                retention_minutes: (retention.as_secs() / 60).max(1),
            }),
        }
    }

    fn entry(&self, id: KeyId) -> Arc<Mutex<KeyRollups>> {
        let keys = self.inner.keys.pin();
        match keys.get(&id) {
            Some(entry) => Arc::clone(entry),
            None => Arc::clone(keys.get_or_insert_with(id, Arc::default)),
        }
    }
}

impl Default for RollupSink {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl UsageSink for RollupSink {
    fn record(&self, event: UsageEvent) {
        if event.kind() != EventKind::Request {
            return;
        }
        if let Some(id) = super::aggregate::known_key(&event) {
            lock(&self.entry(id)).add(&event, self.inner.retention_minutes);
        }
    }
}

#[async_trait::async_trait]
impl UsageSource for RollupSink {
    async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, UsageQueryError> {
        let (first, end) = query.range.minutes();
        let mut keys: Vec<(KeyId, Arc<Mutex<KeyRollups>>)> = {
            let keys = self.inner.keys.pin();
            keys.iter()
                .map(|(id, entry)| (*id, Arc::clone(entry)))
                .collect()
        };
        keys.sort_unstable_by_key(|(id, _)| *id);
        let mut rows = Vec::new();
        let mut taken = 0;
        for (id, entry) in keys {
            if query.limit.is_some_and(|limit| taken >= limit) {
                break;
            }
            let entry = lock(&entry);
            if !query.selects(id, entry.owner.as_deref()) {
                continue;
            }
            // Bucket start (in minutes) → its counts.
            let mut buckets: BTreeMap<u64, Tally> = BTreeMap::new();
            for m in &entry.minutes {
                let minute = u64::from(m.minute);
                if minute < first || minute >= end {
                    continue;
                }
                let bucket = query.step.map_or(first, |step| step.bucket(minute).0);
                m.add_to(buckets.entry(bucket).or_default());
            }
            if buckets.is_empty() {
                continue;
            }
            taken += 1;
            let owner = entry.owner.as_deref().map(str::to_owned);
            drop(entry);
            for (bucket, tally) in buckets {
                let period = match query.step {
                    Some(step) => {
                        let (start, next) = step.bucket(bucket);
                        TimeRange::new(minute_time(start), minute_time(next))
                    }
                    None => TimeRange::new(minute_time(first), minute_time(end)),
                };
                rows.push(UsageRow {
                    key_id: id,
                    owner: owner.clone(),
                    period,
                    counts: tally.counts(),
                });
            }
        }
        Ok(rows)
    }

    async fn total(&self, query: &UsageQuery) -> Result<UsageCounts, UsageQueryError> {
        let (first, end) = query.range.minutes();
        let whole = UsageQuery {
            after: None,
            ..query.clone()
        };
        let mut sum = Tally::default();
        let keys = self.inner.keys.pin();
        for (id, entry) in keys.iter() {
            let entry = lock(entry);
            if whole.selects(*id, entry.owner.as_deref()) {
                for m in &entry.minutes {
                    if (first..end).contains(&u64::from(m.minute)) {
                        m.add_to(&mut sum);
                    }
                }
            }
        }
        Ok(sum.counts())
    }
}

impl fmt::Debug for RollupSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RollupSink")
            .field("keys", &self.inner.keys.len())
            .field("retention_minutes", &self.inner.retention_minutes)
            .finish()
    }
}
