//! keyward around a real tonic server (tonic-health), called by a real
//! tonic client over loopback; and the protocol of each refusal, through
//! `oneshot` and a real axum Router.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use keyward::clock::FakeClock;
use keyward::grpc::{MethodPatternError, MethodScopesLayer};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher, KeyId};
use keyward::limit::{Limits, MemoryLimiter, RateLimitLayer, RatePolicy};
use keyward::record::KeyRecord;
use keyward::reject::{RejectReason, Rejection, Responder};
use keyward::store::{KeyStore, Lookup, MemoryStore, StoreError};
use keyward::AuthLayer;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::{service_fn, ServiceBuilder, ServiceExt};

struct Keys {
    format: KeyFormat,
    store: MemoryStore,
    health: ApiKey,
    other: ApiKey,
}

async fn keys() -> Keys {
    let format = KeyFormat::new("sk_test").unwrap();
    let store = MemoryStore::new();
    let issue = |scopes: &'static str| {
        let format = format.clone();
        let store = store.clone();
        async move {
            let key = KeyGenerator::new(format).generate().unwrap();
            let record = KeyRecord::new(
                key.id(),
                KeyHasher::sha256().hash(key.secret()),
                "acme",
                SystemTime::now(),
            )
            .with_scopes(scopes.parse().unwrap());
            store.insert(record).await.unwrap();
            key
        }
    };
    let health = issue("health:read").await;
    let other = issue("pets:read").await;
    Keys {
        format,
        store,
        health,
        other,
    }
}

fn scopes() -> MethodScopesLayer {
    MethodScopesLayer::new()
        .method("/grpc.health.v1.Health/*", "health:read".parse().unwrap())
        .unwrap()
}

async fn health_service(
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    service
}

async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn client(addr: SocketAddr) -> HealthClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

/// `Server::builder().layer(AuthLayer).layer(MethodScopesLayer)`.
async fn serve(auth: AuthLayer) -> SocketAddr {
    let (listener, addr) = listener().await;
    let health = health_service().await;
    tokio::spawn(
        Server::builder()
            .layer(auth)
            .layer(scopes())
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    addr
}

async fn check(
    client: &mut HealthClient<Channel>,
    metadata: &[(&'static str, String)],
) -> Result<ServingStatus, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    for (name, value) in metadata {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    let response = client.check(request).await?;
    Ok(response.into_inner().status())
}

fn bearer(key: &ApiKey) -> (&'static str, String) {
    ("authorization", format!("Bearer {}", key.expose_secret()))
}

fn x_api_key(key: &ApiKey) -> (&'static str, String) {
    ("x-api-key", key.expose_secret().to_owned())
}

fn assert_no_secret(status: &tonic::Status, keys: &Keys) {
    for key in [&keys.health, &keys.other] {
        let secret = key.expose_secret();
        assert!(!status.message().contains(secret));
        assert!(!status.message().contains(&key.id().to_string()));
        for value in status.metadata().clone().into_headers().values() {
            assert!(!value
                .as_bytes()
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()));
        }
    }
}

#[tokio::test]
async fn tonic_server_answers_in_grpc_statuses() {
    let keys = keys().await;
    let addr = serve(AuthLayer::new(keys.store.clone(), keys.format.clone())).await;
    let mut client = client(addr).await;

    let status = check(&mut client, &[]).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "An API key is required.");

    let mut wrong = keys.health.expose_secret().to_owned();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    let status = check(&mut client, &[("authorization", format!("Bearer {wrong}"))])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_no_secret(&status, &keys);

    let unknown = KeyGenerator::new(keys.format.clone()).generate().unwrap();
    let status = check(&mut client, &[x_api_key(&unknown)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(!status.message().contains(unknown.expose_secret()));

    // The key twice, differently: a malformed request, still UNAUTHENTICATED.
    let status = check(&mut client, &[bearer(&keys.health), x_api_key(&keys.other)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_no_secret(&status, &keys);

    let served = check(&mut client, &[bearer(&keys.health)]).await.unwrap();
    assert_eq!(served, ServingStatus::Serving);
    let served = check(&mut client, &[x_api_key(&keys.health)])
        .await
        .unwrap();
    assert_eq!(served, ServingStatus::Serving);

    let status = check(&mut client, &[bearer(&keys.other)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "This API key lacks the scope this method requires: health:read."
    );
    assert_no_secret(&status, &keys);
}

/// A store whose backend is down, and that never answers at once (so the
/// look-up future runs inside tonic's server).
#[derive(Debug)]
struct Down;

fn down() -> StoreError {
    StoreError::backend(std::io::Error::other("connection refused"))
}

#[async_trait::async_trait]
impl KeyStore for Down {
    async fn find(&self, _: &KeyId) -> Lookup {
        Err(down())
    }
    async fn insert(&self, _: KeyRecord) -> Result<(), StoreError> {
        Err(down())
    }
    async fn update(&self, _: KeyRecord) -> Result<(), StoreError> {
        Err(down())
    }
    async fn revoke(&self, _: &KeyId, _: SystemTime) -> Result<(), StoreError> {
        Err(down())
    }
    async fn list_by_owner(&self, _: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        Err(down())
    }
}

#[tokio::test]
async fn a_store_that_is_down_is_unavailable() {
    let keys = keys().await;
    let addr = serve(AuthLayer::new(Down, keys.format.clone())).await;
    let mut client = client(addr).await;
    let status = check(&mut client, &[bearer(&keys.health)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(!status.message().contains("connection refused"));
    assert_no_secret(&status, &keys);
}

#[tokio::test]
async fn a_burst_beyond_the_limit_is_resource_exhausted() {
    let keys = keys().await;
    let clock = FakeClock::default();
    // Three calls a minute: the fourth waits 20 s for one to come back.
    let limited = KeyGenerator::new(keys.format.clone()).generate().unwrap();
    let record = KeyRecord::new(
        limited.id(),
        KeyHasher::sha256().hash(limited.secret()),
        "acme",
        SystemTime::now(),
    )
    .with_scopes("health:read".parse().unwrap())
    .with_limits(
        Limits::new([RatePolicy::new("minute", 3, Duration::from_secs(60))
            .unwrap()
            .into()])
        .unwrap(),
    );
    keys.store.insert(record).await.unwrap();

    let (listener, addr) = listener().await;
    let health = health_service().await;
    tokio::spawn(
        Server::builder()
            .layer(AuthLayer::new(keys.store.clone(), keys.format.clone()))
            .layer(RateLimitLayer::new(
                MemoryLimiter::new().with_clock(clock.clone()),
            ))
            .layer(scopes())
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let mut client = client(addr).await;
    for _ in 0..3 {
        assert_eq!(
            check(&mut client, &[bearer(&limited)]).await.unwrap(),
            ServingStatus::Serving
        );
    }
    let status = check(&mut client, &[bearer(&limited)]).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "This API key has used up its quota for now; retry later."
    );
    assert_eq!(status.metadata().get("retry-after").unwrap(), "20");
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "20000"
    );
    assert_no_secret(&status, &keys);
    assert!(!status.message().contains(limited.expose_secret()));

    // Keys without limits are not touched; after the wait, the call passes.
    assert!(check(&mut client, &[bearer(&keys.health)]).await.is_ok());
    clock.advance(Duration::from_secs(20));
    assert_eq!(
        check(&mut client, &[bearer(&limited)]).await.unwrap(),
        ServingStatus::Serving
    );
}

/// tonic services mounted in an axum router, with keyward as axum layers,
/// served by tonic.
#[tokio::test]
async fn tonic_services_in_an_axum_router() {
    let keys = keys().await;
    let router: Router = Routes::new(health_service().await)
        .into_axum_router()
        .layer(scopes())
        .layer(AuthLayer::new(keys.store.clone(), keys.format.clone()))
        .route("/plain", get(|| async { "plain" }));
    let (listener, addr) = listener().await;
    tokio::spawn(
        Server::builder()
            .add_routes(Routes::from(router))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let mut client = client(addr).await;
    assert_eq!(
        check(&mut client, &[]).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        check(&mut client, &[x_api_key(&keys.health)])
            .await
            .unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        check(&mut client, &[x_api_key(&keys.other)])
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
}

fn request(content_type: Option<&str>, key: Option<&ApiKey>) -> Request<String> {
    let mut builder = Request::post("/grpc.health.v1.Health/Check");
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    if let Some(key) = key {
        builder = builder.header(
            header::AUTHORIZATION,
            format!("Bearer {}", key.expose_secret()),
        );
    }
    builder.body(String::new()).unwrap()
}

async fn body<B: http_body::Body<Data = Bytes>>(response: Response<B>) -> Bytes
where
    B::Error: std::fmt::Debug,
{
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn http_is_never_answered_as_grpc_nor_grpc_as_http() {
    let keys = keys().await;
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(keys.store.clone(), keys.format.clone()))
        .layer(scopes())
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                Bytes::from_static(b"served"),
            )))
        }));

    // HTTP: problem details, exactly as without gRPC.
    for content_type in [
        None,
        Some("application/json"),
        Some("application/grpcx"),
        Some("text/plain; application/grpc"),
    ] {
        let response = service
            .clone()
            .oneshot(request(content_type, None))
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{content_type:?}"
        );
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="api""#
        );
        assert!(response.headers().get("grpc-status").is_none());
        assert!(response.headers().get("grpc-message").is_none());
        let rejection = response.extensions().get::<Rejection>().unwrap();
        assert_eq!(rejection.reason(), RejectReason::MissingKey);
        assert!(!body(response).await.is_empty());

        let response = service
            .clone()
            .oneshot(request(content_type, Some(&keys.other)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.headers().get("grpc-status").is_none());
        let json: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
        assert_eq!(json["required_scopes"][0], "health:read");
    }

    // gRPC: trailers-only, HTTP 200, no body, no HTTP challenge.
    for (content_type, answered) in [
        ("application/grpc", "application/grpc"),
        ("application/grpc+proto", "application/grpc"),
        ("application/grpc-web+proto", "application/grpc-web+proto"),
        (
            "application/grpc-web-text",
            "application/grpc-web-text+proto",
        ),
    ] {
        for (key, code) in [(None, "16"), (Some(&keys.other), "7")] {
            let response = service
                .clone()
                .oneshot(request(Some(content_type), key))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{content_type}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], answered);
            assert_eq!(response.headers()["grpc-status"], code);
            assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
            let rejection = response.extensions().get::<Rejection>().unwrap();
            assert!(rejection.status().is_client_error());
            assert!(body(response).await.is_empty());
        }
    }

    // Served requests are untouched, whatever the protocol.
    for content_type in [None, Some("application/grpc")] {
        let response = service
            .clone()
            .oneshot(request(content_type, Some(&keys.health)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("grpc-status").is_none());
        assert!(response.extensions().get::<Rejection>().is_none());
        assert_eq!(body(response).await, "served");
    }
}

#[tokio::test]
async fn a_custom_responder_answers_http_only() {
    let keys = keys().await;
    let responder = Responder::custom(|rejection| {
        let mut response = Response::new(Bytes::from(format!("no: {}", rejection.reason())));
        *response.status_mut() = StatusCode::IM_A_TEAPOT;
        response
    });
    let router: Router = Router::new()
        .route(
            "/grpc.health.v1.Health/Check",
            axum::routing::post(|| async { "ok" }),
        )
        .layer(AuthLayer::new(keys.store.clone(), keys.format.clone()).responder(responder));

    let response = router.clone().oneshot(request(None, None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(body(response).await, "no: missing_key");

    let response = router
        .clone()
        .oneshot(request(Some("application/grpc"), None))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "16");
    assert!(body(response).await.is_empty());

    let response = router
        .oneshot(request(Some("application/grpc"), Some(&keys.health)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "ok");
}

#[tokio::test]
async fn unlisted_methods_and_missing_principals() {
    let keys = keys().await;
    let inner = service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("served")))
    });
    let grpc = |path: &str, key: &ApiKey| {
        Request::post(path)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", key.expose_secret()),
            )
            .body(String::new())
            .unwrap()
    };
    let auth = AuthLayer::new(keys.store.clone(), keys.format.clone());

    // Deny-unlisted by default.
    let denying = ServiceBuilder::new()
        .layer(auth.clone())
        .layer(scopes())
        .service(inner);
    let response = denying
        .clone()
        .oneshot(grpc("/pets.Pets/List", &keys.health))
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "7");
    let rejection = response.extensions().get::<Rejection>().unwrap();
    assert_eq!(rejection.reason(), RejectReason::InsufficientScope);
    assert_eq!(rejection.key_id(), Some(keys.health.id()));

    // Opted in: unlisted methods need pets:read.
    let allowing = ServiceBuilder::new()
        .layer(auth.clone())
        .layer(scopes().allow_unlisted("pets:read".parse().unwrap()))
        .service(inner);
    let response = allowing
        .clone()
        .oneshot(grpc("/pets.Pets/List", &keys.other))
        .await
        .unwrap();
    assert!(response.headers().get("grpc-status").is_none());
    let response = allowing
        .oneshot(grpc("/pets.Pets/List", &keys.health))
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "7");

    // Without AuthLayer in front there is no Principal: UNAUTHENTICATED.
    let response = ServiceBuilder::new()
        .layer(scopes())
        .service(inner)
        .oneshot(grpc("/grpc.health.v1.Health/Check", &keys.health))
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "16");

    // Malformed patterns are typed errors.
    assert_eq!(
        MethodScopesLayer::new()
            .method("grpc.health.v1.Health/Check", "a:b".parse().unwrap())
            .unwrap_err(),
        MethodPatternError::Shape
    );
    assert_eq!(
        scopes()
            .method("/grpc.health.v1.Health/*", "a:b".parse().unwrap())
            .unwrap_err(),
        MethodPatternError::Duplicate
    );
    assert_eq!(
        scopes().required_scopes("/grpc.health.v1.Health/Watch"),
        Some(&"health:read".parse().unwrap())
    );
    assert_eq!(scopes().required_scopes("/x.Y/Z"), None);
}
