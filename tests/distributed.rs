//! `examples/distributed.rs`, as a user runs it: the example binary (built by
//! cargo with this test's features) started twice as OS processes on two
//! ports, over the real PostgreSQL and Redis, with a schema and a Redis
//! prefix of this test's own. Checked over TCP: every key printed works on
//! both instances; a key revoked through one is refused by the other within
//! a second; a reader's burst spread over both is admitted once; `GET
//! /usage` on either counts what both served; the admin API behind `/keys`
//! lists on each the keys issued through both. Needs `DATABASE_URL` and
//! `REDIS_URL`; skipped without them. Also: without them, or with a server
//! that does not answer, the example exits with a message, not a panic.
#![cfg(all(feature = "postgres", feature = "redis"))]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::services::{service_url, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The example's binary, built once for this test binary: `cargo build
/// --example distributed` with the features this test was built with, into
/// the same target directory (so that `cargo test` reuses what it built).
fn example_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| support::examples::build_example("distributed"))
}

async fn binary() -> PathBuf {
    tokio::task::spawn_blocking(|| example_binary().clone())
        .await
        .expect("the build thread")
}

/// One running instance of the example; killed when dropped.
struct Instance {
    child: Child,
    addr: String,
    admin: String,
    reader: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where both instances keep their state: this test's own.
struct Namespace {
    database_url: String,
    redis_url: String,
    schema: String,
    prefix: String,
}

impl Namespace {
    fn new(database_url: String, redis_url: String) -> Self {
        Self {
            database_url,
            redis_url,
            schema: unique_name("kw_dist"),
            prefix: unique_name("kw_dist"),
        }
    }

    fn start(&self, binary: &PathBuf) -> Instance {
        let mut child = Command::new(binary)
            .arg("127.0.0.1:0")
            .env("DATABASE_URL", &self.database_url)
            .env("REDIS_URL", &self.redis_url)
            .env("KEYWARD_SCHEMA", &self.schema)
            .env("KEYWARD_PREFIX", &self.prefix)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the example");
        let stdout = child.stdout.take().unwrap();
        // Read on a thread, so a silent child fails the test instead of
        // hanging it; then keep draining, so the child never blocks.
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let next = |what: &str| {
            lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("the example did not print {what}"))
        };
        let (listening, admin, reader) = (next("its address"), next("a key"), next("a key"));
        std::thread::spawn(move || for _ in lines {});
        let field = |line: &str, prefix: &str| {
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}…, got {line:?}"))
                .to_owned()
        };
        Instance {
            child,
            addr: field(&listening, "listening on http://"),
            admin: field(&admin, "admin key: "),
            reader: field(&reader, "reader key: "),
        }
    }

    /// Drops the schema and deletes the Redis keys: on a new thread with a
    /// runtime of its own, so that it also runs while a failed test unwinds.
    fn clean_up(&self) {
        let (database_url, redis_url) = (self.database_url.clone(), self.redis_url.clone());
        let (schema, prefix) = (self.schema.clone(), self.prefix.clone());
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(pool) = sqlx::PgPool::connect(&database_url).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .execute(&pool)
                        .await;
                }
                let Ok(client) = redis::Client::open(redis_url.as_str()) else {
                    return;
                };
                let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
                    return;
                };
                // The limiter's keys: `{<prefix>:limit:<key id>}:…`.
                let names: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{{{prefix}:*"))
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default();
                if !names.is_empty() {
                    let _: Result<(), _> = redis::cmd("DEL")
                        .arg(names)
                        .query_async(&mut connection)
                        .await;
                }
            });
        });
        let _ = done.join();
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.clean_up();
    }
}

/// One HTTP/1.1 answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// The request's bytes: the key in `X-API-Key`, or as a bearer token when
/// `bearer` (the example reads both).
fn request_text(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    bearer: bool,
    body: &str,
) -> String {
    let auth = match key {
        Some(key) if bearer => format!("authorization: Bearer {key}\r\n"),
        Some(key) => format!("x-api-key: {key}\r\n"),
        None => String::new(),
    };
    format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Sends `text` on `stream` and reads the whole answer.
async fn exchange(mut stream: TcpStream, text: String) -> Answer {
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    // Small bodies only; a chunked one is decoded by dropping its framing.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.lines()
            .filter(|line| !line.is_empty() && u64::from_str_radix(line.trim(), 16).is_err())
            .collect()
    } else {
        body.to_owned()
    };
    Answer {
        status,
        head: head.to_owned(),
        body,
    }
}

async fn send(addr: &str, method: &str, path: &str, key: Option<&str>, body: &str) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    exchange(stream, request_text(addr, method, path, key, false, body)).await
}

async fn get(addr: &str, path: &str, key: &str) -> Answer {
    send(addr, "GET", path, Some(key), "").await
}

/// Issues a key through `through` (with `admin`), checks it on both
/// instances, revokes it through `revoker`, and returns how long the other
/// instance kept accepting it.
async fn revocation_time(through: &Instance, revoker: &Instance, other: &Instance) -> Duration {
    let issued = send(
        &through.addr,
        "POST",
        "/keys",
        Some(&through.admin),
        r#"{"scopes":["pets:read"],"owner":"carol"}"#,
    )
    .await;
    assert_eq!(issued.status, 201, "{}", issued.body);
    let issued = issued.json();
    let (key, id) = (
        issued["key"].as_str().unwrap().to_owned(),
        issued["key_id"].as_str().unwrap().to_owned(),
    );
    for instance in [revoker, other] {
        // Also cached there now: only the announcement can make it go.
        assert_eq!(get(&instance.addr, "/pets", &key).await.status, 200);
    }
    let revoked = send(
        &revoker.addr,
        "DELETE",
        &format!("/keys/{id}"),
        Some(&revoker.admin),
        "",
    )
    .await;
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    let at = Instant::now();
    assert_eq!(
        get(&revoker.addr, "/pets", &key).await.status,
        401,
        "refused at once by the instance that revoked it"
    );
    loop {
        let status = get(&other.addr, "/pets", &key).await.status;
        let elapsed = at.elapsed();
        if status == 401 {
            return elapsed;
        }
        assert_eq!(status, 200);
        assert!(
            elapsed < Duration::from_secs(1),
            "a key revoked through {} still works on {} after {elapsed:?}",
            revoker.addr,
            other.addr
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `key_id`'s entry in `GET /usage` on `instance`, if it has one.
async fn usage_of(instance: &Instance, key_id: &str) -> Option<Value> {
    let answer = get(&instance.addr, "/usage", &instance.admin).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["keys"]
        .as_array()
        .expect("{\"keys\": [...]}")
        .iter()
        .find(|entry| entry["key_id"] == key_id)
        .cloned()
}

/// The public id inside a printed key: `sk_live_<id><secret><checksum>`.
fn printed_id(key: &str) -> String {
    key.strip_prefix("sk_live_").expect("the example's prefix")[..12].to_owned()
}

/// The caller's key id, as `GET /me` reports it.
async fn key_id(instance: &Instance, key: &str) -> String {
    let me = get(&instance.addr, "/me", key).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert!(!me.body.contains(key), "/me never shows the key");
    me.json()["key_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_keys_revocations_the_readers_budget_and_usage() {
    let test = "two_instances_share_keys_revocations_the_readers_budget_and_usage";
    let (Some(database_url), Some(redis_url)) = (
        service_url("DATABASE_URL", test),
        service_url("REDIS_URL", test),
    ) else {
        return;
    };
    let binary = binary().await;
    let namespace = Namespace::new(database_url, redis_url);
    // Both at once: their migrations meet on the same new schema.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| namespace.start(&binary));
        let b = s.spawn(|| namespace.start(&binary));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.addr, b.addr);
    let (a, b) = (&a, &b);

    // Every key printed works on both instances: the admins everywhere
    // (both header forms), and B's reader.
    for instance in [a, b] {
        let health = send(&instance.addr, "GET", "/health", None, "").await;
        assert_eq!((health.status, health.body.as_str()), (200, "ok"));
        for admin in [&a.admin, &b.admin] {
            let stream = TcpStream::connect(&instance.addr).await.unwrap();
            let text = request_text(&instance.addr, "GET", "/pets", Some(admin), true, "");
            let pets = exchange(stream, text).await;
            assert_eq!(pets.status, 200, "{}", pets.body);
            assert_eq!(pets.json()[0]["name"], "Rex", "the shared pets table");
        }
        assert_eq!(get(&instance.addr, "/pets", &b.reader).await.status, 200);
    }
    // `GET /me` names the caller, never its key; a key's id is also the
    // 12 characters after its prefix (README: the key format).
    for (instance, key) in [(a, &b.admin), (b, &a.admin)] {
        assert_eq!(key_id(instance, key).await, printed_id(key));
    }
    let (reader_a, reader_b) = (printed_id(&a.reader), printed_id(&b.reader));

    // A's reader (5 a second, burst 5, untouched so far): ten requests at
    // once, alternating between the instances, are admitted five times in
    // all. Connections are opened first, so the ten arrive together.
    let mut streams = Vec::new();
    for i in 0..10 {
        let instance = if i % 2 == 0 { a } else { b };
        let stream = TcpStream::connect(&instance.addr).await.unwrap();
        let text = request_text(
            &instance.addr,
            "GET",
            "/pets",
            Some(&a.reader),
            i % 4 < 2,
            "",
        );
        streams.push((stream, text));
    }
    let burst_started = Instant::now();
    let answers: Vec<_> = streams
        .into_iter()
        .map(|(stream, text)| tokio::spawn(exchange(stream, text)))
        .collect();
    let mut answers_by_instance = [Vec::new(), Vec::new()];
    for (i, answer) in answers.into_iter().enumerate() {
        answers_by_instance[i % 2].push(answer.await.unwrap());
    }
    let burst_took = burst_started.elapsed();
    let all: Vec<&Answer> = answers_by_instance.iter().flatten().collect();
    let admitted = all.iter().filter(|a| a.status == 200).count();
    let refused: Vec<_> = all.iter().filter(|a| a.status == 429).collect();
    eprintln!(
        "burst of 10 over two instances took {burst_took:?}: {admitted} admitted \
         (A {}, B {})",
        answers_by_instance[0]
            .iter()
            .filter(|a| a.status == 200)
            .count(),
        answers_by_instance[1]
            .iter()
            .filter(|a| a.status == 200)
            .count(),
    );
    assert_eq!(
        (admitted, refused.len()),
        (5, 5),
        "the reader's burst of 5 is shared by both instances (took {burst_took:?})"
    );
    for answer in refused {
        assert!(
            answer.head.to_ascii_lowercase().contains("retry-after:"),
            "{}",
            answer.head
        );
    }

    // Once refilled (5 a second: all of it after a second), A's reader
    // works on both instances too.
    tokio::time::sleep_until((burst_started + burst_took + Duration::from_secs(1)).into()).await;
    for instance in [a, b] {
        assert_eq!(get(&instance.addr, "/pets", &a.reader).await.status, 200);
    }

    // Revoked through one instance, refused by the other within a second;
    // both ways.
    let times = [
        revocation_time(a, b, a).await,
        revocation_time(b, a, b).await,
    ];
    eprintln!("revocation seen by the other instance after {times:?}");

    // `/keys` and `/usage` are keyward's admin API over the shared store:
    // each instance lists the two keys issued above, through either, as
    // revoked, and serves the API's OpenAPI document (no key needed).
    for instance in [a, b] {
        let listed = get(&instance.addr, "/keys?owner=carol", &instance.admin).await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        let listed = listed.json();
        let statuses: Vec<&Value> = listed["keys"]
            .as_array()
            .expect("{\"keys\": [...]}")
            .iter()
            .map(|key| &key["status"])
            .collect();
        assert_eq!(statuses, ["revoked", "revoked"], "{listed}");
        let document = send(&instance.addr, "GET", "/openapi.json", None, "").await;
        assert_eq!(document.status, 200, "{}", document.head);
        assert!(document.body.contains("\"openapi\""), "{}", document.body);
    }

    // Usage: A's reader made 12 requests, 6 to each instance; both
    // instances count all of them, a couple of seconds later at most.
    let requests_done = Instant::now();
    let expected = |entry: &Option<Value>, requests: u64, allowed: u64, denied: u64| {
        entry.as_ref().is_some_and(|e| {
            e["requests"] == requests && e["allowed"] == allowed && e["denied"] == denied
        })
    };
    loop {
        let mut complete = true;
        for instance in [a, b] {
            let (of_a, of_b) = (
                usage_of(instance, &reader_a).await,
                usage_of(instance, &reader_b).await,
            );
            complete &= expected(&of_a, 12, 7, 5) && expected(&of_b, 2, 2, 0);
            if complete {
                assert_eq!(of_a.unwrap()["denied_by_reason"]["rate_limited"], 5);
            }
        }
        if complete {
            break;
        }
        assert!(
            requests_done.elapsed() < Duration::from_secs(3),
            "GET /usage on A: {:?}, on B: {:?}",
            usage_of(a, &reader_a).await,
            usage_of(b, &reader_a).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "both instances' usage counted {:?} after the last request",
        requests_done.elapsed()
    );

    // The exporter marks the keys used, in the store's own table.
    let pool = sqlx::PgPool::connect(&namespace.database_url)
        .await
        .unwrap();
    let used: Option<bool> = sqlx::query_scalar(&format!(
        "SELECT last_used_at IS NOT NULL FROM \"{}\".keyward_keys WHERE id = $1",
        namespace.schema
    ))
    .bind(&reader_a)
    .fetch_optional(&pool)
    .await
    .unwrap();
    assert_eq!(used, Some(true), "last_used_at set on the keys table");
    pool.close().await;
}

/// Runs the example with `env` and no address; it must exit by itself
/// within 30 s. Returns its exit status and stderr.
fn run_to_exit(env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut command = Command::new(example_binary());
    command
        .arg("127.0.0.1:0")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("start the example");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the example kept running with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn assert_fails_with(env: &[(&str, &str)], message: &str) {
    let (status, stderr) = run_to_exit(env);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(message), "{message:?} in {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_unreachable_servers_stop_it_with_a_message() {
    binary().await;
    tokio::task::spawn_blocking(|| {
        let closed_pg = format!("postgres://postgres@127.0.0.1:{}/test", closed_port());
        let closed_redis = format!("redis://127.0.0.1:{}", closed_port());
        assert_fails_with(&[("REDIS_URL", &closed_redis)], "DATABASE_URL is not set");
        assert_fails_with(&[("DATABASE_URL", &closed_pg)], "REDIS_URL is not set");
        assert_fails_with(
            &[("DATABASE_URL", &closed_pg), ("REDIS_URL", &closed_redis)],
            "cannot connect to PostgreSQL (DATABASE_URL)",
        );
        // With PostgreSQL up, Redis is still needed; nothing is created
        // before both answer.
        if let Some(database_url) = service_url("DATABASE_URL", "unreachable Redis") {
            let schema = unique_name("kw_dist");
            assert_fails_with(
                &[
                    ("DATABASE_URL", &database_url),
                    ("REDIS_URL", &closed_redis),
                    ("KEYWARD_SCHEMA", &schema),
                ],
                "cannot connect to Redis (REDIS_URL)",
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let created: bool = runtime.block_on(async {
                let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)",
                )
                .bind(&schema)
                .fetch_one(&pool)
                .await
                .unwrap()
            });
            assert!(!created, "no schema made before Redis answered");
        }
    })
    .await
    .unwrap();
}
