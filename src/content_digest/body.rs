use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256, Sha512};

/// The error type of bodies that carry errors of several origins.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a [`DigestBody`] failed: the bytes received are not the ones the
/// `Content-Digest` field describes, or there are too many of them.
///
/// It reaches the handler as the body's error (boxed: find it with
/// `downcast_ref`); the body it belongs to must be thrown away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentDigestError {
    /// The body's digest differs from the `Content-Digest` field.
    #[error("the request body does not match its Content-Digest")]
    Mismatch,
    /// The body is longer than the layer's maximum.
    #[error("the request body is longer than {max} bytes")]
    TooLarge {
        /// The maximum, in bytes.
        max: u64,
    },
}

/// The digests a `Content-Digest` field announces, for the algorithms
/// keyward computes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Expected {
    pub(crate) sha256: Option<[u8; 32]>,
    pub(crate) sha512: Option<[u8; 64]>,
}

pin_project! {
    /// A request body whose bytes are checked against its `Content-Digest`
    /// as they stream through (made by
    /// [`ContentDigestLayer`](super::ContentDigestLayer)).
    ///
    /// Every data frame but the last is passed on as it comes; the last is
    /// held back until the body has ended and its digest matches. On a
    /// mismatch the body ends with [`ContentDigestError::Mismatch`] instead
    /// of its last bytes, so a handler that reads the whole body (axum's
    /// `Bytes`, `Json`, `String`) gets an error, never a good-looking body.
    /// A handler that acts on parts of a stream before its end must treat
    /// them as unverified until the body has ended without error.
    ///
    /// A request without `Content-Digest` (or with only algorithms keyward
    /// does not compute) passes through unchanged and unchecked.
    pub struct DigestBody<B> {
        #[pin]
        inner: B,
        check: Option<Box<Check>>,
    }
}

struct Check {
    expected: Expected,
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
    received: u64,
    max: u64,
    held: Option<Bytes>,
    trailers: Option<HeaderMap>,
    phase: Phase,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Streaming,
    Verified,
    Failed,
}

impl<B> DigestBody<B> {
    /// A body passed through unchecked.
    pub(crate) fn unchecked(inner: B) -> Self {
        Self { inner, check: None }
    }

    /// A body checked against `expected`, at most `max` bytes long.
    pub(crate) fn checked(inner: B, expected: Expected, max: u64) -> Self {
        Self {
            inner,
            check: Some(Box::new(Check {
                sha256: expected.sha256.map(|_| Sha256::new()),
                sha512: expected.sha512.map(|_| Sha512::new()),
                expected,
                received: 0,
                max,
                held: None,
                trailers: None,
                phase: Phase::Streaming,
            })),
        }
    }

    /// Whether the body is checked against a `Content-Digest`.
    pub fn is_checked(&self) -> bool {
        self.check.is_some()
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl Check {
    fn update(&mut self, data: &[u8]) {
        if let Some(hasher) = &mut self.sha256 {
            hasher.update(data);
        }
        if let Some(hasher) = &mut self.sha512 {
            hasher.update(data);
        }
    }

    /// At the body's end: whether every announced digest matches.
    fn matches(&mut self) -> bool {
        let sha256 = match (self.sha256.take(), &self.expected.sha256) {
            (Some(hasher), Some(want)) => hasher.finalize().as_slice() == want.as_slice(),
            _ => true,
        };
        let sha512 = match (self.sha512.take(), &self.expected.sha512) {
            (Some(hasher), Some(want)) => hasher.finalize().as_slice() == want.as_slice(),
            _ => true,
        };
        sha256 && sha512
    }

    fn held_len(&self) -> u64 {
        self.held.as_ref().map_or(0, |b| b.len() as u64)
    }
}

impl<B> Body for DigestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let Some(check) = this.check.as_mut() else {
            return this
                .inner
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(Into::into)));
        };
        loop {
            match check.phase {
                Phase::Failed => return Poll::Ready(None),
                Phase::Verified => {
                    if let Some(data) = check.held.take() {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    return Poll::Ready(check.trailers.take().map(|t| Ok(Frame::trailers(t))));
                }
                Phase::Streaming => {}
            }
            let end = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if data.is_empty() {
                            continue;
                        }
                        check.received = check.received.saturating_add(data.len() as u64);
                        if check.received > check.max {
                            check.phase = Phase::Failed;
                            check.held = None;
                            let error = ContentDigestError::TooLarge { max: check.max };
                            return Poll::Ready(Some(Err(error.into())));
                        }
                        check.update(&data);
                        // Pass the previous frame on; hold this one back
                        // until we know whether it is the last.
                        match check.held.replace(data) {
                            Some(previous) => return Poll::Ready(Some(Ok(Frame::data(previous)))),
                            None => continue,
                        }
                    }
                    // Trailers end the body; other kinds of frame carry
                    // no content and are dropped.
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => Some(trailers),
                        Err(_) => continue,
                    },
                },
                Some(Err(error)) => {
                    check.phase = Phase::Failed;
                    check.held = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
                None => None,
            };
            if check.matches() {
                check.trailers = end;
                check.phase = Phase::Verified;
            } else {
                tracing::info!(
                    target: "keyward::content_digest",
                    received = check.received,
                    "request body refused: it does not match its Content-Digest"
                );
                check.phase = Phase::Failed;
                check.held = None;
                return Poll::Ready(Some(Err(ContentDigestError::Mismatch.into())));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.check {
            None => self.inner.is_end_stream(),
            Some(check) => match check.phase {
                Phase::Streaming => false,
                Phase::Verified => check.held.is_none() && check.trailers.is_none(),
                Phase::Failed => true,
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.check {
            None => self.inner.size_hint(),
            Some(check) => match check.phase {
                Phase::Streaming => {
                    let inner = self.inner.size_hint();
                    let held = check.held_len();
                    let mut hint = SizeHint::new();
                    hint.set_lower(inner.lower().saturating_add(held));
                    if let Some(upper) = inner.upper() {
                        hint.set_upper(upper.saturating_add(held));
                    }
                    hint
                }
                Phase::Verified => SizeHint::with_exact(check.held_len()),
                Phase::Failed => SizeHint::with_exact(0),
            },
        }
    }
}

impl<B> std::fmt::Debug for DigestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestBody")
            .field("checked", &self.check.is_some())
            .finish_non_exhaustive()
    }
}
