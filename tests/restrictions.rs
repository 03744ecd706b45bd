//! Key restrictions checked by AuthLayer: client networks (with trusted
//! proxies) and environment; status and expiry answer 401, restrictions 403.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::extract::connect_info::MockConnectInfo;
use axum::routing::get;
use axum::Router;
use http::{Request, Response, StatusCode};
use ipnet::IpNet;
use keyward::auth::client::ClientAddr;
use keyward::auth::{AuthLayer, Principal};
use keyward::clock::{Clock, FakeClock};
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher};
use keyward::record::{Environment, KeyRecord, KeyStatus};
use keyward::reject::{RejectReason, Rejection};
use keyward::store::{KeyStore, MemoryStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

struct Fixture {
    format: KeyFormat,
    store: MemoryStore,
    clock: FakeClock,
}

impl Fixture {
    fn new() -> Self {
        Self {
            format: KeyFormat::new("sk_live").unwrap(),
            store: MemoryStore::new(),
            clock: FakeClock::default(),
        }
    }

    async fn key(&self, shape: impl FnOnce(KeyRecord) -> KeyRecord) -> ApiKey {
        let key = KeyGenerator::new(self.format.clone()).generate().unwrap();
        let record = KeyRecord::new(
            key.id(),
            KeyHasher::sha256().hash(key.secret()),
            "acme",
            self.clock.now(),
        );
        self.store.insert(shape(record)).await.unwrap();
        key
    }

    fn auth(&self) -> AuthLayer {
        AuthLayer::new(self.store.clone(), self.format.clone()).clock(self.clock.clone())
    }
}

async fn echo(request: Request<String>) -> Result<Response<String>, Infallible> {
    let owner = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.owner().to_owned())
        .unwrap_or_default();
    Ok(Response::new(owner))
}

async fn status(
    auth: AuthLayer,
    key: &ApiKey,
    peer: Option<&str>,
    xff: Option<&str>,
) -> (StatusCode, Option<RejectReason>) {
    let service = ServiceBuilder::new().layer(auth).service(service_fn(echo));
    let mut request =
        Request::get("/pets").header("authorization", format!("Bearer {}", key.expose_secret()));
    if let Some(peer) = peer {
        request = request.extension(ClientAddr(peer.parse().unwrap()));
    }
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    let response = service
        .oneshot(request.body(String::new()).unwrap())
        .await
        .unwrap();
    let reason = response.extensions().get::<Rejection>().map(|r| r.reason());
    (response.status(), reason)
}

const RESTRICTED: (StatusCode, Option<RejectReason>) =
    (StatusCode::FORBIDDEN, Some(RejectReason::Restricted));
const OK: (StatusCode, Option<RejectReason>) = (StatusCode::OK, None);

#[tokio::test]
async fn network_restriction_with_and_without_trusted_proxies() {
    let f = Fixture::new();
    let key = f
        .key(|r| r.with_allowed_networks([net("10.0.0.0/8")]))
        .await;
    let behind_proxy = f.auth().trusted_proxies([net("127.0.0.1/32")]);

    // Straight from 127.0.0.1: refused. From 10.1.2.3: accepted.
    assert_eq!(
        status(f.auth(), &key, Some("127.0.0.1"), None).await,
        RESTRICTED
    );
    assert_eq!(status(f.auth(), &key, Some("10.1.2.3"), None).await, OK);
    // No known client address: refused (fail closed).
    assert_eq!(status(f.auth(), &key, None, None).await, RESTRICTED);

    // Through the trusted proxy on 127.0.0.1, forwarding for 10.1.2.3.
    assert_eq!(
        status(
            behind_proxy.clone(),
            &key,
            Some("127.0.0.1"),
            Some("10.1.2.3")
        )
        .await,
        OK
    );
    // A spoofed leftmost entry does not help a client outside the network.
    assert_eq!(
        status(
            behind_proxy.clone(),
            &key,
            Some("127.0.0.1"),
            Some("10.1.2.3, 198.51.100.9")
        )
        .await,
        RESTRICTED
    );
    // Untrusted X-Forwarded-For is ignored: no proxies configured...
    assert_eq!(
        status(f.auth(), &key, Some("127.0.0.1"), Some("10.1.2.3")).await,
        RESTRICTED
    );
    // ... or a peer that is not one of them.
    assert_eq!(
        status(behind_proxy, &key, Some("192.0.2.1"), Some("10.1.2.3")).await,
        RESTRICTED
    );

    // A key without networks works from anywhere.
    let anywhere = f.key(|r| r).await;
    assert_eq!(status(f.auth(), &anywhere, None, None).await, OK);
}

#[tokio::test]
async fn ipv6_networks() {
    let f = Fixture::new();
    let key = f
        .key(|r| r.with_allowed_networks([net("2001:db8::/32"), net("192.0.2.0/24")]))
        .await;
    assert_eq!(status(f.auth(), &key, Some("2001:db8::7"), None).await, OK);
    assert_eq!(
        status(f.auth(), &key, Some("::ffff:192.0.2.8"), None).await,
        OK
    );
    assert_eq!(
        status(f.auth(), &key, Some("2001:db9::7"), None).await,
        RESTRICTED
    );
}

#[tokio::test]
async fn environment_must_match_the_service() {
    let f = Fixture::new();
    let test_key = f.key(|r| r.with_environment(Environment::Test)).await;
    let live_key = f.key(|r| r.with_environment(Environment::Live)).await;
    let untagged = f.key(|r| r).await;
    let live = f.auth().environment(Environment::Live);

    assert_eq!(
        status(live.clone(), &test_key, None, None).await,
        RESTRICTED
    );
    assert_eq!(status(live.clone(), &live_key, None, None).await, OK);
    assert_eq!(status(live, &untagged, None, None).await, OK);
    let test = f.auth().environment(Environment::Test);
    assert_eq!(status(test, &live_key, None, None).await, RESTRICTED);
    // A service without an environment accepts every tag.
    assert_eq!(status(f.auth(), &test_key, None, None).await, OK);
}

#[tokio::test]
async fn status_and_times_answer_401_restrictions_403() {
    let f = Fixture::new();
    let now = f.clock.now();
    let unauthorized = |reason| (StatusCode::UNAUTHORIZED, Some(reason));
    let expired = f
        .key(|r| r.with_expires_at(now + Duration::from_secs(60)))
        .await;
    let early = f
        .key(|r| r.with_not_before(now + Duration::from_secs(60)))
        .await;
    let disabled = f.key(|r| r.with_status(KeyStatus::Disabled)).await;
    let revoked = f.key(|r| r.with_status(KeyStatus::Revoked)).await;
    // A revoked key restricted elsewhere is still answered 401, not 403:
    // status is checked first and says less.
    let revoked_elsewhere = f
        .key(|r| {
            r.with_status(KeyStatus::Revoked)
                .with_allowed_networks([net("10.0.0.0/8")])
        })
        .await;

    assert_eq!(status(f.auth(), &expired, None, None).await, OK);
    assert_eq!(
        status(f.auth(), &early, None, None).await,
        unauthorized(RejectReason::NotYetValid)
    );
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(
        status(f.auth(), &expired, None, None).await,
        unauthorized(RejectReason::Expired)
    );
    assert_eq!(status(f.auth(), &early, None, None).await, OK);
    assert_eq!(
        status(f.auth(), &disabled, None, None).await,
        unauthorized(RejectReason::Disabled)
    );
    assert_eq!(
        status(f.auth(), &revoked, None, None).await,
        unauthorized(RejectReason::Revoked)
    );
    assert_eq!(
        status(f.auth(), &revoked_elsewhere, Some("127.0.0.1"), None).await,
        unauthorized(RejectReason::Revoked)
    );
}

fn router(auth: AuthLayer) -> Router {
    Router::new()
        .route(
            "/me",
            get(|p: Principal| async move { p.owner().to_owned() }),
        )
        .layer(auth)
}

async fn router_status(app: Router, key: &ApiKey, xff: Option<&str>) -> StatusCode {
    let mut request = Request::get("/me").header("x-api-key", key.expose_secret());
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    app.oneshot(request.body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn axum_router_reads_connect_info() {
    let f = Fixture::new();
    let key = f
        .key(|r| r.with_allowed_networks([net("10.0.0.0/8")]))
        .await;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 4000));
    let inside = SocketAddr::from(([10, 1, 2, 3], 4000));

    let app = router(f.auth()).layer(MockConnectInfo(loopback));
    assert_eq!(
        router_status(app.clone(), &key, None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        router_status(app, &key, Some("10.1.2.3")).await,
        StatusCode::FORBIDDEN
    );
    let app = router(f.auth()).layer(MockConnectInfo(inside));
    assert_eq!(router_status(app, &key, None).await, StatusCode::OK);
    let app =
        router(f.auth().trusted_proxies([net("127.0.0.0/8")])).layer(MockConnectInfo(loopback));
    assert_eq!(
        router_status(app, &key, Some("10.1.2.3")).await,
        StatusCode::OK
    );
}

/// Over a real loopback connection: the peer is 127.0.0.1, from axum's
/// `ConnectInfo<SocketAddr>`.
async fn over_tcp(app: Router, key: &ApiKey, xff: Option<&str>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let mut request = format!(
        "GET /me HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\nx-api-key: {}\r\n",
        key.expose_secret()
    );
    if let Some(xff) = xff {
        request.push_str(&format!("x-forwarded-for: {xff}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    server.abort();
    String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn real_connection_through_a_trusted_proxy() {
    let f = Fixture::new();
    let key = f
        .key(|r| r.with_allowed_networks([net("10.0.0.0/8")]))
        .await;
    assert_eq!(over_tcp(router(f.auth()), &key, None).await, 403);
    assert_eq!(
        over_tcp(router(f.auth()), &key, Some("10.1.2.3")).await,
        403
    );
    let proxied = router(f.auth().trusted_proxies([net("127.0.0.1/32")]));
    assert_eq!(over_tcp(proxied.clone(), &key, Some("10.1.2.3")).await, 200);
    assert_eq!(over_tcp(proxied, &key, None).await, 403);
}

#[test]
fn records_default_to_no_restrictions() {
    let key = KeyGenerator::new(KeyFormat::new("sk").unwrap())
        .generate()
        .unwrap();
    let record = KeyRecord::new(
        key.id(),
        KeyHasher::sha256().hash(key.secret()),
        "acme",
        SystemTime::now(),
    );
    assert!(record.allowed_networks().is_empty());
    assert_eq!(record.environment(), None);
    assert_eq!("live".parse::<Environment>().unwrap(), Environment::Live);
    assert!("prod".parse::<Environment>().is_err());
    assert_eq!(Environment::Test.to_string(), "test");
}
