use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};

use crate::reject::{client_message, retry_after_seconds, RejectReason, Rejection};

/// The wire protocol of a request, read from its `content-type`.
///
/// Keyward answers a refused request in the terms of its protocol: HTTP
/// requests get an HTTP status and a problem-details body, gRPC and gRPC-web
/// requests a trailers-only gRPC status (see the [module docs](super)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// Anything that is not gRPC.
    Http,
    /// gRPC over HTTP/2: `application/grpc`, `application/grpc+proto`,
    /// `application/grpc;...`.
    Grpc,
    /// gRPC-web, binary: `application/grpc-web`, `application/grpc-web+proto`.
    GrpcWeb,
    /// gRPC-web, base64 text: `application/grpc-web-text`,
    /// `application/grpc-web-text+proto`.
    GrpcWebText,
}

impl Protocol {
    /// The protocol of a request with these headers.
    ///
    /// The media type is matched without regard to ASCII case; after
    /// `application/grpc` (or `-web`, `-web-text`) only the end of the
    /// value, a `+` suffix or parameters may follow. `application/grpcx`,
    /// a missing or non-ASCII content type are [`Protocol::Http`].
    pub fn of(headers: &HeaderMap) -> Self {
        headers.get(CONTENT_TYPE).map_or(Protocol::Http, |value| {
            Self::of_content_type(value.as_bytes())
        })
    }

    /// The protocol a `content-type` value announces.
    pub fn of_content_type(content_type: &[u8]) -> Self {
        const GRPC: &[u8] = b"application/grpc";
        let Some(rest) = strip_prefix_ignore_case(content_type, GRPC) else {
            return Protocol::Http;
        };
        if ends_media_type(rest) {
            return Protocol::Grpc;
        }
        if let Some(rest) = strip_prefix_ignore_case(rest, b"-web-text") {
            if ends_media_type(rest) {
                return Protocol::GrpcWebText;
            }
        } else if let Some(rest) = strip_prefix_ignore_case(rest, b"-web") {
            if ends_media_type(rest) {
                return Protocol::GrpcWeb;
            }
        }
        Protocol::Http
    }

    /// Whether this is gRPC or gRPC-web (anything answered with a gRPC
    /// status rather than an HTTP one).
    pub fn is_grpc(&self) -> bool {
        !matches!(self, Protocol::Http)
    }

    /// The `content-type` keyward answers a refusal with.
    fn response_content_type(&self) -> &'static str {
        match self {
            Protocol::GrpcWeb => "application/grpc-web+proto",
            Protocol::GrpcWebText => "application/grpc-web-text+proto",
            _ => "application/grpc",
        }
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

fn ends_media_type(rest: &[u8]) -> bool {
    rest.first()
        .is_none_or(|b| matches!(b, b'+' | b';' | b' ' | b'\t'))
}

/// The gRPC status codes keyward answers refusals with.
///
/// | reason | code |
/// |---|---|
/// | missing key, malformed request, any bad key or signature | `UNAUTHENTICATED` (16) |
/// | insufficient scope, restricted | `PERMISSION_DENIED` (7) |
/// | rate limited, quota exhausted, too many failures | `RESOURCE_EXHAUSTED` (8) |
/// | body too large | `RESOURCE_EXHAUSTED` (8) |
/// | misconfigured (layers stacked wrongly) | `INTERNAL` (13) |
/// | key store unavailable, limiter unavailable | `UNAVAILABLE` (14) |
///
/// A malformed request (the key sent twice, two different keys) is
/// `UNAUTHENTICATED`, not `INVALID_ARGUMENT`: it is the credentials that are
/// wrong, not the call's arguments, and a client should fix its
/// credentials, as it would for HTTP's `400 invalid_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrpcCode {
    /// `PERMISSION_DENIED` (7).
    PermissionDenied,
    /// `RESOURCE_EXHAUSTED` (8).
    ResourceExhausted,
    /// `INTERNAL` (13).
    Internal,
    /// `UNAVAILABLE` (14).
    Unavailable,
    /// `UNAUTHENTICATED` (16).
    Unauthenticated,
}

impl GrpcCode {
    /// The code a refusal for `reason` answers with.
    pub fn for_reason(reason: RejectReason) -> Self {
        match reason {
            RejectReason::InsufficientScope
            | RejectReason::Restricted
            | RejectReason::OriginNotAllowed => GrpcCode::PermissionDenied,
            RejectReason::RateLimited
            | RejectReason::QuotaExhausted
            | RejectReason::TooManyFailures => GrpcCode::ResourceExhausted,
            RejectReason::StoreUnavailable | RejectReason::LimiterUnavailable => {
                GrpcCode::Unavailable
            }
            RejectReason::BodyTooLarge => GrpcCode::ResourceExhausted,
            RejectReason::Misconfigured => GrpcCode::Internal,
            _ => GrpcCode::Unauthenticated,
        }
    }

    /// The numeric code, as sent in `grpc-status`.
    pub fn as_i32(&self) -> i32 {
        match self {
            GrpcCode::PermissionDenied => 7,
            GrpcCode::ResourceExhausted => 8,
            GrpcCode::Internal => 13,
            GrpcCode::Unavailable => 14,
            GrpcCode::Unauthenticated => 16,
        }
    }

    /// The code's name in the gRPC specification, e.g. `UNAUTHENTICATED`.
    pub fn as_str(&self) -> &'static str {
        match self {
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    fn header_value(&self) -> HeaderValue {
        HeaderValue::from_static(match self {
            GrpcCode::PermissionDenied => "7",
            GrpcCode::ResourceExhausted => "8",
            GrpcCode::Internal => "13",
            GrpcCode::Unavailable => "14",
            GrpcCode::Unauthenticated => "16",
        })
    }
}

impl From<RejectReason> for GrpcCode {
    fn from(reason: RejectReason) -> Self {
        GrpcCode::for_reason(reason)
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `grpc-status`.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-retry-pushback-ms`: how long a client with a retry policy waits
/// before retrying (gRPC proposal A6), in milliseconds.
pub const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// The trailers-only response that refuses a gRPC request: HTTP 200, the
/// gRPC content type, `grpc-status`, `grpc-message` and, for a rejection
/// with a retry delay, `retry-after` (whole seconds, rounded up, at least 1)
/// and `grpc-retry-pushback-ms` (milliseconds, rounded up). No body.
pub(crate) fn trailers_only(protocol: Protocol, rejection: &Rejection) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(protocol.response_content_type()),
    );
    headers.insert(
        GRPC_STATUS,
        GrpcCode::for_reason(rejection.reason()).header_value(),
    );
    if let Ok(message) = HeaderValue::try_from(percent_encode(&message(rejection))) {
        headers.insert(GRPC_MESSAGE, message);
    }
    if let Some(wait) = rejection.retry_after() {
        headers.insert(RETRY_AFTER, retry_after_seconds(wait));
        headers.insert(GRPC_RETRY_PUSHBACK_MS, pushback_ms(wait));
    }
    response
}

/// Milliseconds, rounded up: a client told less would retry too soon.
fn pushback_ms(wait: Duration) -> HeaderValue {
    let ms = wait.as_millis() + u128::from(!wait.subsec_nanos().is_multiple_of(1_000_000));
    HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// What the client is told: the coarse class, never the key, its id or the
/// exact reason a key was bad.
fn message(rejection: &Rejection) -> Cow<'static, str> {
    match (rejection.reason(), rejection.required_scopes()) {
        (RejectReason::InsufficientScope, Some(scopes)) if !scopes.is_empty() => {
            format!("This API key lacks the scope this method requires: {scopes}.").into()
        }
        (RejectReason::InsufficientScope, _) => "This API key may not call this method.".into(),
        (reason, _) => client_message(reason).into(),
    }
}

/// Percent-encodes `grpc-message` as the gRPC specification asks: every
/// byte outside `0x20..=0x7E`, and `%` itself, becomes `%XX`.
pub(crate) fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::ScopeSet;
    use proptest::prelude::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        headers
    }

    #[test]
    fn detects_grpc_content_types() {
        for (content_type, protocol) in [
            ("application/grpc", Protocol::Grpc),
            ("application/grpc+proto", Protocol::Grpc),
            ("application/grpc+json", Protocol::Grpc),
            ("application/grpc; charset=utf-8", Protocol::Grpc),
            ("Application/GRPC", Protocol::Grpc),
            ("application/grpc-web", Protocol::GrpcWeb),
            ("application/grpc-web+proto", Protocol::GrpcWeb),
            ("application/grpc-web-text", Protocol::GrpcWebText),
            ("application/grpc-web-text+proto", Protocol::GrpcWebText),
            ("application/grpcx", Protocol::Http),
            ("application/grpc-webx", Protocol::Http),
            ("application/grpc-web-textual", Protocol::Http),
            ("application/grp", Protocol::Http),
            ("application/json", Protocol::Http),
            ("text/application/grpc", Protocol::Http),
            ("", Protocol::Http),
        ] {
            assert_eq!(
                Protocol::of(&headers(content_type)),
                protocol,
                "{content_type}"
            );
        }
        assert_eq!(Protocol::of(&HeaderMap::new()), Protocol::Http);
        let mut non_ascii = HeaderMap::new();
        non_ascii.insert(
            CONTENT_TYPE,
            HeaderValue::from_bytes(b"application/grpc\xff").unwrap(),
        );
        assert_eq!(Protocol::of(&non_ascii), Protocol::Http);
    }

    #[test]
    fn codes_follow_the_reasons() {
        use RejectReason::*;
        for (reason, code) in [
            (MissingKey, 16),
            (InvalidRequest, 16),
            (MalformedKey, 16),
            (UnknownKey, 16),
            (WrongSecret, 16),
            (Expired, 16),
            (NotYetValid, 16),
            (Disabled, 16),
            (Revoked, 16),
            (InsufficientScope, 7),
            (Restricted, 7),
            (OriginNotAllowed, 7),
            (RateLimited, 8),
            (QuotaExhausted, 8),
            (TooManyFailures, 8),
            (StoreUnavailable, 14),
            (LimiterUnavailable, 14),
        ] {
            let grpc = GrpcCode::from(reason);
            assert_eq!(grpc.as_i32(), code, "{reason}");
            let response = trailers_only(Protocol::Grpc, &Rejection::new(reason));
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
            assert_eq!(response.headers()[GRPC_STATUS], code.to_string().as_str());
            assert!(response.body().is_empty());
            let status = tonic::Status::from_header_map(response.headers()).unwrap();
            assert_eq!(status.code() as i32, code);
            assert!(!status.message().is_empty());
        }
    }

    #[test]
    fn bad_keys_are_told_apart_by_nobody() {
        let id: crate::key::KeyId = "abcdefABCDEF".parse().unwrap();
        let first = trailers_only(Protocol::Grpc, &Rejection::new(RejectReason::MalformedKey));
        for reason in [
            RejectReason::UnknownKey,
            RejectReason::WrongSecret,
            RejectReason::Expired,
            RejectReason::Revoked,
        ] {
            let response = trailers_only(Protocol::Grpc, &Rejection::new(reason).with_key_id(id));
            assert_eq!(response.headers(), first.headers());
            let message = response.headers()[GRPC_MESSAGE].to_str().unwrap();
            assert!(!message.contains("abcdefABCDEF"));
        }
    }

    #[test]
    fn retry_delay_is_metadata() {
        let rejection = Rejection::new(RejectReason::RateLimited)
            .with_retry_after(Duration::from_micros(1_200_001));
        let response = trailers_only(Protocol::Grpc, &rejection);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert_eq!(response.headers()[GRPC_RETRY_PUSHBACK_MS], "1201");
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "2");
        assert_eq!(pushback_ms(Duration::from_millis(7)), "7");
        assert_eq!(pushback_ms(Duration::ZERO), "0");
        assert_eq!(pushback_ms(Duration::MAX), u64::MAX.to_string().as_str());
        let plain = trailers_only(Protocol::Grpc, &Rejection::new(RejectReason::Revoked));
        assert!(plain.headers().get(RETRY_AFTER).is_none());
        assert!(plain.headers().get(GRPC_RETRY_PUSHBACK_MS).is_none());
    }

    #[test]
    fn scopes_and_web_content_types() {
        let scopes: ScopeSet = "health:read pets:write".parse().unwrap();
        let rejection =
            Rejection::new(RejectReason::InsufficientScope).with_required_scopes(scopes);
        let response = trailers_only(Protocol::GrpcWeb, &rejection);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "application/grpc-web+proto"
        );
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "This API key lacks the scope this method requires: health:read pets:write."
        );
        let response = trailers_only(Protocol::GrpcWebText, &rejection);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "application/grpc-web-text+proto"
        );
    }

    fn percent_decode(encoded: &str) -> Vec<u8> {
        let bytes = encoded.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        out
    }

    proptest! {
        #[test]
        fn percent_encoding_round_trips(message in any::<String>()) {
            let encoded = percent_encode(&message);
            prop_assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            prop_assert!(HeaderValue::try_from(encoded.as_str()).is_ok());
            prop_assert_eq!(percent_decode(&encoded), message.as_bytes());
        }

        #[test]
        fn detection_never_panics_and_needs_the_prefix(value in proptest::collection::vec(any::<u8>(), 0..40)) {
            let protocol = Protocol::of_content_type(&value);
            if protocol.is_grpc() {
                prop_assert!(value.len() >= 16);
                prop_assert!(value[..16].eq_ignore_ascii_case(b"application/grpc"));
            }
        }

        #[test]
        fn grpc_with_any_suffix_or_parameter(suffix in "[+;][ -~]{0,20}") {
            let grpc = format!("application/grpc{suffix}");
            prop_assert_eq!(Protocol::of_content_type(grpc.as_bytes()), Protocol::Grpc);
            let web = format!("application/grpc-web{suffix}");
            prop_assert_eq!(Protocol::of_content_type(web.as_bytes()), Protocol::GrpcWeb);
        }
    }
}
