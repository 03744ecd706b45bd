use std::fmt;
use std::sync::Arc;

use super::UsageEvent;

/// Where [`UsageEvent`]s go.
///
/// [`record`](UsageSink::record) is called on the request path, once per
/// event: it must not block or wait (hand the event to a channel, bump
/// counters). [`flush`](UsageSink::flush) waits until what was recorded so
/// far has reached its destination; call it before shutting down.
///
/// Implemented by `()` (discards everything), [`SinkFn`] (a closure, see
/// [`sink_fn`]), a pair `(A, B)` (both get every event), `Arc<S>` and
/// `Arc<dyn UsageSink>`, and this module's sinks.
///
/// # Implementing this trait
///
/// The trait is declared with [`async_trait`](macro@crate::async_trait): put
/// `#[keyward::async_trait]` on your `impl` (keyward re-exports it, so you
/// need no `async-trait` dependency of your own). Only `flush` is async, and
/// only an `impl` that writes its own `flush` needs the attribute; written
/// as a plain `async fn` without it, `flush` fails to compile with E0195
/// ("lifetime parameters or bounds on method do not match the trait
/// declaration"), because the attribute turned the trait's `flush` into a
/// function returning a boxed `Send` future, with lifetimes of its own.
///
/// A `record` that panics loses that request's events, and is logged
/// (target `keyward::usage`, level `error`); the response goes out as
/// usual. A `record` that blocks cannot be cut short: it holds the
/// request's thread (hence: never wait in it).
///
/// `record` runs on the request path: hand the event over and return (a
/// channel, counters, a briefly held lock); do the I/O in `flush` or on a
/// task of your own, or use [`BatchingSink`](super::BatchingSink) with a
/// [`UsageExporter`](super::UsageExporter), which does the batching for you.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::SystemTime;
/// use keyward::usage::{Lifecycle, UsageEvent, UsageLayer, UsageSink};
///
/// /// Keeps events until `flush` delivers them.
/// #[derive(Debug, Default)]
/// struct Buffered {
///     pending: Mutex<Vec<UsageEvent>>,
///     delivered: tokio::sync::Mutex<Vec<UsageEvent>>, // your destination
/// }
///
/// #[keyward::async_trait]
/// impl UsageSink for Buffered {
///     fn record(&self, event: UsageEvent) {
///         self.pending.lock().unwrap().push(event);
///     }
///
///     async fn flush(&self) {
///         let batch = std::mem::take(&mut *self.pending.lock().unwrap());
///         self.delivered.lock().await.extend(batch); // the I/O goes here
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sink = Arc::new(Buffered::default());
/// let _layer = UsageLayer::new(Arc::clone(&sink)); // one event per request
/// sink.record(UsageEvent::lifecycle(Lifecycle::Issued, "abcdefABCDEF".parse()?, "acme", SystemTime::now()));
/// sink.flush().await;
/// assert_eq!(sink.delivered.lock().await.len(), 1);
/// # Ok(())
/// # }
/// ```
#[async_trait::async_trait]
pub trait UsageSink: fmt::Debug + Send + Sync + 'static {
    /// Takes one event, without blocking.
    fn record(&self, event: UsageEvent);

    /// Waits until the events recorded so far are delivered. The default
    /// returns at once.
    async fn flush(&self) {}
}

/// Discards every event.
#[async_trait::async_trait]
impl UsageSink for () {
    fn record(&self, _: UsageEvent) {}
}

#[async_trait::async_trait]
impl<S: UsageSink + ?Sized> UsageSink for Arc<S> {
    fn record(&self, event: UsageEvent) {
        (**self).record(event);
    }

    async fn flush(&self) {
        (**self).flush().await;
    }
}

/// Both sinks get every event; flushing flushes both.
#[async_trait::async_trait]
impl<A: UsageSink, B: UsageSink> UsageSink for (A, B) {
    fn record(&self, event: UsageEvent) {
        self.0.record(event.clone());
        self.1.record(event);
    }

    async fn flush(&self) {
        self.0.flush().await;
        self.1.flush().await;
    }
}

/// A sink made of a closure; see [`sink_fn`].
#[derive(Clone)]
pub struct SinkFn<F>(F);

/// A sink that calls `f` with each event. It runs on the request path: keep
/// it quick.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use keyward::usage::{sink_fn, UsageLayer};
///
/// let seen = Arc::new(AtomicU64::new(0));
/// let counter = Arc::clone(&seen);
/// let layer = UsageLayer::new(sink_fn(move |_event| {
///     counter.fetch_add(1, Ordering::Relaxed);
/// }));
/// # let _ = layer;
/// ```
pub fn sink_fn<F>(f: F) -> SinkFn<F>
where
    F: Fn(UsageEvent) + Send + Sync + 'static,
{
    SinkFn(f)
}

#[async_trait::async_trait]
impl<F> UsageSink for SinkFn<F>
where
    F: Fn(UsageEvent) + Send + Sync + 'static,
{
    fn record(&self, event: UsageEvent) {
        (self.0)(event);
    }
}

impl<F> fmt::Debug for SinkFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkFn").finish_non_exhaustive()
    }
}
