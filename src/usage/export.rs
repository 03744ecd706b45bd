//! What the database exporters share: a bounded retry and the counters
//! that tell what was exported and what was dropped.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// What an exporter has done so far: from `PgUsageExporter::stats` or
/// `RedisUsage::stats`. Events the
/// [`BatchingSink`](super::BatchingSink) itself dropped (its buffers full
/// while the exporter was retrying) are in
/// [`BatchingSink::dropped`](super::BatchingSink::dropped) instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ExportStats {
    /// Batches written.
    pub batches: u64,
    /// Events in the batches written.
    pub events: u64,
    /// Events of batches given up on after the last retry.
    pub dropped: u64,
    /// Attempts that failed (including those retried successfully).
    pub failures: u64,
}

/// The counters behind [`ExportStats`], shared by an exporter's clones.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    events: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
}

impl Counters {
    pub(crate) fn stats(&self) -> ExportStats {
        ExportStats {
            batches: self.batches.load(Relaxed),
            events: self.events.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            failures: self.failures.load(Relaxed),
        }
    }
}

/// How hard an exporter tries a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    /// Tries after the first.
    pub(crate) retries: u32,
    /// Each attempt's limit.
    pub(crate) timeout: Duration,
    /// The wait before the first retry; doubled for each next, up to 8 times.
    pub(crate) backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            retries: 3,
            timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(100),
        }
    }
}

/// Why an attempt failed: the backend's error, or the time limit.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError<E: std::error::Error + 'static> {
    #[error("usage export failed")]
    Backend(#[source] E),
    #[error("usage export timed out")]
    TimedOut,
}

impl Retry {
    /// Runs `attempt` until it succeeds or the retries are spent; then
    /// counts the `events` as exported or dropped. Never waits longer than
    /// `(retries + 1) * timeout` plus the backoffs.
    pub(crate) async fn run<F, Fut, E>(
        &self,
        counters: &Arc<Counters>,
        target: &'static str,
        events: usize,
        mut attempt: F,
    ) where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::error::Error + 'static,
    {
        let mut backoff = self.backoff;
        for tried in 0..=self.retries {
            let result = match tokio::time::timeout(self.timeout, attempt()).await {
                Ok(Ok(())) => {
                    counters.batches.fetch_add(1, Relaxed);
                    counters.events.fetch_add(events as u64, Relaxed);
                    return;
                }
                Ok(Err(error)) => AttemptError::Backend(error),
                Err(_) => AttemptError::TimedOut,
            };
            counters.failures.fetch_add(1, Relaxed);
            if tried == self.retries {
                let before = counters.dropped.fetch_add(events as u64, Relaxed);
                #[cfg(feature = "metrics")]
                crate::metrics::usage_dropped(crate::metrics::Dropped::ExportFailed, events as u64);
                tracing::warn!(
                    target: "keyward::usage",
                    exporter = target,
                    events,
                    dropped = before + events as u64,
                    error = &result as &dyn std::error::Error,
                    "usage batch dropped after {} attempts",
                    tried + 1,
                );
                return;
            }
            tracing::debug!(
                target: "keyward::usage",
                exporter = target,
                error = &result as &dyn std::error::Error,
                "usage batch failed; retrying"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.backoff * 256);
        }
    }
}
