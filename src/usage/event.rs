use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};

use crate::auth::Principal;
use crate::clock::saturating_nanos;
use crate::key::KeyId;
use crate::reject::RejectReason;

/// One record of usage: a request that was answered, or a moment in a
/// key's life (see [`EventKind`]).
///
/// It never holds a key, only its public id; the route never holds the
/// query string. Cloning it is cheap (reference counts and small copies).
/// With feature `serde` it serializes as one flat object, the fields of
/// the [`TracingSink`](super::TracingSink)'s log line, for an exporter to
/// write as it is.
#[derive(Clone)]
pub struct UsageEvent {
    // Laid out to be small (it is moved into every sink): what is rarely
    // set is boxed, sizes and latency are plain integers.
    at: SystemTime,
    latency_nanos: u64,
    request_size: Size,
    response_size: Size,
    route: Option<Route>,
    method: Option<Method>,
    owner: Option<Owner>,
    tags: Option<Box<UsageTags>>,
    key_id: Option<KeyId>,
    status: Option<StatusCode>,
    outcome: Outcome,
    kind: EventKind,
}

/// A body size when known in advance; `u64::MAX` when not (half the size
/// of an `Option<u64>`).
#[derive(Clone, Copy)]
pub(crate) struct Size(u64);

impl Size {
    pub(crate) fn new(size: Option<u64>) -> Self {
        Self(size.unwrap_or(u64::MAX))
    }

    fn get(self) -> Option<u64> {
        (self.0 != u64::MAX).then_some(self.0)
    }
}

/// What [`UsageEvent::tags`] answers for an event without tags.
static NO_TAGS: UsageTags = UsageTags(Vec::new());

/// What a [`UsageEvent`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// A request, answered (or abandoned): one per request.
    Request,
    /// A moment in a key's life, for the audit trail.
    Lifecycle(Lifecycle),
}

/// Moments in a key's life.
///
/// [`UsageLayer`](super::UsageLayer) emits [`FirstUsed`](Lifecycle::FirstUsed)
/// and [`ExpiredOnUse`](Lifecycle::ExpiredOnUse); key management emits the
/// others through [`UsageEvent::lifecycle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Lifecycle {
    /// The key was issued.
    Issued,
    /// The key was replaced by a new one (this event names the old key).
    Rotated,
    /// The key was revoked.
    Revoked,
    /// The key was disabled.
    Disabled,
    /// The key was enabled again.
    Enabled,
    /// The key's scopes were replaced.
    ScopesChanged,
    /// The key's limits were replaced (a tier change).
    LimitsChanged,
    /// The key's metadata was replaced.
    MetadataChanged,
    /// The key was renamed.
    Renamed,
    /// The key's expiry was set, moved or removed.
    ExpiryChanged,
    /// The key's not-before time was set, moved or removed.
    NotBeforeChanged,
    /// This process saw the key authenticate for the first time.
    FirstUsed,
    /// The key was presented after its expiry.
    ExpiredOnUse,
    /// The key was reported leaked (by GitHub's secret scanning: module
    /// `scanning`, feature `secret-scanning`); the event's [tags](UsageEvent::tags)
    /// say where (`url`, `source`), as what (`token_type`) and what was
    /// done (`action`). A revocation or disabling it caused is its own
    /// event besides.
    LeakReported,
    /// The key's allowed origins were replaced (publishable keys).
    OriginsChanged,
}

impl Lifecycle {
    /// A stable `snake_case` name, for logs and exports.
    pub fn as_str(&self) -> &'static str {
        match self {
            Lifecycle::Issued => "issued",
            Lifecycle::Rotated => "rotated",
            Lifecycle::Revoked => "revoked",
            Lifecycle::Disabled => "disabled",
            Lifecycle::Enabled => "enabled",
            Lifecycle::ScopesChanged => "scopes_changed",
            Lifecycle::LimitsChanged => "limits_changed",
            Lifecycle::MetadataChanged => "metadata_changed",
            Lifecycle::Renamed => "renamed",
            Lifecycle::ExpiryChanged => "expiry_changed",
            Lifecycle::NotBeforeChanged => "not_before_changed",
            Lifecycle::FirstUsed => "first_used",
            Lifecycle::ExpiredOnUse => "expired_on_use",
            Lifecycle::LeakReported => "leak_reported",
            Lifecycle::OriginsChanged => "origins_changed",
        }
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EventKind {
    /// `"request"`, or the lifecycle's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Request => "request",
            EventKind::Lifecycle(lifecycle) => lifecycle.as_str(),
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// No keyward layer refused it (the status may still be any).
    Allowed,
    /// A keyward layer refused it, for this reason.
    Refused(RejectReason),
    /// The inner service returned an error instead of a response.
    Failed,
    /// The response future was dropped before it finished (the client went
    /// away, a timeout fired).
    Cancelled,
}

impl Outcome {
    /// `"allowed"`, `"failed"`, `"cancelled"`, or the rejection reason's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused(reason) => reason.as_str(),
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The rejection reason, if refused.
    pub fn rejection(&self) -> Option<RejectReason> {
        match self {
            Outcome::Refused(reason) => Some(*reason),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Caller-supplied labels recorded with a request's [`UsageEvent`].
///
/// Insert them into the request's extensions (in a layer outside
/// [`UsageLayer`](super::UsageLayer)) or into the response's (in your
/// handler or an inner layer); both are recorded, request tags first.
///
/// ```
/// use keyward::usage::UsageTags;
///
/// let tags = UsageTags::new().with("plan", "pro").with("region", "eu");
/// assert_eq!(tags.get("plan"), Some("pro"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageTags(Vec<(Cow<'static, str>, Cow<'static, str>)>);

impl UsageTags {
    /// No tags.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Adds a tag.
    #[must_use]
    pub fn with(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Self {
        self.insert(name, value);
        self
    }

    /// Adds a tag.
    pub fn insert(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) {
        self.0.push((name.into(), value.into()));
    }

    /// The value of the last tag called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// The tags, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }

    /// The number of tags.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn extend(&mut self, other: &UsageTags) {
        self.0.extend(other.0.iter().cloned());
    }
}

#[derive(Clone)]
enum Owner {
    Principal(Principal),
    /// Boxed: lifecycle events are rare, and a thin pointer keeps every
    /// event smaller.
    Name(Box<Arc<str>>),
}

#[derive(Clone)]
pub(crate) enum Route {
    #[cfg(feature = "axum")]
    Matched(axum::extract::MatchedPath),
    /// A short path, copied: no allocation, no reference count, and the
    /// event does not keep the request's buffer alive.
    Short(ShortPath),
    Path(http::uri::PathAndQuery),
}

impl Route {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            #[cfg(feature = "axum")]
            Route::Matched(matched) => matched.as_str(),
            Route::Short(path) => path.as_str(),
            Route::Path(path) => path.path(),
        }
    }
}

/// A path of at most [`ShortPath::MAX`] bytes, inline (as large as the
/// `PathAndQuery` it stands for, so routes are no bigger).
#[derive(Clone, Copy)]
pub(crate) struct ShortPath {
    len: u8,
    bytes: [u8; ShortPath::MAX],
}

impl ShortPath {
    pub(crate) const MAX: usize = 46;

    pub(crate) fn new(path: &str) -> Option<Self> {
        let len = u8::try_from(path.len())
            .ok()
            .filter(|n| usize::from(*n) <= Self::MAX)?;
        let mut bytes = [0; Self::MAX];
        bytes[..path.len()].copy_from_slice(path.as_bytes());
        Some(Self { len, bytes })
    }

    fn as_str(&self) -> &str {
        // A whole `str` was copied, so this is always valid UTF-8.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// The request-side facts [`UsageLayer`](super::UsageLayer) gathers before
/// calling the inner service.
pub(crate) struct RequestFacts {
    pub(crate) at: SystemTime,
    pub(crate) method: Method,
    pub(crate) route: Option<Route>,
    pub(crate) request_size: Size,
    /// Rarely set: boxed, so that requests without tags move less.
    pub(crate) tags: Option<Box<UsageTags>>,
}

impl UsageEvent {
    pub(crate) fn request(
        facts: RequestFacts,
        // Taken, not borrowed: the caller's copy is usually its last.
        principal: Option<Principal>,
        key_id: Option<KeyId>,
        status: Option<StatusCode>,
        outcome: Outcome,
        latency: Duration,
        response_size: Option<u64>,
    ) -> Self {
        Self {
            at: facts.at,
            latency_nanos: saturating_nanos(latency),
            request_size: facts.request_size,
            response_size: Size::new(response_size),
            route: facts.route,
            method: Some(facts.method),
            key_id: principal.as_ref().map(Principal::key_id).or(key_id),
            owner: principal.map(Owner::Principal),
            tags: facts.tags,
            status,
            outcome,
            kind: EventKind::Request,
        }
    }

    /// A lifecycle event for key `key_id` of `owner`, at `at` (from your
    /// [`Clock`](crate::clock::Clock)): what key management hands to a
    /// [`UsageSink`](super::UsageSink) when it issues, rotates, revokes,
    /// disables or enables a key. Its outcome is [`Outcome::Allowed`].
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use keyward::usage::{EventKind, Lifecycle, UsageEvent};
    ///
    /// let id = "abcdefABCDEF".parse()?;
    /// let event = UsageEvent::lifecycle(Lifecycle::Revoked, id, "acme", SystemTime::now());
    /// assert_eq!(event.kind(), EventKind::Lifecycle(Lifecycle::Revoked));
    /// assert_eq!(event.owner(), Some("acme"));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn lifecycle(
        lifecycle: Lifecycle,
        key_id: KeyId,
        owner: impl Into<Arc<str>>,
        at: SystemTime,
    ) -> Self {
        Self::bare(
            EventKind::Lifecycle(lifecycle),
            key_id,
            Some(Owner::Name(Box::new(owner.into()))),
            at,
            Outcome::Allowed,
        )
    }

    /// Attaches `tags` (replacing any): for lifecycle events that carry
    /// details, such as where a leaked key was found.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use keyward::usage::{Lifecycle, UsageEvent, UsageTags};
    ///
    /// let id = "abcdefABCDEF".parse()?;
    /// let event = UsageEvent::lifecycle(Lifecycle::LeakReported, id, "acme", SystemTime::now())
    ///     .with_tags(UsageTags::new().with("source", "commit"));
    /// assert_eq!(event.tags().get("source"), Some("commit"));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_tags(mut self, tags: UsageTags) -> Self {
        self.tags = (!tags.is_empty()).then(|| Box::new(tags));
        self
    }

    pub(crate) fn first_used(principal: &Principal, at: SystemTime) -> Self {
        Self::bare(
            EventKind::Lifecycle(Lifecycle::FirstUsed),
            principal.key_id(),
            Some(Owner::Principal(principal.clone())),
            at,
            Outcome::Allowed,
        )
    }

    pub(crate) fn expired_on_use(key_id: KeyId, at: SystemTime) -> Self {
        Self::bare(
            EventKind::Lifecycle(Lifecycle::ExpiredOnUse),
            key_id,
            None,
            at,
            Outcome::Refused(RejectReason::Expired),
        )
    }

    fn bare(
        kind: EventKind,
        key_id: KeyId,
        owner: Option<Owner>,
        at: SystemTime,
        outcome: Outcome,
    ) -> Self {
        Self {
            at,
            latency_nanos: 0,
            request_size: Size::new(None),
            response_size: Size::new(None),
            route: None,
            method: None,
            owner,
            tags: None,
            key_id: Some(key_id),
            status: None,
            outcome,
            kind,
        }
    }

    /// A request, or a lifecycle moment.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// When it happened: for a request, when it arrived (from the layer's
    /// [`Clock`](crate::clock::Clock)).
    pub fn at(&self) -> SystemTime {
        self.at
    }

    /// The id of the key that made the request: the authenticated key, or
    /// the presented key's id when it was refused (for an unknown id, the id
    /// the client sent). `None` when no well-formed key was presented.
    pub fn key_id(&self) -> Option<KeyId> {
        self.key_id
    }

    /// The key's owner, when the key authenticated (or for lifecycle events
    /// that name it).
    pub fn owner(&self) -> Option<&str> {
        match &self.owner {
            Some(Owner::Principal(principal)) => Some(principal.owner()),
            Some(Owner::Name(name)) => Some(name),
            None => None,
        }
    }

    /// The authenticated caller, when there was one.
    pub fn principal(&self) -> Option<&Principal> {
        match &self.owner {
            Some(Owner::Principal(principal)) => Some(principal),
            _ => None,
        }
    }

    /// Whether the key authenticated (a [`Principal`] was found), even if a
    /// later layer refused the request.
    pub fn authenticated(&self) -> bool {
        self.principal().is_some()
    }

    /// The request's method (`None` for lifecycle events).
    pub fn method(&self) -> Option<&Method> {
        self.method.as_ref()
    }

    /// The route: axum's `MatchedPath` (such as `/pets/{id}`) when present,
    /// else the request's path without its query string.
    pub fn route(&self) -> Option<&str> {
        self.route.as_ref().map(Route::as_str)
    }

    /// The response's status (`None` if there was no response).
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// Allowed, or why it was refused.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// From arrival until the response (its head) was ready.
    pub fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos)
    }

    /// [`latency`](UsageEvent::latency) in nanoseconds (saturated), for
    /// counters.
    pub(crate) fn latency_nanos(&self) -> u64 {
        self.latency_nanos
    }

    /// The request body's size, when known in advance.
    pub fn request_size(&self) -> Option<u64> {
        self.request_size.get()
    }

    /// The response body's size, when known in advance.
    pub fn response_size(&self) -> Option<u64> {
        self.response_size.get()
    }

    /// The caller-supplied tags.
    pub fn tags(&self) -> &UsageTags {
        self.tags.as_deref().unwrap_or(&NO_TAGS)
    }
}

impl fmt::Debug for UsageEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageEvent")
            .field("kind", &self.kind)
            .field("at", &self.at)
            .field("key_id", &self.key_id)
            .field("owner", &self.owner())
            .field("method", &self.method)
            .field("route", &self.route())
            .field("status", &self.status)
            .field("outcome", &self.outcome)
            .field("latency", &self.latency())
            .field("request_size", &self.request_size())
            .field("response_size", &self.response_size())
            .field("tags", self.tags())
            .finish()
    }
}

/// The JSON (or other serde) shapes of events: flat, `snake_case`, the same
/// names as the log fields of [`TracingSink`](super::TracingSink); never a
/// key, a hash or a secret (an event holds none).
#[cfg(feature = "serde")]
mod serialize {
    use serde::ser::{SerializeMap, SerializeStruct, Serializer};
    use serde::Serialize;

    use super::{EventKind, Lifecycle, Outcome, UsageEvent, UsageTags};
    use crate::rfc3339::serde::Rfc3339;

    /// `"request"`, or the lifecycle's name (`"issued"`, `"revoked"` …).
    impl Serialize for EventKind {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_str(self.as_str())
        }
    }

    /// Its stable `snake_case` name (`"first_used"` …).
    impl Serialize for Lifecycle {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_str(self.as_str())
        }
    }

    /// `"allowed"`, `"failed"`, `"cancelled"`, or the refusal's reason
    /// (`"wrong_secret"`, `"rate_limited"` …): [`Outcome::as_str`], as the
    /// logs write it.
    impl Serialize for Outcome {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_str(self.as_str())
        }
    }

    /// An object of names to values, in the order they were added; of tags
    /// that share a name, the last (as [`UsageTags::get`] answers).
    impl Serialize for UsageTags {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let tags: Vec<(&str, &str)> = self.iter().collect();
            let last = |i: usize| !tags[i + 1..].iter().any(|(n, _)| *n == tags[i].0);
            let mut map = serializer.serialize_map(None)?;
            for (i, (name, value)) in tags.iter().enumerate() {
                if last(i) {
                    map.serialize_entry(name, value)?;
                }
            }
            map.end()
        }
    }

    /// `{"kind", "at", "key_id", "owner", "authenticated", "method",
    /// "route", "status", "outcome", "latency_us", "request_size",
    /// "response_size", "tags"}`: `at` as RFC 3339 (UTC), absent values as
    /// `null`.
    impl Serialize for UsageEvent {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut out = serializer.serialize_struct("UsageEvent", 13)?;
            out.serialize_field("kind", &self.kind())?;
            out.serialize_field("at", &Rfc3339(self.at()))?;
            out.serialize_field("key_id", &self.key_id())?;
            out.serialize_field("owner", &self.owner())?;
            out.serialize_field("authenticated", &self.authenticated())?;
            out.serialize_field("method", &self.method().map(|m| m.as_str()))?;
            out.serialize_field("route", &self.route())?;
            out.serialize_field("status", &self.status().map(|s| s.as_u16()))?;
            out.serialize_field("outcome", &self.outcome())?;
            let latency_us = u64::try_from(self.latency().as_micros()).unwrap_or(u64::MAX);
            out.serialize_field("latency_us", &latency_us)?;
            out.serialize_field("request_size", &self.request_size())?;
            out.serialize_field("response_size", &self.response_size())?;
            out.serialize_field("tags", self.tags())?;
            out.end()
        }
    }
}
