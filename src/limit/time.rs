//! Time for governor: our injected [`Clock`], in nanoseconds since the epoch.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::nanos::Nanos;

use crate::clock::Clock;

/// Governor reads our injected clock, so a `FakeClock` drives its cells.
#[derive(Clone)]
pub(crate) struct GovernorClock(pub(crate) Arc<dyn Clock>);

impl governor::clock::Clock for GovernorClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(epoch_nanos(self.0.now()))
    }
}

/// Nanoseconds since the epoch (0 before it, saturating far after it).
pub(crate) fn epoch_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A duration in nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
