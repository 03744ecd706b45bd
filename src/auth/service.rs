use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::authenticator::Begun;
use super::future::ResponseFuture;
use super::layer::AuthConfig;
use super::source::{self, Presented};
use super::Principal;
use crate::body::ResponseBody;
use crate::reject::{RejectReason, Rejection};

/// The service made by [`AuthLayer`](super::AuthLayer).
///
/// A `Service` when `S` is `Clone`: the inner service is called after an
/// awaited look-up (see [the module docs](super#the-inner-service-must-be-clone)).
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    config: Arc<AuthConfig>,
}

impl<S> AuthService<S> {
    pub(crate) fn new(inner: S, config: Arc<AuthConfig>) -> Self {
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AuthService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        // Resolved once, here, when the throttle needs it; `restrict`
        // reuses it (and resolves it itself otherwise, only for keys with
        // allowed networks).
        let resolved = config
            .throttle
            .is_some()
            .then(|| config.trusted_proxies.client_addr(&request));
        let client = resolved.flatten();
        let (begun, sources) = match source::extract(&config.sources, &request) {
            Ok(Some(Presented { key, sources })) => {
                if let Some(wait) = client.and_then(|ip| config.throttle.as_ref()?.blocked(ip)) {
                    // Refused before any look-up: guessing costs the guesser.
                    #[cfg(feature = "metrics")]
                    crate::metrics::throttle_hit();
                    let rejection =
                        Rejection::new(RejectReason::TooManyFailures).with_retry_after(wait);
                    return ResponseFuture::rejected(config.refuse(
                        request.headers(),
                        rejection,
                        client,
                    ));
                }
                (config.authenticator.begin(key), sources)
            }
            Ok(None) => {
                tracing::debug!(target: "keyward::auth", "no API key presented");
                let rejection = Rejection::new(RejectReason::MissingKey);
                return ResponseFuture::rejected(config.refuse(
                    request.headers(),
                    rejection,
                    client,
                ));
            }
            Err(reason) => {
                tracing::info!(target: "keyward::auth", %reason, "API key refused");
                let rejection = Rejection::new(reason);
                return ResponseFuture::rejected(config.refuse(
                    request.headers(),
                    rejection,
                    client,
                ));
            }
        };
        match begun {
            Begun::Done(Ok(principal)) => {
                if let Err(rejection) = admit(config, sources, &mut request, &principal, resolved) {
                    return ResponseFuture::rejected(config.refuse(
                        request.headers(),
                        rejection,
                        client,
                    ));
                }
                ResponseFuture::inner(self.inner.call(request), principal)
            }
            Begun::Done(Err(rejection)) => {
                ResponseFuture::rejected(config.refuse(request.headers(), rejection, client))
            }
            Begun::Lookup(pending) => {
                // The ready service goes into the future, which calls it
                // after the look-up; `self` keeps a fresh clone (tower's
                // clone-and-swap: the clone has not been polled ready).
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::lookup(
                    Arc::clone(config),
                    pending,
                    sources,
                    resolved,
                    inner,
                    request,
                )
            }
        }
    }
}

/// Checks the key's restrictions, then prepares an authenticated request
/// for the inner service.
pub(crate) fn admit<B>(
    config: &AuthConfig,
    sources: source::SourceMask,
    request: &mut Request<B>,
    principal: &Principal,
    client: Option<Option<IpAddr>>,
) -> Result<(), Rejection> {
    super::client::restrict(config, request, principal, client)?;
    if config.strip_credentials {
        source::strip(&config.sources, sources, request);
    }
    request.extensions_mut().insert(principal.clone());
    #[cfg(feature = "metrics")]
    crate::metrics::auth_allowed();
    Ok(())
}
