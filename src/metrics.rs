//! Metrics through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`): install any exporter (Prometheus, StatsD,
//! OpenTelemetry) and keyward's layers report to it.
//!
//! | name | type | labels | what it counts |
//! |---|---|---|---|
//! | `keyward_auth_requests_total` | counter | `outcome` (`allowed`, `rejected`), `reason`, `credential` | requests [`AuthLayer`](crate::AuthLayer) decided; `reason` is [`RejectReason::as_str`](crate::RejectReason::as_str) (`none` when allowed), `credential` the kind of credential (see below) |
//! | `keyward_auth_throttle_hits_total` | counter | | requests refused by the [`FailureThrottle`](crate::auth::FailureThrottle) before any look-up |
//! | `keyward_auth_throttle_blocks_total` | counter | | times a client address was put on hold for too many refused keys |
//! | `keyward_store_lookup_duration_seconds` | histogram | | awaited key-store look-ups on the request path (see below) |
//! | `keyward_store_errors_total` | counter | `error` (`backend`, `timeout`) | look-ups that failed, each refused with `503` (fail closed) |
//! | `keyward_limit_decisions_total` | counter | `policy`, `decision` (`allowed`, `denied`) | one per policy of the key per request [`RateLimitLayer`](crate::RateLimitLayer) checked |
//! | `keyward_limiter_check_duration_seconds` | histogram | | awaited limiter checks (a remote limiter such as `RedisLimiter`) |
//! | `keyward_limiter_errors_total` | counter | | limiter failures (`503`, or let through with `insecure_fail_open`) |
//! | `keyward_key_cache_lookups_total` | counter | `result` (`hit`, `miss`) | look-ups a `CachedStore` answered from memory, or had to ask its backend for |
//! | `keyward_key_cache_stale_served_total` | counter | | look-ups answered from an expired entry because the backend failed (`serve_stale_on_error`) |
//! | `keyward_usage_events_dropped_total` | counter | `reason` (`full`, `closed`, `stopped`, `export_failed`) | usage events lost: a `BatchingSink` full or shut down, its worker stopped, or a database exporter that gave a batch up |
//!
//! Call [`describe`] once after installing the exporter, so that it knows
//! each metric's help text and unit.
//!
//! # The `credential` label
//!
//! `keyward_auth_requests_total` tells the kinds of credential apart, so
//! that API keys, publishable keys, imported keys, JWTs and signed
//! requests each have their own rates and refusals. Its values are the
//! [`CredentialKind::as_str`](crate::CredentialKind::as_str) names, and
//! one more:
//!
//! | value | counted for |
//! |---|---|
//! | `api_key` | a key of the layer's format, or any value in a key source that no verifier recognised (refused as a malformed key) |
//! | `publishable` | a publishable key whose secret matched: allowed, or refused afterwards (its origin, its restrictions) |
//! | `imported` | a value of the imported keys' old format |
//! | `signature`, `jwt` | a credential one of the layer's [verifiers](crate::credential::Verifier) recognised (a verifier of your own counts as the kind it says it makes) |
//! | `none` | no credential could be told: none presented (`missing_key`), two of them (`two_credentials`), or a key source read twice (`invalid_request`) |
//!
//! A refusal counts the kind the credential *was presented as*, until its
//! record is trusted: a publishable key has the format of every other key,
//! so one refused for its secret, its status or its dates counts as
//! `api_key` (telling it from an API key would need its record, which an
//! unknown id does not have, and the refusal would then take a different
//! path for known ids than for unknown ones). Once the secret matched, the
//! principal's own [`credential`](crate::Principal::credential) counts.
//!
//! # No key id, no owner
//!
//! No label carries a key id, an owner or a client address, and none can
//! be turned on: every distinct label value is a time series that the
//! exporter keeps for ever, so a per-key label grows with the number of
//! keys (and, for refused keys, with whatever ids an attacker invents).
//! Per-key numbers are what usage records are for
//! ([`usage`](crate::usage): the aggregate sink, the database exporters).
//! The `policy` label is the policy's *name* (`burst`, `daily`), which a
//! service configures per tier: keep those names few.
//!
//! # What is timed, and what is not
//!
//! Latency is measured only around look-ups and checks that are awaited:
//! a store or limiter that answers at once ([`MemoryStore`](crate::MemoryStore),
//! a `CachedStore` hit, [`MemoryLimiter`](crate::MemoryLimiter)) costs
//! less than the two clock reads that would time it, so it is not timed
//! (its work is visible as `keyward_key_cache_lookups_total{result="hit"}`
//! and in the request counters). The histograms therefore show what the
//! backends (a cache miss, `PgStore`, `RedisStore`, `RedisLimiter`) cost a
//! request. The facade leaves buckets to the exporter: give the
//! `_seconds` histograms buckets around your backends' latency (for
//! example 0.5 ms to 1 s).
//!
//! Without the feature, none of this code exists; with it but no exporter
//! installed, each event costs one read of the facade's recorder.
//!
//! # Example
//!
//! ```
//! use std::time::SystemTime;
//! use axum::{body::Body, routing::get, Router};
//! use http::Request;
//! use keyward::{AuthLayer, KeyFormat, KeyGenerator, KeyHasher, KeyRecord, KeyStore, MemoryStore};
//! use metrics_util::debugging::DebuggingRecorder;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In a service: install an exporter, e.g. metrics-exporter-prometheus's
//! // `PrometheusBuilder::new().install()`, then `keyward::metrics::describe()`.
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! let _guard = metrics::set_default_local_recorder(&recorder);
//! keyward::metrics::describe();
//!
//! let format = KeyFormat::new("sk_live")?;
//! let key = KeyGenerator::new(format.clone()).generate()?;
//! let store = MemoryStore::new();
//! store.insert(KeyRecord::new(key.id(), KeyHasher::sha256().hash(key.secret()), "acme", SystemTime::now())).await?;
//! let app = Router::new().route("/", get(|| async { "hi" })).layer(AuthLayer::new(store, format));
//! app.oneshot(Request::get("/").header("x-api-key", key.expose_secret()).body(Body::empty())?).await?;
//!
//! let allowed = snapshotter.snapshot().into_vec().into_iter().any(|(key, _, _, _)| {
//!     let key = key.key();
//!     key.name() == keyward::metrics::AUTH_REQUESTS
//!         && key.labels().any(|label| label.key() == "outcome" && label.value() == "allowed")
//! });
//! assert!(allowed);
//! # Ok(())
//! # }
//! ```

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::metrics::{Key, Label, Level, Metadata, SharedString, Unit};

use crate::credential::CredentialKind;
use crate::reject::RejectReason;
use crate::store::StoreError;

/// Requests [`AuthLayer`](crate::AuthLayer) decided; labels `outcome`
/// (`allowed`, `rejected`), `reason` (a
/// [`RejectReason::as_str`](crate::RejectReason::as_str), or `none`) and
/// `credential` (a [`CredentialKind::as_str`](crate::CredentialKind::as_str),
/// or `none`: see [the `credential` label](self#the-credential-label)).
pub const AUTH_REQUESTS: &str = "keyward_auth_requests_total";
/// Requests the [`FailureThrottle`](crate::auth::FailureThrottle) refused
/// before any look-up.
pub const AUTH_THROTTLE_HITS: &str = "keyward_auth_throttle_hits_total";
/// Times a client address was put on hold by the
/// [`FailureThrottle`](crate::auth::FailureThrottle).
pub const AUTH_THROTTLE_BLOCKS: &str = "keyward_auth_throttle_blocks_total";
/// Seconds an awaited key-store look-up on the request path took.
pub const STORE_LOOKUP_DURATION: &str = "keyward_store_lookup_duration_seconds";
/// Key-store look-ups on the request path that failed; label `error`
/// (`backend`, `timeout`).
pub const STORE_ERRORS: &str = "keyward_store_errors_total";
/// Limiter decisions, one per policy of the key; labels `policy` (the
/// policy's name) and `decision` (`allowed`, `denied`).
pub const LIMIT_DECISIONS: &str = "keyward_limit_decisions_total";
/// Seconds an awaited limiter check took.
pub const LIMITER_CHECK_DURATION: &str = "keyward_limiter_check_duration_seconds";
/// Limiter checks that failed.
pub const LIMITER_ERRORS: &str = "keyward_limiter_errors_total";
/// Look-ups of a `CachedStore`; label `result` (`hit`, `miss`).
pub const KEY_CACHE_LOOKUPS: &str = "keyward_key_cache_lookups_total";
/// Look-ups a `CachedStore` answered from an expired entry because its
/// backend failed.
pub const KEY_CACHE_STALE_SERVED: &str = "keyward_key_cache_stale_served_total";
/// Usage events lost; label `reason` (`full`, `closed`, `stopped`,
/// `export_failed`).
pub const USAGE_EVENTS_DROPPED: &str = "keyward_usage_events_dropped_total";

/// Tells the installed recorder the help text and unit of every keyward
/// metric. Call it once, after installing the exporter (the facade keeps
/// no descriptions of its own).
pub fn describe() {
    use ::metrics::{describe_counter, describe_histogram};
    describe_counter!(
        AUTH_REQUESTS,
        "Requests the authentication layer decided, by outcome, reason and kind of credential."
    );
    describe_counter!(
        AUTH_THROTTLE_HITS,
        "Requests refused by the failure throttle before any key look-up."
    );
    describe_counter!(
        AUTH_THROTTLE_BLOCKS,
        "Times a client address was put on hold for too many refused keys."
    );
    describe_histogram!(
        STORE_LOOKUP_DURATION,
        Unit::Seconds,
        "Awaited key-store look-ups on the request path."
    );
    describe_counter!(
        STORE_ERRORS,
        "Key-store look-ups that failed (the request is refused, 503)."
    );
    describe_counter!(
        LIMIT_DECISIONS,
        "Rate-limit decisions, one per policy of the key, by policy name."
    );
    describe_histogram!(
        LIMITER_CHECK_DURATION,
        Unit::Seconds,
        "Awaited rate-limiter checks (a remote limiter)."
    );
    describe_counter!(LIMITER_ERRORS, "Rate-limiter checks that failed.");
    describe_counter!(
        KEY_CACHE_LOOKUPS,
        "Key-cache look-ups answered from memory (hit) or by the backend (miss)."
    );
    describe_counter!(
        KEY_CACHE_STALE_SERVED,
        "Key-cache look-ups answered from an expired entry because the backend failed."
    );
    describe_counter!(USAGE_EVENTS_DROPPED, "Usage events lost, by reason.");
}

static METADATA: Metadata<'static> = Metadata::new("keyward", Level::INFO, Some(module_path!()));

/// A key whose name and labels are all static: built at compile time.
macro_rules! static_key {
    ($name:expr $(, $label:literal => $value:literal)*) => {{
        static LABELS: [Label; 0 $(+ { let _ = $label; 1 })*] =
            [$(Label::from_static_parts($label, $value)),*];
        static KEY: Key = Key::from_static_parts($name, &LABELS);
        &KEY
    }};
}

fn increment(key: &Key, by: u64) {
    ::metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA).increment(by));
}

fn record(key: &Key, duration: Duration) {
    ::metrics::with_recorder(|recorder| {
        recorder
            .register_histogram(key, &METADATA)
            .record(duration.as_secs_f64())
    });
}

/// The values of the `credential` label: one a kind (indexed by `kind as
/// usize`, [`CredentialKind::ALL`] being in declaration order), then
/// `none`.
const CREDENTIALS: usize = CredentialKind::ALL.len() + 1;

fn credential_label(index: usize) -> &'static str {
    CredentialKind::ALL
        .get(index)
        .map_or("none", CredentialKind::as_str)
}

fn credential_index(credential: Option<CredentialKind>) -> usize {
    credential.map_or(CREDENTIALS - 1, |kind| kind as usize)
}

/// The keys of `keyward_auth_requests_total`: allowed, one a credential;
/// then one a reason (indexed by `reason as usize`) and credential. Built
/// once; the labels are static strings, so a count allocates nothing.
struct AuthKeys {
    allowed: [Key; CREDENTIALS],
    rejected: Vec<[Key; CREDENTIALS]>,
}

fn auth_keys() -> &'static AuthKeys {
    static KEYS: OnceLock<AuthKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let keys = |outcome: &'static str, reason: &'static str| {
            std::array::from_fn(|credential| {
                Key::from_parts(
                    AUTH_REQUESTS,
                    vec![
                        Label::from_static_parts("outcome", outcome),
                        Label::from_static_parts("reason", reason),
                        Label::from_static_parts("credential", credential_label(credential)),
                    ],
                )
            })
        };
        AuthKeys {
            allowed: keys("allowed", "none"),
            rejected: RejectReason::ALL
                .iter()
                .map(|reason| keys("rejected", reason.as_str()))
                .collect(),
        }
    })
}

pub(crate) fn auth_allowed(credential: CredentialKind) {
    if let Some(key) = auth_keys().allowed.get(credential_index(Some(credential))) {
        increment(key, 1);
    }
}

/// A refusal; `credential` is `None` when no credential could be told.
pub(crate) fn auth_rejected(reason: RejectReason, credential: Option<CredentialKind>) {
    let key = auth_keys()
        .rejected
        .get(reason as usize)
        .and_then(|keys| keys.get(credential_index(credential)));
    if let Some(key) = key {
        increment(key, 1);
    }
}

pub(crate) fn throttle_hit() {
    increment(static_key!(AUTH_THROTTLE_HITS), 1);
}

pub(crate) fn throttle_block() {
    increment(static_key!(AUTH_THROTTLE_BLOCKS), 1);
}

pub(crate) fn store_lookup(duration: Duration) {
    record(static_key!(STORE_LOOKUP_DURATION), duration);
}

pub(crate) fn store_error(error: &StoreError) {
    let key = match error {
        StoreError::Timeout(_) => static_key!(STORE_ERRORS, "error" => "timeout"),
        _ => static_key!(STORE_ERRORS, "error" => "backend"),
    };
    increment(key, 1);
}

/// The two keys of one policy's decisions: `[denied, allowed]`, built
/// once with its [`Limits`](crate::limit::Limits) (the name is shared, not
/// copied), so that a decision allocates nothing.
pub(crate) type PolicyKeys = [Key; 2];

pub(crate) fn policy_keys(name: &Arc<str>) -> PolicyKeys {
    let key = |decision: &'static str| {
        Key::from_parts(
            LIMIT_DECISIONS,
            vec![
                Label::new("policy", SharedString::from(Arc::clone(name))),
                Label::from_static_parts("decision", decision),
            ],
        )
    };
    [key("denied"), key("allowed")]
}

pub(crate) fn limit_decision(keys: &PolicyKeys, allowed: bool) {
    increment(&keys[usize::from(allowed)], 1);
}

pub(crate) fn limiter_check(duration: Duration) {
    record(static_key!(LIMITER_CHECK_DURATION), duration);
}

pub(crate) fn limiter_error() {
    increment(static_key!(LIMITER_ERRORS), 1);
}

// The cache and the batching sink need tokio.
#[cfg(feature = "tokio")]
pub(crate) fn cache_hit() {
    increment(static_key!(KEY_CACHE_LOOKUPS, "result" => "hit"), 1);
}

#[cfg(feature = "tokio")]
pub(crate) fn cache_miss() {
    increment(static_key!(KEY_CACHE_LOOKUPS, "result" => "miss"), 1);
}

#[cfg(feature = "tokio")]
pub(crate) fn cache_stale_served() {
    increment(static_key!(KEY_CACHE_STALE_SERVED), 1);
}

#[cfg(feature = "tokio")]
/// Why usage events were lost.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dropped {
    /// A `BatchingSink`'s buffers were full.
    Full,
    /// The sink was shut down.
    Closed,
    /// The sink's worker stopped (dropped, its runtime shut down, the
    /// exporter panicked) with events not exported.
    Stopped,
    /// An exporter gave a batch up after its retries.
    #[cfg(any(feature = "postgres", feature = "redis"))]
    ExportFailed,
}

#[cfg(feature = "tokio")]
pub(crate) fn usage_dropped(why: Dropped, events: u64) {
    let key = match why {
        Dropped::Full => static_key!(USAGE_EVENTS_DROPPED, "reason" => "full"),
        Dropped::Closed => static_key!(USAGE_EVENTS_DROPPED, "reason" => "closed"),
        Dropped::Stopped => static_key!(USAGE_EVENTS_DROPPED, "reason" => "stopped"),
        #[cfg(any(feature = "postgres", feature = "redis"))]
        Dropped::ExportFailed => static_key!(USAGE_EVENTS_DROPPED, "reason" => "export_failed"),
    };
    increment(key, events);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_credential_kind_has_its_own_label() {
        for kind in CredentialKind::ALL {
            assert_eq!(
                credential_label(credential_index(Some(kind))),
                kind.as_str()
            );
        }
        assert_eq!(credential_label(credential_index(None)), "none");
        let keys = auth_keys();
        assert_eq!(keys.rejected.len(), RejectReason::ALL.len());
        for key in keys.allowed.iter().chain(keys.rejected.iter().flatten()) {
            assert_eq!(key.labels().count(), 3, "{key:?}");
        }
    }
}
