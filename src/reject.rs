//! Rejections: why a request was refused ([`Rejection`], [`RejectReason`])
//! and how the refusal is answered ([`Responder`]).
//!
//! Every layer answers a refusal with an `Ok` response, never a service
//! error, and puts the [`Rejection`] in that response's extensions, where
//! usage recording and your own middleware can read the exact reason. The
//! client learns less: every kind of bad key gets the same `401`, so that
//! nobody can tell an unknown id from a wrong secret or a revoked key.
//!
//! | reason | status | `WWW-Authenticate` (RFC 6750) |
//! |---|---|---|
//! | missing key | 401 | `Bearer realm="api"` |
//! | malformed request (key sent twice, two keys), two kinds of credential | 400 | `error="invalid_request"` |
//! | malformed, unknown, wrong, expired, not yet valid, disabled, revoked key; bad, stale or replayed signature; a JWT's claims not accepted | 401 | `error="invalid_token"` |
//! | insufficient scope | 403 | `error="insufficient_scope", scope="..."` |
//! | restricted (network, environment) | 403 | none |
//! | origin not allowed (publishable keys) | 403 | none |
//! | rate limited, quota exhausted, too many failures | 429 + `Retry-After` | none |
//! | key store unavailable, limiter unavailable | 503 | none |
//! | body too large (a `Content-Digest` check's maximum) | 413 | none |
//! | misconfigured (layers stacked wrongly for a credential) | 500 | none |
//!
//! Bodies are RFC 9457 `application/problem+json`. Replace them with
//! [`Responder::custom`].
//!
//! gRPC requests are refused in gRPC's terms (a trailers-only response with
//! `grpc-status`); see [`grpc`](crate::grpc).
//!
//! # Example
//!
//! ```
//! use http::StatusCode;
//! use keyward::reject::{RejectReason, Rejection, Responder};
//!
//! let rejection = Rejection::new(RejectReason::Revoked);
//! let response = Responder::problem_json("pets").respond(&rejection);
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(
//!     response.headers()["www-authenticate"],
//!     r#"Bearer realm="pets", error="invalid_token""#
//! );
//! // The body says the key is bad, not that it was revoked.
//! assert!(!String::from_utf8_lossy(response.body()).contains("revoked\""));
//! ```

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, CONTENT_TYPE, ORIGIN,
    RETRY_AFTER, VARY, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Response, StatusCode};

use crate::clock::whole_seconds;
use crate::key::KeyId;
use crate::scope::ScopeSet;

/// Why a request was refused. Logged and recorded; the client sees only the
/// coarse class (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// No key was presented.
    MissingKey,
    /// The credentials were malformed as a request: the key header sent
    /// twice, two different keys, an empty bearer token.
    InvalidRequest,
    /// The presented string is not a key of this format: wrong length,
    /// prefix, characters or checksum, too long, or not ASCII.
    MalformedKey,
    /// Well-formed, but no record has this id.
    UnknownKey,
    /// The record exists, but the secret does not match its hash.
    WrongSecret,
    /// Past the key's expiry.
    Expired,
    /// Before the key's not-before time.
    NotYetValid,
    /// The key is disabled.
    Disabled,
    /// The key is revoked.
    Revoked,
    /// The key lacks a scope the route requires.
    InsufficientScope,
    /// A restriction on the key (client network, environment) refused it.
    Restricted,
    /// A rate-limit policy of the key is exhausted for now.
    RateLimited,
    /// The key's credit quota is used up until it refills.
    QuotaExhausted,
    /// Too many refused keys from this client; it must wait.
    TooManyFailures,
    /// The key store failed (a look-up returned an error), or the record it
    /// returned cannot be verified here (its hash names a pepper this
    /// service lacks, logged as [`UnknownPepper`](crate::key::UnknownPepper));
    /// refused, fail closed.
    StoreUnavailable,
    /// The rate limiter's backend failed; refused, fail closed (unless the
    /// [`RateLimitLayer`](crate::limit::RateLimitLayer) was told to fail
    /// open). Its own reason, so that dashboards tell a limiter outage
    /// from a key-store outage.
    LimiterUnavailable,
    /// A signed request (HTTP Message Signatures) whose signature is
    /// malformed, does not cover what it must, or does not verify.
    BadSignature,
    /// A signature created too long ago or too far ahead (outside the
    /// verifier's window), or past its `expires`.
    StaleSignature,
    /// A signature already seen: a captured request sent again.
    ReplayedSignature,
    /// The request body is larger than the configured maximum.
    BodyTooLarge,
    /// The server's layers are stacked wrongly for this credential (for
    /// example, signed requests without
    /// `content_digest::ContentDigestLayer`); refused, fail closed.
    Misconfigured,
    /// The request carries two different kinds of credential (an API key
    /// and a signature, a JWT and a publishable key, …): which one should
    /// count is not the server's to guess. Answered like
    /// [`InvalidRequest`](Self::InvalidRequest), `400 invalid_request`.
    TwoCredentials,
    /// A publishable key (or one restricted to origins) sent from a missing,
    /// `null`, malformed or not allowed `Origin` (or `Referer`): see
    /// [`auth::origin`](crate::auth::origin).
    OriginNotAllowed,
    /// A JWT whose claims are not accepted: wrong or missing issuer or
    /// audience, no `exp` or `sub`, a malformed `scope`, a `jti` that names
    /// no record, or scopes or owner its record does not grant.
    InvalidClaims,
}

impl RejectReason {
    /// Every reason, in declaration order (`reason as usize` indexes it):
    /// for counters and dashboards that keep one slot a reason.
    pub const ALL: [RejectReason; 24] = [
        RejectReason::MissingKey,
        RejectReason::InvalidRequest,
        RejectReason::MalformedKey,
        RejectReason::UnknownKey,
        RejectReason::WrongSecret,
        RejectReason::Expired,
        RejectReason::NotYetValid,
        RejectReason::Disabled,
        RejectReason::Revoked,
        RejectReason::InsufficientScope,
        RejectReason::Restricted,
        RejectReason::RateLimited,
        RejectReason::QuotaExhausted,
        RejectReason::TooManyFailures,
        RejectReason::StoreUnavailable,
        RejectReason::LimiterUnavailable,
        RejectReason::BadSignature,
        RejectReason::StaleSignature,
        RejectReason::ReplayedSignature,
        RejectReason::BodyTooLarge,
        RejectReason::Misconfigured,
        RejectReason::TwoCredentials,
        RejectReason::OriginNotAllowed,
        RejectReason::InvalidClaims,
    ];

    /// A stable `snake_case` name, for logs and usage records.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::MissingKey => "missing_key",
            RejectReason::InvalidRequest => "invalid_request",
            RejectReason::MalformedKey => "malformed_key",
            RejectReason::UnknownKey => "unknown_key",
            RejectReason::WrongSecret => "wrong_secret",
            RejectReason::Expired => "expired",
            RejectReason::NotYetValid => "not_yet_valid",
            RejectReason::Disabled => "disabled",
            RejectReason::Revoked => "revoked",
            RejectReason::InsufficientScope => "insufficient_scope",
            RejectReason::Restricted => "restricted",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::QuotaExhausted => "quota_exhausted",
            RejectReason::TooManyFailures => "too_many_failures",
            RejectReason::StoreUnavailable => "store_unavailable",
            RejectReason::LimiterUnavailable => "limiter_unavailable",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::StaleSignature => "stale_signature",
            RejectReason::ReplayedSignature => "replayed_signature",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::Misconfigured => "misconfigured",
            RejectReason::TwoCredentials => "two_credentials",
            RejectReason::OriginNotAllowed => "origin_not_allowed",
            RejectReason::InvalidClaims => "invalid_claims",
        }
    }

    /// Whether a key was presented but is not usable: these all answer the
    /// same `401 invalid_token`.
    pub fn is_invalid_key(&self) -> bool {
        matches!(
            self,
            RejectReason::MalformedKey
                | RejectReason::UnknownKey
                | RejectReason::WrongSecret
                | RejectReason::Expired
                | RejectReason::NotYetValid
                | RejectReason::Disabled
                | RejectReason::Revoked
                | RejectReason::BadSignature
                | RejectReason::StaleSignature
                | RejectReason::ReplayedSignature
                | RejectReason::InvalidClaims
        )
    }

    /// The HTTP status this reason answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            RejectReason::InvalidRequest | RejectReason::TwoCredentials => StatusCode::BAD_REQUEST,
            RejectReason::InsufficientScope
            | RejectReason::Restricted
            | RejectReason::OriginNotAllowed => StatusCode::FORBIDDEN,
            RejectReason::RateLimited
            | RejectReason::QuotaExhausted
            | RejectReason::TooManyFailures => StatusCode::TOO_MANY_REQUESTS,
            RejectReason::StoreUnavailable | RejectReason::LimiterUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RejectReason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RejectReason::Misconfigured => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Its stable `snake_case` name ([`RejectReason::as_str`]), as the logs
/// and usage records write it.
#[cfg(feature = "serde")]
impl serde::Serialize for RejectReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Why a record cannot be used now, as the reason a request is refused.
impl From<crate::record::Invalidity> for RejectReason {
    fn from(invalidity: crate::record::Invalidity) -> Self {
        use crate::record::Invalidity;
        match invalidity {
            Invalidity::Expired => Self::Expired,
            Invalidity::NotYetValid => Self::NotYetValid,
            Invalidity::Disabled => Self::Disabled,
            Invalidity::Revoked => Self::Revoked,
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: the reason and what the response needs to say.
///
/// Found in the extensions of every response a keyward layer refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    reason: RejectReason,
    key_id: Option<KeyId>,
    required_scopes: Option<ScopeSet>,
    retry_after: Option<Duration>,
    violated_policies: Vec<Arc<str>>,
}

impl Rejection {
    /// A rejection for `reason`, with nothing else known.
    pub fn new(reason: RejectReason) -> Self {
        Self {
            reason,
            key_id: None,
            required_scopes: None,
            retry_after: None,
            violated_policies: Vec::new(),
        }
    }

    /// Notes the id of the presented key (for logs; never sent to clients).
    #[must_use]
    pub fn with_key_id(mut self, id: KeyId) -> Self {
        self.key_id = Some(id);
        self
    }

    /// Notes the scopes the route required.
    #[must_use]
    pub fn with_required_scopes(mut self, scopes: ScopeSet) -> Self {
        self.required_scopes = Some(scopes);
        self
    }

    /// Notes how long the client must wait before trying again.
    #[must_use]
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// Notes the name of a limit policy that refused the request.
    #[must_use]
    pub fn with_violated_policy(mut self, name: impl Into<Arc<str>>) -> Self {
        self.violated_policies.push(name.into());
        self
    }

    /// Why the request was refused.
    pub fn reason(&self) -> RejectReason {
        self.reason
    }

    /// The HTTP status of the default response.
    pub fn status(&self) -> StatusCode {
        self.reason.status()
    }

    /// The presented key's id, if it was well-formed.
    pub fn key_id(&self) -> Option<KeyId> {
        self.key_id
    }

    /// The scopes the route required, for [`RejectReason::InsufficientScope`].
    pub fn required_scopes(&self) -> Option<&ScopeSet> {
        self.required_scopes.as_ref()
    }

    /// How long to wait before trying again, for the 429 reasons.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The names of the limit policies that refused the request.
    pub fn violated_policies(&self) -> &[Arc<str>] {
        &self.violated_policies
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request refused: {}", self.reason)?;
        if let Some(id) = self.key_id {
            write!(f, " (key id {id})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejection {}

/// Turns a [`Rejection`] into the response the client gets.
///
/// Cheap to clone. The default, [`Responder::problem_json`] with realm
/// `"api"`, answers RFC 9457 problem details with RFC 6750 challenges.
///
/// # Refusals a browser can read
///
/// When the refused request carries a well-formed `Origin` (a browser's
/// cross-origin request, such as one with a publishable key), the refusal
/// also carries `Access-Control-Allow-Origin` echoing that origin, `Vary:
/// Origin`, and `Access-Control-Expose-Headers` naming `WWW-Authenticate`,
/// `Retry-After`, `RateLimit` and `RateLimit-Policy`, so that the page can
/// show why it was refused and when to retry. A refusal says nothing a
/// page from any origin may not know (the same static text for every bad
/// key), and no `Access-Control-Allow-Credentials` is sent, so cookies
/// never ride along. A `null` or malformed `Origin` gets no such header.
/// A response that already has `Access-Control-Allow-Origin` (set by a
/// [`custom`](Self::custom) responder) is left as it is. Preflight
/// (`OPTIONS`) requests and successful answers are the business of a CORS
/// layer (tower-http's `CorsLayer`) outside keyward's layers, which then
/// also decides these headers. Turn this off with
/// [`without_cors`](Self::without_cors).
#[derive(Clone)]
pub struct Responder {
    respond: Arc<RespondFn>,
    cors: bool,
}

type RespondFn = dyn Fn(&Rejection) -> Response<Bytes> + Send + Sync;

impl Responder {
    /// Problem details with `WWW-Authenticate: Bearer realm="<realm>"`.
    ///
    /// Characters of `realm` that a quoted string cannot hold are replaced
    /// by `?`.
    pub fn problem_json(realm: &str) -> Self {
        let realm: Arc<str> = quoted_string_safe(realm).into();
        // The answers without a variable part are rendered once.
        let rendered: Vec<Response<Bytes>> = RejectReason::ALL
            .iter()
            .map(|&reason| problem_response(&realm, &Rejection::new(reason)))
            .collect();
        Self::from_fn(Arc::new(move |rejection| {
            let plain =
                rejection.required_scopes().is_none() && rejection.violated_policies().is_empty();
            match rendered.get(rejection.reason() as usize) {
                Some(done) if plain => copy_response(done, rejection.retry_after()),
                _ => problem_response(&realm, rejection),
            }
        }))
    }

    /// Your own response for every rejection. Keyward still puts the
    /// [`Rejection`] into the response's extensions afterwards.
    ///
    /// The body is anything that converts into [`Bytes`]: a `String`, a
    /// `Vec<u8>`, a `&'static str`, or `Bytes` itself (re-exported as
    /// [`keyward::body::Bytes`](crate::body::Bytes)), so no dependency on
    /// `bytes` is needed. It is converted once per refusal, without copying
    /// (`String` and `Vec<u8>` hand over their buffer).
    ///
    /// It answers HTTP requests; gRPC requests get keyward's gRPC status
    /// (see [`Responder::refuse`]).
    ///
    /// ```
    /// use http::{Response, StatusCode};
    /// use keyward::reject::{RejectReason, Rejection, Responder};
    ///
    /// let responder = Responder::custom(|rejection: &Rejection| {
    ///     Response::builder()
    ///         .status(rejection.status())
    ///         .header("content-type", "text/plain")
    ///         .body(format!("refused: {}", rejection.status().as_u16()))
    ///         .unwrap()
    /// });
    /// let response = responder.respond(&Rejection::new(RejectReason::Expired));
    /// assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    /// assert_eq!(response.body(), "refused: 401");
    /// ```
    pub fn custom<F, B>(respond: F) -> Self
    where
        F: Fn(&Rejection) -> Response<B> + Send + Sync + 'static,
        B: Into<Bytes>,
    {
        Self::from_fn(Arc::new(move |rejection| {
            respond(rejection).map(Into::into)
        }))
    }

    fn from_fn(respond: Arc<RespondFn>) -> Self {
        Self {
            respond,
            cors: true,
        }
    }

    /// Refusals carry no CORS headers (see [refusals a browser can
    /// read](Self#refusals-a-browser-can-read)): browsers then hide them
    /// from cross-origin pages, unless a CORS layer outside adds them.
    pub fn without_cors(mut self) -> Self {
        self.cors = false;
        self
    }

    /// The response for `rejection`.
    pub fn respond(&self, rejection: &Rejection) -> Response<Bytes> {
        (self.respond)(rejection)
    }

    /// The response that refuses a request with these headers: the
    /// responder's answer, with `rejection` in its extensions. Every layer
    /// refuses through here.
    ///
    /// A gRPC or gRPC-web request (by its `content-type`) is answered in
    /// gRPC's terms instead: a trailers-only response with `grpc-status`
    /// and `grpc-message` (see [`grpc`](crate::grpc)), whatever the responder.
    pub fn refuse(&self, request_headers: &HeaderMap, rejection: Rejection) -> Response<Bytes> {
        let mut response = match crate::grpc::Protocol::of(request_headers) {
            crate::grpc::Protocol::Http => self.respond(&rejection),
            protocol => crate::grpc::trailers_only(protocol, &rejection),
        };
        if self.cors {
            allow_origin(request_headers, response.headers_mut());
        }
        response.extensions_mut().insert(rejection);
        response
    }
}

impl Default for Responder {
    fn default() -> Self {
        Self::problem_json("api")
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

/// The headers a page may read from a refusal.
const EXPOSED: HeaderValue =
    HeaderValue::from_static("www-authenticate, retry-after, ratelimit, ratelimit-policy");

/// Lets a browser show a refusal to the page that sent the request: see
/// [refusals a browser can read](Responder#refusals-a-browser-can-read).
fn allow_origin(request_headers: &HeaderMap, response_headers: &mut HeaderMap) {
    if response_headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
        return;
    }
    let mut origins = request_headers.get_all(ORIGIN).iter();
    let (Some(origin), None) = (origins.next(), origins.next()) else {
        return;
    };
    // Echoed only when it is an origin (never `null`, never junk).
    if origin
        .to_str()
        .ok()
        .and_then(crate::auth::origin::OriginRef::parse_origin)
        .is_none()
    {
        return;
    }
    response_headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    response_headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
    response_headers.append(VARY, HeaderValue::from_static("origin"));
}

const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

fn problem_response(realm: &str, rejection: &Rejection) -> Response<Bytes> {
    let reason = rejection.reason();
    let status = reason.status();
    let mut builder = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/problem+json");

    let challenge = match reason {
        RejectReason::MissingKey => Some(format!(r#"Bearer realm="{realm}""#)),
        RejectReason::InvalidRequest | RejectReason::TwoCredentials => Some(format!(
            r#"Bearer realm="{realm}", error="invalid_request""#
        )),
        RejectReason::InsufficientScope => Some(match rejection.required_scopes() {
            Some(scopes) => {
                format!(r#"Bearer realm="{realm}", error="insufficient_scope", scope="{scopes}""#)
            }
            None => format!(r#"Bearer realm="{realm}", error="insufficient_scope""#),
        }),
        r if r.is_invalid_key() => {
            Some(format!(r#"Bearer realm="{realm}", error="invalid_token""#))
        }
        _ => None,
    };
    if let Some(value) = challenge.and_then(|c| HeaderValue::try_from(c).ok()) {
        builder = builder.header(WWW_AUTHENTICATE, value);
    }
    if let Some(wait) = rejection.retry_after() {
        builder = builder.header(RETRY_AFTER, retry_after_seconds(wait));
    }

    let problem_type = match reason {
        RejectReason::RateLimited | RejectReason::QuotaExhausted => QUOTA_EXCEEDED,
        _ => "about:blank",
    };
    let detail: std::borrow::Cow<'static, str> = match (reason, rejection.required_scopes()) {
        (RejectReason::InsufficientScope, Some(scopes)) => {
            format!("This API key lacks the scope this route requires: {scopes}.").into()
        }
        _ => client_message(reason).into(),
    };

    let mut body = String::with_capacity(160);
    body.push_str(r#"{"type":"#);
    push_json_string(&mut body, problem_type);
    let _ = write!(body, r#","title":"#);
    push_json_string(&mut body, status.canonical_reason().unwrap_or("Error"));
    let _ = write!(body, r#","status":{},"detail":"#, status.as_u16());
    push_json_string(&mut body, &detail);
    if let Some(scopes) = rejection.required_scopes() {
        body.push_str(r#","required_scopes":["#);
        for (i, scope) in scopes.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            push_json_string(&mut body, scope.as_str());
        }
        body.push(']');
    }
    if !rejection.violated_policies().is_empty() {
        body.push_str(r#","violated-policies":["#);
        for (i, policy) in rejection.violated_policies().iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            push_json_string(&mut body, policy);
        }
        body.push(']');
    }
    body.push('}');

    builder
        .body(Bytes::from(body))
        .unwrap_or_else(|_| fallback_response(status))
}

/// Whole seconds, rounded up, and at least 1 for any wait: a client told
/// `0` would retry at once and be refused again.
pub(crate) fn retry_after_seconds(wait: Duration) -> HeaderValue {
    HeaderValue::from(whole_seconds(wait).max(1))
}

/// What the client is told for `reason`, over HTTP and gRPC alike: the
/// coarse class, never which kind of bad key it was.
pub(crate) fn client_message(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::MissingKey => "An API key is required.",
        RejectReason::InvalidRequest => {
            "The request carries its credentials more than once or malformed."
        }
        RejectReason::TwoCredentials => {
            "The request carries two kinds of credential; send exactly one."
        }
        RejectReason::InsufficientScope => "This API key lacks a scope this route requires.",
        RejectReason::Restricted => "This API key may not be used from here.",
        RejectReason::RateLimited | RejectReason::QuotaExhausted => {
            "This API key has used up its quota for now; retry later."
        }
        RejectReason::TooManyFailures => "Too many requests with invalid API keys; retry later.",
        RejectReason::StoreUnavailable => "API keys cannot be checked right now; retry later.",
        RejectReason::LimiterUnavailable => "Rate limits cannot be checked right now; retry later.",
        RejectReason::BodyTooLarge => "The request body is larger than this API accepts.",
        RejectReason::Misconfigured => "These credentials cannot be checked by this server.",
        RejectReason::OriginNotAllowed => {
            "This API key may only be used from the websites it was issued for: the request's Origin (or Referer) is missing, null or not one of them."
        }
        _ => "The API key is invalid, expired or revoked.",
    }
}

/// A copy of a pre-rendered answer (its header values and body are shared,
/// not copied), with `Retry-After` if there is a wait.
fn copy_response(done: &Response<Bytes>, retry_after: Option<Duration>) -> Response<Bytes> {
    let mut response = Response::new(done.body().clone());
    *response.status_mut() = done.status();
    *response.headers_mut() = done.headers().clone();
    if let Some(wait) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, retry_after_seconds(wait));
    }
    response
}

fn fallback_response(status: StatusCode) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = status;
    response
}

fn quoted_string_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => c,
            _ => '?',
        })
        .collect()
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(response: &Response<Bytes>) -> String {
        String::from_utf8(response.body().to_vec()).unwrap()
    }

    #[test]
    fn missing_key_has_no_error_code() {
        let response = Responder::default().respond(&Rejection::new(RejectReason::MissingKey));
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="api""#
        );
        assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
    }

    #[test]
    fn all_bad_keys_answer_alike() {
        let responder = Responder::default();
        let reasons = [
            RejectReason::MalformedKey,
            RejectReason::UnknownKey,
            RejectReason::WrongSecret,
            RejectReason::Expired,
            RejectReason::NotYetValid,
            RejectReason::Disabled,
            RejectReason::Revoked,
            RejectReason::BadSignature,
            RejectReason::StaleSignature,
            RejectReason::ReplayedSignature,
            RejectReason::InvalidClaims,
        ];
        let first = responder.respond(&Rejection::new(reasons[0]));
        for reason in reasons {
            let id: KeyId = "abcdefABCDEF".parse().unwrap();
            let response = responder.respond(&Rejection::new(reason).with_key_id(id));
            assert_eq!(response.status(), first.status());
            assert_eq!(response.headers(), first.headers());
            assert_eq!(body(&response), body(&first));
            assert!(!body(&response).contains("abcdefABCDEF"));
        }
    }

    #[test]
    fn insufficient_scope_names_the_scopes() {
        let scopes: ScopeSet = "pets:write".parse().unwrap();
        let response = Responder::default()
            .respond(&Rejection::new(RejectReason::InsufficientScope).with_required_scopes(scopes));
        assert_eq!(response.status(), 403);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="api", error="insufficient_scope", scope="pets:write""#
        );
        let json: serde_json::Value = serde_json::from_str(&body(&response)).unwrap();
        assert_eq!(json["required_scopes"][0], "pets:write");
        assert_eq!(json["status"], 403);
    }

    #[test]
    fn rate_limited_rounds_retry_after_up() {
        let response = Responder::default().respond(
            &Rejection::new(RejectReason::RateLimited)
                .with_retry_after(Duration::from_millis(200))
                .with_violated_policy("burst\"x"),
        );
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let json: serde_json::Value = serde_json::from_str(&body(&response)).unwrap();
        assert_eq!(json["type"], QUOTA_EXCEEDED);
        assert_eq!(json["violated-policies"][0], "burst\"x");
        assert_eq!(retry_after_seconds(Duration::from_millis(2001)), "3");
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), "2");
        assert_eq!(retry_after_seconds(Duration::ZERO), "1");
    }

    #[test]
    fn refusals_are_readable_by_the_page_that_sent_them() {
        let rejection = Rejection::new(RejectReason::OriginNotAllowed);
        let with_origin = |origin: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(ORIGIN, origin.parse().unwrap());
            headers
        };
        let response =
            Responder::default().refuse(&with_origin("https://evil.example"), rejection.clone());
        assert_eq!(response.status(), 403);
        assert_eq!(
            response.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://evil.example"
        );
        assert_eq!(response.headers()[VARY], "origin");
        assert!(response.headers()[ACCESS_CONTROL_EXPOSE_HEADERS]
            .to_str()
            .unwrap()
            .contains("retry-after"));
        assert!(!response
            .headers()
            .contains_key("access-control-allow-credentials"));
        let json: serde_json::Value = serde_json::from_str(&body(&response)).unwrap();
        assert!(json["detail"].as_str().unwrap().contains("Origin"));
        for origin in ["null", "https://a.example/path", "junk"] {
            let response = Responder::default().refuse(&with_origin(origin), rejection.clone());
            assert!(
                !response.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN),
                "{origin}"
            );
        }
        let response = Responder::default().refuse(&HeaderMap::new(), rejection.clone());
        assert!(!response.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        let response = Responder::default()
            .without_cors()
            .refuse(&with_origin("https://app.example"), rejection);
        assert!(!response.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    #[test]
    fn realm_is_sanitized() {
        let response =
            Responder::problem_json("a\"b\\c\n").respond(&Rejection::new(RejectReason::MissingKey));
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="a?b?c?""#
        );
    }

    #[test]
    fn pre_rendered_answers_match_fresh_ones() {
        for (i, &reason) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(reason as usize, i);
            for wait in [None, Some(Duration::from_millis(1500))] {
                let mut rejection = Rejection::new(reason);
                if let Some(wait) = wait {
                    rejection = rejection.with_retry_after(wait);
                }
                let fresh = problem_response("api", &rejection);
                let cached = Responder::problem_json("api").respond(&rejection);
                assert_eq!(cached.status(), fresh.status());
                assert_eq!(cached.headers(), fresh.headers());
                assert_eq!(cached.body(), fresh.body());
            }
        }
    }
}
