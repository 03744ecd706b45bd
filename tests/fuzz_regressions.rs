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
    CreditPolicy, LimitError, Limiter, Limits, Policy, RatePolicy, Verdict, RATELIMIT,
    RATELIMIT_POLICY,
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

/// A limiter that answers one verdict.
#[derive(Debug)]
struct Answers(Verdict);

#[async_trait]
impl Limiter for Answers {
    async fn check(&self, _: &KeyId, _: &Policy, _: u32) -> Result<Verdict, LimitError> {
        Ok(self.0)
    }
}

/// `ratelimit_fields`: a limiter denied with a wait of `u64::MAX` seconds
/// and some nanoseconds (input `crash-af7bbfd9…`). Rounding it up to whole
/// seconds overflowed: a panic with overflow checks, and without them a
/// wrap to `t=0` and `Retry-After: 1`, "retry now" for a wait without end.
/// The wait saturates: `t` is clamped to the 15 digits a structured-field
/// integer may have, and `Retry-After` says `u64::MAX` seconds.
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
    assert_eq!(
        denied.headers().get(&RATELIMIT).unwrap(),
        r#""bb";r=999999999999999;t=999999999999999"#
    );
    assert_eq!(
        denied.headers().get(RETRY_AFTER).unwrap(),
        u64::MAX.to_string().as_str()
    );
    let allowed = check(Answers(Verdict::allowed(1, wait)), &principal);
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(
        allowed.headers().get(&RATELIMIT).unwrap(),
        r#""bb";r=1;t=999999999999999"#
    );
}
