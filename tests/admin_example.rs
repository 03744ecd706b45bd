//! `examples/admin.rs` as an operator starts it: in a process of its own
//! (this test binary run again, serving the example's own `serve`, so the
//! code under test is always the current one), on `127.0.0.1:0`. The test
//! reads the two lines it prints, then calls every operation of the
//! OpenAPI document it serves, over real TCP, with the printed key.

#[allow(dead_code)]
#[path = "../examples/admin.rs"]
mod admin_example;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Set in the child: the address to serve on.
const CHILD_VAR: &str = "KEYWARD_ADMIN_EXAMPLE_ADDR";
const STEP: Duration = Duration::from_secs(30);

/// The child: serves the example until it is killed.
#[tokio::test]
async fn child_serves_the_example() {
    let Ok(addr) = std::env::var(CHILD_VAR) else {
        return;
    };
    admin_example::serve(&addr)
        .await
        .expect("the example serves");
}

struct Answer {
    status: u16,
    headers: String,
    body: String,
}

/// One HTTP/1.1 request over a fresh TCP connection.
async fn http(addr: &str, method: &str, path: &str, key: Option<&str>, body: &str) -> Answer {
    let mut stream = timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(key) = key {
        request.push_str(&format!("X-API-Key: {key}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(STEP, stream.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .unwrap();
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "this small client reads length-delimited answers"
    );
    Answer {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

#[tokio::test]
async fn every_documented_operation_works_against_the_example() {
    if std::env::var(CHILD_VAR).is_ok() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "child_serves_the_example",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the example");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut base, mut admin) = (None, None);
    timeout(STEP, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // The test harness may print the test's name on the same line.
            if let Some((_, url)) = line.split_once("listening on http://") {
                base = Some(url.to_owned());
            } else if let Some(key) = line.strip_prefix("admin key: ") {
                admin = Some(key.to_owned());
                break;
            }
        }
    })
    .await
    .expect("the example printed its lines in time");
    let addr = base.expect("listening on http://ADDR:PORT");
    assert!(!addr.ends_with(":0"), "a real port: {addr}");
    let admin = admin.expect("admin key: <key>");
    assert!(admin.starts_with("sk_live_"));
    // Keep reading stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // The document and the page need no key.
    let document = http(&addr, "GET", "/admin/openapi.json", None, "").await;
    assert_eq!(document.status, 200);
    let spec = oas3::from_json(&document.body).expect("an OpenAPI document");
    spec.validate_version().expect("OpenAPI 3.1");
    let page = http(&addr, "GET", "/admin/usage", None, "").await;
    assert_eq!(page.status, 401, "JSON without a key is refused");
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            format!("GET /admin/usage HTTP/1.1\r\nHost: {addr}\r\nAccept: text/html\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw
        .to_ascii_lowercase()
        .contains("content-security-policy: default-src 'none'"));

    // A protected route of the example's own API.
    assert_eq!(http(&addr, "GET", "/hello", None, "").await.status, 401);
    assert_eq!(
        http(&addr, "GET", "/hello", Some(&admin), "").await.status,
        200
    );

    // Every operation, in an order where each has what it needs: its
    // sample request and the status it must answer.
    let issued = http(
        &addr,
        "POST",
        "/admin/keys",
        Some(&admin),
        r#"{"owner": "acme", "scopes": ["keys:admin"], "name": "ci", "expires_in_seconds": 86400}"#,
    )
    .await;
    assert_eq!(issued.status, 201, "{}", issued.body);
    let issued = issued.json();
    let key = issued["key"].as_str().unwrap().to_owned();
    let id = issued["key_id"].as_str().unwrap().to_owned();
    assert_eq!(
        http(&addr, "GET", "/hello", Some(&key), "").await.status,
        200
    );

    let plan: Vec<(&str, &str, String, String, u16)> = vec![
        (
            "issue_key",
            "POST",
            "/admin/keys".into(),
            r#"{"owner": "acme", "scopes": []}"#.into(),
            201,
        ),
        (
            "list_keys",
            "GET",
            "/admin/keys?owner=acme&limit=1".into(),
            String::new(),
            200,
        ),
        (
            "get_key",
            "GET",
            format!("/admin/keys/{id}"),
            String::new(),
            200,
        ),
        (
            "key_usage",
            "GET",
            format!("/admin/keys/{id}/usage?step_minutes=60"),
            String::new(),
            200,
        ),
        (
            "owner_usage",
            "GET",
            "/admin/owners/acme/usage".into(),
            String::new(),
            200,
        ),
        (
            "all_usage",
            "GET",
            "/admin/usage?limit=10".into(),
            String::new(),
            200,
        ),
        (
            "set_key_scopes",
            "PUT",
            format!("/admin/keys/{id}/scopes"),
            r#"{"scopes": []}"#.into(),
            200,
        ),
        (
            "set_key_limits",
            "PUT",
            format!("/admin/keys/{id}/limits"),
            json!({"limits": [{"rate": {"name": "burst", "quota": 2, "window_ms": 1000}}]})
                .to_string(),
            200,
        ),
        (
            "disable_key",
            "POST",
            format!("/admin/keys/{id}/disable"),
            String::new(),
            200,
        ),
        (
            "enable_key",
            "POST",
            format!("/admin/keys/{id}/enable"),
            String::new(),
            200,
        ),
        (
            "rotate_key",
            "POST",
            format!("/admin/keys/{id}/rotate"),
            r#"{"grace_seconds": 0}"#.into(),
            201,
        ),
        (
            "revoke_key",
            "DELETE",
            format!("/admin/keys/{id}"),
            String::new(),
            204,
        ),
        (
            "openapi",
            "GET",
            "/admin/openapi.json".into(),
            String::new(),
            200,
        ),
    ];
    // The plan covers exactly the document's operations.
    let documented: BTreeSet<(String, String, String)> = spec
        .operations()
        .map(|(path, method, op)| {
            (
                op.operation_id.clone().expect("an operation id"),
                method.to_string(),
                path,
            )
        })
        .collect();
    let planned: BTreeSet<(String, String, String)> = plan
        .iter()
        .map(|(op, method, path, _, _)| {
            let documented_path = path
                .split('?')
                .next()
                .unwrap()
                .trim_start_matches("/admin")
                .replace(&id, "{key_id}")
                .replace("/owners/acme/", "/owners/{owner}/");
            (op.to_string(), method.to_string(), documented_path)
        })
        .collect();
    assert_eq!(planned, documented);

    for (op, method, path, body, status) in &plan {
        let answer = http(&addr, method, path, Some(&admin), body).await;
        assert_eq!(
            answer.status, *status,
            "{op}: {method} {path}: {}",
            answer.body
        );
        if *status == 204 {
            continue;
        }
        assert!(
            answer.headers.contains("content-type: application/json"),
            "{op}"
        );
        let value = answer.json();
        // Only issue and rotate hand out a key.
        let shows_key = value.get("key").is_some();
        assert_eq!(shows_key, matches!(*op, "issue_key" | "rotate_key"), "{op}");
        assert!(!answer.body.contains(&key), "{op} shows a secret");
    }
    // The rotated key's successor took over, and the revoked key is refused.
    let me = http(&addr, "GET", "/hello", Some(&key), "").await;
    assert_eq!(me.status, 401, "{}", me.body);
    let usage = http(
        &addr,
        "GET",
        &format!("/admin/keys/{id}/usage"),
        Some(&admin),
        "",
    )
    .await;
    assert!(usage.json()["keys"][0]["requests"].as_u64().unwrap() >= 1);

    child.start_kill().unwrap();
    let _ = child.wait().await;
}
