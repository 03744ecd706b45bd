//! Limit policies: what a key may spend, and how fast.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::gcra::Gcra;
use crate::clock::{saturating_nanos, whole_seconds};

/// A policy name that a policy cannot have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Names are 1 to 64 characters of `a-z`, `0-9`, `-`, `_` and `.`,
    /// starting with a letter, so that they need no escaping in headers.
    #[error("policy names are 1-64 characters of a-z, 0-9, '-', '_', '.', starting with a letter")]
    InvalidName,
    /// A quota, burst, capacity or refill amount of zero.
    #[error("a policy's quota, burst, capacity and refill amount must be at least 1")]
    Zero,
    /// A window or refill interval shorter than a second: the `w` field of
    /// `RateLimit-Policy` counts whole seconds.
    #[error("a policy's window and refill interval must be at least one second")]
    WindowTooShort,
    /// Two policies of one [`Limits`] share a name.
    #[error("two policies are named {0:?}")]
    DuplicateName(String),
    /// More than one credit policy in one [`Limits`].
    #[error("a key has at most one credit policy")]
    SeveralCreditPolicies,
    /// A window, refill interval, or time a full burst takes to come back
    /// (`window * burst / quota`) longer than [`RatePolicy::MAX_WINDOW`]
    /// (100 years): limiters keep times as nanoseconds in a `u64`, which
    /// would overflow.
    #[error(
        "a policy's window, window * burst / quota and refill interval must be at most 100 years"
    )]
    WindowTooLong,
    /// A credit capacity above [`CreditPolicy::MAX_CAPACITY`]: the
    /// `RateLimit` fields announce it as a structured-field integer,
    /// which has at most 15 digits (RFC 9651).
    #[error("a credit policy's capacity must be at most 999999999999999")]
    CapacityTooLarge,
    /// A window or refill interval with a part smaller than a millisecond:
    /// stored policies keep them as whole milliseconds (`window_ms`,
    /// `interval_ms`).
    #[error("a policy's window and refill interval must be whole milliseconds")]
    SubMillisecond,
    /// More than [`Limits::MAX_POLICIES`] policies in one [`Limits`].
    #[error("a key has at most {max} policies")]
    TooManyPolicies {
        /// The most policies a [`Limits`] holds.
        max: usize,
    },
}

/// The largest integer a structured field may carry (RFC 9651: at most
/// 15 digits); the `RateLimit` fields never announce more.
pub(crate) const MAX_FIELD_INTEGER: u64 = 999_999_999_999_999;

/// A window or interval in whole milliseconds, as stored.
fn whole_millis(duration: Duration) -> Result<u64, PolicyError> {
    if !duration.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(PolicyError::SubMillisecond);
    }
    u64::try_from(duration.as_millis()).map_err(|_| PolicyError::WindowTooLong)
}

fn validate_name(name: &str) -> Result<(), PolicyError> {
    let bytes = name.as_bytes();
    let valid = (1..=64).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(b));
    if valid {
        Ok(())
    } else {
        Err(PolicyError::InvalidName)
    }
}

/// A rate: `quota` requests per `window`, spent in bursts of at most `burst`
/// (GCRA, as in governor: one unit comes back every `window / quota`).
///
/// ```
/// use std::time::Duration;
/// use keyward::limit::RatePolicy;
///
/// let per_second = RatePolicy::new("burst", 5, Duration::from_secs(1))?;
/// let daily = RatePolicy::new("daily", 10_000, Duration::from_secs(86_400))?.with_burst(100)?;
/// assert_eq!(daily.burst(), 100);
/// # Ok::<(), keyward::limit::PolicyError>(())
/// ```
///
/// With feature `serde` it is stored as
/// `{"name": "burst", "quota": 5, "window_ms": 1000, "burst": 5}`, and
/// read back through the same checks as [`new`](Self::new) and
/// [`with_burst`](Self::with_burst) (the form of earlier versions,
/// `"window": {"secs": 1, "nanos": 0}`, still reads).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RatePolicy {
    name: Arc<str>,
    quota: u32,
    window: Duration,
    burst: u32,
    /// Worked out once, here, not on every check: GCRA's parameters in
    /// nanoseconds, and the fingerprint (see [`Policy::fingerprint`]).
    gcra: Gcra,
    fingerprint: u64,
}

impl fmt::Debug for RatePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RatePolicy")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("window", &self.window)
            .field("burst", &self.burst)
            .finish()
    }
}

impl RatePolicy {
    /// The longest window, and the longest time a full burst may take to
    /// come back (`window * burst / quota`): 100 years of 365 days.
    /// Limiters keep times as nanoseconds since the Unix epoch in a `u64`
    /// (which ends in 2554); this bound keeps every such time far from it.
    pub const MAX_WINDOW: Duration = Duration::from_secs(100 * 365 * 86_400);

    /// `quota` requests per `window`, with a burst of `quota`.
    ///
    /// The name is 1 to 64 characters of `a-z`, `0-9`, `-`, `_` and `.`,
    /// starting with a letter; `quota` is at least 1; `window` is at least
    /// a second, at most [`MAX_WINDOW`](Self::MAX_WINDOW), and whole
    /// milliseconds.
    pub fn new(name: &str, quota: u32, window: Duration) -> Result<Self, PolicyError> {
        validate_name(name)?;
        Self::validated(name.into(), quota, window, quota)
    }

    /// At most `burst` requests at once (the rate stays `quota / window`).
    ///
    /// `burst` is at least 1, and a full burst comes back within
    /// [`MAX_WINDOW`](Self::MAX_WINDOW): `window * burst / quota` at most
    /// 100 years.
    pub fn with_burst(self, burst: u32) -> Result<Self, PolicyError> {
        Self::validated(self.name, self.quota, self.window, burst)
    }

    /// The checks of [`new`](Self::new) and [`with_burst`](Self::with_burst),
    /// for every way a policy is made.
    fn validated(
        name: Arc<str>,
        quota: u32,
        window: Duration,
        burst: u32,
    ) -> Result<Self, PolicyError> {
        validate_name(&name)?;
        if quota == 0 || burst == 0 {
            return Err(PolicyError::Zero);
        }
        if window < Duration::from_secs(1) {
            return Err(PolicyError::WindowTooShort);
        }
        if window > Self::MAX_WINDOW {
            return Err(PolicyError::WindowTooLong);
        }
        whole_millis(window)?;
        // GCRA's tolerance plus one period: how far ahead of now a key's
        // state may run.
        let full_burst = Self::period_of(window, quota).checked_mul(burst);
        if full_burst.is_none_or(|span| span > Self::MAX_WINDOW) {
            return Err(PolicyError::WindowTooLong);
        }
        Ok(Self::derived(name, quota, window, burst))
    }

    /// One unit's period, at least a nanosecond; `quota` is at least 1.
    fn period_of(window: Duration, quota: u32) -> Duration {
        (window / quota.max(1)).max(Duration::from_nanos(1))
    }

    fn derived(name: Arc<str>, quota: u32, window: Duration, burst: u32) -> Self {
        let period = Self::period_of(window, quota);
        let fingerprint = fingerprint(1, &name, [saturating_nanos(period), u64::from(burst), 0]);
        Self {
            name,
            quota,
            window,
            burst,
            gcra: Gcra::new(period, burst),
            fingerprint,
        }
    }

    /// The policy's GCRA parameters (worked out once, when the policy is
    /// made), for a limiter backend: see [`Gcra::step`].
    pub fn gcra(&self) -> Gcra {
        self.gcra
    }

    /// The policy's name, as the headers show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests per window.
    pub fn quota(&self) -> u32 {
        self.quota
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The most requests allowed at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The time one unit takes to come back.
    pub fn period(&self) -> Duration {
        Self::period_of(self.window, self.quota)
    }
}

/// A balance of credits that requests spend (by their cost) and that
/// refills by `amount` every `interval`, up to `capacity`: a monthly
/// allowance, or a prepaid balance when it never refills.
///
/// ```
/// use std::time::Duration;
/// use keyward::limit::CreditPolicy;
///
/// let monthly = CreditPolicy::new("monthly", 10_000)?
///     .with_refill(10_000, Duration::from_secs(30 * 86_400))?;
/// assert_eq!(monthly.capacity(), 10_000);
/// # Ok::<(), keyward::limit::PolicyError>(())
/// ```
///
/// With feature `serde` it is stored as
/// `{"name": "monthly", "capacity": 10000, "refill": {"amount": 10000,
/// "interval_ms": 2592000000}}` (`"refill": null` when it never refills),
/// and read back through the same checks as [`new`](Self::new) and
/// [`with_refill`](Self::with_refill) (the refill pair of earlier versions,
/// `[10000, {"secs": 2592000, "nanos": 0}]`, still reads).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CreditPolicy {
    name: Arc<str>,
    capacity: u64,
    refill: Option<(u64, Duration)>,
    /// Worked out once (see [`Policy::fingerprint`]).
    fingerprint: u64,
}

impl fmt::Debug for CreditPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditPolicy")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("refill", &self.refill)
            .finish()
    }
}

impl CreditPolicy {
    /// The largest capacity, 999 999 999 999 999: the `RateLimit` fields
    /// announce the balance as a structured-field integer, which has at
    /// most 15 digits (RFC 9651).
    pub const MAX_CAPACITY: u64 = MAX_FIELD_INTEGER;

    /// A balance of `capacity` credits that never refills.
    ///
    /// The name is 1 to 64 characters of `a-z`, `0-9`, `-`, `_` and `.`,
    /// starting with a letter; `capacity` is at least 1 and at most
    /// [`MAX_CAPACITY`](Self::MAX_CAPACITY).
    pub fn new(name: &str, capacity: u64) -> Result<Self, PolicyError> {
        validate_name(name)?;
        if capacity == 0 {
            return Err(PolicyError::Zero);
        }
        if capacity > Self::MAX_CAPACITY {
            return Err(PolicyError::CapacityTooLarge);
        }
        Ok(Self::derived(name.into(), capacity, None))
    }

    fn derived(name: Arc<str>, capacity: u64, refill: Option<(u64, Duration)>) -> Self {
        let (amount, every) = refill.unwrap_or((0, Duration::ZERO));
        let fingerprint = fingerprint(2, &name, [capacity, amount, saturating_nanos(every)]);
        Self {
            name,
            capacity,
            refill,
            fingerprint,
        }
    }

    /// Adds `amount` credits every `interval`, up to the capacity.
    ///
    /// `amount` is at least 1; `interval` is at least a second, at most
    /// [`RatePolicy::MAX_WINDOW`] (100 years), and whole milliseconds.
    pub fn with_refill(self, amount: u64, interval: Duration) -> Result<Self, PolicyError> {
        if amount == 0 {
            return Err(PolicyError::Zero);
        }
        if interval < Duration::from_secs(1) {
            return Err(PolicyError::WindowTooShort);
        }
        if interval > RatePolicy::MAX_WINDOW {
            return Err(PolicyError::WindowTooLong);
        }
        whole_millis(interval)?;
        Ok(Self::derived(
            self.name,
            self.capacity,
            Some((amount, interval)),
        ))
    }

    /// The policy's name, as the headers show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The most credits a key holds; a new key starts full.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// How many credits come back, and how often.
    pub fn refill(&self) -> Option<(u64, Duration)> {
        self.refill
    }

    /// The time an empty balance takes to fill up, if it refills.
    pub fn time_to_fill(&self) -> Option<Duration> {
        let (amount, interval) = self.refill?;
        // The amount is at least 1 (see `with_refill`); `max` only spares
        // the division any doubt.
        let steps = self.capacity.div_ceil(amount.max(1));
        Some(interval.saturating_mul(u32::try_from(steps).unwrap_or(u32::MAX)))
    }
}

/// One named limit on a key: a rate or a credit balance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Policy {
    /// Requests per window, with a burst.
    Rate(RatePolicy),
    /// A balance of credits.
    Credits(CreditPolicy),
}

impl Policy {
    /// The policy's name.
    pub fn name(&self) -> &str {
        match self {
            Policy::Rate(rate) => rate.name(),
            Policy::Credits(credits) => credits.name(),
        }
    }

    /// A digest of what this policy's state depends on: its kind, its
    /// name, and for a rate its period and burst (two rates that decide
    /// alike share it), for credits its capacity and refill. A limiter
    /// keeps this word, not a copy of the policy, to tell a key's
    /// policies apart and to notice that a tier changed. Names come from
    /// the operator, not from clients, so a fast non-cryptographic mix is
    /// enough. A collision (about 2^-64 for two given policies) between two
    /// policies of one key would make two rates, or a tier's old and new
    /// credit policy, share one state; between a rate and a credit policy,
    /// the limiter would find a state of the wrong kind and fail the check
    /// with a backend error (`503`, unless `insecure_fail_open`).
    ///
    /// A limiter backend names a key's state for this policy by it (with
    /// the key id): a tier change then starts the changed policy full and
    /// keeps the others. It is stable within a release of keyward; a
    /// release that changes it says so, and states named by the old one
    /// restart full.
    pub fn fingerprint(&self) -> u64 {
        match self {
            Policy::Rate(rate) => rate.fingerprint,
            Policy::Credits(credits) => credits.fingerprint,
        }
    }

    pub(crate) fn shared_name(&self) -> &Arc<str> {
        match self {
            Policy::Rate(rate) => &rate.name,
            Policy::Credits(credits) => &credits.name,
        }
    }

    /// Writes this policy's `RateLimit-Policy` list member.
    fn write_policy_member(&self, out: &mut String) {
        let _ = match self {
            Policy::Rate(rate) => write!(
                out,
                "\"{}\";q={};w={}",
                rate.name,
                rate.quota,
                whole_seconds(rate.window)
            ),
            Policy::Credits(credits) => {
                let _ = write!(out, "\"{}\";q={}", credits.name, credits.capacity);
                match credits.time_to_fill() {
                    // Up to 100 years times the capacity: more digits than
                    // a structured-field integer may have.
                    Some(fill) => write!(out, ";w={}", whole_seconds(fill).min(MAX_FIELD_INTEGER)),
                    None => Ok(()),
                }
            }
        };
    }
}

/// See [`Policy::fingerprint`].
fn fingerprint(kind: u64, name: &str, parameters: [u64; 3]) -> u64 {
    let mut digest = Digest(kind ^ ((name.len() as u64) << 8));
    // Names are ASCII without NUL, and the length is mixed in, so
    // zero-padding the last chunk is unambiguous.
    for chunk in name.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        digest.mix(u64::from_le_bytes(word));
    }
    for parameter in parameters {
        digest.mix(parameter);
    }
    digest.finish()
}

/// A multiply-rotate mix with a murmur3 finish.
struct Digest(u64);

impl Digest {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

impl From<RatePolicy> for Policy {
    fn from(rate: RatePolicy) -> Self {
        Policy::Rate(rate)
    }
}

impl From<CreditPolicy> for Policy {
    fn from(credits: CreditPolicy) -> Self {
        Policy::Credits(credits)
    }
}

/// The limits of a key, or of a tier of keys that share them: its rate
/// policies and at most one credit policy. Cheap to clone; give the same
/// `Limits` to every key of a tier.
///
/// Each key is limited by its own state: two keys of one tier never share
/// a budget.
///
/// ```
/// use std::time::Duration;
/// use keyward::limit::{CreditPolicy, Limits, RatePolicy};
///
/// let pro = Limits::new([
///     RatePolicy::new("burst", 100, Duration::from_secs(1))?.into(),
///     RatePolicy::new("daily", 100_000, Duration::from_secs(86_400))?.into(),
///     CreditPolicy::new("monthly", 1_000_000)?
///         .with_refill(1_000_000, Duration::from_secs(30 * 86_400))?
///         .into(),
/// ])?;
/// assert_eq!(
///     pro.policy_header().unwrap(),
///     r#""burst";q=100;w=1, "daily";q=100000;w=86400, "monthly";q=1000000;w=2592000"#
/// );
/// # Ok::<(), keyward::limit::PolicyError>(())
/// ```
#[derive(Clone, Default)]
pub struct Limits(Option<Arc<LimitsInner>>);

struct LimitsInner {
    policies: Box<[Policy]>,
    policy_header: HeaderValue,
    /// The policies' indices by fingerprint: the order in which a limiter
    /// takes their states when it decides several at once, the same for
    /// every `Limits`, so that two requests never wait for each other.
    lock_order: [u8; Limits::MAX_POLICIES],
    /// Each policy's metric keys, built once here rather than per request.
    #[cfg(feature = "metrics")]
    metric_keys: Box<[crate::metrics::PolicyKeys]>,
}

impl Limits {
    /// The most policies one `Limits` holds. A limiter keeps the state of
    /// a key's policies together (the [`MemoryLimiter`](super::MemoryLimiter)
    /// at most 16 per key): 8 leaves room for the states of the old tier
    /// while a key changes tiers.
    pub const MAX_POLICIES: usize = 8;

    /// No limits.
    pub fn none() -> Self {
        Self(None)
    }

    /// These policies, checked in this order (a credit policy always
    /// last, so that credits are spent only on requests every rate allows).
    ///
    /// At most [`MAX_POLICIES`](Self::MAX_POLICIES) policies, with
    /// distinct names, and at most one credit policy.
    pub fn new(policies: impl IntoIterator<Item = Policy>) -> Result<Self, PolicyError> {
        let mut policies: Vec<Policy> = policies.into_iter().collect();
        if policies.is_empty() {
            return Ok(Self::none());
        }
        if policies.len() > Self::MAX_POLICIES {
            return Err(PolicyError::TooManyPolicies {
                max: Self::MAX_POLICIES,
            });
        }
        for (i, policy) in policies.iter().enumerate() {
            if policies[..i].iter().any(|p| p.name() == policy.name()) {
                return Err(PolicyError::DuplicateName(policy.name().to_owned()));
            }
        }
        let credits = policies
            .iter()
            .filter(|p| matches!(p, Policy::Credits(_)))
            .count();
        if credits > 1 {
            return Err(PolicyError::SeveralCreditPolicies);
        }
        policies.sort_by_key(|p| matches!(p, Policy::Credits(_)));

        let mut header = String::new();
        for (i, policy) in policies.iter().enumerate() {
            if i > 0 {
                header.push_str(", ");
            }
            policy.write_policy_member(&mut header);
        }
        // Names, numbers and punctuation only: always a valid header value.
        let policy_header = HeaderValue::try_from(header).map_err(|_| PolicyError::InvalidName)?;
        let mut order: Vec<u8> = (0..policies.len() as u8).collect();
        order.sort_by_key(|&i| policies[usize::from(i)].fingerprint());
        let mut lock_order = [0; Limits::MAX_POLICIES];
        lock_order[..order.len()].copy_from_slice(&order);
        Ok(Self(Some(Arc::new(LimitsInner {
            #[cfg(feature = "metrics")]
            metric_keys: policies
                .iter()
                .map(|policy| crate::metrics::policy_keys(policy.shared_name()))
                .collect(),
            policies: policies.into_boxed_slice(),
            policy_header,
            lock_order,
        }))))
    }

    /// The policies, rates first.
    pub fn policies(&self) -> &[Policy] {
        self.0.as_ref().map_or(&[], |inner| &inner.policies)
    }

    /// The policies' indices in the order a limiter takes their states.
    pub(crate) fn lock_order(&self) -> &[u8] {
        self.0
            .as_ref()
            .map_or(&[], |inner| &inner.lock_order[..inner.policies.len()])
    }

    /// The metric keys of each policy, in the order of [`policies`](Self::policies).
    #[cfg(feature = "metrics")]
    pub(crate) fn metric_keys(&self) -> &[crate::metrics::PolicyKeys] {
        self.0.as_ref().map_or(&[], |inner| &inner.metric_keys)
    }

    /// Whether there are no policies.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The `RateLimit-Policy` header value, if there are policies.
    pub fn policy_header(&self) -> Option<&HeaderValue> {
        self.0.as_ref().map(|inner| &inner.policy_header)
    }
}

impl PartialEq for Limits {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.policies == b.policies,
            (None, None) => true,
            _ => false,
        }
    }
}

impl Eq for Limits {}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.policies()).finish()
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Limits {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.policies())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Limits {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Each policy is checked as it is deserialized; `new` checks them
        // together.
        let policies = Vec::<Policy>::deserialize(deserializer)?;
        Limits::new(policies).map_err(serde::de::Error::custom)
    }
}

/// The stored shapes of policies: durations as whole milliseconds with the
/// unit in the field's name, a refill as an object with named fields; and
/// the shapes of earlier versions, still read.
#[cfg(feature = "serde")]
mod stored {
    use std::sync::Arc;
    use std::time::Duration;

    use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
    use serde::de::{self, Deserializer, Visitor};
    use serde::ser::{SerializeStruct, Serializer};
    use serde::{Deserialize, Serialize};

    use super::{whole_millis, CreditPolicy, RatePolicy};

    /// Milliseconds of a window or interval the constructors checked.
    fn millis<E: serde::ser::Error>(duration: Duration) -> Result<u64, E> {
        whole_millis(duration).map_err(E::custom)
    }

    impl Serialize for RatePolicy {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut out = serializer.serialize_struct("RatePolicy", 4)?;
            out.serialize_field("name", &*self.name)?;
            out.serialize_field("quota", &self.quota)?;
            out.serialize_field("window_ms", &millis::<S::Error>(self.window)?)?;
            out.serialize_field("burst", &self.burst)?;
            out.end()
        }
    }

    /// A rate policy as stored: `window_ms`, or the `window` of earlier
    /// versions.
    #[derive(Deserialize)]
    struct RateFields {
        name: Arc<str>,
        quota: u32,
        burst: u32,
        #[serde(default)]
        window_ms: Option<u64>,
        #[serde(default)]
        window: Option<Duration>,
    }

    /// Deserialized policies pass the checks of [`RatePolicy::new`] and
    /// [`RatePolicy::with_burst`]: bad input is an error, never a panic
    /// later.
    impl<'de> Deserialize<'de> for RatePolicy {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let fields = RateFields::deserialize(deserializer)?;
            let window = match (fields.window_ms, fields.window) {
                (Some(ms), None) => Duration::from_millis(ms),
                (None, Some(window)) => window,
                (None, None) => return Err(de::Error::missing_field("window_ms")),
                (Some(_), Some(_)) => {
                    return Err(de::Error::custom(
                        "a rate policy has `window_ms` or `window`, not both",
                    ))
                }
            };
            RatePolicy::validated(fields.name, fields.quota, window, fields.burst)
                .map_err(de::Error::custom)
        }
    }

    impl Serialize for CreditPolicy {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let refill = match self.refill {
                Some((amount, interval)) => Some(RefillFields {
                    amount,
                    interval_ms: millis::<S::Error>(interval)?,
                }),
                None => None,
            };
            let mut out = serializer.serialize_struct("CreditPolicy", 3)?;
            out.serialize_field("name", &*self.name)?;
            out.serialize_field("capacity", &self.capacity)?;
            out.serialize_field("refill", &refill)?;
            out.end()
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RefillFields {
        amount: u64,
        interval_ms: u64,
    }

    /// A refill as stored, `{"amount", "interval_ms"}`, or as the pair
    /// `[amount, {"secs", "nanos"}]` of earlier versions.
    struct Refill(u64, Duration);

    impl<'de> Deserialize<'de> for Refill {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(RefillVisitor)
        }
    }

    struct RefillVisitor;

    impl<'de> Visitor<'de> for RefillVisitor {
        type Value = Refill;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(r#"a refill such as {"amount": 10, "interval_ms": 60000}"#)
        }

        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Refill, A::Error> {
            let fields = RefillFields::deserialize(MapAccessDeserializer::new(map))?;
            Ok(Refill(
                fields.amount,
                Duration::from_millis(fields.interval_ms),
            ))
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Refill, A::Error> {
            let (amount, interval) =
                <(u64, Duration)>::deserialize(SeqAccessDeserializer::new(seq))?;
            Ok(Refill(amount, interval))
        }
    }

    #[derive(Deserialize)]
    struct CreditFields {
        name: Arc<str>,
        capacity: u64,
        #[serde(default)]
        refill: Option<Refill>,
    }

    /// Deserialized policies pass the checks of [`CreditPolicy::new`] and
    /// [`CreditPolicy::with_refill`]: bad input is an error, never a panic
    /// later.
    impl<'de> Deserialize<'de> for CreditPolicy {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let fields = CreditFields::deserialize(deserializer)?;
            let credits =
                CreditPolicy::new(&fields.name, fields.capacity).map_err(de::Error::custom)?;
            match fields.refill {
                Some(Refill(amount, interval)) => credits
                    .with_refill(amount, interval)
                    .map_err(de::Error::custom),
                None => Ok(credits),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "Burst", "1st", "a b", "a\"b", "é", &"a".repeat(65)] {
            assert_eq!(
                RatePolicy::new(bad, 1, Duration::from_secs(1)),
                Err(PolicyError::InvalidName),
                "{bad:?}"
            );
        }
        assert!(RatePolicy::new("per-second_v1.2", 1, Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn limits_are_validated_and_ordered() {
        let rate = |n: &str| Policy::from(RatePolicy::new(n, 1, Duration::from_secs(1)).unwrap());
        let credits = |n: &str| Policy::from(CreditPolicy::new(n, 5).unwrap());
        assert_eq!(
            Limits::new([rate("a"), rate("a")]),
            Err(PolicyError::DuplicateName("a".into()))
        );
        assert_eq!(
            Limits::new([credits("a"), credits("b")]),
            Err(PolicyError::SeveralCreditPolicies)
        );
        let limits = Limits::new([credits("c"), rate("r")]).unwrap();
        assert_eq!(limits.policies()[0].name(), "r");
        assert_eq!(limits.policy_header().unwrap(), r#""r";q=1;w=1, "c";q=5"#);
        assert!(Limits::new([]).unwrap().is_empty());
    }

    #[test]
    fn fingerprints_tell_policies_apart() {
        let rate = |n: &str, q: u32, w: u64| {
            Policy::from(RatePolicy::new(n, q, Duration::from_secs(w)).unwrap())
        };
        let same = rate("burst", 5, 1);
        assert_eq!(same.fingerprint(), rate("burst", 5, 1).fingerprint());
        // The same decisions, however written: the same state.
        let alike = RatePolicy::new("burst", 10, Duration::from_secs(2))
            .unwrap()
            .with_burst(5)
            .unwrap();
        assert_eq!(same.fingerprint(), Policy::from(alike).fingerprint());
        let others = [
            rate("burst", 6, 1),
            rate("bursts", 5, 1),
            rate("burst.per.second.for.a.long.name", 5, 1),
            Policy::from(
                RatePolicy::new("burst", 5, Duration::from_secs(1))
                    .unwrap()
                    .with_burst(1)
                    .unwrap(),
            ),
            Policy::from(CreditPolicy::new("burst", 5).unwrap()),
            Policy::from(
                CreditPolicy::new("burst", 5)
                    .unwrap()
                    .with_refill(5, Duration::from_secs(1))
                    .unwrap(),
            ),
        ];
        for (i, a) in others.iter().enumerate() {
            assert_ne!(a.fingerprint(), same.fingerprint(), "{a:?}");
            for b in &others[..i] {
                assert_ne!(a.fingerprint(), b.fingerprint(), "{a:?} {b:?}");
            }
        }
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_round_trip_keeps_what_derives_from_the_fields() {
        let limits = Limits::new([
            RatePolicy::new("burst", 5, Duration::from_secs(1))
                .unwrap()
                .with_burst(2)
                .unwrap()
                .into(),
            CreditPolicy::new("monthly", 10)
                .unwrap()
                .with_refill(10, Duration::from_secs(60))
                .unwrap()
                .into(),
        ])
        .unwrap();
        let json = serde_json::to_string(&limits).unwrap();
        assert!(
            !json.contains("fingerprint") && !json.contains("gcra"),
            "{json}"
        );
        let back: Limits = serde_json::from_str(&json).unwrap();
        assert_eq!(back, limits);
        for (a, b) in back.policies().iter().zip(limits.policies()) {
            assert_eq!(a.fingerprint(), b.fingerprint());
        }
        assert_eq!(
            format!("{:?}", limits.policies()[0]),
            r#"Rate(RatePolicy { name: "burst", quota: 5, window: 1s, burst: 2 })"#
        );
    }

    #[test]
    fn zero_and_short_windows_are_refused() {
        assert_eq!(
            RatePolicy::new("a", 0, Duration::from_secs(1)),
            Err(PolicyError::Zero)
        );
        assert_eq!(
            RatePolicy::new("a", 1, Duration::from_millis(999)),
            Err(PolicyError::WindowTooShort)
        );
        assert!(CreditPolicy::new("a", 1)
            .unwrap()
            .with_refill(1, Duration::ZERO)
            .is_err());
    }

    /// Beyond 100 years, GCRA's times would leave a `u64`, and saturated
    /// they allowed every request.
    #[test]
    fn windows_longer_than_a_hundred_years_are_refused() {
        let max = RatePolicy::MAX_WINDOW;
        assert_eq!(max, Duration::from_secs(3_153_600_000));
        for window in [
            Duration::from_secs(u64::MAX),
            Duration::from_secs(600 * 365 * 86_400),
            max + Duration::from_nanos(1),
        ] {
            assert_eq!(
                RatePolicy::new("lifetime", 100, window),
                Err(PolicyError::WindowTooLong),
                "{window:?}"
            );
        }
        let century = RatePolicy::new("lifetime", 100, max).unwrap();
        assert_eq!(century.period(), max / 100);
        // A burst beyond the quota stretches the time a full burst takes
        // to come back: `window * burst / quota`.
        assert_eq!(
            century.clone().with_burst(101),
            Err(PolicyError::WindowTooLong)
        );
        assert_eq!(century.clone().with_burst(100).unwrap().burst(), 100);
        let daily = RatePolicy::new("daily", 1, Duration::from_secs(86_400)).unwrap();
        assert!(daily.clone().with_burst(36_500).is_ok());
        assert_eq!(daily.with_burst(36_501), Err(PolicyError::WindowTooLong));
        // Even the largest burst of the shortest period fits.
        let fast = RatePolicy::new("fast", u32::MAX, Duration::from_secs(1)).unwrap();
        assert_eq!(fast.period(), Duration::from_nanos(1));
        assert!(fast.with_burst(u32::MAX).is_ok());

        let credits = CreditPolicy::new("monthly", 10).unwrap();
        assert_eq!(
            credits.clone().with_refill(1, max + Duration::from_secs(1)),
            Err(PolicyError::WindowTooLong)
        );
        assert!(credits.with_refill(1, max).is_ok());
    }

    /// `RateLimit` fields are structured-field integers: 15 digits at most.
    #[test]
    fn capacities_fit_a_structured_field_integer() {
        assert_eq!(CreditPolicy::MAX_CAPACITY, 999_999_999_999_999);
        assert_eq!(
            CreditPolicy::new("a", 1_000_000_000_000_000),
            Err(PolicyError::CapacityTooLarge)
        );
        assert_eq!(
            CreditPolicy::new("a", u64::MAX),
            Err(PolicyError::CapacityTooLarge)
        );
        // The largest balance, refilled one credit a century: its `w`
        // would have 26 digits, and is clamped to 15.
        let vast = CreditPolicy::new("vast", CreditPolicy::MAX_CAPACITY)
            .unwrap()
            .with_refill(1, RatePolicy::MAX_WINDOW)
            .unwrap();
        let limits = Limits::new([vast.into()]).unwrap();
        assert_eq!(
            limits.policy_header().unwrap(),
            r#""vast";q=999999999999999;w=999999999999999"#
        );
    }

    /// The memory limiter keeps at most 16 states per key; more policies
    /// than that were silently never denied.
    #[test]
    fn at_most_eight_policies() {
        let rates = |n: usize| -> Vec<Policy> {
            (0..n)
                .map(|i| {
                    RatePolicy::new(&format!("p{i}"), 1, Duration::from_secs(3600))
                        .unwrap()
                        .into()
                })
                .collect()
        };
        assert_eq!(Limits::MAX_POLICIES, 8);
        assert_eq!(Limits::new(rates(8)).unwrap().policies().len(), 8);
        for n in [9, 17] {
            assert_eq!(
                Limits::new(rates(n)),
                Err(PolicyError::TooManyPolicies { max: 8 })
            );
        }
        let mut seven_and_credits = rates(7);
        seven_and_credits.push(CreditPolicy::new("prepaid", 1).unwrap().into());
        assert!(Limits::new(seven_and_credits.clone()).is_ok());
        seven_and_credits.push(rates(8).pop().unwrap());
        assert_eq!(
            Limits::new(seven_and_credits),
            Err(PolicyError::TooManyPolicies { max: 8 })
        );
    }
}

/// Deserialized policies pass the constructors' checks: bad input is an
/// error, never a policy that panics or misbehaves later.
#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use super::*;

    fn error(json: &str) -> String {
        match serde_json::from_str::<Limits>(json) {
            Ok(limits) => panic!("accepted {json}: {limits:?}"),
            Err(error) => error.to_string(),
        }
    }

    /// The reviewer's input: a refill of zero credits divided by zero in
    /// `time_to_fill` (while `Limits` rendered its header).
    #[test]
    fn a_zero_refill_amount_is_an_error_not_a_panic() {
        let json = r#"[{"credits":{"name":"m","capacity":10,"refill":[0,{"secs":1,"nanos":0}]}}]"#;
        let result = std::panic::catch_unwind(|| serde_json::from_str::<Limits>(json));
        let error = result.expect("deserializing panicked").unwrap_err();
        assert!(error.to_string().contains("at least 1"), "{error}");
    }

    fn sample() -> Limits {
        Limits::new([
            RatePolicy::new("burst", 5, Duration::from_millis(1500))
                .unwrap()
                .with_burst(2)
                .unwrap()
                .into(),
            CreditPolicy::new("monthly", 10_000)
                .unwrap()
                .with_refill(10_000, Duration::from_secs(30 * 86_400))
                .unwrap()
                .into(),
        ])
        .unwrap()
    }

    #[test]
    fn stored_shape_has_named_fields_and_units() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"rate": {"name": "burst", "quota": 5, "window_ms": 1500, "burst": 2}},
                {"credits": {"name": "monthly", "capacity": 10000,
                             "refill": {"amount": 10000, "interval_ms": 2_592_000_000u64}}}
            ])
        );
        let back: Limits = serde_json::from_value(json).unwrap();
        assert_eq!(back, sample());
        let prepaid = Limits::new([CreditPolicy::new("prepaid", 3).unwrap().into()]).unwrap();
        assert_eq!(
            serde_json::to_string(&prepaid).unwrap(),
            r#"[{"credits":{"name":"prepaid","capacity":3,"refill":null}}]"#
        );
        // A missing refill is no refill.
        let read: Limits =
            serde_json::from_str(r#"[{"credits":{"name":"prepaid","capacity":3}}]"#).unwrap();
        assert_eq!(read, prepaid);
    }

    #[test]
    fn the_shapes_of_earlier_versions_still_read() {
        let old = r#"[
            {"rate": {"name": "burst", "quota": 5, "window": {"secs": 1, "nanos": 500000000}, "burst": 2}},
            {"credits": {"name": "monthly", "capacity": 10000, "refill": [10000, {"secs": 2592000, "nanos": 0}]}}
        ]"#;
        let read: Limits = serde_json::from_str(old).unwrap();
        assert_eq!(read, sample());
        for (a, b) in read.policies().iter().zip(sample().policies()) {
            assert_eq!(a.fingerprint(), b.fingerprint());
        }
        // And are written back in the new shape.
        assert!(serde_json::to_string(&read)
            .unwrap()
            .contains(r#""window_ms":1500"#));
    }

    #[test]
    fn a_window_is_given_once() {
        let both = r#"[{"rate":{"name":"m","quota":1,"window_ms":1000,"window":{"secs":1,"nanos":0},"burst":1}}]"#;
        assert!(error(both).contains("not both"), "{}", error(both));
        let neither = r#"[{"rate":{"name":"m","quota":1,"burst":1}}]"#;
        assert!(error(neither).contains("window_ms"), "{}", error(neither));
        for bad in [
            r#"[{"credits":{"name":"m","capacity":1,"refill":{"amount":1}}}]"#,
            r#"[{"credits":{"name":"m","capacity":1,"refill":{"amount":1,"interval_ms":1000,"every":2}}}]"#,
            r#"[{"credits":{"name":"m","capacity":1,"refill":[1]}}]"#,
            r#"[{"credits":{"name":"m","capacity":1,"refill":"daily"}}]"#,
            r#"[{"rate":{"name":"m","quota":1,"window_ms":-1,"burst":1}}]"#,
            r#"[{"rate":{"name":"m","quota":1,"window_ms":1.5,"burst":1}}]"#,
        ] {
            error(bad);
        }
    }

    #[test]
    fn windows_below_a_millisecond_are_refused_everywhere() {
        assert_eq!(
            RatePolicy::new("m", 1, Duration::from_nanos(1_000_000_001)),
            Err(PolicyError::SubMillisecond)
        );
        assert_eq!(
            CreditPolicy::new("m", 1)
                .unwrap()
                .with_refill(1, Duration::from_micros(1_000_001)),
            Err(PolicyError::SubMillisecond)
        );
        let old = r#"[{"rate":{"name":"m","quota":1,"window":{"secs":1,"nanos":1},"burst":1}}]"#;
        assert!(error(old).contains("whole milliseconds"), "{}", error(old));
        let huge = format!(
            r#"[{{"rate":{{"name":"m","quota":1,"window_ms":{},"burst":1}}}}]"#,
            u64::MAX
        );
        assert!(error(&huge).contains("100 years"), "{}", error(&huge));
    }

    #[test]
    fn a_zero_quota_or_burst_is_an_error() {
        for json in [
            r#"[{"rate":{"name":"m","quota":0,"window":{"secs":1,"nanos":0},"burst":0}}]"#,
            r#"[{"rate":{"name":"m","quota":0,"window":{"secs":1,"nanos":0},"burst":1}}]"#,
            r#"[{"rate":{"name":"m","quota":1,"window":{"secs":1,"nanos":0},"burst":0}}]"#,
            r#"[{"credits":{"name":"m","capacity":0,"refill":null}}]"#,
        ] {
            assert!(error(json).contains("at least 1"), "{json}");
        }
    }

    #[test]
    fn every_check_of_the_constructors_applies() {
        let rate = |name: &str, quota: u32, secs: u64, burst: u32| {
            format!(
                r#"[{{"rate":{{"name":"{name}","quota":{quota},"window":{{"secs":{secs},"nanos":0}},"burst":{burst}}}}}]"#
            )
        };
        assert!(error(&rate("Bad", 1, 1, 1)).contains("policy names"));
        assert!(error(&rate("m", 1, 0, 1)).contains("at least one second"));
        assert!(error(&rate("m", 100, u64::MAX, 100)).contains("100 years"));
        assert!(error(&rate("m", 1, 86_400, 36_501)).contains("100 years"));
        assert!(
            error(r#"[{"credits":{"name":"m","capacity":1000000000000000,"refill":null}}]"#)
                .contains("999999999999999")
        );
        assert!(error(
            r#"[{"credits":{"name":"m","capacity":1,"refill":[1,{"secs":3153600001,"nanos":0}]}}]"#
        )
        .contains("100 years"));
        let nine = (0..9)
            .map(|i| rate(&format!("p{i}"), 1, 1, 1))
            .map(|one| one[1..one.len() - 1].to_owned())
            .collect::<Vec<_>>()
            .join(",");
        assert!(error(&format!("[{nine}]")).contains("at most 8 policies"));
        // What is valid still reads back.
        let limits: Limits = serde_json::from_str(&rate("m", 10, 60, 2)).unwrap();
        let Policy::Rate(rate) = &limits.policies()[0] else {
            panic!("{limits:?}")
        };
        assert_eq!((rate.quota(), rate.burst()), (10, 2));
        assert_eq!(rate.period(), Duration::from_secs(6));
    }
}
