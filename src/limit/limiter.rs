//! The [`Limiter`] trait: where limit state lives.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::Policy;
use crate::key::KeyId;

/// What a limiter answered for one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    allowed: bool,
    remaining: u64,
    reset: Duration,
}

impl Verdict {
    /// The request may pass; `remaining` units are left, and the policy is
    /// fully restored after `reset`.
    pub fn allowed(remaining: u64, reset: Duration) -> Self {
        Self {
            allowed: true,
            remaining,
            reset,
        }
    }

    /// The request must wait `retry_after` before the policy can allow it.
    pub fn denied(remaining: u64, retry_after: Duration) -> Self {
        Self {
            allowed: false,
            remaining,
            reset: retry_after,
        }
    }

    /// Whether the request may pass.
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// The units left after this request.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// When allowed: the time until the policy is fully restored. When
    /// denied: the time until it can allow this request (the `t` of the
    /// `RateLimit` field, and never later than `Retry-After`).
    pub fn reset(&self) -> Duration {
        self.reset
    }
}

/// A limiter backend failed. Requests are refused (fail closed) unless the
/// layer was told otherwise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A cost that the policy can never allow at once (more than its burst
    /// or capacity).
    #[error("cost {cost} exceeds what policy {policy:?} can ever allow at once")]
    CostTooHigh {
        /// The policy's name.
        policy: String,
        /// The request's cost.
        cost: u32,
    },
    /// The backend (a remote store) failed.
    #[error("limiter backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LimitError {
    /// Wraps a backend's error.
    pub fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(error))
    }
}

/// Keeps the state of every key's limits and decides each request.
///
/// [`MemoryLimiter`](super::MemoryLimiter) keeps it in this process; a
/// shared backend (Redis) implements the same trait. Only keys that
/// authenticated are ever checked, so state is never made for strangers.
#[async_trait]
pub trait Limiter: Debug + Send + Sync + 'static {
    /// Spends `cost` units of `policy` for the key `id`, if the policy
    /// allows it; a denied request spends nothing.
    async fn check(&self, id: &KeyId, policy: &Policy, cost: u32) -> Result<Verdict, LimitError>;

    /// The same decision, when the limiter can make it without waiting
    /// (in memory); `None` sends the layer to [`check`](Self::check).
    /// Lets the request path skip boxing a future.
    fn check_immediate(
        &self,
        id: &KeyId,
        policy: &Policy,
        cost: u32,
    ) -> Option<Result<Verdict, LimitError>> {
        let _ = (id, policy, cost);
        None
    }
}

#[async_trait]
impl<T: Limiter + ?Sized> Limiter for Arc<T> {
    async fn check(&self, id: &KeyId, policy: &Policy, cost: u32) -> Result<Verdict, LimitError> {
        (**self).check(id, policy, cost).await
    }

    fn check_immediate(
        &self,
        id: &KeyId,
        policy: &Policy,
        cost: u32,
    ) -> Option<Result<Verdict, LimitError>> {
        (**self).check_immediate(id, policy, cost)
    }
}
