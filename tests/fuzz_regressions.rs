//! Every input the fuzz targets (`fuzz/`, see `fuzz/README.md`) found to
//! break a promise, replayed through the public API, with what must hold
//! instead. One test per finding; the name says which target found it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::header::RETRY_AFTER;
use http::{Request, Response, StatusCode};
use keyward::key::{KeyHasher, KeyId};
use keyward::limit::{
    CreditPolicy, Decision, LimitError, Limiter, Limits, RatePolicy, Verdict, RATELIMIT,
    RATELIMIT_POLICY,
};
use keyward::reject::{RejectReason, Responder};
use keyward::{KeyRecord, Principal, RateLimitLayer, Rejection};
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

fn principal(limits: Limits) -> Principal {
    let id: KeyId = "FuzzKeyId000".parse().unwrap();
    let record = KeyRecord::new(
        id,
        KeyHasher::sha256().hash("secret"),
        "owner",
        SystemTime::UNIX_EPOCH,
    )
    .with_limits(limits);
    Principal::new(Arc::new(record))
}

fn check<L: Limiter>(
    limiter: L,
    principal: &Principal,
) -> Response<keyward::body::ResponseBody<String>> {
    let mut service = RateLimitLayer::new(limiter).layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let request = Request::get("/")
        .extension(principal.clone())
        .body(())
        .unwrap();
    now_or_never(service.call(request)).unwrap()
}

/// A limiter whose check fails, as the fuzz target's scripted limiter did.
#[derive(Debug)]
struct Failing {
    too_costly: bool,
    remote: bool,
}

impl Failing {
    fn error(&self, limits: &Limits) -> LimitError {
        if self.too_costly {
            LimitError::CostTooHigh {
                policy: limits.policies()[0].name().to_owned(),
                cost: 1,
            }
        } else {
            LimitError::backend(std::io::Error::other("down"))
        }
    }
}

#[async_trait]
impl Limiter for Failing {
    async fn check(&self, _: &KeyId, limits: &Limits, _: u32) -> Result<Decision, LimitError> {
        Err(self.error(limits))
    }

    fn check_immediate(
        &self,
        _: &KeyId,
        limits: &Limits,
        _: u32,
    ) -> Option<Result<Decision, LimitError>> {
        (!self.remote).then(|| Err(self.error(limits)))
    }
}

/// `ratelimit_fields`: when the first policy's check failed (a backend
/// error, or a cost no policy can allow), there was no verdict to
/// announce, and the layer sent `RateLimit:` with an empty value, which is
/// not a structured-field list (RFC 9651 §4.1: an empty list is not
/// serialized). Found when the layer asked the limiter policy by policy;
/// the promise stays: no `RateLimit` field without verdicts.
#[test]
fn ratelimit_fields_no_empty_ratelimit_field_when_the_first_check_fails() {
    let principal = principal(
        Limits::new([RatePolicy::new("p0", 1, Duration::from_secs(1))
            .unwrap()
            .into()])
        .unwrap(),
    );
    for (too_costly, status) in [
        (false, StatusCode::SERVICE_UNAVAILABLE),
        (true, StatusCode::TOO_MANY_REQUESTS),
    ] {
        for remote in [false, true] {
            let response = check(Failing { too_costly, remote }, &principal);
            assert_eq!(response.status(), status);
            if let Some(policy) = response.headers().get(&RATELIMIT_POLICY) {
                assert_eq!(policy, r#""p0";q=1;w=1"#);
            }
            assert_eq!(
                response.headers().get(&RATELIMIT),
                None,
                "too_costly: {too_costly}, remote: {remote}"
            );
        }
    }
}

/// A limiter that answers one verdict.
#[derive(Debug)]
struct Answers(Verdict);

#[async_trait]
impl Limiter for Answers {
    async fn check(&self, _: &KeyId, _: &Limits, _: u32) -> Result<Decision, LimitError> {
        Ok([self.0].into_iter().collect())
    }
}

/// `ratelimit_fields`: a limiter denied with a wait of `u64::MAX` seconds
/// and some nanoseconds (input `crash-af7bbfd9…`). Rounding it up to whole
/// seconds overflowed: a panic with overflow checks, and without them a
/// wrap to `t=0` and `Retry-After: 1`, "retry now" for a wait without end.
/// `Verdict` now keeps waits in nanoseconds (at most 584 years), and the
/// rounding saturates for every other wait, such as a `Rejection`'s.
#[test]
fn ratelimit_fields_a_wait_near_duration_max_does_not_overflow() {
    let principal = principal(
        Limits::new([CreditPolicy::new("bb", 1_098_974_756_863).unwrap().into()]).unwrap(),
    );
    let wait = Duration::new(u64::MAX, 4_294_967_295 % 1_000_000_000);
    let denied = check(
        Answers(Verdict::denied(18_377_501_229_444_759_541, wait)),
        &principal,
    );
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    // `r` clamped to 15 digits; the wait to `u64::MAX` nanoseconds.
    assert_eq!(
        denied.headers().get(&RATELIMIT).unwrap(),
        r#""bb";r=999999999999999;t=18446744074"#
    );
    assert_eq!(denied.headers().get(RETRY_AFTER).unwrap(), "18446744074");
    let allowed = check(Answers(Verdict::allowed(1, wait)), &principal);
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(
        allowed.headers().get(&RATELIMIT).unwrap(),
        r#""bb";r=1;t=18446744074"#
    );

    // The same wait on a rejection, over HTTP and gRPC.
    let rejection = Rejection::new(RejectReason::RateLimited).with_retry_after(wait);
    for content_type in ["application/json", "application/grpc"] {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
        let response = Responder::default().refuse(&headers, rejection.clone());
        assert_eq!(
            response.headers().get(RETRY_AFTER).unwrap(),
            u64::MAX.to_string().as_str(),
            "{content_type}"
        );
    }
}
