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

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arbitrary::Arbitrary;
use http::header::RETRY_AFTER;
use http::{Request, Response, StatusCode};
use keyward::key::{KeyHasher, KeyId};
use keyward::limit::{
    CreditPolicy, LimitError, Limiter, Limits, Policy, RatePolicy, Verdict, RATELIMIT,
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

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Answer {
    Allowed { remaining: u64, reset: Reset },
    Denied { remaining: u64, reset: Reset },
    CostTooHigh,
    Backend,
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

#[derive(Debug, Arbitrary)]
struct Input {
    policies: Vec<PolicySpec>,
    answers: Vec<Answer>,
    /// Answer through `check` (a remote limiter), not `check_immediate`.
    remote: bool,
    fail_open: bool,
    cost: u32,
}

/// A limiter that answers what the input says, and notes what it was
/// asked.
#[derive(Debug)]
struct Scripted {
    remote: bool,
    answers: Mutex<VecDeque<Answer>>,
    asked: Arc<Mutex<Vec<(String, Answer)>>>,
}

impl Scripted {
    fn answer(&self, policy: &Policy) -> Result<Verdict, LimitError> {
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Allowed {
                remaining: 1,
                reset: Reset::At(1, 0),
            });
        self.asked
            .lock()
            .unwrap()
            .push((policy.name().to_owned(), answer));
        match answer {
            Answer::Allowed { remaining, reset } => {
                Ok(Verdict::allowed(remaining, reset.duration()))
            }
            Answer::Denied { remaining, reset } => Ok(Verdict::denied(remaining, reset.duration())),
            Answer::CostTooHigh => Err(LimitError::CostTooHigh {
                policy: policy.name().to_owned(),
                cost: 1,
            }),
            Answer::Backend => Err(LimitError::backend(std::io::Error::other("down"))),
        }
    }
}

#[async_trait::async_trait]
impl Limiter for Scripted {
    async fn check(&self, _: &KeyId, policy: &Policy, _: u32) -> Result<Verdict, LimitError> {
        self.answer(policy)
    }

    fn check_immediate(
        &self,
        _: &KeyId,
        policy: &Policy,
        _: u32,
    ) -> Option<Result<Verdict, LimitError>> {
        (!self.remote).then(|| self.answer(policy))
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
    let asked = Arc::new(Mutex::new(Vec::new()));
    let limiter = Scripted {
        remote: input.remote,
        answers: Mutex::new(input.answers.iter().copied().collect()),
        asked: Arc::clone(&asked),
    };
    let mut service = RateLimitLayer::new(limiter)
        .cost(input.cost)
        .insecure_fail_open(input.fail_open)
        .layer(Ok200);
    let request = Request::get("/")
        .extension(Principal::new(Arc::new(record)))
        .body(())
        .unwrap();
    let response = common::block_on(service.call(request)).unwrap();
    let asked = asked.lock().unwrap().clone();

    // The policies are asked in order, up to the first that refuses or fails.
    let names: Vec<&str> = limits.policies().iter().map(Policy::name).collect();
    let asked_names: Vec<&str> = asked.iter().map(|(name, _)| name.as_str()).collect();
    assert!(
        names.starts_with(&asked_names),
        "{names:?} / {asked_names:?}"
    );
    let stop = asked
        .iter()
        .position(|(_, answer)| !matches!(answer, Answer::Allowed { .. }));
    assert_eq!(asked.len(), stop.map_or(names.len(), |i| i + 1));

    let expected_status = match stop.map(|i| asked[i].1) {
        None => StatusCode::OK,
        Some(Answer::Backend) if input.fail_open => StatusCode::OK,
        Some(Answer::Backend) => StatusCode::SERVICE_UNAVAILABLE,
        Some(_) => StatusCode::TOO_MANY_REQUESTS,
    };
    assert_eq!(response.status(), expected_status);
    let headers = response.headers();
    if expected_status == StatusCode::OK && stop.is_some() {
        // Failed open: the verdicts are unknown, so no fields.
        assert!(headers.get(&RATELIMIT_POLICY).is_none() && headers.get(&RATELIMIT).is_none());
        return;
    }

    // RateLimit-Policy: every policy, with its quota and window.
    let policy_field = headers.get(&RATELIMIT_POLICY).expect("RateLimit-Policy");
    assert_eq!(Some(policy_field), limits.policy_header());
    let members = parse(policy_field.as_bytes());
    assert_eq!(members.len(), limits.policies().len());
    for (policy, (name, params)) in limits.policies().iter().zip(&members) {
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

    // RateLimit: one member per verdict, with what the limiter answered;
    // no field at all when there is none (RFC 9651 §4.1: an empty list is
    // not serialized).
    let verdicts: Vec<(&str, u64, Duration)> = asked
        .iter()
        .filter_map(|(name, answer)| match *answer {
            Answer::Allowed { remaining, reset } | Answer::Denied { remaining, reset } => {
                Some((name.as_str(), remaining, reset.duration()))
            }
            _ => None,
        })
        .collect();
    let state = headers.get(&RATELIMIT);
    if verdicts.is_empty() {
        assert!(state.is_none(), "an empty RateLimit field: {state:?}");
    } else {
        let members = parse(state.expect("RateLimit").as_bytes());
        assert_eq!(members.len(), verdicts.len());
        for ((name, remaining, reset), (field_name, params)) in verdicts.iter().zip(&members) {
            assert_eq!(name, field_name);
            assert_eq!(param(params, "r"), Some((*remaining).min(MAX_INTEGER)));
            let t = (*reset != Duration::MAX).then(|| whole_seconds(*reset).min(MAX_INTEGER));
            assert_eq!(param(params, "t"), t);
            assert_eq!(params.len(), 1 + usize::from(t.is_some()), "{params:?}");
        }
    }

    // Retry-After: never earlier than the refusing policy's `t`.
    if let Some(Answer::Denied { reset, .. }) = stop.map(|i| asked[i].1) {
        let retry_after = headers.get(RETRY_AFTER);
        match reset {
            Reset::Never => assert!(retry_after.is_none()),
            Reset::At(..) => {
                let seconds: u64 = retry_after
                    .expect("Retry-After")
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(seconds >= whole_seconds(reset.duration()).clamp(1, MAX_INTEGER));
            }
        }
    }
});
