//! [`ResponseBody`]: the body of a response that may be a rejection.
//!
//! The layers answer rejections themselves, with a small body of their own,
//! and pass every other response through untouched. `ResponseBody<B>` is
//! either the inner service's `B` or that rejection body, so the layers work
//! with any body type (axum's, tonic's, hyper's) without boxing.
//!
//! # Stacked layers nest the type
//!
//! Each layer that can refuse ([`AuthLayer`](crate::AuthLayer),
//! [`RateLimitLayer`](crate::RateLimitLayer),
//! [`RequireScopes`](crate::RequireScopes),
//! [`MethodScopesLayer`](crate::grpc::MethodScopesLayer)) wraps the body
//! once more; [`UsageLayer`](crate::usage::UsageLayer) does not. Over a
//! `String` body, `AuthLayer` outside `RateLimitLayer` answers
//! `Response<ResponseBody<ResponseBody<String>>>`. This costs nothing at run
//! time (each level is an enum the compiler sees through, never a box), and
//! hyper, axum and tonic take the nested body as it is. It stays nested
//! because a layer cannot tell, in stable Rust, whether its inner service
//! already answers with a `ResponseBody` (that would take specialization);
//! a box would flatten it at the cost of an allocation per response.
//!
//! To read such a body outside axum (in a test, or a client of your own
//! service), [`to_bytes`] collects any body into [`Bytes`] (re-exported
//! from the `bytes` crate), at any depth, without `http-body-util`:
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use keyward::body::{self, ResponseBody};
//! use keyward::limit::{MemoryLimiter, RateLimitLayer};
//! use keyward::{AuthLayer, KeyFormat, MemoryStore};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let service = ServiceBuilder::new()
//!     .layer(AuthLayer::new(MemoryStore::new(), KeyFormat::new("sk_live")?))
//!     .layer(RateLimitLayer::new(MemoryLimiter::new()))
//!     .service(service_fn(|_: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("hello")))
//!     }));
//!
//! let response: Response<ResponseBody<ResponseBody<String>>> =
//!     service.oneshot(Request::get("/").body(String::new())?).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! let bytes = body::to_bytes(response.into_body()).await?;
//! assert!(bytes.starts_with(br#"{"type":"about:blank""#));
//! # Ok(())
//! # }
//! ```
//!
//! # Example
//!
//! ```
//! use http_body::Body as _;
//! use keyward::body::{Bytes, ResponseBody};
//!
//! let body: ResponseBody<String> = ResponseBody::rejection(Bytes::from_static(b"{}"));
//! assert_eq!(body.size_hint().exact(), Some(2));
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// The bytes of a rejection's body, and of [`to_bytes`]'s answer: the
/// `bytes` crate's type, re-exported so that you need no dependency on it.
pub use bytes::Bytes;

pin_project! {
    /// The inner service's body, or a rejection's.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Rejection { bytes: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A complete body made of `bytes`.
    pub fn rejection(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Rejection {
                bytes: (!bytes.is_empty()).then_some(bytes),
            },
        }
    }
}

impl<B: Default> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::inner(B::default())
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Rejection { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Rejection { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Rejection { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// Reads a whole body into one [`Bytes`]: a keyward [`ResponseBody`] (at
/// any depth of nesting) or any other [`http_body::Body`]. Trailers are
/// skipped.
///
/// For responses of your own service (tests, clients): it keeps the whole
/// body in memory, with no limit, so do not use it on a body an untrusted
/// peer sends. A body of one chunk is returned without copying.
pub async fn to_bytes<B>(body: B) -> Result<Bytes, B::Error>
where
    B: Body,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let Ok(mut data) = frame?.into_data() else {
            continue; // trailers
        };
        let chunk = data.copy_to_bytes(data.remaining());
        match &first {
            None => first = Some(chunk),
            Some(head) => {
                if rest.is_empty() {
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        Bytes::from(rest)
    })
}
