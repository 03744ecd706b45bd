use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::layer::MethodScopesConfig;
use super::ResponseFuture;
use crate::auth::Principal;
use crate::body::ResponseBody;
use crate::reject::{RejectReason, Rejection};

/// The service made by [`MethodScopesLayer`](super::MethodScopesLayer).
#[derive(Debug, Clone)]
pub struct MethodScopes<S> {
    inner: S,
    config: Arc<MethodScopesConfig>,
}

impl<S> MethodScopes<S> {
    pub(crate) fn new(inner: S, config: Arc<MethodScopesConfig>) -> Self {
        Self { inner, config }
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MethodScopes<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match check(&self.config, &request) {
            Ok(()) => ResponseFuture::inner(self.inner.call(request)),
            Err(rejection) => {
                ResponseFuture::rejected(self.config.responder.refuse(request.headers(), rejection))
            }
        }
    }
}

fn check<B>(config: &MethodScopesConfig, request: &Request<B>) -> Result<(), Rejection> {
    let method = request.uri().path();
    let Some(principal) = request.extensions().get::<Principal>() else {
        tracing::warn!(
            target: "keyward::grpc",
            method,
            "no Principal in the request: is MethodScopesLayer inside AuthLayer? answering unauthenticated"
        );
        return Err(Rejection::new(RejectReason::MissingKey));
    };
    let key_id = principal.key_id();
    let Some(required) = config.table.lookup(method) else {
        tracing::info!(target: "keyward::grpc", %key_id, method, "method not listed; refused");
        return Err(Rejection::new(RejectReason::InsufficientScope).with_key_id(key_id));
    };
    let granted = principal.scopes();
    if required.iter().all(|scope| granted.grants(scope)) {
        Ok(())
    } else {
        tracing::info!(
            target: "keyward::grpc",
            %key_id,
            method,
            required = %required,
            "key lacks a scope the method requires; refused"
        );
        Err(Rejection::new(RejectReason::InsufficientScope)
            .with_key_id(key_id)
            .with_required_scopes(required.clone()))
    }
}
