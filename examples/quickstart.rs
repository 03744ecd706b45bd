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
//! curl -H "X-API-Key: $ADMIN_KEY" http://127.0.0.1:3000/usage
//! ```

use std::time::{Instant, SystemTime};

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use keyward::auth::{AuthLayer, Principal};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher};
use keyward::record::KeyRecord;
use keyward::reject::Rejection;
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{AggregatingSink, UsageLayer};
use serde_json::{json, Value};
use tokio::net::TcpListener;

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
    let format = KeyFormat::new("sk_live")?;
    let store = MemoryStore::new();
    let admin = issue(
        &store,
        &format,
        "admin",
        "pets:read pets:write keys:admin usage:read",
    )
    .await?;
    let reader = issue(&store, &format, "reader", "pets:read").await?;

    // Per-key counters for GET /usage; UsageLayer, outermost, feeds them.
    let usage = AggregatingSink::new();
    let app = Router::new()
        .route("/pets", get(list_pets))
        .route("/me", get(me))
        .route("/usage", {
            let usage = usage.clone();
            get(move |principal: Principal, headers: http::HeaderMap| {
                std::future::ready(usage_report(&principal, &headers, &usage))
            })
        })
        .layer(AuthLayer::new(store, format))
        .route("/health", get(|| async { "ok" }))
        .layer(middleware::from_fn(log_request))
        .layer(UsageLayer::new(usage));

    let listener = TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    println!("admin key: {}", admin.expose_secret());
    println!("reader key: {}", reader.expose_secret());
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Mints a key with `scopes` and stores its record; the plaintext is
/// returned once, to be printed.
async fn issue(
    store: &MemoryStore,
    format: &KeyFormat,
    owner: &str,
    scopes: &str,
) -> Result<ApiKey, Box<dyn std::error::Error>> {
    let key = KeyGenerator::new(format.clone()).generate()?;
    let hash = KeyHasher::sha256().hash(key.secret());
    let record = KeyRecord::new(key.id(), hash, owner, SystemTime::now())
        .with_name(format!("{owner} key"))
        .with_scopes(scopes.parse()?);
    store.insert(record).await?;
    Ok(key)
}

async fn list_pets() -> Json<Value> {
    Json(json!([
        {"id": 1, "name": "Rex", "kind": "dog"},
        {"id": 2, "name": "Tom", "kind": "cat"},
    ]))
}

/// The caller's identity: never the key itself.
async fn me(principal: Principal) -> Json<Value> {
    Json(json!({
        "key_id": principal.key_id().to_string(),
        "owner": principal.owner(),
        "name": principal.name(),
        "scopes": principal.scopes().iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    }))
}

/// The usage of every key, from the aggregate (scope `usage:read`).
fn usage_report(
    principal: &Principal,
    headers: &http::HeaderMap,
    usage: &AggregatingSink,
) -> Response {
    let required: keyward::scope::Scope = "usage:read".parse().expect("a valid scope");
    if !principal.scopes().grants(&required) {
        let rejection = Rejection::new(keyward::reject::RejectReason::InsufficientScope)
            .with_key_id(principal.key_id())
            .with_required_scopes(keyward::scope::ScopeSet::from([required]));
        return keyward::reject::Responder::default()
            .refuse(headers, rejection)
            .map(axum::body::Body::from);
    }
    let keys: Vec<Value> = usage
        .snapshot()
        .iter()
        .map(|key| {
            let denied_by_reason: serde_json::Map<String, Value> = key
                .denied_by_reason
                .iter()
                .map(|(reason, n)| (reason.as_str().to_owned(), json!(n)))
                .collect();
            json!({
                "key_id": key.key_id.map(|id| id.to_string()),
                "owner": key.owner,
                "requests": key.requests,
                "allowed": key.allowed,
                "denied": key.denied,
                "denied_by_reason": denied_by_reason,
                "status": {
                    "2xx": key.statuses.success,
                    "3xx": key.statuses.redirection,
                    "4xx": key.statuses.client_error,
                    "5xx": key.statuses.server_error,
                },
                "mean_latency_us": key.mean_latency().map(|d| d.as_micros() as u64),
                "last_used_unix": key.last_used
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
            })
        })
        .collect();
    let anonymous = usage.anonymous();
    Json(json!({
        "keys": keys,
        "anonymous": {"requests": anonymous.requests, "denied": anonymous.denied},
    }))
    .into_response()
}

/// Logs each request: key id, method, path, status and latency; never a
/// secret (AuthLayer has removed the credential before handlers run).
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let rejection = response.extensions().get::<Rejection>();
    let key_id = match response.extensions().get::<Principal>() {
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
