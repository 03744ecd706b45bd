//! The standard gRPC health service (tonic-health) behind keyward.
//!
//! ```sh
//! cargo run --example grpc                 # listens on 127.0.0.1:50051
//! cargo run --example grpc 127.0.0.1:0     # any free port
//! ```
//!
//! It prints the address and a key (scope `health:read`), then serves
//! `grpc.health.v1.Health`:
//!
//! ```sh
//! grpcurl -plaintext -H "authorization: Bearer $KEY" 127.0.0.1:50051 grpc.health.v1.Health/Check
//! grpcurl -plaintext -H "x-api-key: $KEY" 127.0.0.1:50051 grpc.health.v1.Health/Check
//! grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check   # Code: Unauthenticated
//! ```
//!
//! (The server has no reflection service: give grpcurl the health proto
//! with `-proto`, or call it from a tonic client.)

use std::time::SystemTime;

use keyward::grpc::MethodScopesLayer;
use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
use keyward::record::KeyRecord;
use keyward::store::{KeyStore, MemoryStore};
use keyward::AuthLayer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

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
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned());

    let format = KeyFormat::new("sk_live")?;
    let store = MemoryStore::new();
    let key = KeyGenerator::new(format.clone()).generate()?;
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "example",
        SystemTime::now(),
    )
    .with_name("grpc example")
    .with_scopes("health:read".parse()?);
    store.insert(record).await?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    // Every method of the health service needs `health:read`; any other
    // method is refused (PERMISSION_DENIED) until listed.
    let scopes =
        MethodScopesLayer::new().method("/grpc.health.v1.Health/*", "health:read".parse()?)?;

    let listener = TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    println!("key: {}", key.expose_secret());

    Server::builder()
        .layer(AuthLayer::new(store, format)) // outermost: finds the key
        .layer(scopes) // then checks the method's scopes
        .add_service(health)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
