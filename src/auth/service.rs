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
use crate::credential::{CredentialKind, RequestView, Verification, VerifyFuture};
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

    // Inlined into the outer layer's `call`, so that this future is built
    // where the outer one keeps it instead of being moved there.
    #[inline]
    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        // Resolved once, here, when the throttle needs it; `restrict`
        // reuses it (and resolves it itself otherwise, only for keys with
        // allowed networks).
        let mut resolved = config
            .throttle
            .is_some()
            .then(|| config.trusted_proxies.client_addr(&request));
        let client = resolved.flatten();
        let presented = match source::extract(&config.sources, &request) {
            Ok(presented) => presented,
            Err(reason) => {
                tracing::info!(target: "keyward::auth", %reason, "API key refused");
                let rejection = Rejection::new(reason);
                return ResponseFuture::rejected(config.refuse(
                    request.headers(),
                    rejection,
                    client,
                    None,
                ));
            }
        };
        // Which credential counts. Without verifiers (the common case)
        // there is nothing to choose: the API key, if any.
        let chosen = if config.verifiers.is_empty() {
            presented.map(Chosen::Key)
        } else {
            match choose(config, presented, &request, resolved) {
                Ok(chosen) => chosen,
                Err(reason) => {
                    tracing::info!(target: "keyward::auth", %reason, "credentials refused");
                    return ResponseFuture::rejected(config.refuse(
                        request.headers(),
                        Rejection::new(reason),
                        client,
                        None,
                    ));
                }
            }
        };
        let Some(chosen) = chosen else {
            tracing::debug!(target: "keyward::auth", "no credential presented");
            let rejection = Rejection::new(RejectReason::MissingKey);
            return ResponseFuture::rejected(config.refuse(
                request.headers(),
                rejection,
                client,
                None,
            ));
        };
        if let Some(wait) = client.and_then(|ip| config.throttle.as_ref()?.blocked(ip)) {
            // Refused before any look-up: guessing costs the guesser.
            #[cfg(feature = "metrics")]
            crate::metrics::throttle_hit();
            let rejection = Rejection::new(RejectReason::TooManyFailures).with_retry_after(wait);
            let kind = match &chosen {
                Chosen::Key(presented) => Some(config.authenticator.presented_kind(&presented.key)),
                Chosen::Verifier(index) => config.verifiers.get(*index).map(|v| v.kind()),
            };
            return ResponseFuture::rejected(config.refuse(
                request.headers(),
                rejection,
                client,
                kind,
            ));
        }
        let (verified, found) = match chosen {
            Chosen::Key(Presented { key, sources }) => {
                let begun = config.authenticator.begin(&key);
                let found = Found::Key(sources, begun.presented_kind());
                match begun {
                    Begun::Done(result) => (result, found),
                    Begun::Lookup(pending) => {
                        let authenticating = Arc::clone(config);
                        let future: VerifyFuture = Box::pin(async move {
                            authenticating.authenticator.complete(pending).await
                        });
                        return self.wait_for(future, found, resolved, request);
                    }
                }
            }
            Chosen::Verifier(index) => {
                let view = RequestView::with_proxies(&request, &config.trusted_proxies, resolved);
                let verification = config.verifiers[index].verify(&view);
                // The verifier may have resolved the client: keep it.
                resolved = view.resolved_client().or(resolved);
                match verification {
                    Verification::Ready(result) => (result, Found::Verifier(index)),
                    Verification::Pending(future) => {
                        return self.wait_for(future, Found::Verifier(index), resolved, request);
                    }
                }
            }
        };
        match verified {
            Ok(principal) => {
                let kind = principal.credential();
                if let Err(rejection) = admit(config, found, &mut request, principal, resolved) {
                    return ResponseFuture::rejected(config.refuse(
                        request.headers(),
                        rejection,
                        client,
                        Some(kind),
                    ));
                }
                ResponseFuture::inner(self.inner.call(request))
            }
            Err(rejection) => ResponseFuture::rejected(config.refuse(
                request.headers(),
                rejection,
                client,
                found.kind(config),
            )),
        }
    }
}

impl<S> AuthService<S> {
    /// The response future that awaits `future` (a store, a verifier's
    /// I/O), then calls the inner service.
    fn wait_for<ReqBody, F>(
        &mut self,
        future: VerifyFuture,
        found: Found,
        resolved: Option<Option<IpAddr>>,
        request: Request<ReqBody>,
    ) -> ResponseFuture<F, S, ReqBody>
    where
        S: Clone,
    {
        // The ready service goes into the future, which calls it after
        // the wait; `self` keeps a fresh clone (tower's clone-and-swap:
        // the clone has not been polled ready).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::verifying(
            Arc::clone(&self.config),
            future,
            found,
            resolved,
            inner,
            request,
        )
    }
}

/// The credential a request is authenticated by.
enum Chosen<'a> {
    Key(Presented<'a>),
    Verifier(usize),
}

/// Which credential counts, when verifiers are configured (see the
/// [`credential`](crate::credential) module's docs for the rules).
fn choose<'a, B>(
    config: &AuthConfig,
    presented: Option<Presented<'a>>,
    request: &Request<B>,
    resolved: Option<Option<IpAddr>>,
) -> Result<Option<Chosen<'a>>, RejectReason> {
    let view = RequestView::with_proxies(request, &config.trusted_proxies, resolved);
    let mut recognised = None;
    for (index, verifier) in config.verifiers.iter().enumerate() {
        if verifier.recognises(&view) && recognised.replace(index).is_some() {
            return Err(RejectReason::TwoCredentials);
        }
    }
    Ok(match (presented, recognised) {
        (None, None) => None,
        (Some(presented), None) => Some(Chosen::Key(presented)),
        (None, Some(index)) => Some(Chosen::Verifier(index)),
        (Some(presented), Some(index)) => {
            if config.authenticator.recognises(&presented.key) {
                return Err(RejectReason::TwoCredentials);
            }
            // Not an API key: the value the verifier read (a JWT in
            // `Authorization: Bearer` is in a key source too).
            Some(Chosen::Verifier(index))
        }
    })
}

/// Where the credential that authenticated a request was found: what to
/// strip.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Found {
    /// The API key, in these key sources, and the kind it was presented
    /// as (an API key or an imported key).
    Key(source::SourceMask, CredentialKind),
    /// The credential of this verifier.
    Verifier(usize),
}

impl Found {
    /// The kind of the credential, as presented (before its record is
    /// trusted): what a refusal counts it as.
    pub(crate) fn kind(self, config: &AuthConfig) -> Option<CredentialKind> {
        match self {
            Found::Key(_, kind) => Some(kind),
            Found::Verifier(index) => config.verifiers.get(index).map(|v| v.kind()),
        }
    }
}

/// Checks the principal's restrictions (whatever its kind), then prepares
/// an authenticated request for the inner service.
pub(crate) fn admit<B>(
    config: &AuthConfig,
    found: Found,
    request: &mut Request<B>,
    principal: Principal,
    client: Option<Option<IpAddr>>,
) -> Result<(), Rejection> {
    super::client::restrict(config, request, &principal, client)?;
    if config.strip_credentials {
        match found {
            Found::Key(sources, _) => source::strip(config.sources.list(), sources, request),
            Found::Verifier(index) => strip_verifier(config, index, request),
        }
    }
    // An outer layer's slot (looked up before the insert below, while the
    // map is smallest), then the copy handlers read.
    if let Some(slot) = request.extensions().get::<super::PrincipalSlot>() {
        slot.fill(&principal);
    }
    #[cfg(feature = "metrics")]
    let kind = principal.credential();
    request.extensions_mut().insert(principal);
    #[cfg(feature = "metrics")]
    crate::metrics::auth_allowed(kind);
    Ok(())
}

fn strip_verifier<B>(config: &AuthConfig, index: usize, request: &mut Request<B>) {
    let Some(verifier) = config.verifiers.get(index) else {
        return;
    };
    // `strip` takes the headers and the URI apart: take the URI out while
    // the headers are borrowed.
    let mut uri = std::mem::take(request.uri_mut());
    verifier.strip(request.headers_mut(), &mut uri);
    *request.uri_mut() = uri;
}
