//! Reading usage back: the [`UsageSource`] trait, what it is asked
//! ([`UsageQuery`]) and what it answers ([`UsageRow`], [`UsageCounts`]).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(any(feature = "postgres", feature = "redis"))]
use super::{EventKind, Outcome, UsageEvent};
use crate::key::KeyId;
use crate::reject::RejectReason;

/// Where a dashboard, a billing job or an admin API reads usage from: per
/// key, per owner or for every key, over a time range, as totals or as a
/// series of buckets.
///
/// Implemented by [`RollupSink`](super::RollupSink) (in memory, one
/// process) and by `PgUsage` (feature `postgres`, every process that
/// exports into the database). Share it as `Arc<dyn UsageSource>`; every
/// implementation runs the same conformance suite
/// (`usage::conformance`, feature `test-util`).
///
/// Usage is counted per key and per minute (UTC, aligned to the Unix
/// epoch): a range covers every minute that overlaps it. Only requests by
/// keys whose record exists are counted (as in
/// [`AggregatingSink`](super::AggregatingSink)): made-up key ids cannot
/// fill the rollups.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use keyward::usage::{RollupSink, Step, TimeRange, UsageQuery, UsageSource};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let usage = RollupSink::new(); // also a UsageSink: put it in a UsageLayer
/// let last_day = TimeRange::last(Duration::from_secs(24 * 3600), SystemTime::now());
///
/// // A usage page: each key's requests over the last 24 hours, hour by hour,
/// // 50 keys a page.
/// let page = usage.query(&UsageQuery::all(last_day).step(Step::HOUR).limit(50)).await?;
/// for row in &page {
///     println!("{} {:?}: {} allowed, {} denied",
///         row.key_id, row.period.start(), row.counts.allowed, row.counts.denied);
/// }
/// // A billing job: one owner's total.
/// let bill = usage.total(&UsageQuery::owner("acme", last_day)).await?;
/// assert_eq!(bill.requests, 0);
/// # Ok(())
/// # }
/// ```
#[async_trait::async_trait]
pub trait UsageSource: fmt::Debug + Send + Sync + 'static {
    /// The usage the query asks for: one row per key (and per bucket, with
    /// a [`step`](UsageQuery::step)), ordered by key id and then by time.
    /// Keys and buckets without requests in the range are left out.
    async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, UsageQueryError>;

    /// Everything the query selects added up (its step, `after` and
    /// `limit` ignored): what a billing job asks for an owner's month.
    async fn total(&self, query: &UsageQuery) -> Result<UsageCounts, UsageQueryError> {
        let whole = UsageQuery {
            step: None,
            after: None,
            limit: None,
            ..query.clone()
        };
        let mut total = UsageCounts::default();
        for row in self.query(&whole).await? {
            total.add(&row.counts);
        }
        Ok(total)
    }
}

#[async_trait::async_trait]
impl<S: UsageSource + ?Sized> UsageSource for std::sync::Arc<S> {
    async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, UsageQueryError> {
        (**self).query(query).await
    }

    async fn total(&self, query: &UsageQuery) -> Result<UsageCounts, UsageQueryError> {
        (**self).total(query).await
    }
}

/// Why a [`UsageSource`] could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageQueryError {
    /// The backend failed (connection, timeout, a row it could not read).
    #[error("usage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl UsageQueryError {
    /// Wraps a backend's own error.
    pub fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(error))
    }
}

/// A span of time, `[start, end)`. With the `serde` feature it serializes
/// as `{"start": "<RFC 3339>", "end": "<RFC 3339>"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TimeRange {
    #[cfg_attr(feature = "serde", serde(with = "crate::rfc3339::serde"))]
    start: SystemTime,
    #[cfg_attr(feature = "serde", serde(with = "crate::rfc3339::serde"))]
    end: SystemTime,
}

impl TimeRange {
    /// From `start` up to, not including, `end`; empty if `end` is not
    /// after `start`.
    pub fn new(start: SystemTime, end: SystemTime) -> Self {
        Self {
            start,
            end: end.max(start),
        }
    }

    /// The `length` of time up to `now` (from your
    /// [`Clock`](crate::clock::Clock)): `last(24 h, now)` for a usage page.
    pub fn last(length: Duration, now: SystemTime) -> Self {
        Self::new(now.checked_sub(length).unwrap_or(UNIX_EPOCH), now)
    }

    /// Where it starts.
    pub fn start(&self) -> SystemTime {
        self.start
    }

    /// Where it ends (not included).
    pub fn end(&self) -> SystemTime {
        self.end
    }

    /// Whether it holds no time at all.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// The minutes it overlaps, as Unix minutes `[first, end)`.
    pub(crate) fn minutes(&self) -> (u64, u64) {
        if self.is_empty() {
            return (0, 0);
        }
        let first = unix_minute(self.start);
        // Every minute that starts before `end`.
        let end_nanos = self
            .end
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let end = u64::try_from(end_nanos.div_ceil(60_000_000_000)).unwrap_or(u64::MAX);
        (first, end)
    }
}

/// The width of a series' buckets: whole minutes, aligned to the Unix
/// epoch (so `Step::HOUR` buckets start on UTC hours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Step(u32);

impl Step {
    /// One minute, the finest step.
    pub const MINUTE: Step = Step(1);
    /// One hour.
    pub const HOUR: Step = Step(60);
    /// One day (UTC).
    pub const DAY: Step = Step(1440);

    /// `minutes` minutes (at least one).
    pub fn minutes(minutes: u32) -> Self {
        Self(minutes.max(1))
    }

    /// Its width in minutes.
    pub fn as_minutes(&self) -> u32 {
        self.0
    }

    /// The bucket holding Unix minute `minute`, and the next one's start.
    pub(crate) fn bucket(&self, minute: u64) -> (u64, u64) {
        let width = u64::from(self.0);
        let start = minute - minute % width;
        (start, start + width)
    }
}

/// Whose usage a [`UsageQuery`] selects.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageScope {
    /// One key.
    Key(KeyId),
    /// Every key of one owner.
    Owner(String),
    /// Every key.
    All,
}

/// What a [`UsageSource`] is asked: whose usage, over which range, in
/// buckets or not, one page of keys or all.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct UsageQuery {
    /// Whose usage.
    pub scope: UsageScope,
    /// Over which time.
    pub range: TimeRange,
    /// `None`: one row per key for the whole range; else one per key and
    /// bucket.
    pub step: Option<Step>,
    /// Only keys whose id sorts after this one (the last key of the
    /// previous page).
    pub after: Option<KeyId>,
    /// At most this many keys (all their buckets are returned).
    pub limit: Option<usize>,
}

impl UsageQuery {
    /// One key's usage over `range`.
    pub fn key(key_id: KeyId, range: TimeRange) -> Self {
        Self::new(UsageScope::Key(key_id), range)
    }

    /// The usage of each of `owner`'s keys over `range`.
    pub fn owner(owner: impl Into<String>, range: TimeRange) -> Self {
        Self::new(UsageScope::Owner(owner.into()), range)
    }

    /// The usage of every key over `range`.
    pub fn all(range: TimeRange) -> Self {
        Self::new(UsageScope::All, range)
    }

    fn new(scope: UsageScope, range: TimeRange) -> Self {
        Self {
            scope,
            range,
            step: None,
            after: None,
            limit: None,
        }
    }

    /// Buckets of `step` instead of one total per key.
    pub fn step(mut self, step: Step) -> Self {
        self.step = Some(step);
        self
    }

    /// Only keys after `key_id` (for paging).
    pub fn after(mut self, key_id: KeyId) -> Self {
        self.after = Some(key_id);
        self
    }

    /// At most `keys` keys.
    pub fn limit(mut self, keys: usize) -> Self {
        self.limit = Some(keys);
        self
    }

    /// Whether a key of `owner` is selected (ignoring paging).
    pub(crate) fn selects(&self, key_id: KeyId, owner: Option<&str>) -> bool {
        let after = self.after.is_none_or(|after| key_id > after);
        after
            && match &self.scope {
                UsageScope::Key(id) => *id == key_id,
                UsageScope::Owner(wanted) => owner == Some(wanted.as_str()),
                UsageScope::All => true,
            }
    }
}

/// The usage of one key over one period. With the `serde` feature it
/// serializes as `{"key_id", "owner", "period": {"start", "end"}, "counts"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct UsageRow {
    /// The key.
    pub key_id: KeyId,
    /// Its owner, as recorded with its requests (`None` if none of them
    /// named it, such as a key only ever refused as revoked or expired).
    pub owner: Option<String>,
    /// The bucket, or the whole range (both on minute boundaries).
    pub period: TimeRange,
    /// What it did then.
    pub counts: UsageCounts,
}

/// Requests counted over a period.
///
/// With the `serde` feature it serializes as `{"requests", "allowed",
/// "denied", "unanswered", "denied_by_reason": {"<reason>": n, ...},
/// "total_latency_us"}`, reasons named by [`RejectReason::as_str`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct UsageCounts {
    /// Requests recorded: `allowed + denied + unanswered`.
    pub requests: u64,
    /// Requests no keyward layer refused.
    pub allowed: u64,
    /// Requests a keyward layer refused.
    pub denied: u64,
    /// Requests that ended with a service error or were cancelled.
    pub unanswered: u64,
    /// The refusals by reason, in [`RejectReason::ALL`]'s order; reasons
    /// with none are left out.
    #[cfg_attr(feature = "serde", serde(serialize_with = "serde_impl::reasons"))]
    pub denied_by_reason: Vec<(RejectReason, u64)>,
    /// The sum of the requests' latencies (to the microsecond).
    #[cfg_attr(
        feature = "serde",
        serde(rename = "total_latency_us", serialize_with = "serde_impl::micros")
    )]
    pub total_latency: Duration,
}

#[cfg(feature = "serde")]
mod serde_impl {
    use std::time::Duration;

    use serde::ser::{SerializeMap, Serializer};

    use crate::reject::RejectReason;

    pub(super) fn reasons<S: Serializer>(
        reasons: &[(RejectReason, u64)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(reasons.len()))?;
        for (reason, n) in reasons {
            map.serialize_entry(reason.as_str(), n)?;
        }
        map.end()
    }

    pub(super) fn micros<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

impl UsageCounts {
    /// The number of refusals for `reason`.
    pub fn denied_for(&self, reason: RejectReason) -> u64 {
        self.denied_by_reason
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// The mean latency, if there were requests.
    pub fn mean_latency(&self) -> Option<Duration> {
        let n = u32::try_from(self.requests).ok().filter(|n| *n > 0)?;
        Some(self.total_latency / n)
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &UsageCounts) {
        self.requests += other.requests;
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.unanswered += other.unanswered;
        self.total_latency += other.total_latency;
        for (reason, n) in &other.denied_by_reason {
            match self.denied_by_reason.iter_mut().find(|(r, _)| r == reason) {
                Some((_, mine)) => *mine += n,
                None => self.denied_by_reason.push((*reason, *n)),
            }
        }
        self.denied_by_reason.sort_by_key(|(r, _)| reason_index(*r));
    }
}

/// The reason's place in [`RejectReason::ALL`].
pub(crate) fn reason_index(reason: RejectReason) -> usize {
    RejectReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(usize::MAX)
}

/// The reason called `name` ([`RejectReason::as_str`]).
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) fn reason_named(name: &str) -> Option<RejectReason> {
    RejectReason::ALL.into_iter().find(|r| r.as_str() == name)
}

pub(crate) fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn unix_minute(time: SystemTime) -> u64 {
    unix_secs(time) / 60
}

pub(crate) fn minute_time(minute: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(minute.saturating_mul(60))
}

/// The counts of one key in one bucket, as the exporters add them up before
/// writing: what one batch adds to a rollup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) owner: Option<std::sync::Arc<str>>,
    pub(crate) allowed: u64,
    pub(crate) denied: u64,
    pub(crate) unanswered: u64,
    pub(crate) latency_micros: u64,
    /// Indexed like [`RejectReason::ALL`].
    pub(crate) denied_by: [u64; RejectReason::ALL.len()],
    /// When its latest request arrived.
    pub(crate) last_at: Option<SystemTime>,
}

impl Tally {
    #[cfg(any(feature = "postgres", feature = "redis"))]
    pub(crate) fn add(&mut self, event: &UsageEvent) {
        match event.outcome() {
            Outcome::Allowed => self.allowed += 1,
            Outcome::Refused(reason) => {
                self.denied += 1;
                if let Some(n) = self.denied_by.get_mut(reason_index(reason)) {
                    *n += 1;
                }
            }
            _ => self.unanswered += 1,
        }
        let micros = u64::try_from(event.latency().as_micros()).unwrap_or(u64::MAX);
        self.latency_micros = self.latency_micros.saturating_add(micros);
        if self.owner.is_none() {
            self.owner = event.owner().map(Into::into);
        }
        self.last_at = self.last_at.max(Some(event.at()));
    }

    pub(crate) fn requests(&self) -> u64 {
        self.allowed + self.denied + self.unanswered
    }

    pub(crate) fn counts(&self) -> UsageCounts {
        UsageCounts {
            requests: self.requests(),
            allowed: self.allowed,
            denied: self.denied,
            unanswered: self.unanswered,
            denied_by_reason: self.reasons().collect(),
            total_latency: Duration::from_micros(self.latency_micros),
        }
    }

    /// The refusals by reason, those with none left out.
    pub(crate) fn reasons(&self) -> impl Iterator<Item = (RejectReason, u64)> + '_ {
        RejectReason::ALL
            .into_iter()
            .zip(self.denied_by)
            .filter(|(_, n)| *n > 0)
    }
}

/// A batch's requests added up per key and per bucket of `width` seconds
/// (the bucket's start in Unix seconds): only request events of keys whose
/// record exists, ordered by key id and bucket (so that writers lock rows
/// in one order).
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) fn tally(
    batch: &[UsageEvent],
    width_secs: u64,
) -> std::collections::BTreeMap<(KeyId, u64), Tally> {
    let mut out = std::collections::BTreeMap::<(KeyId, u64), Tally>::new();
    for event in batch {
        if event.kind() != EventKind::Request {
            continue;
        }
        let Some(key_id) = super::aggregate::known_key(event) else {
            continue;
        };
        let secs = unix_secs(event.at());
        let bucket = secs - secs % width_secs;
        out.entry((key_id, bucket)).or_default().add(event);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_range_covers_every_minute_it_overlaps() {
        assert_eq!(TimeRange::new(at(120), at(180)).minutes(), (2, 3));
        assert_eq!(TimeRange::new(at(130), at(181)).minutes(), (2, 4));
        assert_eq!(TimeRange::new(at(179), at(180)).minutes(), (2, 3));
        let sub = at(180) + Duration::from_millis(1);
        assert_eq!(TimeRange::new(at(180), sub).minutes(), (3, 4));
        assert_eq!(TimeRange::new(at(180), at(180)).minutes(), (0, 0));
        assert!(TimeRange::new(at(200), at(100)).is_empty());
    }

    #[test]
    fn steps_align_to_the_epoch() {
        assert_eq!(Step::HOUR.bucket(61), (60, 120));
        assert_eq!(Step::minutes(0), Step::MINUTE);
        assert_eq!(Step::DAY.bucket(1439), (0, 1440));
    }

    #[test]
    fn counts_add_up_by_reason() {
        let mut a = UsageCounts {
            requests: 2,
            denied: 2,
            denied_by_reason: vec![(RejectReason::Revoked, 2)],
            ..UsageCounts::default()
        };
        let b = UsageCounts {
            requests: 1,
            denied: 1,
            denied_by_reason: vec![(RejectReason::MissingKey, 1)],
            ..UsageCounts::default()
        };
        a.add(&b);
        a.add(&b);
        assert_eq!(
            a.denied_by_reason,
            vec![(RejectReason::MissingKey, 2), (RejectReason::Revoked, 2)]
        );
        assert_eq!((a.requests, a.denied_for(RejectReason::MissingKey)), (4, 2));
    }
}
