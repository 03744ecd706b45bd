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
/// # Implementing this trait
///
/// The trait is declared with [`async_trait`](macro@crate::async_trait): put
/// `#[keyward::async_trait]` on your `impl` (keyward re-exports it, so you
/// need no `async-trait` dependency of your own) and write `export` as an
/// `async fn`. Without the attribute it fails to compile with E0195
/// ("lifetime parameters or bounds on method do not match the trait
/// declaration"): the attribute turned the trait's `export` into a function
/// returning a boxed `Send` future, with lifetimes of its own, and only the
/// same attribute gives the impl's `async fn` that signature.
///
/// ```
/// use std::io::Write;
/// use std::time::SystemTime;
/// use keyward::usage::{BatchingSink, Lifecycle, UsageEvent, UsageExporter, UsageSink};
///
/// /// One JSON object a line.
/// struct JsonLines<W>(W);
///
/// #[keyward::async_trait]
/// impl<W: Write + Send + 'static> UsageExporter for JsonLines<W> {
///     async fn export(&mut self, batch: Vec<UsageEvent>) {
///         for event in &batch {
///             // `UsageEvent`'s own JSON (feature `serde`): kind, at (RFC 3339),
///             // key_id, owner, method, route, status, outcome, latency_us, tags …
///             let _ = serde_json::to_writer(&mut self.0, event);
///             let _ = writeln!(self.0);
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
/// so threads do not contend with each other, and the worker is woken a
/// few times a batch, not per event. When the sink holds
/// [`capacity`](BatchingSinkBuilder::capacity) events that the exporter has
/// not taken yet, new events are dropped and
/// [`dropped`](BatchingSink::dropped) goes up.
/// [`flush`](UsageSink::flush) waits until everything recorded before it
/// has been exported; [`shutdown`](BatchingSink::shutdown) does the same
/// and stops the task; when the last clone of the sink is dropped, the task
/// exports what is left and stops.
///
/// Events are exported in batches of at most
/// [`max_batch`](BatchingSinkBuilder::max_batch): as soon as about
/// `max_batch` events are waiting, or half the capacity if that is fewer
/// (so that the sink never fills up waiting for a full batch; the events
/// waiting are counted a few at a time per thread, so the worker then
/// exports all it holds, which may be a little fewer), else about
/// [`interval`](BatchingSinkBuilder::interval) after the first of them.
///
/// If the task stops without finishing (its runtime shut down, the
/// [`BatchWorker`] was dropped, or the exporter panicked), the events it
/// had not exported, including a batch the exporter had not returned from,
/// are counted in [`dropped`](BatchingSink::dropped), later events are
/// dropped, and flushes and shutdowns return at once. A `flush` that
/// returns has then not exported everything: compare
/// [`dropped`](BatchingSink::dropped) before and after if that matters.
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
    /// How many events waiting overall make the worker export without
    /// waiting for the interval: a batch, or half the capacity if fewer.
    /// A recorder whose grant takes [`Core::reserved`] across it wakes the
    /// worker, so that the sink does not fill up while stripes each hold
    /// less than [`Core::wake_at`].
    export_at: usize,
    max_batch: usize,
    dropped: AtomicU64,
    /// Events the worker holds, not yet handed to the exporter (a batch
    /// being exported is counted by [`Stopped`] instead).
    held: AtomicUsize,
    /// Set by the worker when every buffer was empty: the next event wakes
    /// it (to start the interval), instead of only a full buffer.
    idle: AtomicBool,
    /// Set by a recorder whose grant took [`Core::reserved`] across
    /// [`Core::export_at`], or that found the sink full: the worker then
    /// exports every event it drains, even fewer than `export_at` (part of
    /// the room reserved is grants not used yet), instead of holding them
    /// until the interval.
    size_wake: AtomicBool,
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
            export_at: max_batch.min(capacity / 2).max(1),
            max_batch,
            dropped: AtomicU64::new(0),
            held: AtomicUsize::new(0),
            idle: AtomicBool::new(true),
            size_wake: AtomicBool::new(false),
            sinks_gone: AtomicBool::new(false),
            wake: Notify::new(),
            requests: Mutex::new(Requests::default()),
        }
    }

    fn requests(&self) -> MutexGuard<'_, Requests> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes room for up to `grant` events (0 when the sink is full), and
    /// tells whether that took the total across [`Core::export_at`].
    fn reserve(&self) -> (usize, bool) {
        let mut reserved = self.reserved.load(Ordering::Relaxed);
        loop {
            let take = self.capacity.saturating_sub(reserved).min(self.grant);
            if take == 0 {
                return (0, false);
            }
            match self.reserved.compare_exchange_weak(
                reserved,
                reserved + take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let crossed = reserved < self.export_at && reserved + take >= self.export_at;
                    return (take, crossed);
                }
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
        // The worker answers once the events recorded before are exported;
        // if it stops first, its `Stopped` guard answers, after counting
        // what it did not export. An error (the answer dropped unsent)
        // would also mean the worker is gone: nothing left to wait for.
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
    /// Events are exported as soon as this many wait, or half the
    /// [`capacity`](Self::capacity) if that is fewer.
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
            future: Box::pin(run(
                Stopped {
                    core,
                    exporting: 0,
                    answers: Vec::new(),
                },
                self.exporter,
                self.interval,
            )),
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

/// Marks the sink stopped when the worker ends, also when its future is
/// dropped without finishing, even before its first poll (the
/// [`BatchWorker`] dropped, the runtime shut down) or when the exporter
/// panics: the stripes refuse events from then on, the events not exported
/// are counted as dropped, and flushes and shutdowns are answered.
///
/// It is an argument of [`run`], not a local, because an async fn's
/// arguments are dropped with its future even if it was never polled.
struct Stopped {
    core: Arc<Core>,
    /// Events handed to the exporter that it has not returned from: lost if
    /// it never does (it may have delivered some; they count as dropped).
    exporting: usize,
    /// Flushes and shutdowns the worker took on, answered once the events
    /// recorded before them are exported (or counted as dropped).
    answers: Vec<oneshot::Sender<()>>,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let core = &*self.core;
        let mut lost = std::mem::take(&mut self.exporting);
        for stripe in core.stripes.iter() {
            let events = {
                let mut buffer = stripe.lock();
                buffer.closed = true;
                buffer.allowance = 0;
                std::mem::take(&mut buffer.events)
            };
            // Dropped outside the lock: up to `capacity` events.
            lost += events.len();
            drop(events);
        }
        lost += core.held.swap(0, Ordering::Relaxed);
        if lost > 0 {
            #[cfg(feature = "metrics")]
            crate::metrics::usage_dropped(crate::metrics::Dropped::Stopped, lost as u64);
            core.count_dropped(lost as u64);
        }
        // Answered after counting, so that a flush that returns sees the
        // drops in `dropped()`.
        let waiting = {
            let mut requests = core.requests();
            requests.stopped = true;
            std::mem::take(&mut requests.waiting)
        };
        let answers = std::mem::take(&mut self.answers);
        for ack in answers
            .into_iter()
            .chain(waiting.into_iter().map(|(_, ack)| ack))
        {
            let _ = ack.send(());
        }
    }
}

async fn run<E: UsageExporter>(mut stopped: Stopped, mut exporter: E, interval: Duration) {
    let core = Arc::clone(&stopped.core);
    let core = &*core;
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
        let size_wake = core.size_wake.swap(false, Ordering::Acquire);
        let requests = std::mem::take(&mut core.requests().waiting);
        let stop = core.sinks_gone.load(Ordering::Acquire)
            || requests.iter().any(|(r, _)| *r == Request::Shutdown);
        let asked = !requests.is_empty();
        stopped
            .answers
            .extend(requests.into_iter().map(|(_, ack)| ack));
        // Read before draining: a full sink is exported at once, even if
        // what it holds is less than `export_at` (grants not used yet).
        let full = core.reserved.load(Ordering::Relaxed) >= core.capacity;
        core.drain(&mut pending, &mut spare, stop);
        let due = stop
            || asked
            || full
            || size_wake
            || deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        // Enough for a batch (or half the capacity) goes at once; the rest
        // waits for the deadline unless it is due.
        while pending.len() >= core.export_at || (due && !pending.is_empty()) {
            let take = pending.len().min(core.max_batch);
            let batch: Vec<UsageEvent> = pending.drain(..take).collect();
            core.held.store(pending.len(), Ordering::Relaxed);
            core.reserved.fetch_sub(take, Ordering::Relaxed);
            stopped.exporting = take;
            exporter.export(batch).await;
            stopped.exporting = 0;
        }
        pending.shrink_to(2 * core.max_batch);
        for ack in stopped.answers.drain(..) {
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
        let mut crossed = false;
        if buffer.allowance == 0 {
            if buffer.closed {
                drop(buffer);
                drop(event);
                #[cfg(feature = "metrics")]
                crate::metrics::usage_dropped(crate::metrics::Dropped::Closed, 1);
                core.count_dropped(1);
                return;
            }
            let granted;
            (granted, crossed) = core.reserve();
            if granted == 0 {
                drop(buffer);
                drop(event);
                #[cfg(feature = "metrics")]
                crate::metrics::usage_dropped(crate::metrics::Dropped::Full, 1);
                core.count_dropped(1);
                // Full: make sure the worker exports now rather than at
                // the interval.
                core.size_wake.store(true, Ordering::Release);
                core.wake.notify_one();
                return;
            }
            buffer.allowance = granted;
        }
        buffer.allowance -= 1;
        buffer.events.push(event);
        let buffered = buffer.events.len();
        drop(buffer);
        // Wake the worker when this buffer holds its share, when the sink
        // as a whole holds about a batch, or for the first event after the
        // worker went idle; never per event.
        if crossed {
            // About a batch waits in the sink as a whole: the worker
            // exports all it holds, however the events are spread.
            core.size_wake.store(true, Ordering::Release);
            core.wake.notify_one();
        } else if buffered == core.wake_at || (buffered == 1 && core.idle.load(Ordering::SeqCst)) {
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
