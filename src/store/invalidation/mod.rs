//! Telling every process that a record changed: the [`Invalidation`] trait
//! (feature `tokio`), and [`LocalInvalidation`], its in-process
//! implementation.
//!
//! A [`CachedStore`](super::CachedStore) announces each write it makes and
//! drops its copy of every record announced by anyone. The shared
//! implementations are `PgInvalidation` (PostgreSQL `LISTEN/NOTIFY`, feature
//! `postgres`) and `RedisInvalidation` (Redis pub/sub, feature `redis`).
//!
//! Announcements are fire-and-forget on both engines: a subscriber that is
//! not connected when one is sent never hears it. A [`Subscription`]
//! therefore also says when it loses its connection
//! ([`InvalidationEvent::Lost`]) and when it has it again
//! ([`InvalidationEvent::Connected`]), so its owner can stop trusting what it
//! holds in between and start afresh after.
//!
//! # Example
//!
//! ```
//! use keyward::key::{KeyFormat, KeyGenerator};
//! use keyward::store::invalidation::{Invalidation, InvalidationEvent, LocalInvalidation};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = LocalInvalidation::new();
//! let mut subscription = channel.subscribe();
//! assert_eq!(subscription.next().await, Some(InvalidationEvent::Connected));
//!
//! let id = KeyGenerator::new(KeyFormat::new("sk_live")?).generate()?.id();
//! channel.announce(&id).await?;
//! assert_eq!(subscription.next().await, Some(InvalidationEvent::Changed(id)));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::StoreError;
use crate::key::KeyId;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::postgres::PgInvalidation;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisInvalidation;

/// What a [`Subscription`] hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidationEvent {
    /// Subscribed: every announcement from now on arrives. After
    /// [`Lost`](InvalidationEvent::Lost) (or as the first event, since
    /// nothing was heard before it), announcements may have been missed:
    /// drop everything held.
    Connected,
    /// The record with this id changed (issued, updated, revoked): drop any
    /// copy of it.
    Changed(KeyId),
    /// The connection dropped: announcements may be missed until the next
    /// [`Connected`](InvalidationEvent::Connected). Trust what you hold only
    /// briefly.
    Lost,
}

/// Announces and hears "record `id` changed", across processes.
///
/// Implementations are shared as `Arc<dyn Invalidation>`. Run
/// [`conformance::invalidation`](super::conformance::invalidation) (feature
/// `test-util`) against yours.
#[async_trait::async_trait]
pub trait Invalidation: fmt::Debug + Send + Sync + 'static {
    /// Tells every subscriber, in every process (this one included), that
    /// the record `id` changed. Carries the id only: never a key, a secret
    /// or a hash.
    async fn announce(&self, id: &KeyId) -> Result<(), StoreError>;

    /// A new subscription; its first event is
    /// [`Connected`](InvalidationEvent::Connected) once it hears
    /// announcements. Implementations that need a connection open it in a
    /// task of their own, which reconnects until the subscription is
    /// dropped.
    fn subscribe(&self) -> Subscription;
}

#[async_trait::async_trait]
impl<T: Invalidation + ?Sized> Invalidation for Arc<T> {
    async fn announce(&self, id: &KeyId) -> Result<(), StoreError> {
        (**self).announce(id).await
    }

    fn subscribe(&self) -> Subscription {
        (**self).subscribe()
    }
}

/// The events of one subscriber, in order; dropping it ends the
/// subscription (and aborts its task, if it has one).
pub struct Subscription {
    events: mpsc::UnboundedReceiver<InvalidationEvent>,
    task: Option<JoinHandle<()>>,
}

impl Subscription {
    /// A subscription and the sender that feeds it: for implementers of
    /// [`Invalidation`].
    pub fn channel() -> (SubscriptionSender, Subscription) {
        // Unbounded: events are a few bytes, and the one reader (a cache's
        // task) only removes map entries. A bounded channel would have to
        // drop announcements, which a cache must never miss silently.
        let (sender, events) = mpsc::unbounded_channel();
        (
            SubscriptionSender(sender),
            Subscription { events, task: None },
        )
    }

    /// Aborts `task` (the one feeding this subscription) when the
    /// subscription is dropped.
    #[must_use]
    pub fn with_task(mut self, task: JoinHandle<()>) -> Self {
        self.task = Some(task);
        self
    }

    /// The next event; `None` once the sender is gone for good.
    pub async fn next(&mut self) -> Option<InvalidationEvent> {
        self.events.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("queued", &self.events.len())
            .finish_non_exhaustive()
    }
}

/// Feeds one [`Subscription`]; each method returns `false` once the
/// subscription is dropped, so the feeding task knows to stop.
#[derive(Debug, Clone)]
pub struct SubscriptionSender(mpsc::UnboundedSender<InvalidationEvent>);

impl SubscriptionSender {
    /// Sends [`InvalidationEvent::Connected`].
    pub fn connected(&self) -> bool {
        self.0.send(InvalidationEvent::Connected).is_ok()
    }

    /// Sends [`InvalidationEvent::Changed`].
    pub fn changed(&self, id: KeyId) -> bool {
        self.0.send(InvalidationEvent::Changed(id)).is_ok()
    }

    /// Sends [`InvalidationEvent::Lost`].
    pub fn lost(&self) -> bool {
        self.0.send(InvalidationEvent::Lost).is_ok()
    }

    /// Whether the subscription was dropped.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Waits until the subscription is dropped.
    pub async fn closed(&self) {
        self.0.closed().await;
    }
}

/// In-process announcements: for a single process, and for tests, which
/// can also make its subscriptions lose and regain their "connection".
///
/// Clones share the same subscribers.
#[derive(Clone, Default)]
pub struct LocalInvalidation {
    subscribers: Arc<Mutex<Vec<SubscriptionSender>>>,
}

impl LocalInvalidation {
    /// No subscribers yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn each(&self, send: impl Fn(&SubscriptionSender) -> bool) {
        // Management path only; the lock is never held by a request.
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        subscribers.retain(|subscriber| send(subscriber));
    }

    /// Every subscription hears [`InvalidationEvent::Lost`] (tests).
    pub fn disconnect(&self) {
        self.each(SubscriptionSender::lost);
    }

    /// Every subscription hears [`InvalidationEvent::Connected`] (tests).
    pub fn reconnect(&self) {
        self.each(SubscriptionSender::connected);
    }
}

impl fmt::Debug for LocalInvalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subscribers = self.subscribers.lock().map_or(0, |s| s.len());
        f.debug_struct("LocalInvalidation")
            .field("subscribers", &subscribers)
            .finish()
    }
}

#[async_trait::async_trait]
impl Invalidation for LocalInvalidation {
    async fn announce(&self, id: &KeyId) -> Result<(), StoreError> {
        let id = *id;
        self.each(|subscriber| subscriber.changed(id));
        Ok(())
    }

    fn subscribe(&self) -> Subscription {
        let (sender, subscription) = Subscription::channel();
        sender.connected();
        self.subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(sender);
        subscription
    }
}

/// Waits before the next connection attempt, doubling the wait up to a
/// maximum: what the engine implementations share.
#[cfg(any(feature = "postgres", feature = "redis"))]
#[derive(Debug)]
struct Backoff {
    next: std::time::Duration,
    start: std::time::Duration,
    max: std::time::Duration,
}

#[cfg(any(feature = "postgres", feature = "redis"))]
impl Backoff {
    /// 50 ms, doubling to 400 ms: a restored server is heard again well
    /// within a second, and a down one is asked a few times a second.
    fn new() -> Self {
        let start = std::time::Duration::from_millis(50);
        Self {
            next: start,
            start,
            max: std::time::Duration::from_millis(400),
        }
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }

    fn reset(&mut self) {
        self.next = self.start;
    }
}

/// An announced id, or a warning: payloads come from anyone who can
/// publish on the channel.
#[cfg(any(feature = "postgres", feature = "redis"))]
fn parse_payload(payload: &[u8]) -> Option<KeyId> {
    let id = std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse::<KeyId>().ok());
    if id.is_none() {
        tracing::warn!(
            target: "keyward::store",
            len = payload.len(),
            "ignored an invalidation message that is not a key id"
        );
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyFormat, KeyGenerator};

    #[tokio::test]
    async fn dropped_subscriptions_are_forgotten() {
        let channel = LocalInvalidation::new();
        let kept = channel.subscribe();
        drop(channel.subscribe());
        let id = KeyGenerator::new(KeyFormat::new("t").unwrap())
            .generate()
            .unwrap()
            .id();
        channel.announce(&id).await.unwrap();
        assert_eq!(channel.subscribers.lock().unwrap().len(), 1);
        drop(kept);
    }
}
