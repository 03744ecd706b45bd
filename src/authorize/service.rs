use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::{RequireScopes, ResponseFuture};
use crate::auth::Principal;
use crate::body::ResponseBody;
use crate::reject::{RejectReason, Rejection};

/// The service made by [`RequireScopes`].
#[derive(Debug, Clone)]
pub struct RequireScopesService<S> {
    inner: S,
    layer: RequireScopes,
}

impl<S> RequireScopesService<S> {
    pub(crate) fn new(inner: S, layer: RequireScopes) -> Self {
        Self { inner, layer }
    }

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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireScopesService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Inlined into the outer layer's `call`, so that this future is built
    // where the outer one keeps it instead of being moved there.
    #[inline]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(principal) = request.extensions().get::<Principal>() else {
            tracing::warn!(
                target: "keyward::authorize",
                "RequireScopes found no Principal: is it stacked inside AuthLayer? answering 401"
            );
            let rejection = Rejection::new(RejectReason::MissingKey);
            return ResponseFuture::rejected(
                self.layer.responder.refuse(request.headers(), rejection),
            );
        };
        match self.layer.policy.refusal(principal.scopes()) {
            None => ResponseFuture::inner(self.inner.call(request)),
            Some(named) => {
                let key_id = principal.key_id();
                tracing::info!(
                    target: "keyward::authorize",
                    key_id = %key_id,
                    required = %named,
                    any = self.layer.is_any(),
                    "request refused: insufficient scope"
                );
                let rejection = Rejection::new(RejectReason::InsufficientScope)
                    .with_key_id(key_id)
                    .with_required_scopes(named);
                ResponseFuture::rejected(self.layer.responder.refuse(request.headers(), rejection))
            }
        }
    }
}
