//! AuthLayer in a real `axum::Router`, served over loopback HTTP.

use std::time::SystemTime;

use axum::routing::get;
use axum::Router;
use keyward::auth::{AuthLayer, Principal};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher};
use keyward::record::KeyRecord;
use keyward::store::{KeyStore, MemoryStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn app() -> (Router, ApiKey, MemoryStore) {
    let format = KeyFormat::new("sk_live").unwrap();
    let store = MemoryStore::new();
    let key = KeyGenerator::new(format.clone()).generate().unwrap();
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "acme",
        SystemTime::now(),
    );
    store.insert(record).await.unwrap();
    let auth = AuthLayer::new(store.clone(), format);
    let router = Router::new()
        .route(
            "/me",
            get(|p: Principal| async move { p.owner().to_owned() }),
        )
        .route(
            "/maybe",
            get(|p: Option<Principal>| async move { format!("{}", p.is_some()) }),
        )
        .layer(auth.clone())
        .route(
            "/guarded",
            get(|p: Principal| async move { p.key_id().to_string() }).route_layer(auth),
        )
        .route("/health", get(|| async { "ok" }))
        .route(
            "/forgot-the-layer",
            get(|p: Principal| async move { p.owner().to_owned() }),
        );
    (router, key, store)
}

/// Sends raw HTTP/1.1 bytes, so that malformed requests (duplicate headers,
/// non-UTF-8 bytes, huge values) reach the server exactly as written.
async fn raw(router: Router, request: &[u8]) -> (u16, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    server.abort();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn request(path: &str, headers: &[&[u8]]) -> Vec<u8> {
    let mut out =
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n").into_bytes();
    for header in headers {
        out.extend_from_slice(header);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[tokio::test]
async fn good_key_is_served_and_bad_input_is_a_4xx() {
    let (router, key, _) = app().await;
    let secret = key.expose_secret();
    let bearer = format!("authorization: Bearer {secret}");

    let (status, text) = raw(router.clone(), &request("/me", &[bearer.as_bytes()])).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("acme"));

    let x_api_key = format!("x-api-key: {secret}");
    assert_eq!(
        raw(router.clone(), &request("/me", &[x_api_key.as_bytes()]))
            .await
            .0,
        200
    );

    let mut changed = secret.to_owned();
    let last = changed.pop().unwrap();
    changed.push(if last == '0' { '1' } else { '0' });
    let huge = format!("authorization: Bearer {}", "A".repeat(8 * 1024));
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (request("/me", &[]), 401),
        (
            request(
                "/me",
                &[format!("authorization: Bearer {changed}").as_bytes()],
            ),
            401,
        ),
        (
            request(
                "/me",
                &[format!("authorization: Bearer {}", &secret[..30]).as_bytes()],
            ),
            401,
        ),
        (request("/me", &[huge.as_bytes()]), 401),
        (
            request("/me", &[b"authorization: Bearer sk_live_\xff\xfe\xfd"]),
            401,
        ),
        (request("/me", &[b"x-api-key: \xc3\xa9t\xc3\xa9"]), 401),
        (request("/me", &[bearer.as_bytes(), bearer.as_bytes()]), 400),
        (request(&format!("/me?api_key={secret}"), &[]), 401),
        (request(&format!("/me?access_token={secret}"), &[]), 401),
    ];
    for (bytes, expected) in cases {
        let (status, text) = raw(router.clone(), &bytes).await;
        assert_eq!(
            status,
            expected,
            "{}\n{text}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(text.contains("application/problem+json"), "{text}");
        assert!(
            text.contains("www-authenticate: Bearer realm=\"api\""),
            "{text}"
        );
        assert!(!text.contains(key.secret()), "{text}");
    }
}

#[tokio::test]
async fn route_layer_and_optional_extractor() {
    let (router, key, _) = app().await;
    let bearer = format!("authorization: Bearer {}", key.expose_secret());
    let (status, text) = raw(router.clone(), &request("/guarded", &[bearer.as_bytes()])).await;
    assert_eq!(status, 200);
    assert!(text.ends_with(key.id().as_str()));
    assert_eq!(raw(router.clone(), &request("/guarded", &[])).await.0, 401);

    let (status, text) = raw(router.clone(), &request("/maybe", &[bearer.as_bytes()])).await;
    assert_eq!(status, 200);
    assert!(text.ends_with("true"));
    assert_eq!(raw(router.clone(), &request("/maybe", &[])).await.0, 401);

    assert_eq!(raw(router.clone(), &request("/health", &[])).await.0, 200);
}

#[tokio::test]
async fn extractor_without_the_layer_answers_401_not_200() {
    let (router, key, _) = app().await;
    let bearer = format!("authorization: Bearer {}", key.expose_secret());
    let (status, text) = raw(router, &request("/forgot-the-layer", &[bearer.as_bytes()])).await;
    assert_eq!(status, 401, "{text}");
    assert!(!text.contains("acme"));
}

#[tokio::test]
async fn revocation_takes_effect_on_the_next_request() {
    let (router, key, store) = app().await;
    let bearer = format!("authorization: Bearer {}", key.expose_secret());
    assert_eq!(
        raw(router.clone(), &request("/me", &[bearer.as_bytes()]))
            .await
            .0,
        200
    );
    store.revoke(&key.id(), SystemTime::now()).await.unwrap();
    let (status, text) = raw(router, &request("/me", &[bearer.as_bytes()])).await;
    assert_eq!(status, 401);
    assert!(text.contains(r#"error="invalid_token""#));
}

/// User middleware outside `AuthLayer` asks for the caller with a
/// `PrincipalSlot`, as a logging middleware would: filled for a served
/// request and for one an inner layer refused, empty for a refused key.
#[tokio::test]
async fn middleware_outside_the_layer_receives_the_principal_in_its_slot() {
    use axum::extract::Request;
    use axum::middleware::{from_fn, Next};
    use axum::response::Response;
    use keyward::auth::PrincipalSlot;
    use keyward::authorize::RequireScopes;

    async fn log(mut request: Request, next: Next) -> Response {
        let caller = PrincipalSlot::plant(&mut request);
        let mut response = next.run(request).await;
        let owner = caller.get().map_or("-", |p| p.owner()).to_owned();
        response
            .headers_mut()
            .insert("x-logged-owner", owner.parse().unwrap());
        response
    }

    let (_, key, store) = app().await;
    let auth = AuthLayer::new(store, KeyFormat::new("sk_live").unwrap());
    let router = Router::new()
        .route(
            "/me",
            get(|p: Principal| async move { p.owner().to_owned() }),
        )
        .route(
            "/admin",
            get(|| async { "admin" })
                .route_layer(RequireScopes::all(["admin:all".parse().unwrap()])),
        )
        .layer(auth)
        .layer(from_fn(log));
    let bearer = format!("authorization: Bearer {}", key.expose_secret());

    let (status, text) = raw(router.clone(), &request("/me", &[bearer.as_bytes()])).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("x-logged-owner: acme"), "{text}");
    // Refused by an inner layer: the slot still names the caller.
    let (status, text) = raw(router.clone(), &request("/admin", &[bearer.as_bytes()])).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("x-logged-owner: acme"), "{text}");
    // Refused by AuthLayer: empty.
    let (status, text) = raw(
        router,
        &request("/me", &[b"authorization: Bearer sk_live_nope"]),
    )
    .await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("x-logged-owner: -"), "{text}");
}
