//! Property tests for signed requests: parsing any field never panics;
//! sign → verify round-trips for any request; any change to a covered part
//! breaks the signature.
#![cfg(feature = "signatures")]

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Request};
use keyward::clock::FakeClock;
use keyward::key::VerificationKey;
use keyward::signature::{
    BaseContext, MessageSignature, RequestSigner, SignatureError, SigningKey,
};
use proptest::prelude::*;

fn key() -> SigningKey {
    SigningKey::ed25519_from_seed(&[42; 32])
}

fn signer() -> RequestSigner {
    RequestSigner::new("AbCdEf012345", key())
        .cover("content-type")
        .clock(FakeClock::new(
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        ))
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
    ]
}

/// A URI: a host, a path of a few segments, and maybe a query.
fn uri() -> impl Strategy<Value = String> {
    (
        "[a-z]{1,10}(\\.[a-z]{1,5}){0,2}(:[1-9][0-9]{0,4})?",
        proptest::collection::vec("[A-Za-z0-9._~%-]{0,8}", 0..4),
        proptest::option::of("[A-Za-z0-9=&%._~-]{0,20}"),
    )
        .prop_map(|(host, segments, query)| {
            let mut uri = format!("https://{host}/{}", segments.join("/"));
            if let Some(query) = query {
                uri.push('?');
                uri.push_str(&query);
            }
            uri
        })
}

fn verify(request: &Request<Vec<u8>>) -> Result<(), SignatureError> {
    let signature = MessageSignature::find(request.headers(), "sig1")?;
    signature.verify(request, &BaseContext::new(), &key().verification_key())
}

proptest! {
    #[test]
    fn parsing_any_signature_fields_never_panics(
        input in "\\PC{0,200}",
        signature in "\\PC{0,200}",
        label in "[a-z*][a-z0-9_.*-]{0,8}",
    ) {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&input) {
            headers.insert("signature-input", value);
        }
        if let Ok(value) = HeaderValue::from_str(&signature) {
            headers.insert("signature", value);
        }
        if let Ok(found) = MessageSignature::find(&headers, &label) {
            let request = Request::get("https://example.com/").body(()).unwrap();
            let _ = found.base(&request, &BaseContext::new());
            let _ = found.verify(&request, &BaseContext::new(), &VerificationKey::ed25519([9; 32]));
        }
    }

    #[test]
    fn parsing_signature_shaped_fields_never_panics(
        components in proptest::collection::vec("\"@?[a-z-]{0,12}\"(;[a-z]{1,4}(=\"?[a-z0-9]{0,4}\"?)?)?", 0..6),
        params in proptest::collection::vec(";[a-z]{1,7}=(-?[0-9]{1,16}|\"[ -~&&[^\"\\\\]]{0,10}\"|\\?[01]|[a-z]{1,4}|:[A-Za-z0-9+/=]{0,12}:)", 0..6),
        bytes in ":[A-Za-z0-9+/=]{0,100}:",
    ) {
        let input = format!("sig1=({}){}", components.join(" "), params.concat());
        let mut headers = HeaderMap::new();
        if let (Ok(input), Ok(bytes)) = (HeaderValue::from_str(&input), HeaderValue::from_str(&format!("sig1={bytes}"))) {
            headers.insert("signature-input", input);
            headers.insert("signature", bytes);
        }
        if let Ok(found) = MessageSignature::find(&headers, "sig1") {
            let request = Request::post("https://example.com/a?b=c")
                .header("content-type", "text/plain")
                .body(())
                .unwrap();
            let _ = found.verify(&request, &BaseContext::new(), &VerificationKey::ed25519([9; 32]));
        }
    }

}

proptest! {
    // Ed25519 in a debug build is slow: fewer cases for the round trips.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_signed_request_verifies(
        method in method(),
        uri in uri(),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        content_type in proptest::option::of("[a-z]{1,8}/[a-z]{1,8}"),
    ) {
        let mut builder = Request::builder().method(method).uri(uri.as_str());
        if let Some(content_type) = &content_type {
            builder = builder.header("content-type", content_type.as_str());
        }
        let mut request = builder.body(body).unwrap();
        signer().sign(&mut request).unwrap();
        prop_assert_eq!(verify(&request), Ok(()));
        let signature = MessageSignature::find(request.headers(), "sig1").unwrap();
        prop_assert_eq!(signature.covers("@query"), request.uri().query().is_some());
        prop_assert_eq!(signature.covers("content-digest"), !request.body().is_empty());
        prop_assert_eq!(signature.covers("content-type"), content_type.is_some());
    }

    #[test]
    fn changing_a_covered_part_breaks_the_signature(
        uri in uri(),
        body in proptest::collection::vec(any::<u8>(), 1..64),
        which in 0usize..4,
        salt in "[a-z]{1,4}",
    ) {
        let mut request = Request::post(uri.as_str()).body(body).unwrap();
        signer().sign(&mut request).unwrap();
        let original = request.uri().clone();
        match which {
            0 => *request.method_mut() = Method::PUT,
            1 => {
                let path = format!("{}{salt}", original.path());
                let query = original.query().map(|q| format!("?{q}")).unwrap_or_default();
                *request.uri_mut() = format!("https://{}{path}{query}", original.authority().unwrap()).parse().unwrap();
            }
            // (Adding a query to a request signed without one is refused
            // by SignatureVerifier's coverage rule, not by the signature.)
            2 if original.query().is_some() => {
                let query = format!("{}{salt}", original.query().unwrap_or_default());
                *request.uri_mut() = format!("https://{}{}?{query}", original.authority().unwrap(), original.path()).parse().unwrap();
            }
            _ => {
                request.headers_mut().insert(
                    "content-digest",
                    HeaderValue::from_static("sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"),
                );
            }
        }
        prop_assert_eq!(verify(&request), Err(SignatureError::Invalid));
    }
}
