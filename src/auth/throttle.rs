//! [`FailureThrottle`]: slows down key guessing, per client address.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{epoch_nanos, saturating_nanos as nanos};
use crate::clock::{Clock, SystemClock};
use crate::limit::{forgettable, BoundedMap, Expiring, Gcra, GcraOutcome, RatePolicy};

/// Counts refused keys per client address; once a client has had
/// `max_failures` refused within `window`, every request of it that
/// carries a key is answered `429 Too Many Requests` (with `Retry-After`)
/// before any look-up, until the count has drained (GCRA: one failure is
/// forgiven every `window / max_failures`).
///
/// It counts by address, never by key, so nobody can lock a key out by
/// guessing: only the guessing client waits. IPv6 clients are counted by
/// their `/64` network, since one host holds a whole one. Requests whose
/// client address is unknown (no [`ClientAddr`](super::client::ClientAddr),
/// no axum `ConnectInfo`) are not counted. Behind a proxy, set
/// [`AuthLayer::trusted_proxies`](super::AuthLayer::trusted_proxies), or
/// every client counts as the proxy. At most
/// [`max_clients`](Self::with_max_clients) addresses are tracked
/// (100 000 by default); entries that have drained are dropped first.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use keyward::auth::FailureThrottle;
/// use keyward::{AuthLayer, KeyFormat, MemoryStore};
///
/// let layer = AuthLayer::new(MemoryStore::new(), KeyFormat::new("sk_live")?)
///     .failure_throttle(FailureThrottle::new(10, Duration::from_secs(60)));
/// # let _ = layer;
/// # Ok::<(), keyward::key::FormatError>(())
/// ```
#[derive(Clone)]
pub struct FailureThrottle {
    shared: Arc<Shared>,
}

struct Shared {
    clients: BoundedMap<IpAddr, Failures, RandomState>,
    gcra: Gcra,
    period: Duration,
    max_failures: u32,
    window: Duration,
    clock: Arc<dyn Clock>,
}

struct Failures {
    /// GCRA's theoretical arrival time (nanoseconds since the epoch):
    /// every failure is forgiven once it has passed.
    tat: AtomicU64,
    /// Nanoseconds since the epoch until which the client is refused.
    blocked_until: AtomicU64,
}

impl Expiring for Failures {
    fn is_idle(&self, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= now
    }

    fn is_forgettable(&self, now: u64) -> bool {
        forgettable(&self.tat, now)
    }
}

/// The unit a client is counted by: its IPv4 address, or its IPv6 /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !(u128::from(u64::MAX))).into()),
        },
    }
}

impl FailureThrottle {
    /// Refuses a client after `max_failures` refused keys within `window`
    /// (`max_failures` at least 1, `window` at least 1 ms and at most
    /// [`RatePolicy::MAX_WINDOW`], 100 years: a longer window is shortened
    /// to it, so that a client's times stay within a `u64` of nanoseconds).
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self::build(max_failures, window, 100_000, Arc::new(SystemClock))
    }

    fn build(
        max_failures: u32,
        window: Duration,
        max_clients: usize,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let max_failures = max_failures.max(1);
        let window = window.clamp(Duration::from_millis(1), RatePolicy::MAX_WINDOW);
        let period = (window / max_failures).max(Duration::from_nanos(1));
        Self {
            shared: Arc::new(Shared {
                clients: BoundedMap::new(
                    max_clients,
                    Duration::from_secs(60),
                    "failure throttle clients",
                ),
                gcra: Gcra::new(period, max_failures),
                period,
                max_failures,
                window,
                clock,
            }),
        }
    }

    /// Tracks at most `max_clients` client addresses at once.
    #[must_use]
    pub fn with_max_clients(self, max_clients: usize) -> Self {
        let s = &self.shared;
        Self::build(s.max_failures, s.window, max_clients, Arc::clone(&s.clock))
    }

    /// Reads time from `clock` (a [`FakeClock`](crate::clock::FakeClock) in tests).
    #[must_use]
    pub fn with_clock(self, clock: impl Clock) -> Self {
        let s = &self.shared;
        Self::build(
            s.max_failures,
            s.window,
            s.clients.max(),
            crate::clock::shared(clock),
        )
    }

    /// How many client addresses have state now.
    pub fn tracked_clients(&self) -> usize {
        self.shared.clients.len()
    }

    /// If `client` must wait, for how long.
    pub(crate) fn blocked(&self, client: IpAddr) -> Option<Duration> {
        let shared = &*self.shared;
        let map = shared.clients.map().pin();
        let failures = map.get(&client_key(client))?;
        let until = failures.blocked_until.load(Ordering::Relaxed);
        let now = epoch_nanos(shared.clock.now());
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Counts one refused key from `client`.
    pub(crate) fn record_failure(&self, client: IpAddr) {
        let shared = &*self.shared;
        let key = client_key(client);
        let now = epoch_nanos(shared.clock.now());
        let map = shared.clients.map().pin();
        let failures = match map.get(&key) {
            Some(failures) => failures,
            None => {
                shared.clients.make_room(now);
                map.get_or_insert_with(key, || Failures {
                    tat: AtomicU64::new(0),
                    blocked_until: AtomicU64::new(0),
                })
            }
        };
        let block_until = match shared.gcra.check(&failures.tat, 1, now) {
            // The last allowed failure: wait for one to be forgiven.
            GcraOutcome::Allowed { remaining, .. } => {
                (remaining == 0).then(|| now.saturating_add(nanos(shared.period)))
            }
            GcraOutcome::Denied { wait } => Some(now.saturating_add(wait)),
            // A cost of one always fits a burst of at least one.
            GcraOutcome::TooHigh => None,
        };
        if let Some(until) = block_until {
            failures.blocked_until.fetch_max(until, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            crate::metrics::throttle_block();
            tracing::warn!(
                target: "keyward::auth",
                client = %key,
                "too many refused API keys from this client; refusing it for now"
            );
        }
    }
}

impl fmt::Debug for FailureThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureThrottle")
            .field("max_failures", &self.shared.max_failures)
            .field("window", &self.shared.window)
            .field("tracked_clients", &self.tracked_clients())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    #[test]
    fn ipv6_counts_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn blocks_after_the_threshold_and_forgives_over_time() {
        let clock = FakeClock::default();
        let throttle = FailureThrottle::new(3, Duration::from_secs(3)).with_clock(clock.clone());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..2 {
            throttle.record_failure(ip);
            assert_eq!(throttle.blocked(ip), None);
        }
        throttle.record_failure(ip);
        assert_eq!(throttle.blocked(ip), Some(Duration::from_secs(1)));
        assert_eq!(throttle.blocked("192.0.2.2".parse().unwrap()), None);
        clock.advance(Duration::from_secs(1));
        assert_eq!(throttle.blocked(ip), None);
    }

    /// `Duration::MAX` is 100 years: a first failure of ten does not block.
    #[test]
    fn an_endless_window_is_a_hundred_years() {
        let clock = FakeClock::default();
        let throttle = FailureThrottle::new(10, Duration::MAX).with_clock(clock.clone());
        assert_eq!(throttle.shared.window, RatePolicy::MAX_WINDOW);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..9 {
            throttle.record_failure(ip);
            assert_eq!(throttle.blocked(ip), None);
        }
        throttle.record_failure(ip);
        // The tenth waits for one failure to be forgiven: a tenth of the window.
        assert_eq!(throttle.blocked(ip), Some(RatePolicy::MAX_WINDOW / 10));
        clock.advance(RatePolicy::MAX_WINDOW / 10);
        assert_eq!(throttle.blocked(ip), None);
    }

    #[test]
    fn bounded() {
        let throttle = FailureThrottle::new(1, Duration::from_secs(60)).with_max_clients(100);
        for i in 0..10_000u32 {
            throttle.record_failure(IpAddr::V4(i.into()));
        }
        assert!(throttle.tracked_clients() <= 100);
    }
}
