//! What the shared-server stores have in common: a timeout on every call,
//! counted failures, logs without secrets.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{BackendStats, StoreError};
use crate::key::KeyId;

/// Failures of one store, counted.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    errors: AtomicU64,
    timeouts: AtomicU64,
}

impl Counters {
    pub(crate) fn stats(&self) -> BackendStats {
        BackendStats {
            errors: self.errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
        }
    }

    /// Runs `call` for at most `timeout`, counting and logging a failure
    /// (the operation and the key id, never a record's contents).
    pub(crate) async fn run<T>(
        &self,
        store: &'static str,
        operation: &'static str,
        id: Option<&KeyId>,
        timeout: Duration,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
        let counter = match &result {
            Err(StoreError::Timeout(_)) => &self.timeouts,
            Err(StoreError::Backend(_)) => &self.errors,
            _ => return result,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = &result {
            tracing::warn!(
                target: "keyward::store",
                store,
                operation,
                key_id = id.map(tracing::field::display),
                error = error as &dyn std::error::Error,
                "key store call failed"
            );
        }
        result
    }
}

/// A stored record that cannot be read back (edited by hand, or written by
/// a newer version): names the column, never its contents.
#[derive(Debug, thiserror::Error)]
#[error("stored key record {id} has an unreadable {column}")]
pub(crate) struct UnreadableRecord {
    pub(crate) id: String,
    pub(crate) column: &'static str,
}

/// The longest owner the shared stores accept, in bytes: it is indexed.
pub(crate) const MAX_OWNER_LEN: usize = 1024;
