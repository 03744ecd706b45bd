use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use super::{parse_payload, Backoff, Invalidation, Subscription, SubscriptionSender};
use crate::key::KeyId;
use crate::store::StoreError;

/// Announcements over Redis pub/sub (feature `redis`).
///
/// [`announce`](Invalidation::announce) is one `PUBLISH <channel> <id>` on
/// a shared, reconnecting multiplexed connection; each
/// [`subscribe`](Invalidation::subscribe) holds a connection of its own in
/// a task that `SUBSCRIBE`s, `PING`s it when quiet for
/// [`heartbeat`](Self::heartbeat), and reconnects (50 ms, doubling to
/// 400 ms) when it drops, saying [`Lost`](super::InvalidationEvent::Lost)
/// and then [`Connected`](super::InvalidationEvent::Connected).
///
/// Pub/sub is fire-and-forget: what is published while a subscription
/// reconnects is lost, which is why a cache clears itself on `Connected`.
/// On Redis Cluster, `PUBLISH` reaches the subscribers of every node.
///
/// # Example
///
/// ```no_run
/// use keyward::store::invalidation::RedisInvalidation;
/// use keyward::store::{CachedStore, RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1/")?;
/// let connection = redis::aio::ConnectionManager::new(client.clone()).await?;
/// let store = RedisStore::new(connection).with_prefix("keyward")?;
/// let keys = CachedStore::builder(store)
///     .invalidation(RedisInvalidation::new(client, "keyward:invalidate"))
///     .build();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisInvalidation {
    client: redis::Client,
    channel: Arc<str>,
    publisher: Arc<OnceCell<ConnectionManager>>,
    heartbeat: Duration,
    timeout: Duration,
}

impl RedisInvalidation {
    /// Announces on `channel` (the same in every process that shares the
    /// keys) through `client`.
    pub fn new(client: redis::Client, channel: impl Into<String>) -> Self {
        Self {
            client,
            channel: channel.into().into(),
            publisher: Arc::new(OnceCell::new()),
            heartbeat: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    }

    /// Pings a quiet subscription this often (5 s by default), so that a
    /// connection that died silently is noticed.
    #[must_use]
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// The longest an announcement, a ping or a connection attempt waits
    /// (1 s by default).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The channel's name.
    pub fn channel_name(&self) -> &str {
        &self.channel
    }

    async fn publish(&self, id: &KeyId) -> Result<(), redis::RedisError> {
        let manager = self
            .publisher
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await?;
        let mut connection = manager.clone();
        redis::cmd("PUBLISH")
            .arg(&*self.channel)
            .arg(id.as_str())
            .exec_async(&mut connection)
            .await
    }

    async fn connect(&self) -> Result<redis::aio::PubSub, redis::RedisError> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&*self.channel).await?;
            Ok(pubsub)
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "timed out connecting",
            ))),
        }
    }

    async fn run(self, sender: SubscriptionSender) {
        let mut backoff = Backoff::new();
        loop {
            let pubsub = match self.connect().await {
                Ok(pubsub) => pubsub,
                Err(error) => {
                    tracing::debug!(target: "keyward::store", %error, "SUBSCRIBE failed; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            backoff.reset();
            if !sender.connected() {
                return;
            }
            self.hear(pubsub, &sender).await;
            if !sender.lost() {
                return;
            }
            tracing::warn!(
                target: "keyward::store",
                channel = &*self.channel,
                "Redis subscription lost; reconnecting"
            );
            backoff.wait().await;
        }
    }

    /// Forwards messages until the connection is lost.
    async fn hear(&self, pubsub: redis::aio::PubSub, sender: &SubscriptionSender) {
        let (mut sink, mut stream) = pubsub.split();
        loop {
            let next = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx));
            // Polling a stream is cancel-safe: a timeout loses no message.
            match tokio::time::timeout(self.heartbeat, next).await {
                Ok(Some(message)) => {
                    if let Some(id) = parse_payload(message.get_payload_bytes()) {
                        if !sender.changed(id) {
                            return;
                        }
                    }
                }
                Ok(None) => return,
                Err(_quiet) => {
                    let ping = tokio::time::timeout(self.timeout, sink.ping::<String>());
                    if !matches!(ping.await, Ok(Ok(_))) {
                        return;
                    }
                }
            }
        }
    }
}

impl fmt::Debug for RedisInvalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisInvalidation")
            .field("channel", &self.channel)
            .field("heartbeat", &self.heartbeat)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Invalidation for RedisInvalidation {
    async fn announce(&self, id: &KeyId) -> Result<(), StoreError> {
        match tokio::time::timeout(self.timeout, self.publish(id)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(StoreError::backend(error)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    fn subscribe(&self) -> Subscription {
        let (sender, subscription) = Subscription::channel();
        let task = tokio::spawn(self.clone().run(sender));
        subscription.with_task(task)
    }
}
