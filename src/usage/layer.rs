use std::cell::Cell;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::event::{RequestFacts, Route, ShortPath, Size};
use super::future::ResponseFuture;
use super::{stripe, UsageSink, UsageTags};
use crate::auth::PrincipalSlot;
use crate::clock::{Clock, SystemClock};
use crate::key::{KeyId, KeyIdBuildHasher};

/// How many key ids [`UsageLayer`] remembers for
/// [`Lifecycle::FirstUsed`](super::Lifecycle::FirstUsed) by default.
pub const DEFAULT_FIRST_USED_CAPACITY: usize = 100_000;

/// Records one [`UsageEvent`](super::UsageEvent) per request into a
/// [`UsageSink`]; see the [module docs](super).
///
/// Put it outermost, outside [`AuthLayer`](crate::auth::AuthLayer), so that
/// it sees every answer, refusals included.
///
/// Each [`layer`](Layer::layer) call allocates a few copies of what the
/// service shares (one per stripe: twice the next power of two of the
/// available parallelism, at most 64; about 128 bytes each), so that
/// threads do not contend on one reference count. Layer a service once and
/// clone the service (clones share the copies), rather than calling
/// `layer` per connection.
///
/// It wraps any service, `Clone` or not: it calls the inner service at
/// once and waits only for its answer.
#[must_use]
pub struct UsageLayer<K> {
    sink: Arc<K>,
    clock: Arc<dyn Clock>,
    monotonic: bool,
    first_seen: Arc<FirstSeen>,
}

impl<K: UsageSink> UsageLayer<K> {
    /// Records into `sink`, with timestamps from the system clock and
    /// latencies from a monotonic [`Instant`].
    pub fn new(sink: K) -> Self {
        Self::from_shared(Arc::new(sink))
    }

    /// Records into a sink that something else holds too (a
    /// [`KeyManager`](crate::KeyManager)'s lifecycle events), without
    /// wrapping it in a second `Arc`.
    pub(crate) fn from_shared(sink: Arc<K>) -> Self {
        Self {
            sink,
            clock: Arc::new(SystemClock),
            monotonic: true,
            first_seen: Arc::new(FirstSeen::new(DEFAULT_FIRST_USED_CAPACITY)),
        }
    }

    /// Takes timestamps from `clock`, and measures latency on it too (so a
    /// test that moves a [`FakeClock`](crate::clock::FakeClock) during a
    /// request sees exactly that latency).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = crate::clock::shared(clock);
        self.monotonic = false;
        self
    }

    /// Remembers at most `capacity` key ids to tell when a key is first
    /// used (default [`DEFAULT_FIRST_USED_CAPACITY`]). When the set is full
    /// it starts over, so a key may be reported as first used again; `0`
    /// turns [`Lifecycle::FirstUsed`](super::Lifecycle::FirstUsed) events
    /// off.
    ///
    /// Size it above the number of keys active at once: a process that
    /// sees more distinct keys than it holds keeps starting over, and then
    /// most requests insert into the set, which costs time and stops two
    /// threads from scaling (BENCHMARKS.md measures it).
    pub fn first_used_capacity(mut self, capacity: usize) -> Self {
        self.first_seen = Arc::new(FirstSeen::new(capacity));
        self
    }

    /// The sink events go to.
    pub fn sink(&self) -> &K {
        &self.sink
    }
}

impl<K> Clone for UsageLayer<K> {
    fn clone(&self) -> Self {
        Self {
            sink: Arc::clone(&self.sink),
            clock: Arc::clone(&self.clock),
            monotonic: self.monotonic,
            first_seen: Arc::clone(&self.first_seen),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for UsageLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageLayer")
            .field("sink", &self.sink)
            .field("clock", &self.clock)
            .field("first_used_capacity", &self.first_seen.capacity)
            .finish()
    }
}

impl<S, K> Layer<S> for UsageLayer<K> {
    type Service = UsageService<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        let copies = (0..stripe::count())
            .map(|_| {
                Arc::new(Shared {
                    sink: Arc::clone(&self.sink),
                    clock: Arc::clone(&self.clock),
                    monotonic: self.monotonic,
                    first_seen: Arc::clone(&self.first_seen),
                })
            })
            .collect();
        UsageService {
            inner,
            shared: Arc::new(Striped(copies)),
        }
    }
}

/// The service made by [`UsageLayer`].
pub struct UsageService<S, K> {
    inner: S,
    shared: Arc<Striped<K>>,
}

/// What a response future needs to record its event, in a few identical
/// copies: each request clones the `Arc` of its thread's copy, so that
/// threads do not bump one shared reference count on every request.
struct Striped<K>(Box<[Arc<Shared<K>>]>);

impl<K> Striped<K> {
    fn for_this_thread(&self) -> &Arc<Shared<K>> {
        &self.0[stripe::this_thread() & (self.0.len() - 1)]
    }
}

/// Aligned so that each copy's reference count has its own cache lines.
#[repr(align(128))]
pub(crate) struct Shared<K> {
    pub(crate) sink: Arc<K>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) monotonic: bool,
    pub(crate) first_seen: Arc<FirstSeen>,
}

impl<S, K> UsageService<S, K> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K> Clone for UsageService<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, K: fmt::Debug> fmt::Debug for UsageService<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageService")
            .field("inner", &self.inner)
            .field("sink", &self.shared.0[0].sink)
            .finish_non_exhaustive()
    }
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for UsageService<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    K: UsageSink,
    ReqBody: Body,
    ResBody: Body,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Inlined into the outer layer's `call`, so that this future is built
    // where the outer one keeps it instead of being moved there.
    #[inline]
    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = self.shared.for_this_thread();
        let started = shared.monotonic.then(Instant::now);
        let facts = RequestFacts {
            at: shared.clock.now(),
            method: request.method().clone(),
            route: route_of(&request),
            request_size: Size::new(request.body().size_hint().exact()),
            tags: request
                .extensions()
                .get::<UsageTags>()
                .map(|tags| Box::new(tags.clone())),
        };
        // AuthLayer leaves the caller's principal here.
        let slot = PrincipalSlot::plant(&mut request);
        ResponseFuture::new(
            self.inner.call(request),
            Arc::clone(shared),
            facts,
            started,
            slot,
        )
    }
}

/// axum's matched route when the router put it in the request, else the
/// path, never the query string (it may hold a key).
fn route_of<B>(request: &Request<B>) -> Option<Route> {
    #[cfg(feature = "axum")]
    if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
        // Copied when short: cloning it bumps a reference count that every
        // request to the route, on every thread, shares.
        return Some(match ShortPath::new(matched.as_str()) {
            Some(route) => Route::Short(route),
            None => Route::Matched(matched.clone()),
        });
    }
    let path_and_query = request.uri().path_and_query()?;
    if let Some(path) = ShortPath::new(path_and_query.path()) {
        return Some(Route::Short(path));
    }
    if path_and_query.query().is_none() {
        Some(Route::Path(path_and_query.clone()))
    } else {
        http::uri::PathAndQuery::try_from(path_and_query.path())
            .ok()
            .map(Route::Path)
    }
}

/// The key ids seen so far, for first-use events; bounded.
///
/// A key that was seen is the common case, so each thread remembers the
/// last few ids it found here (an exact, direct-mapped cache in a thread
/// local): a hit costs a few instructions and touches no shared memory.
/// Entries are tagged with `generation`, which is unique to this set and
/// changes after the set is cleared. A thread reads the generation before
/// the set, and the clearing thread publishes the new generation only once
/// the set is cleared, so an entry tagged with the current generation was
/// found in (or put into) the set after its last clear: it never answers
/// for another set, nor for ids the last clear removed. (Between a clear
/// and the new generation, a thread may still answer "seen" from its cache
/// for an id the clear removed; that id is reported as first used by the
/// next thread to miss its cache after the new generation is stored.)
pub(crate) struct FirstSeen {
    set: papaya::HashSet<KeyId, KeyIdBuildHasher>,
    capacity: usize,
    generation: AtomicU64,
}

/// How many ids each thread remembers (a power of two).
const RECENT: usize = 64;

thread_local! {
    /// `(generation, id)` pairs.
    static RECENTLY_SEEN: [Cell<(u64, Option<KeyId>)>; RECENT] =
        const { [const { Cell::new((0, None)) }; RECENT] };
}

/// A generation no set has used yet.
fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl FirstSeen {
    fn new(capacity: usize) -> Self {
        Self {
            set: papaya::HashSet::builder()
                .hasher(KeyIdBuildHasher)
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            capacity,
            generation: AtomicU64::new(next_generation()),
        }
    }

    /// Whether `id` is seen for the first time (and remembers it).
    pub(crate) fn first(&self, id: KeyId) -> bool {
        if self.capacity == 0 {
            return false;
        }
        // Read before the set (Acquire, pairing with the swap after a
        // clear): the set read below is at least as new as this generation,
        // so the entry written below never claims an id a clear removed.
        let generation = self.generation.load(Ordering::Acquire);
        let slot = (KeyIdBuildHasher.hash_one(id) as usize) & (RECENT - 1);
        let hit = RECENTLY_SEEN.with(|recent| recent[slot].get() == (generation, Some(id)));
        if hit {
            return false;
        }
        let first = self.first_in_set(id);
        RECENTLY_SEEN.with(|recent| recent[slot].set((generation, Some(id))));
        first
    }

    fn first_in_set(&self, id: KeyId) -> bool {
        let set = self.set.pin();
        if set.contains(&id) {
            return false;
        }
        if set.len() >= self.capacity {
            // Clear first, then publish the new generation: a thread that
            // sees the new generation then sees the cleared set, so it
            // cannot cache an id the clear removed under the new generation.
            // A swap, not a store: when two threads clear at once, the later
            // swap reads the earlier, so the generation that stays is
            // published after both clears.
            set.clear();
            self.generation.swap(next_generation(), Ordering::AcqRel);
        }
        set.insert(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_short_and_long_never_with_the_query() {
        let route = |uri: &str| {
            let request = Request::get(uri).body(()).unwrap();
            let route = route_of(&request).unwrap();
            (matches!(route, Route::Short(_)), route.as_str().to_owned())
        };
        let longest = format!("/{}", "a".repeat(ShortPath::MAX - 1));
        let too_long = format!("/{}", "a".repeat(ShortPath::MAX));
        assert_eq!(route("/pets?key=secret"), (true, "/pets".to_owned()));
        assert_eq!(route(&longest), (true, longest.clone()));
        assert_eq!(
            route(&format!("{too_long}?key=secret")),
            (false, too_long.clone())
        );
        assert_eq!(route(&too_long), (false, too_long));
        assert_eq!(route("/caf%C3%A9/ü"), (true, "/caf%C3%A9/ü".to_owned()));
    }

    #[test]
    fn first_seen_is_bounded() {
        let ids: Vec<KeyId> = ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let seen = FirstSeen::new(2);
        assert!(seen.first(ids[0]));
        assert!(!seen.first(ids[0]));
        assert!(seen.first(ids[1]));
        // Full: it starts over, so the set never holds more than 2.
        assert!(seen.first(ids[2]));
        assert!(seen.set.len() <= 2);
        assert!(seen.first(ids[0]));

        let off = FirstSeen::new(0);
        assert!(!off.first(ids[0]));
        assert_eq!(off.set.len(), 0);
    }
}
