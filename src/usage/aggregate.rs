use std::cell::RefCell;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{EventKind, Outcome, UsageEvent, UsageSink};
use crate::clock::epoch_nanos;
use crate::key::{KeyId, KeyIdBuildHasher};
use crate::reject::RejectReason;

/// Counts requests per key in memory, for dashboards and billing; read
/// them with [`snapshot`](AggregatingSink::snapshot).
///
/// Recording takes no lock: atomic increments on the key's counters, found
/// in a small per-thread cache of recently used keys, else in a lock-free
/// map. Clones share the same counters.
///
/// Only keys that exist get an entry, and only from callers that hold their
/// secret: requests by an authenticated key, or refused for a key whose
/// secret was right (expired, not yet valid, disabled, revoked). Everything
/// else — no key, a malformed key, an unknown id, a wrong secret — is
/// counted in [`anonymous`](AggregatingSink::anonymous), so that made-up
/// key ids cannot grow the map, and a known id with a wrong secret is
/// recorded as an unknown one is (its timing must not tell which ids
/// exist). Lifecycle events are not counted.
#[derive(Clone, Default)]
pub struct AggregatingSink {
    inner: Arc<Inner>,
}

/// The counters of one aggregate.
///
/// Entries of `keys` are never removed or replaced: each thread's
/// [`RECENT_KEYS`] keeps `Arc`s to counters and counts into them without
/// looking in the map. Anything that removes or resets a key must first
/// make those caches miss (for example by giving the aggregate a new `id`),
/// or counts would go to counters the map no longer holds.
struct Inner {
    /// Entries are never removed or replaced, so a thread may keep a key's
    /// `Arc` in [`RECENT_KEYS`] and count into it without a look-up.
    keys: papaya::HashMap<KeyId, Arc<Counters>, KeyIdBuildHasher>,
    anonymous: Counters,
    /// Tells this aggregate's entries in [`RECENT_KEYS`] from another's.
    id: u64,
}

impl Default for Inner {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            // Resizes finish in the inserting call, so that recording for
            // known keys never probes a half-copied table.
            keys: papaya::HashMap::builder()
                .hasher(KeyIdBuildHasher)
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            anonymous: Counters::default(),
            id: NEXT_ID.fetch_add(1, Relaxed),
        }
    }
}

/// How many keys each thread remembers (a power of two).
const RECENT: usize = 16;

/// `(aggregate id, key, its counters)`, direct-mapped by the key's hash.
type RecentKeys = [Option<(u64, KeyId, Arc<Counters>)>; RECENT];

thread_local! {
    /// The counters this thread recorded into lately: a hot key is counted
    /// with a thread-local compare instead of a map look-up (which pins an
    /// epoch and hashes).
    static RECENT_KEYS: RefCell<RecentKeys> = const { RefCell::new([const { None }; RECENT]) };
}

impl Inner {
    fn add(&self, id: KeyId, event: &UsageEvent) {
        let slot = (KeyIdBuildHasher.hash_one(id) as usize) & (RECENT - 1);
        let counted = RECENT_KEYS.try_with(|recent| {
            // Not borrowed elsewhere: `add` calls nothing that records.
            let Ok(mut recent) = recent.try_borrow_mut() else {
                return false;
            };
            if let Some((aggregate, key, counters)) = &recent[slot] {
                if *aggregate == self.id && *key == id {
                    counters.add(event);
                    return true;
                }
            }
            let counters = self.counters(id);
            counters.add(event);
            recent[slot] = Some((self.id, id, counters));
            true
        });
        // The thread is exiting (its locals are gone), or re-entered: count
        // through the map.
        if counted != Ok(true) {
            self.counters(id).add(event);
        }
    }

    /// The key's counters, made on its first event.
    fn counters(&self, id: KeyId) -> Arc<Counters> {
        let keys = self.keys.pin();
        match keys.get(&id) {
            Some(counters) => Arc::clone(counters),
            None => Arc::clone(keys.get_or_insert_with(id, Arc::default)),
        }
    }
}

/// One counter a reason.
const REASONS: [RejectReason; RejectReason::ALL.len()] = RejectReason::ALL;

/// One key's counters. An allowed request touches only the first cache
/// line (its outcome, status class, latency and time), so that a hot key
/// used from several threads moves one line between cores, not three; the
/// request count is the sum of the outcomes, not a counter of its own.
#[derive(Default)]
#[repr(C, align(64))]
struct Counters {
    allowed: AtomicU64,
    statuses: [AtomicU64; 5],
    latency_nanos: AtomicU64,
    last_used_nanos: AtomicU64,
    denied: AtomicU64,
    unanswered: AtomicU64,
    owner: OnceLock<Arc<str>>,
    denied_by: [AtomicU64; REASONS.len()],
}

impl Counters {
    fn add(&self, event: &UsageEvent) {
        match event.outcome() {
            Outcome::Allowed => {
                self.allowed.fetch_add(1, Relaxed);
            }
            Outcome::Refused(reason) => {
                self.denied.fetch_add(1, Relaxed);
                // `REASONS` lists the reasons in declaration order (tested).
                if let Some(counter) = self.denied_by.get(reason as usize) {
                    counter.fetch_add(1, Relaxed);
                }
            }
            _ => {
                self.unanswered.fetch_add(1, Relaxed);
            }
        }
        if let Some(status) = event.status() {
            let class = usize::from(status.as_u16() / 100);
            if (1..=5).contains(&class) {
                self.statuses[class - 1].fetch_add(1, Relaxed);
            }
        }
        self.latency_nanos.fetch_add(event.latency_nanos(), Relaxed);
        let at = epoch_nanos(event.at());
        self.last_used_nanos.fetch_max(at, Relaxed);
        if self.owner.get().is_none() {
            if let Some(owner) = event.owner() {
                let _ = self.owner.set(owner.into());
            }
        }
    }

    fn snapshot(&self, key_id: Option<KeyId>) -> KeyUsage {
        let count = |c: &AtomicU64| c.load(Relaxed);
        let last = count(&self.last_used_nanos);
        let (allowed, denied, unanswered) = (
            count(&self.allowed),
            count(&self.denied),
            count(&self.unanswered),
        );
        KeyUsage {
            key_id,
            owner: self.owner.get().map(|o| o.to_string()),
            requests: allowed + denied + unanswered,
            allowed,
            denied,
            unanswered,
            denied_by_reason: REASONS
                .iter()
                .zip(&self.denied_by)
                .filter_map(|(r, c)| Some((*r, count(c))).filter(|(_, n)| *n > 0))
                .collect(),
            statuses: StatusClasses {
                informational: count(&self.statuses[0]),
                success: count(&self.statuses[1]),
                redirection: count(&self.statuses[2]),
                client_error: count(&self.statuses[3]),
                server_error: count(&self.statuses[4]),
            },
            total_latency: Duration::from_nanos(count(&self.latency_nanos)),
            last_used: (last > 0).then(|| UNIX_EPOCH + Duration::from_nanos(last)),
        }
    }
}

/// The counters of one key (or of the anonymous requests), at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyUsage {
    /// The key; `None` for [`AggregatingSink::anonymous`].
    pub key_id: Option<KeyId>,
    /// The key's owner, once a request authenticated with it.
    pub owner: Option<String>,
    /// Requests recorded.
    pub requests: u64,
    /// Requests no keyward layer refused.
    pub allowed: u64,
    /// Requests refused (401, 403, 429, 503 from keyward's layers).
    pub denied: u64,
    /// Requests that ended with a service error or were cancelled.
    pub unanswered: u64,
    /// The refusals by reason; reasons with no refusal are left out.
    pub denied_by_reason: Vec<(RejectReason, u64)>,
    /// Responses by status class.
    pub statuses: StatusClasses,
    /// The sum of the requests' latencies.
    pub total_latency: Duration,
    /// When the latest request arrived.
    pub last_used: Option<SystemTime>,
}

impl KeyUsage {
    /// The mean latency, if there were requests.
    pub fn mean_latency(&self) -> Option<Duration> {
        let n = u32::try_from(self.requests).ok().filter(|n| *n > 0)?;
        Some(self.total_latency / n)
    }

    /// The number of refusals for `reason`.
    pub fn denied_for(&self, reason: RejectReason) -> u64 {
        self.denied_by_reason
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// Responses counted by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusClasses {
    /// 1xx.
    pub informational: u64,
    /// 2xx.
    pub success: u64,
    /// 3xx.
    pub redirection: u64,
    /// 4xx.
    pub client_error: u64,
    /// 5xx.
    pub server_error: u64,
}

impl AggregatingSink {
    /// An empty aggregate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key's counters, ordered by key id.
    pub fn snapshot(&self) -> Vec<KeyUsage> {
        let keys = self.inner.keys.pin();
        let mut out: Vec<KeyUsage> = keys
            .iter()
            .map(|(id, counters)| counters.snapshot(Some(*id)))
            .collect();
        out.sort_by_key(|usage| usage.key_id);
        out
    }

    /// One key's counters, if it was seen.
    pub fn get(&self, id: &KeyId) -> Option<KeyUsage> {
        self.inner
            .keys
            .pin()
            .get(id)
            .map(|counters| counters.snapshot(Some(*id)))
    }

    /// The requests that no existing key made.
    pub fn anonymous(&self) -> KeyUsage {
        self.inner.anonymous.snapshot(None)
    }
}

/// Whether a request event belongs to a key whose record exists and whose
/// secret its caller holds.
///
/// A wrong secret is not counted against the key it names: anyone can name
/// any id, and a sink that did more work for a known id than for an
/// unknown one, after the refusal floor, would tell by its timing which
/// ids exist (SECURITY.md, "Timing"). It is counted with the unknown ids.
pub(crate) fn known_key(event: &UsageEvent) -> Option<KeyId> {
    let id = event.key_id()?;
    let record_found = event.authenticated()
        || matches!(
            event.outcome(),
            Outcome::Refused(
                RejectReason::Expired
                    | RejectReason::NotYetValid
                    | RejectReason::Disabled
                    | RejectReason::Revoked
            )
        );
    record_found.then_some(id)
}

#[async_trait::async_trait]
impl UsageSink for AggregatingSink {
    fn record(&self, event: UsageEvent) {
        if event.kind() != EventKind::Request {
            return;
        }
        match known_key(&event) {
            Some(id) => self.inner.add(id, &event),
            None => self.inner.anonymous.add(&event),
        }
    }
}

impl fmt::Debug for AggregatingSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregatingSink")
            .field("keys", &self.inner.keys.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::event::{RequestFacts, Size};

    fn refused(id: KeyId) -> UsageEvent {
        let facts = RequestFacts {
            at: SystemTime::now(),
            method: http::Method::GET,
            route: None,
            request_size: Size::new(None),
            tags: None,
        };
        let outcome = Outcome::Refused(RejectReason::Revoked);
        UsageEvent::request(facts, None, Some(id), None, outcome, Duration::ZERO, None)
    }

    #[test]
    fn every_key_of_every_aggregate_is_counted_apart() {
        // More keys than a thread remembers, in two aggregates, interleaved.
        let ids: Vec<KeyId> = (0..100)
            .map(|i| format!("key{i:0>9}").parse().unwrap())
            .collect();
        let (a, b) = (AggregatingSink::new(), AggregatingSink::new());
        for round in 0..3 {
            for (i, id) in ids.iter().enumerate() {
                a.record(refused(*id));
                if i % 2 == round % 2 {
                    b.record(refused(*id));
                }
            }
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(a.get(id).unwrap().denied, 3);
            assert_eq!(b.get(id).unwrap().denied, if i % 2 == 0 { 2 } else { 1 });
        }
        // From another thread too.
        let a2 = a.clone();
        let first = ids[0];
        std::thread::spawn(move || a2.record(refused(first)))
            .join()
            .unwrap();
        assert_eq!(a.get(&ids[0]).unwrap().requests, 4);
        assert_eq!(a.snapshot().len(), 100);
    }

    #[test]
    fn reasons_index_their_counters_in_declaration_order() {
        for (i, reason) in REASONS.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
    }

    #[test]
    fn an_allowed_request_touches_one_cache_line() {
        assert_eq!(std::mem::offset_of!(Counters, last_used_nanos), 56);
    }
}

/// The JSON (or other serde) shapes of the counters.
#[cfg(feature = "serde")]
mod serialize {
    use serde::ser::{SerializeMap, SerializeStruct, Serializer};
    use serde::Serialize;

    use super::{KeyUsage, StatusClasses};
    use crate::reject::RejectReason;
    use crate::rfc3339::serde::Rfc3339;

    fn micros(duration: std::time::Duration) -> u64 {
        u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
    }

    /// `{reason: count}`, reasons by their stable names, in declaration
    /// order.
    struct ByReason<'a>(&'a [(RejectReason, u64)]);

    impl Serialize for ByReason<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(Some(self.0.len()))?;
            for (reason, count) in self.0 {
                map.serialize_entry(reason.as_str(), count)?;
            }
            map.end()
        }
    }

    /// `{"key_id", "owner", "requests", "allowed", "denied", "unanswered",
    /// "denied_by_reason": {"wrong_secret": 2, …}, "statuses": {…},
    /// "total_latency_us", "mean_latency_us", "last_used"}`; `last_used`
    /// as RFC 3339 (UTC), absent values as `null`.
    impl Serialize for KeyUsage {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut out = serializer.serialize_struct("KeyUsage", 11)?;
            out.serialize_field("key_id", &self.key_id)?;
            out.serialize_field("owner", &self.owner)?;
            out.serialize_field("requests", &self.requests)?;
            out.serialize_field("allowed", &self.allowed)?;
            out.serialize_field("denied", &self.denied)?;
            out.serialize_field("unanswered", &self.unanswered)?;
            out.serialize_field("denied_by_reason", &ByReason(&self.denied_by_reason))?;
            out.serialize_field("statuses", &self.statuses)?;
            out.serialize_field("total_latency_us", &micros(self.total_latency))?;
            out.serialize_field("mean_latency_us", &self.mean_latency().map(micros))?;
            out.serialize_field("last_used", &self.last_used.map(Rfc3339))?;
            out.end()
        }
    }

    /// `{"informational", "success", "redirection", "client_error",
    /// "server_error"}`: the counts of 1xx to 5xx answers.
    impl Serialize for StatusClasses {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut out = serializer.serialize_struct("StatusClasses", 5)?;
            out.serialize_field("informational", &self.informational)?;
            out.serialize_field("success", &self.success)?;
            out.serialize_field("redirection", &self.redirection)?;
            out.serialize_field("client_error", &self.client_error)?;
            out.serialize_field("server_error", &self.server_error)?;
            out.end()
        }
    }
}
