//! [`RedisLimiter`]: limit state shared by every process, on Redis.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::bounded::{BoundedMap, Expiring};
use super::{
    CreditPolicy, Decision, LimitError, Limiter, Limits, MemoryLimiter, Policy, RatePolicy, Verdict,
};
use crate::clock::{epoch_nanos, saturating_nanos, Clock, SystemClock};
use crate::key::{KeyId, KeyIdBuildHasher};

/// The decision, in Lua: every policy of the key, all or nothing.
const SCRIPT: &str = include_str!("redis.lua");

/// What the denial cache holds, for its warning when full.
const DENIALS: &str = "redis limiter denial cache";

/// How long a local refusal is trusted at most, whatever the retry time
/// Redis gave: bounds what a change made behind the limiter's back (an
/// operator resetting a balance) takes to be seen here.
const MAX_CACHED_DENIAL: Duration = Duration::from_secs(60);

/// With the fallback on, how long decisions stay local after Redis
/// failed before one request asks Redis again.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Limits shared by every process: each request is one atomic round trip
/// to Redis (a Lua script, `EVALSHA`) that decides all of the key's
/// policies at once, on the Redis server's clock, so that three replicas
/// admit what one would, whatever their clocks say.
///
/// - **State**: for each key and policy one Redis key,
///   `{<prefix>:<key id>}:<policy name>:<fingerprint>`, hash-tagged so that
///   all of a key's state lives in one Redis Cluster slot. The secret is
///   never in it. A rate's state expires once the policy is full again, a
///   balance's once it has refilled; a spent balance that never refills
///   does not expire (it is the record of what was spent).
/// - **Arithmetic**: keyward's own ([`Limits::decide`]), in integer
///   microseconds (a rate's period rounds up to a whole microsecond).
/// - **Connections**: one multiplexed [`ConnectionManager`], shared by
///   every request (clones share it), reconnecting by itself; every call
///   has a timeout ([`with_timeout`](Self::with_timeout), 200 ms by
///   default).
/// - **Refused keys**: a key that Redis refused is refused here, with the
///   same `RateLimit` fields counted down, until its retry time (at most a
///   minute), without a round trip: a flood on an exhausted key costs
///   Redis nothing.
/// - **Failure**: a Redis error or timeout fails the check, and
///   [`RateLimitLayer`](super::RateLimitLayer) answers `503`
///   ([`LimiterUnavailable`](crate::RejectReason::LimiterUnavailable)):
///   fail closed. Opt into [`fallback_to_local`](Self::fallback_to_local)
///   to decide in this process meanwhile, on a share of each quota.
///
/// # Example
///
/// ```no_run
/// use keyward::limit::{RateLimitLayer, RedisLimiter};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let limiter = RedisLimiter::connect(client).await?.with_prefix("myapp:limits")?;
/// let layer = RateLimitLayer::new(limiter);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    /// The time of this process: the local refusals and the fallback.
    clock: Arc<dyn Clock>,
    /// Test builds only: the script takes its time from `clock`.
    script_clock: bool,
    denials: Option<BoundedMap<KeyId, Denial, KeyIdBuildHasher>>,
    fallback: Option<Fallback>,
}

/// A prefix that cannot name Redis keys safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a RedisLimiter prefix is 1-64 characters of A-Z, a-z, 0-9, ':', '-', '_' and '.'")]
pub struct InvalidPrefix;

/// A refusal from Redis, repeated locally until its retry time.
struct Denial {
    /// Which `Limits` it was for (see [`limits_digest`]).
    limits: u64,
    /// The cost refused: a larger one is refused too, a smaller one may
    /// pass and goes to Redis.
    cost: u32,
    /// When Redis answered, and until when to repeat it (local clock).
    at: u64,
    until: u64,
    decision: Decision,
}

impl Expiring for Denial {
    fn is_idle(&self, now: u64) -> bool {
        self.until <= now
    }
}

/// Decisions made in this process while Redis cannot be reached.
struct Fallback {
    share: f64,
    local: MemoryLimiter,
    /// While the local clock is before this, Redis is not asked.
    retry_at: AtomicU64,
    /// Whether Redis is failing now (for logging the transitions).
    down: AtomicBool,
    degraded: AtomicU64,
    /// The scaled `Limits` of each tier met, by digest.
    scaled: papaya::HashMap<u64, Limits>,
}

impl RedisLimiter {
    /// A limiter on `connection` (clones of a [`ConnectionManager`] share
    /// one multiplexed connection: pass the one the rest of the
    /// application uses), with the prefix `keyward:limit`.
    pub fn new(connection: ConnectionManager) -> Self {
        Self::build(connection, Arc::new(SystemClock), false)
    }

    /// Connects to `client`'s server with a [`ConnectionManager`] whose
    /// connection attempts and responses time out after the limiter's
    /// timeout (200 ms) and whose reconnections back off to at most half
    /// a second.
    pub async fn connect(client: redis::Client) -> Result<Self, LimitError> {
        let timeout = Duration::from_millis(200);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(LimitError::backend)?;
        Ok(Self::new(connection))
    }

    /// **For tests only** (feature `test-util`): the script takes its time
    /// from `clock` (passed as an argument) instead of the Redis server's
    /// `TIME`, so that a test can move time as it likes; the local
    /// refusals and the fallback read `clock` too. Never use it in
    /// production: processes with different clocks would widen every
    /// limit.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn with_test_clock(connection: ConnectionManager, clock: impl Clock) -> Self {
        Self::build(connection, Arc::new(clock), true)
    }

    fn build(connection: ConnectionManager, clock: Arc<dyn Clock>, script_clock: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                connection,
                script: redis::Script::new(SCRIPT),
                prefix: "keyward:limit".to_owned(),
                timeout: Duration::from_millis(200),
                clock,
                script_clock,
                denials: Some(BoundedMap::new(100_000, Duration::from_secs(60), DENIALS)),
                fallback: None,
            }),
        }
    }

    fn with_inner(self, change: impl FnOnce(&mut Inner)) -> Self {
        let Inner {
            connection,
            script,
            prefix,
            timeout,
            clock,
            script_clock,
            denials,
            fallback,
        } = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            // Shared already (a clone was taken): a copy of the settings,
            // with fresh local state.
            Err(shared) => Inner {
                connection: shared.connection.clone(),
                script: redis::Script::new(SCRIPT),
                prefix: shared.prefix.clone(),
                timeout: shared.timeout,
                clock: Arc::clone(&shared.clock),
                script_clock: shared.script_clock,
                denials: shared
                    .denials
                    .as_ref()
                    .map(|map| BoundedMap::new(map.max(), Duration::from_secs(60), DENIALS)),
                fallback: shared
                    .fallback
                    .as_ref()
                    .map(|fallback| Fallback::new(fallback.share, &shared.clock)),
            },
        };
        let mut inner = Inner {
            connection,
            script,
            prefix,
            timeout,
            clock,
            script_clock,
            denials,
            fallback,
        };
        change(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Names state keys `{<prefix>:<key id>}:…` (default `keyward:limit`):
    /// 1 to 64 characters of `A-Z`, `a-z`, `0-9`, `:`, `-`, `_` and `.`
    /// (no braces, which would break the hash tag).
    pub fn with_prefix(self, prefix: &str) -> Result<Self, InvalidPrefix> {
        let valid = (1..=64).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":-_.".contains(&b));
        if !valid {
            return Err(InvalidPrefix);
        }
        Ok(self.with_inner(|inner| inner.prefix = prefix.to_owned()))
    }

    /// Gives up on a call to Redis after `timeout` (default 200 ms): the
    /// check fails (or, with the fallback, is decided locally).
    #[must_use]
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.with_inner(|inner| inner.timeout = timeout)
    }

    /// Remembers at most `max_keys` keys that Redis refused (default
    /// 100 000), each until its retry time; 0 asks Redis every time.
    #[must_use]
    pub fn with_denial_cache(self, max_keys: usize) -> Self {
        self.with_inner(|inner| {
            inner.denials =
                (max_keys > 0).then(|| BoundedMap::new(max_keys, Duration::from_secs(60), DENIALS));
        })
    }

    /// **Weaker limits while Redis is down**, opt-in: when Redis fails or
    /// times out, decide in this process instead of refusing, with
    /// `share` (0 to 1) of each quota, burst and balance (at least 1 of
    /// each): with three replicas, `1.0 / 3.0` keeps the total near the
    /// limit. Such degraded decisions are counted
    /// ([`degraded_decisions`](Self::degraded_decisions)) and logged (a
    /// warning when Redis fails, another when it answers again). Redis is
    /// asked again a quarter of a second after a failure, by one request
    /// at a time, and decides again as soon as it answers. Balances
    /// spent locally are not carried to Redis.
    #[must_use]
    pub fn fallback_to_local(self, share: f64) -> Self {
        self.with_inner(|inner| {
            inner.fallback = Some(Fallback::new(share, &inner.clock));
        })
    }

    /// How many requests were decided locally because Redis failed.
    pub fn degraded_decisions(&self) -> u64 {
        self.inner
            .fallback
            .as_ref()
            .map_or(0, |fallback| fallback.degraded.load(Ordering::Relaxed))
    }

    /// The Redis key of `id`'s state for `policy`.
    fn state_key(&self, id: &KeyId, policy: &Policy) -> String {
        format!(
            "{{{}:{}}}:{}:{:016x}",
            self.inner.prefix,
            id,
            policy.name(),
            policy.fingerprint()
        )
    }

    fn now(&self) -> u64 {
        epoch_nanos(self.inner.clock.now())
    }

    /// The refusal Redis gave this key, counted down, if it still holds.
    fn cached_denial(&self, id: &KeyId, limits: &Limits, cost: u32, now: u64) -> Option<Decision> {
        let denials = self.inner.denials.as_ref()?;
        let map = denials.map().pin();
        let denial = map.get(id)?;
        if denial.until <= now || cost < denial.cost || denial.limits != limits_digest(limits) {
            return None;
        }
        // Another request may have stored a denial stamped after this one
        // read the clock (or the wall clock stepped back): never underflow.
        let elapsed = Duration::from_nanos(now.saturating_sub(denial.at));
        Some(
            denial
                .decision
                .verdicts()
                .iter()
                .map(|verdict| {
                    let reset = if verdict.reset() == Duration::MAX {
                        Duration::MAX
                    } else {
                        verdict.reset().saturating_sub(elapsed)
                    };
                    if verdict.is_allowed() {
                        Verdict::allowed(verdict.remaining(), reset)
                    } else {
                        Verdict::denied(verdict.remaining(), reset)
                    }
                })
                .collect(),
        )
    }

    fn remember_denial(&self, id: &KeyId, limits: &Limits, cost: u32, decision: Decision) {
        let Some(denials) = &self.inner.denials else {
            return;
        };
        let now = self.now();
        let wait = decision
            .retry_after()
            .unwrap_or(MAX_CACHED_DENIAL)
            .min(MAX_CACHED_DENIAL);
        let denial = Denial {
            limits: limits_digest(limits),
            cost,
            at: now,
            until: now.saturating_add(saturating_nanos(wait)),
            decision,
        };
        let map = denials.map().pin();
        if map.get(id).is_none() {
            denials.make_room(now);
        }
        map.insert(*id, denial);
    }

    /// One round trip: the script, loaded once (`EVALSHA`, and on
    /// `NOSCRIPT` loaded again and retried).
    async fn ask_redis(
        &self,
        id: &KeyId,
        limits: &Limits,
        cost: u32,
    ) -> Result<Decision, LimitError> {
        let inner = &*self.inner;
        let mut invocation = inner.script.prepare_invoke();
        for policy in limits.policies() {
            invocation.key(self.state_key(id, policy));
        }
        invocation.arg(cost);
        if inner.script_clock {
            invocation.arg(self.now() / 1_000);
        } else {
            invocation.arg("");
        }
        for policy in limits.policies() {
            match policy {
                Policy::Rate(rate) => {
                    let (t, tau) = micros(rate);
                    invocation.arg("r").arg(t).arg(tau).arg(rate.burst());
                }
                Policy::Credits(credits) => {
                    let (amount, every) = match credits.refill() {
                        // More than the capacity refills no faster, and
                        // keeps the script's numbers small.
                        Some((amount, every)) => (
                            amount.min(credits.capacity()),
                            saturating_nanos(every).div_ceil(1_000).max(1),
                        ),
                        None => (0, 1),
                    };
                    invocation
                        .arg("c")
                        .arg(credits.capacity())
                        .arg(amount)
                        .arg(every);
                }
            }
        }
        let mut connection = inner.connection.clone();
        let reply: Vec<i64> =
            tokio::time::timeout(inner.timeout, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| LimitError::backend(TimedOut(inner.timeout)))?
                .map_err(LimitError::backend)?;
        decision_from(&reply, limits.policies().len())
    }

    /// A request decided in this process, Redis being down.
    fn decide_locally(
        &self,
        fallback: &Fallback,
        id: &KeyId,
        limits: &Limits,
        cost: u32,
    ) -> Result<Decision, LimitError> {
        let scaled = fallback.scaled(limits)?;
        let decision = fallback
            .local
            .check_immediate(id, &scaled, cost)
            .unwrap_or_else(|| Ok(Decision::new()))?;
        let count = fallback.degraded.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(
            target: "keyward::limit", key_id = %id, allowed = decision.is_allowed(),
            degraded_decisions = count,
            "Redis unavailable: decided locally on a share of the quota"
        );
        Ok(decision)
    }

    async fn decide(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError> {
        if limits.is_empty() {
            return Ok(Decision::new());
        }
        if let Some(decision) = self.without_redis(id, limits, cost) {
            return decision;
        }
        let Some(fallback) = &self.inner.fallback else {
            let result = self.ask_redis(id, limits, cost).await;
            if let Ok(decision) = &result {
                if !decision.is_allowed() && cost > 0 {
                    self.remember_denial(id, limits, cost, *decision);
                }
            }
            return result;
        };
        if fallback.stay_local(self.now()) {
            return self.decide_locally(fallback, id, limits, cost);
        }
        match self.ask_redis(id, limits, cost).await {
            Ok(decision) => {
                fallback.recovered();
                if !decision.is_allowed() && cost > 0 {
                    self.remember_denial(id, limits, cost, decision);
                }
                Ok(decision)
            }
            Err(error) => {
                fallback.failed(&error, self.now());
                self.decide_locally(fallback, id, limits, cost)
            }
        }
    }

    /// What can be answered without Redis: a cost no policy can take, and
    /// a refusal Redis gave that still holds.
    fn without_redis(
        &self,
        id: &KeyId,
        limits: &Limits,
        cost: u32,
    ) -> Option<Result<Decision, LimitError>> {
        if let Err(error) = cost_fits(limits, cost) {
            return Some(Err(error));
        }
        self.cached_denial(id, limits, cost, self.now()).map(Ok)
    }
}

/// A call to Redis took longer than the limiter's timeout.
#[derive(Debug, thiserror::Error)]
#[error("Redis did not answer within {0:?}")]
struct TimedOut(Duration);

/// Redis answered something other than the script's reply.
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from the limit script")]
struct BadReply;

/// The decision in the script's reply: {all, n, (allowed, remaining,
/// reset or wait in microseconds, -1 for never) per policy}.
fn decision_from(reply: &[i64], policies: usize) -> Result<Decision, LimitError> {
    let [_, n, verdicts @ ..] = reply else {
        return Err(LimitError::backend(BadReply));
    };
    if usize::try_from(*n).ok() != Some(policies) || verdicts.len() != policies * 3 {
        return Err(LimitError::backend(BadReply));
    }
    Ok(verdicts
        .chunks_exact(3)
        .map(|verdict| {
            let remaining = u64::try_from(verdict[1]).unwrap_or(0);
            let reset = u64::try_from(verdict[2]).map_or(Duration::MAX, Duration::from_micros);
            if verdict[0] == 1 {
                Verdict::allowed(remaining, reset)
            } else {
                Verdict::denied(remaining, reset)
            }
        })
        .collect())
}

/// A rate's GCRA parameters in whole microseconds: the period rounded up
/// (never allowing more), the tolerance `t * (burst - 1)`.
fn micros(rate: &RatePolicy) -> (u64, u64) {
    let t = rate.gcra().period_nanos().div_ceil(1_000).max(1);
    (t, t.saturating_mul(u64::from(rate.burst().max(1) - 1)))
}

/// Refuses a cost that a policy can never allow at once, without asking.
fn cost_fits(limits: &Limits, cost: u32) -> Result<(), LimitError> {
    for policy in limits.policies() {
        let fits = match policy {
            Policy::Rate(rate) => cost <= rate.burst(),
            Policy::Credits(credits) => u64::from(cost) <= credits.capacity(),
        };
        if !fits {
            return Err(LimitError::CostTooHigh {
                policy: policy.name().to_owned(),
                cost,
            });
        }
    }
    Ok(())
}

/// A digest of a `Limits`' policies, in order: a tier change is a new
/// `Limits`, and a refusal under the old one says nothing of it.
fn limits_digest(limits: &Limits) -> u64 {
    limits
        .policies()
        .iter()
        .fold(0x9e37_79b9_7f4a_7c15, |digest, policy| {
            (digest.rotate_left(23) ^ policy.fingerprint()).wrapping_mul(0xff51_afd7_ed55_8ccd)
        })
}

impl Fallback {
    fn new(share: f64, clock: &Arc<dyn Clock>) -> Self {
        let share = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        };
        Self {
            share,
            local: MemoryLimiter::new().with_clock(SharedClock(Arc::clone(clock))),
            retry_at: AtomicU64::new(0),
            down: AtomicBool::new(false),
            degraded: AtomicU64::new(0),
            scaled: papaya::HashMap::new(),
        }
    }

    /// Whether Redis failed less than [`PROBE_EVERY`] ago (read only).
    fn recently_failed(&self, now: u64) -> bool {
        now < self.retry_at.load(Ordering::Acquire)
    }

    /// Whether to decide locally now, without asking Redis: Redis failed
    /// less than [`PROBE_EVERY`] ago. Past that, one request (the one that
    /// moves the time on) asks Redis, the others stay local.
    fn stay_local(&self, now: u64) -> bool {
        let retry_at = self.retry_at.load(Ordering::Acquire);
        if retry_at == 0 {
            return false;
        }
        if now < retry_at {
            return true;
        }
        let next = now.saturating_add(saturating_nanos(PROBE_EVERY));
        // The winner probes Redis; the losers stay local.
        self.retry_at
            .compare_exchange(retry_at, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    }

    fn failed(&self, error: &LimitError, now: u64) {
        self.retry_at.store(
            now.saturating_add(saturating_nanos(PROBE_EVERY)),
            Ordering::Release,
        );
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                target: "keyward::limit",
                error = error as &dyn std::error::Error,
                share = self.share,
                "Redis limiter unavailable: deciding locally on a share of each quota"
            );
        }
    }

    fn recovered(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::AcqRel) {
            self.retry_at.store(0, Ordering::Release);
            tracing::warn!(
                target: "keyward::limit",
                degraded_decisions = self.degraded.load(Ordering::Relaxed),
                "Redis limiter answers again: shared decisions resumed"
            );
        }
    }

    /// `limits` with `share` of each quota, burst and balance.
    fn scaled(&self, limits: &Limits) -> Result<Limits, LimitError> {
        let digest = limits_digest(limits);
        let map = self.scaled.pin();
        if let Some(scaled) = map.get(&digest) {
            return Ok(scaled.clone());
        }
        let part = |n: u64| ((n as f64 * self.share) as u64).max(1);
        let policies = limits.policies().iter().map(|policy| {
            Ok(match policy {
                Policy::Rate(rate) => {
                    let quota = u32::try_from(part(u64::from(rate.quota()))).unwrap_or(u32::MAX);
                    let burst = u32::try_from(part(u64::from(rate.burst()))).unwrap_or(u32::MAX);
                    Policy::from(
                        RatePolicy::new(rate.name(), quota, rate.window())?.with_burst(burst)?,
                    )
                }
                Policy::Credits(credits) => {
                    let local = CreditPolicy::new(credits.name(), part(credits.capacity()))?;
                    Policy::from(match credits.refill() {
                        Some((amount, every)) => local.with_refill(part(amount), every)?,
                        None => local,
                    })
                }
            })
        });
        let scaled = Limits::new(
            policies
                .collect::<Result<Vec<_>, super::PolicyError>>()
                .map_err(LimitError::backend)?,
        )
        .map_err(LimitError::backend)?;
        // Tiers are few; a runaway number of them starts the cache over.
        if map.len() > 1_024 {
            map.clear();
        }
        map.insert(digest, scaled.clone());
        Ok(scaled)
    }
}

/// The limiter's clock, shared with its local fallback.
#[derive(Debug, Clone)]
struct SharedClock(Arc<dyn Clock>);

impl Clock for SharedClock {
    fn now(&self) -> std::time::SystemTime {
        self.0.now()
    }
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field(
                "fallback_share",
                &self.inner.fallback.as_ref().map(|fallback| fallback.share),
            )
            .field("degraded_decisions", &self.degraded_decisions())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn check(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError> {
        self.decide(id, limits, cost).await
    }

    fn check_immediate(
        &self,
        id: &KeyId,
        limits: &Limits,
        cost: u32,
    ) -> Option<Result<Decision, LimitError>> {
        if limits.is_empty() {
            return Some(Ok(Decision::new()));
        }
        if let Some(answer) = self.without_redis(id, limits, cost) {
            return Some(answer);
        }
        // Redis down a moment ago: local, without a future. Whether to
        // ask it again is for `check` to decide.
        let fallback = self.inner.fallback.as_ref()?;
        fallback
            .recently_failed(self.now())
            .then(|| self.decide_locally(fallback, id, limits, cost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked() {
        assert!(decision_from(&[], 1).is_err());
        assert!(decision_from(&[1, 2, 1, 5, 10], 1).is_err());
        let decision = decision_from(&[0, 2, 1, 5, 1_000_000, 0, 3, -1], 2).unwrap();
        assert!(!decision.is_allowed());
        assert_eq!(
            decision.verdicts()[0],
            Verdict::allowed(5, Duration::from_secs(1))
        );
        assert_eq!(decision.verdicts()[1], Verdict::denied(3, Duration::MAX));
    }

    #[test]
    fn periods_round_up_to_whole_microseconds() {
        let rate = RatePolicy::new("fast", 3_000_000, Duration::from_secs(1))
            .unwrap()
            .with_burst(4)
            .unwrap();
        // 333.33 ns: one microsecond, never less.
        assert_eq!(micros(&rate), (1, 3));
        let slow = RatePolicy::new("slow", 5, Duration::from_secs(1)).unwrap();
        assert_eq!(micros(&slow), (200_000, 800_000));
    }
}
