use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::event::RequestFacts;
use super::layer::Shared;
use super::{Outcome, UsageEvent, UsageSink, UsageTags};
use crate::auth::{Principal, PrincipalSlot};
use crate::reject::{RejectReason, Rejection};

pin_project! {
    /// The response future of [`UsageService`](super::UsageService).
    ///
    /// Records the event when the inner future finishes, or, if it is
    /// dropped first, an event with [`Outcome::Cancelled`].
    pub struct ResponseFuture<F, K: UsageSink> {
        #[pin]
        future: F,
        pending: Option<Pending<K>>,
    }

    impl<F, K: UsageSink> PinnedDrop for ResponseFuture<F, K> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pending) = this.project().pending.take() {
                // A sink panicking here, while a panic unwinds, would
                // abort the process.
                guarded(|| pending.unanswered(Outcome::Cancelled));
            }
        }
    }
}

pub(crate) struct Pending<K> {
    shared: Arc<Shared<K>>,
    facts: RequestFacts,
    started: Option<Instant>,
    /// Filled by `AuthLayer` if the request authenticated.
    slot: PrincipalSlot,
}

impl<F, K: UsageSink> ResponseFuture<F, K> {
    pub(crate) fn new(
        future: F,
        shared: Arc<Shared<K>>,
        facts: RequestFacts,
        started: Option<Instant>,
        slot: PrincipalSlot,
    ) -> Self {
        Self {
            future,
            pending: Some(Pending {
                shared,
                facts,
                started,
                slot,
            }),
        }
    }
}

impl<F, K, B, E> Future for ResponseFuture<F, K>
where
    F: Future<Output = Result<Response<B>, E>>,
    K: UsageSink,
    B: Body,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        if let Some(pending) = this.pending.take() {
            match &result {
                Ok(response) => guarded(|| pending.answered(response)),
                Err(_) => guarded(|| pending.unanswered(Outcome::Failed)),
            }
        }
        Poll::Ready(result)
    }
}

/// Hands events to the sink; a sink that panics loses its events, never
/// the response (nor, from a drop, the process).
fn guarded(record: impl FnOnce()) {
    if let Err(panicked) = crate::unwind::call("usage sink", record) {
        tracing::error!(
            target: "keyward::usage",
            error = &panicked as &dyn std::error::Error,
            "usage sink panicked; the request's events are lost"
        );
    }
}

impl<K: UsageSink> Pending<K> {
    fn latency(&self) -> Duration {
        match self.started {
            Some(started) => started.elapsed(),
            None => self
                .shared
                .clock
                .now()
                .duration_since(self.facts.at)
                .unwrap_or_default(),
        }
    }

    fn answered<B: Body>(mut self, response: &Response<B>) {
        let extensions = response.extensions();
        if let Some(tags) = extensions.get::<UsageTags>() {
            match &mut self.facts.tags {
                Some(request_tags) => request_tags.extend(tags),
                None => self.facts.tags = Some(Box::new(tags.clone())),
            }
        }
        let rejection = extensions.get::<Rejection>();
        let outcome = rejection.map_or(Outcome::Allowed, |r| Outcome::Refused(r.reason()));
        // The slot this layer planted (its principal moved out, not
        // cloned); a `Principal` in the response's extensions for
        // authentication that is not keyward's `AuthLayer`.
        let latency = self.latency();
        let principal = self
            .slot
            .take()
            .or_else(|| extensions.get::<Principal>().cloned());
        let sink = &self.shared.sink;
        let at = self.facts.at;

        if let Some(principal) = &principal {
            if self.shared.first_seen.first(principal.key_id()) {
                sink.record(UsageEvent::first_used(principal, at));
            }
        }
        let key_id = rejection.and_then(Rejection::key_id);
        if let (Outcome::Refused(RejectReason::Expired), Some(id)) = (outcome, key_id) {
            sink.record(UsageEvent::expired_on_use(id, at));
        }
        let event = UsageEvent::request(
            self.facts,
            principal,
            key_id,
            Some(response.status()),
            outcome,
            latency,
            response.body().size_hint().exact(),
        );
        sink.record(event);
    }

    /// No response: the service failed, or the future was dropped.
    fn unanswered(self, outcome: Outcome) {
        let latency = self.latency();
        let event = UsageEvent::request(self.facts, None, None, None, outcome, latency, None);
        self.shared.sink.record(event);
    }
}

impl<F, K: UsageSink> std::fmt::Debug for ResponseFuture<F, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
