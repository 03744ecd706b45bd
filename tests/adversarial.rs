//! An adversarial suite over real TCP, against an axum server with the
//! whole stack (usage, auth with the failed-key throttle and trusted
//! proxies, limits), served with HTTP/1.1 and HTTP/2 (h2c).
//!
//! - A flood of well-formed unknown keys, from many addresses, through a
//!   trusted proxy with forged `X-Forwarded-For` chains: the throttle's
//!   state stays at its cap, no other state is made, memory stays bounded.
//! - Header tricks, each with the exact status the client sees (hyper
//!   refuses some before the layer).
//! - Path and method tricks on routes protected by `route_layer`: none
//!   reaches a handler without a key.
//! - No secret in any log line (at `trace`, every target), response,
//!   `Debug` or `Display` of a public type, or panic message.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyward::auth::FailureThrottle;
use keyward::key::{ApiKey, KeyFormat, KeyGenerator, KeyHasher};
use keyward::limit::{Limits, MemoryLimiter, RatePolicy};
use keyward::manager::{IssueOptions, KeyManager};
use keyward::record::KeyRecord;
use keyward::store::{KeyStore, MemoryStore};
use keyward::usage::{AggregatingSink, TracingSink, UsageLayer};
use keyward::{AuthLayer, RateLimitLayer};
use support::CapturedLogs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;

/// Refused keys a client may present before it is throttled.
const MAX_FAILURES: u32 = 5;

struct Server {
    addr: SocketAddr,
    format: KeyFormat,
    key: ApiKey,
    /// Requests that reached a protected handler.
    served: Arc<AtomicUsize>,
    throttle: FailureThrottle,
    limiter: MemoryLimiter,
    store: MemoryStore,
    usage: AggregatingSink,
    layer: AuthLayer,
}

impl Server {
    /// Serves `/admin`, `/admin/{id}` and `/pets` behind the stack (by
    /// `route_layer`) and `/health` without it; 127.0.0.0/8 and ::1 are
    /// trusted proxies.
    async fn start(max_clients: usize) -> Self {
        let format = KeyFormat::new("sk_live").unwrap();
        let key = KeyGenerator::new(format.clone()).generate().unwrap();
        let store = MemoryStore::new();
        let limits = Limits::new([RatePolicy::new("burst", 100_000, Duration::from_secs(1))
            .unwrap()
            .into()])
        .unwrap();
        store
            .insert(
                KeyRecord::new(
                    key.id(),
                    KeyHasher::sha256().hash(key.secret()),
                    "acme",
                    SystemTime::now(),
                )
                .with_limits(limits),
            )
            .await
            .unwrap();
        let throttle = FailureThrottle::new(MAX_FAILURES, Duration::from_secs(60))
            .with_max_clients(max_clients);
        let limiter = MemoryLimiter::new();
        let usage = AggregatingSink::new();
        let layer = AuthLayer::new(store.clone(), format.clone())
            .failure_throttle(throttle.clone())
            .trusted_proxies(["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        let served = Arc::new(AtomicUsize::new(0));
        let count = {
            let served = Arc::clone(&served);
            move || {
                let served = Arc::clone(&served);
                async move {
                    served.fetch_add(1, Ordering::SeqCst);
                    tracing::trace!(target: "adversarial::handler", "handler reached");
                    "protected"
                }
            }
        };
        let protected = Router::new()
            .route("/admin", get(count.clone()).post(count.clone()))
            .route("/admin/{id}", get(count.clone()))
            .route("/pets", get(count))
            .route_layer(
                ServiceBuilder::new()
                    .layer(layer.clone())
                    .layer(RateLimitLayer::new(limiter.clone())),
            );
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .merge(protected)
            .layer(UsageLayer::new((
                usage.clone(),
                TracingSink::new(tracing::Level::TRACE),
            )));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        Self {
            addr,
            format,
            key,
            served,
            throttle,
            limiter,
            store,
            usage,
            layer,
        }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// A well-formed key that no record has.
    fn unknown_key(&self) -> ApiKey {
        KeyGenerator::new(self.format.clone()).generate().unwrap()
    }
}

/// What a raw HTTP/1.1 exchange returned: the status, and the whole
/// response as text.
struct Raw {
    status: u16,
    text: String,
}

/// Sends `request` (bytes as given, nothing added) on a fresh connection
/// and reads until the server closes it.
async fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response));
    // A reset after the answer (hyper closing on a refused request) ends
    // the read too.
    let _ = read.await.expect("the server answers and closes");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    Raw { status, text }
}

/// `GET path` with `headers` (each a full `Name: value` line, bytes as
/// given), closing the connection after.
async fn get_with(addr: SocketAddr, path: &str, headers: &[&[u8]]) -> Raw {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n").into_bytes();
    for header in headers {
        request.extend_from_slice(header);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    raw(addr, &request).await
}

/// An HTTP/1.1 connection driven by hyper's client.
async fn http1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// An HTTP/2 connection with prior knowledge (h2c), driven by hyper.
async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// This process's resident memory, in bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// The client addresses of a flood: IPv4 addresses, and IPv6 ones, each
/// in its own /64.
fn flood_addr(i: u32) -> IpAddr {
    if i.is_multiple_of(2) {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i + (1 << 24))) // 11.x.x.x
    } else {
        let net = u128::from(i) << 64;
        IpAddr::V6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | net | 0x1234))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_keys_keeps_state_bounded() {
    const CAP: usize = 1_000;
    const CONNECTIONS: usize = 8;
    let server = Server::start(CAP).await;
    let addr = server.addr;

    // One host rotating addresses inside its /64: counted as one client,
    // refused (429) once it has had its `MAX_FAILURES`.
    let mut sender = http1(addr).await;
    let mut statuses = Vec::new();
    for i in 0..50u128 {
        let client = Ipv6Addr::from((0x2001_0db8_0000_0001_u128 << 64) | (i * 7919 + 1));
        let request = Request::get("/admin")
            .header(
                "authorization",
                format!("Bearer {}", server.unknown_key().expose_secret()),
            )
            .header("x-forwarded-for", format!("203.0.113.9, {client}"))
            .body(Empty::new())
            .unwrap();
        sender.ready().await.unwrap();
        statuses.push(sender.send_request(request).await.unwrap().status());
    }
    let refused = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED);
    assert_eq!(refused.count(), MAX_FAILURES as usize, "{statuses:?}");
    assert!(statuses[MAX_FAILURES as usize..]
        .iter()
        .all(|s| *s == StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(server.throttle.tracked_clients(), 1);

    // A warm-up flood fills the throttle to its cap; then four times as
    // many more: the state stays at the cap, and memory does not grow
    // with the flood.
    let flood = |start: u32, count: u32| {
        let server_key = server.format.clone();
        async move {
            let next = Arc::new(AtomicUsize::new(start as usize));
            let end = (start + count) as usize;
            let mut tasks = Vec::new();
            for _ in 0..CONNECTIONS {
                let next = Arc::clone(&next);
                let format = server_key.clone();
                tasks.push(tokio::spawn(async move {
                    let generator = KeyGenerator::new(format);
                    let mut sender = http1(addr).await;
                    let mut seen = [0usize; 2];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= end {
                            return seen;
                        }
                        let i = i as u32;
                        let key = generator.generate().unwrap();
                        // Forged chains: what the client claims (left), a
                        // trusted hop (right, skipped), the real client
                        // in between; every tenth with a junk hop where
                        // the walk must read one (client unknown).
                        let chain = if i.is_multiple_of(10) {
                            "198.51.100.1, unknown, 127.0.0.2".to_owned()
                        } else {
                            format!("6.6.6.6, {}, 127.0.0.2", flood_addr(i))
                        };
                        let request = Request::get(if i.is_multiple_of(3) {
                            "/pets"
                        } else {
                            "/admin"
                        })
                        .header("x-api-key", key.expose_secret())
                        .header("x-forwarded-for", chain)
                        .body(Empty::new())
                        .unwrap();
                        sender.ready().await.unwrap();
                        let status = sender.send_request(request).await.unwrap().status();
                        match status {
                            StatusCode::UNAUTHORIZED => seen[0] += 1,
                            StatusCode::TOO_MANY_REQUESTS => seen[1] += 1,
                            other => panic!("unexpected {other}"),
                        }
                    }
                }));
            }
            let mut seen = [0usize; 2];
            for task in tasks {
                let [refused, throttled] = task.await.unwrap();
                seen[0] += refused;
                seen[1] += throttled;
            }
            seen
        }
    };
    let warm_up = 4 * CAP as u32;
    let [refused, throttled] = flood(1_000_000, warm_up).await;
    // Each flooding address is new: refused as unknown, never throttled.
    assert_eq!((refused, throttled), (warm_up as usize, 0));
    let before = resident_bytes();
    let [refused, throttled] = flood(2_000_000, 4 * warm_up).await;
    assert_eq!((refused, throttled), (4 * warm_up as usize, 0));
    let after = resident_bytes();

    let tracked = server.throttle.tracked_clients();
    eprintln!(
        "flood: {} requests after a warm-up of {warm_up}; throttle tracks {tracked} \
         clients (cap {CAP}); resident {} KiB before, {} KiB after",
        4 * warm_up,
        before >> 10,
        after >> 10
    );
    // At most the cap, overshot by at most one entry per request in flight.
    assert!(
        tracked <= CAP + CONNECTIONS,
        "throttle tracks {tracked} clients"
    );
    assert!(
        tracked >= CAP / 2,
        "the flood filled the throttle: {tracked}"
    );
    // Nothing else remembers an unauthenticated caller.
    assert_eq!(server.limiter.tracked_keys(), 0);
    assert_eq!(server.store.list_by_owner("acme").await.unwrap().len(), 1);
    assert!(server.usage.get(&server.key.id()).is_none());
    assert_eq!(server.served(), 0);
    // 16 000 requests; a throttle entry is well under a kilobyte. Other
    // tests share the process, so the bound is loose: what it rules out
    // is state growing with the flood.
    let grown = after.saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "resident memory grew by {} KiB during the flood",
        grown >> 10
    );

    // The real key still works (from a client the flood never used).
    let mut sender = http1(addr).await;
    let request = Request::get("/admin")
        .header("x-api-key", server.key.expose_secret())
        .header("x-forwarded-for", "192.0.2.200")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.served(), 1);
}

/// Header tricks, each with what the client sees and why.
///
/// - RFC 9110 §5.5: leading and trailing whitespace (SP, HTAB) is not part
///   of a field value; hyper strips it, so the key is found: `200`.
/// - RFC 6750 §2.1: `credentials = "Bearer" 1*SP b64token`, the scheme
///   case-insensitive (RFC 9110 §11.1): `bearer`, `BEARER` and two spaces
///   are a bearer token: `200`. A tab is not SP: `Bearer<TAB>key` is not
///   the Bearer scheme (no key presented, `401` without an error code);
///   a tab inside the token is not a b64token: `401 invalid_token`.
/// - A NUL byte or an obs-fold in a field: hyper refuses the request
///   (`400`) before any layer (RFC 9112 §5.2 allows refusing obs-fold).
/// - Two `Authorization` fields (a key split in two, or one repeated):
///   not one credential: `400 invalid_request` (RFC 6750 §3.1).
/// - 100 `Authorization` fields: more fields than hyper parses (100 in
///   all): `431`, before any layer; 98 (with `Host` and `Connection`,
///   100) reach the layer: `400`.
/// - `Authorization: Bearer` with no token: `400 invalid_request`.
/// - A 64 KiB field: within hyper's buffer (~400 KiB); as the key it is
///   malformed (`401 invalid_token`); beside a good key it is harmless.
#[tokio::test]
async fn header_tricks_get_their_exact_status() {
    let server = Server::start(1_000).await;
    let addr = server.addr;
    let key = server.key.expose_secret();
    let (first, second) = key.split_at(key.len() / 2);
    let long = "A".repeat(64 * 1024);
    let many: Vec<Vec<u8>> = (0..100)
        .map(|_| format!("Authorization: Bearer {key}").into_bytes())
        .collect();
    let mut cases: Vec<(&str, Vec<Vec<u8>>, u16)> = vec![
        (
            "valid",
            vec![format!("Authorization: Bearer {key}").into()],
            200,
        ),
        (
            "surrounding spaces and tabs",
            vec![format!("Authorization: \t  Bearer {key} \t ").into()],
            200,
        ),
        (
            "x-api-key with surrounding whitespace",
            vec![format!("X-API-Key:  \t{key}\t  ").into()],
            200,
        ),
        (
            "lowercase scheme",
            vec![format!("Authorization: bearer {key}").into()],
            200,
        ),
        (
            "uppercase scheme",
            vec![format!("Authorization: BEARER {key}").into()],
            200,
        ),
        (
            "two spaces",
            vec![format!("Authorization: Bearer  {key}").into()],
            200,
        ),
        (
            "tab as separator",
            vec![format!("Authorization: Bearer\t{key}").into()],
            401,
        ),
        (
            "tab inside",
            vec![format!("Authorization: Bearer {first}\t{second}").into()],
            401,
        ),
        (
            "tab in x-api-key",
            vec![format!("X-API-Key: {first}\t{second}").into()],
            401,
        ),
        (
            "space inside",
            vec![format!("Authorization: Bearer {first} {second}").into()],
            401,
        ),
        (
            "nul",
            vec![format!("Authorization: Bearer {key}\0").into()],
            400,
        ),
        (
            "nul inside",
            vec![format!("X-API-Key: {first}\0{second}").into()],
            400,
        ),
        (
            "obs-fold",
            vec![format!("Authorization: Bearer\r\n {key}").into()],
            400,
        ),
        (
            "split across two fields",
            vec![
                format!("Authorization: Bearer {first}").into(),
                format!("Authorization: {second}").into(),
            ],
            400,
        ),
        (
            "x-api-key split across two fields",
            vec![
                format!("X-API-Key: {first}").into(),
                format!("X-API-Key: {second}").into(),
            ],
            400,
        ),
        (
            "bearer and x-api-key disagree",
            vec![
                format!("Authorization: Bearer {key}").into(),
                format!("X-API-Key: {}", server.unknown_key().expose_secret()).into(),
            ],
            400,
        ),
        ("100 authorization fields", many.clone(), 431),
        // With `Host` and `Connection`, hyper's 100 fields.
        ("98 authorization fields", many[..98].to_vec(), 400),
        ("64 KiB key", vec![format!("X-API-Key: {long}").into()], 401),
        (
            "64 KiB beside a good key",
            vec![
                format!("X-Junk: {long}").into(),
                format!("X-API-Key: {key}").into(),
            ],
            200,
        ),
        ("empty bearer", vec![b"Authorization: Bearer".to_vec()], 400),
        (
            "bearer of spaces",
            vec![b"Authorization: Bearer    x".to_vec()],
            401,
        ),
        (
            "other scheme",
            vec![format!("Authorization: Basic {key}").into()],
            401,
        ),
        (
            "not ascii",
            vec![[b"X-API-Key: ".as_slice(), key.as_bytes(), b"\xff"].concat()],
            401,
        ),
    ];
    let mut expected_served = 0;
    for (name, headers, expected) in cases.drain(..) {
        let headers: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
        let response = get_with(addr, "/admin", &headers).await;
        assert_eq!(
            response.status,
            expected,
            "{name}: {}",
            response.text.lines().next().unwrap_or_default()
        );
        if expected == 200 {
            expected_served += 1;
        }
        assert_eq!(
            server.served(),
            expected_served,
            "{name} reached the handler"
        );
        match expected {
            401 => assert!(
                response
                    .text
                    .to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{name}: a 401 names the scheme:\n{}",
                response.text
            ),
            400 if response.text.contains("problem+json") => {
                assert!(response.text.contains("invalid_request"), "{name}")
            }
            _ => {}
        }
    }
}

/// Paths and methods that a router might treat as `/admin`, without a
/// key: none reaches a handler, over HTTP/1.1 and h2c alike.
#[tokio::test]
async fn path_and_method_tricks_never_reach_a_handler_without_a_key() {
    let server = Server::start(1_000).await;
    let addr = server.addr;
    // (request line, status): 401 where the route matched and the stack
    // refused; 404 where no protected route matched (axum normalises
    // nothing: `%2F`, `..`, `//`, a trailing slash, case and `;` make
    // other paths). A method the route lacks is refused too (401):
    // `route_layer` also wraps axum's 405 answer, so a caller without a key
    // learns nothing of the route's methods. A fragment is dropped by the
    // URI parser.
    let lines = [
        ("GET /admin HTTP/1.1", 401),
        ("HEAD /admin HTTP/1.1", 401),
        ("POST /admin HTTP/1.1", 401),
        ("OPTIONS /admin HTTP/1.1", 401),
        ("DELETE /admin HTTP/1.1", 401),
        ("OPTIONS * HTTP/1.1", 404),
        ("GET /admin/ HTTP/1.1", 404),
        ("GET //admin HTTP/1.1", 404),
        ("GET /ADMIN HTTP/1.1", 404),
        ("GET /Admin HTTP/1.1", 404),
        ("GET /admin;x=1 HTTP/1.1", 404),
        ("GET /admin%2F HTTP/1.1", 404),
        ("GET /%61dmin HTTP/1.1", 404),
        ("GET /health/../admin HTTP/1.1", 404),
        ("GET /health/%2e%2e/admin HTTP/1.1", 404),
        ("GET /./admin HTTP/1.1", 404),
        ("GET /admin/x HTTP/1.1", 401),
        ("GET /admin/..%2Fhealth HTTP/1.1", 401),
        ("GET /admin/%2e%2e HTTP/1.1", 401),
        ("GET /admin/x;y HTTP/1.1", 401),
        ("GET /admin?x=1 HTTP/1.1", 401),
        ("GET /pets#frag HTTP/1.1", 401),
        ("GET http://localhost/admin HTTP/1.1", 401),
        ("GET http://localhost//admin HTTP/1.1", 404),
        ("GET /admin HTTP/1.0", 401),
    ];
    let mut wrong = Vec::new();
    for (line, expected) in lines {
        let request = format!("{line}\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let response = raw(addr, request.as_bytes()).await;
        if response.status != expected {
            wrong.push(format!("{line}: {} (expected {expected})", response.status));
        }
    }
    // Over HTTP/2 with prior knowledge.
    let mut sender = h2c(addr).await;
    let paths = [
        ("GET", "/admin", 401),
        ("HEAD", "/admin", 401),
        ("POST", "/admin", 401),
        ("OPTIONS", "/admin", 401),
        ("GET", "/admin/", 404),
        ("GET", "//admin", 404),
        ("GET", "/admin%2F", 404),
        ("GET", "/admin/..%2Fhealth", 401),
        ("GET", "/ADMIN", 404),
        ("GET", "/admin;x=1", 404),
        ("GET", "/pets", 401),
    ];
    for (method, path, expected) in paths {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://localhost{path}"))
            .body(Empty::new())
            .unwrap();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        if response.status().as_u16() != expected {
            wrong.push(format!(
                "h2 {method} {path}: {} (expected {expected})",
                response.status()
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        server.served(),
        0,
        "a request without a key reached a handler"
    );

    // The same routes with the key: the handler counts (so the zero above
    // is meaningful), over both protocols.
    let key = server.key.expose_secret();
    let response = get_with(addr, "/admin", &[format!("X-API-Key: {key}").as_bytes()]).await;
    assert_eq!(response.status, 200);
    let request = Request::get("http://localhost/admin/x")
        .header("authorization", format!("Bearer {key}"))
        .body(Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    assert_eq!(server.served(), 2);
}

/// The secret of a key, as sent in every way a client might get wrong,
/// never comes back out: not in a log line (every target, `trace`), a
/// response, the `Debug` or `Display` of a public type, or the message of
/// a panic on an error about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_responses_debug_or_panics() {
    let (logs, _guard) = CapturedLogs::everywhere();
    let server = Server::start(1_000).await;
    let addr = server.addr;
    let manager = KeyManager::new(server.store.clone(), server.format.clone());
    let issued = manager.issue(IssueOptions::new("globex")).await.unwrap();
    let revoked = manager.issue(IssueOptions::new("initech")).await.unwrap();
    manager.revoke(&revoked.key.id()).await.unwrap();
    let keys = [&server.key, &issued.key, &revoked.key];

    let mut seen = String::new();
    for key in keys {
        let secret = key.expose_secret();
        let mut wrong = secret.to_owned();
        wrong.pop();
        wrong.push(if secret.ends_with('A') { 'B' } else { 'A' });
        let (first, second) = secret.split_at(secret.len() / 2);
        let variants: Vec<Vec<u8>> = vec![
            format!("Authorization: Bearer {secret}").into(),
            format!("Authorization: bearer  {secret}  ").into(),
            format!("X-API-Key: {secret}").into(),
            format!("X-API-Key: {wrong}").into(),
            format!("X-API-Key: {secret}x").into(),
            format!("X-API-Key: x{secret}").into(),
            format!("Authorization: Basic {secret}").into(),
            format!("Authorization: Bearer {first}\t{second}").into(),
            format!("Authorization: Bearer {secret}\0").into(),
            format!("X-Forwarded-For: {secret}").into(),
            format!("Cookie: api_key={secret}").into(),
        ];
        for variant in &variants {
            for path in ["/admin", "/pets", "/health", "/nowhere"] {
                let path = format!("{path}?api_key={secret}");
                let response = get_with(addr, &path, &[variant]).await;
                seen.push_str(&response.text);
            }
        }
        let split = get_with(
            addr,
            "/admin",
            &[
                format!("Authorization: Bearer {first}").as_bytes(),
                format!("Authorization: {second}").as_bytes(),
            ],
        )
        .await;
        seen.push_str(&split.text);
        // Over h2c too.
        let mut sender = h2c(addr).await;
        for value in [format!("Bearer {secret}"), format!("Bearer {wrong}")] {
            let request = Request::get("http://localhost/admin")
                .header("authorization", value)
                .body(Empty::new())
                .unwrap();
            sender.ready().await.unwrap();
            let response = sender.send_request(request).await.unwrap();
            seen.push_str(&format!("{:?}", response.headers()));
            let body = response.into_body().collect().await.unwrap().to_bytes();
            seen.push_str(&String::from_utf8_lossy(&body));
        }

        // Debug and Display of the public types that meet the key.
        let parsed = server.format.parse(secret).unwrap();
        seen.push_str(&format!("{key:?} {key} {parsed:?}"));
        let record = server.store.find(&key.id()).await.unwrap();
        seen.push_str(&format!("{record:?}"));
        let authenticator = server.layer.authenticator();
        for presented in [secret, &wrong] {
            let outcome = authenticator.authenticate(presented).await;
            seen.push_str(&format!("{outcome:?}"));
            if let Err(rejection) = &outcome {
                seen.push_str(&format!("{rejection}"));
            }
        }
        // Panics on errors about the key: what `unwrap` prints.
        for presented in [format!("{secret}x"), format!("x{secret}"), wrong.clone()] {
            let format = server.format.clone();
            let panicked = std::panic::catch_unwind(move || {
                format.parse(&presented).unwrap();
                ApiKey::parse(&format, &presented).unwrap();
            });
            if let Err(payload) = panicked {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                assert!(message.contains("unwrap"), "{message}");
                seen.push_str(&message);
            }
        }
    }
    seen.push_str(&format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {issued:?}",
        server.layer,
        server.store,
        server.throttle,
        server.limiter,
        server.usage,
        server.usage.snapshot(),
        manager
    ));

    let logs = logs.text();
    assert!(
        logs.contains("API key refused"),
        "the refusals were logged:\n{logs}"
    );
    assert!(logs.contains("keyward::usage"), "usage was logged at trace");
    for key in keys {
        let secret = key.secret();
        for part in [secret, &secret[..16], &secret[secret.len() - 16..]] {
            assert!(!logs.contains(part), "a secret reached the logs:\n{logs}");
            assert!(
                !seen.contains(part),
                "a secret reached a response, Debug output or panic message:\n{seen}"
            );
        }
    }
}
