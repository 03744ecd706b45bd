use tracing::Level;

use super::{UsageEvent, UsageSink};

/// Logs each event with `tracing`, target `keyward::usage`, at a chosen
/// level: kind, key id, owner, method, route, status, outcome, latency,
/// sizes and tags. Never a key: events hold none.
#[derive(Debug, Clone, Copy)]
pub struct TracingSink {
    level: Level,
}

impl TracingSink {
    /// Logs at `level`.
    pub fn new(level: Level) -> Self {
        Self { level }
    }

    /// Logs at `INFO`.
    pub fn info() -> Self {
        Self::new(Level::INFO)
    }

    /// Logs at `DEBUG`.
    pub fn debug() -> Self {
        Self::new(Level::DEBUG)
    }

    /// The level it logs at.
    pub fn level(&self) -> Level {
        self.level
    }
}

impl Default for TracingSink {
    fn default() -> Self {
        Self::info()
    }
}

macro_rules! usage_event {
    ($level:expr, $e:expr) => {
        tracing::event!(
            target: "keyward::usage",
            $level,
            kind = $e.kind().as_str(),
            key_id = $e.key_id().as_ref().map(|id| id.as_str()),
            owner = $e.owner(),
            method = $e.method().map(|m| m.as_str()),
            route = $e.route(),
            status = $e.status().map(|s| s.as_u16()),
            outcome = $e.outcome().as_str(),
            latency_us = u64::try_from($e.latency().as_micros()).unwrap_or(u64::MAX),
            request_size = $e.request_size(),
            response_size = $e.response_size(),
            tags = ?$e.tags(),
            "usage"
        )
    };
}

#[async_trait::async_trait]
impl UsageSink for TracingSink {
    fn record(&self, event: UsageEvent) {
        match self.level {
            Level::ERROR => usage_event!(Level::ERROR, event),
            Level::WARN => usage_event!(Level::WARN, event),
            Level::INFO => usage_event!(Level::INFO, event),
            Level::DEBUG => usage_event!(Level::DEBUG, event),
            _ => usage_event!(Level::TRACE, event),
        }
    }
}
