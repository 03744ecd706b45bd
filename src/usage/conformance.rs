//! The conformance suite that every [`UsageSource`] runs (feature
//! `test-util`).
//!
//! Call [`run`] with your source and a function that delivers a batch of
//! events to it (records them into your sink, exports them, then waits
//! until they are readable). It uses fresh random key ids and owners on
//! each call, so it can run again and again against a persistent backend.
//! It panics, with a message naming the broken promise, on the first
//! failure.
//!
//! # Example
//!
//! ```
//! use keyward::usage::{conformance, RollupSink, UsageSink};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let sink = RollupSink::new();
//! conformance::run(&sink, |batch| {
//!     for event in batch {
//!         sink.record(event);
//!     }
//!     async {}
//! })
//! .await;
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;

use super::event::{RequestFacts, Size};
use super::{
    Lifecycle, Outcome, Step, TimeRange, UsageEvent, UsageQuery, UsageRow, UsageScope, UsageSource,
};
use crate::auth::Principal;
use crate::key::{KeyFormat, KeyGenerator, KeyHasher, KeyId};
use crate::record::KeyRecord;
use crate::reject::RejectReason;

/// Runs every check against `source`, delivering events with `deliver`.
pub async fn run<S, D, F>(source: &S, mut deliver: D)
where
    S: UsageSource + ?Sized,
    D: FnMut(Vec<UsageEvent>) -> F,
    F: Future<Output = ()>,
{
    let world = World::new();
    deliver(world.events()).await;
    key_totals_count_every_outcome(source, &world).await;
    unknown_keys_and_lifecycle_events_are_not_counted(source, &world).await;
    owners_select_their_keys_only(source, &world).await;
    ranges_cover_the_minutes_they_overlap(source, &world).await;
    series_have_one_row_per_key_and_bucket(source, &world).await;
    every_key_pages_in_key_order(source, &world).await;
    a_second_delivery_adds_up(source, &world, &mut deliver).await;
}

/// The keys and times one run uses.
struct World {
    /// Two keys of an owner whose name has quotes, `%`, `_`, a backslash
    /// and non-ASCII letters in it.
    a: Principal,
    b: Principal,
    /// A key of an owner whose name is a `LIKE` pattern matching the first.
    other: Principal,
    unknown: KeyId,
    /// A whole hour (UTC), in the past.
    hour: SystemTime,
}

fn fresh(owner: &str) -> Principal {
    let generator = KeyGenerator::new(KeyFormat::new("conformance").expect("valid prefix"));
    let key = generator.generate().expect("OS randomness");
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        owner,
        UNIX_EPOCH,
    );
    Principal::new(Arc::new(record))
}

fn random_id() -> KeyId {
    let generator = KeyGenerator::new(KeyFormat::new("conformance").expect("valid prefix"));
    generator.generate().expect("OS randomness").id()
}

impl World {
    fn new() -> Self {
        let tag = random_id();
        let owner = format!("o'wner \"{tag}\" 100% _x_ \\ é ✓");
        // A random hour of 2020, so that runs do not share minutes.
        let hours =
            u64::from(tag.as_str().as_bytes()[0]) * 31 + u64::from(tag.as_str().as_bytes()[1]);
        Self {
            a: fresh(&owner),
            b: fresh(&owner),
            other: fresh(&format!("o_wner %{tag}%")),
            unknown: random_id(),
            hour: UNIX_EPOCH + Duration::from_secs(1_577_836_800 + hours * 3600),
        }
    }

    fn owner(&self) -> &str {
        self.a.owner()
    }

    fn at(&self, minute: u64, second: u64) -> SystemTime {
        self.hour + Duration::from_secs(minute * 60 + second)
    }

    /// Key `a`: minute 0: 2 allowed (10 ms, 20 ms), 1 rate limited, 1
    /// failed; minute 1: 1 allowed, 1 revoked (no principal: the record was
    /// found, the key refused); minute 61: 1 allowed. Key `b`: minute 0: 1
    /// allowed. `other`: minute 0: 1 allowed. Plus an unknown id's request
    /// and a lifecycle event, neither counted.
    fn events(&self) -> Vec<UsageEvent> {
        let ms = Duration::from_millis;
        let ok = Outcome::Allowed;
        vec![
            request(self.at(0, 1), Some(&self.a), None, ok, ms(10)),
            request(self.at(0, 59), Some(&self.a), None, ok, ms(20)),
            request(
                self.at(0, 30),
                Some(&self.a),
                None,
                refused(RejectReason::RateLimited),
                ms(1),
            ),
            request(self.at(0, 30), Some(&self.a), None, Outcome::Failed, ms(5)),
            request(self.at(1, 0), Some(&self.a), None, ok, ms(3)),
            request(
                self.at(1, 2),
                None,
                Some(self.a.key_id()),
                refused(RejectReason::Revoked),
                ms(1),
            ),
            request(self.at(61, 0), Some(&self.a), None, ok, ms(1)),
            request(self.at(0, 5), Some(&self.b), None, ok, ms(2)),
            request(self.at(0, 5), Some(&self.other), None, ok, ms(2)),
            request(
                self.at(0, 6),
                None,
                Some(self.unknown),
                refused(RejectReason::UnknownKey),
                ms(1),
            ),
            UsageEvent::lifecycle(
                Lifecycle::Issued,
                self.a.key_id(),
                self.owner(),
                self.at(0, 7),
            ),
        ]
    }

    fn first_two_hours(&self) -> TimeRange {
        TimeRange::new(self.hour, self.at(120, 0))
    }
}

fn refused(reason: RejectReason) -> Outcome {
    Outcome::Refused(reason)
}

fn request(
    at: SystemTime,
    principal: Option<&Principal>,
    key_id: Option<KeyId>,
    outcome: Outcome,
    latency: Duration,
) -> UsageEvent {
    let facts = RequestFacts {
        at,
        method: http::Method::GET,
        route: None,
        request_size: Size::new(None),
        tags: None,
    };
    let status = match outcome {
        Outcome::Allowed => StatusCode::OK,
        Outcome::Refused(RejectReason::RateLimited) => StatusCode::TOO_MANY_REQUESTS,
        Outcome::Refused(_) => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    UsageEvent::request(
        facts,
        principal.cloned(),
        key_id,
        Some(status),
        outcome,
        latency,
        None,
    )
}

fn ours(rows: Vec<UsageRow>, world: &World) -> Vec<UsageRow> {
    let keys = [world.a.key_id(), world.b.key_id(), world.other.key_id()];
    rows.into_iter()
        .filter(|r| keys.contains(&r.key_id))
        .collect()
}

async fn query<S: UsageSource + ?Sized>(source: &S, query: UsageQuery) -> Vec<UsageRow> {
    source.query(&query).await.expect("the source answers")
}

async fn key_totals_count_every_outcome<S: UsageSource + ?Sized>(source: &S, world: &World) {
    let rows = query(
        source,
        UsageQuery::key(world.a.key_id(), world.first_two_hours()),
    )
    .await;
    assert_eq!(rows.len(), 1, "one row per key without a step: {rows:?}");
    let row = &rows[0];
    assert_eq!(row.key_id, world.a.key_id());
    assert_eq!(
        row.owner.as_deref(),
        Some(world.owner()),
        "the owner, byte for byte"
    );
    assert_eq!(
        row.period,
        world.first_two_hours(),
        "the period is the range, on minutes"
    );
    let c = &row.counts;
    assert_eq!(
        (c.requests, c.allowed, c.denied, c.unanswered),
        (7, 4, 2, 1),
        "every outcome counted: {c:?}"
    );
    assert_eq!(
        c.denied_by_reason,
        vec![(RejectReason::Revoked, 1), (RejectReason::RateLimited, 1)],
        "refusals by reason, in RejectReason::ALL's order"
    );
    assert_eq!(
        c.total_latency,
        Duration::from_millis(41),
        "latencies summed"
    );
}

async fn unknown_keys_and_lifecycle_events_are_not_counted<S: UsageSource + ?Sized>(
    source: &S,
    world: &World,
) {
    let rows = query(
        source,
        UsageQuery::key(world.unknown, world.first_two_hours()),
    )
    .await;
    assert!(rows.is_empty(), "a made-up key id has no usage: {rows:?}");
    let all = query(source, UsageQuery::all(world.first_two_hours())).await;
    assert!(all.iter().all(|r| r.key_id != world.unknown));
}

async fn owners_select_their_keys_only<S: UsageSource + ?Sized>(source: &S, world: &World) {
    let range = world.first_two_hours();
    let rows = query(source, UsageQuery::owner(world.owner(), range)).await;
    let mut expected = vec![world.a.key_id(), world.b.key_id()];
    expected.sort();
    let keys: Vec<KeyId> = rows.iter().map(|r| r.key_id).collect();
    assert_eq!(
        keys, expected,
        "the owner's keys, in key order, and no other"
    );
    let total = source
        .total(&UsageQuery::owner(world.owner(), range))
        .await
        .expect("total");
    assert_eq!((total.requests, total.allowed), (8, 5), "the owner's total");
    // Owner names are compared as they are, not as patterns.
    for pattern in ["o_wner%", "%", "_", "o'wner"] {
        let rows = query(source, UsageQuery::owner(pattern, range)).await;
        assert!(
            ours(rows, world).is_empty(),
            "owner {pattern:?} is not a pattern"
        );
    }
    let rows = query(source, UsageQuery::owner(world.other.owner(), range)).await;
    assert_eq!(
        rows.len(),
        1,
        "an owner whose name looks like a LIKE pattern"
    );
}

async fn ranges_cover_the_minutes_they_overlap<S: UsageSource + ?Sized>(source: &S, world: &World) {
    let a = world.a.key_id();
    // Half of minute 0 and nothing of minute 1: minute 0 counts whole.
    let range = TimeRange::new(world.at(0, 30), world.at(1, 0));
    let c = source
        .total(&UsageQuery::key(a, range))
        .await
        .expect("total");
    assert_eq!(c.requests, 4, "minute 0 only: {c:?}");
    // A millisecond into minute 1 takes all of it.
    let range = TimeRange::new(world.at(0, 59), world.at(1, 0) + Duration::from_millis(1));
    let c = source
        .total(&UsageQuery::key(a, range))
        .await
        .expect("total");
    assert_eq!(c.requests, 6);
    // After the requests, and an empty range.
    let range = TimeRange::new(world.at(62, 0), world.at(600, 0));
    assert_eq!(
        source
            .total(&UsageQuery::key(a, range))
            .await
            .expect("total")
            .requests,
        0
    );
    let empty = TimeRange::new(world.at(0, 0), world.at(0, 0));
    assert!(query(source, UsageQuery::key(a, empty)).await.is_empty());
}

async fn series_have_one_row_per_key_and_bucket<S: UsageSource + ?Sized>(
    source: &S,
    world: &World,
) {
    let a = world.a.key_id();
    let rows = query(
        source,
        UsageQuery::key(a, world.first_two_hours()).step(Step::MINUTE),
    )
    .await;
    let got: Vec<(SystemTime, u64, u64)> = rows
        .iter()
        .map(|r| (r.period.start(), r.counts.allowed, r.counts.denied))
        .collect();
    assert_eq!(
        got,
        vec![
            (world.at(0, 0), 2, 1),
            (world.at(1, 0), 1, 1),
            (world.at(61, 0), 1, 0)
        ],
        "minute buckets, allowed and denied apart, empty minutes left out"
    );
    assert_eq!(rows[0].period.end(), world.at(1, 0));
    let rows = query(
        source,
        UsageQuery::owner(world.owner(), world.first_two_hours()).step(Step::HOUR),
    )
    .await;
    let got: Vec<(KeyId, SystemTime, u64)> = rows
        .iter()
        .map(|r| (r.key_id, r.period.start(), r.counts.requests))
        .collect();
    let mut expected = vec![
        (a, world.at(0, 0), 6),
        (a, world.at(60, 0), 1),
        (world.b.key_id(), world.at(0, 0), 1),
    ];
    expected.sort_by_key(|(id, at, _)| (*id, *at));
    assert_eq!(got, expected, "hour buckets, by key then time");
    assert_eq!(
        rows[0].period.end() - Duration::from_secs(3600),
        rows[0].period.start()
    );
}

async fn every_key_pages_in_key_order<S: UsageSource + ?Sized>(source: &S, world: &World) {
    let range = world.first_two_hours();
    let all = ours(query(source, UsageQuery::all(range)).await, world);
    assert_eq!(all.len(), 3, "every key with usage in the range: {all:?}");
    assert!(
        all.windows(2).all(|w| w[0].key_id < w[1].key_id),
        "ordered by key id"
    );
    // One key a page, hourly buckets: both of a's buckets come on its page.
    let mut seen = Vec::new();
    let mut page = UsageQuery::all(range).step(Step::HOUR).limit(1);
    loop {
        let rows = query(source, page.clone()).await;
        let Some(last) = rows.last() else { break };
        assert!(
            rows.iter().all(|r| r.key_id == last.key_id),
            "one key a page"
        );
        seen.push((last.key_id, rows.len()));
        page = page.after(last.key_id);
    }
    let seen: Vec<(KeyId, usize)> = seen
        .into_iter()
        .filter(|(id, _)| all.iter().any(|r| r.key_id == *id))
        .collect();
    let a = world.a.key_id();
    let mut expected: Vec<(KeyId, usize)> = all
        .iter()
        .map(|r| (r.key_id, if r.key_id == a { 2 } else { 1 }))
        .collect();
    expected.sort();
    assert_eq!(
        seen, expected,
        "paging visits each key once, with all its buckets"
    );
    assert!(matches!(UsageQuery::all(range).scope, UsageScope::All));
}

async fn a_second_delivery_adds_up<S, D, F>(source: &S, world: &World, deliver: &mut D)
where
    S: UsageSource + ?Sized,
    D: FnMut(Vec<UsageEvent>) -> F,
    F: Future<Output = ()>,
{
    let b = world.b.key_id();
    let ok = Outcome::Allowed;
    let ms = Duration::from_millis;
    deliver(vec![
        request(world.at(0, 50), Some(&world.b), None, ok, ms(1)),
        request(
            world.at(0, 51),
            Some(&world.b),
            None,
            refused(RejectReason::QuotaExhausted),
            ms(1),
        ),
    ])
    .await;
    let c = source
        .total(&UsageQuery::key(b, world.first_two_hours()))
        .await
        .expect("total");
    assert_eq!(
        (
            c.requests,
            c.allowed,
            c.denied_for(RejectReason::QuotaExhausted)
        ),
        (3, 2, 1),
        "a later batch adds to the same minute: {c:?}"
    );
}
