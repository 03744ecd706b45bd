//! Governor on our injected [`Clock`]: one GCRA cell, reporting its state.

use std::sync::Arc;

use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};

use crate::clock::{epoch_nanos, Clock};

/// Governor reads our injected clock, so a `FakeClock` drives its cells.
#[derive(Clone)]
pub(crate) struct GovernorClock(pub(crate) Arc<dyn Clock>);

impl governor::clock::Clock for GovernorClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(epoch_nanos(self.0.now()))
    }
}

/// One GCRA cell that reports what is left after each allowed check.
pub(crate) type GcraCell =
    governor::RateLimiter<NotKeyed, InMemoryState, GovernorClock, StateInformationMiddleware>;

/// A fresh, full cell for `quota`, on `clock`.
pub(crate) fn gcra_cell(quota: governor::Quota, clock: &Arc<dyn Clock>) -> GcraCell {
    governor::RateLimiter::<_, _, _, NoOpMiddleware<Nanos>>::new(
        quota,
        InMemoryState::default(),
        GovernorClock(Arc::clone(clock)),
    )
    .with_middleware::<StateInformationMiddleware>()
}
