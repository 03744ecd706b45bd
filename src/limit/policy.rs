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
#[derive(Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(from = "RateFields"))]
pub struct RatePolicy {
    name: Arc<str>,
    quota: u32,
    window: Duration,
    burst: u32,
    /// Worked out once, here, not on every check: GCRA's parameters in
    /// nanoseconds, and the fingerprint (see [`Policy::fingerprint`]).
    #[cfg_attr(feature = "serde", serde(skip_serializing))]
    gcra: Gcra,
    #[cfg_attr(feature = "serde", serde(skip_serializing))]
    fingerprint: u64,
}

/// A rate policy as serialized: its fields without what derives from them.
#[cfg(feature = "serde")]
#[derive(serde::Deserialize)]
struct RateFields {
    name: Arc<str>,
    quota: u32,
    window: Duration,
    burst: u32,
}

#[cfg(feature = "serde")]
impl From<RateFields> for RatePolicy {
    fn from(fields: RateFields) -> Self {
        RatePolicy::derived(fields.name, fields.quota, fields.window, fields.burst)
    }
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
    /// `quota` requests per `window`, with a burst of `quota`.
    pub fn new(name: &str, quota: u32, window: Duration) -> Result<Self, PolicyError> {
        validate_name(name)?;
        if quota == 0 {
            return Err(PolicyError::Zero);
        }
        if window < Duration::from_secs(1) {
            return Err(PolicyError::WindowTooShort);
        }
        Ok(Self::derived(name.into(), quota, window, quota))
    }

    /// At most `burst` requests at once (the rate stays `quota / window`).
    pub fn with_burst(self, burst: u32) -> Result<Self, PolicyError> {
        if burst == 0 {
            return Err(PolicyError::Zero);
        }
        Ok(Self::derived(self.name, self.quota, self.window, burst))
    }

    fn derived(name: Arc<str>, quota: u32, window: Duration, burst: u32) -> Self {
        // Checked: a deserialized policy may have a zero quota.
        let period = window
            .checked_div(quota)
            .unwrap_or(window)
            .max(Duration::from_nanos(1));
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

    /// The policy's GCRA parameters.
    pub(crate) fn gcra(&self) -> Gcra {
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
        (self.window / self.quota).max(Duration::from_nanos(1))
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
#[derive(Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(from = "CreditFields"))]
pub struct CreditPolicy {
    name: Arc<str>,
    capacity: u64,
    refill: Option<(u64, Duration)>,
    /// Worked out once (see [`Policy::fingerprint`]).
    #[cfg_attr(feature = "serde", serde(skip_serializing))]
    fingerprint: u64,
}

/// A credit policy as serialized: its fields without what derives from them.
#[cfg(feature = "serde")]
#[derive(serde::Deserialize)]
struct CreditFields {
    name: Arc<str>,
    capacity: u64,
    refill: Option<(u64, Duration)>,
}

#[cfg(feature = "serde")]
impl From<CreditFields> for CreditPolicy {
    fn from(fields: CreditFields) -> Self {
        CreditPolicy::derived(fields.name, fields.capacity, fields.refill)
    }
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
    /// A balance of `capacity` credits that never refills.
    pub fn new(name: &str, capacity: u64) -> Result<Self, PolicyError> {
        validate_name(name)?;
        if capacity == 0 {
            return Err(PolicyError::Zero);
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
    pub fn with_refill(self, amount: u64, interval: Duration) -> Result<Self, PolicyError> {
        if amount == 0 {
            return Err(PolicyError::Zero);
        }
        if interval < Duration::from_secs(1) {
            return Err(PolicyError::WindowTooShort);
        }
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
        let steps = self.capacity.div_ceil(amount);
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
    /// enough; a collision (2^-64 for two given policies) would let two
    /// policies of one key share a state.
    pub(crate) fn fingerprint(&self) -> u64 {
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
                    Some(fill) => write!(out, ";w={}", whole_seconds(fill)),
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
}

impl Limits {
    /// No limits.
    pub fn none() -> Self {
        Self(None)
    }

    /// These policies, checked in this order (a credit policy always
    /// last, so that credits are spent only on requests every rate allows).
    pub fn new(policies: impl IntoIterator<Item = Policy>) -> Result<Self, PolicyError> {
        let mut policies: Vec<Policy> = policies.into_iter().collect();
        if policies.is_empty() {
            return Ok(Self::none());
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
        Ok(Self(Some(Arc::new(LimitsInner {
            policies: policies.into_boxed_slice(),
            policy_header,
        }))))
    }

    /// The policies, rates first.
    pub fn policies(&self) -> &[Policy] {
        self.0.as_ref().map_or(&[], |inner| &inner.policies)
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
        let policies = Vec::<Policy>::deserialize(deserializer)?;
        for policy in &policies {
            validate_name(policy.name()).map_err(serde::de::Error::custom)?;
        }
        Limits::new(policies).map_err(serde::de::Error::custom)
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
}
