//! Per-thread striping: a few copies of a hot shared thing, each thread
//! using one, so that threads do not write the same cache line on every
//! request.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// How many stripes to make: twice the next power of two of the available
/// parallelism (so that threads rarely share one), at most 64.
pub(crate) fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        (threads.next_power_of_two() * 2).min(64)
    })
}

/// This thread's stripe index (mask it with `count() - 1`): threads get
/// consecutive indexes, round robin in the order they first ask, which
/// spreads them evenly and is cheaper than hashing the thread id.
pub(crate) fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        let mut i = index.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
            index.set(i);
        }
        i
    })
}
