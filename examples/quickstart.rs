//! A small pet-shop API protected by keyward, on the in-memory store.
//!
//! ```sh
//! cargo run --example quickstart               # listens on 127.0.0.1:3000
//! cargo run --example quickstart 127.0.0.1:0   # any free port
//! ```
//!
//! It prints the address and two keys, then serves:
//!
//! ```sh
//! curl http://127.0.0.1:3000/health
//! curl -H "Authorization: Bearer $ADMIN_KEY" http://127.0.0.1:3000/pets
//! curl -H "X-API-Key: $READER_KEY" http://127.0.0.1:3000/me
//! curl -H "Authorization: Bearer $ADMIN_KEY" -d '{"name":"Ada","kind":"owl"}' http://127.0.0.1:3000/pets
//! curl -H "Authorization: Bearer $ADMIN_KEY" \
//!      -d '{"scopes":["pets:read"],"owner":"bob","expires_in_seconds":3600}' http://127.0.0.1:3000/keys
//! curl -X DELETE -H "Authorization: Bearer $ADMIN_KEY" http://127.0.0.1:3000/keys/$KEY_ID
//! curl -H "X-API-Key: $ADMIN_KEY" http://127.0.0.1:3000/usage
//! ```
//!
//! `/keys` and `/usage` are keyward's admin API (`keyward::admin`), so the
//! rest of it is here too: `GET /keys?owner=..`, rotate, disable, enable,
//! scopes, limits, usage per key and owner, its OpenAPI document at
//! `/openapi.json`, and the usage page at `/usage` in a browser.
//!
//! The reader key may make 5 requests a second (burst 5); the sixth gets
//! `429` with `Retry-After`. Every answer carries `RateLimit` fields.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keyward::admin::AdminApi;
use keyward::auth::{AuthLayer, FailureThrottle, Principal, PrincipalSlot};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher};
use keyward::limit::{Limits, MemoryLimiter, PolicyError, RateLimitLayer, RatePolicy};
use keyward::manager::KeyManager;
use keyward::record::KeyRecord;
use keyward::reject::Rejection;
use keyward::scope::{Scope, ScopeError};
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{RollupSink, TracingSink, UsageLayer};
use keyward::RequireScopes;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,keyward=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let (app, admin, reader) = build().await?;

    let listener = TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    println!("admin key: {}", admin.expose_secret());
    println!("reader key: {}", reader.expose_secret());
    // The client address feeds the failed-attempt throttle.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

/// The whole application: a store holding the admin and reader keys, and
/// the router. Returns the router and the two keys (admin, reader).
pub(crate) async fn build() -> Result<(Router, ApiKey, ApiKey), Box<dyn std::error::Error>> {
    let format = KeyFormat::new("sk_live")?;
    let store = MemoryStore::new();
    let admin = issue(
        &store,
        &format,
        "admin",
        "pets:read pets:write keys:admin usage:read",
        per_second(100)?,
    )
    .await?;
    let reader = issue(&store, &format, "reader", "pets:read", per_second(5)?).await?;
    Ok((app(store, format)?, admin, reader))
}

/// A tier of `n` requests a second, with a burst of `n`.
fn per_second(n: u32) -> Result<Limits, PolicyError> {
    Limits::new([RatePolicy::new("burst", n, Duration::from_secs(1))?.into()])
}

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    pets: Arc<Mutex<Vec<Value>>>,
}

/// The routes and the layers around them, outermost first:
///
/// - `UsageLayer` counts every request (also the refused ones) per key and
///   per minute, into the `RollupSink` that `/usage` reads;
/// - the request log;
/// - `AuthLayer` (with a failed-attempt throttle): `/health` is added after
///   it, so it needs no key;
/// - `RateLimitLayer`: each key's own limits, `RateLimit` fields;
/// - `RequireScopes`, per route (`route_layer`).
///
/// `/keys` and `/usage` are keyward's admin API (`keyward::admin`), merged
/// at the root with the same authentication and limiter: `keys:admin` to
/// manage keys, `usage:read` to read usage.
pub(crate) fn app(
    store: MemoryStore,
    format: KeyFormat,
) -> Result<Router, Box<dyn std::error::Error>> {
    let usage = RollupSink::new();
    // Issued, rotated and revoked keys are logged as lifecycle events.
    let manager = KeyManager::new(store.clone(), format.clone()).with_events(TracingSink::info());
    let state = AppState {
        pets: Arc::new(Mutex::new(vec![
            json!({"id": 1, "name": "Rex", "kind": "dog"}),
            json!({"id": 2, "name": "Tom", "kind": "cat"}),
        ])),
    };
    let auth = AuthLayer::new(store, format)
        .failure_throttle(FailureThrottle::new(20, Duration::from_secs(60)));
    let limit = RateLimitLayer::new(MemoryLimiter::new());
    let admin = AdminApi::new(manager, usage.clone())
        .scope(Scope::new("keys:admin")?)
        .usage_scope(Scope::new("usage:read")?)
        .auth_layer(auth.clone())
        .rate_limit_layer(limit.clone())
        // The tier of keys made through `POST /keys`.
        .default_limits(per_second(5)?);
    let require = |scope: &str| Ok::<_, ScopeError>(RequireScopes::all([Scope::new(scope)?]));
    Ok(Router::new()
        .route("/pets", get(list_pets).route_layer(require("pets:read")?))
        .route(
            "/pets",
            post(create_pet).route_layer(require("pets:write")?),
        )
        .route("/me", get(me))
        .with_state(state)
        // One `Router::layer` per group, composed with `ServiceBuilder`
        // (outermost first): every `Router::layer` boxes each route again.
        .layer(ServiceBuilder::new().layer(auth).layer(limit))
        // The admin routes bring their own (the same) authentication.
        .merge(admin.router())
        .route("/health", get(|| async { "ok" }))
        .layer(
            ServiceBuilder::new()
                .layer(UsageLayer::new(usage))
                .layer(middleware::from_fn(log_request)),
        ))
}

/// Mints a key with `scopes` and stores its record; the plaintext is
/// returned once, to be printed.
async fn issue(
    store: &MemoryStore,
    format: &KeyFormat,
    owner: &str,
    scopes: &str,
    limits: Limits,
) -> Result<ApiKey, Box<dyn std::error::Error>> {
    let key = KeyGenerator::new(format.clone()).generate()?;
    let hash = KeyHasher::sha256().hash(key.secret());
    let record = KeyRecord::new(key.id(), hash, owner, SystemTime::now())
        .with_name(format!("{owner} key"))
        .with_scopes(scopes.parse()?)
        .with_limits(limits);
    store.insert(record).await?;
    Ok(key)
}

async fn list_pets(State(state): State<AppState>) -> Json<Value> {
    Json(Value::Array(lock(&state.pets).clone()))
}

/// `POST /pets` (`pets:write`): `{"name": "...", "kind": "..."}`.
async fn create_pet(State(state): State<AppState>, body: Bytes) -> Response {
    let Some(body) = json_object(&body) else {
        return problem(StatusCode::BAD_REQUEST, "The body must be a JSON object.");
    };
    let (Some(name), kind) = (
        body.get("name").and_then(Value::as_str),
        body.get("kind")
            .and_then(Value::as_str)
            .unwrap_or("unknown"),
    ) else {
        return problem(StatusCode::BAD_REQUEST, "\"name\" must be a string.");
    };
    let mut pets = lock(&state.pets);
    let pet = json!({"id": pets.len() + 1, "name": name, "kind": kind});
    pets.push(pet.clone());
    (StatusCode::CREATED, Json(pet)).into_response()
}

fn json_object(body: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// An RFC 9457 problem response.
fn problem(status: StatusCode, detail: &str) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A handler that panicked while holding the lock left valid data.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The caller's identity (`Principal`'s JSON: key id, owner, name, scopes,
/// metadata): never the key itself.
async fn me(principal: Principal) -> Json<Principal> {
    Json(principal)
}

/// Logs each request: key id, method, path, status and latency; never a
/// secret (AuthLayer has removed the credential before handlers run).
async fn log_request(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // AuthLayer (inside this middleware) leaves the caller here.
    let caller = PrincipalSlot::plant(&mut request);
    let response = next.run(request).await;
    let rejection = response.extensions().get::<Rejection>();
    let key_id = match caller.get() {
        Some(principal) => Some(principal.key_id()),
        None => rejection.and_then(Rejection::key_id),
    };
    tracing::info!(
        key_id = %key_id.map(|id| id.to_string()).unwrap_or_else(|| "-".into()),
        refused = rejection.map_or("-", |r| r.reason().as_str()),
        %method,
        path,
        status = response.status().as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}
