//! An API protected by keyward with its admin API at `/admin` and the
//! usage page, on the in-memory store (feature `admin`).
//!
//! ```sh
//! cargo run --example admin --features admin               # 127.0.0.1:3000
//! cargo run --example admin --features admin 127.0.0.1:0   # any free port
//! ```
//!
//! It prints `listening on http://ADDR:PORT` and `admin key: <key>` (scope
//! `keys:admin`), then serves:
//!
//! ```sh
//! curl http://127.0.0.1:3000/admin/openapi.json              # no key needed
//! open http://127.0.0.1:3000/admin/usage                     # the usage page: it asks for a key
//! curl -H "X-API-Key: $ADMIN_KEY" -d '{"owner":"acme","scopes":[]}' http://127.0.0.1:3000/admin/keys
//! curl -H "X-API-Key: $ADMIN_KEY" "http://127.0.0.1:3000/admin/keys?owner=acme"
//! curl -H "X-API-Key: $KEY" http://127.0.0.1:3000/hello      # any valid key
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use keyward::admin::AdminApi;
use keyward::auth::{FailureThrottle, Principal};
use keyward::limit::{Limits, RatePolicy};
use keyward::manager::IssueOptions;
use keyward::usage::{RollupSink, TracingSink};
use keyward::{KeyFormat, Keyward, MemoryStore};
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
    serve(&addr).await
}

/// Binds `addr`, prints the address and the admin key, and serves until
/// Ctrl-C.
pub(crate) async fn serve(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (app, admin_key) = build().await?;
    let listener = TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    println!("admin key: {admin_key}");
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

/// The application and the admin key's plaintext.
pub(crate) async fn build() -> Result<(Router, String), Box<dyn std::error::Error>> {
    // Per-minute usage in memory: the usage layer writes it, the admin
    // API and its page read it (`PgUsage` plugs in the same way).
    let usage = RollupSink::new();
    let keyward = Keyward::new(MemoryStore::new(), KeyFormat::new("sk_live")?)
        .with_sink((usage.clone(), TracingSink::info()));
    let admin = keyward
        .manager()
        .issue(
            IssueOptions::new("operator")
                .name("admin key")
                .scopes("keys:admin".parse()?),
        )
        .await?;

    let auth = keyward
        .auth_layer()
        .failure_throttle(FailureThrottle::new(20, Duration::from_secs(60)));
    // Keys issued through the API get this tier unless the request names
    // limits.
    let standard = Limits::new([RatePolicy::new("burst", 10, Duration::from_secs(1))?.into()])?;
    let api = AdminApi::new(keyward.manager(), usage)
        .auth_layer(auth.clone())
        .rate_limit_layer(keyward.rate_limit_layer())
        .default_limits(standard);

    let app = Router::new()
        .route("/hello", get(hello))
        .layer(
            ServiceBuilder::new()
                .layer(auth)
                .layer(keyward.rate_limit_layer()),
        )
        .nest("/admin", api.router())
        .layer(keyward.usage_layer());
    Ok((app, admin.key.expose_secret().to_owned()))
}

/// `GET /hello`: any valid key.
async fn hello(principal: Principal) -> String {
    format!("hello, {} ({})\n", principal.owner(), principal.key_id())
}
