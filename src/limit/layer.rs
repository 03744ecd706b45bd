//! [`RateLimitLayer`]: checks the authenticated key's limits and answers in
//! the standard `RateLimit` fields.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::policy::MAX_FIELD_INTEGER;
use super::{Decision, LimitError, Limiter, Limits, Policy};
use crate::auth::Principal;
use crate::body::ResponseBody;
use crate::clock::whole_seconds;
use crate::key::KeyId;
use crate::reject::{RejectReason, Rejection, Responder};

/// The `RateLimit-Policy` field (draft-ietf-httpapi-ratelimit-headers-10).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` field (draft-ietf-httpapi-ratelimit-headers-10).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// What one request costs, set as a request extension by an outer layer or
/// middleware; overrides the layer's [`cost`](RateLimitLayer::cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost(pub u32);

/// Limits each authenticated key by the policies on its record; see the
/// [module docs](super). Stack it inside [`AuthLayer`](crate::AuthLayer).
///
/// The service it wraps must be `Clone`: a limiter that cannot answer at
/// once (a remote backend) is awaited before the inner service is called,
/// so the ready inner service moves into the response future and
/// [`RateLimit`] keeps a fresh clone (tower's clone-and-swap). Put a
/// service that is not `Clone` behind `tower::buffer::Buffer`, as for
/// [`AuthLayer`](crate::auth#the-inner-service-must-be-clone).
#[derive(Debug, Clone)]
#[must_use]
pub struct RateLimitLayer {
    config: Arc<LimitConfig>,
}

#[derive(Debug, Clone)]
struct LimitConfig {
    limiter: Arc<dyn Limiter>,
    responder: Responder,
    cost: u32,
    fail_open: bool,
    /// Cuts a check that takes longer (with the `tokio` feature).
    timeout: Option<Duration>,
}

/// How long a request waits for the limiter by default (with the `tokio`
/// feature): see [`RateLimitLayer::timeout`].
pub const DEFAULT_LIMITER_TIMEOUT: Duration = Duration::from_secs(5);

/// A limiter check that did not answer in time.
#[derive(Debug, thiserror::Error)]
#[error("the limiter did not answer within {0:?}")]
struct TimedOut(Duration);

impl RateLimitLayer {
    /// Checks keys against `limiter`; every request costs 1.
    pub fn new(limiter: impl Limiter) -> Self {
        Self {
            config: Arc::new(LimitConfig {
                limiter: super::limiter::shared(limiter),
                responder: Responder::default(),
                cost: 1,
                fail_open: false,
                timeout: cfg!(feature = "tokio").then_some(DEFAULT_LIMITER_TIMEOUT),
            }),
        }
    }

    /// What each request costs (default 1), unless a [`Cost`] extension
    /// says otherwise. Give a route its own cost by stacking a layer with
    /// another cost on that route only (and not on the whole router too).
    pub fn cost(mut self, cost: u32) -> Self {
        Arc::make_mut(&mut self.config).cost = cost;
        self
    }

    /// Answers refusals with `responder` (default: problem details).
    pub fn responder(mut self, responder: Responder) -> Self {
        Arc::make_mut(&mut self.config).responder = responder;
        self
    }

    /// Refuses a request whose limit check takes longer than `timeout`
    /// (`503`, reason
    /// [`LimiterUnavailable`](RejectReason::LimiterUnavailable); 5 s
    /// unless set, `None` to wait as long as the limiter). The timer is
    /// tokio's: a check awaited outside a tokio runtime is not cut. A
    /// limiter that answers at once
    /// ([`check_immediate`](Limiter::check_immediate)) is never timed.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        Arc::make_mut(&mut self.config).timeout = timeout;
        self
    }

    /// **Insecure**: lets requests through when the limiter backend fails,
    /// instead of answering `503`. Off by default; turning it on means an
    /// outage of the backend removes every limit.
    pub fn insecure_fail_open(mut self, fail_open: bool) -> Self {
        Arc::make_mut(&mut self.config).fail_open = fail_open;
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service made by [`RateLimitLayer`].
///
/// A `Service` when `S` is `Clone` (see [`RateLimitLayer`]).
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    config: Arc<LimitConfig>,
}

impl<S> RateLimit<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Inlined into the outer layer's `call`, so that this future is built
    // where the outer one keeps it instead of being moved there.
    #[inline]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        let Some(principal) = request.extensions().get::<Principal>() else {
            // Stacked outside AuthLayer, or on a route without it: refuse.
            let rejection = Rejection::new(RejectReason::MissingKey);
            return ResponseFuture::rejected(config.responder.refuse(request.headers(), rejection));
        };
        let limits = &principal.record().limits;
        if limits.is_empty() {
            return ResponseFuture::inner(self.inner.call(request), None);
        }
        let id = principal.key_id();
        let cost = request
            .extensions()
            .get::<Cost>()
            .map_or(config.cost, |cost| cost.0);
        // Matched in place: a decision is worth no copy. A limiter that
        // panics fails this request (503), never the service.
        let immediate = crate::unwind::call("limiter", || {
            config.limiter.check_principal_immediate(principal, cost)
        })
        .unwrap_or_else(|panicked| Some(Err(LimitError::backend(panicked))));
        let Some(result) = &immediate else {
            // The limiter must wait (a remote backend): decide in a
            // future. The ready service goes with it.
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            let check = remote_check(Arc::clone(config), limits.clone(), id, cost);
            let waiting = Waiting {
                config: Arc::clone(config),
                id,
                service: inner,
                request,
            };
            return ResponseFuture::checking(check, waiting);
        };
        match answer(config, limits, result, request.headers(), id) {
            Answer::Pass(headers) => ResponseFuture::inner(self.inner.call(request), headers),
            Answer::Refuse(response) => ResponseFuture::rejected(response),
        }
    }
}

type BoxCheck = Pin<Box<dyn Future<Output = (Limits, Result<Decision, LimitError>)> + Send>>;

fn remote_check(config: Arc<LimitConfig>, limits: Limits, id: KeyId, cost: u32) -> BoxCheck {
    Box::pin(async move {
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let check =
            crate::unwind::CatchUnwind::new("limiter", config.limiter.check(&id, &limits, cost));
        let result = crate::unwind::within(config.timeout, check, |limit| {
            Ok(Err(LimitError::backend(TimedOut(limit))))
        })
        .await
        .unwrap_or_else(|panicked| Err(LimitError::backend(panicked)));
        #[cfg(feature = "metrics")]
        crate::metrics::limiter_check(started.elapsed());
        (limits, result)
    })
}

/// The `RateLimit` fields of one response.
#[derive(Debug, Clone)]
struct LimitHeaders {
    policy: HeaderValue,
    state: Option<HeaderValue>,
}

impl LimitHeaders {
    fn apply<B>(self, response: &mut Response<B>) {
        let headers = response.headers_mut();
        headers.insert(RATELIMIT_POLICY.clone(), self.policy);
        if let Some(state) = self.state {
            headers.insert(RATELIMIT.clone(), state);
        }
    }
}

/// Room on the stack for the `RateLimit` field of most keys (a member is
/// the name and two numbers: `"burst";r=99;t=1`).
const FIELD_INLINE: usize = 112;

/// The `RateLimit` field being written: on the stack, and on the heap only
/// past [`FIELD_INLINE`] bytes (many policies, long names).
struct FieldBuf {
    inline: [u8; FIELD_INLINE],
    len: usize,
    spilled: Vec<u8>,
}

impl FieldBuf {
    fn new() -> Self {
        Self {
            inline: [0; FIELD_INLINE],
            len: 0,
            spilled: Vec::new(),
        }
    }

    #[inline]
    fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if end <= FIELD_INLINE && self.spilled.is_empty() {
            self.inline[self.len..end].copy_from_slice(bytes);
            self.len = end;
        } else {
            self.spill(bytes);
        }
    }

    #[cold]
    fn spill(&mut self, bytes: &[u8]) {
        if self.spilled.is_empty() {
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.extend_from_slice(bytes);
    }

    /// Appends `n` in decimal, two digits per division.
    fn push_decimal(&mut self, mut n: u64) {
        const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
            2021222324252627282930313233343536373839\
            4041424344454647484950515253545556575859\
            6061626364656667686970717273747576777879\
            8081828384858687888990919293949596979899";
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        while n >= 100 {
            let pair = (n % 100) as usize * 2;
            n /= 100;
            start -= 2;
            digits[start..start + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        }
        if n >= 10 {
            let pair = n as usize * 2;
            start -= 2;
            digits[start..start + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        } else {
            start -= 1;
            digits[start] = b'0' + n as u8;
        }
        self.push(&digits[start..]);
    }

    fn as_bytes(&self) -> &[u8] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0 && self.spilled.is_empty()
    }
}

/// A limiter answered something other than one verdict per policy.
#[derive(Debug, thiserror::Error)]
#[error("the limiter answered {answered} verdicts for {policies} policies")]
struct WrongVerdicts {
    answered: usize,
    policies: usize,
}

/// The reason a refusal gives: the kind of the refusing policy with the
/// longest wait (a balance that never refills is the longest).
fn refusal_reason(policies: &[Policy], decision: &Decision) -> RejectReason {
    let mut longest: Option<(Duration, &Policy)> = None;
    for (policy, verdict) in policies.iter().zip(decision.verdicts()) {
        if !verdict.is_allowed() && longest.is_none_or(|(wait, _)| verdict.reset() > wait) {
            longest = Some((verdict.reset(), policy));
        }
    }
    match longest {
        Some((_, Policy::Credits(_))) => RejectReason::QuotaExhausted,
        _ => RejectReason::RateLimited,
    }
}

/// Writes the `RateLimit` field of a decision: one member per policy.
fn ratelimit_field(policies: &[Policy], decision: &Decision) -> Option<HeaderValue> {
    let mut field = FieldBuf::new();
    for (policy, verdict) in policies.iter().zip(decision.verdicts()) {
        // Pushed by hand: `write!` costs more than the rest of the check.
        if !field.is_empty() {
            field.push(b", ");
        }
        field.push(b"\"");
        field.push(policy.name().as_bytes());
        field.push(b"\";r=");
        // Clamped: a structured-field integer has at most 15 digits, and a
        // `Limiter` may answer anything.
        field.push_decimal(verdict.remaining().min(MAX_FIELD_INTEGER));
        // A balance that never refills has no time to announce.
        if verdict.reset() != Duration::MAX {
            field.push(b";t=");
            field.push_decimal(whole_seconds(verdict.reset()).min(MAX_FIELD_INTEGER));
        }
    }
    // Names, digits and punctuation: always a valid value.
    HeaderValue::from_bytes(field.as_bytes()).ok()
}

/// The headers for an allowed request, or the refusal.
fn answer(
    config: &LimitConfig,
    limits: &Limits,
    // By reference: a decision is a few hundred bytes, not worth a copy.
    result: &Result<Decision, LimitError>,
    request_headers: &http::HeaderMap,
    id: KeyId,
) -> Answer {
    let policies = limits.policies();
    let decision = match result {
        Ok(decision) if decision.len() == policies.len() => decision,
        Ok(decision) => {
            let error = LimitError::backend(WrongVerdicts {
                answered: decision.len(),
                policies: policies.len(),
            });
            return failed(config, &error, request_headers, id);
        }
        Err(LimitError::CostTooHigh { policy: name, cost }) => {
            return too_high(config, limits, name, *cost, request_headers, id)
        }
        Err(error) => return failed(config, error, request_headers, id),
    };
    #[cfg(feature = "metrics")]
    for (keys, verdict) in limits.metric_keys().iter().zip(decision.verdicts()) {
        crate::metrics::limit_decision(keys, verdict.is_allowed());
    }
    let headers = limits.policy_header().map(|policy| LimitHeaders {
        // A reference count: the value was rendered once, on `Limits`.
        policy: policy.clone(),
        state: ratelimit_field(policies, decision),
    });
    if decision.is_allowed() {
        return Answer::Pass(headers);
    }
    let reason = refusal_reason(policies, decision);
    let mut rejection = Rejection::new(reason).with_key_id(id);
    for (policy, verdict) in policies.iter().zip(decision.verdicts()) {
        if !verdict.is_allowed() {
            tracing::info!(
                target: "keyward::limit", key_id = %id, %reason, policy = %policy.name(),
                "request refused: limit reached"
            );
            rejection = rejection.with_violated_policy(Arc::clone(policy.shared_name()));
        }
    }
    if let Some(wait) = decision.retry_after() {
        rejection = rejection.with_retry_after(wait);
    }
    let mut response = config.responder.refuse(request_headers, rejection);
    if let Some(headers) = headers {
        headers.apply(&mut response);
    }
    Answer::Refuse(response)
}

/// The limiter failed: `503`, unless the layer fails open.
#[cold]
fn failed(
    config: &LimitConfig,
    error: &LimitError,
    request_headers: &http::HeaderMap,
    id: KeyId,
) -> Answer {
    tracing::error!(
        target: "keyward::limit", key_id = %id,
        error = error as &dyn std::error::Error,
        fail_open = config.fail_open,
        "limiter failed"
    );
    #[cfg(feature = "metrics")]
    crate::metrics::limiter_error();
    if config.fail_open {
        return Answer::Pass(None);
    }
    let rejection = Rejection::new(RejectReason::LimiterUnavailable).with_key_id(id);
    Answer::Refuse(config.responder.refuse(request_headers, rejection))
}

/// A cost that a policy can never allow at once: `429` without a time to
/// retry, naming the policy.
#[cold]
fn too_high(
    config: &LimitConfig,
    limits: &Limits,
    name: &str,
    cost: u32,
    request_headers: &http::HeaderMap,
    id: KeyId,
) -> Answer {
    tracing::warn!(
        target: "keyward::limit", key_id = %id, policy = %name, cost,
        "request costs more than the policy can ever allow"
    );
    let position = limits
        .policies()
        .iter()
        .position(|policy| policy.name() == name);
    #[cfg(feature = "metrics")]
    if let Some(keys) = position.and_then(|i| limits.metric_keys().get(i)) {
        crate::metrics::limit_decision(keys, false);
    }
    let policy = position.map(|i| &limits.policies()[i]);
    let reason = match policy {
        Some(Policy::Credits(_)) => RejectReason::QuotaExhausted,
        _ => RejectReason::RateLimited,
    };
    let name = policy.map_or_else(
        || Arc::from(name),
        |policy| Arc::clone(policy.shared_name()),
    );
    let rejection = Rejection::new(reason)
        .with_key_id(id)
        .with_violated_policy(name);
    let mut response = config.responder.refuse(request_headers, rejection);
    if let Some(policy) = limits.policy_header() {
        response
            .headers_mut()
            .insert(RATELIMIT_POLICY.clone(), policy.clone());
    }
    Answer::Refuse(response)
}

/// What a decision came to: pass with these headers, or this refusal.
enum Answer {
    Pass(Option<LimitHeaders>),
    Refuse(Response<Bytes>),
}

pin_project! {
    /// The response future of [`RateLimit`].
    pub struct ResponseFuture<F, S, ReqBody> {
        #[pin]
        state: State<F, S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, ReqBody> {
        // Allowed: waiting for the inner service.
        Inner { #[pin] future: F, headers: Option<LimitHeaders> },
        // Waiting for a limiter that does not answer at once.
        // (boxed: the rare case must not make every future larger)
        Checking { check: BoxCheck, waiting: Option<Box<Waiting<S, ReqBody>>> },
        // Refused.
        Rejected { response: Option<Response<Bytes>> },
    }
}

struct Waiting<S, ReqBody> {
    config: Arc<LimitConfig>,
    id: KeyId,
    service: S,
    request: Request<ReqBody>,
}

impl<F, S, ReqBody> ResponseFuture<F, S, ReqBody> {
    fn inner(future: F, headers: Option<LimitHeaders>) -> Self {
        Self {
            state: State::Inner { future, headers },
        }
    }

    fn rejected(response: Response<Bytes>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }

    fn checking(check: BoxCheck, waiting: Waiting<S, ReqBody>) -> Self {
        Self {
            state: State::Checking {
                check,
                waiting: Some(Box::new(waiting)),
            },
        }
    }
}

impl<F, S, ReqBody, ResBody, E> Future for ResponseFuture<F, S, ReqBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = E, Future = F>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Inner { future, headers } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(headers) = headers.take() {
                        headers.apply(&mut response);
                    }
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::rejection)));
                }
                StateProj::Checking { check, waiting } => {
                    let (limits, result) = ready!(check.as_mut().poll(cx));
                    let Waiting {
                        config,
                        id,
                        mut service,
                        request,
                    } = *waiting
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let next = match answer(&config, &limits, &result, request.headers(), id) {
                        Answer::Pass(headers) => State::Inner {
                            future: service.call(request),
                            headers,
                        },
                        Answer::Refuse(response) => State::Rejected {
                            response: Some(response),
                        },
                    };
                    state.set(next);
                }
            }
        }
    }
}

impl<F, S, ReqBody> std::fmt::Debug for ResponseFuture<F, S, ReqBody> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod field_tests {
    use super::{FieldBuf, FIELD_INLINE};

    #[test]
    fn push_decimal_writes_every_digit() {
        let mut numbers = vec![0u64, 7, 10, 99, 100, 101, 4_294_967_295, u64::MAX];
        numbers.extend((0..20).map(|i| 10u64.pow(i)));
        numbers.extend((1..20).map(|i| 10u64.pow(i) - 1));
        for n in numbers {
            let mut out = FieldBuf::new();
            out.push(b"x");
            out.push_decimal(n);
            assert_eq!(out.as_bytes(), format!("x{n}").as_bytes());
        }
    }

    #[test]
    fn a_long_field_moves_to_the_heap_whole() {
        let mut out = FieldBuf::new();
        let mut expected = String::new();
        for i in 0..FIELD_INLINE as u64 {
            out.push(b"ab, ");
            out.push_decimal(i);
            expected.push_str(&format!("ab, {i}"));
            assert_eq!(out.as_bytes(), expected.as_bytes());
        }
    }
}
