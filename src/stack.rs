//! [`Keyward`]: one configuration for the whole stack — store, key format,
//! hasher, clock, limiter and usage sink — that hands out the layers and a
//! [`KeyManager`] configured alike.
//!
//! Built part by part, a stack names its store, format and hasher twice
//! (for [`AuthLayer`] and [`KeyManager`]) and its clock four times
//! ([`AuthLayer`], [`MemoryLimiter`], [`UsageLayer`], [`KeyManager`]); a
//! part left on the system clock in a test on a
//! [`FakeClock`](crate::clock::FakeClock) fails in ways that are hard to
//! read. `Keyward` takes each setting once. It is only a setup helper: the
//! layers it hands out are the same types, with the same fields, as the
//! ones you would build yourself, so a request costs exactly the same, and
//! each part's own `with_clock` / `clock` keeps working.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{body::Body, routing::get, Router};
//! use http::{Request, StatusCode};
//! use keyward::clock::FakeClock;
//! use keyward::limit::{Limits, RatePolicy};
//! use keyward::manager::IssueOptions;
//! use keyward::usage::AggregatingSink;
//! use keyward::{KeyFormat, Keyward, MemoryStore};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let clock = FakeClock::default();
//! let usage = AggregatingSink::new();
//! let keyward = Keyward::new(MemoryStore::new(), KeyFormat::new("sk_test")?)
//!     .with_clock(clock.clone()) // the one place the clock is set
//!     .with_sink(usage.clone());
//!
//! let app = Router::new().route("/", get(|| async { "hello" })).layer(
//!     ServiceBuilder::new()
//!         .layer(keyward.usage_layer())
//!         .layer(keyward.auth_layer())
//!         .layer(keyward.rate_limit_layer()),
//! );
//!
//! let limits = Limits::new([RatePolicy::new("burst", 1, Duration::from_secs(10))?.into()])?;
//! let issued = keyward
//!     .manager()
//!     .issue(IssueOptions::new("acme").limits(limits).expires_in(Duration::from_secs(60)))
//!     .await?;
//! let request = || {
//!     Request::get("/")
//!         .header("x-api-key", issued.key.expose_secret())
//!         .body(Body::empty())
//!         .unwrap()
//! };
//!
//! assert_eq!(app.clone().oneshot(request()).await?.status(), StatusCode::OK);
//! assert_eq!(app.clone().oneshot(request()).await?.status(), StatusCode::TOO_MANY_REQUESTS);
//! clock.advance(Duration::from_secs(10)); // the limiter sees it...
//! assert_eq!(app.clone().oneshot(request()).await?.status(), StatusCode::OK);
//! clock.advance(Duration::from_secs(50)); // ...and so does the key's expiry
//! assert_eq!(app.oneshot(request()).await?.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(usage.get(&issued.record.id).unwrap().requests, 4);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use crate::auth::{AuthLayer, Authenticator};
use crate::clock::{Clock, SystemClock};
use crate::key::{KeyFormat, KeyHasher};
use crate::limit::{Limiter, MemoryLimiter, RateLimitLayer};
use crate::manager::KeyManager;
use crate::store::KeyStore;
use crate::usage::{UsageLayer, UsageSink};

/// The settings a stack shares, and the parts made from them; see the
/// [module docs](self).
///
/// Configure it first (`with_*`), then hand out the parts. Each
/// `with_*` call returns a new configuration: parts handed out before it
/// keep the settings they were made with. Clones share the store, the
/// limiter, the sink and the usage layer's first-use set, so the layers of
/// two routers made from one `Keyward` count against the same limits.
///
/// Defaults: plain SHA-256 ([`KeyHasher::sha256`]), the system clock, a
/// [`MemoryLimiter`] (a million keys at most), and no usage sink (`()`,
/// which discards).
pub struct Keyward<K = ()> {
    store: Arc<dyn KeyStore>,
    format: KeyFormat,
    hasher: KeyHasher,
    clock: Arc<dyn Clock>,
    /// Whether a clock was set: until then every part keeps its own default
    /// (the usage layer then measures latency on a monotonic `Instant`).
    clock_set: bool,
    limiter: Arc<dyn Limiter>,
    /// The limiter when it is the built-in one, to follow the clock.
    memory_limiter: Option<MemoryLimiter>,
    sink: Arc<K>,
    /// Made once, so that every layer handed out shares one first-use set.
    usage: UsageLayer<K>,
}

impl Keyward<()> {
    /// A stack on `store`, for keys of `format`, with the defaults above.
    ///
    /// An `Arc<dyn KeyStore>` is shared as it is.
    pub fn new(store: impl KeyStore, format: KeyFormat) -> Self {
        let memory = MemoryLimiter::new();
        let sink = Arc::new(());
        Self {
            store: crate::store::shared(store),
            format,
            hasher: KeyHasher::sha256(),
            clock: Arc::new(SystemClock),
            clock_set: false,
            limiter: Arc::new(memory.clone()),
            memory_limiter: Some(memory),
            usage: UsageLayer::from_shared(Arc::clone(&sink)),
            sink,
        }
    }
}

impl<K: UsageSink> Keyward<K> {
    /// Every part reads time from `clock`: expiry and not-before in
    /// [`AuthLayer`], rate limits in the built-in [`MemoryLimiter`],
    /// timestamps and latencies in [`UsageLayer`], creation, expiry and
    /// revocation times in [`KeyManager`].
    ///
    /// A limiter given to [`with_limiter`](Self::with_limiter) keeps its
    /// own time (a remote backend uses the server's). Parts built outside
    /// (a [`FailureThrottle`](crate::auth::FailureThrottle), a cache in
    /// front of the store) take [`clock`](Self::clock) with their own
    /// `with_clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = crate::clock::shared(clock);
        self.clock_set = true;
        if let Some(memory) = self.memory_limiter.take() {
            self.set_memory_limiter(memory);
        }
        self.usage = self.fresh_usage_layer();
        self
    }

    /// Hashes keys with `hasher` (for example
    /// [`KeyHasher::with_pepper`]), in [`AuthLayer`] and [`KeyManager`]
    /// alike.
    #[must_use]
    pub fn with_hasher(mut self, hasher: KeyHasher) -> Self {
        self.hasher = hasher;
        self
    }

    /// Limits keys with `limiter` instead of the built-in
    /// [`MemoryLimiter`] (a shared backend, for several processes). It
    /// keeps its own time. An `Arc<dyn Limiter>` is shared as it is.
    #[must_use]
    pub fn with_limiter(mut self, limiter: impl Limiter) -> Self {
        self.limiter = crate::limit::shared_limiter(limiter);
        self.memory_limiter = None;
        self
    }

    /// Configures the built-in [`MemoryLimiter`] (it gets one on this
    /// stack's clock, replacing a limiter set with
    /// [`with_limiter`](Self::with_limiter)): `configure` receives it and
    /// returns it changed, e.g. `|limiter| limiter.with_max_keys(10_000)`.
    #[must_use]
    pub fn with_memory_limiter(
        mut self,
        configure: impl FnOnce(MemoryLimiter) -> MemoryLimiter,
    ) -> Self {
        let memory = self.memory_limiter.take().unwrap_or_default();
        self.set_memory_limiter(configure(memory));
        self
    }

    /// Records usage (and [`KeyManager`]'s lifecycle events, the audit
    /// trail) into `sink`.
    #[must_use]
    pub fn with_sink<S: UsageSink>(self, sink: S) -> Keyward<S> {
        let sink = Arc::new(sink);
        let mut usage = UsageLayer::from_shared(Arc::clone(&sink));
        if self.clock_set {
            usage = usage.clock(Arc::clone(&self.clock));
        }
        Keyward {
            store: self.store,
            format: self.format,
            hasher: self.hasher,
            clock: self.clock,
            clock_set: self.clock_set,
            limiter: self.limiter,
            memory_limiter: self.memory_limiter,
            sink,
            usage,
        }
    }

    /// An [`AuthLayer`] on this store, format, hasher and clock; configure
    /// the rest (sources, throttle, responder, environment) on it.
    pub fn auth_layer(&self) -> AuthLayer {
        AuthLayer::from_authenticator(self.authenticator())
    }

    /// The [`Authenticator`] behind [`auth_layer`](Self::auth_layer), for
    /// checking a key outside a layer.
    pub fn authenticator(&self) -> Authenticator {
        let authenticator = Authenticator::new(Arc::clone(&self.store), self.format.clone())
            .with_hasher(self.hasher.clone());
        if self.clock_set {
            authenticator.with_clock(Arc::clone(&self.clock))
        } else {
            authenticator
        }
    }

    /// A [`RateLimitLayer`] on this stack's limiter (every layer handed out
    /// shares it); configure cost, responder or fail-open on it.
    pub fn rate_limit_layer(&self) -> RateLimitLayer {
        RateLimitLayer::new(Arc::clone(&self.limiter))
    }

    /// A [`UsageLayer`] into this stack's sink, on its clock. Every layer
    /// handed out shares one set of keys already seen (for
    /// [`Lifecycle::FirstUsed`](crate::usage::Lifecycle::FirstUsed)).
    pub fn usage_layer(&self) -> UsageLayer<K> {
        self.usage.clone()
    }

    /// A [`KeyManager`] on this store, format, hasher and clock, recording
    /// its lifecycle events into this stack's sink.
    pub fn manager(&self) -> KeyManager {
        let manager = KeyManager::from_shared(Arc::clone(&self.store), self.format.clone())
            .with_hasher(self.hasher.clone())
            .with_events(Arc::clone(&self.sink));
        if self.clock_set {
            manager.with_clock(Arc::clone(&self.clock))
        } else {
            manager
        }
    }

    /// The key store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// The key format.
    pub fn format(&self) -> &KeyFormat {
        &self.format
    }

    /// The hasher.
    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// The clock (the system clock unless one was set). `Arc<dyn Clock>`
    /// is itself a [`Clock`]: give it to the `with_clock` of parts made
    /// outside, such as a [`FailureThrottle`](crate::auth::FailureThrottle).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The limiter the rate-limit layers use.
    pub fn limiter(&self) -> &Arc<dyn Limiter> {
        &self.limiter
    }

    /// The built-in [`MemoryLimiter`], unless another limiter was set (for
    /// [`forget`](MemoryLimiter::forget) and its counts).
    pub fn memory_limiter(&self) -> Option<&MemoryLimiter> {
        self.memory_limiter.as_ref()
    }

    /// The usage sink.
    pub fn sink(&self) -> &K {
        &self.sink
    }

    fn set_memory_limiter(&mut self, memory: MemoryLimiter) {
        let memory = if self.clock_set {
            memory.with_clock(Arc::clone(&self.clock))
        } else {
            memory
        };
        self.limiter = Arc::new(memory.clone());
        self.memory_limiter = Some(memory);
    }

    fn fresh_usage_layer(&self) -> UsageLayer<K> {
        let usage = UsageLayer::from_shared(Arc::clone(&self.sink));
        if self.clock_set {
            usage.clock(Arc::clone(&self.clock))
        } else {
            usage
        }
    }
}

impl<K> Clone for Keyward<K> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            format: self.format.clone(),
            hasher: self.hasher.clone(),
            clock: Arc::clone(&self.clock),
            clock_set: self.clock_set,
            limiter: Arc::clone(&self.limiter),
            memory_limiter: self.memory_limiter.clone(),
            sink: Arc::clone(&self.sink),
            usage: self.usage.clone(),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for Keyward<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyward")
            .field("store", &self.store)
            .field("format", &self.format)
            .field("hasher", &self.hasher)
            .field("clock", &self.clock)
            .field("limiter", &self.limiter)
            .field("sink", &self.sink)
            .finish()
    }
}
