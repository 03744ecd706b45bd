//! A reference for limiters, independent of keyward's arithmetic: each
//! rate asks governor itself (replaying the requests the key was allowed
//! so far on a fresh governor limiter, so that a probe spends nothing),
//! credits follow a plain balance, and a request passes only if every
//! policy allows it. Times are whole microseconds, so a limiter that
//! counts in microseconds (Redis) must agree exactly too.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, FakeRelativeClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use keyward::limit::{CreditPolicy, Decision, LimitError, Limits, Policy, RatePolicy};
use proptest::prelude::*;

/// One policy of a generated case.
#[derive(Debug, Clone)]
pub(crate) enum Spec {
    Rate {
        period_ms: u64,
        quota: u32,
        burst: u32,
    },
    Credits {
        capacity: u64,
        /// (amount, every whole seconds)
        refill: Option<(u64, u64)>,
    },
}

/// A key's policies and a run of requests: (microseconds since the last
/// request, cost).
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) specs: Vec<Spec>,
    pub(crate) steps: Vec<(u64, u32)>,
}

fn rate_spec() -> impl Strategy<Value = Spec> {
    (50u64..=2_000, 1u32..=6).prop_flat_map(|(period_ms, burst)| {
        // The window (quota * period) is at least a second.
        let min_quota = 1_000u64.div_ceil(period_ms) as u32;
        (min_quota..=min_quota + 3).prop_map(move |quota| Spec::Rate {
            period_ms,
            quota,
            burst,
        })
    })
}

fn credit_spec() -> impl Strategy<Value = Spec> {
    (
        1u64..=12,
        prop_oneof![Just(None), (1u64..=4, 1u64..=3).prop_map(Some)],
    )
        .prop_map(|(capacity, refill)| Spec::Credits { capacity, refill })
}

/// Up to `max_rates` rates and maybe a balance; up to 40 requests spaced
/// from 0 to 1.5 s, of cost 0 to 4.
pub(crate) fn case(max_rates: usize) -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(rate_spec(), 1..=max_rates),
        prop::option::of(credit_spec()),
        prop::collection::vec(
            (
                prop_oneof![Just(0u64), 0u64..=1_500_000, 0u64..=50_000],
                prop_oneof![4 => Just(1u32), 1 => 0u32..=4],
            ),
            1..40,
        ),
    )
        .prop_map(|(mut specs, credits, steps)| {
            specs.extend(credits);
            Case { specs, steps }
        })
}

impl Case {
    /// The policies as keyward sees them, named `p0`, `p1`, …
    pub(crate) fn limits(&self) -> Limits {
        Limits::new(self.specs.iter().enumerate().map(|(i, spec)| {
            let name = format!("p{i}");
            match *spec {
                Spec::Rate {
                    period_ms,
                    quota,
                    burst,
                } => Policy::from(
                    RatePolicy::new(
                        &name,
                        quota,
                        Duration::from_millis(period_ms * quota as u64),
                    )
                    .unwrap()
                    .with_burst(burst)
                    .unwrap(),
                ),
                Spec::Credits { capacity, refill } => {
                    let credits = CreditPolicy::new(&name, capacity).unwrap();
                    Policy::from(match refill {
                        Some((amount, every)) => credits
                            .with_refill(amount, Duration::from_secs(every))
                            .unwrap(),
                        None => credits,
                    })
                }
            }
        }))
        .unwrap()
    }
}

/// What the reference expects of one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Expected {
    /// A policy can never allow the cost.
    TooHigh,
    /// Per policy, in order: allowed or not, and for an allowed request
    /// what remains, for a refused one the wait of each refusing rate.
    Decided {
        allowed: bool,
        policies: Vec<(bool, Option<u64>, Option<Duration>)>,
    },
}

/// Reduces a limiter's answer to what the reference predicts.
pub(crate) fn observed(result: &Result<Decision, LimitError>, specs: &[Spec]) -> Expected {
    let decision = match result {
        Err(LimitError::CostTooHigh { .. }) => return Expected::TooHigh,
        Err(error) => panic!("limiter failed: {error}"),
        Ok(decision) => decision,
    };
    let allowed = decision.is_allowed();
    let policies = decision
        .verdicts()
        .iter()
        .zip(specs)
        .map(|(verdict, spec)| {
            let remaining =
                (allowed || matches!(spec, Spec::Credits { .. })).then(|| verdict.remaining());
            let wait = (!verdict.is_allowed() && matches!(spec, Spec::Rate { .. }))
                .then(|| verdict.reset());
            (verdict.is_allowed(), remaining, wait)
        })
        .collect();
    Expected::Decided { allowed, policies }
}

/// The reference state of one key.
#[derive(Debug)]
pub(crate) struct Model {
    specs: Vec<Spec>,
    /// The requests allowed so far: (microseconds since the start, cost).
    history: Vec<(u64, u32)>,
    /// The balance and when it last refilled (microseconds).
    balance: Option<(u64, u64)>,
}

impl Model {
    pub(crate) fn new(specs: &[Spec]) -> Self {
        Self {
            specs: specs.to_vec(),
            history: Vec::new(),
            balance: None,
        }
    }

    /// governor's answer for `cost` at `now` on a rate, after replaying
    /// what was allowed: Ok(remaining) or Err(wait); `None` if too high.
    fn governor(
        &self,
        period_ms: u64,
        burst: u32,
        now: u64,
        cost: u32,
    ) -> Option<Result<u64, Duration>> {
        let quota = Quota::with_period(Duration::from_millis(period_ms))
            .unwrap()
            .allow_burst(NonZeroU32::new(burst).unwrap());
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::direct_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        let mut at = 0;
        for &(when, spent) in &self.history {
            clock.advance(Duration::from_micros(when - at));
            at = when;
            let replayed = limiter.check_n(NonZeroU32::new(spent).unwrap());
            assert!(matches!(replayed, Ok(Ok(_))), "replay refused");
        }
        clock.advance(Duration::from_micros(now - at));
        // A cost of 0 asks what a cost of 1 would leave, plus that one.
        let probe = NonZeroU32::new(cost.max(1)).unwrap();
        match limiter.check_n(probe) {
            Err(_) => None,
            Ok(Ok(snapshot)) => Some(Ok(
                u64::from(snapshot.remaining_burst_capacity()) + u64::from(cost == 0)
            )),
            Ok(Err(_)) if cost == 0 => Some(Ok(0)),
            Ok(Err(not_until)) => Some(Err(not_until.wait_time_from(clock.now()))),
        }
    }

    fn refilled(&self, capacity: u64, refill: Option<(u64, u64)>, now: u64) -> (u64, u64) {
        let (credits, at) = self.balance.unwrap_or((capacity, now));
        let (credits, at) = match refill {
            Some((amount, every)) => {
                let every = every * 1_000_000;
                let steps = (now - at) / every;
                ((credits + amount * steps).min(capacity), at + steps * every)
            }
            None => (credits, at),
        };
        // A full balance's refill schedule starts again at its next spend.
        if credits == capacity {
            (credits, now)
        } else {
            (credits, at)
        }
    }

    /// Decides a request of `cost` at `now` (microseconds since the
    /// start), and records it if allowed.
    pub(crate) fn decide(&mut self, now: u64, cost: u32) -> Expected {
        let mut policies = Vec::new();
        let mut spent_balance = None;
        for spec in &self.specs {
            match *spec {
                Spec::Rate {
                    period_ms, burst, ..
                } => match self.governor(period_ms, burst, now, cost) {
                    None => return Expected::TooHigh,
                    Some(Ok(remaining)) => policies.push((true, Some(remaining), None)),
                    Some(Err(wait)) => policies.push((false, None, Some(wait))),
                },
                Spec::Credits { capacity, refill } => {
                    if u64::from(cost) > capacity {
                        return Expected::TooHigh;
                    }
                    let (credits, at) = self.refilled(capacity, refill, now);
                    if credits >= u64::from(cost) {
                        let left = credits - u64::from(cost);
                        spent_balance = Some((left, at));
                        policies.push((true, Some(left), None));
                    } else {
                        policies.push((false, Some(credits), None));
                    }
                }
            }
        }
        let allowed = policies.iter().all(|(allowed, ..)| *allowed);
        if allowed && cost > 0 {
            self.history.push((now, cost));
            if spent_balance.is_some() {
                self.balance = spent_balance;
            }
        }
        if !allowed {
            // Refused: nothing spent; what an allowed balance shows is its
            // unspent count, and rates show no count.
            for (policy, spec) in policies.iter_mut().zip(&self.specs) {
                match spec {
                    Spec::Rate { .. } => policy.1 = None,
                    Spec::Credits { capacity, refill } => {
                        policy.1 = Some(self.refilled(*capacity, *refill, now).0)
                    }
                }
            }
        }
        Expected::Decided { allowed, policies }
    }
}
