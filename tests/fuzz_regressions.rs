//! Every input the fuzz targets (`fuzz/`, see `fuzz/README.md`) found to
//! break a promise, replayed through the public API, with what must hold
//! instead. One test per finding; the name says which target found it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::{Request, Response, StatusCode};
use keyward::key::{KeyHasher, KeyId};
use keyward::limit::{
    LimitError, Limiter, Limits, Policy, RatePolicy, Verdict, RATELIMIT, RATELIMIT_POLICY,
};
use keyward::{KeyRecord, Principal, RateLimitLayer};
use tower::{service_fn, Layer, Service};

/// Polls a future that never waits (the services here are in memory).
fn now_or_never<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the future waits"),
    }
}

/// A limiter whose check fails, as the fuzz target's scripted limiter did.
#[derive(Debug)]
struct Failing {
    too_costly: bool,
    remote: bool,
}

impl Failing {
    fn error(&self, policy: &Policy) -> LimitError {
        if self.too_costly {
            LimitError::CostTooHigh {
                policy: policy.name().to_owned(),
                cost: 1,
            }
        } else {
            LimitError::backend(std::io::Error::other("down"))
        }
    }
}

#[async_trait]
impl Limiter for Failing {
    async fn check(&self, _: &KeyId, policy: &Policy, _: u32) -> Result<Verdict, LimitError> {
        Err(self.error(policy))
    }

    fn check_immediate(
        &self,
        _: &KeyId,
        policy: &Policy,
        _: u32,
    ) -> Option<Result<Verdict, LimitError>> {
        (!self.remote).then(|| Err(self.error(policy)))
    }
}

/// `ratelimit_fields`: when the first policy's check fails (a backend
/// error, or a cost no policy can allow), there is no verdict to announce.
/// The layer sent `RateLimit:` with an empty value, which is not a
/// structured-field list (RFC 9651 §4.1: an empty list is not serialized).
/// The field is left out; `RateLimit-Policy` still describes the policies.
#[test]
fn ratelimit_fields_no_empty_ratelimit_field_when_the_first_check_fails() {
    let limits = Limits::new([RatePolicy::new("p0", 1, Duration::from_secs(1))
        .unwrap()
        .into()])
    .unwrap();
    let id: KeyId = "FuzzKeyId000".parse().unwrap();
    let record = KeyRecord::new(
        id,
        KeyHasher::sha256().hash("secret"),
        "owner",
        SystemTime::UNIX_EPOCH,
    )
    .with_limits(limits);
    let principal = Principal::new(Arc::new(record));
    for (too_costly, status) in [
        (false, StatusCode::SERVICE_UNAVAILABLE),
        (true, StatusCode::TOO_MANY_REQUESTS),
    ] {
        for remote in [false, true] {
            let mut service =
                RateLimitLayer::new(Failing { too_costly, remote }).layer(service_fn(
                    |_: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) },
                ));
            let request = Request::get("/")
                .extension(principal.clone())
                .body(())
                .unwrap();
            let response = now_or_never(service.call(request)).unwrap();
            assert_eq!(response.status(), status);
            assert_eq!(
                response.headers().get(&RATELIMIT_POLICY).unwrap(),
                r#""p0";q=1;w=1"#
            );
            assert_eq!(
                response.headers().get(&RATELIMIT),
                None,
                "too_costly: {too_costly}, remote: {remote}"
            );
        }
    }
}
