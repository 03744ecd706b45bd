//! An axum server for end-to-end load tests: `GET /bare` with no layer,
//! `GET /pets` behind the full keyward stack (usage with a batching sink,
//! auth, a rate limit no load test reaches, a scope check), and
//! `GET /unrecorded` behind the same stack without usage recording.
//!
//! ```sh
//! cargo run --release --example e2e_server 127.0.0.1:3001
//! # prints: listening on http://127.0.0.1:3001 / key: sk_live_...
//! wrk -t2 -c64 -d10s --latency http://127.0.0.1:3001/bare
//! wrk -t2 -c64 -d10s --latency -H "Authorization: Bearer $KEY" http://127.0.0.1:3001/pets
//! ```

use std::time::{Duration, SystemTime};

use axum::routing::get;
use axum::Router;
use keyward::auth::AuthLayer;
use keyward::authorize::RequireScopes;
use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
use keyward::limit::{Limits, MemoryLimiter, RateLimitLayer, RatePolicy};
use keyward::record::KeyRecord;
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{BatchingSink, UsageEvent, UsageExporter, UsageLayer};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// Counts what it is given and lets it go.
struct Discard;

#[keyward::async_trait]
impl UsageExporter for Discard {
    async fn export(&mut self, batch: Vec<UsageEvent>) {
        drop(batch);
    }
}

async fn hello() -> &'static str {
    "hello"
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3001".to_owned());
    let format = KeyFormat::new("sk_live")?;
    let key = KeyGenerator::new(format.clone()).generate()?;
    let store = MemoryStore::new();
    let unlimited =
        Limits::new([RatePolicy::new("burst", u32::MAX, Duration::from_secs(1))?.into()])?;
    store
        .insert(
            KeyRecord::new(
                key.id(),
                KeyHasher::sha256().hash(key.secret()),
                "loadtest",
                SystemTime::now(),
            )
            .with_scopes("pets:read".parse()?)
            .with_limits(unlimited),
        )
        .await?;
    let usage = BatchingSink::builder(Discard)
        .capacity(1 << 16)
        .max_batch(1024)
        .spawn();

    let auth = AuthLayer::new(store, format);
    // One `Router::layer` with the stack composed by `ServiceBuilder`: each
    // `Router::layer` call boxes the route again, and axum clones every box
    // and boxes every future per request.
    let protected = Router::new().route("/pets", get(hello)).layer(
        ServiceBuilder::new()
            .layer(UsageLayer::new(usage.clone()))
            .layer(auth.clone())
            .layer(RateLimitLayer::new(MemoryLimiter::new()))
            .layer(RequireScopes::all(["pets:read".parse()?])),
    );
    // The same without usage recording, to tell the costs apart.
    let unrecorded = Router::new().route("/unrecorded", get(hello)).layer(
        ServiceBuilder::new()
            .layer(auth.clone())
            .layer(RateLimitLayer::new(MemoryLimiter::new()))
            .layer(RequireScopes::all(["pets:read".parse()?])),
    );
    // The same again, one `Router::layer` per layer (as the quickstart
    // reads), to show what the extra boxes cost.
    let layered = Router::new()
        .route("/layered", get(hello))
        .layer(RequireScopes::all(["pets:read".parse()?]))
        .layer(RateLimitLayer::new(MemoryLimiter::new()))
        .layer(auth)
        .layer(UsageLayer::new(usage.clone()));
    let app = Router::new()
        .route("/bare", get(hello))
        .merge(protected)
        .merge(unrecorded)
        .merge(layered);

    let listener = TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    println!("key: {}", key.expose_secret());
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    eprintln!("usage events dropped: {}", usage.dropped());
    usage.shutdown().await;
    Ok(())
}
