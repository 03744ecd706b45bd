use std::task::{Context, Poll};

use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, Request, Response};
use http_body::Body;
use sfv::ListEntry;
use tower_layer::Layer;
use tower_service::Service;

use super::body::{DigestBody, Expected};
use crate::body::ResponseBody;
use crate::future::ResponseFuture;
use crate::reject::{RejectReason, Rejection, Responder};
use crate::signature::input::{dictionary, joined};

/// The `Content-Digest` field (RFC 9530 §2).
pub static CONTENT_DIGEST: HeaderName = HeaderName::from_static("content-digest");

/// The default maximum body a digest is checked over: 2 MiB (axum's
/// default body limit).
pub const DEFAULT_MAX_BODY: u64 = 2 * 1024 * 1024;

/// Checks request bodies against their `Content-Digest` field (RFC 9530)
/// as they stream; see the [module docs](super).
///
/// Stack it *outside* [`AuthLayer`](crate::AuthLayer): signature
/// verification reads the [`DigestStatus`] it leaves in the request and
/// refuses a signed request that this layer did not see.
#[derive(Debug, Clone)]
#[must_use]
pub struct ContentDigestLayer {
    max: u64,
    responder: Responder,
}

impl ContentDigestLayer {
    /// Checks `sha-256` and `sha-512` digests over bodies of at most
    /// [`DEFAULT_MAX_BODY`] bytes.
    pub fn new() -> Self {
        Self {
            max: DEFAULT_MAX_BODY,
            responder: Responder::default(),
        }
    }

    /// The longest body checked, in bytes. A request with a digest and a
    /// longer `Content-Length` is refused with `413`; a longer body without
    /// a length ends in [`ContentDigestError::TooLarge`](super::ContentDigestError).
    /// Requests without `Content-Digest` are not limited.
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max = bytes;
        self
    }

    /// Answers refusals with `responder` (default: problem details).
    pub fn responder(mut self, responder: Responder) -> Self {
        self.responder = responder;
        self
    }
}

impl Default for ContentDigestLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ContentDigestLayer {
    type Service = ContentDigest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ContentDigest {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ContentDigestLayer`].
#[derive(Debug, Clone)]
pub struct ContentDigest<S> {
    inner: S,
    layer: ContentDigestLayer,
}

impl<S> ContentDigest<S> {
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

/// What [`ContentDigestLayer`] saw of a request, left in its extensions
/// for the layers inside (signature verification reads it).
///
/// Only the layer makes one: its presence proves the layer ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestStatus {
    has_body: bool,
    /// The `Content-Digest` field the body is checked against, its lines
    /// joined.
    checked: Option<String>,
}

impl DigestStatus {
    /// What the layer leaves in a request without a body (for unit tests
    /// that verify signatures without running the layer).
    #[cfg(test)]
    pub(crate) fn bodiless() -> Self {
        Self {
            has_body: false,
            checked: None,
        }
    }

    /// Whether the request has a body (one that is not known to be
    /// empty).
    pub fn has_body(&self) -> bool {
        self.has_body
    }

    /// Whether the body is checked against the request's `Content-Digest`
    /// as it streams.
    pub fn is_checked(&self) -> bool {
        self.checked.is_some()
    }

    /// Whether the body is checked against exactly this `Content-Digest`
    /// field (all its lines): what a signature covers must be what the
    /// body is checked against.
    pub(crate) fn checks(&self, headers: &HeaderMap) -> bool {
        match (&self.checked, joined(headers, &CONTENT_DIGEST)) {
            (Some(checked), Ok(Some(now))) => *checked == now,
            _ => false,
        }
    }
}

/// The `Content-Digest` field, parsed: `Ok(None)` when absent or naming
/// only algorithms keyward does not compute (RFC 9530 lets a recipient
/// ignore those); `Err` when malformed.
pub(crate) fn parse(headers: &HeaderMap) -> Result<Option<(Expected, String)>, ()> {
    let Some(field) = joined(headers, &CONTENT_DIGEST).map_err(|_| ())? else {
        return Ok(None);
    };
    let dictionary = dictionary(&field, &CONTENT_DIGEST).map_err(|_| ())?;
    let mut expected = Expected::default();
    for (algorithm, entry) in &dictionary {
        let algorithm = algorithm.as_str();
        if !matches!(algorithm, "sha-256" | "sha-512") {
            continue;
        }
        let ListEntry::Item(item) = entry else {
            return Err(());
        };
        let bytes = item.bare_item.as_byte_sequence().ok_or(())?;
        if algorithm == "sha-256" {
            expected.sha256 = Some(bytes.try_into().map_err(|_| ())?);
        } else {
            expected.sha512 = Some(bytes.try_into().map_err(|_| ())?);
        }
    }
    if expected == Expected::default() {
        return Ok(None);
    }
    Ok(Some((expected, field)))
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ContentDigest<S>
where
    S: Service<Request<DigestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let body = request.body();
        let has_body = !body.is_end_stream() && body.size_hint().exact() != Some(0);
        let parsed = match parse(request.headers()) {
            Ok(parsed) => parsed,
            Err(()) => {
                tracing::info!(
                    target: "keyward::content_digest",
                    "request refused: malformed Content-Digest"
                );
                let rejection = Rejection::new(RejectReason::InvalidRequest);
                return ResponseFuture::rejected(
                    self.layer.responder.refuse(request.headers(), rejection),
                );
            }
        };
        let (mut parts, body) = request.into_parts();
        let (body, checked) = match parsed {
            None => (DigestBody::unchecked(body), None),
            Some((expected, field)) => {
                let length = parts
                    .headers
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if length.is_some_and(|length| length > self.layer.max) {
                    tracing::info!(
                        target: "keyward::content_digest",
                        max = self.layer.max,
                        "request refused: body longer than the maximum"
                    );
                    let rejection = Rejection::new(RejectReason::BodyTooLarge);
                    return ResponseFuture::rejected(
                        self.layer.responder.refuse(&parts.headers, rejection),
                    );
                }
                (
                    DigestBody::checked(body, expected, self.layer.max),
                    Some(field),
                )
            }
        };
        parts.extensions.insert(DigestStatus { has_body, checked });
        ResponseFuture::inner(self.inner.call(Request::from_parts(parts, body)))
    }
}
