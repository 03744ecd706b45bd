//! What the admin API reads and writes: request bodies, query parameters
//! and answers, with their OpenAPI schemas.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::key::KeyId;
use crate::limit::{CreditPolicy, Limits, Policy, PolicyError, RatePolicy};
use crate::record::KeyRecord;
use crate::usage::{TimeRange, UsageCounts};

/// The longest expiry or grace period a request may ask for: 100 years.
pub(crate) const MAX_SECONDS: u64 = 100 * 365 * 86_400;

/// `POST /keys`: a new key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssueKey {
    /// Whose key it is: a user, tenant or service account id (not empty).
    #[schema(example = "acme", min_length = 1)]
    pub(crate) owner: String,
    /// What the key may do; the caller may only grant scopes it holds.
    #[schema(example = json!(["pets:read"]))]
    pub(crate) scopes: Vec<String>,
    /// A human name.
    #[serde(default)]
    #[schema(example = "CI deploy key")]
    pub(crate) name: Option<String>,
    /// Seconds from now until the key expires (1 to 3153600000); none: it
    /// never expires.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3_153_600_000_u64, example = 3600)]
    pub(crate) expires_in_seconds: Option<u64>,
    /// The key's rate limits and credits; none: the API's default tier.
    #[serde(default)]
    pub(crate) limits: Option<Vec<PolicySpec>>,
    /// Free-form labels, handed to services with the key's identity.
    #[serde(default)]
    pub(crate) metadata: Option<BTreeMap<String, String>>,
}

/// `POST /keys/{key_id}/rotate`: how long the old key keeps working.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateKey {
    /// Seconds the old key keeps working (0: it ends at once; at most
    /// 3153600000).
    #[schema(minimum = 0, maximum = 3_153_600_000_u64, example = 86400)]
    pub(crate) grace_seconds: u64,
}

/// `PUT /keys/{key_id}/scopes`: the key's new scopes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetScopes {
    /// Every scope of the key (replacing the old ones); the caller may
    /// only grant scopes it holds.
    #[schema(example = json!(["pets:read", "pets:write"]))]
    pub(crate) scopes: Vec<String>,
}

/// `PUT /keys/{key_id}/limits`: the key's new limits.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetLimits {
    /// Every policy of the key (replacing the old ones); empty: unlimited.
    pub(crate) limits: Vec<PolicySpec>,
}

/// One named limit: a rate or a credit balance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum PolicySpec {
    /// Requests per window, with a burst.
    Rate(RateSpec),
    /// A balance of credits, optionally refilled.
    Credits(CreditSpec),
}

/// `quota` requests per `window_ms`, at most `burst` at once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateSpec {
    /// 1 to 64 characters of `a-z`, `0-9`, `-`, `_`, `.`, starting with a
    /// letter.
    #[schema(example = "burst")]
    pub(crate) name: String,
    /// Requests per window (at least 1).
    #[schema(minimum = 1, example = 100)]
    pub(crate) quota: u32,
    /// The window in milliseconds (whole seconds, at least one second, at
    /// most 100 years).
    #[schema(minimum = 1000, example = 60000)]
    pub(crate) window_ms: u64,
    /// The burst (default: the quota).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub(crate) burst: Option<u32>,
}

/// A balance of `capacity` credits.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreditSpec {
    /// The policy's name (as for rates).
    #[schema(example = "monthly")]
    pub(crate) name: String,
    /// The balance when full.
    #[schema(minimum = 1, example = 10000)]
    pub(crate) capacity: u64,
    /// How it refills; none: never.
    #[serde(default)]
    pub(crate) refill: Option<RefillSpec>,
}

/// `amount` credits back every `interval_ms`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefillSpec {
    /// Credits added each interval.
    #[schema(minimum = 1)]
    pub(crate) amount: u64,
    /// The interval in milliseconds.
    #[schema(minimum = 1000)]
    pub(crate) interval_ms: u64,
}

impl PolicySpec {
    fn from_policy(policy: &Policy) -> Self {
        match policy {
            Policy::Rate(rate) => PolicySpec::Rate(RateSpec {
                name: rate.name().to_owned(),
                quota: rate.quota(),
                window_ms: millis(rate.window()),
                burst: Some(rate.burst()),
            }),
            Policy::Credits(credits) => PolicySpec::Credits(CreditSpec {
                name: credits.name().to_owned(),
                capacity: credits.capacity(),
                refill: credits.refill().map(|(amount, interval)| RefillSpec {
                    amount,
                    interval_ms: millis(interval),
                }),
            }),
        }
    }

    fn to_policy(&self) -> Result<Policy, PolicyError> {
        Ok(match self {
            PolicySpec::Rate(rate) => {
                let policy = RatePolicy::new(
                    &rate.name,
                    rate.quota,
                    Duration::from_millis(rate.window_ms),
                )?;
                match rate.burst {
                    Some(burst) => policy.with_burst(burst)?,
                    None => policy,
                }
                .into()
            }
            PolicySpec::Credits(credits) => {
                let policy = CreditPolicy::new(&credits.name, credits.capacity)?;
                match &credits.refill {
                    Some(refill) => policy
                        .with_refill(refill.amount, Duration::from_millis(refill.interval_ms))?,
                    None => policy,
                }
                .into()
            }
        })
    }

    /// The [`Limits`] these policies make, checked as [`Limits::new`] does.
    pub(crate) fn limits(specs: &[PolicySpec]) -> Result<Limits, PolicyError> {
        let policies = specs
            .iter()
            .map(PolicySpec::to_policy)
            .collect::<Result<Vec<_>, _>>()?;
        Limits::new(policies)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A time as RFC 3339 (UTC).
pub(crate) fn timestamp(time: SystemTime) -> String {
    crate::rfc3339::format(time).unwrap_or_default()
}

/// A key as the admin API shows it: everything but its secret's hash and
/// verification key.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyView {
    /// The public key id (the 12 characters after the prefix).
    #[schema(example = "AbCdEf012345")]
    pub(crate) key_id: String,
    /// The owner.
    pub(crate) owner: String,
    /// The human name (may be empty).
    pub(crate) name: String,
    /// `active`, `disabled` or `revoked`.
    #[schema(example = "active")]
    pub(crate) status: String,
    /// What the key may do.
    pub(crate) scopes: Vec<String>,
    /// When the key was made (RFC 3339).
    #[schema(format = DateTime)]
    pub(crate) created_at: String,
    /// From when on the key is refused (RFC 3339); none: never.
    #[schema(format = DateTime)]
    pub(crate) expires_at: Option<String>,
    /// Until when the key is refused (RFC 3339); none: no such time.
    #[schema(format = DateTime)]
    pub(crate) not_before: Option<String>,
    /// When the key was revoked (RFC 3339).
    #[schema(format = DateTime)]
    pub(crate) revoked_at: Option<String>,
    /// `live` or `test`; none: any.
    pub(crate) environment: Option<String>,
    /// The client networks the key may be used from (CIDR); empty:
    /// anywhere.
    pub(crate) allowed_networks: Vec<String>,
    /// Rate limits and credits.
    pub(crate) limits: Vec<PolicySpec>,
    /// Free-form labels.
    pub(crate) metadata: BTreeMap<String, String>,
    /// Whether the key signs requests (HTTP Message Signatures) rather
    /// than being presented as a bearer key.
    pub(crate) signs_requests: bool,
}

impl From<&KeyRecord> for KeyView {
    fn from(record: &KeyRecord) -> Self {
        Self {
            key_id: record.id.to_string(),
            owner: record.owner.to_string(),
            name: record.name.to_string(),
            status: record.status.to_string(),
            scopes: record
                .scopes
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            created_at: timestamp(record.created_at()),
            expires_at: record.expires_at().map(timestamp),
            not_before: record.not_before().map(timestamp),
            revoked_at: record.revoked_at().map(timestamp),
            environment: record.environment().map(|e| e.as_str().to_owned()),
            allowed_networks: record
                .allowed_networks()
                .iter()
                .map(ToString::to_string)
                .collect(),
            limits: record
                .limits
                .policies()
                .iter()
                .map(PolicySpec::from_policy)
                .collect(),
            metadata: record.metadata().clone(),
            signs_requests: record.verification_key().is_some(),
        }
    }
}

/// A freshly issued key: the plaintext, shown this once, and the key.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct IssuedKeyView {
    /// The plaintext key. It is stored nowhere: hand it to its owner now.
    #[schema(example = "sk_live_AbCdEf012345...")]
    pub(crate) key: String,
    #[serde(flatten)]
    pub(crate) record: KeyView,
}

/// A rotation: the successor's plaintext, shown this once, the successor,
/// and the old key with its new expiry.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RotatedKeyView {
    /// The successor's plaintext key. It is stored nowhere.
    pub(crate) key: String,
    #[serde(flatten)]
    pub(crate) record: KeyView,
    /// The old key, which expires at the end of the grace period.
    pub(crate) previous: KeyView,
}

/// One page of an owner's keys, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyPage {
    /// The keys of this page.
    pub(crate) keys: Vec<KeyView>,
    /// Pass as `cursor` for the next page; none: this was the last.
    pub(crate) next_cursor: Option<String>,
}

/// `GET /keys`: whose keys, and which page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListKeysQuery {
    /// The owner whose keys to list.
    pub(crate) owner: String,
    /// Keys per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub(crate) cursor: Option<String>,
}

/// A time range and an optional step, for one key's usage.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct KeyUsageQuery {
    /// Start (RFC 3339, included); default: 24 hours before `to`.
    #[param(format = DateTime)]
    pub(crate) from: Option<String>,
    /// End (RFC 3339, excluded); default: now.
    #[param(format = DateTime)]
    pub(crate) to: Option<String>,
    /// Buckets of this many minutes (1 to 1440), aligned to the Unix
    /// epoch; none: one total for the range.
    #[param(minimum = 1, maximum = 1440)]
    pub(crate) step_minutes: Option<u32>,
}

/// A time range, an optional step and a page of keys.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageQueryParams {
    /// Start (RFC 3339, included); default: 24 hours before `to`.
    #[param(format = DateTime)]
    pub(crate) from: Option<String>,
    /// End (RFC 3339, excluded); default: now.
    #[param(format = DateTime)]
    pub(crate) to: Option<String>,
    /// Buckets of this many minutes (1 to 1440), aligned to the Unix
    /// epoch; none: one total per key for the range.
    #[param(minimum = 1, maximum = 1440)]
    pub(crate) step_minutes: Option<u32>,
    /// Keys per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<u32>,
    /// The `next_after` of the previous page: only keys whose id sorts
    /// after it.
    pub(crate) after: Option<String>,
}

/// Usage over a time range, per key.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UsageReport {
    /// The range the counts cover, widened to whole minutes.
    pub(crate) range: RangeView,
    /// The buckets' width, if a series was asked for.
    pub(crate) step_minutes: Option<u32>,
    /// One entry per key with requests in the range, by key id.
    pub(crate) keys: Vec<KeyUsageView>,
    /// Pass as `after` for the next page of keys; none: this was the last.
    pub(crate) next_after: Option<String>,
}

/// A span of time, `[start, end)`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RangeView {
    /// Start (RFC 3339, included).
    #[schema(format = DateTime)]
    pub(crate) start: String,
    /// End (RFC 3339, excluded).
    #[schema(format = DateTime)]
    pub(crate) end: String,
}

impl From<TimeRange> for RangeView {
    fn from(range: TimeRange) -> Self {
        Self {
            start: timestamp(range.start()),
            end: timestamp(range.end()),
        }
    }
}

/// One key's requests over the range.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyUsageView {
    /// The key.
    pub(crate) key_id: String,
    /// Its owner, as recorded with its requests.
    pub(crate) owner: Option<String>,
    #[serde(flatten)]
    pub(crate) counts: CountsView,
    /// The buckets with requests, oldest first (only with `step_minutes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) series: Option<Vec<BucketView>>,
}

/// Requests counted over a period.
#[derive(Debug, Default, Serialize, ToSchema)]
pub(crate) struct CountsView {
    /// `allowed + denied + unanswered`.
    pub(crate) requests: u64,
    /// Requests no keyward layer refused.
    pub(crate) allowed: u64,
    /// Requests a keyward layer refused.
    pub(crate) denied: u64,
    /// Requests that ended with a service error or were cancelled.
    pub(crate) unanswered: u64,
    /// Refusals by reason (`insufficient_scope`, `rate_limited`, ...).
    pub(crate) denied_by_reason: BTreeMap<String, u64>,
    /// The sum of the requests' latencies, in microseconds.
    pub(crate) total_latency_us: u64,
}

impl From<&UsageCounts> for CountsView {
    fn from(counts: &UsageCounts) -> Self {
        Self {
            requests: counts.requests,
            allowed: counts.allowed,
            denied: counts.denied,
            unanswered: counts.unanswered,
            denied_by_reason: counts
                .denied_by_reason
                .iter()
                .map(|(reason, n)| (reason.as_str().to_owned(), *n))
                .collect(),
            total_latency_us: u64::try_from(counts.total_latency.as_micros()).unwrap_or(u64::MAX),
        }
    }
}

/// One bucket of a series.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BucketView {
    /// Start (RFC 3339, included).
    #[schema(format = DateTime)]
    pub(crate) start: String,
    /// End (RFC 3339, excluded).
    #[schema(format = DateTime)]
    pub(crate) end: String,
    #[serde(flatten)]
    pub(crate) counts: CountsView,
}

/// A key id from the path, or the 400 that says it is none.
pub(crate) fn key_id(text: &str) -> Result<KeyId, super::Problem> {
    text.parse().map_err(|_| {
        super::Problem::new(
            super::ProblemType::INVALID_KEY_ID,
            "A key id is 12 ASCII letters and digits (the part of a key after its prefix).",
        )
    })
}
