use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{UsageEvent, UsageSink};

/// Where a [`BatchingSink`] delivers its batches: a file, a queue, a
/// database, a billing system. Implement it for your destination.
///
/// `export` runs on the sink's background task, one batch at a time, never
/// on the request path: it may take its time. If it falls behind, the
/// sink's queue fills up and new events are dropped (and counted), so a
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
    /// Delivers one batch, in the order the events were recorded.
    async fn export(&mut self, batch: Vec<UsageEvent>);
}

/// Hands events to a background task over a bounded queue; the task hands
/// them to a [`UsageExporter`] in batches (feature `tokio`).
///
/// [`record`](UsageSink::record) never waits: when the queue is full the
/// event is dropped and [`dropped`](BatchingSink::dropped) goes up.
/// [`flush`](UsageSink::flush) waits until everything recorded before it
/// has been exported; [`shutdown`](BatchingSink::shutdown) does the same
/// and stops the task. A batch is exported when it holds
/// [`max_batch`](BatchingSinkBuilder::max_batch) events, or
/// [`interval`](BatchingSinkBuilder::interval) after its first event.
///
/// Clones share the same queue.
#[derive(Clone)]
pub struct BatchingSink {
    shared: Arc<Shared>,
}

struct Shared {
    tx: mpsc::Sender<Message>,
    dropped: AtomicU64,
    signal: Arc<Signal>,
    max_batch: usize,
}

/// How the request path and the worker talk without a wake-up per event:
/// while the worker collects a batch it does not wait on the queue (a
/// waiting receiver is woken, often with a system call, by every send); it
/// sleeps until the batch's deadline, or until a sender sees a full batch
/// waiting and notifies it.
struct Signal {
    wake: Notify,
    /// Events in the worker's current batch (written by the worker only).
    held: AtomicUsize,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last sink is gone: close the queue, then tell the worker, so
        // that it exports what is left now rather than at its deadline.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        self.signal.wake.notify_one();
    }
}

enum Message {
    Event(UsageEvent),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
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
    /// A sink exporting to `exporter` with the default settings (a queue of
    /// 8192 events, batches of up to 512, exported within a second), its
    /// task spawned on the current tokio runtime.
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

    /// How many events were dropped because the queue was full (or the
    /// sink shut down).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// How many messages wait in the queue now.
    pub fn queued(&self) -> usize {
        self.shared.tx.max_capacity() - self.shared.tx.capacity()
    }

    /// Exports everything queued, then stops the background task; events
    /// recorded afterwards are dropped. Call it after the server has
    /// stopped taking requests.
    pub async fn shutdown(&self) {
        let (ack, done) = oneshot::channel();
        if self.shared.tx.send(Message::Shutdown(ack)).await.is_ok() {
            self.shared.signal.wake.notify_one();
            let _ = done.await;
        }
    }
}

impl<E: UsageExporter> BatchingSinkBuilder<E> {
    /// How many events the queue holds (default 8192, at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// The largest batch handed to the exporter (default 512, at least 1).
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// How long a batch may wait for more events after its first one
    /// (default one second).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The sink, and its background task for you to spawn.
    pub fn build(self) -> (BatchingSink, BatchWorker) {
        let (tx, rx) = mpsc::channel(self.capacity);
        let signal = Arc::new(Signal {
            wake: Notify::new(),
            held: AtomicUsize::new(0),
        });
        let sink = BatchingSink {
            shared: Arc::new(Shared {
                tx,
                dropped: AtomicU64::new(0),
                signal: Arc::clone(&signal),
                max_batch: self.max_batch,
            }),
        };
        let worker = BatchWorker {
            future: Box::pin(run(
                rx,
                self.exporter,
                self.max_batch,
                self.interval,
                signal,
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

/// The worker's batch and what to do with it.
struct Batcher<E> {
    exporter: E,
    batch: Vec<UsageEvent>,
    max_batch: usize,
    interval: Duration,
    deadline: tokio::time::Instant,
}

/// What the worker does after a message.
enum Next {
    Go,
    Stop,
}

impl<E: UsageExporter> Batcher<E> {
    async fn export(&mut self) {
        if !self.batch.is_empty() {
            self.exporter.export(std::mem::take(&mut self.batch)).await;
        }
    }

    async fn push(&mut self, event: UsageEvent) {
        if self.batch.is_empty() {
            self.deadline = tokio::time::Instant::now() + self.interval;
            self.batch.reserve(self.max_batch.min(1024));
        }
        self.batch.push(event);
        if self.batch.len() >= self.max_batch {
            self.export().await;
        }
    }

    async fn handle(&mut self, message: Message, rx: &mut mpsc::Receiver<Message>) -> Next {
        match message {
            Message::Event(event) => self.push(event).await,
            Message::Flush(ack) => {
                self.export().await;
                let _ = ack.send(());
            }
            Message::Shutdown(ack) => {
                rx.close();
                let mut acks = vec![ack];
                while let Some(message) = rx.recv().await {
                    match message {
                        Message::Event(event) => self.push(event).await,
                        Message::Flush(ack) | Message::Shutdown(ack) => acks.push(ack),
                    }
                }
                self.export().await;
                for ack in acks {
                    let _ = ack.send(());
                }
                return Next::Stop;
            }
        }
        Next::Go
    }
}

async fn run<E: UsageExporter>(
    mut rx: mpsc::Receiver<Message>,
    exporter: E,
    max_batch: usize,
    interval: Duration,
    signal: Arc<Signal>,
) {
    let mut batcher = Batcher {
        exporter,
        batch: Vec::new(),
        max_batch,
        interval,
        deadline: tokio::time::Instant::now(),
    };
    loop {
        // Idle: wait on the queue for the first message.
        let Some(message) = rx.recv().await else {
            // Every sink is gone.
            batcher.export().await;
            return;
        };
        if let Next::Stop = batcher.handle(message, &mut rx).await {
            return;
        }
        // Collecting: take what is queued, then sleep until the deadline
        // or a sender's notice, never woken by each event.
        loop {
            loop {
                match rx.try_recv() {
                    Ok(message) => {
                        if let Next::Stop = batcher.handle(message, &mut rx).await {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        batcher.export().await;
                        return;
                    }
                }
            }
            signal.held.store(batcher.batch.len(), Ordering::Relaxed);
            if batcher.batch.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= batcher.deadline {
                batcher.export().await;
                signal.held.store(0, Ordering::Relaxed);
                break;
            }
            let _ = tokio::time::timeout_at(batcher.deadline, signal.wake.notified()).await;
        }
    }
}

#[async_trait::async_trait]
impl UsageSink for BatchingSink {
    fn record(&self, event: UsageEvent) {
        let shared = &*self.shared;
        if shared.tx.try_send(Message::Event(event)).is_ok() {
            // A full batch waits: wake the worker (it is not woken by sends
            // while it collects).
            let queued = shared.tx.max_capacity() - shared.tx.capacity();
            if queued + shared.signal.held.load(Ordering::Relaxed) >= shared.max_batch {
                shared.signal.wake.notify_one();
            }
        } else {
            let before = self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            // Logged at 1, 2, 3, 5, 9, 17... drops: enough to notice, never a flood.
            if before == 0 || before.is_power_of_two() {
                tracing::warn!(
                    target: "keyward::usage",
                    dropped = before + 1,
                    "usage queue full or closed; usage events dropped"
                );
            }
        }
    }

    async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.shared.tx.send(Message::Flush(ack)).await.is_ok() {
            self.shared.signal.wake.notify_one();
            let _ = done.await;
        }
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
            .field("capacity", &self.shared.tx.max_capacity())
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
