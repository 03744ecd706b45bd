//! Every kind of credential at once, on the in-memory store: API keys (also
//! in Basic auth), JWT-based keys, publishable keys, imported old-format
//! keys and requests signed with a key pair (HTTP Message Signatures).
//!
//! ```sh
//! cargo run --example credentials --features signatures,jwt,axum,serde               # 127.0.0.1:3000
//! cargo run --example credentials --features signatures,jwt,axum,serde 127.0.0.1:0   # any free port
//! ```
//!
//! It prints, each on its own line, `listening on http://ADDR:PORT`,
//! `api key: <key>`, `jwt: <token>` (HS256, valid for an hour), `jwt
//! secret: <the HS256 secret, base64url without padding>` (so a client can
//! mint its own tokens: issuer `https://auth.example.com`, audience
//! `credentials-example`, `kid` `k1`), `imported key: <old-format key>`,
//! `signing key id: <key id>`, `signing private key: <the Ed25519 private
//! key: base64 (standard alphabet, padded) of its 32-byte seed>`,
//! `publishable key: <key>` and `allowed origin: <origin>`, then serves `GET
//! /whoami` (the caller as JSON: key id, owner, scopes, credential kind)
//! and `POST /echo` (answers the body it received) to every kind:
//!
//! ```sh
//! # API key, as a bearer token, in X-API-Key, or as Basic auth's user name
//! curl -H "Authorization: Bearer $API_KEY" http://127.0.0.1:3000/whoami
//! curl -H "X-API-Key: $API_KEY" -d 'hello' http://127.0.0.1:3000/echo
//! curl -u "$API_KEY:" http://127.0.0.1:3000/whoami
//! # a JWT-based key (or one minted with the printed secret)
//! curl -H "Authorization: Bearer $JWT" http://127.0.0.1:3000/whoami
//! # a publishable key: only from the allowed origin
//! curl -H "X-API-Key: $PUBLISHABLE_KEY" -H "Origin: $ALLOWED_ORIGIN" http://127.0.0.1:3000/whoami
//! # an imported key of the old format (32 hex characters)
//! curl -H "X-API-Key: $IMPORTED_KEY" http://127.0.0.1:3000/whoami
//! # a signed request: examples/sign_request prints the curl line, signed
//! eval "$(cargo run -q --example sign_request --features signatures -- \
//!     "$SIGNING_KEY_ID" "$SIGNING_PRIVATE_KEY" POST http://127.0.0.1:3000/echo '{"hello":"world"}')"
//! ```
//!
//! A signature covers the method, authority, path, query and (through
//! `Content-Digest`) the body; it is valid for five minutes and only once.
//! Two credentials in one request are refused with `400`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use keyward::auth::{AuthLayer, KeySource, Principal};
use keyward::content_digest::ContentDigestLayer;
use keyward::jwt::{JwtIssuer, JwtKeySet, JwtVerifier};
use keyward::key::{KeyFormat, LegacyAlphabet, LegacyFormat};
use keyward::manager::{IssueOptions, KeyManager};
use keyward::signature::SignatureVerifier;
use keyward::store::MemoryStore;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const JWT_ISSUER: &str = "https://auth.example.com";
const JWT_AUDIENCE: &str = "credentials-example";

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
    let listener = TcpListener::bind(&addr).await?;

    let format = KeyFormat::new("sk_live")?;
    let store = MemoryStore::new();
    // Publishable keys may carry only what a browser may be trusted with.
    let manager = KeyManager::new(store.clone(), format.clone())
        .with_publishable_scopes("pets:read".parse()?);

    // An API key.
    let api = manager
        .issue(IssueOptions::new("api-client").scopes("pets:read".parse()?))
        .await?;
    // A key of the system before keyward: 32 hex characters (128 bits),
    // imported by its hash.
    let old_format = LegacyFormat::new(LegacyAlphabet::Hex, 32)?;
    let old_key = old_key()?;
    manager
        .import_legacy_key(&old_format, &old_key, IssueOptions::new("old-client"))
        .await?;
    // A key pair: the server keeps the public half.
    let pair = manager
        .issue_key_pair(IssueOptions::new("signing-client").scopes("pets:write".parse()?))
        .await?;

    // A JWT-based key: minted with an HS256 secret, backed by a record
    // (its `jti`), so revoking the record refuses the token.
    let jwt_secret = fresh_secret()?;
    let (issuer, jwt_key) = JwtIssuer::hs256("k1", &jwt_secret, JWT_ISSUER, JWT_AUDIENCE)?;
    let jwt = manager
        .issue_jwt(
            &issuer,
            IssueOptions::new("jwt-client").scopes("pets:read".parse()?),
            Duration::from_secs(3600),
        )
        .await?;
    // A publishable key, for a web page at one origin.
    let origin = "https://app.example.com";
    let publishable = manager
        .issue(
            IssueOptions::new("web-app")
                .scopes("pets:read".parse()?)
                .publishable([origin.parse()?]),
        )
        .await?;

    let jwt_verifier = JwtVerifier::new(
        store.clone(),
        JwtKeySet::from_iter([jwt_key]),
        JWT_ISSUER,
        JWT_AUDIENCE,
    )
    // Tokens a client mints with the printed secret name no record.
    .require_record(false);
    let auth = AuthLayer::new(store.clone(), format)
        .sources([
            KeySource::bearer(),
            KeySource::x_api_key(),
            KeySource::basic_user(),
        ])
        .imported_keys(old_format)
        .credential(jwt_verifier)
        .credential(SignatureVerifier::new(store));
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/echo", post(echo))
        .layer(auth)
        // Outside the authentication: signed bodies are checked against
        // their Content-Digest as they stream.
        .layer(ContentDigestLayer::new());

    println!("listening on http://{}", listener.local_addr()?);
    println!("api key: {}", api.key.expose_secret());
    println!("jwt: {}", jwt.token);
    println!("jwt secret: {}", URL_SAFE_NO_PAD.encode(jwt_secret));
    println!("imported key: {old_key}");
    println!("signing key id: {}", pair.record.id);
    println!(
        "signing private key: {}",
        pair.signing_key.expose_base64().as_str()
    );
    println!("publishable key: {}", publishable.key.expose_secret());
    println!("allowed origin: {origin}");
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

/// `GET /whoami`: the caller, whatever its credential.
async fn whoami(who: Principal) -> Json<Value> {
    Json(json!({
        "key_id": who.key_id(),
        "owner": who.owner(),
        "scopes": who.scopes(),
        "credential": who.credential(),
    }))
}

/// `POST /echo`: the body as received (a signed body only if it matched
/// its digest).
async fn echo(_: Principal, body: String) -> String {
    body
}

/// A fresh key of the old system's format: 32 lowercase hex characters.
fn old_key() -> Result<String, keyward::key::GenerateError> {
    // The keyward generator's randomness, written as the old system did.
    let key =
        keyward::KeyGenerator::new(KeyFormat::new("old").expect("valid prefix")).generate()?;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(key.expose_secret().as_bytes());
    Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}

/// 32 random bytes for the HS256 secret, from the keyward generator.
fn fresh_secret() -> Result<[u8; 32], keyward::key::GenerateError> {
    let key =
        keyward::KeyGenerator::new(KeyFormat::new("jwt").expect("valid prefix")).generate()?;
    Ok(<sha2::Sha256 as sha2::Digest>::digest(key.expose_secret().as_bytes()).into())
}
