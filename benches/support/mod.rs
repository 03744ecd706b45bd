//! What the benchmarks share: polling a future that is ready at once, a
//! trivial inner service and an exporter that discards.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use keyward::usage::{UsageEvent, UsageExporter};

/// Polls a future that is ready at once (nothing here waits), with a no-op
/// waker: the numbers are the layers' cost, not an executor's.
pub(crate) fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

/// The inner service: an empty answer.
#[allow(dead_code)] // not every benchmark uses it
pub(crate) async fn inner(_: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(String::new()))
}

/// Discards batches, as fast as they come.
#[allow(dead_code)] // not every benchmark uses it
pub(crate) struct Discard;

#[keyward::async_trait]
impl UsageExporter for Discard {
    async fn export(&mut self, batch: Vec<UsageEvent>) {
        black_box(batch);
    }
}
