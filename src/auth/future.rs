use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::authenticator::{BoxLookup, Pending};
use super::layer::AuthConfig;
use super::service::admit;
use super::source::SourceMask;
use super::Principal;
use crate::body::ResponseBody;

pin_project! {
    /// The response future of [`AuthService`](super::AuthService).
    pub struct ResponseFuture<F, S, ReqBody> {
        #[pin]
        state: State<F, S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, ReqBody> {
        // Authenticated: waiting for the inner service.
        Inner { #[pin] future: F, principal: Option<Principal> },
        // Waiting for a store that does not answer at once.
        // (boxed: the rare case must not make every future larger)
        Lookup { lookup: BoxLookup, waiting: Option<Box<Waiting<S, ReqBody>>> },
        // Refused.
        Rejected { response: Option<Response<Bytes>> },
    }
}

struct Waiting<S, ReqBody> {
    config: Arc<AuthConfig>,
    pending: Pending,
    sources: SourceMask,
    /// The client address, if already resolved (see `client::restrict`).
    client: Option<Option<IpAddr>>,
    service: S,
    request: Request<ReqBody>,
}

impl<F, S, ReqBody> ResponseFuture<F, S, ReqBody> {
    pub(crate) fn inner(future: F, principal: Principal) -> Self {
        Self {
            state: State::Inner {
                future,
                principal: Some(principal),
            },
        }
    }

    pub(crate) fn rejected(response: Response<Bytes>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }

    pub(crate) fn lookup(
        config: Arc<AuthConfig>,
        pending: Pending,
        sources: SourceMask,
        client: Option<Option<IpAddr>>,
        service: S,
        request: Request<ReqBody>,
    ) -> Self {
        Self {
            state: State::Lookup {
                lookup: config.authenticator.lookup(pending.id),
                waiting: Some(Box::new(Waiting {
                    config,
                    pending,
                    sources,
                    client,
                    service,
                    request,
                })),
            },
        }
    }
}

impl<F, S, ReqBody, ResBody, E> Future for ResponseFuture<F, S, ReqBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = E, Future = F>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Inner { future, principal } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(principal) = principal.take() {
                        response.extensions_mut().insert(principal);
                    }
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::rejection)));
                }
                StateProj::Lookup { lookup, waiting } => {
                    let lookup = ready!(lookup.as_mut().poll(cx));
                    let Waiting {
                        config,
                        pending,
                        sources,
                        client,
                        mut service,
                        mut request,
                    } = *waiting
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let next =
                        match config
                            .authenticator
                            .finish(pending, lookup)
                            .and_then(|principal| {
                                admit(&config, sources, &mut request, &principal, client)
                                    .map(|()| principal)
                            }) {
                            Ok(principal) => State::Inner {
                                future: service.call(request),
                                principal: Some(principal),
                            },
                            Err(rejection) => State::Rejected {
                                response: Some(config.refuse(
                                    request.headers(),
                                    rejection,
                                    client.flatten(),
                                )),
                            },
                        };
                    state.set(next);
                }
            }
        }
    }
}

impl<F, S, ReqBody> std::fmt::Debug for ResponseFuture<F, S, ReqBody> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
