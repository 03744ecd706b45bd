//! `MemoryLimiter` against governor's arithmetic (and a plain balance for
//! credits), all of a key's policies at once, on generated policies and
//! request runs. `tests/redis_limit.rs` runs the same cases on Redis.

mod support;

use std::time::Duration;

use keyward::clock::FakeClock;
use keyward::key::KeyId;
use keyward::limit::{Limiter, MemoryLimiter};
use proptest::prelude::*;
use support::limit_model::{case, observed, Case, Model};

fn run(case: &Case) -> Result<(), TestCaseError> {
    let clock = FakeClock::default();
    let limiter = MemoryLimiter::new().with_clock(clock.clone());
    let limits = case.limits();
    let id: KeyId = "abcdefghijkl".parse().unwrap();
    let mut model = Model::new(&case.specs);
    let mut now = 0;
    for (step, &(advance, cost)) in case.steps.iter().enumerate() {
        now += advance;
        clock.advance(Duration::from_micros(advance));
        let ours = limiter.check_immediate(&id, &limits, cost).unwrap();
        prop_assert_eq!(
            observed(&ours, &case.specs),
            model.decide(now, cost),
            "step {} (cost {})",
            step,
            cost
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// One rate, alone: exactly governor's decisions, counts and waits.
    #[test]
    fn one_rate_decides_as_governor(case in case(1)) {
        let mut case = case;
        case.specs.truncate(1);
        run(&case)?;
    }

    /// Several rates and a balance: all or nothing, each as governor (or
    /// the balance) would.
    #[test]
    fn all_policies_at_once(case in case(3)) {
        run(&case)?;
    }
}
