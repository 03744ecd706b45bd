//! The quickstart's pet shop on shared backends: run it as many times as you
//! like, on as many ports or machines, and every instance shares the keys,
//! the revocations, the rate limits and the usage.
//!
//! ```sh
//! export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
//! export REDIS_URL=redis://127.0.0.1:6379
//! cargo run --features postgres,redis --example distributed 127.0.0.1:3000 &
//! cargo run --features postgres,redis --example distributed 127.0.0.1:3001 &
//! ```
//!
//! Each instance prints, like the quickstart, `listening on http://ADDR:PORT`,
//! `admin key: <key>` and `reader key: <key>`: its own two keys, added to the
//! shared store, so every key printed works on every instance. The routes and
//! answers are the quickstart's (`GET /health`, `GET /pets`, `POST /pets`,
//! `GET /me`, `POST /keys`, `DELETE /keys/{key_id}`, `GET /usage`). As in
//! the quickstart, `/keys` and `/usage` are keyward's admin API
//! (`keyward::admin::AdminApi`, merged at the root), here over the shared
//! store and the shared usage, so the rest of it works across instances
//! too: `GET /keys?owner=..`, rotate, disable, enable, scopes, limits, usage
//! per key and owner, `/openapi.json`, and the usage page at `/usage` in a
//! browser. And:
//!
//! - **keys** live in PostgreSQL (`PgStore`), behind a `CachedStore` in each
//!   instance; a key issued or revoked through any instance is announced over
//!   Redis pub/sub, and every cache drops its copy: a revoked key is refused
//!   everywhere within a second (in practice a few milliseconds);
//! - **limits** are decided by `RedisLimiter`, one atomic round trip a
//!   request on the Redis server's clock: the reader's 5 requests a second
//!   (burst 5) are 5 in total, however the requests are spread;
//! - **usage** goes through a `BatchingSink` into PostgreSQL (`PgUsage`:
//!   raw events, per-key per-minute rollups, the keys' `last_used_at`); the
//!   admin API reads it back from there (`PgUsage` is its `UsageSource`), so
//!   `GET /usage` on any instance counts every instance's requests of the
//!   last 24 hours, a second or so after them;
//! - **pets** are a table in PostgreSQL too, so every instance shows the same.
//!
//! Configuration, from the environment:
//!
//! - `DATABASE_URL` (required): the PostgreSQL database;
//! - `REDIS_URL` (required): the Redis server;
//! - `KEYWARD_SCHEMA` (default `keyward`): the PostgreSQL schema holding the
//!   tables (`keyward_keys`, `keyward_usage_*`, `pets`), created if missing;
//!   `[a-z_][a-z0-9_]*`, at most 48 characters;
//! - `KEYWARD_PREFIX` (default `keyward`): the start of every Redis key
//!   (`{<prefix>:limit:<key id>}:…`) and channel (`<prefix>:keys`) it uses;
//!   1 to 58 characters of `A-Z a-z 0-9 : - _ .`.
//!
//! Instances with the same schema and prefix share everything; give each
//! deployment (or test) its own to keep them apart. A missing variable, or
//! a server that does not answer, stops it at start-up with a message and
//! exit status 1. `tests/distributed.rs` starts it twice and checks each of
//! the promises above.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keyward::admin::AdminApi;
use keyward::auth::{FailureThrottle, Principal, PrincipalSlot};
use keyward::key::{ApiKey, KeyFormat};
use keyward::limit::{Limits, PolicyError, RatePolicy, RedisLimiter};
use keyward::manager::{IssueOptions, KeyManager};
use keyward::postgres::QualifiedName;
use keyward::reject::Rejection;
use keyward::scope::{Scope, ScopeError, ScopeSet};
use keyward::store::invalidation::RedisInvalidation;
use keyward::store::{CachedStore, PgStore};
use keyward::usage::{BatchingSink, PgUsage};
use keyward::{Keyward, RequireScopes};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// The longest a start-up connection attempt waits for a server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
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
    match run(&addr).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Why the example could not start: a sentence for the terminal.
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `what`, then the error and each of its sources (never a URL: it may hold
/// a password).
fn fatal(what: &str, error: &(dyn std::error::Error + 'static)) -> Fatal {
    let mut message = format!("{what}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source's text in their own.
        if !message.contains(&cause_text) {
            message.push_str(&format!(": {cause_text}"));
        }
        source = cause.source();
    }
    Fatal(message)
}

/// The settings read from the environment.
struct Config {
    database_url: String,
    redis_url: String,
    schema: String,
    prefix: String,
}

impl Config {
    fn from_env() -> Result<Self, Fatal> {
        let required = |name: &str| match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Ok(value),
            _ => Err(Fatal(format!(
                "{name} is not set: this example needs PostgreSQL and Redis, e.g. \
                 DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
                 REDIS_URL=redis://127.0.0.1:6379"
            ))),
        };
        let optional = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "keyward".to_owned())
        };
        Ok(Self {
            database_url: required("DATABASE_URL")?,
            redis_url: required("REDIS_URL")?,
            schema: optional("KEYWARD_SCHEMA"),
            prefix: optional("KEYWARD_PREFIX"),
        })
    }
}

async fn run(addr: &str) -> Result<(), Fatal> {
    let config = Config::from_env()?;
    let shared = connect(&config).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| fatal(&format!("cannot listen on {addr}"), &e))?;
    let local = listener
        .local_addr()
        .map_err(|e| fatal("no local address", &e))?;
    let (app, admin, reader) = build(&shared).await?;

    println!("listening on http://{local}");
    println!("admin key: {}", admin.expose_secret());
    println!("reader key: {}", reader.expose_secret());
    // The client address feeds the failed-attempt throttle.
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await;
    // Whatever ended the server, what was recorded reaches PostgreSQL.
    shared.sink.shutdown().await;
    served.map_err(|e| fatal("the server failed", &e))
}

/// Ctrl-C, or SIGTERM (what an orchestrator sends a replica).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What every instance shares through the servers, made at start-up.
struct Shared {
    keyward: Keyward<BatchingSink>,
    sink: BatchingSink,
    usage: PgUsage,
    pool: PgPool,
    pets: QualifiedName,
}

/// Connects to both servers (before creating anything), creates what is
/// missing (schema, tables) and waits until this instance hears
/// revocations.
async fn connect(config: &Config) -> Result<Shared, Fatal> {
    let invalid_schema = |e: keyward::postgres::InvalidIdentifier| {
        Fatal(format!("KEYWARD_SCHEMA={:?}: {e}", config.schema))
    };
    // Checked before any connection: a typo is not a network error.
    let pets = QualifiedName::new(&config.schema, "pets").map_err(invalid_schema)?;
    // One connection first, to report why it fails (the pool would only
    // say that it timed out).
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(&config.database_url))
        .await
        .map_err(|_| Fatal("cannot connect to PostgreSQL (DATABASE_URL): no answer".into()))?
        .map_err(|e| fatal("cannot connect to PostgreSQL (DATABASE_URL)", &e))?;
    let _ = probe.close().await;
    let pool = PgPoolOptions::new()
        // Requests' cache misses, the usage exporter, the pets.
        .max_connections(10)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect(&config.database_url)
        .await
        .map_err(|e| fatal("cannot connect to PostgreSQL (DATABASE_URL)", &e))?;
    let client = redis::Client::open(config.redis_url.as_str())
        .map_err(|e| fatal("REDIS_URL is not a Redis URL", &e))?;
    let limiter = tokio::time::timeout(CONNECT_TIMEOUT, RedisLimiter::connect(client.clone()))
        .await
        .map_err(|_| Fatal("cannot connect to Redis (REDIS_URL): no answer".into()))?
        .map_err(|e| fatal("cannot connect to Redis (REDIS_URL)", &e))?
        .with_prefix(&format!("{}:limit", config.prefix))
        .map_err(|_| {
            Fatal(format!(
                "KEYWARD_PREFIX={:?}: a prefix is 1 to 58 characters of A-Z, a-z, 0-9, ':', '-', '_' and '.'",
                config.prefix
            ))
        })?;

    let store = PgStore::new(pool.clone())
        .with_table(&config.schema, "keyward_keys")
        .map_err(invalid_schema)?
        .timeout(Duration::from_millis(500));
    let usage = PgUsage::new(pool.clone(), &config.schema)
        .map_err(invalid_schema)?
        // The exporter sets the keys' `last_used_at` in the store's table.
        .keys_table(store.table().clone());
    // Every instance migrates at start-up: each change is applied once.
    store
        .migrate()
        .await
        .map_err(|e| fatal("cannot create the keys table in PostgreSQL", &e))?;
    usage
        .migrate()
        .await
        .map_err(|e| fatal("cannot create the usage tables in PostgreSQL", &e))?;
    create_pets(&pool, &pets)
        .await
        .map_err(|e| fatal("cannot create the pets table in PostgreSQL", &e))?;

    let keys = CachedStore::builder(store)
        .timeout(Duration::from_millis(500))
        .invalidation(RedisInvalidation::new(
            client,
            format!("{}:keys", config.prefix),
        ))
        .build();
    // Until it has subscribed, the cache would not hear another instance
    // revoke a key: serve only once it does.
    let subscribed = tokio::time::timeout(CONNECT_TIMEOUT, async {
        while !keys.is_trusted() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    subscribed.await.map_err(|_| {
        Fatal("cannot subscribe to Redis pub/sub (REDIS_URL) for revocations".into())
    })?;

    let sink = BatchingSink::builder(usage.exporter())
        // The admin API's usage shows a request about a quarter of a second
        // after it.
        .interval(Duration::from_millis(250))
        .spawn();
    let format = KeyFormat::new("sk_live").map_err(|e| fatal("key format", &e))?;
    let keyward = Keyward::new(keys, format)
        .with_limiter(limiter)
        // Requests and key lifecycle events (issued, revoked...) alike.
        .with_sink(sink.clone());
    Ok(Shared {
        keyward,
        sink,
        usage,
        pool,
        pets,
    })
}

/// The pets table, with the quickstart's two pets when it is new; an
/// advisory lock keeps instances starting together from racing.
async fn create_pets(pool: &PgPool, pets: &QualifiedName) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(pets.to_string())
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {pets} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         name text NOT NULL, kind text NOT NULL)"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {pets} (name, kind) SELECT * FROM (VALUES ('Rex', 'dog'), ('Tom', 'cat')) \
         AS v WHERE NOT EXISTS (SELECT 1 FROM {pets})"
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// This instance's admin and reader keys, added to the shared store, and
/// the router.
async fn build(shared: &Shared) -> Result<(Router, ApiKey, ApiKey), Fatal> {
    let manager = shared.keyward.manager();
    let tier = |n| per_second(n).map_err(|e| fatal("rate policy", &e));
    let admin = issue(
        &manager,
        "admin",
        "pets:read pets:write keys:admin usage:read",
        tier(100)?,
    )
    .await?;
    let reader = issue(&manager, "reader", "pets:read", tier(5)?).await?;
    let app = app(shared).map_err(|e| fatal("routes", &*e))?;
    Ok((app, admin, reader))
}

/// A tier of `n` requests a second, with a burst of `n`.
fn per_second(n: u32) -> Result<Limits, PolicyError> {
    Limits::new([RatePolicy::new("burst", n, Duration::from_secs(1))?.into()])
}

/// Mints a key with `scopes` into the shared store; the plaintext is
/// returned once, to be printed.
async fn issue(
    manager: &KeyManager,
    owner: &str,
    scopes: &str,
    limits: Limits,
) -> Result<ApiKey, Fatal> {
    let scopes: ScopeSet = scopes.parse().map_err(|e| fatal("scopes", &e))?;
    let issued = manager
        .issue(
            IssueOptions::new(owner)
                .name(format!("{owner} key"))
                .scopes(scopes)
                .limits(limits),
        )
        .await
        .map_err(|e| fatal(&format!("cannot store the {owner} key"), &e))?;
    Ok(issued.key)
}

/// What the pets' handlers share.
#[derive(Clone)]
struct AppState {
    pool: PgPool,
    pets: QualifiedName,
}

/// The quickstart's routes and layers, outermost first: `UsageLayer` (into
/// PostgreSQL), the request log, `AuthLayer` (the cached PostgreSQL store,
/// a failed-attempt throttle; `/health` is added after it, so it needs no
/// key), `RateLimitLayer` (Redis), `RequireScopes` per route.
///
/// `/keys` and `/usage` are keyward's admin API, merged at the root with
/// the same authentication and limiter: `keys:admin` to manage keys,
/// `usage:read` to read usage. Its manager is the shared store's, so a key
/// issued or revoked through it is announced to every instance; its usage
/// is `PgUsage`, every instance's.
fn app(shared: &Shared) -> Result<Router, Box<dyn std::error::Error>> {
    let keyward = &shared.keyward;
    let state = AppState {
        pool: shared.pool.clone(),
        pets: shared.pets.clone(),
    };
    let auth = keyward
        .auth_layer()
        .failure_throttle(FailureThrottle::new(20, Duration::from_secs(60)));
    let limit = keyward.rate_limit_layer();
    let admin = AdminApi::new(keyward.manager(), shared.usage.clone())
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
                .layer(keyward.usage_layer())
                .layer(middleware::from_fn(log_request)),
        ))
}

/// A database failure, logged, answered `503`.
fn unavailable(what: &str, error: &(dyn std::error::Error + 'static)) -> Response {
    tracing::error!(error, "{what} failed");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "The database did not answer; try again.",
    )
}

async fn list_pets(State(state): State<AppState>) -> Response {
    let rows: Result<Vec<(i64, String, String)>, _> = sqlx::query_as(&format!(
        "SELECT id, name, kind FROM {} ORDER BY id",
        state.pets
    ))
    .fetch_all(&state.pool)
    .await;
    match rows {
        Ok(rows) => Json(Value::Array(
            rows.into_iter()
                .map(|(id, name, kind)| json!({"id": id, "name": name, "kind": kind}))
                .collect(),
        ))
        .into_response(),
        Err(error) => unavailable("listing pets", &error),
    }
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
    // PostgreSQL text holds no NUL character; and a pet's name is short.
    if [name, kind]
        .iter()
        .any(|s| s.contains('\0') || s.len() > 200)
    {
        return problem(
            StatusCode::BAD_REQUEST,
            "\"name\" and \"kind\" are at most 200 bytes, without NUL characters.",
        );
    }
    let id: Result<i64, _> = sqlx::query_scalar(&format!(
        "INSERT INTO {} (name, kind) VALUES ($1, $2) RETURNING id",
        state.pets
    ))
    .bind(name)
    .bind(kind)
    .fetch_one(&state.pool)
    .await;
    match id {
        Ok(id) => (
            StatusCode::CREATED,
            Json(json!({"id": id, "name": name, "kind": kind})),
        )
            .into_response(),
        Err(error) => unavailable("adding a pet", &error),
    }
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
