//! Time for governor: our injected [`Clock`], in nanoseconds since the epoch.

use std::sync::Arc;

use governor::nanos::Nanos;

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
