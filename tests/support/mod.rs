//! What the integration tests share.
#![allow(dead_code)] // each test binary uses the part it needs

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

/// Log lines at every level, captured while a [`CaptureGuard`] lives:
/// those of the thread that started the capture
/// ([`start`](Self::start)), or of every thread
/// ([`everywhere`](Self::everywhere)).
///
/// One global subscriber, installed once, routes each line to the
/// captures then active. (A subscriber of each test's own, with
/// `set_default`, was flaky: tracing caches each call site's interest,
/// and a call site first hit by a parallel test while no subscriber
/// lived was cached as "never", silently losing the capturing test's
/// lines; a rebuild racing that registration could be overwritten by it.
/// A global subscriber is always alive, so no interest computed after it
/// is installed is "never"; the rebuild at each start repairs what was
/// computed before.)
#[derive(Clone, Default)]
pub(crate) struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    /// The captures of this thread's lines, innermost last.
    static THIS_THREAD: RefCell<Vec<CapturedLogs>> = const { RefCell::new(Vec::new()) };
}

/// The captures of every thread's lines.
static EVERY_THREAD: Mutex<Vec<CapturedLogs>> = Mutex::new(Vec::new());
/// `EVERY_THREAD.len()`, read without the lock on every event.
static EVERYWHERE: AtomicUsize = AtomicUsize::new(0);

/// Stops its capture when dropped.
pub(crate) struct CaptureGuard {
    captured: CapturedLogs,
    everywhere: bool,
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        let same = |other: &CapturedLogs| Arc::ptr_eq(&other.0, &self.captured.0);
        if self.everywhere {
            let mut all = EVERY_THREAD.lock().unwrap_or_else(|e| e.into_inner());
            all.retain(|other| !same(other));
            EVERYWHERE.store(all.len(), Ordering::SeqCst);
        } else {
            let _ = THIS_THREAD.try_with(|mine| mine.borrow_mut().retain(|other| !same(other)));
        }
    }
}

fn capturing() -> bool {
    EVERYWHERE.load(Ordering::Relaxed) > 0
        || THIS_THREAD
            .try_with(|mine| !mine.borrow().is_empty())
            .unwrap_or(false)
}

/// Hands each formatted line to the captures active for this thread.
struct Router;

impl Write for Router {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = THIS_THREAD.try_with(|mine| {
            for captured in mine.borrow().iter() {
                captured.append(buf);
            }
        });
        if EVERYWHERE.load(Ordering::SeqCst) > 0 {
            for captured in EVERY_THREAD
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                captured.append(buf);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the routing subscriber (once per process) and recomputes
/// every call site's interest against it.
fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(|| Router)
            .with_ansi(false)
            // Formats only while something captures: other tests pay a
            // thread-local read per event. A dynamic filter: `filter_fn`
            // would be asked once per call site and its answer cached,
            // "never" for a call site first hit by a test not capturing.
            .with_filter(tracing_subscriber::filter::dynamic_filter_fn(|_, _| {
                capturing()
            }));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::set_global_default(subscriber)
            .expect("tests install no other global subscriber");
    });
    tracing::callsite::rebuild_interest_cache();
}

impl CapturedLogs {
    /// Captures this thread's lines (a `current_thread` runtime's tasks
    /// included); drop the guard to stop.
    pub(crate) fn start() -> (Self, CaptureGuard) {
        let captured = Self::default();
        THIS_THREAD.with(|mine| mine.borrow_mut().push(captured.clone()));
        install();
        let guard = CaptureGuard {
            captured: captured.clone(),
            everywhere: false,
        };
        (captured, guard)
    }

    /// Captures the lines of every thread (a server's worker threads,
    /// parallel tests'); drop the guard to stop.
    pub(crate) fn everywhere() -> (Self, CaptureGuard) {
        let captured = Self::default();
        {
            let mut all = EVERY_THREAD.lock().unwrap_or_else(|e| e.into_inner());
            all.push(captured.clone());
            EVERYWHERE.store(all.len(), Ordering::SeqCst);
        }
        install();
        let guard = CaptureGuard {
            captured: captured.clone(),
            everywhere: true,
        };
        (captured, guard)
    }

    /// What was logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    fn append(&self, buf: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
    }
}

pub(crate) mod burst;
pub(crate) mod children;
pub(crate) mod examples;
pub(crate) mod limit_model;
pub(crate) mod proxy;
pub(crate) mod services;
