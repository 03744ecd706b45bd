//! The `RateLimit` and `RateLimit-Policy` fields that `RateLimitLayer`
//! writes: whatever the policies and whatever a `Limiter` answers, each
//! field parses as an RFC 9651 structured-field list (parsed here by the
//! `sfv` crate) and carries the values given: each policy's name, quota
//! and window, each verdict's remaining units and reset time (clamped to
//! the 15 digits a structured-field integer may have); `Retry-After` is
//! never earlier than the `t` of the refusing policy.
//!
//! The limiter is scripted by the input, through the public `Limiter`
//! trait, on both of the layer's paths: the immediate one and the one that
//! awaits the limiter.

#![no_main]

mod common;

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arbitrary::Arbitrary;
use http::header::RETRY_AFTER;
use http::{Request, Response, StatusCode};
use keyward::key::{KeyHasher, KeyId};
use keyward::limit::{
    CreditPolicy, Decision, LimitError, Limiter, Limits, Policy, RatePolicy, Verdict, RATELIMIT,
    RATELIMIT_POLICY,
};
use keyward::{KeyRecord, Principal, RateLimitLayer};
use libfuzzer_sys::fuzz_target;
use sfv::{BareItem, ListEntry, Parser};
use tower_layer::Layer;
use tower_service::Service;

/// The largest structured-field integer (RFC 9651: 15 digits).
const MAX_INTEGER: u64 = 999_999_999_999_999;

#[derive(Debug, Arbitrary)]
enum PolicySpec {
    Rate {
        name: String,
        quota: u32,
        window: (u64, u32),
        burst: Option<u32>,
    },
    Credits {
        name: String,
        capacity: u64,
        refill: Option<(u64, (u64, u32))>,
    },
}

/// A name that passes the checks half the time, else the input's.
fn name(raw: &str, i: usize) -> String {
    if raw.len() % 2 == 0 {
        format!("p{i}")
    } else {
        raw.to_owned()
    }
}

fn duration((secs, nanos): (u64, u32)) -> Duration {
    Duration::new(secs, nanos % 1_000_000_000)
}

impl PolicySpec {
    fn build(&self, i: usize) -> Option<Policy> {
        match self {
            PolicySpec::Rate {
                name: raw,
                quota,
                window,
                burst,
            } => {
                let rate = RatePolicy::new(&name(raw, i), *quota, duration(*window)).ok()?;
                match burst {
                    Some(burst) => rate.with_burst(*burst).ok().map(Policy::from),
                    None => Some(rate.into()),
                }
            }
            PolicySpec::Credits {
                name: raw,
                capacity,
                refill,
            } => {
                let credits = CreditPolicy::new(&name(raw, i), *capacity).ok()?;
                match refill {
                    Some((amount, every)) => credits
                        .with_refill(*amount, duration(*every))
                        .ok()
                        .map(Policy::from),
                    None => Some(credits.into()),
                }
            }
        }
    }
}

/// One policy's verdict.
#[derive(Debug, Clone, Copy, Arbitrary)]
struct Answer {
    allowed: bool,
    remaining: u64,
    reset: Reset,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Reset {
    /// A balance that never refills.
    Never,
    At(u64, u32),
}

impl Reset {
    fn duration(self) -> Duration {
        match self {
            Reset::Never => Duration::MAX,
            Reset::At(secs, nanos) => duration((secs, nanos)),
        }
    }
}

impl Answer {
    /// The verdict, which keeps what it is given: the units up to
    /// `2^63 - 1`, the wait to the nanosecond up to `u64::MAX - 1` of them.
    fn verdict(self) -> Verdict {
        let reset = self.reset.duration();
        let verdict = if self.allowed {
            Verdict::allowed(self.remaining, reset)
        } else {
            Verdict::denied(self.remaining, reset)
        };
        assert_eq!(verdict.is_allowed(), self.allowed);
        assert_eq!(verdict.remaining(), self.remaining.min(i64::MAX as u64));
        let kept = if reset == Duration::MAX {
            Duration::MAX
        } else {
            Duration::from_nanos(
                u64::try_from(reset.as_nanos())
                    .unwrap_or(u64::MAX)
                    .min(u64::MAX - 1),
            )
        };
        assert_eq!(verdict.reset(), kept);
        verdict
    }
}

/// What the limiter answers for the whole request.
#[derive(Debug, Clone, Arbitrary)]
enum Outcome {
    /// One verdict per policy (missing ones: allowed), or, when `extra`,
    /// one too many.
    Decide {
        answers: Vec<Answer>,
        extra: bool,
    },
    /// Fewer verdicts than policies.
    TooFew,
    /// A cost that the policy at this index can never allow.
    CostTooHigh(u8),
    Backend,
}

#[derive(Debug, Arbitrary)]
struct Input {
    policies: Vec<PolicySpec>,
    outcome: Outcome,
    /// Answer through `check` (a remote limiter), not `check_immediate`.
    remote: bool,
    fail_open: bool,
    cost: u32,
}

/// A limiter that answers what the input says.
#[derive(Debug)]
struct Scripted {
    remote: bool,
    outcome: Outcome,
}

impl Scripted {
    fn answer(&self, limits: &Limits) -> Result<Decision, LimitError> {
        let policies = limits.policies();
        match &self.outcome {
            Outcome::Decide { answers, extra } => {
                let mut decision: Decision = (0..policies.len())
                    .map(|i| {
                        answers
                            .get(i)
                            .map_or(Verdict::allowed(1, Duration::ZERO), |a| a.verdict())
                    })
                    .collect();
                if *extra {
                    decision.push(Verdict::allowed(1, Duration::ZERO));
                }
                Ok(decision)
            }
            Outcome::TooFew => Ok(policies[1..]
                .iter()
                .map(|_| Verdict::allowed(1, Duration::ZERO))
                .collect()),
            Outcome::CostTooHigh(i) => Err(LimitError::CostTooHigh {
                policy: policies[usize::from(*i) % policies.len()].name().to_owned(),
                cost: 1,
            }),
            Outcome::Backend => Err(LimitError::backend(std::io::Error::other("down"))),
        }
    }
}

#[async_trait::async_trait]
impl Limiter for Scripted {
    async fn check(&self, _: &KeyId, limits: &Limits, _: u32) -> Result<Decision, LimitError> {
        self.answer(limits)
    }

    fn check_immediate(
        &self,
        _: &KeyId,
        limits: &Limits,
        _: u32,
    ) -> Option<Result<Decision, LimitError>> {
        (!self.remote).then(|| self.answer(limits))
    }
}

#[derive(Clone)]
struct Ok200;

impl Service<Request<()>> for Ok200 {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(String::new())))
    }
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// Parses a field as a list of string items, each with integer parameters.
fn parse(field: &[u8]) -> Vec<(String, Vec<(String, i64)>)> {
    let text = std::str::from_utf8(field).expect("a field is ASCII");
    let list = Parser::new(text)
        .parse::<sfv::List>()
        .unwrap_or_else(|error| panic!("{text:?} is not a structured-field list: {error}"));
    list.into_iter()
        .map(|entry| {
            let ListEntry::Item(item) = entry else {
                panic!("{text:?}: an inner list")
            };
            let BareItem::String(name) = item.bare_item else {
                panic!("{text:?}: a member that is not a string")
            };
            let params = item
                .params
                .into_iter()
                .map(|(key, value)| match value {
                    BareItem::Integer(n) => (key.as_str().to_owned(), i64::from(n)),
                    other => panic!("{text:?}: parameter {key:?} is {other:?}"),
                })
                .collect();
            (name.as_str().to_owned(), params)
        })
        .collect()
}

fn param(params: &[(String, i64)], name: &str) -> Option<u64> {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, n)| u64::try_from(*n).unwrap())
}

fuzz_target!(|input: Input| {
    let policies: Vec<Policy> = input
        .policies
        .iter()
        .enumerate()
        .filter_map(|(i, spec)| spec.build(i))
        .collect();
    let Ok(limits) = Limits::new(policies) else {
        return;
    };
    if limits.is_empty() {
        return;
    }
    let id: KeyId = "FuzzKeyId000".parse().unwrap();
    let record = KeyRecord::new(
        id,
        KeyHasher::sha256().hash("secret"),
        "owner",
        SystemTime::UNIX_EPOCH,
    )
    .with_limits(limits.clone());
    let limiter = Scripted {
        remote: input.remote,
        outcome: input.outcome.clone(),
    };
    let decision = limiter.answer(&limits);
    let mut service = RateLimitLayer::new(limiter)
        .cost(input.cost)
        .insecure_fail_open(input.fail_open)
        .layer(Ok200);
    let request = Request::get("/")
        .extension(Principal::new(Arc::new(record)))
        .body(())
        .unwrap();
    let response = common::block_on(service.call(request)).unwrap();
    let headers = response.headers();
    let policies = limits.policies();

    // What the decision comes to.
    let decision = match decision {
        Ok(decision) if decision.len() == policies.len() => Some(decision),
        _ => None,
    };
    let expected_status = match (&decision, &input.outcome) {
        (Some(decision), _) if decision.is_allowed() => StatusCode::OK,
        (Some(_), _) | (None, Outcome::CostTooHigh(_)) => StatusCode::TOO_MANY_REQUESTS,
        (None, _) if input.fail_open => StatusCode::OK,
        (None, _) => StatusCode::SERVICE_UNAVAILABLE,
    };
    assert_eq!(response.status(), expected_status);

    // RateLimit-Policy, when sent: every policy, with its quota and window.
    if let Some(policy_field) = headers.get(&RATELIMIT_POLICY) {
        assert_eq!(Some(policy_field), limits.policy_header());
        let members = parse(policy_field.as_bytes());
        assert_eq!(members.len(), policies.len());
        for (policy, (name, params)) in policies.iter().zip(&members) {
            assert_eq!(policy.name(), name);
            let (q, w) = match policy {
                Policy::Rate(rate) => (u64::from(rate.quota()), Some(whole_seconds(rate.window()))),
                Policy::Credits(credits) => (
                    credits.capacity(),
                    credits.time_to_fill().map(whole_seconds),
                ),
                _ => unreachable!(),
            };
            assert_eq!(param(params, "q"), Some(q));
            assert_eq!(param(params, "w"), w.map(|w| w.min(MAX_INTEGER)));
            assert_eq!(params.len(), 1 + usize::from(w.is_some()), "{params:?}");
        }
    }

    let state = headers.get(&RATELIMIT);
    let Some(decision) = decision else {
        // No decision (a failed limiter, a cost too high, a wrong count of
        // verdicts): nothing to announce, and never an empty field (RFC
        // 9651 §4.1: an empty list is not serialized).
        assert!(state.is_none(), "{state:?}");
        if matches!(input.outcome, Outcome::CostTooHigh(_)) {
            assert!(headers.get(&RATELIMIT_POLICY).is_some());
        }
        return;
    };
    assert!(headers.get(&RATELIMIT_POLICY).is_some());

    // RateLimit: one member per policy, with what the limiter answered.
    let members = parse(state.expect("RateLimit").as_bytes());
    assert_eq!(members.len(), policies.len());
    for ((policy, verdict), (name, params)) in
        policies.iter().zip(decision.verdicts()).zip(&members)
    {
        assert_eq!(policy.name(), name);
        assert_eq!(
            param(params, "r"),
            Some(verdict.remaining().min(MAX_INTEGER))
        );
        let reset = verdict.reset();
        let t = (reset != Duration::MAX).then(|| whole_seconds(reset).min(MAX_INTEGER));
        assert_eq!(param(params, "t"), t);
        assert_eq!(params.len(), 1 + usize::from(t.is_some()), "{params:?}");
    }

    // Retry-After: never earlier than the `t` of a refusing policy; absent
    // when one never recovers.
    if !decision.is_allowed() {
        let retry_after = headers.get(RETRY_AFTER);
        match decision.retry_after() {
            None => assert!(retry_after.is_none()),
            Some(wait) => {
                let seconds: u64 = retry_after
                    .expect("Retry-After")
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(seconds, whole_seconds(wait).max(1));
                for verdict in decision.verdicts().iter().filter(|v| !v.is_allowed()) {
                    assert!(seconds >= whole_seconds(verdict.reset()));
                }
            }
        }
    }
});
