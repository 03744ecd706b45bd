//! Fail closed around the user's code: a store, limiter or sink that
//! panics becomes an error of the request (or a lost usage event), never a
//! request let through, an aborted connection or a process abort (a panic
//! while a future is dropped during unwinding aborts).

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

/// What panicked, as the source of the error the request is refused with.
/// The panic's own message is not kept: it is the panicking code's, and
/// was already printed by the panic hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {0} panicked")]
pub(crate) struct Panicked(pub(crate) &'static str);

/// `f()`, or [`Panicked`] if it panicked. (The code called is the user's
/// backend, whose state the request does not use again after a panic:
/// asserting unwind safety only lets later requests find out for
/// themselves.)
#[inline]
pub(crate) fn call<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        drop(payload);
        Panicked(what)
    })
}

pin_project! {
    /// A future that answers [`Panicked`] if polling it panics.
    pub(crate) struct CatchUnwind<F> {
        what: &'static str,
        #[pin]
        future: F,
    }
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(what: &'static str, future: F) -> Self {
        Self { what, future }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let future = this.future;
        match call(this.what, || future.poll(cx)) {
            Ok(poll) => poll.map(Ok),
            Err(panicked) => Poll::Ready(Err(panicked)),
        }
    }
}

/// `future`, cut after `limit` with `on_timeout` when it runs on a tokio
/// runtime (without one there is no timer: it is awaited as it is).
#[cfg(feature = "tokio")]
pub(crate) async fn within<T>(
    limit: Option<std::time::Duration>,
    future: impl Future<Output = T>,
    on_timeout: impl FnOnce(std::time::Duration) -> T,
) -> T {
    match limit {
        Some(limit) if tokio::runtime::Handle::try_current().is_ok() => {
            match tokio::time::timeout(limit, future).await {
                Ok(output) => output,
                Err(_) => on_timeout(limit),
            }
        }
        _ => future.await,
    }
}

/// Without the `tokio` feature there is no timer: `future` as it is.
#[cfg(not(feature = "tokio"))]
pub(crate) async fn within<T>(
    limit: Option<std::time::Duration>,
    future: impl Future<Output = T>,
    on_timeout: impl FnOnce(std::time::Duration) -> T,
) -> T {
    let _ = (limit, on_timeout);
    future.await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_an_error_and_a_value_passes() {
        assert_eq!(call("store", || 7), Ok(7));
        let caught = call("store", || -> u8 { panic!("boom") });
        assert_eq!(caught, Err(Panicked("store")));
        assert_eq!(caught.unwrap_err().to_string(), "the store panicked");
    }
}
