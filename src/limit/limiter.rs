//! The [`Limiter`] trait: where limit state lives, and how one request is
//! decided against all of a key's policies at once.

use std::fmt::{self, Debug};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::Limits;
use crate::auth::Principal;
use crate::key::KeyId;

/// What a limiter answered for one policy.
///
/// In a [`Decision`] that allows the request, each verdict says what is
/// left after it. In one that refuses it, nothing was spent: a policy that
/// would have allowed the request says what is left now, and one that
/// refused says when it could allow it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The units left, and in the top bit whether the policy allows:
    /// 16 bytes a verdict, since eight make a `Decision`, which the
    /// request path builds and moves.
    remaining: u64,
    /// Nanoseconds; `u64::MAX` for never.
    reset: u64,
}

/// The top bit of [`Verdict::remaining`].
const ALLOWED: u64 = 1 << 63;

impl Verdict {
    const EMPTY: Verdict = Verdict {
        remaining: 0,
        reset: 0,
    };

    /// The policy allows the request; `remaining` units are left (at most
    /// `2^63 - 1` are told), and the policy is fully restored after
    /// `reset` (`Duration::MAX`: never, for a balance that does not
    /// refill; other times are kept to the nanosecond up to 584 years).
    #[inline]
    pub fn allowed(remaining: u64, reset: Duration) -> Self {
        Self {
            remaining: remaining.min(ALLOWED - 1) | ALLOWED,
            reset: if reset == Duration::MAX {
                u64::MAX
            } else {
                u64::try_from(reset.as_nanos()).map_or(u64::MAX - 1, |n| n.min(u64::MAX - 1))
            },
        }
    }

    /// A verdict from times the limiter keeps in nanoseconds (never
    /// "never": `u64::MAX` is kept as 584 years).
    #[inline]
    pub(crate) fn from_nanos(allowed: bool, remaining: u64, reset: u64) -> Self {
        Self {
            remaining: remaining.min(ALLOWED - 1) | if allowed { ALLOWED } else { 0 },
            reset: reset.min(u64::MAX - 1),
        }
    }

    /// The policy refuses the request, which could pass after
    /// `retry_after` (`Duration::MAX`: never); `remaining` units are left.
    #[inline]
    pub fn denied(remaining: u64, retry_after: Duration) -> Self {
        let allowed = Self::allowed(remaining, retry_after);
        Self {
            remaining: allowed.remaining & !ALLOWED,
            ..allowed
        }
    }

    /// Whether this policy allows the request.
    #[inline]
    pub fn is_allowed(&self) -> bool {
        self.remaining & ALLOWED != 0
    }

    /// The units left (after the request, if the decision allowed it).
    #[inline]
    pub fn remaining(&self) -> u64 {
        self.remaining & !ALLOWED
    }

    /// When allowed: the time until the policy is fully restored. When
    /// denied: the time until it can allow this request (the `t` of the
    /// `RateLimit` field, and never later than `Retry-After`).
    /// `Duration::MAX` for never.
    #[inline]
    pub fn reset(&self) -> Duration {
        if self.reset == u64::MAX {
            Duration::MAX
        } else {
            Duration::from_nanos(self.reset)
        }
    }
}

impl Debug for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verdict")
            .field("allowed", &self.is_allowed())
            .field("remaining", &self.remaining())
            .field("reset", &self.reset())
            .finish()
    }
}

/// A limiter's answer for one request: one [`Verdict`] per policy of the
/// key's [`Limits`], in their order.
///
/// The request passes if every policy allows it, and then every policy
/// has been spent; if any refuses, none has (all or nothing). No
/// allocation: it holds up to [`Limits::MAX_POLICIES`] verdicts inline.
///
/// ```
/// use std::time::Duration;
/// use keyward::limit::{Decision, Verdict};
///
/// let decision: Decision = [
///     Verdict::allowed(4, Duration::from_secs(1)),
///     Verdict::denied(0, Duration::from_secs(30)),
/// ]
/// .into_iter()
/// .collect();
/// assert!(!decision.is_allowed());
/// assert_eq!(decision.retry_after(), Some(Duration::from_secs(30)));
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// How many verdicts were pushed; one more than the room means too
    /// many (the layer then refuses the answer as a backend failure).
    len: u8,
    verdicts: [Verdict; Limits::MAX_POLICIES],
}

impl Decision {
    /// A decision on no policy yet (allowed).
    pub const fn new() -> Self {
        Self {
            len: 0,
            verdicts: [Verdict::EMPTY; Limits::MAX_POLICIES],
        }
    }

    /// A decision on one policy.
    #[inline]
    pub(crate) fn one(verdict: Verdict) -> Self {
        let mut verdicts = [Verdict::EMPTY; Limits::MAX_POLICIES];
        verdicts[0] = verdict;
        Self { len: 1, verdicts }
    }

    /// Adds the verdict of the next policy. A decision holds at most
    /// [`Limits::MAX_POLICIES`]; past that, it is marked as holding too
    /// many, and [`RateLimitLayer`](super::RateLimitLayer) treats it as a
    /// failed limiter (never as an allowed request).
    #[inline]
    pub fn push(&mut self, verdict: Verdict) {
        let len = usize::from(self.len);
        if let Some(slot) = self.verdicts.get_mut(len) {
            *slot = verdict;
        }
        self.len = self
            .len
            .saturating_add(1)
            .min(Limits::MAX_POLICIES as u8 + 1);
    }

    /// The verdicts, in the order of the key's policies.
    pub fn verdicts(&self) -> &[Verdict] {
        &self.verdicts[..usize::from(self.len).min(Limits::MAX_POLICIES)]
    }

    /// How many verdicts were pushed (more than [`Limits::MAX_POLICIES`]
    /// if too many were).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether no verdict was pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every policy allows the request.
    pub fn is_allowed(&self) -> bool {
        self.verdicts().iter().all(Verdict::is_allowed)
    }

    /// When a refused request could pass: the longest wait of the policies
    /// that refused it. `None` if it is allowed, or if a policy that
    /// refused never recovers (a balance that does not refill).
    pub fn retry_after(&self) -> Option<Duration> {
        let mut longest = None;
        for verdict in self.verdicts().iter().filter(|v| !v.is_allowed()) {
            let wait = verdict.reset();
            if wait == Duration::MAX {
                return None;
            }
            longest = Some(longest.map_or(wait, |l: Duration| l.max(wait)));
        }
        longest
    }
}

impl Default for Decision {
    fn default() -> Self {
        Self::new()
    }
}

impl FromIterator<Verdict> for Decision {
    fn from_iter<I: IntoIterator<Item = Verdict>>(verdicts: I) -> Self {
        let mut decision = Decision::new();
        for verdict in verdicts {
            decision.push(verdict);
        }
        decision
    }
}

impl Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.verdicts()).finish()
    }
}

/// A limiter backend failed, or a request can never be allowed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A cost that the policy can never allow at once (more than its burst
    /// or capacity). [`RateLimitLayer`](super::RateLimitLayer) answers
    /// `429` without `Retry-After`.
    #[error("cost {cost} exceeds what policy {policy:?} can ever allow at once")]
    CostTooHigh {
        /// The policy's name.
        policy: String,
        /// The request's cost.
        cost: u32,
    },
    /// The backend (a remote store) failed or timed out. The layer refuses
    /// the request (`503`, fail closed) unless told otherwise.
    #[error("limiter backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LimitError {
    /// Wraps a backend's error.
    pub fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(error))
    }
}

/// Keeps the state of every key's limits and decides each request against
/// all of its key's policies at once.
///
/// One call decides every policy of [`Limits`] for one request, and is
/// atomic: either every policy allows the request and all are spent, or
/// nothing is spent and the [`Decision`] says which policies refused and
/// when to retry. [`MemoryLimiter`](super::MemoryLimiter) keeps the state
/// in this process; `RedisLimiter` (feature `redis`) shares it between
/// processes. Only keys that authenticated are ever checked, so state is
/// never made for strangers.
///
/// # Implementing it
///
/// The trait is an `async_trait` (so that it can be used as
/// `Arc<dyn Limiter>`): put `#[keyward::async_trait]` (keyward re-exports
/// the attribute) on the `impl` block and write `check` as an `async fn`;
/// without the attribute it fails with E0195. `check_immediate` is
/// optional: implement it when some answers need no waiting (a local
/// cache), so that the layer does not box a future for them. The arithmetic is public: [`Limits::decide`] runs
/// every policy's step (GCRA for rates, [`Gcra`](super::Gcra); the refill
/// for credits) on the states a backend loaded, all or nothing, and tells
/// which states to store. A backend only keeps those
/// [`PolicyState`](super::PolicyState)s, keyed by the key id and the
/// policy's [`fingerprint`](super::Policy::fingerprint), and runs
/// `decide` inside one transaction (a lock, a Lua script, a
/// serializable transaction). A toy backend on a mutex:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::SystemTime;
/// use keyward::key::KeyId;
/// use keyward::limit::{Decision, LimitError, Limiter, Limits, PolicyState};
///
/// #[derive(Debug, Default)]
/// struct Toy(Mutex<HashMap<(KeyId, u64), PolicyState>>);
///
/// #[keyward::async_trait]
/// impl Limiter for Toy {
///     async fn check(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError> {
///         let now = SystemTime::now()
///             .duration_since(SystemTime::UNIX_EPOCH)
///             .map_or(0, |since| since.as_nanos() as u64);
///         let mut map = self.0.lock().unwrap(); // the "transaction"
///         let slot = |policy: &keyward::limit::Policy| (*id, policy.fingerprint());
///         let mut states: Vec<Option<PolicyState>> =
///             limits.policies().iter().map(|p| map.get(&slot(p)).copied()).collect();
///         let decision = limits.decide(&mut states, cost, now)?;
///         if decision.is_allowed() {
///             for (policy, state) in limits.policies().iter().zip(states) {
///                 map.insert(slot(policy), state.expect("decide fills every state it allows"));
///             }
///         }
///         Ok(decision)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use keyward::limit::RatePolicy;
/// let limits = Limits::new([RatePolicy::new("burst", 2, Duration::from_secs(60))?.into()])?;
/// let id: KeyId = "abcdefghijkl".parse()?;
/// let toy = Toy::default();
/// assert!(toy.check(&id, &limits, 1).await?.is_allowed());
/// assert!(toy.check(&id, &limits, 1).await?.is_allowed());
/// assert!(!toy.check(&id, &limits, 1).await?.is_allowed());
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait Limiter: Debug + Send + Sync + 'static {
    /// Spends `cost` units of every policy of `limits` for the key `id`,
    /// if every policy allows it; otherwise spends nothing. The decision
    /// holds one verdict per policy, in the order of
    /// [`Limits::policies`]. A cost of 0 reads the state and spends (and
    /// makes) nothing.
    async fn check(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError>;

    /// The same decision, when the limiter can make it without waiting
    /// (in memory, or from a local cache); `None` sends the layer to
    /// [`check`](Self::check). Lets the request path skip boxing a future.
    fn check_immediate(
        &self,
        id: &KeyId,
        limits: &Limits,
        cost: u32,
    ) -> Option<Result<Decision, LimitError>> {
        let _ = (id, limits, cost);
        None
    }

    /// The decision for an authenticated caller, when the limiter can make
    /// it without waiting: what [`RateLimitLayer`](super::RateLimitLayer)
    /// asks (and, on `None`, [`check`](Self::check) with the principal's
    /// key id and limits).
    ///
    /// The principal carries the key's record, which an in-memory store
    /// keeps between requests: [`MemoryLimiter`](super::MemoryLimiter)
    /// keeps a key's state there when it has one rate policy, and decides
    /// without a look-up by key id. The default is
    /// [`check_immediate`](Self::check_immediate) with the principal's key
    /// id and its record's limits; implement only `check` (and perhaps
    /// `check_immediate`) unless your state can live in the record too.
    ///
    /// For `MemoryLimiter`, a key whose state lives in its record has that
    /// state alone: a check by key id (`check`, `check_immediate`) of such
    /// a key, made by your own code, keeps a separate state in the
    /// limiter's table. To spend on an authenticated caller's budget
    /// outside [`RateLimitLayer`](super::RateLimitLayer), call this method
    /// with its principal. (A key already in the table when its stored
    /// record is first checked stays there: one state, as before.)
    fn check_principal_immediate(
        &self,
        principal: &Principal,
        cost: u32,
    ) -> Option<Result<Decision, LimitError>> {
        self.check_immediate(&principal.key_id(), &principal.record().limits, cost)
    }
}

/// `limiter` as the `Arc<dyn Limiter>` the layer keeps: an `Arc<dyn
/// Limiter>` is shared as it is, not wrapped again (which would add a
/// pointer chase and a virtual call to every check).
pub(crate) fn shared(limiter: impl Limiter) -> Arc<dyn Limiter> {
    match (&limiter as &dyn std::any::Any).downcast_ref::<Arc<dyn Limiter>>() {
        Some(shared) => Arc::clone(shared),
        None => Arc::new(limiter),
    }
}

#[async_trait]
impl<T: Limiter + ?Sized> Limiter for Arc<T> {
    async fn check(&self, id: &KeyId, limits: &Limits, cost: u32) -> Result<Decision, LimitError> {
        (**self).check(id, limits, cost).await
    }

    fn check_immediate(
        &self,
        id: &KeyId,
        limits: &Limits,
        cost: u32,
    ) -> Option<Result<Decision, LimitError>> {
        (**self).check_immediate(id, limits, cost)
    }

    fn check_principal_immediate(
        &self,
        principal: &Principal,
        cost: u32,
    ) -> Option<Result<Decision, LimitError>> {
        (**self).check_principal_immediate(principal, cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_is_small_enough_to_move() {
        assert_eq!(std::mem::size_of::<Verdict>(), 16);
        assert!(std::mem::size_of::<Decision>() <= 136);
    }

    #[test]
    fn too_many_verdicts_are_marked() {
        let mut decision = Decision::new();
        for _ in 0..Limits::MAX_POLICIES + 3 {
            decision.push(Verdict::allowed(1, Duration::ZERO));
        }
        assert_eq!(decision.len(), Limits::MAX_POLICIES + 1);
        assert_eq!(decision.verdicts().len(), Limits::MAX_POLICIES);
    }

    #[test]
    fn retry_after_is_the_longest_wait_or_never() {
        let mut decision: Decision = [
            Verdict::denied(0, Duration::from_secs(2)),
            Verdict::allowed(3, Duration::from_secs(9)),
            Verdict::denied(1, Duration::from_secs(5)),
        ]
        .into_iter()
        .collect();
        assert_eq!(decision.retry_after(), Some(Duration::from_secs(5)));
        decision.push(Verdict::denied(0, Duration::MAX));
        assert_eq!(decision.retry_after(), None);
        assert_eq!(Decision::new().retry_after(), None);
        assert!(Decision::new().is_allowed());
    }

    #[test]
    fn a_shared_limiter_is_not_wrapped_again() {
        let limiter: Arc<dyn Limiter> = Arc::new(crate::limit::MemoryLimiter::new());
        assert!(Arc::ptr_eq(&shared(Arc::clone(&limiter)), &limiter));
    }
}
