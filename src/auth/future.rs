use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::layer::AuthConfig;
use super::service::{admit, Found};
use crate::body::ResponseBody;
use crate::credential::VerifyFuture;

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
        Inner { #[pin] future: F },
        // Waiting for a store that does not answer at once, or a
        // verifier's I/O. (boxed: the rare case must not make every
        // future larger)
        Verifying { verifying: VerifyFuture, waiting: Option<Box<Waiting<S, ReqBody>>> },
        // Refused.
        Rejected { response: Option<Response<Bytes>> },
    }
}

struct Waiting<S, ReqBody> {
    config: Arc<AuthConfig>,
    found: Found,
    /// The client address, if already resolved (see `client::restrict`).
    client: Option<Option<IpAddr>>,
    service: S,
    request: Request<ReqBody>,
}

impl<F, S, ReqBody> ResponseFuture<F, S, ReqBody> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(crate) fn rejected(response: Response<Bytes>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }

    pub(crate) fn verifying(
        config: Arc<AuthConfig>,
        verifying: VerifyFuture,
        found: Found,
        client: Option<Option<IpAddr>>,
        service: S,
        request: Request<ReqBody>,
    ) -> Self {
        Self {
            state: State::Verifying {
                verifying,
                waiting: Some(Box::new(Waiting {
                    config,
                    found,
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
                StateProj::Inner { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::rejection)));
                }
                StateProj::Verifying { verifying, waiting } => {
                    let verified = ready!(verifying.as_mut().poll(cx));
                    let Waiting {
                        config,
                        found,
                        client,
                        mut service,
                        mut request,
                    } = *waiting
                        .take()
                        .expect("ResponseFuture polled after completion");
                    // A refusal counts the principal's kind once there
                    // is one, else the kind the credential was presented as.
                    let (admitted, kind) = match verified {
                        Ok(principal) => {
                            let kind = principal.credential();
                            let admitted = admit(&config, found, &mut request, principal, client);
                            (admitted, Some(kind))
                        }
                        Err(rejection) => (Err(rejection), found.kind(&config)),
                    };
                    let next = match admitted {
                        Ok(()) => State::Inner {
                            future: service.call(request),
                        },
                        Err(rejection) => State::Rejected {
                            response: Some(config.refuse(
                                request.headers(),
                                rejection,
                                client.flatten(),
                                kind,
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
