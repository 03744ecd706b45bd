use std::fmt;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{Executor, PgPool};

use super::{parse_payload, Backoff, Invalidation, Subscription, SubscriptionSender};
use crate::key::KeyId;
use crate::postgres::{Identifier, InvalidIdentifier};
use crate::store::StoreError;

/// Announcements over PostgreSQL `LISTEN/NOTIFY` (feature `postgres`).
///
/// [`announce`](Invalidation::announce) runs `pg_notify(channel, id)`;
/// each [`subscribe`](Invalidation::subscribe) holds one connection of the
/// pool in a task that `LISTEN`s, pings it when quiet for
/// [`heartbeat`](Self::heartbeat), and reconnects (50 ms, doubling to
/// 400 ms) when it drops, saying [`Lost`](super::InvalidationEvent::Lost)
/// and then [`Connected`](super::InvalidationEvent::Connected). Size the
/// pool one connection larger for it.
///
/// PostgreSQL delivers a notification only to sessions listening when it
/// commits: what is sent while a subscription reconnects is lost, which is
/// why a cache clears itself on `Connected`.
///
/// # Example
///
/// ```no_run
/// use keyward::store::invalidation::PgInvalidation;
/// use keyward::store::{CachedStore, PgStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
/// let store = PgStore::new(pool.clone());
/// store.migrate().await?;
/// let keys = CachedStore::builder(store)
///     .invalidation(PgInvalidation::new(pool).channel("keyward_keys")?)
///     .build();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PgInvalidation {
    pool: PgPool,
    channel: Identifier,
    heartbeat: Duration,
    timeout: Duration,
}

impl PgInvalidation {
    /// Announces on the channel `keyward_keys` through `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            channel: Identifier::new("keyward_keys").expect("a valid identifier"),
            heartbeat: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    }

    /// Uses the channel `name` (checked like a table name): one per set of
    /// keys, the same in every process that shares them.
    pub fn channel(mut self, name: &str) -> Result<Self, InvalidIdentifier> {
        self.channel = Identifier::new(name)?;
        Ok(self)
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
    pub fn channel_name(&self) -> &Identifier {
        &self.channel
    }

    async fn connect(&self) -> Result<PgListener, sqlx::Error> {
        let connect = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            // Loss is reported (try_recv answers None), and this task
            // reconnects itself, saying so.
            listener.eager_reconnect(false);
            listener.listen(self.channel.as_str()).await?;
            Ok(listener)
        };
        tokio::time::timeout(self.timeout, connect)
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
    }

    async fn run(self, sender: SubscriptionSender) {
        let mut backoff = Backoff::new();
        loop {
            let mut listener = match self.connect().await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::debug!(target: "keyward::store", %error, "LISTEN failed; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            backoff.reset();
            if !sender.connected() {
                return;
            }
            self.hear(&mut listener, &sender).await;
            if !sender.lost() {
                return;
            }
            tracing::warn!(
                target: "keyward::store",
                channel = self.channel.as_str(),
                "LISTEN connection lost; reconnecting"
            );
            drop(listener);
            backoff.wait().await;
        }
    }

    /// Forwards notifications until the connection is lost.
    async fn hear(&self, listener: &mut PgListener, sender: &SubscriptionSender) {
        loop {
            // try_recv is cancel-safe: a timeout loses no notification.
            match tokio::time::timeout(self.heartbeat, listener.try_recv()).await {
                Ok(Ok(Some(notification))) => {
                    if let Some(id) = parse_payload(notification.payload().as_bytes()) {
                        if !sender.changed(id) {
                            return;
                        }
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => return,
                Err(_quiet) => {
                    let ping = tokio::time::timeout(self.timeout, listener.execute("SELECT 1"));
                    if !matches!(ping.await, Ok(Ok(_))) {
                        return;
                    }
                }
            }
        }
    }
}

impl fmt::Debug for PgInvalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgInvalidation")
            .field("channel", &self.channel)
            .field("heartbeat", &self.heartbeat)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Invalidation for PgInvalidation {
    async fn announce(&self, id: &KeyId) -> Result<(), StoreError> {
        let notify = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(self.channel.as_str())
            .bind(id.as_str())
            .execute(&self.pool);
        match tokio::time::timeout(self.timeout, notify).await {
            Ok(Ok(_)) => Ok(()),
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
