//! The whole extraction of a key from a request, through `AuthLayer` over a
//! `MemoryStore` holding one key, with every kind of `KeySource` in an
//! order the input picks, and arbitrary headers and query strings.
//!
//! What must hold for every request:
//! - the answer is `200`, `400` or `401`, never a panic;
//! - a `200` only when the request holds the key, and then the inner
//!   service gets the key's `Principal`;
//! - with credentials stripped (the default), the request the inner
//!   service gets presents no key any more: sent through the same layer
//!   again, it is refused as `401` with no key;
//! - a `401` carries `WWW-Authenticate: Bearer`;
//! - no response, header or body, holds the key's secret.

#![no_main]

mod common;

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use arbitrary::Arbitrary;
use http::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode, Uri};
use keyward::auth::{AuthService, KeySource};
use keyward::reject::RejectReason;
use keyward::{
    AuthLayer, KeyFormat, KeyHasher, KeyRecord, KeyStore, MemoryStore, Principal, Rejection,
};
use libfuzzer_sys::fuzz_target;
use tower_layer::Layer;
use tower_service::Service;

/// The one valid key (format `sk_fuzz`, 256-bit secret), fixed so that
/// every run and every corpus file means the same thing.
const KEY: &str = "sk_fuzz_FuzzKeyId000Th1sIsTheFuzzTargetsOnlyValidSecretX012345642Ygs4";
const SECRET: &str = "Th1sIsTheFuzzTargetsOnlyValidSecretX0123456";

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Source {
    Bearer,
    XApiKey,
    /// `KeySource::header("x-key")`.
    Header,
    /// `KeySource::insecure_query("api_key")`.
    Query,
    /// `KeySource::insecure_cookie("api_key")`.
    Cookie,
}

impl Source {
    fn key_source(self) -> KeySource {
        match self {
            Source::Bearer => KeySource::bearer(),
            Source::XApiKey => KeySource::x_api_key(),
            Source::Header => KeySource::header(HeaderName::from_static("x-key")),
            Source::Query => KeySource::insecure_query("api_key"),
            Source::Cookie => KeySource::insecure_cookie("api_key"),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Name<'a> {
    Authorization,
    XApiKey,
    XKey,
    Cookie,
    Other(&'a str),
}

/// A piece of a header value or query string.
#[derive(Debug, Arbitrary)]
enum Piece<'a> {
    /// The valid key.
    Key,
    /// The valid key with one byte changed.
    Altered(u8, u8),
    Text(&'a [u8]),
    Bearer,
    Space,
    Eq,
    Semicolon,
    Ampersand,
    ApiKey,
}

fn assemble(pieces: &[Piece<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Key => out.extend_from_slice(KEY.as_bytes()),
            Piece::Altered(at, to) => {
                let mut key = KEY.as_bytes().to_vec();
                key[usize::from(*at) % KEY.len()] = *to;
                out.extend_from_slice(&key);
            }
            Piece::Text(bytes) => out.extend_from_slice(bytes),
            Piece::Bearer => out.extend_from_slice(b"Bearer "),
            Piece::Space => out.push(b' '),
            Piece::Eq => out.push(b'='),
            Piece::Semicolon => out.push(b';'),
            Piece::Ampersand => out.push(b'&'),
            Piece::ApiKey => out.extend_from_slice(b"api_key"),
        }
    }
    out
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    /// The sources, in order; empty: the default ones.
    sources: Vec<Source>,
    keep_credentials: bool,
    path: &'a str,
    query: Option<Vec<Piece<'a>>>,
    headers: Vec<(Name<'a>, Vec<Piece<'a>>)>,
}

/// What the inner service saw.
type Seen = Arc<Mutex<Option<Request<()>>>>;

#[derive(Clone)]
struct Inner(Seen);

impl Service<Request<()>> for Inner {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        *self.0.lock().unwrap() = Some(request);
        ready(Ok(Response::new(String::from("inner"))))
    }
}

fn store() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let format = KeyFormat::new("sk_fuzz").unwrap();
        let parsed = format.parse(KEY).expect("the fuzz key is valid");
        assert_eq!(parsed.secret(), SECRET);
        let store = MemoryStore::new();
        let record = KeyRecord::new(
            parsed.id(),
            KeyHasher::sha256().hash(parsed.secret()),
            "fuzz",
            SystemTime::UNIX_EPOCH,
        );
        common::block_on(store.insert(record)).unwrap();
        store
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn call(service: &mut AuthService<Inner>, request: Request<()>) -> Response<Vec<u8>> {
    let response = common::block_on(service.call(request)).unwrap();
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, common::collect(body))
}

fuzz_target!(|input: Input<'_>| {
    let seen: Seen = Arc::default();
    let mut layer = AuthLayer::new(store().clone(), KeyFormat::new("sk_fuzz").unwrap())
        .strip_credentials(!input.keep_credentials);
    if !input.sources.is_empty() {
        layer = layer.sources(input.sources.iter().map(|s| s.key_source()));
    }
    let mut service = layer.layer(Inner(Arc::clone(&seen)));

    let mut uri = String::from("/");
    uri.push_str(input.path.trim_start_matches('/'));
    let mut raw = uri.clone().into_bytes();
    if let Some(query) = &input.query {
        raw.push(b'?');
        raw.extend_from_slice(&assemble(query));
    }
    let uri = Uri::try_from(raw)
        .or_else(|_| Uri::try_from(uri))
        .unwrap_or_else(|_| Uri::from_static("/"));
    let mut request = Request::get(uri).body(()).unwrap();
    for (name, pieces) in &input.headers {
        let name = match name {
            Name::Authorization => http::header::AUTHORIZATION,
            Name::XApiKey => HeaderName::from_static("x-api-key"),
            Name::XKey => HeaderName::from_static("x-key"),
            Name::Cookie => http::header::COOKIE,
            Name::Other(name) => match HeaderName::try_from(*name) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        if let Ok(value) = HeaderValue::from_bytes(&assemble(pieces)) {
            request.headers_mut().append(name, value);
        }
    }
    let holds_key = contains(request.uri().to_string().as_bytes(), KEY.as_bytes())
        || request
            .headers()
            .values()
            .any(|v| contains(v.as_bytes(), KEY.as_bytes()));

    let response = call(&mut service, request);
    let status = response.status();
    for (_, value) in response.headers() {
        assert!(
            !contains(value.as_bytes(), SECRET.as_bytes()),
            "a header holds the secret"
        );
    }
    assert!(
        !contains(response.body(), SECRET.as_bytes()),
        "the body holds the secret"
    );
    let inner = seen.lock().unwrap().take();
    match status {
        StatusCode::OK => {
            assert!(holds_key, "authenticated without the key");
            let inner = inner.expect("200 without the inner service");
            let principal = inner.extensions().get::<Principal>().expect("no Principal");
            assert_eq!(principal.key_id().as_str(), "FuzzKeyId000");
            assert!(response.extensions().get::<Principal>().is_some());
            if !input.keep_credentials {
                // Stripped: the same layer finds no key in what is left.
                let mut again = Request::get(inner.uri().clone()).body(()).unwrap();
                *again.headers_mut() = inner.headers().clone();
                let response = call(&mut service, again);
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{inner:?}");
                let rejection = response.extensions().get::<Rejection>().unwrap();
                assert_eq!(rejection.reason(), RejectReason::MissingKey, "{inner:?}");
            }
        }
        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED => {
            assert!(inner.is_none(), "refused, yet the inner service was called");
            assert!(response.extensions().get::<Rejection>().is_some());
            if status == StatusCode::UNAUTHORIZED {
                let challenge = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .expect("no challenge");
                assert!(
                    challenge.as_bytes().starts_with(b"Bearer "),
                    "{challenge:?}"
                );
            }
        }
        other => panic!("unexpected status {other}"),
    }
});
