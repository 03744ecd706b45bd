//! Response bodies outside axum, as a plain tower user meets them: a custom
//! responder written without the `bytes` crate, and the nested body of
//! stacked layers read with `keyward::body::to_bytes` (no `http-body-util`).
//! Public API only.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use keyward::body::{self, Bytes, ResponseBody};
use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
use keyward::limit::{Limits, MemoryLimiter, RateLimitLayer, RatePolicy};
use keyward::record::KeyRecord;
use keyward::reject::{Rejection, Responder};
use keyward::store::{KeyStore, MemoryStore};
use keyward::{AuthLayer, RequireScopes};
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// A body in several frames, then trailers: what a streaming service sends.
struct Chunks(VecDeque<Frame<Bytes>>);

impl Chunks {
    fn new(parts: &[&'static str]) -> Self {
        let mut frames: VecDeque<_> = parts
            .iter()
            .map(|part| Frame::data(Bytes::from_static(part.as_bytes())))
            .collect();
        frames.push_back(Frame::trailers(HeaderMap::new()));
        Self(frames)
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// Three layers that can refuse, over a streaming service: the body type
/// nests three times.
type Stacked = ResponseBody<ResponseBody<ResponseBody<Chunks>>>;

#[tokio::test]
async fn stacked_bodies_and_a_custom_responder_read_without_extra_crates() {
    let format = KeyFormat::new("sk_test").unwrap();
    let store = MemoryStore::new();
    let key = KeyGenerator::new(format.clone()).generate().unwrap();
    let limits = Limits::new([RatePolicy::new("burst", 1, Duration::from_secs(60))
        .unwrap()
        .into()])
    .unwrap();
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "acme",
        SystemTime::now(),
    )
    .with_scopes("pets:read".parse().unwrap())
    .with_limits(limits);
    store.insert(record).await.unwrap();

    // The responder returns `Response<String>`: no `bytes` in sight.
    let responder = || {
        Responder::custom(|rejection: &Rejection| {
            Response::builder()
                .status(rejection.status())
                .body(format!("no ({})", rejection.reason()))
                .unwrap()
        })
    };
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(store, format).responder(responder()))
        .layer(RateLimitLayer::new(MemoryLimiter::new()).responder(responder()))
        .layer(RequireScopes::try_all(["pets:read"]).unwrap())
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(Chunks::new(&["[", "\"rex\"", "]"])))
        }));
    let request = |key: Option<&str>| {
        let mut request = Request::get("/pets");
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.body(String::new()).unwrap()
    };

    // Allowed: the service's three frames come through three wrappers and
    // are read as one body; the trailers are skipped.
    let response: Response<Stacked> = service
        .clone()
        .oneshot(request(Some(key.expose_secret())))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        body::to_bytes(response.into_body()).await.unwrap(),
        "[\"rex\"]"
    );

    // Refused by the outermost layer and by an inner one: the custom body.
    let response = service.clone().oneshot(request(None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        body::to_bytes(response.into_body()).await.unwrap(),
        "no (missing_key)"
    );
    let response = service
        .oneshot(request(Some(key.expose_secret())))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body::to_bytes(response.into_body()).await.unwrap(),
        "no (rate_limited)"
    );
}

#[tokio::test]
async fn to_bytes_reads_any_body() {
    assert_eq!(
        body::to_bytes(String::from("plain")).await.unwrap(),
        "plain"
    );
    assert_eq!(body::to_bytes(Chunks::new(&[])).await.unwrap(), "");
    assert_eq!(
        body::to_bytes(Chunks::new(&["", "a", "", "bc"]))
            .await
            .unwrap(),
        "abc"
    );
    let rejection: ResponseBody<String> = ResponseBody::rejection(Bytes::from_static(b"{}"));
    assert_eq!(body::to_bytes(rejection).await.unwrap(), "{}");
}

#[test]
fn custom_responders_take_the_usual_body_types() {
    let rejection = Rejection::new(keyward::RejectReason::MissingKey);
    let strings = Responder::custom(|_: &Rejection| Response::new("static"));
    let vectors = Responder::custom(|_: &Rejection| Response::new(b"vec".to_vec()));
    let bytes = Responder::custom(|_: &Rejection| Response::new(Bytes::from_static(b"bytes")));
    assert_eq!(strings.respond(&rejection).body(), "static");
    assert_eq!(vectors.respond(&rejection).body(), "vec");
    assert_eq!(bytes.respond(&rejection).body(), "bytes");
}
