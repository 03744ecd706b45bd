//! RequireScopes through `oneshot` on a `service_fn` and in a real axum Router.

use std::convert::Infallible;
use std::time::SystemTime;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use keyward::auth::{AuthLayer, Principal};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher};
use keyward::record::KeyRecord;
use keyward::reject::{RejectReason, Rejection, Responder};
use keyward::scope::{Scope, ScopeError};
use keyward::store::{KeyStore, MemoryStore};
use keyward::RequireScopes;
use tower::{service_fn, ServiceBuilder, ServiceExt};

struct Fixture {
    format: KeyFormat,
    store: MemoryStore,
}

impl Fixture {
    fn new() -> Self {
        Self {
            format: KeyFormat::new("sk_live").unwrap(),
            store: MemoryStore::new(),
        }
    }

    async fn key(&self, scopes: &str) -> ApiKey {
        let key = KeyGenerator::new(self.format.clone()).generate().unwrap();
        let record = KeyRecord::new(
            key.id(),
            KeyHasher::sha256().hash(key.secret()),
            "acme",
            SystemTime::now(),
        )
        .with_scopes(scopes.parse().unwrap());
        self.store.insert(record).await.unwrap();
        key
    }

    fn auth(&self) -> AuthLayer {
        AuthLayer::new(self.store.clone(), self.format.clone())
    }
}

async fn ok(_: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new("served".to_owned()))
}

async fn call(
    auth: AuthLayer,
    scopes: RequireScopes,
    key: Option<&ApiKey>,
) -> (Response<()>, String) {
    let service = ServiceBuilder::new()
        .layer(auth)
        .layer(scopes)
        .service(service_fn(ok));
    let mut request = Request::post("/pets");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {}", key.expose_secret()));
    }
    let response = service
        .oneshot(request.body(String::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        Response::from_parts(parts, ()),
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn reader_key_is_refused_on_a_write_route() {
    let f = Fixture::new();
    let reader = f.key("pets:read").await;
    let (response, body) = call(
        f.auth(),
        RequireScopes::try_all(["pets:write"]).unwrap(),
        Some(&reader),
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="api", error="insufficient_scope", scope="pets:write""#
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["status"], 403);
    assert_eq!(
        problem["required_scopes"],
        serde_json::json!(["pets:write"])
    );
    assert!(problem["detail"].as_str().unwrap().contains("pets:write"));
    let rejection = response.extensions().get::<Rejection>().unwrap();
    assert_eq!(rejection.reason(), RejectReason::InsufficientScope);
    assert_eq!(rejection.key_id(), Some(reader.id()));
    assert!(!body.contains(reader.secret()));

    let writer = f.key("pets:read pets:write").await;
    let (response, body) = call(
        f.auth(),
        RequireScopes::try_all(["pets:write"]).unwrap(),
        Some(&writer),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, "served");
}

#[tokio::test]
async fn all_names_only_the_missing_scopes_and_any_the_alternatives() {
    let f = Fixture::new();
    let key = f.key("pets:read").await;
    let all = RequireScopes::try_all(["pets:read", "pets:write", "usage:read"]).unwrap();
    let (response, _) = call(f.auth(), all, Some(&key)).await;
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="api", error="insufficient_scope", scope="pets:write usage:read""#
    );

    let any = RequireScopes::try_any(["pets:write", "keys:admin"]).unwrap();
    let (response, _) = call(f.auth(), any, Some(&key)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="api", error="insufficient_scope", scope="keys:admin pets:write""#
    );

    let any = RequireScopes::try_any(["pets:write", "pets:read"]).unwrap();
    assert_eq!(
        call(f.auth(), any, Some(&key)).await.0.status(),
        StatusCode::OK
    );

    // all() of nothing needs only a key; any() of nothing admits nobody.
    let none: [Scope; 0] = [];
    assert_eq!(
        call(f.auth(), RequireScopes::all(none.clone()), Some(&key))
            .await
            .0
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        call(f.auth(), RequireScopes::any(none), Some(&key))
            .await
            .0
            .status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn wildcard_grants_follow_the_documented_rules() {
    let f = Fixture::new();
    let pets_any = f.key("pets:*").await;
    let cases = [
        ("pets:read", StatusCode::OK),
        ("pets:photos:write", StatusCode::OK),
        ("pets", StatusCode::FORBIDDEN),
        ("petsx:read", StatusCode::FORBIDDEN),
        ("users:read", StatusCode::FORBIDDEN),
    ];
    for (required, expected) in cases {
        let (response, _) = call(
            f.auth(),
            RequireScopes::try_all([required]).unwrap(),
            Some(&pets_any),
        )
        .await;
        assert_eq!(response.status(), expected, "pets:* for {required}");
    }

    // `*` is never parsed from input; only Scope::everything() makes it.
    assert_eq!("*".parse::<Scope>(), Err(ScopeError::Universal));
    let key = KeyGenerator::new(f.format.clone()).generate().unwrap();
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "root",
        SystemTime::now(),
    )
    .with_scopes([Scope::everything()].into());
    f.store.insert(record).await.unwrap();
    let (response, _) = call(
        f.auth(),
        RequireScopes::try_all(["users:delete", "billing:refund"]).unwrap(),
        Some(&key),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn malformed_scopes_are_refused_when_the_layer_is_built() {
    assert_eq!(
        RequireScopes::try_all(["pets:write", "Pets:Read"]).unwrap_err(),
        ScopeError::InvalidCharacter
    );
    assert_eq!(
        RequireScopes::try_any(["pets write"]).unwrap_err(),
        ScopeError::InvalidCharacter
    );
    assert_eq!(
        RequireScopes::try_all(["pets:"]).unwrap_err(),
        ScopeError::EmptySegment
    );
    assert_eq!(
        RequireScopes::try_any(["*"]).unwrap_err(),
        ScopeError::Universal
    );
    assert_eq!(
        "pets:réad".parse::<Scope>().unwrap_err(),
        ScopeError::InvalidCharacter
    );
}

#[tokio::test]
async fn without_a_principal_the_answer_is_401_never_200() {
    // Wrong order: RequireScopes outside AuthLayer sees no Principal.
    let f = Fixture::new();
    let key = f.key("pets:write").await;
    let service = ServiceBuilder::new()
        .layer(RequireScopes::try_all(["pets:write"]).unwrap())
        .layer(f.auth())
        .service(service_fn(ok));
    let request = Request::post("/pets")
        .header("authorization", format!("Bearer {}", key.expose_secret()))
        .body(String::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="api""#
    );
    assert_eq!(
        response.extensions().get::<Rejection>().unwrap().reason(),
        RejectReason::MissingKey
    );
}

#[tokio::test]
async fn custom_responder_is_used() {
    let f = Fixture::new();
    let key = f.key("pets:read").await;
    let scopes = RequireScopes::try_all(["pets:write"])
        .unwrap()
        .responder(Responder::problem_json("pets"));
    let (response, _) = call(f.auth(), scopes, Some(&key)).await;
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="pets", error="insufficient_scope", scope="pets:write""#
    );
}

fn router(f: &Fixture) -> Router {
    Router::new()
        .route(
            "/pets",
            get(|| async { "list" }).route_layer(RequireScopes::try_all(["pets:read"]).unwrap()),
        )
        .route(
            "/pets",
            post(|p: Principal| async move { format!("made by {}", p.owner()) })
                .route_layer(RequireScopes::try_all(["pets:write"]).unwrap()),
        )
        .layer(f.auth())
        .route(
            "/wrong-order",
            post(|| async { "should never be served" })
                .route_layer(RequireScopes::try_all(["pets:write"]).unwrap()),
        )
}

async fn send(
    router: &Router,
    method: &str,
    path: &str,
    key: &ApiKey,
) -> (StatusCode, http::HeaderMap, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", key.expose_secret())
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn axum_router_with_route_layer() {
    let f = Fixture::new();
    let reader = f.key("pets:read").await;
    let writer = f.key("pets:*").await;
    let app = router(&f);

    assert_eq!(send(&app, "GET", "/pets", &reader).await.0, StatusCode::OK);
    let (status, headers, body) = send(&app, "POST", "/pets", &reader).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        headers["www-authenticate"],
        r#"Bearer realm="api", error="insufficient_scope", scope="pets:write""#
    );
    assert!(body.contains("pets:write"), "{body}");

    let (status, _, body) = send(&app, "POST", "/pets", &writer).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "made by acme");

    let (status, _, body) = send(&app, "POST", "/wrong-order", &writer).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!body.contains("should never be served"));
}
