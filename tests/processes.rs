//! Several OS processes, one set of keys: three copies of this test binary,
//! each serving its own axum app with its own `CachedStore` over one
//! PostgreSQL (and, in a second case, one Redis). A key issued through one
//! process works on the others; revoked through another, it is refused by
//! all within a second. The measured propagation times are printed.
//!
//! The children are this binary again, running the ignored test `child`
//! with `KEYWARD_CHILD` set.
#![cfg(all(feature = "postgres", feature = "redis"))]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use keyward::key::KeyFormat;
use keyward::manager::{IssueOptions, KeyManager};
use keyward::store::invalidation::{Invalidation, PgInvalidation, RedisInvalidation};
use keyward::store::{CachedStore, KeyStore, PgStore, RedisStore};
use keyward::AuthLayer;
use support::services::{service_url, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROCESSES: usize = 3;
const ROUNDS: usize = 5;

/// One child process; killed when dropped.
struct Process {
    child: Child,
    addr: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(backend: &str, url: &str, namespace: &str, channel: &str) -> Process {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KEYWARD_CHILD", backend)
        .env("KEYWARD_CHILD_URL", url)
        .env("KEYWARD_CHILD_NAMESPACE", namespace)
        .env("KEYWARD_CHILD_CHANNEL", channel)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("re-run the test binary");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the child prints its address")
            .expect("child stdout");
        // The harness may print "test child ... " before it on the line.
        if let Some((_, addr)) = line.split_once("listening on http://") {
            break addr.trim().to_owned();
        }
    };
    // Keep draining the child's output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Process { child, addr }
}

/// One HTTP/1.1 request; the status code and body.
async fn request(addr: &str, method: &str, path: &str, key: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = key.map_or(String::new(), |key| format!("x-api-key: {key}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    (status, body)
}

/// Issue through one process, use on all, revoke through another, and
/// time until every other process refuses the key. Returns the times.
async fn propagation(processes: &[Process]) -> Vec<Duration> {
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let issuer = &processes[round % PROCESSES];
        let revoker = &processes[(round + 1) % PROCESSES];
        let (status, body) = request(&issuer.addr, "POST", "/issue", None).await;
        assert_eq!(status, 200, "{body}");
        let (key, id) = body.trim().split_once(' ').unwrap();
        for process in processes {
            let (status, _) = request(&process.addr, "GET", "/check", Some(key)).await;
            assert_eq!(
                status, 200,
                "a key issued on one process works on every one"
            );
        }
        let (status, _) = request(&revoker.addr, "POST", &format!("/revoke/{id}"), None).await;
        assert_eq!(status, 200);
        let revoked = Instant::now();
        for process in processes.iter().filter(|p| p.addr != revoker.addr) {
            loop {
                let (status, _) = request(&process.addr, "GET", "/check", Some(key)).await;
                if status == 401 {
                    times.push(revoked.elapsed());
                    break;
                }
                assert_eq!(status, 200);
                assert!(
                    revoked.elapsed() < Duration::from_secs(2),
                    "a revoked key still works on {} after 2 s",
                    process.addr
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    times
}

fn report(backend: &str, times: &[Duration]) {
    let mut sorted = times.to_vec();
    sorted.sort();
    let max = *sorted.last().unwrap();
    let median = sorted[sorted.len() / 2];
    let _ = writeln!(
        std::io::stderr(),
        "propagation over {backend}, {} processes, {} revocations seen by the others: \
         median {median:?}, max {max:?}, all {sorted:?}",
        PROCESSES,
        sorted.len()
    );
    assert!(max <= Duration::from_secs(1), "propagation {max:?} > 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_process_within_a_second_over_postgres() {
    let Some(url) = service_url(
        "DATABASE_URL",
        "revocation_reaches_every_process_over_postgres",
    ) else {
        return;
    };
    let schema = unique_name("kw_proc");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    PgStore::new(pool.clone())
        .with_table(&schema, "keys")
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let channel = unique_name("kw_proc");
    let processes: Vec<Process> = (0..PROCESSES)
        .map(|_| spawn("postgres", &url, &schema, &channel))
        .collect();
    let times = propagation(&processes).await;
    drop(processes);
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    report("PostgreSQL LISTEN/NOTIFY", &times);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_process_within_a_second_over_redis() {
    let Some(url) = service_url("REDIS_URL", "revocation_reaches_every_process_over_redis") else {
        return;
    };
    let prefix = unique_name("kw_proc");
    let processes: Vec<Process> = (0..PROCESSES)
        .map(|_| spawn("redis", &url, &prefix, &format!("{prefix}:invalidate")))
        .collect();
    let times = propagation(&processes).await;
    drop(processes);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    if !names.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(names)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    report("Redis pub/sub", &times);
}

#[derive(Clone)]
struct Admin(KeyManager);

/// A child: an app on 127.0.0.1:0 with its own cache, until its parent
/// closes stdin (or kills it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the tests above, started by them"]
async fn child() {
    let Ok(backend) = std::env::var("KEYWARD_CHILD") else {
        return;
    };
    let env = |name: &str| std::env::var(name).unwrap();
    let (url, namespace, channel) = (
        env("KEYWARD_CHILD_URL"),
        env("KEYWARD_CHILD_NAMESPACE"),
        env("KEYWARD_CHILD_CHANNEL"),
    );
    let (backend, invalidation): (Arc<dyn KeyStore>, Arc<dyn Invalidation>) =
        if backend == "postgres" {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let store = PgStore::new(pool.clone())
                .with_table(&namespace, "keys")
                .unwrap();
            let invalidation = PgInvalidation::new(pool).channel(&channel).unwrap();
            (Arc::new(store), Arc::new(invalidation))
        } else {
            let client = redis::Client::open(url.as_str()).unwrap();
            let connection = redis::aio::ConnectionManager::new(client.clone())
                .await
                .unwrap();
            let store = RedisStore::new(connection).with_prefix(&namespace).unwrap();
            (
                Arc::new(store),
                Arc::new(RedisInvalidation::new(client, channel)),
            )
        };
    // A long TTL: only an announcement can make a cached key go.
    let cache = CachedStore::builder(backend)
        .ttl(Duration::from_secs(300))
        .invalidation(invalidation)
        .build();
    while !cache.is_trusted() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let format = KeyFormat::new("sk_test").unwrap();
    let manager = KeyManager::new(cache.clone(), format.clone());
    let admin = Router::new()
        .route(
            "/issue",
            post(|State(Admin(manager)): State<Admin>| async move {
                let issued = manager.issue(IssueOptions::new("acme")).await.unwrap();
                format!("{} {}", issued.key.expose_secret(), issued.record.id)
            }),
        )
        .route(
            "/revoke/{id}",
            post(
                |State(Admin(manager)): State<Admin>, Path(id): Path<String>| async move {
                    manager.revoke(&id.parse().unwrap()).await.unwrap();
                    "revoked"
                },
            ),
        )
        .with_state(Admin(manager));
    let app = Router::new()
        .route("/check", get(|| async { "ok" }))
        .layer(AuthLayer::new(cache, format))
        .merge(admin);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening on http://{}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    // The parent holds our stdin: when it goes, so do we.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    axum::serve(listener, app).await.unwrap();
}
