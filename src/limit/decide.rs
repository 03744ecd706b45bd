//! The arithmetic of a decision, on states a backend loaded: each
//! policy's step, and all of a key's policies at once.

use std::time::Duration;

use super::{CreditPolicy, Decision, GcraOutcome, LimitError, Limits, Policy, RatePolicy, Verdict};
use crate::clock::saturating_nanos;

/// One policy's state for one key, as a limiter backend stores it. Times
/// are nanoseconds since the Unix epoch. A key that has no state yet for a
/// policy is `None` in [`Limits::decide`]: it starts full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyState {
    /// A rate: GCRA's theoretical arrival time (see [`Gcra`](super::Gcra));
    /// the policy is full once it has passed.
    Rate {
        /// The theoretical arrival time.
        tat: u64,
    },
    /// A credit balance.
    Credits {
        /// The credits left.
        credits: u64,
        /// When the last refill step happened (the refill schedule counts
        /// whole intervals from it).
        refilled_at: u64,
    },
}

/// A state that does not fit its policy (a backend's bug, or a
/// fingerprint collision): refused, never taken as a full policy.
#[derive(Debug, thiserror::Error)]
#[error("limit state does not match the key's policies")]
struct StateMismatch;

impl Limits {
    /// Decides one request of `cost` at `now` (nanoseconds since the Unix
    /// epoch) on the key's states, one per policy in the order of
    /// [`policies`](Self::policies) (`None` for a policy the key has no
    /// state for yet), all or nothing: if every policy allows the request,
    /// every state is replaced by its spent successor (all `Some`) and the
    /// caller stores them; if any refuses, the states are left as they
    /// were and nothing is to be stored. A cost of 0 changes nothing.
    ///
    /// This is what [`MemoryLimiter`](super::MemoryLimiter) runs for a key
    /// with several policies; a backend elsewhere runs it inside its own
    /// transaction (see [`Limiter`](super::Limiter)).
    ///
    /// Fails with [`LimitError::CostTooHigh`] if a policy can never allow
    /// `cost` at once, and with [`LimitError::Backend`] if `states` does
    /// not hold one state of the right kind per policy.
    pub fn decide(
        &self,
        states: &mut [Option<PolicyState>],
        cost: u32,
        now: u64,
    ) -> Result<Decision, LimitError> {
        let policies = self.policies();
        if states.len() != policies.len() {
            return Err(LimitError::backend(StateMismatch));
        }
        let mut decision = Decision::new();
        let mut next = [None; Limits::MAX_POLICIES];
        for (i, (policy, state)) in policies.iter().zip(states.iter()).enumerate() {
            let (verdict, spent) = step(policy, *state, cost, now)?;
            next[i] = spent;
            decision.push(verdict);
        }
        if cost == 0 {
            return Ok(decision);
        }
        if decision.is_allowed() {
            for (state, spent) in states.iter_mut().zip(next) {
                *state = spent;
            }
            return Ok(decision);
        }
        // Refused: the policies that would have allowed it say what they
        // have now, unspent.
        let mut unspent = Decision::new();
        for ((policy, state), verdict) in
            policies.iter().zip(states.iter()).zip(decision.verdicts())
        {
            unspent.push(if verdict.is_allowed() {
                step(policy, *state, 0, now)?.0
            } else {
                *verdict
            });
        }
        Ok(unspent)
    }
}

/// One policy's verdict for `cost` at `now`, and its spent state if it
/// allows (`None` for a cost of 0, or a refusal).
pub(crate) fn step(
    policy: &Policy,
    state: Option<PolicyState>,
    cost: u32,
    now: u64,
) -> Result<(Verdict, Option<PolicyState>), LimitError> {
    match (policy, state) {
        (Policy::Rate(rate), None) => rate_step(rate, 0, cost, now),
        (Policy::Rate(rate), Some(PolicyState::Rate { tat })) => rate_step(rate, tat, cost, now),
        (Policy::Credits(credits), None) => {
            credit_step(credits, credits.capacity(), now, cost, now)
        }
        (
            Policy::Credits(credits),
            Some(PolicyState::Credits {
                credits: balance,
                refilled_at,
            }),
        ) => credit_step(credits, balance, refilled_at, cost, now),
        _ => Err(LimitError::backend(StateMismatch)),
    }
}

/// A rate's verdict: what [`rate_verdict`] says, with the new TAT.
fn rate_step(
    rate: &RatePolicy,
    tat: u64,
    cost: u32,
    now: u64,
) -> Result<(Verdict, Option<PolicyState>), LimitError> {
    let gcra = rate.gcra();
    if cost == 0 {
        return Ok((unspent_rate(rate, tat, now), None));
    }
    let outcome = gcra.step(tat, cost, now);
    let verdict = rate_verdict(rate, outcome, || gcra.remaining(tat, now), cost)?;
    let spent = match outcome {
        GcraOutcome::Allowed { tat, .. } => Some(PolicyState::Rate { tat }),
        _ => None,
    };
    Ok((verdict, spent))
}

/// What a rate with this TAT has now, spending nothing.
#[inline]
pub(crate) fn unspent_rate(rate: &RatePolicy, tat: u64, now: u64) -> Verdict {
    let remaining = rate.gcra().remaining(tat, now);
    let spent = rate.burst().saturating_sub(remaining);
    let full_in = rate.gcra().period_nanos().saturating_mul(u64::from(spent));
    Verdict::from_nanos(true, u64::from(remaining), full_in)
}

/// The verdict of a GCRA step: allowed with what is left and the time
/// until the policy is full; denied with what is left now (`remaining`,
/// asked only then) and the wait.
#[inline]
pub(crate) fn rate_verdict(
    rate: &RatePolicy,
    outcome: GcraOutcome,
    remaining: impl FnOnce() -> u32,
    cost: u32,
) -> Result<Verdict, LimitError> {
    match outcome {
        GcraOutcome::Allowed { remaining, .. } => {
            let spent = rate.burst().saturating_sub(remaining);
            let full_in = rate.gcra().period_nanos().saturating_mul(u64::from(spent));
            Ok(Verdict::from_nanos(true, u64::from(remaining), full_in))
        }
        GcraOutcome::Denied { wait } => {
            Ok(Verdict::from_nanos(false, u64::from(remaining()), wait))
        }
        GcraOutcome::TooHigh => Err(LimitError::CostTooHigh {
            policy: rate.name().to_owned(),
            cost,
        }),
    }
}

/// A balance after its refill steps up to `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Balance {
    pub(crate) credits: u64,
    pub(crate) refilled_at: u64,
}

impl CreditPolicy {
    /// The refill as (amount, nanoseconds), if any.
    fn refill_nanos(&self) -> Option<(u64, u64)> {
        self.refill()
            .map(|(amount, every)| (amount, saturating_nanos(every).max(1)))
    }

    /// `balance` with the refill steps due at `now` added. A full balance
    /// is the same as a fresh one: its schedule starts again at `now`, so
    /// the next refill comes an interval after the next spend (and a
    /// backend may forget a full balance without changing anything).
    pub(crate) fn refilled(&self, balance: Balance, now: u64) -> Balance {
        let mut balance = balance;
        if let Some((amount, every)) = self.refill_nanos() {
            let steps = now.saturating_sub(balance.refilled_at) / every;
            if steps > 0 {
                balance = Balance {
                    credits: balance
                        .credits
                        .saturating_add(amount.saturating_mul(steps))
                        .min(self.capacity()),
                    refilled_at: balance
                        .refilled_at
                        .saturating_add(steps.saturating_mul(every)),
                };
            }
        }
        if balance.credits >= self.capacity() {
            balance.refilled_at = now;
        }
        balance
    }

    /// The time from `now` until `needed` more credits have come back to a
    /// balance refilled at `refilled_at` (`Duration::MAX`: never).
    pub(crate) fn wait_for(&self, needed: u64, refilled_at: u64, now: u64) -> Duration {
        match self.refill_nanos() {
            Some((amount, every)) => {
                let steps = needed.div_ceil(amount);
                let next = refilled_at.saturating_add(steps.saturating_mul(every));
                Duration::from_nanos(next.saturating_sub(now))
            }
            None => Duration::MAX,
        }
    }

    /// The verdict of a balance (already refilled) that allows: what is
    /// left, and the time until it is full.
    pub(crate) fn allowed_verdict(&self, balance: Balance, now: u64) -> Verdict {
        let missing = self.capacity().saturating_sub(balance.credits);
        let reset = if missing == 0 {
            Duration::ZERO
        } else {
            self.wait_for(missing, balance.refilled_at, now)
        };
        Verdict::allowed(balance.credits, reset)
    }
}

pub(crate) fn credit_step(
    policy: &CreditPolicy,
    credits: u64,
    refilled_at: u64,
    cost: u32,
    now: u64,
) -> Result<(Verdict, Option<PolicyState>), LimitError> {
    let cost64 = u64::from(cost);
    if cost64 > policy.capacity() {
        return Err(LimitError::CostTooHigh {
            policy: policy.name().to_owned(),
            cost,
        });
    }
    let balance = policy.refilled(
        Balance {
            credits: credits.min(policy.capacity()),
            refilled_at,
        },
        now,
    );
    if cost == 0 {
        return Ok((policy.allowed_verdict(balance, now), None));
    }
    if balance.credits < cost64 {
        let wait = policy.wait_for(cost64 - balance.credits, balance.refilled_at, now);
        return Ok((Verdict::denied(balance.credits, wait), None));
    }
    let spent = Balance {
        credits: balance.credits - cost64,
        ..balance
    };
    Ok((
        policy.allowed_verdict(spent, now),
        Some(PolicyState::Credits {
            credits: spent.credits,
            refilled_at: spent.refilled_at,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn limits() -> Limits {
        Limits::new([
            RatePolicy::new("burst", 2, Duration::from_secs(1))
                .unwrap()
                .into(),
            CreditPolicy::new("prepaid", 3).unwrap().into(),
        ])
        .unwrap()
    }

    #[test]
    fn all_or_nothing() {
        let limits = limits();
        let mut states = [None, None];
        for left in [2, 1] {
            let decision = limits.decide(&mut states, 1, NOW).unwrap();
            assert!(decision.is_allowed());
            assert_eq!(decision.verdicts()[1].remaining(), left);
        }
        let before = states;
        // The rate refuses: the credits are not spent, and say what is left.
        let refused = limits.decide(&mut states, 1, NOW).unwrap();
        assert!(!refused.is_allowed());
        assert_eq!(states, before);
        assert_eq!(refused.verdicts()[1], Verdict::allowed(1, Duration::MAX));
        assert_eq!(refused.retry_after(), Some(Duration::from_millis(500)));
        // Later the rate allows, the balance refuses a cost of 2: the rate
        // is not spent.
        let later = NOW + 1_000_000_000;
        let refused = limits.decide(&mut states, 2, later).unwrap();
        assert!(!refused.is_allowed());
        assert_eq!(refused.verdicts()[0], Verdict::allowed(2, Duration::ZERO));
        assert_eq!(refused.verdicts()[1], Verdict::denied(1, Duration::MAX));
        assert_eq!(refused.retry_after(), None);
        assert_eq!(states, before);
    }

    #[test]
    fn cost_zero_and_mismatches() {
        let limits = limits();
        let mut states = [None, None];
        let peek = limits.decide(&mut states, 0, NOW).unwrap();
        assert!(peek.is_allowed());
        assert_eq!(states, [None, None]);
        assert_eq!(peek.verdicts()[0], Verdict::allowed(2, Duration::ZERO));
        assert!(matches!(
            limits.decide(&mut states, 3, NOW),
            Err(LimitError::CostTooHigh { .. })
        ));
        assert!(matches!(
            limits.decide(&mut [None], 1, NOW),
            Err(LimitError::Backend(_))
        ));
        let mut swapped = [
            Some(PolicyState::Credits {
                credits: 1,
                refilled_at: 0,
            }),
            None,
        ];
        assert!(matches!(
            limits.decide(&mut swapped, 1, NOW),
            Err(LimitError::Backend(_))
        ));
    }
}
