//! Signed requests (RFC 9421) and Content-Digest (RFC 9530) through the
//! public API: the RFCs' test vectors, the signer and verifier together
//! behind `ContentDigestLayer`, and every tampering a captured request
//! could suffer.
#![cfg(feature = "signatures")]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use keyward::clock::{Clock, FakeClock};
use keyward::content_digest::{ContentDigestError, ContentDigestLayer, DigestBody};
use keyward::key::{KeyFormat, VerificationKey};
use keyward::manager::{IssueOptions, KeyManager, ManagerError};
use keyward::reject::{RejectReason, Rejection};
use keyward::signature::{
    BaseContext, MessageSignature, RequestSigner, SignatureError, SignatureVerifier, SigningKey,
};
use keyward::store::{KeyStore, MemoryStore};
use keyward::{AuthLayer, KeyRecord, Principal};
use tower::{ServiceBuilder, ServiceExt};

// RFC 9421 Appendix B.1.4: test-key-ed25519. The private key is the last
// 32 bytes of the PKCS#8 document `MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF`;
// the public key the last 32 of `MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=`.
const ED25519_SEED: &str = "n4Ni+HpISpVObnQMW0wOhCKROaIKqKtW/2ZYb2p9KcU=";
const ED25519_PUBLIC: &str = "26b40b8f93fff3d897112f7ebc582b232dbd72517d082fe83cfb30ddce43d1bb";
// RFC 9421 Appendix B.1.5: test-shared-secret.
const SHARED_SECRET: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
const CREATED: u64 = 1_618_884_473;

/// RFC 9421 Appendix B.2's test request.
fn test_request() -> Request<&'static str> {
    Request::post("/foo?param=Value&Pet=dog")
        .header("host", "example.com")
        .header("date", "Tue, 20 Apr 2021 02:07:55 GMT")
        .header("content-type", "application/json")
        .header(
            "content-digest",
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
        )
        .header("content-length", "18")
        .body(r#"{"hello": "world"}"#)
        .unwrap()
}

fn hex(bytes: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&bytes[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

#[test]
fn rfc9421_b26_ed25519_vector_verifies_and_the_signer_reproduces_it() {
    let input = r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
    let signature = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";
    let mut request = test_request();
    request
        .headers_mut()
        .insert("signature-input", HeaderValue::from_static(input));
    request
        .headers_mut()
        .insert("signature", HeaderValue::from_static(signature));

    let private = SigningKey::ed25519_from_base64(ED25519_SEED).unwrap();
    let public = VerificationKey::ed25519(hex(ED25519_PUBLIC));
    assert_eq!(
        private.verification_key(),
        public,
        "B.1.4's two halves belong together"
    );

    let parsed = MessageSignature::find(request.headers(), "sig-b26").unwrap();
    let base = parsed.base(&request, &BaseContext::new()).unwrap();
    assert_eq!(
        std::str::from_utf8(base.as_bytes()).unwrap(),
        concat!(
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n",
            "\"@method\": POST\n",
            "\"@path\": /foo\n",
            "\"@authority\": example.com\n",
            "\"content-type\": application/json\n",
            "\"content-length\": 18\n",
            "\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"",
        )
    );
    parsed
        .verify(&request, &BaseContext::new(), &public)
        .unwrap();

    // Ed25519 is deterministic: the signer, told to cover the same
    // components with the same parameters, writes the RFC's fields.
    let mut unsigned = test_request();
    RequestSigner::new("test-key-ed25519", private)
        .label("sig-b26")
        .components([
            "date",
            "@method",
            "@path",
            "@authority",
            "content-type",
            "content-length",
        ])
        .nonce(false)
        .alg(false)
        .clock(FakeClock::new(UNIX_EPOCH + Duration::from_secs(CREATED)))
        .sign(&mut unsigned)
        .unwrap();
    assert_eq!(unsigned.headers()["signature-input"], input);
    assert_eq!(unsigned.headers()["signature"], signature);

    // Tampering with any covered component breaks it.
    let mut tampered = request.clone();
    tampered
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    assert_eq!(
        parsed.verify(&tampered, &BaseContext::new(), &public),
        Err(SignatureError::Invalid)
    );
}

#[test]
fn rfc9421_b25_hmac_vector_verifies_and_the_signer_reproduces_it() {
    let input = r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#;
    let signature = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:";
    let mut request = test_request();
    request
        .headers_mut()
        .insert("signature-input", HeaderValue::from_static(input));
    request
        .headers_mut()
        .insert("signature", HeaderValue::from_static(signature));

    let key = SigningKey::hmac_sha256_from_base64(SHARED_SECRET).unwrap();
    let parsed = MessageSignature::find(request.headers(), "sig-b25").unwrap();
    parsed
        .verify(&request, &BaseContext::new(), &key.verification_key())
        .unwrap();
    // The key of another algorithm does not verify it.
    let other = SigningKey::ed25519_from_base64(ED25519_SEED).unwrap();
    assert_eq!(
        parsed.verify(&request, &BaseContext::new(), &other.verification_key()),
        Err(SignatureError::Invalid)
    );

    let mut unsigned = test_request();
    RequestSigner::new("test-shared-secret", key)
        .label("sig-b25")
        .components(["date", "@authority", "content-type"])
        .nonce(false)
        .alg(false)
        .clock(FakeClock::new(UNIX_EPOCH + Duration::from_secs(CREATED)))
        .sign(&mut unsigned)
        .unwrap();
    assert_eq!(unsigned.headers()["signature-input"], input);
    assert_eq!(unsigned.headers()["signature"], signature);
}

#[test]
fn the_signer_writes_rfc9530s_content_digest() {
    // RFC 9530's example body, and its SHA-256 digest.
    let mut request = Request::post("https://example.com/foo")
        .body(r#"{"hello": "world"}"#)
        .unwrap();
    let key = SigningKey::ed25519_from_base64(ED25519_SEED).unwrap();
    RequestSigner::new("k", key).sign(&mut request).unwrap();
    assert_eq!(
        request.headers()["content-digest"],
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    );
}

/// A body that arrives in the given chunks.
struct Chunks(VecDeque<Bytes>);

impl Chunks {
    fn of(chunks: &[&'static str]) -> Self {
        Self(
            chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
        )
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.iter().map(|c| c.len() as u64).sum())
    }
}

/// What the handler behind `ContentDigestLayer` got: the data frames
/// that arrived, and the error that ended the body.
#[derive(Debug, Default)]
struct Seen {
    frames: Vec<Bytes>,
    error: Option<ContentDigestError>,
}

/// Sends `request` through `layer` to a handler that reads the body frame
/// by frame (as a streaming handler would).
async fn through(layer: ContentDigestLayer, request: Request<Chunks>) -> (StatusCode, Seen) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = Arc::clone(&seen);
    let response = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |request: Request<DigestBody<Chunks>>| {
            let record = Arc::clone(&record);
            async move {
                let mut body = request.into_body();
                let mut got = Seen::default();
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(frame) => got.frames.extend(frame.into_data().ok()),
                        Err(e) => {
                            got.error = e.downcast_ref::<ContentDigestError>().copied();
                            break;
                        }
                    }
                }
                *record.lock().unwrap() = got;
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        })
        .oneshot(request)
        .await
        .unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (response.status(), seen)
}

fn digested(digest: &'static str, chunks: &[&'static str]) -> Request<Chunks> {
    Request::post("/")
        .header("content-digest", digest)
        .body(Chunks::of(chunks))
        .unwrap()
}

const HELLO_SHA256: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
const HELLO_SHA512: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

#[tokio::test]
async fn rfc9530_digests_of_the_body_received_are_checked_as_it_streams() {
    // RFC 9530's examples: `{"hello": "world"}` in SHA-256 and SHA-512,
    // here sent in three chunks.
    for digest in [HELLO_SHA256, HELLO_SHA512] {
        let (status, seen) = through(
            ContentDigestLayer::new(),
            digested(digest, &[r#"{"hello""#, ": ", r#""world"}"#]),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(seen.error, None);
        assert_eq!(seen.frames.concat(), br#"{"hello": "world"}"#);
    }
    // Both at once: both must match.
    let both = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";
    let (_, seen) = through(
        ContentDigestLayer::new(),
        digested(both, &[r#"{"hello": "world"}"#]),
    )
    .await;
    assert_eq!(seen.error, None);

    // An empty body has the SHA-256 of nothing.
    let (_, seen) = through(
        ContentDigestLayer::new(),
        digested(
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
            &[],
        ),
    )
    .await;
    assert_eq!(seen.error, None);
}

#[tokio::test]
async fn a_tampered_body_never_reaches_the_handler_whole() {
    for digest in [HELLO_SHA256, HELLO_SHA512] {
        let (status, seen) = through(
            ContentDigestLayer::new(),
            digested(digest, &[r#"{"hello""#, ": ", r#""there"}"#]),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the layer cannot know before the end"
        );
        assert_eq!(seen.error, Some(ContentDigestError::Mismatch));
        // The last frame was held back: the handler saw a strict prefix.
        assert_eq!(seen.frames.concat(), br#"{"hello": "#);
    }
    // A body in one frame: the handler gets no byte of it.
    let (_, seen) = through(
        ContentDigestLayer::new(),
        digested(HELLO_SHA256, &[r#"{"hello": "there"}"#]),
    )
    .await;
    assert_eq!(seen.error, Some(ContentDigestError::Mismatch));
    assert!(seen.frames.is_empty());
    // Truncated or extended bodies alike.
    for chunks in [
        &[r#"{"hello": "world""#][..],
        &[r#"{"hello": "world"}"#, " "][..],
    ] {
        let (_, seen) = through(ContentDigestLayer::new(), digested(HELLO_SHA256, chunks)).await;
        assert_eq!(seen.error, Some(ContentDigestError::Mismatch));
    }
}

#[tokio::test]
async fn the_digest_check_is_bounded() {
    // Announced too long: refused before the handler runs.
    let mut request = digested(HELLO_SHA256, &[r#"{"hello": "world"}"#]);
    request
        .headers_mut()
        .insert("content-length", HeaderValue::from_static("18"));
    let (status, _) = through(ContentDigestLayer::new().max_body(17), request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Not announced, and longer than the maximum: the body fails there.
    let (status, seen) = through(
        ContentDigestLayer::new().max_body(10),
        digested(HELLO_SHA256, &["{\"hello\"", r#": "world"}"#]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen.error, Some(ContentDigestError::TooLarge { max: 10 }));
    assert!(seen.frames.concat().len() <= 10);
}

#[tokio::test]
async fn malformed_digests_are_refused_and_unknown_ones_ignored() {
    for bad in [
        "sha-256=:AAAA:",                                            // wrong length
        r#"sha-256="X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=""#, // a string, not bytes
        "sha-256=(:AAAA:)",                                          // an inner list
        "sha-256",                                                   // no value
        "not a dictionary (",
    ] {
        let request = Request::post("/")
            .header("content-digest", bad)
            .body(Chunks::of(&["x"]))
            .unwrap();
        let (status, _) = through(ContentDigestLayer::new(), request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // Algorithms keyward does not compute are ignored (RFC 9530 lets a
    // recipient do so): the body passes unchecked.
    let request = Request::post("/")
        .header("content-digest", "md5=:AAAAAAAAAAAAAAAAAAAAAA==:")
        .body(Chunks::of(&["anything"]))
        .unwrap();
    let (status, seen) = through(ContentDigestLayer::new(), request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen.error, None);
    assert_eq!(seen.frames.concat(), b"anything");
}

/// A service's keys: a client-generated Ed25519 pair, a server-issued HMAC
/// secret, and a plain API key.
struct Keys {
    clock: FakeClock,
    store: MemoryStore,
    manager: KeyManager,
    ed25519: (KeyRecord, SigningKey),
    hmac: (KeyRecord, SigningKey),
    api_key: KeyRecord,
}

async fn keys() -> Keys {
    let clock = FakeClock::default();
    let store = MemoryStore::new();
    let manager = KeyManager::new(store.clone(), KeyFormat::new("sk_test").unwrap())
        .with_clock(clock.clone());
    let private = SigningKey::generate_ed25519().unwrap();
    let record = manager
        .register_public_key(
            private.verification_key(),
            IssueOptions::new("acme").scopes("pets:read".parse().unwrap()),
        )
        .await
        .unwrap();
    let issued = manager
        .issue_shared_secret(IssueOptions::new("globex"))
        .await
        .unwrap();
    let api_key = manager
        .issue(IssueOptions::new("initech"))
        .await
        .unwrap()
        .record;
    Keys {
        clock,
        store,
        manager,
        ed25519: (record, private),
        hmac: (issued.record, issued.signing_key),
        api_key,
    }
}

impl Keys {
    fn verifier(&self) -> SignatureVerifier {
        SignatureVerifier::new(self.store.clone()).clock(self.clock.clone())
    }

    fn signer(&self) -> RequestSigner {
        RequestSigner::new(self.ed25519.0.id.as_str(), self.ed25519.1.clone())
            .clock(self.clock.clone())
    }
}

/// What came back: the status, the reason if refused, and the handler's
/// answer (the owner and the body it read) if admitted.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    reason: Option<RejectReason>,
    body: String,
}

/// `verifier` behind `ContentDigestLayer`, with a handler that reads the
/// whole body, as axum's extractors do.
async fn send(verifier: &SignatureVerifier, request: Request<Full<Bytes>>) -> Answer {
    let verifier = verifier.clone();
    let response = ServiceBuilder::new()
        .layer(ContentDigestLayer::new())
        .service_fn(move |request: Request<DigestBody<Full<Bytes>>>| {
            let verify = verifier.verify(&request);
            async move {
                let principal = match verify.await {
                    Ok(principal) => principal,
                    Err(rejection) => {
                        let mut response = Response::new(String::new());
                        *response.status_mut() = rejection.status();
                        response.extensions_mut().insert(rejection);
                        return Ok::<_, Infallible>(response);
                    }
                };
                let body = match request.into_body().collect().await {
                    Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                    Err(e) => format!("body error: {e}"),
                };
                Ok(Response::new(format!("{} {body}", principal.owner())))
            }
        })
        .oneshot(request)
        .await
        .unwrap();
    Answer {
        status: response.status(),
        reason: response
            .extensions()
            .get::<Rejection>()
            .map(Rejection::reason),
        body: response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .iter()
            .map(|&b| b as char)
            .collect(),
    }
}

fn signed(
    signer: &RequestSigner,
    method: Method,
    uri: &str,
    body: &'static str,
) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Bytes::from_static(body.as_bytes()))
        .unwrap();
    signer.sign(&mut request).unwrap();
    request.map(Full::new)
}

fn assert_refused(answer: &Answer, reason: RejectReason) {
    assert_eq!(answer.reason, Some(reason), "{answer:?}");
    assert_eq!(answer.status, reason.status());
}

const URI: &str = "https://api.example.com/pets?kind=cat";
const BODY: &str = r#"{"name":"Tom"}"#;

#[tokio::test]
async fn a_signed_request_is_admitted_once() {
    let keys = keys().await;
    let verifier = keys.verifier();
    let request = signed(&keys.signer(), Method::POST, URI, BODY);
    let answer = send(&verifier, request.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body, format!("acme {BODY}"));

    // The same bytes again: a replay, for as long as the window lasts...
    let again = send(&verifier, request.clone()).await;
    assert_refused(&again, RejectReason::ReplayedSignature);
    keys.clock.advance(Duration::from_secs(299));
    assert_refused(
        &send(&verifier, request.clone()).await,
        RejectReason::ReplayedSignature,
    );
    // ...and then too old.
    keys.clock.advance(Duration::from_secs(2));
    assert_refused(
        &send(&verifier, request).await,
        RejectReason::StaleSignature,
    );

    // Two identical requests signed in the same second differ by their
    // nonce: both are admitted.
    let first = signed(
        &keys.signer(),
        Method::GET,
        "https://api.example.com/pets",
        "",
    );
    let second = signed(
        &keys.signer(),
        Method::GET,
        "https://api.example.com/pets",
        "",
    );
    assert_eq!(send(&verifier, first).await.status, StatusCode::OK);
    assert_eq!(send(&verifier, second).await.status, StatusCode::OK);
}

#[tokio::test]
async fn hmac_keys_sign_too() {
    let keys = keys().await;
    let (record, key) = &keys.hmac;
    let signer = RequestSigner::new(record.id.as_str(), key.clone()).clock(keys.clock.clone());
    let answer = send(&keys.verifier(), signed(&signer, Method::POST, URI, BODY)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(answer.body.starts_with("globex "));
}

#[tokio::test]
async fn tampering_with_any_covered_part_is_refused() {
    let keys = keys().await;
    let verifier = keys.verifier();
    let original = signed(&keys.signer(), Method::POST, URI, BODY);

    type Tamper = fn(&mut Request<Full<Bytes>>);
    let cases: [(&str, Tamper); 9] = [
        ("method", |r| *r.method_mut() = Method::PUT),
        ("authority", |r| {
            *r.uri_mut() = "https://evil.example.com/pets?kind=cat".parse().unwrap()
        }),
        ("path", |r| {
            *r.uri_mut() = "https://api.example.com/pets/1?kind=cat".parse().unwrap()
        }),
        ("query", |r| {
            *r.uri_mut() = "https://api.example.com/pets?kind=dog".parse().unwrap()
        }),
        ("query dropped", |r| {
            *r.uri_mut() = "https://api.example.com/pets".parse().unwrap()
        }),
        ("digest and body", |r| {
            // A consistent new body and digest: the signature covers the
            // digest, so it no longer verifies.
            r.headers_mut().insert(
                "content-digest",
                HeaderValue::from_static("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"),
            );
            *r.body_mut() = Full::new(Bytes::from_static(br#"{"hello": "world"}"#));
        }),
        ("created", |r| {
            // One second later: inside the window, but not what was signed.
            edit_input(r, |input| {
                let start = input.find("created=").unwrap() + "created=".len();
                let end = start + input[start..].find(';').unwrap();
                let created: u64 = input[start..end].parse().unwrap();
                format!("{}{}{}", &input[..start], created + 1, &input[end..])
            })
        }),
        ("alg", |r| {
            edit_input(r, |input| {
                input.replace("alg=\"ed25519\"", "alg=\"hmac-sha256\"")
            })
        }),
        ("signature", |r| {
            let value = r.headers()["signature"].to_str().unwrap().to_owned();
            let flipped = value.replacen(":", ":A", 1).replacen(":A", ":", 0);
            let mut bytes = flipped.into_bytes();
            let at = bytes.len() - 4;
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            r.headers_mut()
                .insert("signature", HeaderValue::from_bytes(&bytes).unwrap());
        }),
    ];
    for (what, tamper) in cases {
        let mut request = original.clone();
        tamper(&mut request);
        let answer = send(&verifier, request).await;
        assert_eq!(
            answer.reason,
            Some(RejectReason::BadSignature),
            "{what}: {answer:?}"
        );
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{what}");
    }

    // The body alone, with the signed digest: the signature verifies, and
    // the handler reads an error instead of the body.
    let mut request = signed(&keys.signer(), Method::POST, URI, BODY);
    *request.body_mut() = Full::new(Bytes::from_static(br#"{"name":"Jerry"}"#));
    let answer = send(&verifier, request).await;
    assert!(answer.body.contains("body error"), "{answer:?}");
    assert!(!answer.body.contains("Jerry"));

    // The untouched request still passes: the cases above failed for what
    // they changed.
    assert_eq!(send(&verifier, original).await.status, StatusCode::OK);
}

/// Rewrites the `Signature-Input` field.
fn edit_input(request: &mut Request<Full<Bytes>>, edit: impl Fn(&str) -> String) {
    let input = request.headers()["signature-input"]
        .to_str()
        .unwrap()
        .to_owned();
    let edited = edit(&input);
    assert_ne!(edited, input);
    request
        .headers_mut()
        .insert("signature-input", HeaderValue::try_from(edited).unwrap());
}

#[tokio::test]
async fn the_key_id_must_name_a_usable_signing_key() {
    let keys = keys().await;
    let verifier = keys.verifier();
    let id = keys.ed25519.0.id.as_str().to_owned();
    let original = signed(
        &keys.signer(),
        Method::GET,
        "https://api.example.com/pets",
        "",
    );

    // Another signing key's id: its key does not verify the signature.
    let mut other = original.clone();
    edit_input(&mut other, |input| {
        input.replace(&id, keys.hmac.0.id.as_str())
    });
    assert_refused(&send(&verifier, other).await, RejectReason::BadSignature);
    // An API key's id: no verification key.
    let mut api = original.clone();
    edit_input(&mut api, |input| {
        input.replace(&id, keys.api_key.id.as_str())
    });
    assert_refused(&send(&verifier, api).await, RejectReason::BadSignature);
    // An unknown id.
    let mut unknown = original.clone();
    edit_input(&mut unknown, |input| input.replace(&id, "AAAAAAAAAAAA"));
    assert_refused(&send(&verifier, unknown).await, RejectReason::UnknownKey);
    // No key id of this service at all.
    let mut foreign = original.clone();
    edit_input(&mut foreign, |input| input.replace(&id, "test-key-ed25519"));
    assert_refused(&send(&verifier, foreign).await, RejectReason::BadSignature);

    // Revoked and disabled keys.
    keys.manager.disable(&keys.ed25519.0.id).await.unwrap();
    let request = signed(
        &keys.signer(),
        Method::GET,
        "https://api.example.com/pets",
        "",
    );
    assert_refused(&send(&verifier, request).await, RejectReason::Disabled);
    keys.manager.revoke(&keys.ed25519.0.id).await.unwrap();
    let request = signed(
        &keys.signer(),
        Method::GET,
        "https://api.example.com/pets",
        "",
    );
    assert_refused(&send(&verifier, request).await, RejectReason::Revoked);
}

#[tokio::test]
async fn signatures_must_be_timely() {
    let keys = keys().await;
    let verifier = keys.verifier().window(Duration::from_secs(60));
    let signer = keys.signer();
    // Made by a client whose clock runs ahead, within the window: fine.
    let ahead = signed(
        &signer
            .clone()
            .clock(FakeClock::new(keys.clock.now() + Duration::from_secs(60))),
        Method::GET,
        URI,
        "",
    );
    assert_eq!(send(&verifier, ahead).await.status, StatusCode::OK);
    // Beyond it, either way.
    let future = signed(
        &signer
            .clone()
            .clock(FakeClock::new(keys.clock.now() + Duration::from_secs(61))),
        Method::GET,
        URI,
        "",
    );
    assert_refused(&send(&verifier, future).await, RejectReason::StaleSignature);
    let past = signed(
        &signer
            .clone()
            .clock(FakeClock::new(keys.clock.now() - Duration::from_secs(61))),
        Method::GET,
        URI,
        "",
    );
    assert_refused(&send(&verifier, past).await, RejectReason::StaleSignature);
    // `expires` is honoured.
    let expiring = signed(
        &signer.clone().expires_in(Duration::from_secs(10)),
        Method::GET,
        URI,
        "",
    );
    keys.clock.advance(Duration::from_secs(10));
    assert_refused(
        &send(&verifier, expiring).await,
        RejectReason::StaleSignature,
    );
}

#[tokio::test]
async fn signatures_must_cover_what_the_verifier_requires() {
    let keys = keys().await;
    let verifier = keys.verifier();
    let narrow = |components: &[&str]| keys.signer().components(components.iter().copied());
    // The query is not covered.
    let request = signed(
        &narrow(&["@method", "@authority", "@path"]),
        Method::GET,
        URI,
        "",
    );
    assert_refused(&send(&verifier, request).await, RejectReason::BadSignature);
    // The body is not covered (no content-digest).
    let request = signed(
        &narrow(&["@method", "@authority", "@path", "@query"]),
        Method::POST,
        URI,
        BODY,
    );
    assert_refused(&send(&verifier, request).await, RejectReason::BadSignature);
    // The method is not covered.
    let request = signed(
        &narrow(&["@authority", "@path", "@query"]),
        Method::GET,
        URI,
        "",
    );
    assert_refused(&send(&verifier, request).await, RejectReason::BadSignature);
    // A verifier may require more: here `content-type`.
    let strict = keys
        .verifier()
        .require(["@method", "@authority", "@path", "content-type"]);
    let request = signed(&keys.signer(), Method::GET, URI, "");
    assert_refused(&send(&strict, request).await, RejectReason::BadSignature);
    let mut request = Request::get(URI)
        .header("content-type", "text/plain")
        .body(Bytes::new())
        .unwrap();
    keys.signer()
        .cover("content-type")
        .sign(&mut request)
        .unwrap();
    assert_eq!(
        send(&strict, request.map(Full::new)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn signed_requests_are_refused_without_the_digest_layer() {
    let keys = keys().await;
    // Even a body-less request: the stacking is wrong, and a signed body
    // must never pass unchecked.
    let request = signed(&keys.signer(), Method::GET, URI, "");
    let rejection = keys.verifier().verify(&request).await.unwrap_err();
    assert_eq!(rejection.reason(), RejectReason::Misconfigured);
    assert_eq!(rejection.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn two_signatures_by_keys_of_the_service_are_refused() {
    let keys = keys().await;
    let mut request = Request::get(URI).body(Bytes::new()).unwrap();
    keys.signer().sign(&mut request).unwrap();
    let (record, key) = &keys.hmac;
    RequestSigner::new(record.id.as_str(), key.clone())
        .label("sig2")
        .clock(keys.clock.clone())
        .sign(&mut request)
        .unwrap();
    let answer = send(&keys.verifier(), request.clone().map(Full::new)).await;
    assert_refused(&answer, RejectReason::InvalidRequest);
    // Told which label counts, the verifier reads that one.
    let answer = send(&keys.verifier().label("sig2"), request.map(Full::new)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(answer.body.starts_with("globex"));
}

#[tokio::test]
async fn malformed_signature_fields_are_refused() {
    let keys = keys().await;
    let verifier = keys.verifier();
    let good = signed(&keys.signer(), Method::GET, URI, "");
    for (input, signature) in [
        ("sig1=(", "sig1=:AAAA:"),
        ("sig1=\"not a list\"", "sig1=:AAAA:"),
        ("", ""),
    ] {
        let mut request = good.clone();
        request
            .headers_mut()
            .insert("signature-input", HeaderValue::from_static(input));
        request
            .headers_mut()
            .insert("signature", HeaderValue::from_static(signature));
        assert_refused(&send(&verifier, request).await, RejectReason::BadSignature);
    }
    let mut lone = good.clone();
    lone.headers_mut().remove("signature");
    assert_refused(&send(&verifier, lone).await, RejectReason::BadSignature);
}

#[tokio::test]
async fn key_pairs_are_registered_or_issued_never_rotated() {
    let keys = keys().await;
    // A weak (small-order) point, and a non-point, are refused.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    for bad in [identity, [0xff; 32]] {
        let refused = keys
            .manager
            .register_public_key(VerificationKey::ed25519(bad), IssueOptions::new("x"))
            .await;
        assert!(
            matches!(refused, Err(ManagerError::InvalidVerificationKey(_))),
            "{refused:?}"
        );
    }
    // An issued pair: the private key comes back once, redacted in Debug.
    let issued = keys
        .manager
        .issue_key_pair(IssueOptions::new("hooli"))
        .await
        .unwrap();
    let written = issued.signing_key.expose_base64();
    assert!(!format!("{issued:?}").contains(written.as_str()));
    let stored = keys.store.find(&issued.record.id).await.unwrap().unwrap();
    assert_eq!(
        stored.verification_key().cloned(),
        Some(issued.signing_key.verification_key())
    );
    // It signs.
    let signer = RequestSigner::new(
        issued.record.id.as_str(),
        SigningKey::ed25519_from_base64(&written).unwrap(),
    )
    .clock(keys.clock.clone());
    let answer = send(&keys.verifier(), signed(&signer, Method::GET, URI, "")).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    // Rotation would hand the public key to a bearer key: refused.
    assert!(matches!(
        keys.manager.rotate(&issued.record.id, Duration::ZERO).await,
        Err(ManagerError::SigningKey(_))
    ));
}

#[test]
fn records_keep_their_verification_key_through_serde() {
    let key = SigningKey::hmac_sha256(vec![7u8; 32]).unwrap();
    let record = KeyRecord::new(
        "AbCdEf012345".parse().unwrap(),
        keyward::KeyHash::from_bytes([1; 32]),
        "acme",
        UNIX_EPOCH,
    )
    .with_verification_key(key.verification_key());
    let json = serde_json::to_string(&record).unwrap();
    assert!(json.contains("\"verification_key\":\"hmac-sha256:0707"));
    let back: KeyRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, record);
    // A record without one writes no field, and reads back without one.
    let plain = KeyRecord::new(
        "AbCdEf012345".parse().unwrap(),
        keyward::KeyHash::from_bytes([1; 32]),
        "acme",
        UNIX_EPOCH,
    );
    let json = serde_json::to_string(&plain).unwrap();
    assert!(!json.contains("verification_key"));
    assert_eq!(serde_json::from_str::<KeyRecord>(&json).unwrap(), plain);
    // Debug never shows the secret.
    assert!(!format!("{record:?}").contains("0707"));
}

/// A store that never answers at once (as a database): the layer awaits it.
#[derive(Debug)]
struct Awaited(MemoryStore);

#[keyward::async_trait]
impl KeyStore for Awaited {
    async fn find(&self, id: &keyward::KeyId) -> keyward::store::Lookup {
        tokio::task::yield_now().await;
        self.0.find(id).await
    }
    async fn insert(&self, record: KeyRecord) -> Result<(), keyward::store::StoreError> {
        self.0.insert(record).await
    }
    async fn update(&self, record: KeyRecord) -> Result<(), keyward::store::StoreError> {
        self.0.update(record).await
    }
    async fn revoke(
        &self,
        id: &keyward::KeyId,
        at: std::time::SystemTime,
    ) -> Result<(), keyward::store::StoreError> {
        self.0.revoke(id, at).await
    }
    async fn list_by_owner(
        &self,
        owner: &str,
    ) -> Result<Vec<Arc<KeyRecord>>, keyward::store::StoreError> {
        self.0.list_by_owner(owner).await
    }
}

/// `ContentDigestLayer` → `AuthLayer` with `verifier` as a credential →
/// a handler that answers the principal's owner and kind and the body it
/// read.
async fn through_auth_layer(
    keys: &Keys,
    verifier: SignatureVerifier,
    request: Request<Full<Bytes>>,
) -> Answer {
    let layer = AuthLayer::new(keys.store.clone(), KeyFormat::new("sk_test").unwrap())
        .clock(keys.clock.clone())
        .credential(verifier);
    let response = ServiceBuilder::new()
        .layer(ContentDigestLayer::new())
        .layer(layer)
        .service_fn(|request: Request<DigestBody<Full<Bytes>>>| async move {
            let who = request.extensions().get::<Principal>().cloned().unwrap();
            let body = match request.into_body().collect().await {
                Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                Err(e) => format!("body error: {e}"),
            };
            let answer = format!("{} {} {body}", who.owner(), who.credential());
            Ok::<_, Infallible>(Response::new(answer))
        })
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let reason = response
        .extensions()
        .get::<Rejection>()
        .map(Rejection::reason);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        reason,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[tokio::test]
async fn auth_layer_authenticates_signed_requests_as_a_credential() {
    let keys = keys().await;
    for awaited in [false, true] {
        let verifier = if awaited {
            SignatureVerifier::new(Awaited(keys.store.clone())).clock(keys.clock.clone())
        } else {
            keys.verifier()
        };
        let request = signed(&keys.signer(), Method::POST, URI, BODY);
        let answer = through_auth_layer(&keys, verifier.clone(), request.clone()).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert_eq!(answer.body, format!("acme signature {BODY}"));

        // Replayed, through the layer too.
        let again = through_auth_layer(&keys, verifier.clone(), request).await;
        assert_refused(&again, RejectReason::ReplayedSignature);

        // A tampered body never reaches the handler whole.
        let mut tampered = signed(&keys.signer(), Method::POST, URI, BODY);
        *tampered.body_mut() = Full::new(Bytes::from_static(br#"{"name":"Jerry"}"#));
        let answer = through_auth_layer(&keys, verifier.clone(), tampered).await;
        assert!(!answer.body.contains("Jerry"), "{answer:?}");

        // A tampered path is the uniform 401.
        let mut moved = signed(&keys.signer(), Method::POST, URI, BODY);
        *moved.uri_mut() = "https://api.example.com/owners?kind=cat".parse().unwrap();
        let answer = through_auth_layer(&keys, verifier.clone(), moved).await;
        assert_refused(&answer, RejectReason::BadSignature);
    }
}

#[tokio::test]
async fn a_signature_and_an_api_key_together_are_refused() {
    let keys = keys().await;
    let issued = keys
        .manager
        .issue(IssueOptions::new("initech"))
        .await
        .unwrap();
    let mut request = signed(&keys.signer(), Method::GET, URI, "");
    request.headers_mut().insert(
        "x-api-key",
        HeaderValue::from_str(issued.key.expose_secret()).unwrap(),
    );
    let answer = through_auth_layer(&keys, keys.verifier(), request).await;
    assert_refused(&answer, RejectReason::TwoCredentials);

    // Each alone is fine; the API key keeps its kind.
    let plain = Request::get(URI)
        .header("x-api-key", issued.key.expose_secret())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = through_auth_layer(&keys, keys.verifier(), plain).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body, "initech api_key ");

    // Nothing at all: the plain 401.
    let nothing = Request::get(URI).body(Full::new(Bytes::new())).unwrap();
    let answer = through_auth_layer(&keys, keys.verifier(), nothing).await;
    assert_refused(&answer, RejectReason::MissingKey);
}

#[tokio::test]
async fn auth_layer_refuses_signed_requests_without_the_digest_layer() {
    let keys = keys().await;
    let layer = AuthLayer::new(keys.store.clone(), KeyFormat::new("sk_test").unwrap())
        .credential(keys.verifier());
    let response = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(String::from("reached")))
        })
        .oneshot(signed(&keys.signer(), Method::GET, URI, ""))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        response.extensions().get::<Rejection>().unwrap().reason(),
        RejectReason::Misconfigured
    );
}

#[tokio::test]
async fn signed_requests_work_in_an_axum_router() {
    use axum::routing::post;
    let keys = keys().await;
    let layer = AuthLayer::new(keys.store.clone(), KeyFormat::new("sk_test").unwrap())
        .clock(keys.clock.clone())
        .credential(keys.verifier());
    let router: axum::Router = axum::Router::new()
        .route(
            "/pets",
            post(|who: Principal, body: String| async move {
                format!("{} {} {body}", who.owner(), who.credential())
            }),
        )
        .layer(layer)
        .layer(ContentDigestLayer::new());
    let request = signed(&keys.signer(), Method::POST, URI, BODY).map(axum::body::Body::new);
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("acme signature {BODY}").as_bytes());

    let mut tampered = signed(&keys.signer(), Method::POST, URI, BODY);
    *tampered.body_mut() = Full::new(Bytes::from_static(br#"{"name":"Jerry"}"#));
    let response = router
        .oneshot(tampered.map(axum::body::Body::new))
        .await
        .unwrap();
    assert_ne!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains("Jerry"));
}

/// A store that answers only through its async method, and hangs while
/// told to, as a remote backend that stops answering.
#[cfg(feature = "tokio")]
#[derive(Debug, Clone)]
struct HangingStore {
    inner: MemoryStore,
    hang: Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(feature = "tokio")]
#[keyward::async_trait]
impl KeyStore for HangingStore {
    async fn find(&self, id: &keyward::key::KeyId) -> keyward::store::Lookup {
        if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending().await
        } else {
            self.inner.find(id).await
        }
    }
    fn find_immediate(&self, _: &keyward::key::KeyId) -> Option<keyward::store::Lookup> {
        None
    }
    async fn insert(&self, record: KeyRecord) -> Result<(), keyward::store::StoreError> {
        self.inner.insert(record).await
    }
    async fn update(&self, record: KeyRecord) -> Result<(), keyward::store::StoreError> {
        self.inner.update(record).await
    }
    async fn revoke(
        &self,
        id: &keyward::key::KeyId,
        at: std::time::SystemTime,
    ) -> Result<(), keyward::store::StoreError> {
        self.inner.revoke(id, at).await
    }
    async fn list_by_owner(
        &self,
        owner: &str,
    ) -> Result<Vec<Arc<KeyRecord>>, keyward::store::StoreError> {
        self.inner.list_by_owner(owner).await
    }
}

/// A hanging store is cut by the verifier's timeout (default, then set
/// shorter): `503`, the handler never runs, and the signature is not spent,
/// so the same request is admitted once the store answers again.
#[cfg(feature = "tokio")]
#[tokio::test(start_paused = true)]
async fn a_hanging_store_is_cut_by_the_verifiers_timeout() {
    let keys = keys().await;
    let store = HangingStore {
        inner: keys.store.clone(),
        hang: Arc::default(),
    };
    store.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    let verifier = SignatureVerifier::new(store.clone()).clock(keys.clock.clone());
    let request = signed(&keys.signer(), Method::POST, URI, BODY);

    let started = tokio::time::Instant::now();
    let answer = tokio::time::timeout(
        2 * keyward::auth::DEFAULT_STORE_TIMEOUT,
        send(&verifier, request.clone()),
    )
    .await
    .expect("the verifier waited past its timeout");
    assert_eq!(started.elapsed(), keyward::auth::DEFAULT_STORE_TIMEOUT);
    assert_refused(&answer, RejectReason::StoreUnavailable);
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);

    let shorter = verifier
        .clone()
        .store_timeout(Some(Duration::from_millis(250)));
    let started = tokio::time::Instant::now();
    let answer = send(&shorter, request.clone()).await;
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_refused(&answer, RejectReason::StoreUnavailable);

    store.hang.store(false, std::sync::atomic::Ordering::SeqCst);
    let answer = send(&shorter, request).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body, format!("acme {BODY}"));
}
