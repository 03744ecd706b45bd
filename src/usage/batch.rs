use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::{stripe, UsageEvent, UsageSink};

/// Where a [`BatchingSink`] delivers its batches: a file, a queue, a
/// database, a billing system. Implement it for your destination.
///
/// `export` runs on the sink's background task, one batch at a time, never
/// on the request path: it may take its time. If it falls behind, the
/// sink's buffers fill up and new events are dropped (and counted), so a
/// stuck exporter costs events, never requests. Deal with your own errors
/// (retry, log) inside `export`.
///
/// ```
/// use std::io::Write;
/// use std::time::{SystemTime, UNIX_EPOCH};
/// use keyward::usage::{BatchingSink, Lifecycle, UsageEvent, UsageExporter, UsageSink};
///
/// /// One JSON object a line.
/// struct JsonLines<W>(W);
///
/// #[async_trait::async_trait]
/// impl<W: Write + Send + 'static> UsageExporter for JsonLines<W> {
///     async fn export(&mut self, batch: Vec<UsageEvent>) {
///         for event in &batch {
///             let line = serde_json::json!({
///                 "at_ms": event.at().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
///                 "kind": event.kind().as_str(),
///                 "key_id": event.key_id().map(|id| id.to_string()),
///                 "owner": event.owner(),
///                 "method": event.method().map(|m| m.as_str()),
///                 "route": event.route(),
///                 "status": event.status().map(|s| s.as_u16()),
///                 "outcome": event.outcome().as_str(),
///                 "latency_us": event.latency().as_micros() as u64,
///                 "tags": event.tags().iter().collect::<std::collections::BTreeMap<_, _>>(),
///             });
///             let _ = writeln!(self.0, "{line}");
///         }
///         let _ = self.0.flush();
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sink = BatchingSink::new(JsonLines(std::io::stdout()));
/// let id = "abcdefABCDEF".parse()?;
/// sink.record(UsageEvent::lifecycle(Lifecycle::Issued, id, "acme", SystemTime::now()));
/// sink.shutdown().await; // exports what is queued, then stops
/// # Ok(())
/// # }
/// ```
#[async_trait::async_trait]
pub trait UsageExporter: Send + 'static {
    /// Delivers one batch. Events recorded on one thread arrive in the order
    /// they were recorded; events from different threads are not ordered
    /// among themselves (sort by [`UsageEvent::at`] if you need to).
    async fn export(&mut self, batch: Vec<UsageEvent>);
}

/// Buffers events and hands them, in batches, to a [`UsageExporter`] on a
/// background task (feature `tokio`).
///
/// [`record`](UsageSink::record) never waits, and costs about one
/// uncontended lock: each thread appends to one of a few buffers (stripes),
/// so threads do not contend with each other, and the worker is woken only
/// when a buffer holds a batch's worth of events, not per event. When the
/// sink holds [`capacity`](BatchingSinkBuilder::capacity) events that the
/// exporter has not taken yet, new events are dropped and
/// [`dropped`](BatchingSink::dropped) goes up.
/// [`flush`](UsageSink::flush) waits until everything recorded before it
/// has been exported; [`shutdown`](BatchingSink::shutdown) does the same
/// and stops the task; when the last clone of the sink is dropped, the task
/// exports what is left and stops. A batch is exported when
/// [`max_batch`](BatchingSinkBuilder::max_batch) events are waiting, or
/// about [`interval`](BatchingSinkBuilder::interval) after the first of
/// them.
///
/// Events recorded on one thread are exported in order; events from
/// different threads may be exported in any order among themselves.
///
/// Clones share the same buffers and task.
#[derive(Clone)]
pub struct BatchingSink {
    shared: Arc<Shared>,
}

/// Held by the sinks only: when the last is dropped, the worker is told.
struct Shared {
    core: Arc<Core>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last sink is gone: tell the worker, so that it exports what is
        // left now rather than at its deadline, and stops.
        self.core.sinks_gone.store(true, Ordering::Release);
        self.core.wake.notify_one();
    }
}

/// What the sinks and the worker share.
struct Core {
    stripes: Box<[Stripe]>,
    /// `stripes.len() - 1` (a power of two minus one).
    mask: usize,
    capacity: usize,
    /// Room taken: events buffered or in the worker's hands, not yet handed
    /// to the exporter, plus the stripes' unused [`Buffer::allowance`].
    reserved: AtomicUsize,
    /// How much room a stripe takes from `reserved` at a time, so that the
    /// shared counter is touched once per `grant` events, not per event.
    grant: usize,
    /// The buffer length at which a recorder wakes the worker.
    wake_at: usize,
    max_batch: usize,
    dropped: AtomicU64,
    /// Events the worker holds, not yet handed to the exporter.
    held: AtomicUsize,
    /// Set by the worker when every buffer was empty: the next event wakes
    /// it (to start the interval), instead of only a full buffer.
    idle: AtomicBool,
    sinks_gone: AtomicBool,
    wake: Notify,
    requests: Mutex<Requests>,
}

/// Flushes and shutdowns waiting for the worker.
#[derive(Default)]
struct Requests {
    waiting: Vec<(Request, oneshot::Sender<()>)>,
    /// The worker has stopped: nobody will answer.
    stopped: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Request {
    Flush,
    Shutdown,
}

/// One buffer, on its own cache lines so that threads writing to
/// neighbouring stripes do not slow each other down.
#[repr(align(128))]
struct Stripe(Mutex<Buffer>);

struct Buffer {
    events: Vec<UsageEvent>,
    /// Room already taken from [`Core::reserved`] for this buffer.
    allowance: usize,
    /// The worker has stopped: events are dropped.
    closed: bool,
}

impl Stripe {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // A panic while holding the lock leaves a valid `Vec`: go on.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Core {
    fn new(capacity: usize, max_batch: usize) -> Self {
        let stripes = stripe::count();
        Self {
            stripes: (0..stripes)
                .map(|_| {
                    Stripe(Mutex::new(Buffer {
                        events: Vec::new(),
                        allowance: 0,
                        closed: false,
                    }))
                })
                .collect(),
            mask: stripes - 1,
            capacity,
            reserved: AtomicUsize::new(0),
            // Unused grants can make the sink refuse a little early: at most
            // an eighth of the capacity.
            grant: (capacity / (stripes * 8)).clamp(1, 64),
            // Woken when one buffer holds a batch, or its share of half the
            // capacity, so that buffers never fill up waiting for the
            // interval.
            wake_at: max_batch.min(capacity / (stripes * 2)).max(1),
            max_batch,
            dropped: AtomicU64::new(0),
            held: AtomicUsize::new(0),
            idle: AtomicBool::new(true),
            sinks_gone: AtomicBool::new(false),
            wake: Notify::new(),
            requests: Mutex::new(Requests::default()),
        }
    }

    fn requests(&self) -> MutexGuard<'_, Requests> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes room for up to `grant` events; 0 when the sink is full.
    fn reserve(&self) -> usize {
        let mut reserved = self.reserved.load(Ordering::Relaxed);
        loop {
            let take = self.capacity.saturating_sub(reserved).min(self.grant);
            if take == 0 {
                return 0;
            }
            match self.reserved.compare_exchange_weak(
                reserved,
                reserved + take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take,
                Err(now) => reserved = now,
            }
        }
    }

    fn count_dropped(&self, events: u64) {
        let before = self.dropped.fetch_add(events, Ordering::Relaxed);
        // Logged at 1, 2, 3, 5, 9, 17... drops: enough to notice, never a flood.
        if before == 0 || before.is_power_of_two() {
            tracing::warn!(
                target: "keyward::usage",
                dropped = before + events,
                "usage sink full or shut down; usage events dropped"
            );
        }
    }

    /// Asks the worker for a flush or a shutdown and waits for it; returns
    /// at once if the worker has stopped.
    async fn ask(&self, request: Request) {
        let (ack, done) = oneshot::channel();
        {
            let mut requests = self.requests();
            if requests.stopped {
                return;
            }
            requests.waiting.push((request, ack));
        }
        self.wake.notify_one();
        // An error means the worker was dropped: nothing left to wait for.
        let _ = done.await;
    }

    /// Moves every buffered event into `pending`, stripe by stripe; with
    /// `close`, the stripes refuse events from now on.
    fn drain(&self, pending: &mut VecDeque<UsageEvent>, spare: &mut Vec<UsageEvent>, close: bool) {
        for stripe in self.stripes.iter() {
            let mut buffer = stripe.lock();
            if close {
                buffer.closed = true;
                buffer.allowance = 0;
            }
            if buffer.events.is_empty() {
                continue;
            }
            // Hold the lock only for a swap; the spare keeps its capacity.
            std::mem::swap(&mut buffer.events, spare);
            drop(buffer);
            pending.extend(spare.drain(..));
            // A buffer that once filled up (a slow exporter) gives its memory
            // back; a buffer of about one wake's worth is kept for reuse.
            spare.shrink_to(2 * self.wake_at);
        }
        self.held.store(pending.len(), Ordering::Relaxed);
    }

    fn any_buffered(&self) -> bool {
        self.stripes
            .iter()
            .any(|stripe| !stripe.lock().events.is_empty())
    }

    /// Events in the buffers and in the worker's hands.
    fn queued(&self) -> usize {
        let buffered: usize = self.stripes.iter().map(|s| s.lock().events.len()).sum();
        buffered + self.held.load(Ordering::Relaxed)
    }
}

/// Configures a [`BatchingSink`]; from [`BatchingSink::builder`].
#[must_use]
pub struct BatchingSinkBuilder<E> {
    exporter: E,
    capacity: usize,
    max_batch: usize,
    interval: Duration,
}

/// The background task of a [`BatchingSink`] made with
/// [`BatchingSinkBuilder::build`]: spawn it on your runtime.
#[must_use = "the sink exports nothing until its worker is spawned"]
pub struct BatchWorker {
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl BatchingSink {
    /// A sink exporting to `exporter` with the default settings (room for
    /// 8192 events, batches of up to 512, exported within about a second),
    /// its task spawned on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`; use
    /// [`builder`](BatchingSink::builder) and
    /// [`build`](BatchingSinkBuilder::build) to spawn the task yourself.
    pub fn new(exporter: impl UsageExporter) -> Self {
        Self::builder(exporter).spawn()
    }

    /// Configures a sink exporting to `exporter`.
    pub fn builder<E: UsageExporter>(exporter: E) -> BatchingSinkBuilder<E> {
        BatchingSinkBuilder {
            exporter,
            capacity: 8192,
            max_batch: 512,
            interval: Duration::from_secs(1),
        }
    }

    /// How many events were dropped because the sink was full (or shut
    /// down).
    pub fn dropped(&self) -> u64 {
        self.shared.core.dropped.load(Ordering::Relaxed)
    }

    /// How many events wait now (recorded, not yet handed to the exporter).
    pub fn queued(&self) -> usize {
        self.shared.core.queued()
    }

    /// Exports everything recorded so far, then stops the background task;
    /// events recorded afterwards are dropped. Call it after the server has
    /// stopped taking requests.
    pub async fn shutdown(&self) {
        self.shared.core.ask(Request::Shutdown).await;
    }
}

impl<E: UsageExporter> BatchingSinkBuilder<E> {
    /// How many events the sink holds before it drops new ones (default
    /// 8192, at least 1): recorded events that the exporter has not taken
    /// yet. Each thread's buffer takes room from it a few events at a time,
    /// so under load from many threads the sink may refuse events a little
    /// before it is full.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// The largest batch handed to the exporter (default 512, at least 1).
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// How long events may wait for a full batch (default one second).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The sink, and its background task for you to spawn.
    pub fn build(self) -> (BatchingSink, BatchWorker) {
        let core = Arc::new(Core::new(self.capacity, self.max_batch));
        let sink = BatchingSink {
            shared: Arc::new(Shared {
                core: Arc::clone(&core),
            }),
        };
        let worker = BatchWorker {
            future: Box::pin(run(core, self.exporter, self.interval)),
        };
        (sink, worker)
    }

    /// The sink, its task spawned on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn spawn(self) -> BatchingSink {
        let (sink, worker) = self.build();
        tokio::spawn(worker);
        sink
    }
}

/// Marks the sink stopped when the worker ends, also when its task is
/// dropped without finishing (the runtime shut down): events are dropped
/// from then on, and flushes return at once.
struct Stopped<'a>(&'a Core);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let mut lost = 0;
        for stripe in self.0.stripes.iter() {
            let mut buffer = stripe.lock();
            buffer.closed = true;
            buffer.allowance = 0;
            lost += buffer.events.len();
            buffer.events = Vec::new();
        }
        lost += self.0.held.swap(0, Ordering::Relaxed);
        if lost > 0 {
            self.0.count_dropped(lost as u64);
        }
        let waiting = {
            let mut requests = self.0.requests();
            requests.stopped = true;
            std::mem::take(&mut requests.waiting)
        };
        for (_, ack) in waiting {
            let _ = ack.send(());
        }
    }
}

async fn run<E: UsageExporter>(core: Arc<Core>, mut exporter: E, interval: Duration) {
    let core = &*core;
    let _stopped = Stopped(core);
    let mut pending = VecDeque::new();
    let mut spare = Vec::new();
    // Set while events wait: when they must be exported, full batch or not.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        match deadline {
            None => core.wake.notified().await,
            Some(deadline) => {
                let _ = tokio::time::timeout_at(deadline, core.wake.notified()).await;
            }
        }
        core.idle.store(false, Ordering::Relaxed);
        let requests = std::mem::take(&mut core.requests().waiting);
        let stop = core.sinks_gone.load(Ordering::Acquire)
            || requests.iter().any(|(r, _)| *r == Request::Shutdown);
        core.drain(&mut pending, &mut spare, stop);
        let due = stop
            || !requests.is_empty()
            || deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        // A full batch goes at once; the rest waits for the deadline unless
        // it is due.
        while pending.len() >= core.max_batch || (due && !pending.is_empty()) {
            let take = pending.len().min(core.max_batch);
            let batch: Vec<UsageEvent> = pending.drain(..take).collect();
            core.held.store(pending.len(), Ordering::Relaxed);
            core.reserved.fetch_sub(take, Ordering::Relaxed);
            exporter.export(batch).await;
        }
        pending.shrink_to(2 * core.max_batch);
        for (_, ack) in requests {
            let _ = ack.send(());
        }
        if stop {
            return;
        }
        if !pending.is_empty() {
            if due || deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + interval);
            }
            continue;
        }
        // Nothing in hand: sleep until an event arrives, unless some came
        // in meanwhile. `idle` is set before looking, so that a recorder
        // either is seen here or sees `idle` and wakes the worker.
        core.idle.store(true, Ordering::SeqCst);
        deadline = if core.any_buffered() {
            core.idle.store(false, Ordering::Relaxed);
            Some(tokio::time::Instant::now() + interval)
        } else {
            None
        };
    }
}

#[async_trait::async_trait]
impl UsageSink for BatchingSink {
    fn record(&self, event: UsageEvent) {
        let core = &*self.shared.core;
        let stripe = &core.stripes[stripe::this_thread() & core.mask];
        let mut buffer = stripe.lock();
        if buffer.allowance == 0 {
            buffer.allowance = if buffer.closed { 0 } else { core.reserve() };
            if buffer.allowance == 0 {
                drop(buffer);
                drop(event);
                core.count_dropped(1);
                return;
            }
        }
        buffer.allowance -= 1;
        buffer.events.push(event);
        let buffered = buffer.events.len();
        drop(buffer);
        // Wake the worker for a batch's worth, or for the first event after
        // it went idle; never per event.
        if buffered == core.wake_at || (buffered == 1 && core.idle.load(Ordering::SeqCst)) {
            core.wake.notify_one();
        }
    }

    async fn flush(&self) {
        self.shared.core.ask(Request::Flush).await;
    }
}

impl Future for BatchWorker {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

impl fmt::Debug for BatchingSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchingSink")
            .field("capacity", &self.shared.core.capacity)
            .field("queued", &self.queued())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl<E> fmt::Debug for BatchingSinkBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchingSinkBuilder")
            .field("capacity", &self.capacity)
            .field("max_batch", &self.max_batch)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for BatchWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchWorker").finish_non_exhaustive()
    }
}
